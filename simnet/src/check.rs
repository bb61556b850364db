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

/// Check atomic broadcast from the delivered logs of honest replicas, taken at one moment: total
/// order (every log is a prefix of the longest), at-most-once, validity (every request given to
/// an honest replica is in every log), and agreed time (non-decreasing, within the honest
/// clocks). Returns the number of epochs of the longest log.
pub fn atomic_broadcast(
    logs: &[Option<Vec<fides_atomic_broadcast::epoch::Batch>>],
    given: &std::collections::BTreeSet<(u64, u64)>,
    honest_clocks: &[u64],
) -> Result<u64, String> {
    let honest: Vec<&Vec<fides_atomic_broadcast::epoch::Batch>> = logs.iter().flatten().collect();
    let longest = honest.iter().max_by_key(|l| l.len()).ok_or("no honest replica")?;
    for (index, log) in honest.iter().enumerate() {
        if log.as_slice() != &longest[..log.len()] {
            return Err(format!("total order: honest log {index} is not a prefix of the longest"));
        }
        let delivered: std::collections::BTreeSet<(u64, u64)> =
            log.iter().flat_map(|b| b.requests.iter().map(|r| (r.client, r.id))).collect();
        if let Some(missing) = given.iter().find(|key| !delivered.contains(key)) {
            return Err(format!("validity: honest log {index} lacks request {missing:?}"));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    let low = honest_clocks.iter().min().copied().unwrap_or(0);
    let high = honest_clocks.iter().max().copied().unwrap_or(u64::MAX);
    let mut time = 0;
    for (position, batch) in longest.iter().enumerate() {
        if batch.epoch != position as u64 {
            return Err(format!("order: batch {position} is of epoch {}", batch.epoch));
        }
        if batch.time < time || batch.time < low || batch.time > high {
            return Err(format!("agreed time: epoch {} at {}, honest clocks {low}..={high}", batch.epoch, batch.time));
        }
        time = batch.time;
        for request in &batch.requests {
            if !seen.insert((request.client, request.id)) {
                return Err(format!("at-most-once: ({}, {}) delivered twice", request.client, request.id));
            }
        }
    }
    if let Some(missing) = given.iter().find(|key| !seen.contains(key)) {
        return Err(format!("validity: request {missing:?} given to an honest replica was never delivered"));
    }
    Ok(longest.len() as u64)
}
