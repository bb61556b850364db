//! Binary agreement under the simulator, for n ∈ {4, 7, 10, 13} with t Byzantine replicas of every
//! kind, under the random scheduler (with partitions that heal) and the content-aware one.
//!
//! The default run takes 50 seeds per configuration; the `slow_` tests (ignored by default, run by
//! CI in their own step) take 1,000. A failure prints the command that replays it.

use simnet::aba::{run_case, run_decided_before_proposing, AbaCase, AbaSummary, SchedulerKind};
use simnet::seeds::run_seeds;
use simnet::Behaviour;

const SIZES: [u32; 4] = [4, 7, 10, 13];
const SEEDS_DEFAULT: u64 = 50;
const SEEDS_SLOW: u64 = 1_000;
/// Far above anything seen (the worst is printed by every suite); a run beyond it is a failure.
const ROUNDS_BOUND: u32 = 60;

/// Run every size × `seeds` for one configuration; print and return the worst round count.
fn suite(byzantine: &Behaviour, scheduler: SchedulerKind, validated: bool, seeds: u64) -> u32 {
    let mut worst = 0;
    for n in SIZES {
        let summaries: Vec<AbaSummary> = run_seeds(env!("CARGO_CRATE_NAME"), seeds, |seed| {
            let case = AbaCase { scheduler, validated, ..AbaCase::new(n, byzantine.clone(), seed) };
            let summary = run_case(&case)?;
            if summary.rounds_worst > ROUNDS_BOUND {
                return Err(format!("termination: took {} rounds, bound {ROUNDS_BOUND} (n={n})", summary.rounds_worst));
            }
            Ok(summary)
        });
        let rounds = summaries.iter().map(|s| s.rounds_worst).max().unwrap_or(0);
        let mean = summaries.iter().map(|s| s.rounds_mean).sum::<f64>() / summaries.len().max(1) as f64;
        println!(
            "n={n:>2} byzantine={:<12} scheduler={scheduler:?} validated={validated}: {} runs, rounds mean {mean:.2} worst {rounds}",
            byzantine.name(),
            summaries.len()
        );
        worst = worst.max(rounds);
    }
    worst
}

fn every_kind(scheduler: SchedulerKind, validated: bool, seeds: u64) {
    for kind in Behaviour::byzantine_kinds() {
        suite(&kind, scheduler, validated, seeds);
    }
}

#[test]
fn binary_agreement_holds_with_t_crashing_replicas() {
    suite(&Behaviour::Crash { after: 5 }, SchedulerKind::Random, false, SEEDS_DEFAULT);
}

#[test]
fn binary_agreement_holds_with_t_silent_replicas() {
    suite(&Behaviour::Silent, SchedulerKind::Random, false, SEEDS_DEFAULT);
}

#[test]
fn binary_agreement_holds_with_t_equivocators() {
    suite(&Behaviour::Equivocator, SchedulerKind::Random, false, SEEDS_DEFAULT);
}

#[test]
fn binary_agreement_holds_with_t_replicas_sending_garbage() {
    suite(&Behaviour::Garbage, SchedulerKind::Random, false, SEEDS_DEFAULT);
}

#[test]
fn binary_agreement_holds_with_t_replayers() {
    suite(&Behaviour::Replayer, SchedulerKind::Random, false, SEEDS_DEFAULT);
}

#[test]
fn binary_agreement_holds_with_t_impersonators() {
    suite(&Behaviour::Impersonator, SchedulerKind::Random, false, SEEDS_DEFAULT);
}

#[test]
fn binary_agreement_holds_under_the_content_aware_scheduler_with_every_kind() {
    every_kind(SchedulerKind::ContentAware, false, SEEDS_DEFAULT);
}

#[test]
fn validated_agreement_holds_with_every_kind() {
    every_kind(SchedulerKind::Random, true, SEEDS_DEFAULT);
}

#[test]
fn validated_agreement_holds_under_the_content_aware_scheduler_with_every_kind() {
    every_kind(SchedulerKind::ContentAware, true, SEEDS_DEFAULT);
}

/// The adversary of HoneyBadgerBFT issue 59 learns threshold coins from the first honest share
/// (it holds the t Byzantine shares), re-times what is in flight and has its attackers vote so as
/// to split the honest replicas around each coin; fixed-coin rounds it can stall outright. The
/// CONF phase fixes every honest replica's candidate values before any honest share is out, so
/// the early knowledge buys nothing: every run terminates, and the adversary did learn coins.
#[test]
fn content_aware_scheduler_cannot_stop_binary_agreement() {
    for kind in [Behaviour::Adaptive, Behaviour::Equivocator] {
        for n in SIZES {
            let summaries = run_seeds(env!("CARGO_CRATE_NAME"), 200, |seed| {
                // Mixed proposals only: with unanimous ones validity decides before any coin.
                let case = AbaCase {
                    scheduler: SchedulerKind::ContentAware,
                    ..AbaCase::new(n, kind.clone(), seed * 4 + 2 + seed % 2)
                };
                let summary = run_case(&case)?;
                if summary.rounds_worst > ROUNDS_BOUND {
                    return Err(format!("termination: took {} rounds (n={n})", summary.rounds_worst));
                }
                Ok(summary)
            });
            let learned: u32 = summaries.iter().map(|s| s.coins_learned).sum();
            let worst = summaries.iter().map(|s| s.rounds_worst).max().unwrap_or(0);
            println!("n={n} {}: coins learned early {learned}, worst round {worst}", kind.name());
            assert!(learned > 0, "the adversary never learned a coin early: the test would prove nothing");
        }
    }
}

/// The schedule of issue 11: at n = 7 a replica decides through t + 1 TERM before it proposed;
/// the three replicas that need its AUX must still decide (before the fix they waited forever).
#[test]
fn a_replica_that_decides_before_proposing_still_helps_the_others_finish() {
    for validated in [false, true] {
        run_seeds(env!("CARGO_CRATE_NAME"), 5, |seed| run_decided_before_proposing(validated, seed));
    }
}

/// The rusher sends TERM to replicas that have not proposed yet and its AUX to one replica only;
/// 1 to t - 1 honest replicas propose late. Every run must terminate, within the liveness bound.
#[test]
fn binary_agreement_holds_with_t_rushers_and_late_proposers() {
    suite(&Behaviour::Rusher, SchedulerKind::Random, false, SEEDS_DEFAULT);
    suite(&Behaviour::Rusher, SchedulerKind::Random, true, SEEDS_DEFAULT / 2);
    suite(&Behaviour::Rusher, SchedulerKind::ContentAware, false, SEEDS_DEFAULT / 2);
}

/// The liveness phase is a real check: a run whose honest replicas cannot be done within the
/// bound after the network healed fails as such, and one with a sensible bound passes.
#[test]
fn the_liveness_phase_fails_a_run_not_done_within_its_bound() {
    use fides_types::Quorum;
    use rand::SeedableRng;
    use simnet::aba::AbaScenario;
    use simnet::{Network, RandomScheduler, RunConfig, Scenario};
    let quorum = Quorum::with_max_faults(4).expect("4 replicas tolerate 1");
    let behaviours = vec![Behaviour::Honest; 4];
    let run = |bound| {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let scenario = AbaScenario::new(quorum, false, true, 2, &mut rng);
        let scheduler = RandomScheduler::new(quorum, &mut rng);
        let config = RunConfig { seed: 7, deliveries_max: 100_000, cpu: None };
        let report = Network::new(quorum, &scenario, &behaviours, scheduler, config)
            .with_liveness(1_000, bound)
            .run(|i| scenario.input(i));
        report.liveness.map(|(_, missed)| missed)
    };
    assert_eq!(run(1), Some(true), "1 µs is too short for anything");
    assert_eq!(run(simnet::aba::LIVENESS_BOUND), Some(false));
}

#[test]
fn the_same_seed_gives_the_same_trace_and_another_seed_another() {
    for kind in Behaviour::byzantine_kinds() {
        for scheduler in [SchedulerKind::Random, SchedulerKind::ContentAware] {
            let case = AbaCase { scheduler, ..AbaCase::new(7, kind.clone(), 42) };
            let first = run_case(&case).expect("seed 42 passes");
            let again = run_case(&case).expect("seed 42 passes");
            assert_eq!(first.trace, again.trace, "{} {scheduler:?}", kind.name());
            let other = run_case(&AbaCase { seed: 43, ..case }).expect("seed 43 passes");
            assert_ne!(first.trace, other.trace, "{} {scheduler:?}", kind.name());
        }
    }
}

#[test]
fn garbage_and_replays_are_recorded_as_faults() {
    for kind in [Behaviour::Garbage, Behaviour::Replayer] {
        let faults: usize =
            (0..10).map(|seed| run_case(&AbaCase::new(7, kind.clone(), seed)).expect("passes").faults).sum();
        assert!(faults > 0, "{} produced no recorded fault", kind.name());
    }
    let honest: usize =
        (0..10).map(|seed| run_case(&AbaCase::new(7, Behaviour::Silent, seed)).expect("passes").faults).sum();
    assert_eq!(honest, 0, "silent replicas send nothing to be at fault for");
}

#[test]
fn impersonation_attempts_are_delivered_under_the_real_sender() {
    let attempts: u64 = (0..10)
        .map(|seed| run_case(&AbaCase::new(7, Behaviour::Impersonator, seed)).expect("passes").impersonations_refused)
        .sum();
    assert!(attempts > 0, "the impersonator never tried");
}

#[test]
#[ignore = "slow suite: CI runs it in its own step"]
fn slow_binary_agreement_with_every_kind_under_the_random_scheduler() {
    every_kind(SchedulerKind::Random, false, SEEDS_SLOW);
}

#[test]
#[ignore = "slow suite: CI runs it in its own step"]
fn slow_binary_agreement_with_every_kind_under_the_content_aware_scheduler() {
    every_kind(SchedulerKind::ContentAware, false, SEEDS_SLOW);
}

#[test]
#[ignore = "slow suite: CI runs it in its own step"]
fn slow_validated_agreement_with_every_kind_under_the_random_scheduler() {
    every_kind(SchedulerKind::Random, true, SEEDS_SLOW);
}

#[test]
#[ignore = "slow suite: CI runs it in its own step"]
fn slow_validated_agreement_with_every_kind_under_the_content_aware_scheduler() {
    every_kind(SchedulerKind::ContentAware, true, SEEDS_SLOW);
}

#[test]
#[ignore = "slow suite: CI runs it in its own step"]
fn slow_binary_agreement_with_rushers_and_late_proposers() {
    for (scheduler, validated) in [
        (SchedulerKind::Random, false),
        (SchedulerKind::Random, true),
        (SchedulerKind::ContentAware, false),
        (SchedulerKind::ContentAware, true),
    ] {
        suite(&Behaviour::Rusher, scheduler, validated, SEEDS_SLOW / 4);
    }
}
