//! What the host does with one delivered batch, sans IO: the services apply it, the agreement
//! instances take their asks and the ordered decision notices, each routed request's answer is
//! written, and the epoch's leaves are made — the state leaf last — for the epoch signer.
//!
//! The replica's worker calls [`apply_epoch`] for each epoch inside its store transaction, over
//! the covered tables of that transaction, and then writes what is not covered (the epoch's row,
//! the threshold signatures asked for) and hands the root to its signer; the simulator calls it
//! over tables in memory. One definition, so the simulator tests what the replica runs.
//!
//! Order within an epoch (each step writes through the covered tables, so the state leaf commits
//! to all of it):
//! 1. the registry applies the batch: every service's epoch start, then each request in order;
//! 2. the agreement instances asked for are recorded and the batch's decision notices taken,
//!    each decision reached handed to its service ([`Agreements::apply_epoch`]);
//! 3. the leaves: one ordering leaf per request, the records the services sign
//!    ([`fides_service::certificate::epoch_leaves`]), then the records the decisions made sign;
//! 4. each routed request's answer is written to [`OUTCOMES`] (an `Agree` there without this
//!    replica's vote), then the host's own indexes of
//!    them (the caller's `index`: the replica's bistro record index), then the answers of the
//!    requests whose instance was asked for or decided are updated;
//! 5. the state leaf: the state digest of the covered tables after all that.

use fides_atomic_broadcast::epoch::Batch;
use fides_service::certificate::Leaf;
use fides_service::{BatchOutcomes, MemoryTables, Ordered, Outcome, SchemeId, StoreError, Tables};
use fides_types::codec::Wire;

use crate::decisions::{Agreements, EpochAgreements};
use crate::epochs::{outcome_key, StoredAnswer};

/// The host's table of each routed request's answer: (epoch ‖ index, big-endian) →
/// [`StoredAnswer`]. Covered by the state digest.
pub const OUTCOMES: &str = "replica_outcomes";

/// The index given to a `ThresholdSign` of a service's epoch start (not of a request).
pub const EPOCH_START: u32 = u32::MAX;

/// The covered tables, with the state digest of what they hold: the replica's store keeps it in
/// step with each write, tables in memory recompute it.
pub trait StateTables: Tables {
    /// The state digest of the tables as written so far (with the state's size).
    fn state_digest(&self) -> fides_service::StateDigest;
}

/// Every table in memory is covered.
impl StateTables for MemoryTables {
    fn state_digest(&self) -> fides_service::StateDigest {
        let mut digest = fides_service::StateDigest::new();
        for (name, table) in self.tables() {
            for (key, value) in table {
                digest.add(name, key, value);
            }
        }
        digest
    }
}

/// The host's own indexes of an epoch's answers, written in the covered tables after the answers
/// (the replica's: where the bistro signed each event's record).
pub type Index<'a> = dyn FnMut(&mut dyn Tables, &Batch, &[(u32, StoredAnswer)]) -> Result<(), StoreError> + 'a;

/// What applying an epoch made, for the caller to write, send and sign once it is durable.
#[derive(Debug)]
pub struct EpochApplied {
    /// What the registry made of the batch.
    pub outcomes: BatchOutcomes,
    /// Each routed request's answer as written to [`OUTCOMES`] (with the leaf of each signed
    /// record), by the request's index in the batch.
    pub answers: Vec<(u32, StoredAnswer)>,
    /// What the epoch did to the agreement instances: the votes for the core (to hand over once
    /// durable), the requests that asked, the decisions applied.
    pub agreed: EpochAgreements,
    /// What each decision of `agreed.decided` made, with the leaf of each signed record (0 for
    /// the others).
    pub decided: Vec<Vec<(Outcome, u64)>>,
    /// The threshold RSA signatures the services asked for: (request index, or [`EPOCH_START`];
    /// message).
    pub asks: Vec<(u32, Vec<u8>)>,
    /// The epoch's leaves, the state leaf last (never empty).
    pub leaves: Vec<[u8; 32]>,
    /// The state digest's commitment after the epoch (what the state leaf commits to).
    pub state: [u8; 32],
}

/// Apply `batch` to the services and the agreement instances over `tables` (the covered tables:
/// the services', [`OUTCOMES`], the agreement instances' [`crate::decisions::TABLES`] and
/// whatever `index` writes). A store failure is an error; the caller must then not go on.
pub fn apply_epoch(
    agreements: &Agreements,
    tables: &mut dyn StateTables,
    batch: &Batch,
    index: &mut Index<'_>,
) -> Result<EpochApplied, StoreError> {
    let ordered = || batch.requests.iter().map(|r| Ordered { client: r.client, request: r.id, payload: &r.payload });
    let outcomes = agreements.registry.apply_batch(tables, batch.epoch, batch.time, ordered())?;
    let payloads = batch.requests.iter().map(|r| r.payload.as_slice());
    let agreed = agreements.apply_epoch(tables, (batch.epoch, batch.time), payloads, &outcomes)?;
    let made = fides_service::certificate::epoch_leaves(ordered(), &outcomes);
    let mut leaves = made.leaves;
    let answers: Vec<(u32, StoredAnswer)> = made
        .answers
        .into_iter()
        .map(|(index, service, outcomes)| {
            let mut answer = StoredAnswer::new(service);
            answer.outcomes = outcomes.into_iter().map(|(outcome, leaf)| (without_vote(outcome), leaf)).collect();
            (index, answer)
        })
        .collect();
    let decided = decision_leaves(&mut leaves, &agreed);
    for (at, answer) in &answers {
        tables.put(OUTCOMES, &outcome_key(batch.epoch, *at), &answer.to_bytes())?;
    }
    index(tables, batch, &answers)?;
    write_agreements(tables, batch.epoch, &agreed, &decided)?;
    let digest = tables.state_digest();
    let state = digest.commitment();
    leaves.push(Leaf::state(batch.epoch, &digest).hash());
    let mut asks = asks(&outcomes);
    // A decision's `ThresholdSign`s (the CA's certificate TBS) are signed like an epoch start's:
    // stored by message id, with no waiter of this epoch (the request that asked was ordered
    // before; its adapter finds the signature by message id).
    asks.extend(agreed.decided.iter().flat_map(|applied| &applied.outcomes).filter_map(|outcome| match outcome {
        Outcome::ThresholdSign { scheme: SchemeId::ThresholdRsa, message } => Some((EPOCH_START, message.clone())),
        _ => None,
    }));
    Ok(EpochApplied { outcomes, answers, agreed, decided, asks, leaves, state })
}

/// An outcome as a stored answer keeps it: an `Agree` without its vote and justification, which are
/// this replica's own (they may differ from the other replicas', and stored answers are covered by
/// the state digest, equal at every replica).
fn without_vote(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Agree { instance, .. } => Outcome::Agree { instance, vote: false, justification: Vec::new() },
        other => other,
    }
}

/// The `ThresholdSign` messages of an applied batch: (index of the request, or [`EPOCH_START`];
/// message), in order.
pub fn asks(outcomes: &BatchOutcomes) -> Vec<(u32, Vec<u8>)> {
    let epoch = outcomes.epoch.iter().flat_map(|(_, made)| made.iter().map(|o| (EPOCH_START, o)));
    let requests = outcomes.requests.iter().flat_map(|(index, _, made)| made.iter().map(move |o| (*index, o)));
    epoch
        .chain(requests)
        .filter_map(|(index, outcome)| match outcome {
            Outcome::ThresholdSign { scheme: SchemeId::ThresholdRsa, message } => Some((index, message.clone())),
            _ => None,
        })
        .collect()
}

/// The leaves of the decisions applied in an epoch, after its other leaves: each decision's
/// `Sign` records as service leaves of the service that asked, in the order the decisions were
/// applied. Returns, per decision, its outcomes with their leaf (0 for what is not signed).
fn decision_leaves(leaves: &mut Vec<[u8; 32]>, agreed: &EpochAgreements) -> Vec<Vec<(Outcome, u64)>> {
    let mut out = Vec::with_capacity(agreed.decided.len());
    for applied in &agreed.decided {
        let mut made = Vec::with_capacity(applied.outcomes.len());
        for outcome in &applied.outcomes {
            let leaf = match outcome {
                Outcome::Sign(record) => {
                    leaves.push(Leaf::Service { service: applied.service, record: record.clone() }.hash());
                    leaves.len() as u64 - 1
                }
                _ => 0,
            };
            made.push((outcome.clone(), leaf));
        }
        out.push(made);
    }
    out
}

/// The stored answers of the requests that asked for an instance in epoch `epoch` (one more
/// awaited) and of those whose instance was decided in it (one fewer, and its outcomes certified
/// by `epoch`).
fn write_agreements(
    tables: &mut dyn Tables,
    epoch: u64,
    agreed: &EpochAgreements,
    decided: &[Vec<(Outcome, u64)>],
) -> Result<(), StoreError> {
    let mut update = |asker: (u64, u32), change: &mut dyn FnMut(&mut StoredAnswer)| -> Result<(), StoreError> {
        let key = outcome_key(asker.0, asker.1);
        let Some(bytes) = tables.get(OUTCOMES, key.as_slice())? else { return Ok(()) };
        let mut answer = StoredAnswer::from_bytes(&bytes)
            .map_err(|e| StoreError::Store(format!("a stored answer does not decode: {e}")))?;
        change(&mut answer);
        tables.put(OUTCOMES, key.as_slice(), answer.to_bytes().as_slice())
    };
    for asker in &agreed.asked {
        update(*asker, &mut |answer| answer.awaiting += 1)?;
    }
    for (applied, made) in agreed.decided.iter().zip(decided) {
        let Some(asker) = applied.asker else { continue };
        update(asker, &mut |answer| {
            answer.awaiting = answer.awaiting.saturating_sub(1);
            answer.decided.extend(made.iter().map(|(outcome, leaf)| (outcome.clone(), epoch, *leaf)));
        })?;
    }
    Ok(())
}
