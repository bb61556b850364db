//! `replica`: run a Fides replica, ask one for its status, or run a local cluster.

#![forbid(unsafe_code)]

mod client_cli;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use fides_client_sdk::{Client, ClientOptions};
use fides_replica::command::{main_with, RunArgs};
use fides_replica::launcher::{deal_if_missing, LocalCluster, ReplicaOptions};
use fides_types::NodeIndex;

/// A replica of a Fides cluster.
#[derive(Parser)]
#[command(name = "replica", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a replica until SIGTERM or Ctrl-C.
    Run(RunArgs),
    /// Print the status of the replicas of a cluster (or of one), for a person.
    Status {
        /// The cluster's public file.
        #[arg(long)]
        cluster: PathBuf,
        /// Only this replica.
        #[arg(long)]
        replica: Option<u32>,
    },
    /// Order requests and print where each was ordered, one line each (for scripts and tests).
    Submit(client_cli::SubmitArgs),
    /// Print one replica's delivered batches and their requests, one line each.
    Log(client_cli::LogArgs),
    /// Run a local cluster on 127.0.0.1 (dealing it first if DIR has no cluster file), order
    /// requests from clients, and show it working until Ctrl-C.
    Cluster {
        /// The cluster directory.
        #[arg(long, default_value = "cluster-configs/local-4")]
        dir: PathBuf,
        /// Replicas, if it must be dealt.
        #[arg(short = 'n', default_value_t = 4)]
        n: u32,
        /// Byzantine replicas tolerated, if it must be dealt.
        #[arg(short = 't', default_value_t = 1)]
        t: u32,
        /// Remove every replica's data before starting.
        #[arg(long)]
        fresh: bool,
        /// Clients ordering requests once the cluster is up (0: none).
        #[arg(long, default_value_t = 3)]
        clients: u32,
        /// Requests per client.
        #[arg(long, default_value_t = 10)]
        requests: u32,
        /// Stop after this many seconds instead of waiting for Ctrl-C.
        #[arg(long)]
        seconds: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = matches!(cli.command, Command::Run(RunArgs { log_json: true, .. }));
    main_with("replica", json, dispatch(cli))
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => args.run().await,
        Command::Status { cluster, replica } => status(&cluster, replica).await,
        Command::Submit(args) => client_cli::submit(args).await,
        Command::Log(args) => client_cli::log(args).await,
        Command::Cluster { dir, n, t, fresh, clients, requests, seconds } => {
            cluster(dir, n, t, fresh, clients, requests, seconds).await
        }
    }
}

async fn status(cluster: &std::path::Path, only: Option<u32>) -> anyhow::Result<()> {
    let options = ClientOptions { attempt_timeout: Duration::from_secs(3), ..ClientOptions::default() };
    let client = Client::connect(cluster, options)?;
    for i in 0..client.n() {
        if only.is_some_and(|o| o != i) {
            continue;
        }
        match client.status(NodeIndex(i)).await {
            Ok(s) => {
                println!(
                    "replica {i}: epoch {} · {} requests delivered · queue {} · log {} · checkpoint {} · up {} s{}",
                    s.next_epoch,
                    s.delivered_requests,
                    s.queue_len,
                    short_hex(&s.log_digest),
                    s.checkpoint_epoch.map_or("none".to_string(), |e| format!("after epoch {e}")),
                    s.uptime_s,
                    if s.joining { " · JOINING (silent until it knows where the others are)" } else { "" },
                );
                let peers: Vec<String> = s
                    .peers
                    .iter()
                    .filter(|p| p.index != i)
                    .map(|p| {
                        format!(
                            "{}:{}{}",
                            p.index,
                            if p.connected { "up" } else { "DOWN" },
                            if p.faults > 0 { format!(" ({} faults)", p.faults) } else { String::new() }
                        )
                    })
                    .collect();
                println!("  peers {} · log has {} events", peers.join(" "), s.wal_events);
            }
            Err(error) => println!("replica {i}: unreachable ({error})"),
        }
    }
    Ok(())
}

fn short_hex(bytes: &[u8]) -> String {
    bytes.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

async fn cluster(
    dir: PathBuf,
    n: u32,
    t: u32,
    fresh: bool,
    clients: u32,
    requests: u32,
    seconds: Option<u64>,
) -> anyhow::Result<()> {
    if deal_if_missing(&dir, n, t, 7100)? {
        println!("== dealt a new cluster of {n} replicas (t = {t}) into {}", dir.display());
    }
    let binary = std::env::current_exe().context("finding the replica executable")?;
    let options = ReplicaOptions { metrics_port_first: Some(7300), extra_args: Vec::new() };
    let mut local = LocalCluster::new(&dir, &binary, options)?;
    let n = local.cluster().quorum().n();
    if fresh {
        for i in 0..n {
            local.wipe(i)?;
        }
    }
    local.start_all()?;
    println!("== started {n} replicas; logs in {}/logs, metrics at http://127.0.0.1:7300+i/metrics", dir.display());
    let result = exercise(&mut local, clients, requests, seconds).await;
    println!("== stopping every replica");
    local.stop_all(Duration::from_secs(10));
    println!("== all stopped");
    result
}

async fn exercise(local: &mut LocalCluster, clients: u32, requests: u32, seconds: Option<u64>) -> anyhow::Result<()> {
    let cluster_file = local.dir().join(fides_dealer::CLUSTER_FILE_NAME);
    let client = Client::connect(&cluster_file, ClientOptions::default())?;
    let n = client.n();
    // Wait until every replica answers.
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..n {
        while client.status(NodeIndex(i)).await.is_err() {
            if Instant::now() > deadline || !local.is_running(i) {
                anyhow::bail!("replica {i} did not come up; see {}", local.log_file(i).display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    println!("== every replica answers; ordering {requests} requests from each of {clients} clients");
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = Client::connect(&cluster_file, ClientOptions::default())?;
        tasks.push(tokio::spawn(async move {
            let mut lines = Vec::new();
            for r in 0..requests {
                let payload = format!("client {c} request {r}").into_bytes();
                // Half through one replica at a time, half through 2t + 1 at once.
                let answer =
                    if r % 2 == 0 { client.submit(payload).await } else { client.submit_quorum(payload).await };
                match answer {
                    Ok(o) => lines.push(format!(
                        "client {c} request {r}: ordered in epoch {} at position {}, agreed time {} ms, log {}",
                        o.epoch,
                        o.index,
                        o.time_ms,
                        short_hex(&o.log_digest)
                    )),
                    Err(error) => lines.push(format!("client {c} request {r}: FAILED: {error}")),
                }
            }
            lines
        }));
    }
    for task in tasks {
        for line in task.await.context("a client task failed")? {
            println!("{line}");
        }
    }
    let stop = seconds.map(|s| Instant::now() + Duration::from_secs(s));
    println!(
        "== the cluster keeps running; status every 5 s{}",
        if stop.is_some() { "" } else { " (Ctrl-C stops it)" }
    );
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("watching SIGTERM")?;
    loop {
        for i in 0..n {
            match client.status(NodeIndex(i)).await {
                Ok(s) => println!(
                    "replica {i}: epoch {}, {} requests delivered, log {}",
                    s.next_epoch,
                    s.delivered_requests,
                    short_hex(&s.log_digest)
                ),
                Err(_) => println!("replica {i}: unreachable"),
            }
        }
        let pause = tokio::time::sleep(Duration::from_secs(5));
        tokio::select! {
            _ = pause => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
        }
        if stop.is_some_and(|s| Instant::now() >= s) {
            return Ok(());
        }
    }
}
