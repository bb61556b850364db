//! The epoch signer under the simulator (`simnet::epoch_signer`): n ∈ {4, 7} with t Byzantine
//! signers of every kind (silent, wrong share, equivocating root, garbage, replayer), under random
//! delays with partitions, a schedule where the Byzantine shares arrive first (every honest signer
//! must name them), and one where an honest signer lags; every other run with an honest signer down
//! until the others are done. Every honest signer must end with a certificate of every epoch that
//! verifies a client's answer alone. By default one seed per configuration, n = 4 under every
//! schedule and n = 7 under the Byzantine-first one; n up to 10 and 10 seeds in the `slow_` test.

use simnet::epoch_signer::{run_case, SignerAttack, SignerCase, SignerSchedule};
use simnet::seeds::run_seeds;

const SCHEDULES: [SignerSchedule; 3] =
    [SignerSchedule::Random, SignerSchedule::ByzantineFirst, SignerSchedule::Lagging];

fn suite(sizes: &[u32], schedules: &[SignerSchedule], epochs: u64, seeds: u64) {
    for attack in SignerAttack::ALL {
        for &n in sizes {
            for &schedule in schedules {
                let started = std::time::Instant::now();
                let runs = run_seeds(env!("CARGO_CRATE_NAME"), seeds, |seed| {
                    let down = seed % 2 == 1 || schedule == SignerSchedule::Random;
                    run_case(&SignerCase { n, attack, schedule, epochs, down, seed })
                });
                let faults: usize = runs.iter().map(|r| r.faults.values().sum::<usize>()).sum();
                println!(
                    "n={n:>2} attack={:<17} schedule={schedule:?}: {} runs, {faults} faults named ({} ms)",
                    attack.name(),
                    runs.len(),
                    started.elapsed().as_millis()
                );
            }
        }
    }
}

#[test]
fn every_honest_signer_certifies_every_epoch_with_t_byzantine_signers_of_every_kind() {
    suite(&[4], &SCHEDULES, 5, 1);
}

#[test]
fn every_honest_signer_names_the_bad_shares_of_two_byzantine_signers() {
    suite(&[7], &[SignerSchedule::ByzantineFirst], 3, 1);
}

#[test]
#[ignore = "slow suite: CI runs it in its own step"]
fn slow_every_honest_signer_certifies_every_epoch_with_t_byzantine_signers_of_every_kind() {
    suite(&[4, 7, 10], &SCHEDULES, 6, 10);
}

#[test]
fn a_seed_replays_the_same_run() {
    for schedule in SCHEDULES {
        let case = SignerCase { n: 4, attack: SignerAttack::Replayer, schedule, epochs: 3, down: true, seed: 3 };
        let first = run_case(&case).expect("the run passes");
        let second = run_case(&case).expect("the run passes");
        assert_eq!(first.trace_hex, second.trace_hex, "{schedule:?}");
    }
}
