//! Real replica processes on 127.0.0.1: ordering, kill -9 and restart, wiped data.
//!
//! Each test deals its own cluster into a temporary directory on free ports, bounds its run time,
//! and stops (or kills) every process it started when it ends, passing or not.

mod common;

use std::time::Duration;

use common::*;
use fides_client_sdk::Ordered;
use fides_types::NodeIndex;
use rand::{Rng, SeedableRng};

const UP: Duration = Duration::from_secs(60);
const RESTART_UNDER_LOAD: Duration = Duration::from_secs(240);

async fn start(local: &mut fides_replica::launcher::LocalCluster, client: &fides_client_sdk::Client) {
    local.start_all().expect("start");
    for i in 0..client.n() {
        wait_up(client, local, i, UP).await;
    }
}

/// Order `count` requests through 2t + 1 replicas, one after the other, keeping the answers.
async fn order(probe: &fides_client_sdk::Client, prefix: &str, count: u32, acknowledged: &mut Vec<(Ordered, Vec<u8>)>) {
    for r in 0..count {
        let payload = format!("{prefix} {r}").into_bytes();
        acknowledged.push((probe.submit_quorum(payload.clone()).await.expect("ordered"), payload));
    }
}

#[test]
fn four_replicas_order_requests_from_several_clients_into_identical_logs() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().expect("temporary directory");
    let _logs = LogsOnFailure::new(dir.path(), 4);
    let mut local = cluster(dir.path(), 4, 1, &[]);
    runtime_test(
        async {
            let probe = client(dir.path(), Duration::from_secs(10));
            start(&mut local, &probe).await;
            let mut tasks = Vec::new();
            for c in 0..3u32 {
                let client = client(dir.path(), Duration::from_secs(10));
                tasks.push(tokio::spawn(async move {
                    let mut acknowledged = Vec::new();
                    for r in 0..20u32 {
                        let payload = format!("client {c} request {r}").into_bytes();
                        let ordered = if r % 2 == 0 {
                            client.submit(payload.clone()).await
                        } else {
                            client.submit_quorum(payload.clone()).await
                        };
                        acknowledged.push((ordered.expect("ordered"), payload));
                    }
                    acknowledged
                }));
            }
            let mut acknowledged: Vec<(Ordered, Vec<u8>)> = Vec::new();
            for task in tasks {
                acknowledged.extend(task.await.expect("client task"));
            }
            assert_eq!(acknowledged.len(), 60);
            let max_epoch = acknowledged.iter().map(|(o, _)| o.epoch).max().unwrap_or(0);
            wait_converged(&probe, &[0, 1, 2, 3], max_epoch + 1, UP).await;
            let logs = logs(&probe, &[0, 1, 2, 3]).await;
            assert_logs_agree(&logs);
            for (i, log) in logs.iter().enumerate() {
                assert_eq!(log.keys().next(), Some(&0), "replica {i} holds its log from epoch 0");
            }
            assert_acknowledged_present(&logs, &acknowledged);
            let total: usize = logs[0].values().map(|b| b.requests.len()).sum();
            assert_eq!(total, 60, "every request is ordered exactly once");
        },
        Duration::from_secs(240),
    );
    local.stop_all(Duration::from_secs(10));
}

#[test]
fn a_replica_killed_with_sigkill_catches_up_after_restart() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().expect("temporary directory");
    let _logs = LogsOnFailure::new(dir.path(), 4);
    let mut local = cluster_with(dir.path(), 4, 1, checkpoint_every(4), &[]);
    runtime_test(
        async {
            let probe = client(dir.path(), Duration::from_secs(5));
            start(&mut local, &probe).await;
            let mut acknowledged = Vec::new();
            order(&probe, "before", 10, &mut acknowledged).await;
            local.kill(3);
            // The three others go on without it.
            order(&probe, "while down", 20, &mut acknowledged).await;
            local.start(3).expect("restart");
            wait_up(&probe, &mut local, 3, UP).await;
            order(&probe, "after", 5, &mut acknowledged).await;
            let max_epoch = acknowledged.iter().map(|(o, _)| o.epoch).max().unwrap_or(0);
            wait_converged(&probe, &[0, 1, 2, 3], max_epoch + 1, UP).await;
            let logs = logs(&probe, &[0, 1, 2, 3]).await;
            assert_logs_agree(&logs);
            assert_acknowledged_present(&logs, &acknowledged);
            assert_no_equivocation(&probe, &[0, 1, 2, 3]).await;
        },
        Duration::from_secs(240),
    );
    local.stop_all(Duration::from_secs(10));
}

#[test]
fn twenty_sigkills_at_random_moments_under_load_lose_no_acknowledged_request() {
    let seed: u64 = std::env::var("FIDES_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("kill schedule seed {seed} (FIDES_KILL_SEED={seed} repeats the schedule; process timing differs)");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().expect("temporary directory");
    let _logs = LogsOnFailure::new(dir.path(), 4);
    let mut local = cluster_with(dir.path(), 4, 1, checkpoint_every(8), &[]);
    runtime_test(
        async {
            let probe = client(dir.path(), Duration::from_secs(5));
            start(&mut local, &probe).await;
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let mut load = Vec::new();
            for c in 0..3u32 {
                let client = client(dir.path(), Duration::from_secs(3));
                let stop = std::sync::Arc::clone(&stop);
                load.push(tokio::spawn(async move {
                    let mut acknowledged = Vec::new();
                    let mut r = 0u32;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let payload = format!("client {c} request {r}").into_bytes();
                        r += 1;
                        // One replica at a time, the next one after a timeout: the kills hit it.
                        if let Ok(ordered) = client.submit(payload.clone()).await {
                            acknowledged.push((ordered, payload));
                        }
                    }
                    acknowledged
                }));
            }
            for round in 0..20 {
                let victim = rng.gen_range(0..4u32);
                tokio::time::sleep(Duration::from_millis(rng.gen_range(200..1200))).await;
                local.kill(victim);
                println!("round {round}: killed replica {victim}");
                tokio::time::sleep(Duration::from_millis(rng.gen_range(100..800))).await;
                local.start(victim).expect("restart");
                // Under load that never pauses, a replica's log is not compacted, and a restart
                // replays it all: this takes longer the longer the run (docs/replica.md).
                wait_up(&probe, &mut local, victim, RESTART_UNDER_LOAD).await;
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let mut acknowledged = Vec::new();
            for task in load {
                acknowledged.extend(task.await.expect("load task"));
            }
            println!("{} requests acknowledged under the kills", acknowledged.len());
            assert!(!acknowledged.is_empty(), "no request was ordered under the kills");
            // One more request after the storm, then everyone must agree.
            let last = probe.submit_quorum(b"after the storm".to_vec()).await.expect("ordered after the kills");
            wait_converged(&probe, &[0, 1, 2, 3], last.epoch + 1, Duration::from_secs(120)).await;
            let logs = logs(&probe, &[0, 1, 2, 3]).await;
            assert_logs_agree(&logs);
            assert_acknowledged_present(&logs, &acknowledged);
            assert_no_equivocation(&probe, &[0, 1, 2, 3]).await;
        },
        Duration::from_secs(900),
    );
    local.stop_all(Duration::from_secs(10));
}

#[test]
fn a_replica_whose_data_was_wiped_rejoins_and_catches_up() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().expect("temporary directory");
    let _logs = LogsOnFailure::new(dir.path(), 4);
    let mut local = cluster_with(dir.path(), 4, 1, checkpoint_every(4), &[]);
    runtime_test(
        async {
            let probe = client(dir.path(), Duration::from_secs(5));
            start(&mut local, &probe).await;
            let mut acknowledged = Vec::new();
            order(&probe, "before", 12, &mut acknowledged).await;
            local.stop(2, Duration::from_secs(10));
            local.wipe(2).expect("wipe");
            order(&probe, "while wiped", 12, &mut acknowledged).await;
            local.start(2).expect("restart");
            wait_up(&probe, &mut local, 2, UP).await;
            order(&probe, "after", 12, &mut acknowledged).await;
            let max_epoch = acknowledged.iter().map(|(o, _)| o.epoch).max().unwrap_or(0);
            wait_agreeing(&probe, &[0, 1, 2, 3], max_epoch + 1, UP, false).await;
            let status = probe.status(NodeIndex(2)).await.expect("status");
            assert!(!status.joining, "the wiped replica has decided from which epoch it votes");
            // It took the services' state from a peer's snapshot, checked against the state leaf
            // of a certified epoch, instead of replaying the log from the genesis; it fetched
            // only the skipped batches after that epoch.
            let deadline = std::time::Instant::now() + UP;
            let snapshot = loop {
                if let Some(epoch) = snapshot_epoch(&local.log_file(2)) {
                    break epoch;
                }
                assert!(std::time::Instant::now() < deadline, "the wiped replica installed no snapshot within {UP:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            // Its own answers verify alone: it certifies the epochs after the snapshot with the
            // others (its state leaf is theirs).
            let alone = only_first(dir.path());
            let ordered = alone.submit_with_id(2, b"answered by the wiped replica".to_vec()).await;
            let ordered = ordered.expect("the wiped replica answers with a certificate that verifies");
            acknowledged.push((ordered, b"answered by the wiped replica".to_vec()));
            let first = probe.status(NodeIndex(2)).await.expect("status").log_first_epoch;
            assert!(
                0 < first && first <= snapshot + 1,
                "the wiped replica fetched no batch before the snapshot: its log starts at {first}, not in 1..={}",
                snapshot + 1
            );
            let all = logs(&probe, &[0, 1, 2, 3]).await;
            assert_logs_agree(&all);
            let complete: Vec<_> = [0, 1, 3].iter().map(|&i| all[i].clone()).collect();
            assert_acknowledged_present(&complete, &acknowledged);
            assert_no_equivocation(&probe, &[0, 1, 2, 3]).await;
        },
        Duration::from_secs(240),
    );
    local.stop_all(Duration::from_secs(10));
}

/// The epoch of the last snapshot of the services' state a replica installed, from its log.
fn snapshot_epoch(log: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    let marker = "installed the services' state from a snapshot of epoch ";
    let line = text.lines().rev().find(|l| l.contains(marker))?;
    let at = line.find(marker)? + marker.len();
    line[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// A client whose request `id` goes to replica `id % 4` and nowhere else.
fn only_first(dir: &std::path::Path) -> fides_client_sdk::Client {
    let options = fides_client_sdk::ClientOptions {
        attempt_timeout: Duration::from_secs(20),
        attempts_max: 1,
        client: Some(0),
        ..fides_client_sdk::ClientOptions::default()
    };
    fides_client_sdk::Client::connect(&dir.join("cluster.toml"), options).expect("client")
}

/// Run `replica run` for replica 0 of the cluster in `dir` with `extra` arguments; its exit status
/// and standard error, or `None` if it was still running after `within` (then it is stopped).
fn run_replica_0(
    dir: &std::path::Path,
    extra: &[&str],
    within: Duration,
) -> Option<(std::process::ExitStatus, String)> {
    use std::io::Read;
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let (init, cluster, data) = (path("replica-0.toml"), path("cluster.toml"), path("data-0"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_replica"))
        .args(["run", "--init", &init, "--cluster", &cluster, "--data", &data, "--exit-on-stdin-close"])
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the replica binary starts");
    let deadline = std::time::Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the replica") {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            drop(child.stdin.take());
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    status.map(|status| (status, stderr))
}

#[test]
fn a_replica_given_a_protocol_parameter_that_contradicts_its_cluster_file_refuses_to_start() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().expect("temporary directory");
    let _dealt = cluster_with(dir.path(), 4, 1, checkpoint_every(8), &[]);
    let settings = dir.path().join("run.toml");
    std::fs::write(&settings, "checkpoint_interval = 5\n").expect("settings file");
    let settings = settings.to_string_lossy().into_owned();
    let cases: [(&[&str], &str); 2] = [
        (&["--batch-size", "7"], "batch_size = 7 (given to this replica) contradicts batch_size = 1000"),
        (
            &["--config", &settings],
            "checkpoint_interval = 5 (given to this replica) contradicts checkpoint_interval = 8",
        ),
    ];
    for (extra, needle) in cases {
        let Some((status, stderr)) = run_replica_0(dir.path(), extra, Duration::from_secs(30)) else {
            panic!("the replica ran with {extra:?} against its cluster file");
        };
        assert!(!status.success(), "the replica exited 0 with {extra:?}: {stderr}");
        assert!(stderr.contains(needle), "no {needle:?} in: {stderr}");
    }
}
