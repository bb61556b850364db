//! Snapshots need no quiescence: under continuous client load the write-ahead log is compacted
//! all the same (the events since the last snapshot, which `Status` reports as `wal_events`,
//! stay bounded), and a replica killed with SIGKILL under that load restarts replaying only the
//! events logged after its last snapshot (the count its "replayed the log" line gives), then
//! serves again without contradicting anything it sent. About 20 s.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use fides_types::NodeIndex;

const UP: Duration = Duration::from_secs(60);
/// How long the clients send before the kill, and after the restart.
const LOAD: Duration = Duration::from_secs(12);
/// Events logged between two snapshots at most: the limit (2,000 events) plus what one turn can
/// add past it (at most 4,096 arrivals, the clock and one `Heard` per peer).
const EVENTS_SINCE_SNAPSHOT_MAX: u64 = 2_000 + 4_096 + 1 + 4;

#[test]
fn under_continuous_load_the_log_is_compacted_and_a_killed_replica_replays_only_the_tail() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().expect("temporary directory");
    let _logs = LogsOnFailure::new(dir.path(), 4);
    let mut local = cluster_with(dir.path(), 4, 1, checkpoint_every(16), &[]);
    runtime_test(
        async {
            let probe = client(dir.path(), Duration::from_secs(10));
            local.start_all().expect("start");
            for i in 0..4 {
                wait_up(&probe, &mut local, i, UP).await;
            }
            // Three clients send without a pause for the whole test: no replica is ever
            // quiescent for long.
            let ordered = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let mut tasks = Vec::new();
            for c in 0..3u32 {
                let client = client(dir.path(), Duration::from_secs(10));
                let (ordered, stop) = (Arc::clone(&ordered), Arc::clone(&stop));
                tasks.push(tokio::spawn(async move {
                    let mut r = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        if client.submit(format!("client {c} request {r}").into_bytes()).await.is_ok() {
                            ordered.fetch_add(1, Ordering::Relaxed);
                        }
                        r += 1;
                    }
                }));
            }
            let mut since_snapshot_max = 0;
            let sample_until = Instant::now() + LOAD;
            while Instant::now() < sample_until {
                for i in 0..4 {
                    if let Ok(status) = probe.status(NodeIndex(i)).await {
                        since_snapshot_max = since_snapshot_max.max(status.wal_events);
                        assert!(
                            status.wal_events <= EVENTS_SINCE_SNAPSHOT_MAX,
                            "replica {i}: {} events logged since its last snapshot (> {EVENTS_SINCE_SNAPSHOT_MAX}) \
                             at epoch {}: the log is not compacted under load",
                            status.wal_events,
                            status.next_epoch
                        );
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let before_kill = probe.status(NodeIndex(1)).await.expect("status").next_epoch;
            local.kill(1);
            local.start(1).expect("restart");
            wait_up(&probe, &mut local, 1, UP).await;
            let log = std::fs::read_to_string(local.log_file(1)).expect("replica 1's log");
            let replayed =
                fides_replica::launcher::replayed_events(&log).expect("a \"replayed the log\" line with replayed=N");
            println!(
                "events since a snapshot at most {since_snapshot_max}; replica 1 killed at epoch {before_kill} \
                 replayed {replayed} events"
            );
            assert!(
                replayed <= EVENTS_SINCE_SNAPSHOT_MAX,
                "replica 1 replayed {replayed} events after the kill (> {EVENTS_SINCE_SNAPSHOT_MAX})"
            );
            let ordered_before = ordered.load(Ordering::Relaxed);
            tokio::time::sleep(LOAD / 2).await;
            stop.store(true, Ordering::Relaxed);
            for task in tasks {
                let _ = task.await;
            }
            let ordered_after = ordered.load(Ordering::Relaxed);
            println!("requests ordered: {ordered_before} before the restart, {ordered_after} in all");
            assert!(ordered_after > ordered_before, "nothing was ordered after the restart");
            let status = probe.status(NodeIndex(0)).await.expect("status");
            wait_converged(&probe, &[0, 1, 2, 3], status.next_epoch, UP).await;
            assert_logs_agree(&logs(&probe, &[0, 1, 2, 3]).await);
            assert_no_equivocation(&probe, &[0, 1, 2, 3]).await;
        },
        Duration::from_secs(240),
    );
    local.stop_all(Duration::from_secs(10));
}
