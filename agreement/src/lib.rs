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
//! A replica that decides through `t + 1` TERM before it proposed takes `b` as its estimate and
//! runs the rounds from where it is, as if it had proposed `b`: the others may need its `AUX`
//! to complete a round, and without it `n - t` honest votes are never guaranteed (a proposal
//! that comes later changes nothing). The argument is in `docs/agreement.md`.
//!
//! Catching up: messages more than `rounds_future_max` rounds ahead are dropped (a fault, kept
//! bounded). The receiver remembers, per sender, the range of rounds it dropped, and on entering
//! such a round sends that sender `RESEND(r)`; a replica answers a `RESEND(r)` for a round it has
//! been in, once per asker and round, with what it sent there (kept for this when the rest of the
//! round's state is pruned). An honest replica that is far behind therefore still gets every
//! message it needs, however far ahead the others ran.
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
//!   different one is an equivocation fault, the same one again is ignored (answers to `RESEND`
//!   repeat messages legitimately).
//! - `RESEND` is ours: the papers assume unbounded buffers, which a replica facing Byzantine
//!   peers cannot have.
//! - State of rounds before the previous one is pruned to the BVAL counts (for relaying) and what
//!   this replica sent (for answering `RESEND`).

#![forbid(unsafe_code)]

mod message;
mod state;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use fides_crypto::blsttc::{G2Affine, SignatureShare, SIG_SIZE};
use fides_crypto::{domain, hash_to_g2, sha256, CombineError, ThresholdKeys};
use fides_types::{FaultKind, NodeIndex, Outgoing, Protocol, Quorum, Round, Step, Target};

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
    /// Rounds beyond the current one whose messages are kept; a message further ahead is a
    /// `RoundTooFar` fault, dropped, and asked for again with `RESEND` when this replica gets
    /// there. Not proof of malice: an honest replica can be that far ahead of a slow one.
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
#[derive(Clone, Debug, Default)]
struct RoundState {
    bval_received: [BTreeSet<NodeIndex>; 2],
    bval_sent: [bool; 2],
    bin_values: BoolSet,
    aux_received: BTreeMap<NodeIndex, bool>,
    /// The AUX we sent.
    aux_own: Option<bool>,
    conf_received: BTreeMap<NodeIndex, BoolSet>,
    /// The CONF we sent.
    conf_own: Option<BoolSet>,
    vals: Option<BoolSet>,
    /// Every coin share received, compressed, one per sender.
    coin_shares: BTreeMap<NodeIndex, [u8; SIG_SIZE]>,
    /// Senders whose share is not yet decompressed, in arrival order.
    coin_shares_pending: VecDeque<NodeIndex>,
    /// Shares decompressed for combining and not (yet) found invalid.
    coin_shares_decoded: BTreeMap<NodeIndex, SignatureShare>,
    /// The coin share we sent.
    coin_share_own: Option<[u8; SIG_SIZE]>,
    coin: Option<bool>,
    /// Replicas whose RESEND of this round we answered.
    resent_to: BTreeSet<NodeIndex>,
}

impl RoundState {
    /// Forget what only the current round needs: kept are the BVAL counts (for relaying) and
    /// what we sent ourselves (for answering RESEND).
    fn prune(&mut self) {
        self.aux_received = BTreeMap::new();
        self.conf_received = BTreeMap::new();
        self.coin_shares = BTreeMap::new();
        self.coin_shares_pending = VecDeque::new();
        self.coin_shares_decoded = BTreeMap::new();
    }
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
    /// SHA-256 of justifications known to fail it (bounded), so a peer cannot make the predicate
    /// run again and again on the same bytes.
    justifications_invalid: BTreeSet<[u8; 32]>,
    decision: Option<Decision>,
    /// The round in which this replica decided by the coin (not by TERM).
    decided_by_coin: Option<Round>,
    /// Whether `propose` was called (the estimate may also come from a decision by TERM).
    proposed: bool,
    term_received: BTreeMap<NodeIndex, bool>,
    term_sent: bool,
    terminated: bool,
    coin_points: BTreeMap<Round, G2Affine>,
    /// Replicas that sent an invalid coin share: their later shares are verified one by one
    /// before they may spoil an optimistic combination.
    coin_suspects: BTreeSet<NodeIndex>,
    /// Per sender, the lowest and highest round of its messages dropped for being too far ahead;
    /// on reaching such a round we ask the sender to send that round again.
    dropped: BTreeMap<NodeIndex, (Round, Round)>,
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

/// What this replica sent in `round`, kept for answering RESEND; `justification_one` goes with a
/// vote for 1 (validated agreement).
fn own_messages(round: Round, state: &RoundState, justification_one: &Option<Vec<u8>>) -> Vec<Message> {
    let mut messages = Vec::new();
    for value in [false, true] {
        if state.bval_sent[usize::from(value)] {
            let justification = match (value, justification_one) {
                (true, Some(j)) => j.clone(),
                _ => Vec::new(),
            };
            messages.push(Message::BVal { round, value, justification });
        }
    }
    if let Some(value) = state.aux_own {
        messages.push(Message::Aux { round, value });
    }
    if let Some(values) = state.conf_own {
        messages.push(Message::Conf { round, values });
    }
    if let Some(share) = state.coin_share_own {
        messages.push(Message::Coin { round, share });
    }
    messages
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
const JUSTIFICATIONS_INVALID_CACHED_MAX: usize = 256;

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
            justifications_invalid: BTreeSet::new(),
            decision: None,
            decided_by_coin: None,
            proposed: false,
            term_received: BTreeMap::new(),
            term_sent: false,
            terminated: false,
            coin_points: BTreeMap::new(),
            coin_suspects: BTreeSet::new(),
            dropped: BTreeMap::new(),
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

    /// Propose a value. Call once. After a decision through `t + 1` TERM the proposal changes
    /// nothing: the replica already runs the rounds with the decided value as its estimate.
    pub fn propose(&mut self, vote: Vote) -> Result<AbaStep, Error> {
        if self.proposed {
            return Err(Error::AlreadyProposed);
        }
        self.proposed = true;
        let mut step = AbaStep::default();
        if self.decision.is_some() {
            return Ok(step);
        }
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
        self.relay_bvals(self.round, &mut step);
        self.try_progress(&mut step);
        Ok(step)
    }

    /// After a restart that may have lost messages in flight both ways: send every replica again
    /// what this replica sent in its current round (and its TERM), ask every other replica for its
    /// messages of that round, and ask again on entering each of the next `rounds_future_max`
    /// rounds (what the others sent there while this replica was down is lost too).
    pub fn recover(&mut self) -> AbaStep {
        let mut step = AbaStep::default();
        if self.terminated {
            return step;
        }
        let round = self.round;
        let justification_one = self.justification_for_resend();
        if let Some(state) = self.rounds.get(&round) {
            for message in own_messages(round, state, &justification_one) {
                step.broadcast(message);
            }
        }
        if self.term_sent {
            if let Some(decision) = &self.decision {
                let value = decision.value;
                step.broadcast(Message::Term { value, justification: self.justification_for(value) });
            }
        }
        let last = Round(round.0.saturating_add(self.config.rounds_future_max));
        for peer in self.quorum.nodes().filter(|p| *p != self.our_index) {
            step.messages.push(Outgoing { target: Target::Node(peer), message: Message::Resend { round } });
            if let Some(next) = round.next() {
                let range = self.dropped.entry(peer).or_insert((next, last));
                range.0 = range.0.min(next);
                range.1 = range.1.max(last);
            }
        }
        step
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
            Message::Resend { round } => self.handle_resend(from, round, &mut step),
        }
        self.try_progress(&mut step);
        step
    }

    /// Whether a message of `round` is kept. Rounds too far ahead are dropped (and remembered, to
    /// be asked for again); rounds before the previous one keep only their BVAL counts.
    fn admit(&mut self, from: NodeIndex, round: Round, only_current: bool, step: &mut AbaStep) -> bool {
        if round.0 > self.round.0.saturating_add(self.config.rounds_future_max) {
            let range = self.dropped.entry(from).or_insert((round, round));
            range.0 = range.0.min(round);
            range.1 = range.1.max(round);
            step.fault(from, FaultKind::RoundTooFar);
            return false;
        }
        !(only_current && round.0.saturating_add(1) < self.round.0)
    }

    /// Whether a justification carried by a message for `value` is acceptable; a fault if not.
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
        let digest = (justification.len() <= self.config.justification_len_max).then(|| sha256(&justification));
        let valid = match digest {
            None => false,
            Some(digest) if self.justifications_invalid.contains(&digest) => false,
            Some(digest) => {
                let valid = self.validator.is_valid(&justification);
                if !valid && self.justifications_invalid.len() < JUSTIFICATIONS_INVALID_CACHED_MAX {
                    self.justifications_invalid.insert(digest);
                }
                valid
            }
        };
        if !valid {
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
            // after a justified BVAL(1) or TERM(1), each of which was remembered.
            self.justifications_valid.first().cloned().expect("a replica that votes 1 holds a justification for it")
        } else {
            Vec::new()
        }
    }

    fn handle_bval(&mut self, from: NodeIndex, round: Round, value: bool, justification: Vec<u8>, step: &mut AbaStep) {
        if !self.admit(from, round, false, step) {
            return;
        }
        let v = usize::from(value);
        if self.rounds.get(&round).is_some_and(|state| state.bval_received[v].contains(&from)) {
            return; // The same vote again (e.g. answering our RESEND): nothing new.
        }
        if !self.accept_justification(from, value, justification, step) {
            return;
        }
        self.rounds.entry(round).or_default().bval_received[v].insert(from);
        self.relay_bvals(round, step);
    }

    fn handle_aux(&mut self, from: NodeIndex, round: Round, value: bool, step: &mut AbaStep) {
        if !self.admit(from, round, true, step) {
            return;
        }
        let state = self.rounds.entry(round).or_default();
        match state.aux_received.get(&from) {
            None => {
                state.aux_received.insert(from, value);
            }
            Some(&earlier) if earlier == value => {}
            Some(_) => step.fault(from, FaultKind::Equivocation),
        }
    }

    fn handle_conf(&mut self, from: NodeIndex, round: Round, values: BoolSet, step: &mut AbaStep) {
        if values.is_empty() {
            step.fault(from, FaultKind::EmptySet);
            return;
        }
        if !self.admit(from, round, true, step) {
            return;
        }
        let state = self.rounds.entry(round).or_default();
        match state.conf_received.get(&from) {
            None => {
                state.conf_received.insert(from, values);
            }
            Some(&earlier) if earlier == values => {}
            Some(_) => step.fault(from, FaultKind::Equivocation),
        }
    }

    fn handle_coin(&mut self, from: NodeIndex, round: Round, share: [u8; SIG_SIZE], step: &mut AbaStep) {
        if coin_fixed(round).is_some() {
            // Nobody sends shares in a fixed-coin round.
            step.fault(from, FaultKind::InvalidCoinShare);
            return;
        }
        if !self.admit(from, round, true, step) {
            return;
        }
        let state = self.rounds.entry(round).or_default();
        if state.coin.is_some() {
            return;
        }
        match state.coin_shares.get(&from) {
            None => {
                state.coin_shares.insert(from, share);
                state.coin_shares_pending.push_back(from);
            }
            Some(earlier) if *earlier == share => {}
            Some(_) => step.fault(from, FaultKind::Equivocation),
        }
    }

    fn handle_term(&mut self, from: NodeIndex, value: bool, justification: Vec<u8>, step: &mut AbaStep) {
        match self.term_received.get(&from) {
            Some(&earlier) if earlier == value => return,
            Some(_) => {
                step.fault(from, FaultKind::Equivocation);
                return;
            }
            None => {}
        }
        if self.accept_justification(from, value, justification, step) {
            self.term_received.insert(from, value);
        }
    }

    /// Send `from` again what we sent in `round`, once per replica and round. Only rounds we have
    /// been in are answered; what we sent there is kept for this.
    fn handle_resend(&mut self, from: NodeIndex, round: Round, step: &mut AbaStep) {
        if round > self.round {
            return;
        }
        let justification_one = self.justification_for_resend();
        let Some(state) = self.rounds.get_mut(&round) else { return };
        if !state.resent_to.insert(from) {
            return;
        }
        for message in own_messages(round, state, &justification_one) {
            step.messages.push(Outgoing { target: Target::Node(from), message });
        }
    }

    /// The justification that goes with a vote for 1 sent again, if this replica holds one.
    fn justification_for_resend(&self) -> Option<Vec<u8>> {
        self.justifications_valid.first().cloned().filter(|_| self.validator.requires_justification())
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
        if self.terminated || self.estimate.is_none() {
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
                        self.decide(value, Some(round), step);
                    }
                    value
                }
                None => coin,
            };
            let Some(next) = round.next() else { return };
            self.enter_round(next, estimate, step);
        }
    }

    /// Move to round `next` with `estimate`: vote, relay, forget what old rounds no longer need,
    /// and ask again for messages of `next` that were dropped as too far ahead.
    fn enter_round(&mut self, next: Round, estimate: bool, step: &mut AbaStep) {
        self.estimate = Some(estimate);
        self.round = next;
        if let Some(old) = next.0.checked_sub(2).map(Round) {
            if let Some(state) = self.rounds.get_mut(&old) {
                state.prune();
            }
            self.coin_points.remove(&old);
        }
        self.send_bval(next, estimate, step);
        self.relay_bvals(next, step);
        let mut asked = Vec::new();
        self.dropped.retain(|sender, (low, high)| {
            if *low <= next && next <= *high {
                asked.push(*sender);
            }
            *high > next
        });
        for sender in asked {
            step.messages.push(Outgoing { target: Target::Node(sender), message: Message::Resend { round: next } });
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
                if state.aux_own.is_none() {
                    state.aux_own = Some(value);
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
        if aux_count < available && state.conf_own.is_none() {
            return None;
        }
        if !conf_phase {
            state.vals = Some(aux_vals);
            return state.vals;
        }
        if state.conf_own.is_none() {
            state.conf_own = Some(bin_values);
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
        // After this replica decided b by the coin in an earlier round, every honest estimate is
        // b, so `vals = {b}` whatever the coin: the share still goes out for the others, but
        // combining would be wasted pairings. (Not after a decision by TERM: this replica may
        // be behind the round where the others decided, and must follow the rules there.)
        let shortcut = self
            .decided_by_coin
            .filter(|decided_in| *decided_in < round)
            .and_then(|_| self.decision.as_ref().map(|d| d.value));
        let needed = self.coin_keys.shares_needed();
        let state = self.rounds.get_mut(&round)?;
        if let Some(coin) = state.coin {
            return Some(coin);
        }
        if state.coin_share_own.is_none() {
            let share = self.coin_keys.sign_share(point).to_bytes();
            state.coin_share_own = Some(share);
            step.broadcast(Message::Coin { round, share });
        }
        if shortcut.is_some() {
            return shortcut;
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

    /// Decide `value`; `by_coin` is the round when the decision came from rule 6, `None` when it
    /// came from `t + 1` TERM.
    fn decide(&mut self, value: bool, by_coin: Option<Round>, step: &mut AbaStep) {
        if self.decision.is_some() {
            return;
        }
        let justification = (value && self.validator.requires_justification()).then(|| self.justification_for(true));
        let decision = Decision { value, justification, round: self.round };
        self.decision = Some(decision.clone());
        self.decided_by_coin = by_coin;
        step.outputs.push(decision);
        if !self.term_sent {
            self.term_sent = true;
            step.broadcast(Message::Term { value, justification: self.justification_for(value) });
        }
    }

    /// Decide on `t + 1` TERM(b); terminate on `2t + 1`. A replica that decides so before it
    /// proposed adopts `b` as its estimate and starts the rounds.
    fn try_terminate_by_term(&mut self, step: &mut AbaStep) {
        for value in [false, true] {
            let count = self.term_received.values().filter(|v| **v == value).count();
            if count >= self.quorum.one_honest() as usize && self.decision.is_none() {
                self.decide(value, None, step);
            }
            let decided_this = self.decision.as_ref().is_some_and(|d| d.value == value);
            if count >= self.quorum.honest_majority() as usize && decided_this {
                self.terminated = true;
            }
        }
        if let (Some(decision), None, false) = (&self.decision, self.estimate, self.terminated) {
            let value = decision.value;
            self.adopt(value, step);
        }
    }

    /// Take `value`, decided through TERM, as the estimate of a replica that has not proposed,
    /// and vote it in the current round. Until it terminates, this replica is one of the `n - t`
    /// honest ones whose `AUX` the undecided may be waiting for (the schedule of
    /// `simnet::aba::run_decided_before_proposing` halts the cluster without this).
    fn adopt(&mut self, value: bool, step: &mut AbaStep) {
        self.estimate = Some(value);
        self.send_bval(self.round, value, step);
        self.relay_bvals(self.round, step);
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
