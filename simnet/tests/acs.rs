//! The common subset under the simulator, for n ∈ {4, 7, 10} with t Byzantine replicas of every
//! kind and the rusher: 20 seeds per configuration by default, 200 in the `slow_` test. Each run
//! ends with a liveness phase: the network heals and every honest replica must finish in time.

use simnet::acs::{run_case, AcsCase};
use simnet::seeds::run_seeds;
use simnet::Behaviour;

fn suite(seeds: u64) {
    // Every kind, and the rusher: TERM to replicas that have not proposed in an agreement yet
    // (whose broadcast has not reached them), AUX to one replica only.
    for kind in Behaviour::byzantine_kinds().into_iter().chain([Behaviour::Rusher]) {
        for n in [4u32, 7, 10] {
            let sizes = run_seeds(env!("CARGO_CRATE_NAME"), seeds, |seed| {
                run_case(&AcsCase { n, byzantine: kind.clone(), seed })
            });
            let smallest = sizes.iter().min().copied().unwrap_or(0);
            println!("n={n:>2} byzantine={:<12}: {} runs, smallest subset {smallest}", kind.name(), sizes.len());
        }
    }
}

#[test]
fn common_subset_holds_with_t_byzantine_replicas_of_every_kind() {
    suite(20);
}

#[test]
#[ignore = "slow suite: CI runs it in its own step"]
fn slow_common_subset_holds_with_t_byzantine_replicas_of_every_kind() {
    suite(200);
}
