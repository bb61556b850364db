//! Agreement instances under the simulator: 6 instances at once (at most 3 running, the others
//! waiting for room), each honest replica starting a prefix of them at once and the rest later, in order, for n ∈ {4, 7}
//! with no Byzantine replica and with t of every kind and the rusher; 3 seeds per configuration by default,
//! 40 in the `slow_` test. Each run ends with a liveness phase.

use simnet::instances::{run_case, InstancesCase};
use simnet::seeds::run_seeds;
use simnet::Behaviour;

fn suite(seeds: u64) {
    // All honest too: there a replica that starts late may find the others terminated without
    // it, and only their answers to its messages let it finish.
    for kind in [Behaviour::Honest].into_iter().chain(Behaviour::byzantine_kinds()).chain([Behaviour::Rusher]) {
        for n in [4u32, 7] {
            let ones = run_seeds(env!("CARGO_CRATE_NAME"), seeds, |seed| {
                run_case(&InstancesCase { n, instances: 6, byzantine: kind.clone(), seed })
            });
            println!(
                "n={n} byzantine={:<12}: {} runs, {} instances decided 1",
                kind.name(),
                ones.len(),
                ones.iter().sum::<u64>()
            );
        }
    }
}

#[test]
fn agreement_instances_agree_validly_and_terminate_with_t_byzantine_replicas_of_every_kind() {
    suite(3);
}

#[test]
#[ignore = "slow suite: CI runs it in its own step"]
fn slow_agreement_instances_agree_validly_and_terminate_with_t_byzantine_replicas_of_every_kind() {
    suite(40);
}
