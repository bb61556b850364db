//! Atomic broadcast under the simulator, for n ∈ {4, 7} with t Byzantine replicas of every kind:
//! total order, at-most-once, validity (requests given to one honest replica or to 2t + 1
//! replicas are delivered) and agreed time within the honest clocks. 5 seeds per configuration by
//! default, 20 (and n = 10) in the `slow_` test; the 20 / 200 wait for the speed work.

use simnet::abc::{run_case, AbcCase};
use simnet::seeds::run_seeds;
use simnet::Behaviour;

fn suite(sizes: &[u32], seeds: u64, kinds: &[Behaviour]) {
    for kind in kinds {
        for &n in sizes {
            let epochs = run_seeds(env!("CARGO_CRATE_NAME"), seeds, |seed| {
                run_case(&AbcCase { n, byzantine: kind.clone(), requests: 30, seed })
            });
            let most = epochs.iter().max().copied().unwrap_or(0);
            println!("n={n:>2} byzantine={:<12}: {} runs, at most {most} epochs", kind.name(), epochs.len());
        }
    }
}

#[test]
fn atomic_broadcast_orders_requests_with_t_byzantine_replicas_of_every_kind() {
    suite(&[4, 7], 5, &Behaviour::byzantine_kinds());
}

// The slow suite is split in two so that the two halves run on two cores.

#[test]
#[ignore = "slow suite: CI runs it in its own step"]
fn slow_atomic_broadcast_orders_requests_with_crashing_silent_equivocating_or_garbage_replicas() {
    suite(&[4, 7, 10], 20, &Behaviour::byzantine_kinds()[..4]);
}

#[test]
#[ignore = "slow suite: CI runs it in its own step"]
fn slow_atomic_broadcast_orders_requests_with_replaying_impersonating_or_adaptive_replicas() {
    suite(&[4, 7, 10], 20, &Behaviour::byzantine_kinds()[4..]);
}
