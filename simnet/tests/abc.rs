//! Atomic broadcast under the simulator, for n ∈ {4, 7, 10} with t Byzantine replicas of every
//! kind: total order, at-most-once, validity (requests given to one honest replica or to 2t + 1
//! replicas are delivered), checkpoints and agreed time within the honest clocks; and catch-up of
//! an honest replica cut off for a while, from a checkpoint, with t - 1 Byzantine replicas.

use simnet::abc::{run_case, AbcCase};
use simnet::seeds::run_seeds;
use simnet::Behaviour;

fn suite(sizes: &[u32], seeds: u64, kinds: &[Behaviour], lagging: bool) {
    for kind in kinds {
        for &n in sizes {
            let requests = if lagging { 40 } else { 30 };
            let epochs = run_seeds(env!("CARGO_CRATE_NAME"), seeds, |seed| {
                run_case(&AbcCase { n, byzantine: kind.clone(), requests, lagging, seed })
            });
            let most = epochs.iter().max().copied().unwrap_or(0);
            println!(
                "n={n:>2} byzantine={:<12} lagging={lagging}: {} runs, at most {most} epochs",
                kind.name(),
                epochs.len()
            );
        }
    }
}

#[test]
fn atomic_broadcast_orders_requests_with_t_byzantine_replicas_of_every_kind() {
    suite(&[4, 7, 10], 20, &Behaviour::byzantine_kinds(), false);
}

#[test]
fn a_replica_cut_off_catches_up_from_a_checkpoint() {
    suite(&[4], 20, &[Behaviour::Honest], true);
    suite(&[7, 10], 20, &Behaviour::byzantine_kinds(), true);
}

// The slow suite is split so that its parts run on two cores.

#[test]
#[ignore = "slow suite: CI runs it in its own step"]
fn slow_atomic_broadcast_orders_requests_with_crashing_silent_equivocating_or_garbage_replicas() {
    suite(&[4, 7, 10], 200, &Behaviour::byzantine_kinds()[..4], false);
}

#[test]
#[ignore = "slow suite: CI runs it in its own step"]
fn slow_atomic_broadcast_orders_requests_with_replaying_impersonating_or_adaptive_replicas() {
    suite(&[4, 7, 10], 200, &Behaviour::byzantine_kinds()[4..], false);
}

#[test]
#[ignore = "slow suite: CI runs it in its own step"]
fn slow_a_replica_cut_off_catches_up_from_a_checkpoint() {
    suite(&[4], 200, &[Behaviour::Honest], true);
    suite(&[7, 10], 200, &Behaviour::byzantine_kinds(), true);
}
