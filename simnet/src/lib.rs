//! Deterministic simulated network: n replicas of a sans-IO protocol, Byzantine actors and an
//! adversarial scheduler, all driven from one seed.
//!
//! # How a run goes
//!
//! - Every replica is either an honest instance of the protocol or a Byzantine [`Behaviour`].
//! - Messages travel as bytes ([`fides_types::codec::Wire`]): honest replicas decode what they
//!   receive, so garbage reaches the protocol's decoder exactly as it would from a socket.
//! - The sender of a delivered message is always the replica that really sent it: the transport
//!   authenticates links, so a Byzantine actor that claims another sender is recorded as having
//!   tried and its message is delivered under its own name.
//! - Links between honest replicas are reliable: a message is delayed and reordered, never lost.
//!   Partitions delay the messages that cross them until they heal.
//! - The [`Scheduler`] picks each message's delay. [`RandomScheduler`] draws it; a content-aware
//!   scheduler reads the message and delays what would help the honest replicas most.
//! - Virtual time is in microseconds. In CPU-accounting mode ([`CpuModel`]) the thread CPU time
//!   of each handler call, and of encoding the messages it sends, is charged to its replica's
//!   clock; each replica's uplink is a queue that sends one copy per recipient after another at
//!   the model's bandwidth, and a copy arrives `lag` after it left the uplink ([`Uplink`]) — the
//!   method of hbbft's `examples/simulation`, stricter in that a copy to each peer takes the
//!   uplink. That mode is not deterministic.
//! - Every delivery is folded into a trace hash: the same seed gives the same hash.
//! - A run may end in a **liveness phase** ([`Network::with_liveness`]): from a given time the
//!   network heals — the scheduler is no longer asked, every message in flight and every message
//!   sent later arrives within [`HEALED_DELAY_MAX`] — and the honest replicas must then be done
//!   within a bound, or the run fails (`Report::liveness`).

#![forbid(unsafe_code)]

pub mod aba;
pub mod abc;
pub mod abc_actors;
pub mod acs;
pub mod actors;
pub mod check;
pub mod epoch_signer;
pub mod instances;
pub mod lossy;
pub mod rbc;
pub mod replica;
pub mod rsa_signer;
pub mod seeds;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use fides_types::codec::Wire;
use fides_types::{Fault, FaultKind, NodeIndex, Protocol, Quorum, Target};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

pub use actors::{Behaviour, Byzantine, ByzantineSend, Scenario};

/// Virtual time in microseconds.
pub type Micros = u64;

/// Network timing in CPU-accounting mode.
#[derive(Clone, Copy, Debug)]
pub struct CpuModel {
    /// Latency of every message once it left its sender's uplink, in microseconds.
    pub lag: Micros,
    /// Bandwidth of each replica's uplink, in bits per second, shared by all the copies it
    /// sends (one per recipient); downlinks are not limited.
    pub bandwidth_bps: u64,
}

impl CpuModel {
    /// Time `bytes` occupy an uplink, in nanoseconds (small messages take well under a
    /// microsecond at high bandwidths, and thousands of them must still add up).
    pub fn transmission_nanos(&self, bytes: usize) -> u64 {
        (bytes as u64).saturating_mul(8_000_000_000) / self.bandwidth_bps.max(1)
    }
}

/// A replica's uplink in CPU-accounting mode: the copies it sends leave one after another, each
/// occupying it for its transmission time, and each arrives [`CpuModel::lag`] after it left.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Uplink {
    /// When the last copy queued has left, in nanoseconds of virtual time.
    free_at_nanos: u64,
}

impl Uplink {
    /// Queue a copy of `bytes` handed over at `sent_at` (the sender's clock); its arrival time
    /// at the recipient, rounded up to the microsecond.
    pub fn send(&mut self, model: &CpuModel, sent_at: Micros, bytes: usize) -> Micros {
        let start = self.free_at_nanos.max(sent_at.saturating_mul(1_000));
        self.free_at_nanos = start.saturating_add(model.transmission_nanos(bytes));
        self.free_at_nanos.div_ceil(1_000).saturating_add(model.lag)
    }
}

/// Chooses when a message arrives.
pub trait Scheduler<M> {
    /// Delay, from `now`, of a message from `from` to `to`. `message` is `None` for bytes that do
    /// not decode. Must be finite: the network is asynchronous, not lossy.
    fn delay(
        &mut self,
        now: Micros,
        from: NodeIndex,
        to: NodeIndex,
        message: Option<&M>,
        rng: &mut ChaCha8Rng,
    ) -> Micros;

    /// Whether the scheduler learned something that makes it want to re-time the messages in
    /// flight (asked after every delivery).
    fn wants_retime(&mut self) -> bool {
        false
    }

    /// A new arrival time for a message in flight that would arrive at `arrival`; `None` leaves
    /// it. Times before `now` are raised to `now`.
    fn retime(
        &mut self,
        _now: Micros,
        _arrival: Micros,
        _from: NodeIndex,
        _to: NodeIndex,
        _message: Option<&M>,
        _rng: &mut ChaCha8Rng,
    ) -> Option<Micros> {
        None
    }
}

/// A temporary partition: while it lasts, messages between the two sides wait until it heals.
#[derive(Clone, Debug)]
pub struct Partition {
    /// Start, in virtual time.
    pub from: Micros,
    /// End, in virtual time.
    pub until: Micros,
    /// One side (the other side is everyone else).
    pub side: Vec<NodeIndex>,
}

/// Random delays in `[delay_min, delay_max]` and random temporary partitions that heal.
#[derive(Clone, Debug)]
pub struct RandomScheduler {
    /// Shortest delay.
    pub delay_min: Micros,
    /// Longest delay outside partitions.
    pub delay_max: Micros,
    /// Partitions, in force during their time windows.
    pub partitions: Vec<Partition>,
}

impl RandomScheduler {
    /// Delays of 0.1–50 ms and, with probability one half, a few partitions in the first second.
    pub fn new(quorum: Quorum, rng: &mut ChaCha8Rng) -> Self {
        let mut partitions = Vec::new();
        if rng.gen_bool(0.5) {
            for _ in 0..rng.gen_range(1..=3) {
                let from = rng.gen_range(0..1_000_000);
                let until = from + rng.gen_range(10_000..300_000);
                let side = quorum.nodes().filter(|_| rng.gen_bool(0.5)).collect();
                partitions.push(Partition { from, until, side });
            }
        }
        RandomScheduler { delay_min: 100, delay_max: 50_000, partitions }
    }

    fn heal_time(&self, now: Micros, from: NodeIndex, to: NodeIndex) -> Option<Micros> {
        self.partitions
            .iter()
            .filter(|p| p.from <= now && now < p.until)
            .filter(|p| p.side.contains(&from) != p.side.contains(&to))
            .map(|p| p.until)
            .max()
    }
}

impl<M> Scheduler<M> for Box<dyn Scheduler<M>> {
    fn delay(
        &mut self,
        now: Micros,
        from: NodeIndex,
        to: NodeIndex,
        message: Option<&M>,
        rng: &mut ChaCha8Rng,
    ) -> Micros {
        self.as_mut().delay(now, from, to, message, rng)
    }

    fn wants_retime(&mut self) -> bool {
        self.as_mut().wants_retime()
    }

    fn retime(
        &mut self,
        now: Micros,
        arrival: Micros,
        from: NodeIndex,
        to: NodeIndex,
        message: Option<&M>,
        rng: &mut ChaCha8Rng,
    ) -> Option<Micros> {
        self.as_mut().retime(now, arrival, from, to, message, rng)
    }
}

impl<M> Scheduler<M> for RandomScheduler {
    fn delay(
        &mut self,
        now: Micros,
        from: NodeIndex,
        to: NodeIndex,
        _message: Option<&M>,
        rng: &mut ChaCha8Rng,
    ) -> Micros {
        let base = rng.gen_range(self.delay_min..=self.delay_max);
        match self.heal_time(now, from, to) {
            Some(heal) => heal - now + base,
            None => base,
        }
    }
}

/// The liveness phase of a run: when the network heals and how long the honest replicas then have.
#[derive(Clone, Copy, Debug)]
pub struct Liveness {
    /// Virtual time at which the adversarial phase ends.
    pub heal_at: Micros,
    /// How long after `heal_at` every honest replica must be done (terminated, or the run's
    /// `done` holds); a run that is not is a liveness failure.
    pub bound: Micros,
}

/// Longest delay of a message once the network healed: a timely link, whatever the scheduler.
pub const HEALED_DELAY_MAX: Micros = 2_000;

/// Settings of one run.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The seed everything is drawn from.
    pub seed: u64,
    /// Stop after this many deliveries (a liveness failure if honest replicas are not done).
    pub deliveries_max: u64,
    /// CPU-accounting mode; `None` for deterministic virtual time.
    pub cpu: Option<CpuModel>,
}

/// What an honest replica produced.
#[derive(Clone, Debug)]
pub struct Produced<O> {
    /// Virtual time of the output.
    pub at: Micros,
    /// The output.
    pub output: O,
}

/// Per-replica counters.
#[derive(Clone, Debug, Default)]
pub struct NodeStats {
    /// Messages sent (one per recipient).
    pub messages_sent: u64,
    /// Bytes sent (summed over recipients).
    pub bytes_sent: u64,
    /// CPU time spent in handlers, in nanoseconds (measured in both modes).
    pub cpu_nanos: u64,
}

/// The result of a run.
#[derive(Debug)]
pub struct Report<O> {
    /// The seed of the run.
    pub seed: u64,
    /// Outputs of each honest replica, indexed by replica (`None` for Byzantine ones).
    pub outputs: Vec<Option<Vec<Produced<O>>>>,
    /// Whether each honest replica terminated (`None` for Byzantine ones).
    pub terminated: Vec<Option<bool>>,
    /// Faults recorded by honest replicas: (reporter, fault).
    pub faults: Vec<(NodeIndex, Fault)>,
    /// Counters per replica.
    pub stats: Vec<NodeStats>,
    /// Attempts by Byzantine actors to send under another replica's name (all refused).
    pub impersonations_refused: u64,
    /// Deliveries made.
    pub deliveries: u64,
    /// Virtual time when the run ended.
    pub time_end: Micros,
    /// Whether the run stopped because of `deliveries_max` with honest replicas still running.
    pub stalled: bool,
    /// Whether the run stopped because the caller's `done` held.
    pub done_early: bool,
    /// The liveness phase, if the run had one, and whether the honest replicas missed its bound
    /// (the run was stopped then, a liveness failure).
    pub liveness: Option<(Liveness, bool)>,
    /// Messages lost because their sender or recipient was down.
    pub lost: u64,
    /// SHA-256 over every delivery (time, sender, recipient, bytes).
    pub trace_hash: [u8; 32],
}

impl<O> Report<O> {
    /// Indices of the honest replicas.
    pub fn honest(&self) -> impl Iterator<Item = NodeIndex> + '_ {
        self.outputs.iter().enumerate().filter(|(_, o)| o.is_some()).map(|(i, _)| NodeIndex(i as u32))
    }

    /// The trace hash in hex.
    pub fn trace_hex(&self) -> String {
        self.trace_hash.iter().map(|b| format!("{b:02x}")).collect()
    }
}

enum Node<P: Protocol> {
    Honest(P),
    Byzantine(Box<dyn Byzantine<P>>),
}

struct Delivery {
    from: NodeIndex,
    to: NodeIndex,
    bytes: Vec<u8>,
    sent_at: Micros,
}

/// A simulated network of `n` replicas.
pub struct Network<P: Protocol, S: Scheduler<P::Message>> {
    quorum: Quorum,
    nodes: Vec<Node<P>>,
    node_rngs: Vec<ChaCha8Rng>,
    net_rng: ChaCha8Rng,
    scheduler: S,
    config: RunConfig,
    queue: BinaryHeap<Reverse<(Micros, u64)>>,
    pending: std::collections::HashMap<u64, Delivery>,
    sequence: u64,
    now: Micros,
    clocks: Vec<Micros>,
    uplinks: Vec<Uplink>,
    report: Report<P::Output>,
    trace: Sha256,
    outputs_new: bool,
    reaction: Option<Reaction<P>>,
    outages: Vec<(NodeIndex, Micros)>,
    /// Inputs given later, by time (in order of time).
    timed: std::collections::VecDeque<(Micros, NodeIndex, P::Input)>,
    liveness: Option<Liveness>,
    healed: bool,
    rebuild: Option<Rebuild<P>>,
}

/// Called after each message an honest replica handled: it may give a replica to take its place
/// from then on (one rebuilt from its encoded state, as after a restart from a snapshot).
pub type Rebuild<P> = Box<dyn FnMut(NodeIndex, &P) -> Option<P>>;

/// The caller's part in a protocol whose outputs ask for an input back (an application that
/// applies batches and reports its state's digest): given an honest replica's output, the input
/// it answers with.
pub type Reaction<P> = Box<dyn FnMut(NodeIndex, &<P as Protocol>::Output) -> Option<<P as Protocol>::Input>>;

impl<P: Protocol + std::fmt::Debug + 'static, S: Scheduler<P::Message>> Network<P, S>
where
    P::Input: 'static,
{
    /// A network where replica `i` runs `behaviours[i]`; honest ones are made by `scenario`.
    pub fn new<Sc: Scenario<P = P>>(
        quorum: Quorum,
        scenario: &Sc,
        behaviours: &[Behaviour],
        scheduler: S,
        config: RunConfig,
    ) -> Self {
        let n = quorum.n() as usize;
        assert_eq!(behaviours.len(), n, "one behaviour per replica");
        let nodes: Vec<Node<P>> = quorum
            .nodes()
            .zip(behaviours)
            .map(|(index, behaviour)| match behaviour {
                Behaviour::Honest => Node::Honest(scenario.honest(index)),
                other => Node::Byzantine(actors::make(other, index, scenario, quorum)),
            })
            .collect();
        let node_rngs = (0..n as u64)
            .map(|i| ChaCha8Rng::seed_from_u64(config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i + 1)))
            .collect();
        let report = Report {
            seed: config.seed,
            outputs: nodes.iter().map(|node| matches!(node, Node::Honest(_)).then(Vec::new)).collect(),
            terminated: nodes.iter().map(|node| matches!(node, Node::Honest(_)).then_some(false)).collect(),
            faults: Vec::new(),
            stats: vec![NodeStats::default(); n],
            impersonations_refused: 0,
            deliveries: 0,
            time_end: 0,
            stalled: false,
            done_early: false,
            liveness: None,
            lost: 0,
            trace_hash: [0; 32],
        };
        Network {
            quorum,
            nodes,
            node_rngs,
            net_rng: ChaCha8Rng::seed_from_u64(config.seed),
            scheduler,
            config,
            queue: BinaryHeap::new(),
            pending: std::collections::HashMap::new(),
            sequence: 0,
            now: 0,
            clocks: vec![0; n],
            uplinks: vec![Uplink::default(); n],
            report,
            trace: Sha256::new(),
            outputs_new: false,
            reaction: None,
            outages: Vec::new(),
            timed: std::collections::VecDeque::new(),
            liveness: None,
            healed: false,
            rebuild: None,
        }
    }

    /// Let `rebuild` replace honest replicas (see [`Rebuild`]).
    pub fn with_rebuild(mut self, rebuild: Rebuild<P>) -> Self {
        self.rebuild = Some(rebuild);
        self
    }

    /// End the run with a liveness phase: from `heal_at` on the network is timely, and every
    /// honest replica must be done by `heal_at + bound` (see [`Liveness`]).
    pub fn with_liveness(mut self, heal_at: Micros, bound: Micros) -> Self {
        self.liveness = Some(Liveness { heal_at, bound });
        self.report.liveness = Some((Liveness { heal_at, bound }, false));
        self
    }

    /// Replica `node` is down until `until`: every message sent to it or by it before then is
    /// lost (what it does meanwhile is forgotten by the network, as if it had crashed and
    /// restarted with its state). A crashed replica is the protocol's business to bring back.
    pub fn with_outage(mut self, node: NodeIndex, until: Micros) -> Self {
        self.outages.push((node, until));
        self
    }

    /// Give honest replica `node` the input `input` at virtual time `at`.
    pub fn with_input_at(mut self, at: Micros, node: NodeIndex, input: P::Input) -> Self {
        let position = self.timed.iter().position(|(t, _, _)| *t > at).unwrap_or(self.timed.len());
        self.timed.insert(position, (at, node, input));
        self
    }

    fn give_timed_inputs(&mut self, up_to: Micros) {
        while self.timed.front().is_some_and(|(at, _, _)| *at <= up_to) {
            let Some((at, node, input)) = self.timed.pop_front() else { break };
            let i = node.as_usize();
            self.now = self.now.max(at);
            self.clocks[i] = self.clocks[i].max(at);
            let started = CpuInstant::now();
            let Node::Honest(protocol) = &mut self.nodes[i] else { continue };
            let step = protocol.handle_input(input, &mut self.node_rngs[i]);
            let cpu = elapsed_nanos(started);
            match step {
                Ok(step) => self.after_honest_step(node, step, cpu),
                Err(error) => panic!("honest timed input refused at {node}: {error}"),
            }
        }
    }

    /// Answer honest replicas' outputs with inputs (handled at once, at the same replica).
    pub fn with_reaction(mut self, reaction: Reaction<P>) -> Self {
        self.reaction = Some(reaction);
        self
    }

    /// Start every replica (honest ones get `input(i)` where it is `Some`) and run until every honest replica has
    /// terminated, nothing is in flight, or `deliveries_max` is reached.
    pub fn run(self, input: impl FnMut(NodeIndex) -> Option<P::Input>) -> Report<P::Output> {
        self.run_keeping_scheduler(input).0
    }

    /// [`Network::run`], handing back the scheduler too, e.g. to read what a content-aware one
    /// learned.
    pub fn run_keeping_scheduler(self, input: impl FnMut(NodeIndex) -> Option<P::Input>) -> (Report<P::Output>, S) {
        self.run_until(input, |_| false)
    }

    /// [`Network::run_keeping_scheduler`], also stopping as soon as `done` holds of the honest
    /// replicas' outputs (asked after each step that output something): for protocols that never
    /// terminate, such as atomic broadcast.
    pub fn run_until(
        mut self,
        mut input: impl FnMut(NodeIndex) -> Option<P::Input>,
        mut done: impl FnMut(&[Option<Vec<Produced<P::Output>>>]) -> bool,
    ) -> (Report<P::Output>, S) {
        for index in self.quorum.nodes() {
            let i = index.as_usize();
            let started = CpuInstant::now();
            match &mut self.nodes[i] {
                Node::Honest(protocol) => {
                    let Some(value) = input(index) else { continue };
                    let step = protocol.handle_input(value, &mut self.node_rngs[i]);
                    let cpu = elapsed_nanos(started);
                    match step {
                        Ok(step) => self.after_honest_step(index, step, cpu),
                        Err(error) => panic!("honest input refused at {index}: {error}"),
                    }
                }
                Node::Byzantine(actor) => {
                    let sends = actor.start(&mut self.node_rngs[i]);
                    let cpu = elapsed_nanos(started);
                    self.after_byzantine_step(index, sends, cpu);
                }
            }
        }
        loop {
            let next_at = self.queue.peek().map(|Reverse((at, _))| *at);
            if let Some(first) = self.timed.front().map(|(at, _, _)| *at) {
                if next_at.is_none_or(|next| first <= next) {
                    self.give_timed_inputs(first);
                    continue;
                }
            }
            let Some(Reverse((at, sequence))) = self.queue.pop() else { break };
            if self.all_honest_terminated() {
                break;
            }
            if let Some(liveness) = self.liveness.filter(|l| !self.healed && at >= l.heal_at) {
                self.queue.push(Reverse((at, sequence)));
                self.heal(liveness.heal_at);
                continue;
            }
            if std::mem::take(&mut self.outputs_new) && done(&self.report.outputs) {
                self.report.done_early = true;
                break;
            }
            if self.report.deliveries >= self.config.deliveries_max {
                self.report.stalled = true;
                break;
            }
            if self.liveness.is_some_and(|l| self.healed && at > l.heal_at.saturating_add(l.bound)) {
                // Not done within the bound after the network healed: a liveness failure.
                if let Some((_, missed)) = &mut self.report.liveness {
                    *missed = true;
                }
                self.report.stalled = true;
                break;
            }
            let delivery = self.pending.remove(&sequence).expect("every queued sequence has a delivery");
            self.deliver(at, delivery);
            if self.config.cpu.is_none() && !self.healed && self.scheduler.wants_retime() {
                self.retime();
            }
        }
        if !self.all_honest_terminated() && self.queue.is_empty() && !self.report.done_early {
            self.report.stalled = true;
        }
        if std::env::var_os("SIMNET_DUMP").is_some() {
            for node in &self.nodes {
                if let Node::Honest(protocol) = node {
                    eprintln!("{protocol:?}");
                }
            }
        }
        self.report.time_end = self.now;
        self.report.trace_hash = self.trace.finalize().into();
        (self.report, self.scheduler)
    }

    /// End the adversarial phase at `at`: every message in flight arrives within
    /// [`HEALED_DELAY_MAX`] from then (none later than it would have), and so will every message
    /// sent from now on.
    fn heal(&mut self, at: Micros) {
        self.healed = true;
        self.now = self.now.max(at);
        let mut entries: Vec<(Micros, u64)> = self.queue.drain().map(|Reverse(entry)| entry).collect();
        entries.sort_unstable();
        for (arrival, _) in &mut entries {
            let timely = self.now + self.net_rng.gen_range(100..=HEALED_DELAY_MAX);
            *arrival = (*arrival).min(timely).max(self.now);
        }
        self.queue.extend(entries.into_iter().map(Reverse));
    }

    /// Let the scheduler move messages in flight (never into the past).
    fn retime(&mut self) {
        let mut entries: Vec<(Micros, u64)> = self.queue.drain().map(|Reverse(entry)| entry).collect();
        entries.sort_unstable();
        for (arrival, sequence) in &mut entries {
            let delivery = &self.pending[sequence];
            let message = P::Message::from_bytes(&delivery.bytes).ok();
            if let Some(new) = self.scheduler.retime(
                self.now,
                *arrival,
                delivery.from,
                delivery.to,
                message.as_ref(),
                &mut self.net_rng,
            ) {
                *arrival = new.max(self.now);
            }
        }
        self.queue.extend(entries.into_iter().map(Reverse));
    }

    fn all_honest_terminated(&self) -> bool {
        self.report.terminated.iter().all(|t| t.unwrap_or(true))
    }

    fn deliver(&mut self, at: Micros, delivery: Delivery) {
        let Delivery { from, to, bytes, sent_at } = delivery;
        if self.outages.iter().any(|(node, until)| (*node == from || *node == to) && sent_at < *until) {
            // Sent to or by a replica that was down: lost.
            self.report.lost += 1;
            return;
        }
        let i = to.as_usize();
        self.now = at;
        if self.config.cpu.is_some() {
            self.clocks[i] = self.clocks[i].max(at);
        } else {
            self.clocks[i] = at;
        }
        self.report.deliveries += 1;
        self.trace.update(at.to_le_bytes());
        self.trace.update(from.0.to_le_bytes());
        self.trace.update(to.0.to_le_bytes());
        self.trace.update((bytes.len() as u64).to_le_bytes());
        self.trace.update(&bytes);
        let started = CpuInstant::now();
        match &mut self.nodes[i] {
            Node::Honest(protocol) => {
                if protocol.terminated() {
                    return;
                }
                let step = match P::Message::from_bytes(&bytes) {
                    Ok(message) => protocol.handle_message(from, message, &mut self.node_rngs[i]),
                    Err(_) => {
                        let mut step = fides_types::Step::default();
                        step.fault(from, FaultKind::Undecodable);
                        step
                    }
                };
                let cpu = elapsed_nanos(started);
                self.after_honest_step(to, step, cpu);
                if let (Some(rebuild), Node::Honest(protocol)) = (&mut self.rebuild, &mut self.nodes[i]) {
                    if let Some(rebuilt) = rebuild(to, protocol) {
                        *protocol = rebuilt;
                    }
                }
            }
            Node::Byzantine(actor) => {
                let sends = actor.receive(from, &bytes, &mut self.node_rngs[i]);
                let cpu = elapsed_nanos(started);
                self.after_byzantine_step(to, sends, cpu);
            }
        }
    }

    /// Charge `nanos` of handler CPU to replica `index` (to its clock in CPU-accounting mode,
    /// carrying the sub-microsecond remainder so that short handlers still add up).
    fn charge(&mut self, index: NodeIndex, nanos: u64) {
        let i = index.as_usize();
        let before = self.report.stats[i].cpu_nanos;
        let after = before + nanos;
        self.report.stats[i].cpu_nanos = after;
        if self.config.cpu.is_some() {
            self.clocks[i] += after / 1_000 - before / 1_000;
        }
    }

    fn after_honest_step(&mut self, index: NodeIndex, step: fides_types::Step<P::Message, P::Output>, cpu: Micros) {
        self.charge(index, cpu);
        let i = index.as_usize();
        let at = self.clocks[i];
        let reactions: Vec<P::Input> = match &mut self.reaction {
            Some(react) => step.outputs.iter().filter_map(|output| react(index, output)).collect(),
            None => Vec::new(),
        };
        if let Some(outputs) = &mut self.report.outputs[i] {
            self.outputs_new |= !step.outputs.is_empty();
            outputs.extend(step.outputs.into_iter().map(|output| Produced { at, output }));
        }
        self.report.faults.extend(step.faults.into_iter().map(|fault| (index, fault)));
        for outgoing in step.messages {
            // Encoding is the sender's work too (once per message, whatever its recipients).
            let started = CpuInstant::now();
            let bytes = outgoing.message.to_bytes();
            self.charge(index, elapsed_nanos(started));
            self.send(index, outgoing.target, bytes, Some(&outgoing.message));
        }
        if let Node::Honest(protocol) = &self.nodes[i] {
            self.report.terminated[i] = Some(protocol.terminated());
        }
        for input in reactions {
            let started = CpuInstant::now();
            let Node::Honest(protocol) = &mut self.nodes[i] else { break };
            let step = protocol.handle_input(input, &mut self.node_rngs[i]);
            let cpu = elapsed_nanos(started);
            match step {
                Ok(step) => self.after_honest_step(index, step, cpu),
                Err(error) => panic!("honest reaction refused at {index}: {error}"),
            }
        }
    }

    fn after_byzantine_step(&mut self, index: NodeIndex, sends: Vec<ByzantineSend>, cpu: Micros) {
        self.charge(index, cpu);
        for send in sends {
            if send.claimed_from.is_some_and(|claimed| claimed != index) {
                // The transport authenticates the link: the claim changes nothing.
                self.report.impersonations_refused += 1;
            }
            let decoded = P::Message::from_bytes(&send.bytes).ok();
            self.send(index, send.target, send.bytes, decoded.as_ref());
        }
    }

    fn send(&mut self, from: NodeIndex, target: Target, bytes: Vec<u8>, message: Option<&P::Message>) {
        match target {
            Target::All => {
                for to in self.quorum.nodes() {
                    self.send_one(from, to, bytes.clone(), message);
                }
            }
            Target::Node(to) if self.quorum.contains(to) => self.send_one(from, to, bytes, message),
            Target::Node(_) => {}
        }
    }

    fn send_one(&mut self, from: NodeIndex, to: NodeIndex, bytes: Vec<u8>, message: Option<&P::Message>) {
        let sent_at = self.clocks[from.as_usize()];
        let delay = match self.config.cpu {
            Some(_) if from == to => 0,
            Some(model) => self.uplinks[from.as_usize()].send(&model, sent_at, bytes.len()) - sent_at,
            None if self.healed => self.net_rng.gen_range(100..=HEALED_DELAY_MAX),
            None => self.scheduler.delay(sent_at, from, to, message, &mut self.net_rng),
        };
        let stats = &mut self.report.stats[from.as_usize()];
        stats.messages_sent += 1;
        stats.bytes_sent += bytes.len() as u64;
        self.sequence += 1;
        self.queue.push(Reverse((sent_at.saturating_add(delay), self.sequence)));
        self.pending.insert(self.sequence, Delivery { from, to, bytes, sent_at });
    }
}

/// A threshold key set for a cluster drawn from `rng`: each replica's view, sharing one public side.
pub fn threshold_keys(quorum: Quorum, rng: &mut ChaCha8Rng) -> Vec<std::sync::Arc<fides_crypto::ThresholdKeys>> {
    use std::sync::Arc;
    let set = fides_crypto::blsttc::SecretKeySet::random(quorum.t() as usize, rng);
    let public = Arc::new(fides_crypto::PublicShares::new(set.public_keys(), quorum.n()));
    quorum
        .nodes()
        .map(|i| {
            Arc::new(fides_crypto::ThresholdKeys::with_shared(
                i,
                Arc::clone(&public),
                set.secret_key_share(i.as_usize()),
            ))
        })
        .collect()
}

/// Which replicas are Byzantine in a run.
#[derive(Clone, Debug)]
pub struct Placement {
    /// The `t` Byzantine replicas (none when the kind is [`Behaviour::Honest`]).
    pub byzantine: Vec<NodeIndex>,
    /// The honest replicas, in random order.
    pub honest: Vec<NodeIndex>,
    /// What each replica does, by index.
    pub behaviours: Vec<Behaviour>,
}

/// Make `t` replicas, drawn from `rng`, Byzantine of kind `kind`.
pub fn place(quorum: Quorum, kind: &Behaviour, rng: &mut ChaCha8Rng) -> Placement {
    use rand::seq::SliceRandom;
    let mut indices: Vec<NodeIndex> = quorum.nodes().collect();
    indices.shuffle(rng);
    let count = if *kind == Behaviour::Honest { 0 } else { quorum.t() as usize };
    let honest = indices.split_off(count);
    let behaviours =
        quorum.nodes().map(|i| if indices.contains(&i) { kind.clone() } else { Behaviour::Honest }).collect();
    Placement { byzantine: indices, honest, behaviours }
}

/// A reading of the calling thread's CPU clock: what a handler costs, whatever else the machine
/// runs meanwhile (wall time would charge a replica for other processes' turns on the CPU).
#[derive(Clone, Copy)]
struct CpuInstant(u64);

impl CpuInstant {
    fn now() -> Self {
        let time = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        let nanos = u64::try_from(time.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(time.tv_nsec).unwrap_or(0);
        CpuInstant(nanos)
    }
}

fn elapsed_nanos(started: CpuInstant) -> u64 {
    CpuInstant::now().0.saturating_sub(started.0)
}

#[cfg(test)]
mod tests {
    use super::{CpuModel, Uplink};

    #[test]
    fn uplink_sends_copies_one_after_another_and_idles_when_nothing_is_queued() {
        // 1 ms of lag, 8 Mbit/s: one byte per microsecond.
        let model = CpuModel { lag: 1_000, bandwidth_bps: 8_000_000 };
        let mut uplink = Uplink::default();
        // Three copies of 500 bytes handed over at 100 µs leave at 600, 1,100 and 1,600 µs.
        assert_eq!(uplink.send(&model, 100, 500), 1_600);
        assert_eq!(uplink.send(&model, 100, 500), 2_100);
        assert_eq!(uplink.send(&model, 100, 500), 2_600);
        // Handed over while the uplink is still busy: it waits for the queue.
        assert_eq!(uplink.send(&model, 1_000, 100), 2_700);
        // Handed over once the uplink is idle: it leaves at once.
        assert_eq!(uplink.send(&model, 5_000, 10), 6_010);
    }

    #[test]
    fn uplink_adds_up_copies_shorter_than_a_microsecond() {
        // 1 Gbit/s: 125 bytes take 1 µs; a thousand copies of 25 bytes take 200 µs, not 0.
        let model = CpuModel { lag: 0, bandwidth_bps: 1_000_000_000 };
        let mut uplink = Uplink::default();
        let mut arrival = 0;
        for _ in 0..1_000 {
            arrival = uplink.send(&model, 0, 25);
        }
        assert_eq!(arrival, 200);
        assert_eq!(model.transmission_nanos(125), 1_000);
    }
}
