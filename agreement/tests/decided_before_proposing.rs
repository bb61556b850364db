//! A replica that decides through t + 1 TERM before it proposed must still take part in the
//! rounds: the others may need its AUX.
//!
//! Scripted schedule, n = 7, t = 2: honest A, C, U1, U2, U3 and Byzantine Z1, Z2 (scripted, they
//! receive nothing). Round 0 has the fixed coin 1. C never proposes (in the common subset its
//! broadcast has not reached it). A and U1–U3 propose 1; Z1 and Z2 send BVAL(0, 1) to everyone,
//! Z1 sends AUX(0, 1) to A only, and both send TERM(1) to C only. A completes round 0 with
//! n - t AUX and decides 1; C then holds t + 1 TERM and decides 1. Before the fix C never voted
//! again, and U1–U3 held 4 AUX (they need 5) and 2 TERM (they need 3) with every message
//! delivered.

use std::sync::Arc;

use fides_agreement::{AbaStep, BinaryAgreement, Config, Message, Unvalidated, Vote};
use fides_crypto::blsttc::SecretKeySet;
use fides_crypto::ThresholdKeys;
use fides_types::{NodeIndex, Protocol, Quorum, Round, Target};
use rand::SeedableRng;

const N: u32 = 7;
const A: u32 = 0;
const C: u32 = 1;
const Z1: u32 = 5;
const Z2: u32 = 6;
const HONEST: [u32; 5] = [0, 1, 2, 3, 4];

struct Net {
    nodes: Vec<BinaryAgreement>,
    in_flight: Vec<(u32, u32, Message)>,
}

impl Net {
    fn queue(&mut self, from: u32, step: AbaStep) {
        assert!(step.faults.is_empty(), "unexpected faults {:?}", step.faults);
        for outgoing in step.messages {
            let recipients: Vec<u32> = match outgoing.target {
                Target::All => (0..N).collect(),
                Target::Node(to) => vec![to.0],
            };
            for to in recipients {
                self.in_flight.push((from, to, outgoing.message.clone()));
            }
        }
    }

    /// Deliver oldest first until nothing is left; the Byzantine replicas receive nothing.
    fn run(&mut self) {
        let mut steps = 0;
        while let Some(index) = self.in_flight.iter().position(|(_, to, _)| HONEST.contains(to)) {
            let (from, to, message) = self.in_flight.remove(index);
            let step = self.nodes[to as usize].handle(NodeIndex(from), message);
            self.queue(to, step);
            steps += 1;
            assert!(steps < 100_000, "the schedule does not settle");
        }
    }
}

#[test]
fn a_replica_that_decides_before_proposing_runs_the_rounds_with_the_decided_value() {
    let quorum = Quorum::new(N, 2).expect("7 replicas tolerate 2");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let set = SecretKeySet::random(2, &mut rng);
    let nodes = HONEST
        .iter()
        .map(|&i| {
            let keys = ThresholdKeys::new(NodeIndex(i), N, set.public_keys(), set.secret_key_share(i as usize));
            BinaryAgreement::new(quorum, NodeIndex(i), Arc::new(keys), Config::new(b"early".to_vec()), Unvalidated)
        })
        .collect();
    let mut net = Net { nodes, in_flight: Vec::new() };
    let bval = Message::BVal { round: Round(0), value: true, justification: Vec::new() };
    let term = Message::Term { value: true, justification: Vec::new() };
    for z in [Z1, Z2] {
        for to in 0..N {
            net.in_flight.push((z, to, bval.clone()));
        }
        net.in_flight.push((z, C, term.clone()));
    }
    net.in_flight.push((Z1, A, Message::Aux { round: Round(0), value: true }));
    for i in HONEST.into_iter().filter(|i| *i != C) {
        let step = net.nodes[i as usize].propose(Vote::One(Vec::new())).expect("first proposal");
        net.queue(i, step);
    }

    net.run();

    let decisions: Vec<Option<bool>> = net.nodes.iter().map(|n| n.decision().map(|d| d.value)).collect();
    assert_eq!(decisions, vec![Some(true); 5], "every honest replica decides 1");
    assert!(net.nodes.iter().all(Protocol::terminated), "every honest replica terminates");
    // A proposal after the decision changes nothing; a second one is still refused.
    let late = net.nodes[C as usize].propose(Vote::Zero).expect("a proposal after the decision is accepted");
    assert!(late.messages.is_empty() && late.outputs.is_empty(), "and changes nothing");
    assert!(net.nodes[C as usize].propose(Vote::Zero).is_err(), "a second proposal is refused");
}
