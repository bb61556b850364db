//! `fides`: a client of a Fides cluster's ordering service on the command line, for people,
//! scripts and tests.
//!
//! ```text
//! fides status --cluster FILE [--replica I]     each replica's state, for a person
//! fides submit --cluster FILE [--count N] …     order requests; one line each
//! fides log --cluster FILE --replica I …        one replica's delivered batches; one line each
//! ```
//!
//! `submit` and `log` print one record a line, `kind key=value …`, so that a program can read them:
//!
//! ```text
//! ordered client=C id=I epoch=E index=X time_ms=T log=HEX
//! failed client=C id=I error=TEXT                      (TEXT runs to the end of the line)
//! status replica=R next_epoch=N log=HEX queue=Q checkpoint=C|none joining=B equivocations=K
//! log replica=R first_epoch=F next_epoch=N
//! batch epoch=E time_ms=T requests=K log=HEX
//! request epoch=E index=X client=C id=I payload=HEX
//! ```

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use fides_cli::Logging;
use fides_client_sdk::proto::{Batch, LogRequest};
use fides_client_sdk::{Client, ClientOptions, Ordered};
use fides_types::NodeIndex;
use futures::stream::{FuturesOrdered, StreamExt};

/// Batches asked for per `Log` call.
const LOG_PAGE: u32 = 512;

/// A client of a Fides cluster.
#[derive(Parser)]
#[command(name = "fides", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    Submit(SubmitArgs),
    /// Print one replica's delivered batches and their requests, one line each.
    Log(LogArgs),
}

fn main() -> ExitCode {
    match fides_cli::parse::<Cli>("fides") {
        Ok(cli) => fides_cli::main_with("fides", Logging::Text("warn"), dispatch(cli)),
        Err(code) => code,
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Status { cluster, replica } => status(&cluster, replica).await,
        Command::Submit(args) => submit(args).await,
        Command::Log(args) => log(args).await,
    }
}

/// `fides submit`: order requests and print where each was ordered.
#[derive(clap::Args)]
struct SubmitArgs {
    /// The cluster's public file.
    #[arg(long)]
    cluster: PathBuf,
    /// Requests to order.
    #[arg(long, default_value_t = 1)]
    count: u64,
    /// Request k (from 0) has the payload "PREFIX k".
    #[arg(long, default_value = "request")]
    prefix: String,
    /// Send each request to 2t + 1 replicas at once and take the answer t + 1 of them give
    /// (otherwise to one replica, then to the next on a failure).
    #[arg(long)]
    quorum: bool,
    /// Seconds one attempt at one replica may take.
    #[arg(long, default_value_t = 10.0)]
    timeout_s: f64,
    /// Attempts per request (with --quorum: per replica asked).
    #[arg(long, default_value_t = 12)]
    attempts: u32,
    /// The client number [default: random]. The same client and ids again name the same requests,
    /// which are never ordered twice.
    #[arg(long)]
    client: Option<u64>,
    /// Request k has the id FIRST_ID + k.
    #[arg(long, default_value_t = 0)]
    first_id: u64,
    /// Send all the requests at once instead of one after another.
    #[arg(long)]
    concurrent: bool,
}

/// `fides log`: print the batches one replica delivered.
#[derive(clap::Args)]
struct LogArgs {
    /// The cluster's public file.
    #[arg(long)]
    cluster: PathBuf,
    /// The replica to ask.
    #[arg(long)]
    replica: u32,
    /// The first epoch wanted (a replica that compacted its log starts later).
    #[arg(long, default_value_t = 0)]
    from_epoch: u64,
    /// Seconds the whole listing may take.
    #[arg(long, default_value_t = 10.0)]
    timeout_s: f64,
}

fn seconds(value: f64, flag: &str) -> anyhow::Result<Duration> {
    match Duration::try_from_secs_f64(value) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        _ => bail!("{flag} must be a positive number of seconds, not {value}"),
    }
}

/// Order the requests; fails if any of them was not ordered.
async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let attempt_timeout = seconds(args.timeout_s, "--timeout-s")?;
    if args.attempts == 0 {
        bail!("--attempts must be at least 1");
    }
    let options =
        ClientOptions { attempt_timeout, attempts_max: args.attempts, client: args.client, ..ClientOptions::default() };
    let client = Client::connect(&args.cluster, options)?;
    let number = client.client_number();
    if args.count > 0 && args.first_id.checked_add(args.count - 1).is_none() {
        bail!("--first-id {} + --count {} overflows the request ids", args.first_id, args.count);
    }
    let one = |k: u64| {
        let client = &client;
        let id = args.first_id + k;
        let payload = format!("{} {k}", args.prefix).into_bytes();
        let quorum = args.quorum;
        async move {
            let result = if quorum {
                client.submit_quorum_with_id(id, payload).await
            } else {
                client.submit_with_id(id, payload).await
            };
            (id, result)
        }
    };
    let mut failed = 0u64;
    let mut report = |id: u64, result: Result<Ordered, fides_client_sdk::ClientError>| match result {
        Ok(o) => println!(
            "ordered client={} id={} epoch={} index={} time_ms={} log={}",
            o.client,
            o.id,
            o.epoch,
            o.index,
            o.time_ms,
            hex::encode(&o.log_digest)
        ),
        Err(error) => {
            failed += 1;
            println!("failed client={number} id={id} error={}", one_line(&error.to_string()));
        }
    };
    if args.concurrent {
        let mut calls: FuturesOrdered<_> = (0..args.count).map(one).collect();
        while let Some((id, result)) = calls.next().await {
            report(id, result);
        }
    } else {
        for k in 0..args.count {
            let (id, result) = one(k).await;
            report(id, result);
        }
    }
    if failed > 0 {
        bail!("{failed} of {} requests were not ordered", args.count);
    }
    Ok(())
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Print replica `args.replica`'s delivered batches.
async fn log(args: LogArgs) -> anyhow::Result<()> {
    let within = seconds(args.timeout_s, "--timeout-s")?;
    let options = ClientOptions { attempt_timeout: within, ..ClientOptions::default() };
    let client = Client::connect(&args.cluster, options)?;
    if args.replica >= client.n() {
        bail!("there is no replica {} in a cluster of {}", args.replica, client.n());
    }
    let asked = async {
        let status = client.status(NodeIndex(args.replica)).await?;
        anyhow::Ok((status, fetch_log(&client, &args).await?))
    };
    let (status, (batches, first_epoch, next_epoch)) = tokio::time::timeout(within, asked)
        .await
        .with_context(|| format!("replica {} did not list its log within {within:?}", args.replica))??;
    println!(
        "status replica={} next_epoch={} log={} queue={} checkpoint={} joining={} equivocations={}",
        args.replica,
        status.next_epoch,
        hex::encode(&status.log_digest),
        status.queue_len,
        status.checkpoint_epoch.map_or("none".to_string(), |e| e.to_string()),
        status.joining,
        status.peers.iter().map(|p| p.equivocations).sum::<u64>()
    );
    println!("log replica={} first_epoch={first_epoch} next_epoch={next_epoch}", args.replica);
    for batch in &batches {
        println!(
            "batch epoch={} time_ms={} requests={} log={}",
            batch.epoch,
            batch.time_ms,
            batch.requests.len(),
            hex::encode(&batch.log_digest)
        );
        for (index, request) in batch.requests.iter().enumerate() {
            println!(
                "request epoch={} index={index} client={} id={} payload={}",
                batch.epoch,
                request.client,
                request.id,
                hex::encode(&request.payload)
            );
        }
    }
    Ok(())
}

/// Every batch from `args.from_epoch` on, page by page, with the first epoch held and the next
/// epoch to deliver.
async fn fetch_log(client: &Client, args: &LogArgs) -> anyhow::Result<(Vec<Batch>, u64, u64)> {
    let mut channel = client.replica(NodeIndex(args.replica)).context("no such replica")?;
    let mut batches: Vec<Batch> = Vec::new();
    let mut from = args.from_epoch;
    loop {
        let reply = channel
            .log(LogRequest { from_epoch: from, max_batches: LOG_PAGE })
            .await
            .with_context(|| format!("replica {}: Log from epoch {from}", args.replica))?
            .into_inner();
        let first_epoch = reply.first_epoch;
        let next_epoch = reply.next_epoch;
        let Some(last) = reply.batches.last().map(|b| b.epoch) else {
            return Ok((batches, first_epoch, next_epoch));
        };
        if batches.last().is_some_and(|b| last <= b.epoch) {
            bail!("replica {}: Log from epoch {from} went back to epoch {last}", args.replica);
        }
        batches.extend(reply.batches);
        from = last.saturating_add(1);
        if from >= next_epoch {
            return Ok((batches, first_epoch, next_epoch));
        }
    }
}

async fn status(cluster: &Path, only: Option<u32>) -> anyhow::Result<()> {
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
