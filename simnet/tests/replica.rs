//! Whole replicas under the simulator (`simnet::replica`): the replica's core (atomic broadcast
//! and agreement instances) and its host's per-epoch application, with the bistro and a service
//! that asks for agreement over an in-memory store and the epoch signer, with `t` Byzantine
//! replicas of every generic kind (silent, equivocating — with lying and forged decision notices —
//! garbage, replaying, crashing). Honest replicas must order every request, hold the same service
//! state, root and decisions after every epoch, decide every instance on the value asked for,
//! certify every epoch, and every answer must verify alone against its certificate; a replica
//! that jumped to a checkpoint fetches the batches its services need. By default two seeds per
//! kind at n = 4 and one at n = 7, and one seed that makes a replica jump; more in the `slow_`
//! test.

use simnet::replica::{run_case, ReplicaCase};
use simnet::seeds::run_seeds;
use simnet::Behaviour;

const KINDS: [Behaviour; 6] = [
    Behaviour::Honest,
    Behaviour::Silent,
    Behaviour::Equivocator,
    Behaviour::Garbage,
    Behaviour::Replayer,
    Behaviour::Crash { after: 40 },
];

fn suite(sizes: &[u32], seeds: u64) {
    for byzantine in KINDS {
        for &n in sizes {
            let started = std::time::Instant::now();
            let runs = run_seeds(env!("CARGO_CRATE_NAME"), seeds, |seed| {
                run_case(&ReplicaCase {
                    n,
                    byzantine: byzantine.clone(),
                    events: 3,
                    tickets: 4,
                    instances: 3,
                    ca: 0,
                    seed,
                })
            });
            let verified: usize = runs.iter().map(|r| r.answers_verified).sum();
            let certified: usize = runs.iter().map(|r| r.certified).sum();
            let decided: usize = runs.iter().map(|r| r.decided).sum();
            let lies: usize = runs.iter().map(|r| r.byzantine_notices).sum();
            let backfilled: usize = runs.iter().map(|r| r.backfilled).sum();
            println!(
                "n={n:>2} byzantine={:<11}: {} runs, {certified} epochs certified, {decided} instances decided \
                 ({lies} Byzantine notices ordered), {backfilled} batches backfilled, {verified} answers verified \
                 ({} ms)",
                byzantine.name(),
                runs.len(),
                started.elapsed().as_millis()
            );
        }
    }
}

#[test]
fn whole_replicas_agree_on_service_state_and_certify_every_answer_with_t_byzantine_replicas() {
    suite(&[4], 2);
}

#[test]
fn whole_replicas_with_two_byzantine_replicas() {
    suite(&[7], 1);
}

#[test]
#[ignore = "slow suite: CI runs it in its own step"]
fn slow_whole_replicas_agree_on_service_state_and_certify_every_answer() {
    suite(&[4, 7], 10);
}

#[test]
fn a_seed_replays_the_same_run() {
    let case =
        ReplicaCase { n: 4, byzantine: Behaviour::Replayer, events: 2, tickets: 2, instances: 1, ca: 0, seed: 5 };
    let first = run_case(&case).expect("the run passes");
    let second = run_case(&case).expect("the run passes");
    assert_eq!(first.trace, second.trace);
}

/// A seed whose schedule makes an honest replica jump to a checkpoint over a batch its services
/// have not applied (so does n = 7, all honest, seed 5): it fetches the batches from its peers,
/// checks them against the checkpoint's log digest, applies them, and goes on like the others.
#[test]
fn a_replica_that_jumped_to_a_checkpoint_fetches_the_batches_its_services_need() {
    let case =
        ReplicaCase { n: 4, byzantine: Behaviour::Equivocator, events: 3, tickets: 4, instances: 3, ca: 0, seed: 6 };
    let summary = run_case(&case).unwrap_or_else(|e| panic!("{e}"));
    println!("{} batches backfilled", summary.backfilled);
    assert!(summary.backfilled > 0, "no replica jumped in {case:?}: the schedule changed, pick another seed");
}
