//! A replica held back while the others run many rounds ahead must still finish: messages it
//! dropped as too far ahead are sent again when it asks (RESEND).
//!
//! Scripted schedule, n = 4, t = 1: honest A, B, C and a Byzantine Z that splits A and B in round 0
//! and then helps them through round 1 while every message to and from C is held. Then C is handed
//! A's and B's far-ahead messages first (it must drop them: the window is 1 round) and Z falls
//! silent. Before RESEND existed this schedule left C and B undecided forever with every message
//! delivered.

use std::sync::Arc;

use fides_agreement::{AbaStep, BinaryAgreement, Config, Message, Unvalidated, Vote};
use fides_crypto::blsttc::SecretKeySet;
use fides_crypto::ThresholdKeys;
use fides_types::{FaultKind, NodeIndex, Protocol, Quorum, Round, Target};
use rand::SeedableRng;

const A: u32 = 0;
const B: u32 = 1;
const C: u32 = 2;
const Z: u32 = 3;

struct InFlight {
    from: u32,
    to: u32,
    message: Message,
}

/// Delivery priority: lower rounds first, then BVAL before AUX before CONF before coin, TERM last.
fn priority(message: &Message) -> (u32, u8) {
    match message {
        Message::BVal { round, value, .. } => (round.0, u8::from(*value)),
        Message::Aux { round, .. } => (round.0, 2),
        Message::Conf { round, .. } => (round.0, 3),
        Message::Coin { round, .. } => (round.0, 4),
        Message::Resend { round } => (round.0, 5),
        Message::Term { .. } => (u32::MAX, 6),
    }
}

struct Net {
    nodes: Vec<BinaryAgreement>,
    in_flight: Vec<InFlight>,
    far_ahead_faults: usize,
}

impl Net {
    fn queue(&mut self, from: u32, step: AbaStep) {
        for fault in &step.faults {
            assert_eq!(fault.kind, FaultKind::RoundTooFar, "unexpected fault {fault:?}");
            self.far_ahead_faults += 1;
        }
        for outgoing in step.messages {
            let recipients: Vec<u32> = match outgoing.target {
                Target::All => (0..4).collect(),
                Target::Node(to) => vec![to.0],
            };
            for to in recipients {
                self.in_flight.push(InFlight { from, to, message: outgoing.message.clone() });
            }
        }
    }

    fn deliver(&mut self, index: usize) {
        let InFlight { from, to, message } = self.in_flight.remove(index);
        let step = self.nodes[to as usize].handle(NodeIndex(from), message);
        self.queue(to, step);
    }

    /// Deliver until nothing allowed is left; Z never receives (it is scripted). While C is cut
    /// off, by priority (the adversary's choice); once it is connected, oldest first, as a fair
    /// scheduler must eventually.
    fn run(&mut self, c_connected: bool) {
        let mut steps = 0;
        loop {
            let next = self
                .in_flight
                .iter()
                .enumerate()
                .filter(|(_, m)| m.to != Z && (c_connected || (m.to != C && m.from != C)))
                .min_by_key(|(i, m)| if c_connected { (0, 0, *i) } else { (priority(&m.message).0, m.from, *i) })
                .map(|(i, _)| i);
            let Some(index) = next else { break };
            self.deliver(index);
            steps += 1;
            assert!(steps < 100_000, "the schedule does not settle");
        }
    }
}

#[test]
fn a_replica_far_behind_catches_up_through_resend() {
    let quorum = Quorum::new(4, 1).expect("4 replicas tolerate 1");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let set = SecretKeySet::random(1, &mut rng);
    let nodes = (0..3)
        .map(|i| {
            let keys = ThresholdKeys::new(NodeIndex(i), 4, set.public_keys(), set.secret_key_share(i as usize));
            let mut config = Config::new(b"lagging".to_vec());
            config.rounds_future_max = 1;
            BinaryAgreement::new(quorum, NodeIndex(i), Arc::new(keys), config, Unvalidated)
        })
        .collect();
    let mut net = Net { nodes, in_flight: Vec::new(), far_ahead_faults: 0 };
    for (i, vote) in [Vote::One(Vec::new()), Vote::Zero, Vote::Zero].into_iter().enumerate() {
        let step = net.nodes[i].propose(vote).expect("first proposal");
        net.queue(i as u32, step);
    }
    let bval = |round: u32, value: bool| Message::BVal { round: Round(round), value, justification: Vec::new() };
    let aux = |round: u32, value: bool| Message::Aux { round: Round(round), value };
    for to in [A, B, C] {
        net.in_flight.push(InFlight { from: Z, to, message: bval(0, false) });
        net.in_flight.push(InFlight { from: Z, to, message: bval(0, true) });
        net.in_flight.push(InFlight { from: Z, to, message: aux(0, to == A) });
        net.in_flight.push(InFlight { from: Z, to, message: bval(1, true) });
        net.in_flight.push(InFlight { from: Z, to, message: aux(1, true) });
    }

    net.run(false);
    assert!(net.nodes[A as usize].round().0 > 1, "A and B ran ahead of C");
    assert_eq!(net.nodes[C as usize].round(), Round(0));

    // C is handed the far-ahead messages first: it must drop them.
    while let Some(index) = net
        .in_flight
        .iter()
        .position(|m| m.to == C && m.from != C && priority(&m.message).0 != u32::MAX && priority(&m.message).0 > 1)
    {
        net.deliver(index);
    }
    assert!(net.far_ahead_faults > 0, "the schedule did not make C drop anything");
    net.run(true);

    let decisions: Vec<Option<bool>> = net.nodes.iter().map(|n| n.decision().map(|d| d.value)).collect();
    assert!(decisions.iter().all(|d| d.is_some()), "every honest replica decides: {decisions:?}");
    assert!(decisions.windows(2).all(|w| w[0] == w[1]), "agreement: {decisions:?}");
    assert!(net.nodes.iter().all(Protocol::terminated), "every honest replica terminates");
}
