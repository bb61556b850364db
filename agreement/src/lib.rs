//! Asynchronous binary Byzantine agreement (ABA) with a threshold common coin, plain and validated.
//!
//! Mostéfaoui–Moumen–Raynal (PODC 2014) with the CONF phase of Cobalt (MacBrough 2018), for
//! `n >= 3t + 1` replicas of which `t` may be Byzantine. No timing assumption is made.
//!
//! # The protocol, as rules
//!
//! Every replica has an estimate `est` and runs rounds `r = 0, 1, …`. In round `r`:
//!
//! 1. It broadcasts `BVAL(r, est)`.
//! 2. Upon `BVAL(r, b)` from `t + 1` replicas, it broadcasts `BVAL(r, b)` if it has not yet.
//!    This relay goes on for every round it holds, past ones included: a replica that is behind
//!    needs the others' relays to complete a round they have left.
//! 3. Upon `BVAL(r, b)` from `2t + 1` replicas, `b` joins `bin_values(r)`; the first value to join
//!    is broadcast as `AUX(r, b)`.
//! 4. Upon `AUX(r, ·)` from `n - t` replicas whose values are all in `bin_values(r)`:
//!    - in a round with a fixed coin, `vals` is the set of those values;
//!    - in a round with the threshold coin, it broadcasts `CONF(r, bin_values(r))` and waits for
//!      `CONF` from `n - t` replicas whose sets are subsets of `bin_values(r)`; `vals` is their union.
//! 5. With `vals` fixed, the coin of round `r` is taken: in the threshold rounds the replica now,
//!    and only now, broadcasts its coin share, a BLS threshold signature share on
//!    `(instance, r)`; `t + 1` valid shares combine into the signature, and the coin is the low
//!    bit of SHA-256 of it.
//! 6. If `vals = {b}`: `est = b`, and if `b` equals the coin the replica **decides** `b`.
//!    Otherwise `est = coin`. It moves to round `r + 1`.
//!
//! Termination: on deciding `b` a replica broadcasts `TERM(b)` and keeps running rounds with
//! `est = b`. Upon `TERM(b)` from `t + 1` replicas it decides `b` (some honest replica did); upon
//! `TERM(b)` from `2t + 1` it terminates: then every honest replica receives `t + 1` of them.
//!
//! Coin schedule: round `r` uses the coin `true` if `r % 3 == 0`, `false` if `r % 3 == 1`, and the
//! threshold coin if `r % 3 == 2`. Safety never depends on the coin; termination needs only that
//! the threshold rounds recur. With all honest replicas proposing the same value the fixed rounds
//! decide within two rounds without any pairing.
//!
//! # Validated agreement
//!
//! With a [`Validator`] that requires justifications (Cachin–Kursawe–Shoup's validated agreement),
//! every `BVAL(r, 1)` and `TERM(1)` carries a justification, and a message for 1 whose
//! justification fails the predicate is a fault and is not counted. `1` joins `bin_values` only
//! after `2t + 1` justified votes, so a replica whose estimate becomes 1 always holds one, and a
//! decision of 1 returns it.
//!
//! # Deviations from the papers
//!
//! - MMR's replicas never stop; hbbft counts a `TERM(b)` as `BVAL`, `AUX` and `CONF` in every
//!   later round of the receiver. We do neither: a decided replica keeps running rounds until
//!   `2t + 1` `TERM(b)`, which needs no reinterpretation of votes (see `docs/agreement.md`).
//! - CONF is sent only in threshold-coin rounds, where it is what stops a scheduler that sees
//!   the coin early (HoneyBadgerBFT issue 59). In fixed-coin rounds the coin is public anyway.
//! - Only the first `AUX`, `CONF`, coin share and `TERM` of each sender per round count; a second
//!   different one is an equivocation fault.

#![forbid(unsafe_code)]

mod message;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use fides_crypto::blsttc::{G2Affine, SignatureShare, SIG_SIZE};
use fides_crypto::{domain, hash_to_g2, sha256, CombineError, ThresholdKeys};
use fides_types::{FaultKind, NodeIndex, Protocol, Quorum, Round, Step};

pub use message::{BoolSet, Message, JUSTIFICATION_WIRE_MAX};

/// The step type of binary agreement.
pub type AbaStep = Step<Message, Decision>;

/// Decides which justifications make a vote for 1 acceptable.
pub trait Validator {
    /// Whether votes for 1 must carry a justification at all (false: plain agreement).
    fn requires_justification(&self) -> bool;

    /// Whether `justification` makes a vote for 1 acceptable.
    fn is_valid(&self, justification: &[u8]) -> bool;
}

/// Plain binary agreement: no justification, and none may be sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unvalidated;

impl Validator for Unvalidated {
    fn requires_justification(&self) -> bool {
        false
    }

    fn is_valid(&self, justification: &[u8]) -> bool {
        justification.is_empty()
    }
}

impl<F: Fn(&[u8]) -> bool> Validator for F {
    fn requires_justification(&self) -> bool {
        true
    }

    fn is_valid(&self, justification: &[u8]) -> bool {
        self(justification)
    }
}

/// Configuration of one agreement instance.
#[derive(Clone, Debug)]
pub struct Config {
    /// Identifies the instance; it is signed by the coin, so two instances never share a coin.
    pub instance: Vec<u8>,
    /// Rounds beyond the current one whose messages are kept; a message further ahead is a fault.
    pub rounds_future_max: u32,
    /// Longest justification accepted.
    pub justification_len_max: usize,
    /// Whether threshold-coin rounds have the CONF phase. Always `true` in Fides; `false` exists
    /// only so that the simulator can show the scheduler attack that CONF prevents.
    pub conf_phase: bool,
}

impl Config {
    /// Defaults for an instance named `instance`.
    pub fn new(instance: impl Into<Vec<u8>>) -> Self {
        Config { instance: instance.into(), rounds_future_max: 16, justification_len_max: 16 * 1024, conf_phase: true }
    }
}

/// A decision, with the justification when it is 1 under a validator that requires one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The value decided.
    pub value: bool,
    /// A justification for 1 that passed the predicate (validated agreement only).
    pub justification: Option<Vec<u8>>,
    /// The round in which this replica decided.
    pub round: Round,
}

/// What this replica proposes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Vote {
    /// Propose 0.
    Zero,
    /// Propose 1, with a justification (empty for plain agreement).
    One(Vec<u8>),
}

/// Local errors: a misuse by the caller, never something a peer did.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `propose` called twice.
    #[error("this replica has already proposed")]
    AlreadyProposed,
    /// A vote for 1 whose justification fails the predicate.
    #[error("the justification of our own vote for 1 does not pass the predicate")]
    InvalidOwnJustification,
}

/// Per-round state.
#[derive(Debug, Default)]
struct RoundState {
    bval_received: [BTreeSet<NodeIndex>; 2],
    bval_sent: [bool; 2],
    bin_values: BoolSet,
    aux_received: BTreeMap<NodeIndex, bool>,
    aux_sent: bool,
    conf_received: BTreeMap<NodeIndex, BoolSet>,
    conf_sent: bool,
    vals: Option<BoolSet>,
    /// Every coin share received, compressed, one per sender.
    coin_shares: BTreeMap<NodeIndex, [u8; SIG_SIZE]>,
    /// Senders whose share is not yet decompressed, in arrival order.
    coin_shares_pending: std::collections::VecDeque<NodeIndex>,
    /// Shares decompressed for combining and not (yet) found invalid.
    coin_shares_decoded: BTreeMap<NodeIndex, SignatureShare>,
    coin_sent: bool,
    coin: Option<bool>,
}

/// One instance of binary agreement at one replica.
pub struct BinaryAgreement<V: Validator = Unvalidated> {
    quorum: Quorum,
    our_index: NodeIndex,
    coin_keys: Arc<ThresholdKeys>,
    config: Config,
    validator: V,
    round: Round,
    estimate: Option<bool>,
    rounds: BTreeMap<Round, RoundState>,
    /// Justifications for 1 known to pass the predicate (at most a few distinct ones are kept).
    justifications_valid: Vec<Vec<u8>>,
    decision: Option<Decision>,
    term_received: BTreeMap<NodeIndex, bool>,
    term_sent: bool,
    terminated: bool,
    coin_points: BTreeMap<Round, G2Affine>,
    /// Replicas that sent an invalid coin share: their later shares are verified one by one
    /// before they may spoil an optimistic combination.
    coin_suspects: BTreeSet<NodeIndex>,
}

impl<V: Validator> std::fmt::Debug for BinaryAgreement<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BinaryAgreement")
            .field("our_index", &self.our_index)
            .field("round", &self.round)
            .field("estimate", &self.estimate)
            .field("decision", &self.decision)
            .field("terminated", &self.terminated)
            .finish_non_exhaustive()
    }
}

/// The coin of a round, when it is fixed.
fn coin_fixed(round: Round) -> Option<bool> {
    match round.0 % 3 {
        0 => Some(true),
        1 => Some(false),
        _ => None,
    }
}

const JUSTIFICATIONS_CACHED_MAX: usize = 4;

impl<V: Validator> BinaryAgreement<V> {
    /// A new instance at replica `our_index`, using the coin key set `coin_keys`.
    pub fn new(
        quorum: Quorum,
        our_index: NodeIndex,
        coin_keys: Arc<ThresholdKeys>,
        config: Config,
        validator: V,
    ) -> Self {
        BinaryAgreement {
            quorum,
            our_index,
            coin_keys,
            config,
            validator,
            round: Round(0),
            estimate: None,
            rounds: BTreeMap::new(),
            justifications_valid: Vec::new(),
            decision: None,
            term_received: BTreeMap::new(),
            term_sent: false,
            terminated: false,
            coin_points: BTreeMap::new(),
            coin_suspects: BTreeSet::new(),
        }
    }

    /// The decision, once made.
    pub fn decision(&self) -> Option<&Decision> {
        self.decision.as_ref()
    }

    /// The round this replica is in.
    pub fn round(&self) -> Round {
        self.round
    }

    /// Propose a value. Call once.
    pub fn propose(&mut self, vote: Vote) -> Result<AbaStep, Error> {
        if self.estimate.is_some() || self.decision.is_some() {
            return Err(Error::AlreadyProposed);
        }
        let mut step = AbaStep::default();
        let value = match vote {
            Vote::Zero => false,
            Vote::One(justification) => {
                if !self.validator.is_valid(&justification) {
                    return Err(Error::InvalidOwnJustification);
                }
                self.remember_justification(justification);
                true
            }
        };
        self.estimate = Some(value);
        self.send_bval(self.round, value, &mut step);
        self.try_progress(&mut step);
        Ok(step)
    }

    /// Handle a message from `from`.
    pub fn handle(&mut self, from: NodeIndex, message: Message) -> AbaStep {
        let mut step = AbaStep::default();
        if self.terminated {
            return step;
        }
        if !self.quorum.contains(from) {
            step.fault(from, FaultKind::UnknownSender);
            return step;
        }
        match message {
            Message::BVal { round, value, justification } => {
                self.handle_bval(from, round, value, justification, &mut step)
            }
            Message::Aux { round, value } => self.handle_aux(from, round, value, &mut step),
            Message::Conf { round, values } => self.handle_conf(from, round, values, &mut step),
            Message::Coin { round, share } => self.handle_coin(from, round, share, &mut step),
            Message::Term { value, justification } => self.handle_term(from, value, justification, &mut step),
        }
        self.try_progress(&mut step);
        step
    }

    /// The state of `round` if its messages are to be kept, or a fault.
    fn round_state(&mut self, from: NodeIndex, round: Round, step: &mut AbaStep) -> Option<&mut RoundState> {
        if round.0 > self.round.0.saturating_add(self.config.rounds_future_max) {
            step.fault(from, FaultKind::RoundTooFar);
            return None;
        }
        Some(self.rounds.entry(round).or_default())
    }

    /// Check a justification carried by a message for `value`; record a fault if it fails.
    fn accept_justification(
        &mut self,
        from: NodeIndex,
        value: bool,
        justification: Vec<u8>,
        step: &mut AbaStep,
    ) -> bool {
        let needed = value && self.validator.requires_justification();
        if !needed {
            if !justification.is_empty() {
                step.fault(from, FaultKind::UnexpectedJustification);
                return false;
            }
            return true;
        }
        if self.justifications_valid.contains(&justification) {
            return true;
        }
        if justification.len() > self.config.justification_len_max || !self.validator.is_valid(&justification) {
            step.fault(from, FaultKind::InvalidJustification);
            return false;
        }
        self.remember_justification(justification);
        true
    }

    fn remember_justification(&mut self, justification: Vec<u8>) {
        if self.justifications_valid.len() < JUSTIFICATIONS_CACHED_MAX
            && !self.justifications_valid.contains(&justification)
        {
            self.justifications_valid.push(justification);
        }
    }

    /// The justification that goes with a message for `value`.
    fn justification_for(&self, value: bool) -> Vec<u8> {
        if value && self.validator.requires_justification() {
            // Invariant: a replica only votes 1 after proposing 1 with a valid justification or
            // after 2t + 1 justified BVAL(1), each of which was remembered.
            self.justifications_valid.first().cloned().expect("a replica that votes 1 holds a justification for it")
        } else {
            Vec::new()
        }
    }

    fn handle_bval(&mut self, from: NodeIndex, round: Round, value: bool, justification: Vec<u8>, step: &mut AbaStep) {
        if !self.accept_justification(from, value, justification, step) {
            return;
        }
        let Some(state) = self.round_state(from, round, step) else { return };
        if !state.bval_received[usize::from(value)].insert(from) {
            step.fault(from, FaultKind::Duplicate);
            return;
        }
        self.relay_bvals(round, step);
    }

    fn handle_aux(&mut self, from: NodeIndex, round: Round, value: bool, step: &mut AbaStep) {
        let Some(state) = self.round_state(from, round, step) else { return };
        match state.aux_received.get(&from) {
            None => {
                state.aux_received.insert(from, value);
            }
            Some(&earlier) if earlier == value => step.fault(from, FaultKind::Duplicate),
            Some(_) => step.fault(from, FaultKind::Equivocation),
        }
    }

    fn handle_conf(&mut self, from: NodeIndex, round: Round, values: BoolSet, step: &mut AbaStep) {
        if values.is_empty() {
            step.fault(from, FaultKind::EmptySet);
            return;
        }
        let Some(state) = self.round_state(from, round, step) else { return };
        match state.conf_received.get(&from) {
            None => {
                state.conf_received.insert(from, values);
            }
            Some(&earlier) if earlier == values => step.fault(from, FaultKind::Duplicate),
            Some(_) => step.fault(from, FaultKind::Equivocation),
        }
    }

    fn handle_coin(&mut self, from: NodeIndex, round: Round, share: [u8; SIG_SIZE], step: &mut AbaStep) {
        if coin_fixed(round).is_some() {
            // Nobody sends shares in a fixed-coin round.
            step.fault(from, FaultKind::InvalidCoinShare);
            return;
        }
        let Some(state) = self.round_state(from, round, step) else { return };
        if state.coin.is_some() {
            return;
        }
        match state.coin_shares.get(&from) {
            None => {
                state.coin_shares.insert(from, share);
                state.coin_shares_pending.push_back(from);
            }
            Some(earlier) if *earlier == share => step.fault(from, FaultKind::Duplicate),
            Some(_) => step.fault(from, FaultKind::Equivocation),
        }
    }

    fn handle_term(&mut self, from: NodeIndex, value: bool, justification: Vec<u8>, step: &mut AbaStep) {
        if !self.accept_justification(from, value, justification, step) {
            return;
        }
        match self.term_received.get(&from) {
            None => {
                self.term_received.insert(from, value);
            }
            Some(&earlier) if earlier == value => step.fault(from, FaultKind::Duplicate),
            Some(_) => step.fault(from, FaultKind::Equivocation),
        }
    }

    fn send_bval(&mut self, round: Round, value: bool, step: &mut AbaStep) {
        let justification = self.justification_for(value);
        let state = self.rounds.entry(round).or_default();
        if !state.bval_sent[usize::from(value)] {
            state.bval_sent[usize::from(value)] = true;
            step.broadcast(Message::BVal { round, value, justification });
        }
    }

    /// Apply every rule whose condition now holds, until none does.
    fn try_progress(&mut self, step: &mut AbaStep) {
        if self.terminated {
            return;
        }
        self.try_terminate_by_term(step);
        if self.terminated {
            return;
        }
        if self.estimate.is_none() {
            return;
        }
        loop {
            let round = self.round;
            self.update_bin_values(round, step);
            let Some(vals) = self.try_fix_vals(round, step) else { return };
            let Some(coin) = self.try_coin(round, step) else { return };
            let estimate = match vals.single() {
                Some(value) => {
                    if value == coin {
                        self.decide(value, round, step);
                    }
                    value
                }
                None => coin,
            };
            let Some(next) = round.next() else { return };
            self.estimate = Some(estimate);
            self.round = next;
            // Rounds before the previous one are kept only for relaying BVAL.
            self.send_bval(next, estimate, step);
            self.relay_bvals(next, step);
        }
    }

    /// Rule 2, for one round: relay a value that `t + 1` replicas sent. It applies in every round
    /// held, past ones included, and is checked whenever a BVAL of that round arrives.
    fn relay_bvals(&mut self, round: Round, step: &mut AbaStep) {
        let one_honest = self.quorum.one_honest() as usize;
        let Some(state) = self.rounds.get(&round) else { return };
        let to_send: Vec<bool> = [false, true]
            .into_iter()
            .filter(|v| !state.bval_sent[usize::from(*v)] && state.bval_received[usize::from(*v)].len() >= one_honest)
            .collect();
        for value in to_send {
            self.send_bval(round, value, step);
        }
    }

    /// Rule 3: values with `2t + 1` BVAL join `bin_values`; the first is sent as AUX.
    fn update_bin_values(&mut self, round: Round, step: &mut AbaStep) {
        let majority = self.quorum.honest_majority() as usize;
        let state = self.rounds.entry(round).or_default();
        for value in [false, true] {
            if state.bval_received[usize::from(value)].len() >= majority && !state.bin_values.contains(value) {
                state.bin_values.insert(value);
                if !state.aux_sent {
                    state.aux_sent = true;
                    step.broadcast(Message::Aux { round, value });
                }
            }
        }
    }

    /// Rule 4: fix `vals` once `n - t` AUX (and, in threshold-coin rounds, CONF) agree with
    /// `bin_values`.
    fn try_fix_vals(&mut self, round: Round, step: &mut AbaStep) -> Option<BoolSet> {
        let available = self.quorum.available() as usize;
        let conf_phase = self.config.conf_phase && coin_fixed(round).is_none();
        let state = self.rounds.get_mut(&round)?;
        if let Some(vals) = state.vals {
            return Some(vals);
        }
        let bin_values = state.bin_values;
        let mut aux_vals = BoolSet::default();
        let aux_count =
            state.aux_received.values().filter(|v| bin_values.contains(**v)).inspect(|v| aux_vals.insert(**v)).count();
        if aux_count < available && !state.conf_sent {
            return None;
        }
        if !conf_phase {
            state.vals = Some(aux_vals);
            return state.vals;
        }
        if !state.conf_sent {
            state.conf_sent = true;
            step.broadcast(Message::Conf { round, values: bin_values });
        }
        let mut conf_vals = BoolSet::default();
        let conf_count = state
            .conf_received
            .values()
            .filter(|set| set.is_subset(bin_values))
            .inspect(|set| conf_vals.extend(**set))
            .count();
        if conf_count < available {
            return None;
        }
        state.vals = Some(conf_vals);
        state.vals
    }

    /// Rule 5: the coin of `round`, once `vals` is fixed.
    fn try_coin(&mut self, round: Round, step: &mut AbaStep) -> Option<bool> {
        if let Some(coin) = coin_fixed(round) {
            return Some(coin);
        }
        let point = *self
            .coin_points
            .entry(round)
            .or_insert_with(|| hash_to_g2(domain::COIN, &[&self.config.instance, &round.0.to_le_bytes()]));
        let decided = self.decision.as_ref().map(|d| d.value);
        let needed = self.coin_keys.shares_needed();
        let state = self.rounds.get_mut(&round)?;
        if let Some(coin) = state.coin {
            return Some(coin);
        }
        if !state.coin_sent {
            state.coin_sent = true;
            step.broadcast(Message::Coin { round, share: self.coin_keys.sign_share(point).to_bytes() });
        }
        if let Some(value) = decided {
            // After a decision of b every honest estimate is b, so vals = {b} whatever the coin:
            // the share above lets the others go on, and combining would be wasted pairings.
            return Some(value);
        }
        loop {
            while state.coin_shares_decoded.len() < needed {
                let node = state.coin_shares_pending.pop_front()?;
                let Some(bytes) = state.coin_shares.get(&node) else { continue };
                match SignatureShare::from_bytes(*bytes) {
                    Ok(share)
                        if !self.coin_suspects.contains(&node) || self.coin_keys.verify_share(node, &share, point) =>
                    {
                        state.coin_shares_decoded.insert(node, share);
                    }
                    _ => {
                        self.coin_suspects.insert(node);
                        step.fault(node, FaultKind::InvalidCoinShare);
                    }
                }
            }
            match self.coin_keys.combine(&state.coin_shares_decoded, point) {
                Ok(signature) => {
                    let coin = sha256(&signature.to_bytes())[0] & 1 == 1;
                    state.coin = Some(coin);
                    state.coin_shares_pending.clear();
                    state.coin_shares_decoded.clear();
                    return Some(coin);
                }
                Err(CombineError::NotEnough { .. }) => return None,
                Err(CombineError::InvalidShares(bad)) => {
                    if bad.is_empty() {
                        return None;
                    }
                    for node in bad {
                        state.coin_shares_decoded.remove(&node);
                        self.coin_suspects.insert(node);
                        step.fault(node, FaultKind::InvalidCoinShare);
                    }
                }
            }
        }
    }

    fn decide(&mut self, value: bool, round: Round, step: &mut AbaStep) {
        if self.decision.is_some() {
            return;
        }
        let justification = (value && self.validator.requires_justification()).then(|| self.justification_for(true));
        let decision = Decision { value, justification, round };
        self.decision = Some(decision.clone());
        step.outputs.push(decision);
        if !self.term_sent {
            self.term_sent = true;
            step.broadcast(Message::Term { value, justification: self.justification_for(value) });
        }
    }

    /// Decide on `t + 1` TERM(b); terminate on `2t + 1`.
    fn try_terminate_by_term(&mut self, step: &mut AbaStep) {
        for value in [false, true] {
            let count = self.term_received.values().filter(|v| **v == value).count();
            if count >= self.quorum.one_honest() as usize && self.decision.is_none() {
                self.decide(value, self.round, step);
            }
            let decided_this = self.decision.as_ref().is_some_and(|d| d.value == value);
            if count >= self.quorum.honest_majority() as usize && decided_this {
                self.terminated = true;
            }
        }
    }
}

impl<V: Validator> Protocol for BinaryAgreement<V> {
    type Input = Vote;
    type Message = Message;
    type Output = Decision;
    type Error = Error;

    fn our_index(&self) -> NodeIndex {
        self.our_index
    }

    fn handle_input(&mut self, input: Vote, _rng: &mut dyn rand::RngCore) -> Result<AbaStep, Error> {
        self.propose(input)
    }

    fn handle_message(&mut self, from: NodeIndex, message: Message, _rng: &mut dyn rand::RngCore) -> AbaStep {
        self.handle(from, message)
    }

    fn terminated(&self) -> bool {
        self.terminated
    }
}
