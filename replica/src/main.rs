//! `replica`: run a Fides replica, or a local cluster of them. The clients of a cluster are in
//! the client SDK's binaries (`fides status`, `fides submit`, `fides log`, `bistro`, `bsubmit`).

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use fides_api::proto::ordering_client::OrderingClient;
use fides_api::proto::{StatusReply, StatusRequest};
use fides_cli::Logging;
use fides_dealer::ProtocolParameters;
use fides_replica::command::RunArgs;
use fides_replica::launcher::{deal_if_missing_with_rsa, LocalCluster, ReplicaOptions};
use tonic::transport::Channel;

/// A replica of a Fides cluster.
#[derive(Parser)]
#[command(name = "replica", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The `cluster` subcommand's settings.
#[derive(clap::Args)]
struct ClusterArgs {
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
    /// The size of the certification authority's threshold RSA key, if it must be dealt
    /// (0: no key, and no certification authority).
    #[arg(long, default_value_t = fides_dealer::RSA_BITS_DEFAULT)]
    rsa_bits: u64,
}

// Parsed once per process: the size of the `run` settings does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run a replica until SIGTERM or Ctrl-C.
    Run(RunArgs),
    /// Run a local cluster on 127.0.0.1 (dealing it first if DIR has no cluster file), order
    /// requests from clients (`fides submit`, which must be next to this program), and show it
    /// working until Ctrl-C.
    Cluster(ClusterArgs),
}

fn main() -> ExitCode {
    let cli = match fides_cli::parse::<Cli>("replica") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let logging = match &cli.command {
        Command::Run(args) => args.logging(),
        Command::Cluster(_) => Logging::Text(fides_cli::SERVER_LOG),
    };
    fides_cli::main_with("replica", logging, dispatch(cli))
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => args.run().await,
        Command::Cluster(args) => cluster(args).await,
    }
}

fn short_hex(bytes: &[u8]) -> String {
    bytes.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

async fn cluster(args: ClusterArgs) -> anyhow::Result<()> {
    let ClusterArgs { dir, n, t, fresh, clients, requests, seconds, rsa_bits } = args;
    // Found before anything starts, so that a missing client fails at once.
    let client = if clients > 0 { Some(client_program()?) } else { None };
    let rsa_bits = (rsa_bits > 0).then_some(rsa_bits);
    if deal_if_missing_with_rsa(&dir, n, t, 7100, ProtocolParameters::DEFAULT, rsa_bits)? {
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
    let result = exercise(&mut local, client.as_deref(), clients, requests, seconds).await;
    println!("== stopping every replica");
    local.stop_all(Duration::from_secs(10));
    println!("== all stopped");
    result
}

async fn exercise(
    local: &mut LocalCluster,
    client: Option<&Path>,
    clients: u32,
    requests: u32,
    seconds: Option<u64>,
) -> anyhow::Result<()> {
    let probes = status_probes(local)?;
    let n = probes.len() as u32;
    // Wait until every replica answers.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, probe) in (0..n).zip(&probes) {
        while status(probe).await.is_err() {
            if Instant::now() > deadline || !local.is_running(i) {
                anyhow::bail!("replica {i} did not come up; see {}", local.log_file(i).display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    match client {
        Some(program) => {
            println!("== every replica answers; ordering {requests} requests from each of {clients} clients");
            order(program, &local.dir().join(fides_dealer::CLUSTER_FILE_NAME), clients, requests).await?;
        }
        None => println!("== every replica answers"),
    }
    let stop = seconds.map(|s| Instant::now() + Duration::from_secs(s));
    println!(
        "== the cluster keeps running; status every 5 s{}",
        if stop.is_some() { "" } else { " (Ctrl-C stops it)" }
    );
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("watching SIGTERM")?;
    loop {
        for (i, probe) in probes.iter().enumerate() {
            match status(probe).await {
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

/// A `Status` client of each replica (a probe, not a client of the services: those are the
/// client SDK's).
fn status_probes(local: &LocalCluster) -> anyhow::Result<Vec<OrderingClient<Channel>>> {
    let mut probes = Vec::new();
    for info in local.cluster().replicas() {
        let address = info.client_address.to_string();
        let channel = fides_api::lazy_channel(&address)
            .map_err(|reason| anyhow::anyhow!("replica {}: address {address:?}: {reason}", info.index.0))?;
        probes.push(OrderingClient::new(channel));
    }
    Ok(probes)
}

/// One replica's status, within 3 s.
async fn status(probe: &OrderingClient<Channel>) -> anyhow::Result<StatusReply> {
    let mut probe = probe.clone();
    let call = probe.status(StatusRequest {});
    Ok(tokio::time::timeout(Duration::from_secs(3), call).await.context("no answer within 3 s")??.into_inner())
}

/// The client program `fides`, next to this one.
fn client_program() -> anyhow::Result<PathBuf> {
    let program = std::env::current_exe().context("finding the replica executable")?.with_file_name("fides");
    if !program.exists() {
        anyhow::bail!(
            "the client {} is missing (build it with `cargo build --release -p fides-client-sdk`), or pass --clients 0",
            program.display()
        );
    }
    Ok(program)
}

/// Order `requests` requests from each of `clients` clients at once, each a `fides submit`
/// process (`program`): half through one replica at a time, half through 2t + 1 at once. Prints
/// what each printed.
async fn order(program: &Path, cluster_file: &Path, clients: u32, requests: u32) -> anyhow::Result<()> {
    let runs = (0..clients).map(|c| {
        let mut command = tokio::process::Command::new(program);
        command.arg("submit").arg("--cluster").arg(cluster_file);
        command.args(["--count", &requests.to_string(), "--prefix", &format!("client {c} request")]);
        if c % 2 == 1 {
            command.arg("--quorum");
        }
        command.kill_on_drop(true).output()
    });
    let outputs = futures::future::join_all(runs).await;
    for (c, output) in outputs.into_iter().enumerate() {
        let output = output.with_context(|| format!("running {}", program.display()))?;
        for line in
            String::from_utf8_lossy(&output.stdout).lines().chain(String::from_utf8_lossy(&output.stderr).lines())
        {
            println!("client {c}: {line}");
        }
    }
    Ok(())
}
