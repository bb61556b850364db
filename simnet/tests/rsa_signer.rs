//! The threshold RSA signer under the simulator (`simnet::rsa_signer`): n = 4 with a Byzantine
//! signer of every kind (silent, wrong share, shares for other messages and equivocation, garbage,
//! replayer), under random delays with partitions and a schedule where the Byzantine shares arrive
//! first (every honest signer must name them); every other run with an honest signer down until
//! the others are done. Every honest signer must end with the same signature of every message,
//! which verifies against the public key. A 512-bit key (test-only size). By default one seed per
//! configuration; n up to 7 and 10 seeds in the `slow_` test.

use simnet::rsa_signer::{run_case, RsaAttack, RsaCase, RsaSchedule};
use simnet::seeds::run_seeds;

const SCHEDULES: [RsaSchedule; 2] = [RsaSchedule::Random, RsaSchedule::ByzantineFirst];

fn suite(sizes: &[u32], messages: usize, seeds: u64) {
    for attack in RsaAttack::ALL {
        for &n in sizes {
            for schedule in SCHEDULES {
                let started = std::time::Instant::now();
                let runs = run_seeds(env!("CARGO_CRATE_NAME"), seeds, |seed| {
                    let down = seed % 2 == 1 || schedule == RsaSchedule::Random;
                    run_case(&RsaCase { n, attack, schedule, messages, down, seed })
                });
                let faults: usize = runs.iter().map(|r| r.faults.values().sum::<usize>()).sum();
                println!(
                    "n={n:>2} attack={:<14} schedule={schedule:?}: {} runs, {faults} faults named ({} ms)",
                    attack.name(),
                    runs.len(),
                    started.elapsed().as_millis()
                );
            }
        }
    }
}

#[test]
fn every_honest_signer_signs_every_message_with_t_byzantine_rsa_signers_of_every_kind() {
    suite(&[4], 3, 1);
}

#[test]
#[ignore = "slow suite: CI runs it in its own step"]
fn slow_every_honest_signer_signs_every_message_with_t_byzantine_rsa_signers_of_every_kind() {
    suite(&[4, 7], 4, 10);
}

#[test]
fn an_rsa_signer_seed_replays_the_same_run() {
    for schedule in SCHEDULES {
        let case = RsaCase { n: 4, attack: RsaAttack::Replayer, schedule, messages: 2, down: true, seed: 3 };
        let first = run_case(&case).expect("the run passes");
        let second = run_case(&case).expect("the run passes");
        assert_eq!(first.trace_hex, second.trace_hex, "{schedule:?}");
    }
}
