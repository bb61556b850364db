//! The certification authority in whole replicas (`simnet::replica`, with `ca` clients): every
//! Byzantine replica's CA votes yes on everything (and the `adaptive` kind does nothing else
//! wrong), while clients that hold their key, clients that name a key they do not hold, and two
//! updates of one key sent together go through random schedules with partitions and a liveness
//! phase. Checked at every honest replica, besides the whole replicas' checks (same state after
//! every epoch, every answer certified): each CA instance decided once; no client without the key
//! gets a certificate; every holder gets one; the two updates run one after the other, in log
//! order, the second replacing the first's certificate. By default two seeds of the yes voter
//! and one each of an equivocating and a garbage-sending replica, at n = 4, and one seed run twice
//! for its trace hash (about 6 s on two cores); every kind at n ∈ {4, 7}, 10 seeds, in the
//! `slow_` test (about 7 minutes).

use simnet::replica::{run_case, ReplicaCase};
use simnet::seeds::run_seeds;
use simnet::Behaviour;

/// `Adaptive` is, in whole replicas, a replica that follows the protocol but whose CA votes yes
/// on everything.
const KINDS: [Behaviour; 7] = [
    Behaviour::Adaptive,
    Behaviour::Honest,
    Behaviour::Silent,
    Behaviour::Equivocator,
    Behaviour::Garbage,
    Behaviour::Replayer,
    Behaviour::Crash { after: 40 },
];

fn suite(kinds: &[Behaviour], n: u32, seeds: u64) {
    for byzantine in kinds {
        let started = std::time::Instant::now();
        let runs = run_seeds(env!("CARGO_CRATE_NAME"), seeds, |seed| {
            run_case(&ReplicaCase { n, byzantine: byzantine.clone(), events: 1, tickets: 1, instances: 0, ca: 2, seed })
        });
        let certificates: usize = runs.iter().map(|r| r.certificates).sum();
        println!(
            "n={n:>2} byzantine={:<11}: {} runs, {certificates} certificates issued ({} ms)",
            byzantine.name(),
            runs.len(),
            started.elapsed().as_millis()
        );
    }
}

#[test]
fn a_byzantine_replica_that_votes_yes_on_everything_changes_nothing_in_the_ca() {
    suite(&KINDS[..1], 4, 2);
}

#[test]
fn the_ca_confirms_keys_and_orders_updates_with_an_equivocating_or_garbage_sending_replica() {
    suite(&[Behaviour::Equivocator, Behaviour::Garbage], 4, 1);
}

/// The CA's clients draw their keys from the seed too: a failing seed replays alone.
#[test]
fn a_seed_replays_the_same_run_with_the_ca() {
    let case =
        ReplicaCase { n: 4, byzantine: Behaviour::Adaptive, events: 0, tickets: 0, instances: 0, ca: 1, seed: 7 };
    let first = run_case(&case).unwrap_or_else(|e| panic!("{e}"));
    let second = run_case(&case).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.trace, second.trace);
    assert_eq!(first.certificates, 4, "one holder, the updated key's issue and its two updates: {first:?}");
}

#[test]
#[ignore = "slow suite: CI runs it in its own step"]
fn slow_the_ca_confirms_keys_and_orders_updates_with_each_byzantine_kind() {
    for n in [4, 7] {
        suite(&KINDS, n, 10);
    }
}
