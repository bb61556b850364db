//! Invariant checkers, written from the specification of agreement and independently of the
//! protocol code: they see only what honest replicas proposed and output.

use fides_types::{FaultKind, NodeIndex};

use crate::Report;

/// The predicate of validated runs, restated here so that the checker does not trust the copy
/// the protocol was given: `proof:` then anything, 64 bytes at most.
pub fn proof_predicate(justification: &[u8]) -> bool {
    justification.len() <= 64 && justification.get(..6) == Some(b"proof:".as_slice())
}

/// A binary output: the value and, for a validated 1, its justification.
pub type BinaryDecision = (bool, Option<Vec<u8>>);

/// The binary outputs of every replica: `None` for Byzantine ones.
#[derive(Clone, Debug)]
pub struct BinaryOutcome {
    /// Per replica, every (value, justification) it output.
    pub outputs: Vec<Option<Vec<BinaryDecision>>>,
    /// Per replica, whether it terminated.
    pub terminated: Vec<Option<bool>>,
    /// Whether the run was cut off with honest replicas still running.
    pub stalled: bool,
}

impl BinaryOutcome {
    /// Read a report through `view`, which says what value and justification an output holds.
    pub fn from_report<O>(report: &Report<O>, view: impl Fn(&O) -> BinaryDecision) -> Self {
        BinaryOutcome {
            outputs: report
                .outputs
                .iter()
                .map(|o| o.as_ref().map(|list| list.iter().map(|p| view(&p.output)).collect()))
                .collect(),
            terminated: report.terminated.clone(),
            stalled: report.stalled,
        }
    }
}

/// Check termination, at most one decision, agreement, validity and — given a predicate —
/// external validity. Returns the value decided.
pub fn binary_agreement(
    outcome: &BinaryOutcome,
    proposals: &[Option<bool>],
    predicate: Option<fn(&[u8]) -> bool>,
) -> Result<bool, String> {
    let mut decided = None;
    for (index, outputs) in outcome.outputs.iter().enumerate() {
        let Some(outputs) = outputs else { continue };
        let (value, justification) = match outputs.as_slice() {
            [] => {
                return Err(format!(
                    "termination: honest replica {index} decided nothing (run stalled: {})",
                    outcome.stalled
                ))
            }
            [one] => one,
            more => return Err(format!("integrity: honest replica {index} decided {} times", more.len())),
        };
        if outcome.terminated.get(index).copied().flatten() != Some(true) {
            return Err(format!("termination: honest replica {index} decided but did not terminate"));
        }
        match decided {
            None => decided = Some(*value),
            Some(earlier) if earlier != *value => {
                return Err(format!("agreement: honest replicas decided both {earlier} and {value}"))
            }
            Some(_) => {}
        }
        if let Some(predicate) = predicate {
            if *value && !justification.as_deref().is_some_and(predicate) {
                return Err(format!("external validity: replica {index} decided 1 without a valid justification"));
            }
        }
    }
    let value = decided.ok_or("no honest replica")?;
    let honest: Vec<bool> = proposals.iter().flatten().copied().collect();
    if let Some(first) = honest.first() {
        if honest.iter().all(|p| p == first) && value != *first {
            return Err(format!("validity: every honest replica proposed {first}, they decided {value}"));
        }
    }
    Ok(value)
}

/// Check the liveness phase, if the run had one: the honest replicas were done within its bound
/// after the network healed.
pub fn liveness<O>(report: &Report<O>) -> Result<(), String> {
    match report.liveness {
        Some((liveness, true)) => Err(format!(
            "liveness: honest replicas not done {} ms after the network healed at {} ms",
            liveness.bound / 1_000,
            liveness.heal_at / 1_000
        )),
        _ => Ok(()),
    }
}

/// Check that honest replicas recorded faults only against Byzantine ones. The one exception is
/// `RoundTooFar`: under enough asynchrony an honest replica can be that far ahead of another.
pub fn faults_only_against<O>(report: &Report<O>, byzantine: &[NodeIndex]) -> Result<(), String> {
    match report
        .faults
        .iter()
        .find(|(_, fault)| !byzantine.contains(&fault.node) && fault.kind != FaultKind::RoundTooFar)
    {
        Some((reporter, fault)) => Err(format!(
            "fault attribution: honest replica {} recorded {:?} against honest replica {}",
            reporter, fault.kind, fault.node
        )),
        None => Ok(()),
    }
}

/// Check reliable broadcast from what honest replicas delivered (`Some(value)`, or `None` for "the
/// proposer dispersed no valid value"): at most one delivery each, agreement, totality (one
/// delivered, so did all), and validity (an honest proposer's value is delivered by all).
/// `proposed` is the value of an honest proposer, `None` for a Byzantine one. Returns how many
/// honest replicas delivered.
pub fn reliable_broadcast(
    deliveries: &[Option<Vec<Option<Vec<u8>>>>],
    proposed: Option<&[u8]>,
) -> Result<usize, String> {
    let mut first: Option<&Option<Vec<u8>>> = None;
    let mut delivered = 0;
    let mut honest = 0;
    for (index, list) in deliveries.iter().enumerate() {
        let Some(list) = list else { continue };
        honest += 1;
        match list.as_slice() {
            [] => continue,
            [one] => {
                delivered += 1;
                match first {
                    None => first = Some(one),
                    Some(earlier) if earlier != one => {
                        return Err(format!("agreement: replica {index} delivered something else"))
                    }
                    Some(_) => {}
                }
            }
            more => return Err(format!("integrity: replica {index} delivered {} times", more.len())),
        }
    }
    if delivered > 0 && delivered < honest {
        return Err(format!("totality: {delivered} of {honest} honest replicas delivered"));
    }
    if let Some(value) = proposed {
        if delivered < honest {
            return Err(format!("validity: honest proposer, only {delivered} of {honest} delivered"));
        }
        if first.and_then(|d| d.as_deref()) != Some(value) {
            return Err("validity: honest proposer, another value delivered".to_string());
        }
    }
    Ok(delivered)
}

/// An agreed subset as the checker sees it: proposer → delivered value (`None`: invalid).
pub type SubsetView = std::collections::BTreeMap<u32, Option<Vec<u8>>>;

/// Check the common subset: every honest replica outputs exactly once and terminates; all
/// outputs are equal; the subset has at least `n - t` members; every honest member's entry is its
/// proposal. `proposals` has `Some` for honest replicas. Returns the subset's size.
pub fn common_subset(
    outputs: &[Option<Vec<SubsetView>>],
    terminated: &[Option<bool>],
    proposals: &[Option<Vec<u8>>],
    n: u32,
    t: u32,
) -> Result<usize, String> {
    let mut agreed: Option<&SubsetView> = None;
    for (index, list) in outputs.iter().enumerate() {
        let Some(list) = list else { continue };
        let subset = match list.as_slice() {
            [one] => one,
            [] => return Err(format!("termination: honest replica {index} output nothing")),
            more => return Err(format!("integrity: honest replica {index} output {} times", more.len())),
        };
        if terminated.get(index).copied().flatten() != Some(true) {
            return Err(format!("termination: honest replica {index} output but did not terminate"));
        }
        match agreed {
            None => agreed = Some(subset),
            Some(earlier) if earlier != subset => {
                return Err(format!("agreement: replica {index} output another subset"))
            }
            Some(_) => {}
        }
    }
    let subset = agreed.ok_or("no honest replica")?;
    if subset.len() < (n - t) as usize {
        return Err(format!("validity: subset of {} members, n - t = {}", subset.len(), n - t));
    }
    for (proposer, value) in subset {
        if let Some(Some(proposal)) = proposals.get(*proposer as usize) {
            if value.as_ref() != Some(proposal) {
                return Err(format!("validity: honest proposer {proposer}'s entry is not its proposal"));
            }
        }
    }
    Ok(subset.len())
}

/// Atomic broadcast, over each honest replica's outputs in order: total order (every replica
/// that delivered epoch e delivered the same batch), batches in consecutive epochs except across an
/// `Install` (a forward jump to a checkpoint), checkpoints naming the log digest of the batches
/// before them and identical everywhere, at-most-once, every request in `given` delivered, and
/// agreed time non-decreasing and within the honest clocks. Returns the epochs delivered.
pub fn atomic_broadcast(
    session: &[u8],
    logs: &[Option<Vec<fides_atomic_broadcast::epoch::Output>>],
    given: &std::collections::BTreeSet<(u64, u64, Vec<u8>)>,
    honest_clocks: &[u64],
) -> Result<u64, String> {
    use fides_atomic_broadcast::checkpoint::{log_genesis, log_next, Checkpoint};
    use fides_atomic_broadcast::epoch::{Batch, Output};
    use std::collections::BTreeMap;
    let mut batches: BTreeMap<u64, &Batch> = BTreeMap::new();
    let mut checkpoints: BTreeMap<u64, &Checkpoint> = BTreeMap::new();
    let mut reached = Vec::new();
    for (index, log) in logs.iter().flatten().enumerate() {
        let mut next = 0u64;
        for output in log {
            match output {
                Output::Batch(batch) => {
                    if batch.epoch != next {
                        return Err(format!("order: honest log {index} delivered epoch {} after {next}", batch.epoch));
                    }
                    if batches.entry(batch.epoch).or_insert(batch) != &batch {
                        return Err(format!("total order: honest logs differ at epoch {}", batch.epoch));
                    }
                    next += 1;
                }
                Output::Checkpoint(checkpoint) | Output::Install(checkpoint) => {
                    if checkpoints.entry(checkpoint.epoch).or_insert(checkpoint) != &checkpoint {
                        return Err(format!("checkpoints differ at epoch {}", checkpoint.epoch));
                    }
                    match output {
                        Output::Install(_) if checkpoint.epoch < next => {
                            return Err(format!("log {index} installed epoch {} behind {next}", checkpoint.epoch))
                        }
                        Output::Install(_) => next = checkpoint.epoch + 1,
                        _ if checkpoint.epoch >= next => {
                            return Err(format!("log {index}: checkpoint {} before its epoch", checkpoint.epoch))
                        }
                        _ => {}
                    }
                }
            }
        }
        reached.push(next);
    }
    let last = batches.keys().next_back().copied();
    let mut seen = std::collections::BTreeSet::new();
    let low = honest_clocks.iter().min().copied().unwrap_or(0);
    let high = honest_clocks.iter().max().copied().unwrap_or(u64::MAX);
    let mut time = 0;
    let mut digest = log_genesis(session);
    let mut all_given_by = 0;
    for epoch in 0..last.map_or(0, |l| l + 1) {
        let batch = batches.get(&epoch).ok_or(format!("order: no honest replica delivered epoch {epoch}"))?;
        if batch.time < time || batch.time < low || batch.time > high {
            return Err(format!("agreed time: epoch {} at {}, honest clocks {low}..={high}", batch.epoch, batch.time));
        }
        time = batch.time;
        for request in &batch.requests {
            // A request is (client, id, payload): the same (client, id) with another payload is
            // another request (a Byzantine replica may order one; it must not suppress the real one).
            let key = (request.client, request.id, request.payload.clone());
            if given.contains(&key) {
                all_given_by = epoch + 1;
            }
            if !seen.insert(key) {
                return Err(format!("at-most-once: ({}, {}) delivered twice", request.client, request.id));
            }
        }
        digest = log_next(&digest, batch);
        if let Some(checkpoint) = checkpoints.get(&epoch) {
            if checkpoint.log != digest || checkpoint.time != batch.time {
                return Err(format!("checkpoint {epoch} names another log or time"));
            }
        }
    }
    if let Some((client, id, _)) = given.iter().find(|key| !seen.contains(key)) {
        return Err(format!("validity: request ({client}, {id}) given to an honest replica was never delivered"));
    }
    if let Some((index, reached)) = reached.iter().enumerate().find(|(_, r)| **r < all_given_by) {
        return Err(format!("validity: honest log {index} reached epoch {reached}, requests run to {all_given_by}"));
    }
    Ok(last.map_or(0, |l| l + 1))
}
