//! Echoes are counted before their proofs are checked; a Byzantine echo whose shard is bad (with
//! the right root and a path of the right length) spoils the first decoding, is then found by its
//! proof, recorded as a fault, and the value is delivered from the good shards.

use std::collections::VecDeque;

use fides_atomic_broadcast::rbc::{Config, Delivery, Message, ReliableBroadcast};
use fides_types::{FaultKind, NodeIndex, Quorum, Target};

#[test]
fn a_bad_echoed_shard_is_found_by_its_proof_and_the_value_still_delivered() {
    for (n, t) in [(4u32, 1u32), (7, 2), (10, 3)] {
        let quorum = Quorum::new(n, t).expect("valid sizes");
        let proposer = NodeIndex(n - 1);
        let byzantine = NodeIndex(0);
        let value: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut nodes: Vec<ReliableBroadcast> =
            quorum.nodes().map(|i| ReliableBroadcast::new(quorum, i, proposer, Config::default())).collect();
        let step = nodes[proposer.as_usize()].propose(&value).expect("the proposer proposes");
        let mut queue: VecDeque<(NodeIndex, NodeIndex, Message)> = VecDeque::new();
        for outgoing in step.messages {
            let Target::Node(to) = outgoing.target else { panic!("VALUE goes to one replica") };
            if to == byzantine {
                // The Byzantine replica echoes its shard with one byte flipped, to everyone, first.
                let Message::Value(mut proof) = outgoing.message else { panic!("a VALUE") };
                proof.shard[0] ^= 0x55;
                for r in quorum.nodes() {
                    queue.push_front((byzantine, r, Message::Echo(proof.clone())));
                }
            } else {
                queue.push_back((proposer, to, outgoing.message));
            }
        }
        let mut outputs: Vec<Vec<Delivery>> = vec![Vec::new(); n as usize];
        let mut caught = 0;
        while let Some((from, to, message)) = queue.pop_front() {
            if to == byzantine {
                continue;
            }
            let step = nodes[to.as_usize()].handle(from, message);
            for fault in &step.faults {
                assert_eq!((fault.node, &fault.kind), (byzantine, &FaultKind::InvalidProof), "n={n}");
                caught += 1;
            }
            outputs[to.as_usize()].extend(step.outputs);
            for outgoing in step.messages {
                match outgoing.target {
                    Target::All => queue.extend(quorum.nodes().map(|r| (to, r, outgoing.message.clone()))),
                    Target::Node(r) => queue.push_back((to, r, outgoing.message)),
                }
            }
        }
        for (i, delivered) in outputs.iter().enumerate().skip(1) {
            assert_eq!(delivered, &vec![Delivery::Value(value.clone())], "n={n} replica {i}");
        }
        assert_eq!(caught, n - 1, "n={n}: every honest replica decoded with the bad shard first");
    }
}
