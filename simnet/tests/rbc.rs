//! Reliable broadcast under the simulator, for n ∈ {4, 7, 10} with t Byzantine replicas of every
//! kind, with an honest and with a Byzantine proposer. 20 seeds per configuration by default, 200
//! in the `slow_` test.

use simnet::rbc::{run_case, RbcCase};
use simnet::seeds::run_seeds;
use simnet::Behaviour;

fn suite(seeds: u64) {
    for kind in Behaviour::byzantine_kinds() {
        for n in [4u32, 7, 10] {
            for proposer_byzantine in [false, true] {
                let delivered: usize = run_seeds(env!("CARGO_CRATE_NAME"), seeds, |seed| {
                    let value_len = [0, 1, 100, 10_000][seed as usize % 4];
                    run_case(&RbcCase { n, byzantine: kind.clone(), proposer_byzantine, value_len, seed })
                })
                .into_iter()
                .filter(|d| *d > 0)
                .count();
                println!(
                    "n={n:>2} byzantine={:<12} proposer byzantine: {proposer_byzantine:<5}: delivered in {delivered} runs",
                    kind.name()
                );
            }
        }
    }
}

#[test]
fn reliable_broadcast_holds_with_t_byzantine_replicas_of_every_kind() {
    suite(20);
}

#[test]
#[ignore = "slow suite: CI runs it in its own step"]
fn slow_reliable_broadcast_holds_with_t_byzantine_replicas_of_every_kind() {
    suite(200);
}
