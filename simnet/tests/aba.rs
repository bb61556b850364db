//! Binary agreement under the simulator: every configuration the foundation asks for.

use simnet::aba::{run_case, AbaCase, SchedulerKind};
use simnet::seeds::run_seeds;
use simnet::Behaviour;

const SIZES: [u32; 4] = [4, 7, 10, 13];
const SEEDS_DEFAULT: u64 = 50;
const SEEDS_SLOW: u64 = 1_000;

/// Run `n` in SIZES × seeds for one Byzantine kind and scheduler; return the worst round count.
fn suite(byzantine: Behaviour, scheduler: SchedulerKind, validated: bool, seeds: u64) -> u32 {
    let mut worst = 0;
    for n in SIZES {
        let summaries = run_seeds(env!("CARGO_CRATE_NAME"), seeds, |seed| {
            let case = AbaCase { scheduler, validated, ..AbaCase::new(n, byzantine.clone(), seed) };
            run_case(&case)
        });
        let rounds = summaries.iter().map(|s| s.rounds_worst).max().unwrap_or(0);
        println!("n={n} byzantine={} scheduler={scheduler:?} validated={validated}: {} runs, worst round {rounds}", byzantine.name(), summaries.len());
        worst = worst.max(rounds);
    }
    worst
}

#[test]
fn smoke() {
    let w = suite(Behaviour::Equivocator, SchedulerKind::Random, false, 10);
    println!("{w}");
}
