//! `fides-bench restart`: how long a replica takes to serve again after kill -9 following a long
//! history under continuous load, and how long a wiped replica takes to rejoin that history.
//!
//! Four replica processes on 127.0.0.1 and a load generator in this process: the clients order
//! `--requests` requests (the history), then, with the load still on, one replica is killed with
//! SIGKILL and started again; the bench prints the events it replayed and the time until it
//! answers and has caught up with where the others were when it was killed. Then the same
//! replica is stopped, its data wiped and started again; the bench prints the time until it has
//! caught up and until its services' state is installed from a peer's snapshot (the history before
//! is neither fetched nor replayed).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fides_client_sdk::{Client, ClientOptions};
use fides_replica::launcher::{deal_if_missing_with, protocol_with_batch_size, LocalCluster, ReplicaOptions};
use fides_types::NodeIndex;

/// Settings of the run.
#[derive(Clone, Debug, clap::Args)]
pub struct RestartArgs {
    /// Replicas.
    #[arg(short = 'n', default_value_t = 4)]
    pub n: u32,
    /// Requests ordered before the kill (the history).
    #[arg(long, default_value_t = 1_000_000)]
    pub requests: u64,
    /// Requests in flight at once (over all client tasks).
    #[arg(long, default_value_t = 2048)]
    pub in_flight: u32,
    /// Payload bytes per request.
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// Requests considered per epoch, over all proposers.
    #[arg(long, default_value_t = 8000)]
    pub batch_size: u32,
    /// Give up waiting for a replica after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_s: u64,
    /// Where to put the cluster (default: a new temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

pub async fn run(args: RestartArgs) -> anyhow::Result<()> {
    let dir = crate::cluster_dir(args.dir.as_ref(), "restart")?;
    let t = (args.n - 1) / 3;
    deal_if_missing_with(&dir, args.n, t, 7700, protocol_with_batch_size(args.n, args.batch_size))?;
    let binary = std::env::current_exe()?;
    let options = ReplicaOptions { metrics_port_first: None, extra_args: Vec::new() };
    let mut local = LocalCluster::new(&dir, &binary, options)?;
    local.start_all()?;
    let result = measure(&mut local, &args).await;
    local.stop_all(Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure(local: &mut LocalCluster, args: &RestartArgs) -> anyhow::Result<()> {
    let cluster_file = local.dir().join(fides_dealer::CLUSTER_FILE_NAME);
    let probe = Client::connect(&cluster_file, ClientOptions::default())?;
    let within = Duration::from_secs(args.timeout_s);
    for i in 0..args.n {
        wait_status(&probe, i, within).await?;
    }
    let victim = args.n - 1;
    println!(
        "bench restart: {} replica processes on 127.0.0.1 (t = {}), batch size {}, {} requests in flight of {} bytes; \
         replica {victim} is killed after {} requests ordered",
        args.n,
        (args.n - 1) / 3,
        args.batch_size,
        args.in_flight,
        args.size,
        args.requests
    );
    let ordered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = load(&cluster_file, args, &ordered, &stop)?;
    let started = Instant::now();
    let mut reported = 0;
    while ordered.load(Ordering::Relaxed) < args.requests {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let done = ordered.load(Ordering::Relaxed);
        if done >= reported + args.requests / 10 {
            reported = done;
            println!("  {done} requests ordered in {:.0} s", started.elapsed().as_secs_f64());
        }
    }
    let history_s = started.elapsed().as_secs_f64();
    let history = ordered.load(Ordering::Relaxed);
    let at_kill = probe.status(NodeIndex(0)).await?.next_epoch;
    println!("history: {history} requests, {at_kill} epochs, in {history_s:.1} s; load goes on");

    local.kill(victim);
    let killed = Instant::now();
    local.start(victim)?;
    wait_status(&probe, victim, within).await?;
    let answering = killed.elapsed().as_secs_f64();
    wait_epoch(&probe, victim, at_kill, within).await?;
    let caught_up = killed.elapsed().as_secs_f64();
    let replayed = replayed(&local.log_file(victim)).map_or("?".to_string(), |n| n.to_string());
    println!(
        "kill -9 → answering again: {answering:.2} s; → caught up with epoch {at_kill}: {caught_up:.2} s \
         ({replayed} events replayed)"
    );

    local.stop(victim, Duration::from_secs(10));
    local.wipe(victim)?;
    let log_before = std::fs::metadata(local.log_file(victim)).map_or(0, |m| m.len() as usize);
    let target = probe.status(NodeIndex(0)).await?.next_epoch;
    let wiped = Instant::now();
    local.start(victim)?;
    wait_status(&probe, victim, within).await?;
    wait_epoch(&probe, victim, target, within).await?;
    let rejoined = wiped.elapsed().as_secs_f64();
    let snapshot = wait_snapshot(&local.log_file(victim), log_before, within).await?;
    let installed = wiped.elapsed().as_secs_f64();
    let first = probe.status(NodeIndex(victim)).await?.log_first_epoch;
    println!(
        "wiped replica → caught up with epoch {target}: {rejoined:.2} s; → services' state installed from a \
         snapshot of epoch {snapshot}: {installed:.2} s (log held from epoch {first}: the history before is not \
         fetched nor replayed)"
    );
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    println!("requests ordered in all: {}", ordered.load(Ordering::Relaxed));
    Ok(())
}

/// `in_flight` tasks submitting without a pause until `stop`, counting what is ordered.
fn load(
    cluster_file: &Path,
    args: &RestartArgs,
    ordered: &Arc<AtomicU64>,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let tasks_count = args.in_flight.max(1);
    let connections = 16.min(tasks_count);
    let options = ClientOptions { attempt_timeout: Duration::from_secs(20), ..ClientOptions::default() };
    let clients: Vec<Client> =
        (0..connections).map(|_| Client::connect(cluster_file, options.clone())).collect::<Result<_, _>>()?;
    let mut tasks = Vec::new();
    for k in 0..tasks_count {
        let client = clients[(k % connections) as usize].clone();
        let (ordered, stop) = (Arc::clone(ordered), Arc::clone(stop));
        let size = args.size.max(8);
        tasks.push(tokio::spawn(async move {
            let mut payload = vec![0u8; size];
            let mut r = 0u64;
            while !stop.load(Ordering::Relaxed) {
                payload[..8].copy_from_slice(&r.to_le_bytes());
                r += 1;
                if client.submit(payload.clone()).await.is_ok() {
                    ordered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    Ok(tasks)
}

async fn wait_status(probe: &Client, i: u32, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while probe.status(NodeIndex(i)).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "replica {i} did not answer within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn wait_epoch(probe: &Client, i: u32, epoch: u64, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while probe.status(NodeIndex(i)).await.map_or(true, |s| s.next_epoch < epoch) {
        anyhow::ensure!(Instant::now() < deadline, "replica {i} did not reach epoch {epoch} within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The epoch of the snapshot of the services' state a wiped replica installed: its log line after
/// byte `from` of its log file.
async fn wait_snapshot(log_file: &Path, from: usize, within: Duration) -> anyhow::Result<u64> {
    let marker = "installed the services' state from a snapshot of epoch ";
    let deadline = Instant::now() + within;
    loop {
        let text = std::fs::read_to_string(log_file).unwrap_or_default();
        let found = text.get(from..).and_then(|new| {
            let at = new.find(marker)? + marker.len();
            new[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        });
        if let Some(epoch) = found {
            return Ok(epoch);
        }
        anyhow::ensure!(Instant::now() < deadline, "the wiped replica installed no snapshot within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `replayed=N` of the last "replayed the log" line of a replica's log file.
fn replayed(log_file: &Path) -> Option<u64> {
    fides_replica::launcher::replayed_events(&std::fs::read_to_string(log_file).ok()?)
}
