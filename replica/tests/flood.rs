//! A Byzantine replica floods the others with maximal frames that decode, at the rate its peers'
//! transports allow, while clients order requests: the honest replicas keep ordering, and their
//! memory and data directory stay within the bounds `docs/replica.md` states.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use fides_replica::launcher::rss_kib;
use fides_types::NodeIndex;

const UP: Duration = Duration::from_secs(60);
/// How long replica 3 floods, from its start.
const FLOOD_S: u64 = 20;
/// The bounds of `docs/replica.md` ("Bounds under a flood") for this configuration: n = 4,
/// batch size 8, a flood of 20 s.
const RSS_MAX_MIB: u64 = 256;
const DATA_MAX_MIB: u64 = 400;

fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_bytes(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

#[test]
fn honest_replicas_keep_ordering_within_memory_and_disk_bounds_while_one_floods() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().expect("temporary directory");
    let _logs = LogsOnFailure::new(dir.path(), 4);
    // Small batches (dealt into the cluster file) keep the longest shard an epoch accepts small (about 64 KiB), so the bounds
    // are tight and the flood's frames many.
    let protocol = fides_dealer::ProtocolParameters { batch_size: 8, ..fides_dealer::ProtocolParameters::DEFAULT };
    let mut local = cluster_with(dir.path(), 4, 1, protocol, &[]);
    local.set_extra_args(3, vec!["--fault-flood-s".into(), FLOOD_S.to_string()]);
    let honest = [0u32, 1, 2];
    let data_dirs: Vec<_> = honest.iter().map(|i| local.data_dir(*i)).collect();
    runtime_test(
        async {
            let probe = client(dir.path(), Duration::from_secs(10));
            local.start_all().expect("start");
            let started = Instant::now();
            for i in 0..4 {
                wait_up(&probe, &mut local, i, UP).await;
            }
            let pids = local.pids();
            // Clients order requests through the honest replicas for the whole flood.
            let ordered = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let mut tasks = Vec::new();
            for c in 0..2u32 {
                let client = client(dir.path(), Duration::from_secs(10));
                let (ordered, stop) = (Arc::clone(&ordered), Arc::clone(&stop));
                tasks.push(tokio::spawn(async move {
                    let mut r = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        let payload = format!("client {c} request {r}").into_bytes();
                        if client.submit(payload).await.is_ok() {
                            ordered.fetch_add(1, Ordering::Relaxed);
                        }
                        r += 1;
                    }
                }));
            }
            let mut rss_max = [0u64; 3];
            let mut data_max = [0u64; 3];
            let flood_end = started + Duration::from_secs(FLOOD_S);
            let ordered_before = ordered.load(Ordering::Relaxed);
            while Instant::now() < flood_end {
                for (k, i) in honest.iter().enumerate() {
                    let rss = pids[*i as usize].and_then(rss_kib).unwrap_or(0) / 1024;
                    let data = dir_bytes(&data_dirs[k]) / (1024 * 1024);
                    rss_max[k] = rss_max[k].max(rss);
                    data_max[k] = data_max[k].max(data);
                    // Stop at once when a bound is broken (the disk would fill otherwise).
                    assert!(rss <= RSS_MAX_MIB, "replica {i}: resident memory {rss} MiB > {RSS_MAX_MIB} MiB");
                    assert!(data <= DATA_MAX_MIB, "replica {i}: data directory {data} MiB > {DATA_MAX_MIB} MiB");
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let during = ordered.load(Ordering::Relaxed) - ordered_before;
            stop.store(true, Ordering::Relaxed);
            for task in tasks {
                let _ = task.await;
            }
            for (k, i) in honest.iter().enumerate() {
                println!(
                    "replica {i}: resident memory at most {} MiB (bound {RSS_MAX_MIB}), data directory at most {} MiB \
                     (bound {DATA_MAX_MIB})",
                    rss_max[k], data_max[k]
                );
            }
            println!("requests ordered during the flood: {during}");
            assert!(during >= 20, "only {during} requests were ordered during the flood");
            let mut faults = 0;
            for i in honest {
                let status = probe.status(NodeIndex(i)).await.expect("status");
                faults += status.peers.iter().find(|p| p.index == 3).map_or(0, |p| p.faults);
            }
            assert!(faults > 0, "no honest replica recorded a fault of the flooding one");
            let status = probe.status(NodeIndex(0)).await.expect("status");
            wait_converged(&probe, &honest, status.next_epoch, UP).await;
            assert_logs_agree(&logs(&probe, &honest).await);
        },
        Duration::from_secs(240),
    );
    local.stop_all(Duration::from_secs(10));
}
