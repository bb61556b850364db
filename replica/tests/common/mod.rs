//! Shared by the tests that run real replica processes on 127.0.0.1.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fides_client_sdk::proto::Batch;
use fides_client_sdk::{Client, ClientOptions, Ordered};
use fides_dealer::ProtocolParameters;
use fides_replica::launcher::{deal_if_missing_with, LocalCluster, ReplicaOptions};
use fides_types::NodeIndex;

/// The binary `name` of another package of the workspace (the client's `fides`, `bistro`), built
/// beside the test's own binaries by `cargo test --workspace` (or `cargo build`).
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe.parent().and_then(Path::parent).expect("target directory");
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing: run the tests with `cargo test --workspace`", path.display());
    path
}

/// Tests that start processes run one at a time: a cluster of processes per test, all at once,
/// would share two cores between a dozen replicas.
pub static PROCESSES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Take the process lock (a test that failed while holding it does not poison the others).
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    PROCESSES.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Prints the end of every replica's log if the test fails while it is alive.
pub struct LogsOnFailure {
    dir: std::path::PathBuf,
    n: u32,
}

impl LogsOnFailure {
    /// For the cluster in `dir`.
    pub fn new(dir: &Path, n: u32) -> Self {
        LogsOnFailure { dir: dir.to_path_buf(), n }
    }
}

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for i in 0..self.n {
            let path = self.dir.join("logs").join(format!("replica-{i}.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("---- last lines of replica {i}'s log ----");
            for line in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{line}");
            }
        }
    }
}

/// A port range of `2 * n + 100` ports (peer ports at `first..first+n`, client ports at
/// `first+100..`) where every port we need is free now.
pub fn free_port_base(n: u32) -> u16 {
    for _ in 0..200 {
        let first: u16 = rand::random::<u16>() % 30_000 + 20_000;
        let ports = (0..n).flat_map(|i| [first + i as u16, first + 100 + i as u16]);
        let free = ports.into_iter().all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return first;
        }
    }
    panic!("no free port range found on 127.0.0.1");
}

/// A dealt cluster of `n` replicas in `dir` with the default protocol parameters, not started.
pub fn cluster(dir: &Path, n: u32, t: u32, extra_args: &[&str]) -> LocalCluster {
    cluster_with(dir, n, t, ProtocolParameters::DEFAULT, extra_args)
}

/// The default protocol parameters but a checkpoint every `interval` epochs, so that several
/// become stable in a short run.
pub fn checkpoint_every(interval: u64) -> ProtocolParameters {
    ProtocolParameters { checkpoint_interval: interval, ..ProtocolParameters::DEFAULT }
}

/// A dealt cluster of `n` replicas in `dir` with these protocol parameters, not started.
pub fn cluster_with(dir: &Path, n: u32, t: u32, protocol: ProtocolParameters, extra_args: &[&str]) -> LocalCluster {
    let base = free_port_base(n);
    deal_if_missing_with(dir, n, t, base, protocol).expect("dealing the cluster");
    let options =
        ReplicaOptions { metrics_port_first: None, extra_args: extra_args.iter().map(|s| s.to_string()).collect() };
    LocalCluster::new(dir, Path::new(env!("CARGO_BIN_EXE_replica")), options).expect("launcher")
}

/// A client of the cluster in `dir`.
pub fn client(dir: &Path, attempt_timeout: Duration) -> Client {
    let options = ClientOptions { attempt_timeout, attempts_max: 40, ..ClientOptions::default() };
    Client::connect(&dir.join("cluster.toml"), options).expect("client")
}

/// Wait until replica `i` answers its status call.
pub async fn wait_up(client: &Client, local: &mut LocalCluster, i: u32, within: Duration) {
    let deadline = Instant::now() + within;
    while client.status(NodeIndex(i)).await.is_err() {
        assert!(local.is_running(i), "replica {i} exited; see {}", local.log_file(i).display());
        assert!(Instant::now() < deadline, "replica {i} did not come up within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each replica's whole log, by epoch.
pub async fn logs(client: &Client, replicas: &[u32]) -> Vec<BTreeMap<u64, Batch>> {
    let mut out = Vec::new();
    for &i in replicas {
        let batches = client.log(NodeIndex(i), 0).await.unwrap_or_else(|e| panic!("log of replica {i}: {e}"));
        out.push(batches.into_iter().map(|b| (b.epoch, b)).collect());
    }
    out
}

/// Every two logs agree on every epoch both hold (requests, time and log digest), and each log
/// has no gaps.
pub fn assert_logs_agree(logs: &[BTreeMap<u64, Batch>]) {
    for (i, log) in logs.iter().enumerate() {
        if let (Some(first), Some(last)) = (log.keys().next(), log.keys().last()) {
            assert_eq!((last - first + 1) as usize, log.len(), "log {i} has gaps");
        }
    }
    for (i, a) in logs.iter().enumerate() {
        for (j, b) in logs.iter().enumerate().skip(i + 1) {
            for (epoch, batch) in a {
                if let Some(other) = b.get(epoch) {
                    assert_eq!(batch, other, "replicas {i} and {j} delivered different batches in epoch {epoch}");
                }
            }
        }
    }
}

/// Every acknowledged request is in every log that holds its epoch, where the answer said.
pub fn assert_acknowledged_present(logs: &[BTreeMap<u64, Batch>], acknowledged: &[(Ordered, Vec<u8>)]) {
    for (ordered, payload) in acknowledged {
        let mut held = 0;
        for (i, log) in logs.iter().enumerate() {
            if let Some(batch) = log.get(&ordered.epoch) {
                held += 1;
                let request = batch.requests.get(ordered.index as usize).unwrap_or_else(|| {
                    panic!("replica {i}: epoch {} has no position {}", ordered.epoch, ordered.index)
                });
                assert_eq!(
                    (request.client, request.id, &request.payload),
                    (ordered.client, ordered.id, payload),
                    "replica {i}: epoch {} position {} is not the acknowledged request",
                    ordered.epoch,
                    ordered.index
                );
                assert_eq!(batch.log_digest, ordered.log_digest, "replica {i}: log digest of epoch {}", ordered.epoch);
            }
        }
        assert_eq!(held, logs.len(), "acknowledged request {:?} is not in every log", (ordered.client, ordered.id));
    }
}

/// Wait until the given replicas have all delivered the same number of epochs and the same log
/// digest (and at least `min_epoch`).
pub async fn wait_converged(client: &Client, replicas: &[u32], min_epoch: u64, within: Duration) {
    wait_agreeing(client, replicas, min_epoch, within, true).await
}

/// [`wait_converged`], where with `complete_logs` false a log may start after epoch 0 (a replica
/// that took the services' state from a snapshot fetches only the skipped batches after it).
pub async fn wait_agreeing(client: &Client, replicas: &[u32], min_epoch: u64, within: Duration, complete_logs: bool) {
    let deadline = Instant::now() + within;
    loop {
        let mut states = Vec::new();
        let mut firsts = Vec::new();
        for &i in replicas {
            if let Ok(s) = client.status(NodeIndex(i)).await {
                states.push((s.next_epoch, s.log_digest));
                firsts.push(s.log_first_epoch);
            }
        }
        // Converged: same epoch and digest everywhere, and every log complete from epoch 0 (a
        // replica that jumped to a checkpoint has fetched what it skipped).
        let complete = states.len() == replicas.len() && (!complete_logs || firsts.iter().all(|f| *f == 0));
        let converged =
            complete && states.windows(2).all(|w| w[0] == w[1]) && states.first().is_some_and(|s| s.0 >= min_epoch);
        if converged {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replicas {replicas:?} did not converge within {within:?}: {states:?}, logs from {firsts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// No replica recorded an equivocation against any other (a restarted or wiped replica that sent
/// something different from what it sent before would show up here).
pub async fn assert_no_equivocation(client: &Client, replicas: &[u32]) {
    for &i in replicas {
        let status = client.status(NodeIndex(i)).await.unwrap_or_else(|e| panic!("status of replica {i}: {e}"));
        for peer in &status.peers {
            assert_eq!(peer.equivocations, 0, "replica {i} saw replica {} equivocate", peer.index);
        }
    }
}

/// Run a test's body on a 2-thread runtime, failing it if it takes longer than `limit`.
pub fn runtime_test(test: impl std::future::Future<Output = ()>, limit: Duration) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        if tokio::time::timeout(limit, test).await.is_err() {
            panic!("the test did not finish within {limit:?}");
        }
    });
}
