//! `fides-bench e2e`: four replica processes on 127.0.0.1 and a load generator in this process.
//! Prints sustained ordered requests per second and p50/p99 latency for each request size, and
//! the replicas' resident memory.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fides_client_sdk::{Client, ClientOptions};
use fides_replica::launcher::{deal_if_missing_with, protocol_with_batch_size, rss_kib, LocalCluster, ReplicaOptions};
use fides_types::NodeIndex;

/// Settings of the run.
#[derive(Clone, Debug, clap::Args)]
pub struct E2eArgs {
    /// Replicas.
    #[arg(short = 'n', default_value_t = 4)]
    pub n: u32,
    /// Seconds of load per request size (after a warm-up of 2 s).
    #[arg(long, default_value_t = 15)]
    pub seconds: u64,
    /// Requests in flight at once (over all client tasks).
    #[arg(long, default_value_t = 2048)]
    pub in_flight: u32,
    /// Request sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "32,1024")]
    pub sizes: Vec<usize>,
    /// Requests considered per epoch, over all proposers.
    #[arg(long, default_value_t = 8000)]
    pub batch_size: u32,
    /// Where to put the cluster (default: a new temporary directory under target/).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

pub async fn run(args: E2eArgs) -> anyhow::Result<()> {
    let dir = crate::cluster_dir(args.dir.as_ref(), "e2e")?;
    let t = (args.n - 1) / 3;
    deal_if_missing_with(&dir, args.n, t, 7600, protocol_with_batch_size(args.n, args.batch_size))?;
    let binary = std::env::current_exe()?;
    let options = ReplicaOptions {
        metrics_port_first: None,
        extra_args: vec!["--batch-size".into(), args.batch_size.to_string()],
    };
    let mut local = LocalCluster::new(&dir, &binary, options)?;
    local.start_all()?;
    let result = measure(&mut local, &args).await;
    local.stop_all(Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure(local: &mut LocalCluster, args: &E2eArgs) -> anyhow::Result<()> {
    let cluster_file = local.dir().join(fides_dealer::CLUSTER_FILE_NAME);
    let probe = Client::connect(&cluster_file, ClientOptions::default())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..args.n {
        while probe.status(NodeIndex(i)).await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "replica {i} did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    println!(
        "bench e2e: {} replica processes on 127.0.0.1 (t = {}), batch size {}, {} requests in flight, {} s per size",
        args.n,
        (args.n - 1) / 3,
        args.batch_size,
        args.in_flight,
        args.seconds
    );
    println!(
        "{:>8} {:>12} {:>10} {:>10} {:>10} {:>14}",
        "size", "ordered/s", "p50 ms", "p99 ms", "errors", "replica RSS MiB"
    );
    for &size in &args.sizes {
        let (rate, p50, p99, errors) = load(&cluster_file, args, size).await?;
        let rss: Vec<String> = local
            .pids()
            .iter()
            .map(|pid| pid.and_then(rss_kib).map_or("?".to_string(), |k| format!("{}", k / 1024)))
            .collect();
        println!("{:>8} {:>12.0} {:>10.1} {:>10.1} {:>10} {:>14}", size, rate, p50, p99, errors, rss.join("/"));
    }
    Ok(())
}

/// Drive `in_flight` concurrent submissions of `size`-byte payloads; measure after a warm-up.
async fn load(cluster_file: &std::path::Path, args: &E2eArgs, size: usize) -> anyhow::Result<(f64, f64, f64, u64)> {
    let tasks_count = args.in_flight.max(1);
    let connections = 16.min(tasks_count);
    let clients: Vec<Client> = (0..connections)
        .map(|_| {
            Client::connect(
                cluster_file,
                ClientOptions { attempt_timeout: Duration::from_secs(20), ..ClientOptions::default() },
            )
        })
        .collect::<Result<_, _>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for k in 0..tasks_count {
        let client = clients[(k % connections) as usize].clone();
        let stop = Arc::clone(&stop);
        let measuring = Arc::clone(&measuring);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut payload = vec![0u8; size];
            let mut r = 0u64;
            while !stop.load(Ordering::Relaxed) {
                payload[..8.min(size)].copy_from_slice(&r.to_le_bytes()[..8.min(size)]);
                r += 1;
                let started = Instant::now();
                let answer = client.submit(payload.clone()).await;
                if measuring.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    match answer {
                        Ok(_) => latencies.push(started.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
            }
            (latencies, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await?;
        latencies.extend(l);
        errors += e;
    }
    latencies.sort_unstable();
    let quantile = |q: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies[i].as_secs_f64() * 1000.0
    };
    Ok((latencies.len() as f64 / elapsed.as_secs_f64(), quantile(0.5), quantile(0.99), errors))
}
