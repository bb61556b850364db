//! Byzantine actors: what a replica controlled by the adversary does instead of the protocol.

use std::collections::{BTreeMap, BTreeSet};

use fides_agreement::Message as AbaMessage;
use fides_types::codec::Wire;
use fides_types::{NodeIndex, Protocol, Quorum, Step, Target};
use rand::seq::SliceRandom;
use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;

/// What a simulation needs to know about a protocol to run honest and Byzantine replicas.
pub trait Scenario {
    /// The protocol.
    type P: Protocol;

    /// A fresh honest instance at `index`.
    fn honest(&self, index: NodeIndex) -> Self::P;

    /// The input an honest replica at `index` gets, if any.
    fn input(&self, index: NodeIndex) -> Option<<Self::P as Protocol>::Input>;

    /// Another input, for the second face of an equivocator.
    fn input_other(&self, index: NodeIndex) -> Option<<Self::P as Protocol>::Input>;

    /// An honest instance of a *different* protocol instance, whose messages a replayer mixes in.
    fn other_instance(&self, index: NodeIndex) -> Self::P;

    /// Bytes a garbage actor sends: well-formed messages with out-of-range fields, invalid
    /// cryptographic material, huge length prefixes, truncations.
    fn garbage(&self, rng: &mut ChaCha8Rng) -> Vec<u8>;

    /// The protocol-specific attacker of [`Behaviour::Adaptive`] at `index`: it may share what it
    /// knows with the other attackers and with a content-aware scheduler.
    fn adaptive(&self, index: NodeIndex) -> Box<dyn Byzantine<Self::P>>;

    /// Where the protocol's messages carry binary agreement messages, for [`Behaviour::Rusher`];
    /// `None` for a protocol without agreements.
    fn agreements(&self) -> Option<AgreementView<<Self::P as Protocol>::Message>> {
        None
    }
}

/// Names one binary agreement inside a protocol: `(epoch, proposer)` for atomic broadcast,
/// `(0, proposer)` for the common subset, `(0, 0)` for a lone agreement.
pub type AgreementKey = (u64, u32);

/// How a protocol's messages carry binary agreement messages.
pub struct AgreementView<M> {
    /// The agreement and its message inside `message`, if it carries one.
    pub open: fn(&M) -> Option<(AgreementKey, &AbaMessage)>,
    /// An agreement message as a message of the protocol.
    pub wrap: fn(AgreementKey, AbaMessage) -> M,
}

/// What a replica does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Follows the protocol.
    Honest,
    /// Follows the protocol, then stops for good after handling this many messages.
    Crash {
        /// Messages handled before the crash.
        after: u32,
    },
    /// Sends nothing at all.
    Silent,
    /// Runs two honest instances with different inputs and shows each to half of the replicas.
    Equivocator,
    /// Sends random bytes and well-formed messages with nonsense in them.
    Garbage,
    /// Sends again what it received and sent earlier, and messages of another instance.
    Replayer,
    /// Tries to send messages under the names of the replicas it received them from.
    Impersonator,
    /// A protocol-specific attacker that the scenario supplies, coordinated with the other
    /// attackers and the content-aware scheduler (for agreement: it learns each round's coin and
    /// votes so as to split the honest replicas around it).
    Adaptive,
    /// Takes part in every binary agreement like an honest replica, except that it sends its
    /// `AUX` to one replica only (the first it heard from in that agreement, which can then
    /// complete rounds the others cannot), and sends `TERM(b)` — as soon as it knows a decided
    /// `b`, from its own instance or another replica's TERM — only to the replicas that have not
    /// proposed yet (those it has had no `AUX` from), so that `t` of them and one honest `TERM`
    /// make a replica decide before it proposes. Agreement-carrying protocols only.
    Rusher,
}

impl Behaviour {
    /// Every Byzantine kind, for tests that go through them all.
    pub fn byzantine_kinds() -> Vec<Behaviour> {
        vec![
            Behaviour::Crash { after: 5 },
            Behaviour::Silent,
            Behaviour::Equivocator,
            Behaviour::Garbage,
            Behaviour::Replayer,
            Behaviour::Impersonator,
            Behaviour::Adaptive,
        ]
    }

    /// A short name.
    pub fn name(&self) -> &'static str {
        match self {
            Behaviour::Honest => "honest",
            Behaviour::Crash { .. } => "crash",
            Behaviour::Silent => "silent",
            Behaviour::Equivocator => "equivocator",
            Behaviour::Garbage => "garbage",
            Behaviour::Replayer => "replayer",
            Behaviour::Impersonator => "impersonator",
            Behaviour::Adaptive => "adaptive",
            Behaviour::Rusher => "rusher",
        }
    }
}

/// A message a Byzantine actor sends.
#[derive(Clone, Debug)]
pub struct ByzantineSend {
    /// Recipients.
    pub target: Target,
    /// The bytes.
    pub bytes: Vec<u8>,
    /// The sender it claims to be; the network delivers under the real one regardless.
    pub claimed_from: Option<NodeIndex>,
}

impl ByzantineSend {
    /// A message under the actor's own name.
    pub fn new(target: Target, bytes: Vec<u8>) -> Self {
        ByzantineSend { target, bytes, claimed_from: None }
    }
}

/// A replica controlled by the adversary.
pub trait Byzantine<P: Protocol> {
    /// What it sends at the start.
    fn start(&mut self, rng: &mut ChaCha8Rng) -> Vec<ByzantineSend>;

    /// What it sends on receiving `bytes` from `from`.
    fn receive(&mut self, from: NodeIndex, bytes: &[u8], rng: &mut ChaCha8Rng) -> Vec<ByzantineSend>;
}

/// Build the actor for `behaviour` at `index`.
pub fn make<Sc: Scenario>(
    behaviour: &Behaviour,
    index: NodeIndex,
    scenario: &Sc,
    quorum: Quorum,
) -> Box<dyn Byzantine<Sc::P>>
where
    Sc::P: 'static,
    <Sc::P as Protocol>::Input: 'static,
{
    match behaviour {
        Behaviour::Honest => unreachable!("honest replicas are not actors"),
        Behaviour::Crash { after } => {
            Box::new(Crash { inner: scenario.honest(index), input: scenario.input(index), handled: 0, after: *after })
        }
        Behaviour::Silent => Box::new(Silent),
        Behaviour::Equivocator => Box::new(Equivocator {
            faces: [scenario.honest(index), scenario.honest(index)],
            inputs: [scenario.input(index), scenario.input_other(index)],
            quorum,
        }),
        Behaviour::Garbage => Box::new(Garbage { garbage: garbage_samples(scenario), quorum, sent: 0 }),
        Behaviour::Replayer => Box::new(Replayer {
            other: scenario.other_instance(index),
            input: scenario.input_other(index),
            seen: Vec::new(),
            quorum,
            sent: 0,
        }),
        Behaviour::Adaptive => scenario.adaptive(index),
        Behaviour::Rusher => {
            let view = scenario.agreements().expect("the rusher needs a protocol that runs binary agreements");
            Box::new(Rusher {
                inner: scenario.honest(index),
                input: scenario.input(index),
                index,
                quorum,
                view,
                agreements: BTreeMap::new(),
            })
        }
        Behaviour::Impersonator => {
            Box::new(Impersonator { inner: scenario.honest(index), input: scenario.input(index), quorum, forwarded: 0 })
        }
    }
}

/// Garbage actors draw from a pool made by the scenario up front, so they need no reference to it.
fn garbage_samples<Sc: Scenario>(scenario: &Sc) -> Vec<Vec<u8>> {
    let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0x6a72_6261_6765);
    (0..64).map(|_| scenario.garbage(&mut rng)).collect()
}

/// Turn an honest step into sends.
fn sends_of<P: Protocol>(step: Step<P::Message, P::Output>) -> Vec<ByzantineSend> {
    step.messages.into_iter().map(|m| ByzantineSend::new(m.target, m.message.to_bytes())).collect()
}

fn handle_honest<P: Protocol>(
    protocol: &mut P,
    from: NodeIndex,
    bytes: &[u8],
    rng: &mut ChaCha8Rng,
) -> Step<P::Message, P::Output> {
    match P::Message::from_bytes(bytes) {
        Ok(message) => protocol.handle_message(from, message, rng),
        Err(_) => Step::default(),
    }
}

fn start_honest<P: Protocol>(
    protocol: &mut P,
    input: Option<P::Input>,
    rng: &mut ChaCha8Rng,
) -> Step<P::Message, P::Output> {
    input.and_then(|input| protocol.handle_input(input, rng).ok()).unwrap_or_default()
}

/// Budgets keep Byzantine traffic finite (and the simulation fast): each actor sends at most this
/// many messages beyond what its honest part sends.
const BYZANTINE_SENDS_MAX: u32 = 500;

struct Silent;

impl<P: Protocol> Byzantine<P> for Silent {
    fn start(&mut self, _rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        Vec::new()
    }

    fn receive(&mut self, _from: NodeIndex, _bytes: &[u8], _rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        Vec::new()
    }
}

struct Crash<P: Protocol> {
    inner: P,
    input: Option<P::Input>,
    handled: u32,
    after: u32,
}

impl<P: Protocol> Byzantine<P> for Crash<P> {
    fn start(&mut self, rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        sends_of::<P>(start_honest(&mut self.inner, self.input.take(), rng))
    }

    fn receive(&mut self, from: NodeIndex, bytes: &[u8], rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        if self.handled >= self.after {
            return Vec::new();
        }
        self.handled += 1;
        sends_of::<P>(handle_honest(&mut self.inner, from, bytes, rng))
    }
}

struct Equivocator<P: Protocol> {
    faces: [P; 2],
    inputs: [Option<P::Input>; 2],
    quorum: Quorum,
}

impl<P: Protocol> Equivocator<P> {
    /// Face 0 talks to the lower half of the replicas, face 1 to the upper half.
    fn split(&self, face: usize, step: Step<P::Message, P::Output>) -> Vec<ByzantineSend> {
        let half = self.quorum.n() / 2;
        let mut sends = Vec::new();
        for outgoing in step.messages {
            let bytes = outgoing.message.to_bytes();
            for to in self.quorum.nodes().filter(|to| usize::from(to.0 >= half) == face) {
                if outgoing.target == Target::All || outgoing.target == Target::Node(to) {
                    sends.push(ByzantineSend::new(Target::Node(to), bytes.clone()));
                }
            }
        }
        sends
    }
}

impl<P: Protocol> Byzantine<P> for Equivocator<P> {
    fn start(&mut self, rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        let mut sends = Vec::new();
        for face in 0..2 {
            let step = start_honest(&mut self.faces[face], self.inputs[face].take(), rng);
            sends.extend(self.split(face, step));
        }
        sends
    }

    fn receive(&mut self, from: NodeIndex, bytes: &[u8], rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        let mut sends = Vec::new();
        for face in 0..2 {
            let step = handle_honest(&mut self.faces[face], from, bytes, rng);
            sends.extend(self.split(face, step));
        }
        sends
    }
}

struct Garbage {
    garbage: Vec<Vec<u8>>,
    quorum: Quorum,
    sent: u32,
}

impl Garbage {
    fn spray(&mut self, rng: &mut ChaCha8Rng, count: usize) -> Vec<ByzantineSend> {
        let mut sends = Vec::new();
        for _ in 0..count {
            if self.sent >= BYZANTINE_SENDS_MAX {
                break;
            }
            self.sent += 1;
            let to = Target::Node(NodeIndex(rng.gen_range(0..self.quorum.n())));
            let bytes = match rng.gen_range(0..4) {
                0 => {
                    let mut bytes = vec![0u8; rng.gen_range(0..300)];
                    rng.fill_bytes(&mut bytes);
                    bytes
                }
                1 => {
                    // A sample with some bytes flipped.
                    let mut bytes = self.garbage.choose(rng).cloned().unwrap_or_default();
                    for _ in 0..rng.gen_range(1..4) {
                        if let Some(byte) = bytes.choose_mut(rng) {
                            *byte ^= 1 << rng.gen_range(0..8);
                        }
                    }
                    bytes
                }
                _ => self.garbage.choose(rng).cloned().unwrap_or_default(),
            };
            sends.push(ByzantineSend::new(to, bytes));
        }
        sends
    }
}

impl<P: Protocol> Byzantine<P> for Garbage {
    fn start(&mut self, rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        let count = 4 * self.quorum.n() as usize;
        self.spray(rng, count)
    }

    fn receive(&mut self, _from: NodeIndex, _bytes: &[u8], rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        self.spray(rng, 1)
    }
}

struct Replayer<P: Protocol> {
    other: P,
    input: Option<P::Input>,
    seen: Vec<Vec<u8>>,
    quorum: Quorum,
    sent: u32,
}

const REPLAY_MEMORY_MAX: usize = 512;

impl<P: Protocol> Byzantine<P> for Replayer<P> {
    fn start(&mut self, rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        let sends = sends_of::<P>(start_honest(&mut self.other, self.input.take(), rng));
        self.seen.extend(sends.iter().map(|s| s.bytes.clone()));
        sends
    }

    fn receive(&mut self, from: NodeIndex, bytes: &[u8], rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        if self.seen.len() < REPLAY_MEMORY_MAX {
            self.seen.push(bytes.to_vec());
        }
        // Messages of another instance: an honest run of it, fed what this one receives.
        let mut sends = sends_of::<P>(handle_honest(&mut self.other, from, bytes, rng));
        self.seen.extend(sends.iter().map(|s| s.bytes.clone()).take(REPLAY_MEMORY_MAX.saturating_sub(self.seen.len())));
        // Old messages, its own and others', to random replicas.
        for _ in 0..2 {
            if self.sent >= BYZANTINE_SENDS_MAX {
                break;
            }
            if let Some(old) = self.seen.choose(rng) {
                self.sent += 1;
                let to = Target::Node(NodeIndex(rng.gen_range(0..self.quorum.n())));
                sends.push(ByzantineSend::new(to, old.clone()));
            }
        }
        sends
    }
}

struct Impersonator<P: Protocol> {
    inner: P,
    input: Option<P::Input>,
    quorum: Quorum,
    forwarded: u32,
}

impl<P: Protocol> Byzantine<P> for Impersonator<P> {
    fn start(&mut self, rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        sends_of::<P>(start_honest(&mut self.inner, self.input.take(), rng))
    }

    fn receive(&mut self, from: NodeIndex, bytes: &[u8], rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        // It takes part honestly, and sends what it hears on to another replica, claiming to be
        // the replica it heard it from.
        let mut sends = sends_of::<P>(handle_honest(&mut self.inner, from, bytes, rng));
        if self.forwarded < BYZANTINE_SENDS_MAX {
            self.forwarded += 1;
            let to = NodeIndex(rng.gen_range(0..self.quorum.n()));
            sends.push(ByzantineSend { target: Target::Node(to), bytes: bytes.to_vec(), claimed_from: Some(from) });
        }
        sends
    }
}

/// What the rusher knows of one agreement.
#[derive(Default)]
struct Rushed {
    /// The replica its AUX goes to: the first one it had an AUX from in this agreement (one that
    /// runs rounds, and that the others' missing AUX will hold back).
    favoured: Option<NodeIndex>,
    /// Its own AUX messages while no replica is favoured yet.
    aux_held: Vec<AbaMessage>,
    /// Replicas that sent it an AUX in this agreement: they have an estimate, so have proposed.
    proposed: BTreeSet<NodeIndex>,
    /// A TERM of the decided value (with its justification), once known.
    term: Option<AbaMessage>,
    /// Replicas it sent TERM to.
    termed: BTreeSet<NodeIndex>,
}

struct Rusher<P: Protocol> {
    inner: P,
    input: Option<P::Input>,
    index: NodeIndex,
    quorum: Quorum,
    view: AgreementView<P::Message>,
    /// Per agreement the honest part has seen (a run is finite, so this is too).
    agreements: BTreeMap<AgreementKey, Rushed>,
}

impl<P: Protocol> Rusher<P> {
    /// Note what a message received says about its agreement; a TERM tells the decided value
    /// (if its sender lies, the TERMs we pass on are merely wrong, which we may do).
    fn observe(&mut self, from: NodeIndex, message: &P::Message) -> Option<AgreementKey> {
        let (key, message) = (self.view.open)(message)?;
        let rushed = self.agreements.entry(key).or_default();
        match message {
            AbaMessage::Aux { .. } => {
                rushed.proposed.insert(from);
                if from != self.index && rushed.favoured.is_none() {
                    rushed.favoured = Some(from);
                }
            }
            AbaMessage::Term { .. } if from != self.index && rushed.term.is_none() => {
                rushed.term = Some(message.clone());
            }
            _ => {}
        }
        Some(key)
    }

    /// The honest part's messages, with AUX narrowed to the favoured replica and TERM kept back
    /// (the rusher sends TERMs its own way); `touched` gets the agreements whose TERM it learned.
    fn filter(&mut self, step: Step<P::Message, P::Output>, touched: &mut Vec<AgreementKey>) -> Vec<ByzantineSend> {
        let mut sends = Vec::new();
        for outgoing in step.messages {
            let target = match (self.view.open)(&outgoing.message) {
                Some((key, aux @ AbaMessage::Aux { .. })) => {
                    let rushed = self.agreements.entry(key).or_default();
                    match rushed.favoured {
                        Some(favoured) => Target::Node(favoured),
                        None => {
                            rushed.aux_held.push(aux.clone());
                            continue;
                        }
                    }
                }
                Some((key, term @ AbaMessage::Term { .. })) => {
                    self.agreements.entry(key).or_default().term.get_or_insert_with(|| term.clone());
                    touched.push(key);
                    continue;
                }
                _ => outgoing.target,
            };
            sends.push(ByzantineSend::new(target, outgoing.message.to_bytes()));
        }
        sends
    }

    /// In each agreement of `keys`: the AUX held for the favoured replica once there is one, and
    /// if it knows the decided value, TERM to every replica that has not proposed (once each).
    fn rush(&mut self, keys: &[AgreementKey]) -> Vec<ByzantineSend> {
        let mut sends = Vec::new();
        for key in keys {
            let Some(rushed) = self.agreements.get_mut(key) else { continue };
            if let Some(favoured) = rushed.favoured {
                for aux in std::mem::take(&mut rushed.aux_held) {
                    sends.push(ByzantineSend::new(Target::Node(favoured), (self.view.wrap)(*key, aux).to_bytes()));
                }
            }
            let Some(term) = &rushed.term else { continue };
            for to in self.quorum.nodes() {
                if to == self.index || rushed.proposed.contains(&to) || !rushed.termed.insert(to) {
                    continue;
                }
                sends.push(ByzantineSend::new(Target::Node(to), (self.view.wrap)(*key, term.clone()).to_bytes()));
            }
        }
        sends
    }
}

impl<P: Protocol> Byzantine<P> for Rusher<P> {
    fn start(&mut self, rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        let step = start_honest(&mut self.inner, self.input.take(), rng);
        let mut touched = Vec::new();
        let mut sends = self.filter(step, &mut touched);
        sends.extend(self.rush(&touched));
        sends
    }

    fn receive(&mut self, from: NodeIndex, bytes: &[u8], rng: &mut ChaCha8Rng) -> Vec<ByzantineSend> {
        let Ok(message) = P::Message::from_bytes(bytes) else { return Vec::new() };
        let mut touched: Vec<AgreementKey> = self.observe(from, &message).into_iter().collect();
        let step = self.inner.handle_message(from, message, rng);
        let mut sends = self.filter(step, &mut touched);
        sends.extend(self.rush(&touched));
        sends
    }
}
