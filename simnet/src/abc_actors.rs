//! Byzantine replicas that attack atomic broadcast itself (played by the `t` Byzantine replicas as
//! [`crate::Behaviour::Adaptive`] in [`crate::abc::run_attack`]): each takes part honestly
//! otherwise, through an honest instance inside it.
//!
//! - [`AbcAttack::ForgeRequests`]: orders the clients' ids with payloads of its own, ahead of the
//!   real requests (`(client, id)` is not authenticated), to have the real ones dropped as
//!   duplicates or answered with the forged ones' places;
//! - [`AbcAttack::Oversized`]: proposes contributions beyond its share of the batch, with a payload
//!   above the bound, to fill every replica's at-most-once window and answers;
//! - [`AbcAttack::CopyCapsules`]: rebuilds honest envelopes from the ECHOs it receives, as any
//!   replica can, and proposes them as its own in the same or a later epoch, to have the honest
//!   replicas release decryption shares of an honest contribution before it is ordered.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use fides_atomic_broadcast::acs;
use fides_atomic_broadcast::epoch::{AtomicBroadcast, Config, Input, Message, Output, Request};
use fides_atomic_broadcast::rbc::{self, Delivery, ReliableBroadcast};
use fides_types::codec::Wire;
use fides_types::{NodeIndex, Quorum, Step, Target};
use rand_chacha::ChaCha8Rng;

use crate::abc::AbcScenario;
use crate::{Byzantine, ByzantineSend};

/// An attack on atomic broadcast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbcAttack {
    /// Propose every request id the clients will use, with [`FORGED_PAYLOAD`], last ids first.
    ForgeRequests,
    /// Propose [`OVERSIZED_SHARE_FACTOR`] times a replica's share of the batch, and a payload
    /// longer than the bound.
    Oversized,
    /// Propose honest envelopes, rebuilt from their ECHOs, as its own.
    CopyCapsules,
}

/// The payload of a forged request.
pub const FORGED_PAYLOAD: &[u8] = b"forged by a Byzantine replica";
/// The client of the oversized attacker's own requests.
pub const OVERSIZED_CLIENT: u64 = 9_999;
/// How many times its share of the batch the oversized attacker proposes.
pub const OVERSIZED_SHARE_FACTOR: usize = 6;

/// What the attackers report (shared by all of them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AttackLog {
    /// Honest envelopes proposed again as the attacker's own.
    pub copies_proposed: u64,
    /// Decryption shares honest replicas sent of a copied envelope: with `t + 1` of them, the
    /// attacker decrypts an honest contribution before it is ordered.
    pub copied_shares_received: u64,
}

/// The attacker at `index`.
pub(crate) fn make(attack: AbcAttack, index: NodeIndex, scenario: &AbcScenario) -> Box<dyn Byzantine<AtomicBroadcast>> {
    let i = index.as_usize();
    let clock = scenario.clocks[i];
    let own = scenario.requests[i].clone();
    match attack {
        AbcAttack::ForgeRequests => {
            // Every id some client uses, as the attacker can guess them (clients count up).
            let ids: BTreeSet<(u64, u64)> = scenario.requests.iter().flatten().map(|r| (r.client, r.id)).collect();
            let mut requests: Vec<Request> = ids
                .into_iter()
                .rev()
                .map(|(client, id)| Request { client, id, payload: FORGED_PAYLOAD.to_vec() })
                .collect();
            requests.extend(own);
            let inner = scenario.instance_with(index, scenario.config.clone());
            Box::new(Honestly { inner, input: Some(Input::Start { clock, requests }) })
        }
        AbcAttack::Oversized => {
            let honest = &scenario.config;
            let n = scenario.quorum.n() as usize;
            let config = Config {
                batch_size: honest.batch_size.div_ceil(n) * OVERSIZED_SHARE_FACTOR * n,
                payload_len_max: 2 * honest.payload_len_max,
                ..honest.clone()
            };
            let mut requests =
                vec![Request { client: OVERSIZED_CLIENT, id: 0, payload: vec![7; honest.payload_len_max + 1] }];
            requests.extend((1..200).map(|id| Request { client: OVERSIZED_CLIENT, id, payload: Vec::new() }));
            requests.extend(own);
            let inner = scenario.instance_with(index, config);
            Box::new(Honestly { inner, input: Some(Input::Start { clock, requests }) })
        }
        AbcAttack::CopyCapsules => Box::new(CapsuleCopier {
            inner: scenario.instance_with(index, scenario.config.clone()),
            input: Some(Input::Start { clock, requests: own }),
            quorum: scenario.quorum,
            me: index,
            observers: BTreeMap::new(),
            rebuilt: BTreeSet::new(),
            copied: BTreeSet::new(),
            log: Arc::clone(&scenario.attack_log),
        }),
    }
}

fn sends(step: Step<Message, Output>) -> Vec<ByzantineSend> {
    step.messages.into_iter().map(|m| ByzantineSend::new(m.target, m.message.to_bytes())).collect()
}

/// An honest instance whose configuration or queue is the attack.
struct Honestly {
    inner: AtomicBroadcast,
    input: Option<Input>,
}

impl Byzantine<AtomicBroadcast> for Honestly {
    fn start(&mut self, rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        let step = self.input.take().and_then(|input| self.inner.handle_input(input, rng).ok());
        step.map(sends).unwrap_or_default()
    }

    fn receive(&mut self, from: NodeIndex, bytes: &[u8], rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        match Message::from_bytes(bytes) {
            Ok(message) => sends(self.inner.handle(from, message, rng)),
            Err(_) => Vec::new(),
        }
    }
}

/// Broadcasts observed at once (older epochs' are dropped first).
const OBSERVERS_MAX: usize = 64;
/// How many epochs after the one it was rebuilt in an envelope is copied into.
const COPY_EPOCHS_AHEAD: u64 = 2;

/// Rebuilds honest envelopes from the ECHOs and READYs it receives (an observing reliable
/// broadcast per epoch and proposer) and proposes each as its own in an epoch it has not proposed
/// in yet: the same epoch or one of the next [`COPY_EPOCHS_AHEAD`]. Its own honest proposals are
/// never sent.
struct CapsuleCopier {
    inner: AtomicBroadcast,
    input: Option<Input>,
    quorum: Quorum,
    me: NodeIndex,
    observers: BTreeMap<(u64, NodeIndex), ReliableBroadcast>,
    /// Broadcasts already rebuilt (not observed again).
    rebuilt: BTreeSet<(u64, NodeIndex)>,
    /// Epochs in which it proposed a copy.
    copied: BTreeSet<u64>,
    log: Arc<Mutex<AttackLog>>,
}

impl CapsuleCopier {
    /// The inner instance's sends, without its own proposals.
    fn filtered(&self, step: Step<Message, Output>) -> Vec<ByzantineSend> {
        let me = self.me;
        let own_value = |m: &Message| matches!(m, Message::Subset { message: acs::Message::Broadcast { proposer, message: rbc::Message::Value(_) }, .. } if *proposer == me);
        step.messages
            .into_iter()
            .filter(|m| !own_value(&m.message))
            .map(|m| ByzantineSend::new(m.target, m.message.to_bytes()))
            .collect()
    }

    fn note(&self, update: impl FnOnce(&mut AttackLog)) {
        if let Ok(mut log) = self.log.lock() {
            update(&mut log);
        }
    }

    /// Feed an honest broadcast's ECHO or READY to its observer; the envelope once rebuilt.
    fn observe(&mut self, from: NodeIndex, epoch: u64, proposer: NodeIndex, message: rbc::Message) -> Option<Vec<u8>> {
        if proposer == self.me || self.rebuilt.contains(&(epoch, proposer)) || matches!(message, rbc::Message::Value(_))
        {
            return None;
        }
        let (quorum, me) = (self.quorum, self.me);
        let observer = self
            .observers
            .entry((epoch, proposer))
            .or_insert_with(|| ReliableBroadcast::new(quorum, me, proposer, rbc::Config::default()));
        let step = observer.handle(from, message);
        while self.observers.len() > OBSERVERS_MAX {
            self.observers.pop_first();
        }
        let value = step.outputs.into_iter().find_map(|d| match d {
            Delivery::Value(bytes) => Some(bytes),
            Delivery::Invalid => None,
        })?;
        self.observers.remove(&(epoch, proposer));
        self.rebuilt.insert((epoch, proposer));
        Some(value)
    }

    /// Propose `envelope`, rebuilt in `epoch`, as our own in an epoch we have not proposed in.
    fn copy(&mut self, epoch: u64, envelope: &[u8], rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        let next = self.inner.next_epoch();
        let candidates = [epoch + 1, epoch + COPY_EPOCHS_AHEAD, epoch];
        let Some(target) = candidates.into_iter().find(|e| *e >= next && !self.copied.contains(e)) else {
            return Vec::new();
        };
        let config = rbc::Config { value_len_max: envelope.len() };
        let mut broadcast = ReliableBroadcast::new(self.quorum, self.me, self.me, config);
        let Ok(step) = broadcast.propose(envelope) else { return Vec::new() };
        self.copied.insert(target);
        self.note(|log| log.copies_proposed += 1);
        let mut out = Vec::new();
        for outgoing in step.messages {
            let message = Message::Subset {
                epoch: target,
                message: acs::Message::Broadcast { proposer: self.me, message: outgoing.message },
            };
            if outgoing.target == Target::Node(self.me) {
                // Our own shard: echo it as an honest replica would.
                let step = self.inner.handle(self.me, message, rng);
                out.extend(self.filtered(step));
            } else {
                out.push(ByzantineSend::new(outgoing.target, message.to_bytes()));
            }
        }
        out
    }
}

impl Byzantine<AtomicBroadcast> for CapsuleCopier {
    fn start(&mut self, rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        let step = self.input.take().and_then(|input| self.inner.handle_input(input, rng).ok());
        step.map(|s| self.filtered(s)).unwrap_or_default()
    }

    fn receive(&mut self, from: NodeIndex, bytes: &[u8], rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        let Ok(message) = Message::from_bytes(bytes) else { return Vec::new() };
        let mut out = Vec::new();
        match &message {
            Message::Subset { epoch, message: acs::Message::Broadcast { proposer, message } } => {
                if let Some(envelope) = self.observe(from, *epoch, *proposer, message.clone()) {
                    out.extend(self.copy(*epoch, &envelope, rng));
                }
            }
            Message::Decryption { epoch, proposer, .. }
                if *proposer == self.me && from != self.me && self.copied.contains(epoch) =>
            {
                self.note(|log| log.copied_shares_received += 1);
            }
            _ => {}
        }
        let step = self.inner.handle(from, message, rng);
        out.extend(self.filtered(step));
        out
    }
}
