//! Atomic broadcast under the simulator, for n ∈ {4, 7, 10} with t Byzantine replicas of every
//! kind: total order, at-most-once, validity (requests given to one honest replica or to 2t + 1
//! replicas are delivered), checkpoints and agreed time within the honest clocks; the same under
//! a content-aware scheduler that tries to censor one honest replica (every request given to
//! 2t + 1); and an honest replica down for a while (its messages lost) that recovers from a
//! checkpoint, with t - 1 Byzantine replicas. 20 seeds per configuration, 200 in the `slow_` tests.
//! Rushers (TERM to replicas that have not proposed, AUX to one): n = 7, 5 seeds; n = 7 and 10, 50 and
//! 20 under the censoring scheduler in the `slow_` test. Every run ends with a liveness phase.
//! Then the attacks on atomic broadcast itself (`simnet::abc_actors`): forged request ids,
//! oversized contributions and copied capsules, with n ∈ {4, 7}, a few seeds each (more in `slow_`).

use fides_types::FaultKind;
use simnet::abc::{run_attack, run_case, run_case_over_lossy_links, run_case_summary, AbcAttack, AbcCase, AbcSummary};
use simnet::abc_actors::{FORGED_PAYLOAD, OVERSIZED_CLIENT};
use simnet::seeds::run_seeds;
use simnet::Behaviour;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Random,
    Censoring,
    Lagging,
}

fn suite(sizes: &[u32], seeds: u64, kinds: &[Behaviour], mode: Mode) {
    for kind in kinds {
        for &n in sizes {
            let lagging = mode == Mode::Lagging;
            let content_aware = mode == Mode::Censoring;
            let requests = if lagging { 40 } else { 30 };
            let epochs = run_seeds(env!("CARGO_CRATE_NAME"), seeds, |seed| {
                run_case(&AbcCase { n, byzantine: kind.clone(), requests, lagging, content_aware, seed })
            });
            let most = epochs.iter().max().copied().unwrap_or(0);
            println!(
                "n={n:>2} byzantine={:<12} lagging={lagging:<5} censoring={content_aware:<5}: {} runs, at most {most} epochs",
                kind.name(),
                epochs.len()
            );
        }
    }
}

fn every_kind(sizes: &[u32], seeds: u64, mode: Mode) {
    if mode == Mode::Lagging {
        // With n = 4 the replica down is the one fault tolerated.
        if sizes.contains(&4) {
            suite(&[4], seeds, &[Behaviour::Honest], mode);
        }
        let larger: Vec<u32> = sizes.iter().copied().filter(|n| *n > 4).collect();
        suite(&larger, seeds, &Behaviour::byzantine_kinds(), mode);
    } else {
        suite(sizes, seeds, &Behaviour::byzantine_kinds(), mode);
    }
}

#[test]
fn a_seed_replays_the_same_run() {
    for (lagging, content_aware) in [(false, false), (true, false), (false, true)] {
        let case =
            |seed| AbcCase { n: 7, byzantine: Behaviour::Equivocator, requests: 30, lagging, content_aware, seed };
        let first = run_case_summary(&case(3)).expect("the run passes its checks");
        let again = run_case_summary(&case(3)).expect("the run passes its checks");
        let other = run_case_summary(&case(4)).expect("the run passes its checks");
        assert_eq!((&first.trace, &first.times, first.epochs), (&again.trace, &again.times, again.epochs));
        assert_ne!(first.trace, other.trace);
    }
}

#[test]
fn atomic_broadcast_orders_requests_with_t_byzantine_replicas_of_every_kind() {
    every_kind(&[4, 7, 10], 20, Mode::Random);
}

#[test]
fn atomic_broadcast_delivers_requests_given_to_2t_plus_1_under_a_censoring_scheduler() {
    every_kind(&[4, 7, 10], 20, Mode::Censoring);
}

#[test]
fn a_replica_down_for_a_while_catches_up_from_a_checkpoint() {
    every_kind(&[4, 7, 10], 20, Mode::Lagging);
}

/// Rushers push replicas that have not proposed in an epoch's agreement yet to decide first
/// (TERM to them only, AUX to one replica only); the others must still finish every epoch.
#[test]
fn atomic_broadcast_orders_requests_with_t_rushers() {
    suite(&[7], 5, &[Behaviour::Rusher], Mode::Random);
}

#[test]
#[ignore = "slow suite: CI runs it in its own step"]
fn slow_atomic_broadcast_orders_requests_with_t_rushers() {
    suite(&[7, 10], 50, &[Behaviour::Rusher], Mode::Random);
    suite(&[7, 10], 20, &[Behaviour::Rusher], Mode::Censoring);
}

// The slow suite is split by size so that its parts share the cores evenly (n = 10 costs about as
// much as n = 4 and 7 together).

#[test]
#[ignore = "slow suite: CI runs it in its own step"]
fn slow_atomic_broadcast_orders_requests_n_4_7() {
    every_kind(&[4, 7], 200, Mode::Random);
}

#[test]
#[ignore = "slow suite: CI runs it in its own step"]
fn slow_atomic_broadcast_orders_requests_n_10() {
    every_kind(&[10], 200, Mode::Random);
}

#[test]
#[ignore = "slow suite: CI runs it in its own step"]
fn slow_atomic_broadcast_under_a_censoring_scheduler_n_4_7() {
    every_kind(&[4, 7], 200, Mode::Censoring);
}

#[test]
#[ignore = "slow suite: CI runs it in its own step"]
fn slow_atomic_broadcast_under_a_censoring_scheduler_n_10() {
    every_kind(&[10], 200, Mode::Censoring);
}

#[test]
#[ignore = "slow suite: CI runs it in its own step"]
fn slow_a_replica_down_for_a_while_catches_up_n_4_7() {
    every_kind(&[4, 7], 200, Mode::Lagging);
}

#[test]
#[ignore = "slow suite: CI runs it in its own step"]
fn slow_a_replica_down_for_a_while_catches_up_n_10() {
    every_kind(&[10], 200, Mode::Lagging);
}

/// Run `attack` with n ∈ {4, 7} over `seeds` seeds; each run passes every check of a case
/// (validity counts a request as delivered only with its own payload) and then `check`.
fn attack_suite(attack: AbcAttack, seeds: u64, check: impl Fn(u32, &AbcSummary) -> Result<(), String>) {
    for n in [4u32, 7] {
        let runs = run_seeds(env!("CARGO_CRATE_NAME"), seeds, |seed| {
            let case =
                AbcCase { n, byzantine: Behaviour::Adaptive, requests: 30, lagging: false, content_aware: false, seed };
            let summary = run_attack(&case, attack)?;
            check(n, &summary).map_err(|e| format!("{e} (n={n}, attack={attack:?})"))?;
            Ok(summary)
        });
        println!("n={n:>2} attack={attack:?}: {} runs", runs.len());
    }
}

fn forged_requests_are_other_requests(_: u32, summary: &AbcSummary) -> Result<(), String> {
    let forged = summary.batches.iter().flat_map(|b| &b.requests).filter(|r| r.payload == FORGED_PAYLOAD).count();
    // The attack took place: forged copies were ordered (and the real requests all the same, which
    // the run's validity check saw).
    if forged == 0 {
        return Err("no forged request was ordered: the attack did not take place".into());
    }
    Ok(())
}

#[test]
fn a_byzantine_replica_can_neither_suppress_nor_replace_a_request_by_forging_its_id() {
    attack_suite(AbcAttack::ForgeRequests, 3, forged_requests_are_other_requests);
}

fn oversized_contributions_are_dropped(n: u32, summary: &AbcSummary) -> Result<(), String> {
    // Each replica proposes at most ⌈batch_size / n⌉ = 4 requests (the simulated batch is 4n).
    let bound = 4 * n as usize;
    if let Some(batch) = summary.batches.iter().find(|b| b.requests.len() > bound) {
        return Err(format!(
            "epoch {} holds {} requests, above n·⌈batch/n⌉ = {bound}",
            batch.epoch,
            batch.requests.len()
        ));
    }
    if summary.batches.iter().flat_map(|b| &b.requests).any(|r| r.client == OVERSIZED_CLIENT) {
        return Err("a request of an oversized contribution was ordered".into());
    }
    if !summary.byzantine_faults.contains(&FaultKind::TooLong) {
        return Err("no oversized contribution was recorded as a fault".into());
    }
    Ok(())
}

#[test]
fn contributions_beyond_a_replicas_share_or_the_payload_bound_are_dropped_as_faults() {
    attack_suite(AbcAttack::Oversized, 3, oversized_contributions_are_dropped);
}

fn copied_capsules_release_no_share(_: u32, summary: &AbcSummary) -> Result<(), String> {
    if summary.attack.copies_proposed == 0 {
        return Err("no envelope was copied: the attack did not take place".into());
    }
    if summary.attack.copied_shares_received > 0 {
        return Err(format!(
            "confidentiality: honest replicas sent {} decryption shares of copied capsules ({} copies)",
            summary.attack.copied_shares_received, summary.attack.copies_proposed
        ));
    }
    if !summary.byzantine_faults.contains(&FaultKind::InvalidCiphertext) {
        return Err("no copied capsule was recorded as a fault".into());
    }
    Ok(())
}

#[test]
fn a_capsule_copied_into_another_proposers_envelope_gets_no_decryption_share() {
    attack_suite(AbcAttack::CopyCapsules, 3, copied_capsules_release_no_share);
}

/// Every link loses a fifth of its transmissions; the transport resends them after a timeout
/// (`simnet::lossy`), so they arrive late. Total order and validity must hold all the same.
fn over_lossy_links(sizes: &[u32], seeds: u64) {
    for kind in Behaviour::byzantine_kinds() {
        for &n in sizes {
            for content_aware in [false, true] {
                let lagging = false;
                let epochs = run_seeds(env!("CARGO_CRATE_NAME"), seeds, |seed| {
                    let case = AbcCase { n, byzantine: kind.clone(), requests: 30, lagging, content_aware, seed };
                    run_case_over_lossy_links(&case, 0.2).map(|summary| summary.epochs)
                });
                let most = epochs.iter().max().copied().unwrap_or(0);
                println!(
                    "lossy n={n:>2} byzantine={:<12} lagging={lagging:<5} censoring={content_aware:<5}: {} runs, at most {most} epochs",
                    kind.name(),
                    epochs.len()
                );
            }
        }
    }
}

#[test]
fn atomic_broadcast_orders_requests_over_links_that_lose_a_fifth_of_their_messages() {
    over_lossy_links(&[4], 3);
}

#[test]
#[ignore = "slow suite: CI runs it in its own step"]
fn slow_attacks_on_atomic_broadcast_fail() {
    attack_suite(AbcAttack::ForgeRequests, 50, forged_requests_are_other_requests);
    attack_suite(AbcAttack::Oversized, 50, oversized_contributions_are_dropped);
    attack_suite(AbcAttack::CopyCapsules, 50, copied_capsules_release_no_share);
}

#[test]
#[ignore = "slow suite: CI runs it in its own step"]
fn slow_atomic_broadcast_over_lossy_links() {
    over_lossy_links(&[4, 7, 10], 50);
}
