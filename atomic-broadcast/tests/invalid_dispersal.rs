//! A Byzantine proposer that disperses shards which are no codeword: every honest replica
//! delivers `Invalid`, never two different values.

use std::collections::VecDeque;

use fides_atomic_broadcast::merkle::Tree;
use fides_atomic_broadcast::rbc::{Config, Delivery, Message, Proof, ReliableBroadcast};
use fides_types::{NodeIndex, Quorum, Target};

#[test]
fn shards_that_are_no_codeword_are_delivered_as_invalid_by_everyone() {
    for (n, t) in [(4u32, 1u32), (7, 2), (10, 3)] {
        let quorum = Quorum::new(n, t).expect("valid sizes");
        let proposer = NodeIndex(0);
        // n random shards of equal length: no Reed–Solomon codeword.
        let shards: Vec<Vec<u8>> = (0..n).map(|i| vec![(i * 37 + 11) as u8; 16]).collect();
        let tree = Tree::new(&shards);
        let mut nodes: Vec<ReliableBroadcast> =
            quorum.nodes().map(|i| ReliableBroadcast::new(quorum, i, proposer, Config::default())).collect();
        let mut queue: VecDeque<(NodeIndex, NodeIndex, Message)> = VecDeque::new();
        for (i, shard) in shards.iter().enumerate() {
            let proof = Proof { root: tree.root(), index: i as u32, shard: shard.clone(), path: tree.path(i) };
            queue.push_back((proposer, NodeIndex(i as u32), Message::Value(proof)));
        }
        let mut outputs: Vec<Vec<Delivery>> = vec![Vec::new(); n as usize];
        // Replica 0 (the proposer) is Byzantine: it sends nothing more.
        while let Some((from, to, message)) = queue.pop_front() {
            if to == proposer {
                continue;
            }
            let step = nodes[to.as_usize()].handle(from, message);
            assert!(step.faults.is_empty(), "{:?}", step.faults);
            outputs[to.as_usize()].extend(step.outputs);
            for outgoing in step.messages {
                match outgoing.target {
                    Target::All => queue.extend(quorum.nodes().map(|r| (to, r, outgoing.message.clone()))),
                    Target::Node(r) => queue.push_back((to, r, outgoing.message)),
                }
            }
        }
        for (i, delivered) in outputs.iter().enumerate().skip(1) {
            assert_eq!(delivered, &vec![Delivery::Invalid], "n={n} replica {i}");
        }
    }
}
