//! Protocol benchmarks in the simulator's CPU-accounting mode (the method of hbbft's
//! `examples/simulation`): the thread CPU time of each handler call and of encoding what it sends
//! is charged to its replica's virtual clock; each replica's uplink sends one copy per recipient
//! after another at `--bw` kbit/s (1,000 bits per second), and a copy arrives `--lag` ms after it
//! left the uplink.
//!
//! `bench aba [-n N]…` prints, per cluster size: the mean and worst round of decision (rounds count
//! from 0, so 0 means the first round), messages and bytes sent per honest replica, CPU per honest
//! replica per decision, and the virtual time to the last decision.
//!
//! `bench abc [-n N] [--txs T] [--batch B] [--tx-size S] [--lag MS] [--bw KBIT]` gives every
//! replica all `T` transactions and runs atomic broadcast until every honest replica delivered all
//! of them; it prints throughput (transactions per second of virtual time), the distinct requests
//! delivered per epoch and the mean epoch time (their ratio is the throughput), time to the first
//! non-empty batch, messages, bytes and CPU per replica, and real wall time.

use anyhow::{bail, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::process::ExitCode;
use std::time::Instant;

use simnet::aba::{run_case_with, AbaCase, AbaSummary, SchedulerKind};
use simnet::abc::{bench_case, AbcBenchCase};
use simnet::{Behaviour, CpuModel};

#[derive(Parser)]
#[command(about = "Fides protocol benchmarks (simulated network, measured CPU)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Binary agreement: one instance per run, every replica proposing.
    Aba(AbaArgs),
    /// Atomic broadcast: every replica is given all transactions, until all are delivered.
    Abc(AbcArgs),
}

#[derive(clap::Args)]
struct AbcArgs {
    /// Cluster sizes (t is the largest that n tolerates); default 4, 7, 10, 16, 31.
    #[arg(short = 'n', long = "nodes")]
    nodes: Vec<u32>,
    /// Transactions in all.
    #[arg(long, default_value_t = 20_000)]
    txs: usize,
    /// Requests considered per epoch (each replica proposes `⌈batch / n⌉` of them).
    #[arg(long, default_value_t = 2_000)]
    batch: usize,
    /// Payload bytes per transaction.
    #[arg(long = "tx-size", default_value_t = 250)]
    tx_size: usize,
    /// Latency of each message once it left its sender's uplink, in milliseconds.
    #[arg(long, default_value_t = 1)]
    lag: u64,
    /// Bandwidth of each replica's uplink, in kbit/s (1,000 bits per second), shared by the
    /// copies it sends to each peer.
    #[arg(long, default_value_t = 1_000_000)]
    bw: u64,
    /// Make t replicas Byzantine of this kind; their CPU is not counted.
    #[arg(long)]
    byzantine: Option<String>,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum Proposals {
    /// Honest replicas propose at random (the coin decides; the costly case).
    Mixed,
    /// Every honest replica proposes the same value.
    Unanimous,
}

#[derive(clap::Args)]
struct AbaArgs {
    /// Cluster sizes (t is the largest that n tolerates); default 4, 7, 10, 16, 31.
    #[arg(short = 'n', long = "nodes")]
    nodes: Vec<u32>,
    /// Instances per size.
    #[arg(long, default_value_t = 20)]
    runs: u64,
    /// Latency of each message once it left its sender's uplink, in milliseconds.
    #[arg(long, default_value_t = 1)]
    lag: u64,
    /// Bandwidth of each replica's uplink, in kbit/s (1,000 bits per second), shared by the
    /// copies it sends to each peer.
    #[arg(long, default_value_t = 1_000_000)]
    bw: u64,
    /// What the honest replicas propose.
    #[arg(long, value_enum, default_value_t = Proposals::Mixed)]
    proposals: Proposals,
    /// Validated agreement (votes for 1 carry a justification).
    #[arg(long)]
    validated: bool,
    /// Make t replicas Byzantine of this kind (crash, silent, equivocator, garbage, replayer,
    /// impersonator); their CPU is not counted.
    #[arg(long)]
    byzantine: Option<String>,
}

fn main() -> ExitCode {
    match fides_cli::parse::<Cli>("bench") {
        Ok(cli) => fides_cli::finish("bench", run(cli)),
        Err(code) => code,
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Aba(args) => aba(args),
        Command::Abc(args) => abc(args),
    }
}

fn byzantine_kind(name: Option<&str>) -> Result<Behaviour> {
    match name {
        None => Ok(Behaviour::Honest),
        Some(name) => match Behaviour::byzantine_kinds().into_iter().find(|b| b.name() == name) {
            Some(kind) => Ok(kind),
            None => bail!("unknown Byzantine kind {name:?}"),
        },
    }
}

fn abc(args: AbcArgs) -> Result<()> {
    if args.bw == 0 || args.txs == 0 || args.batch == 0 {
        bail!("--bw, --txs and --batch must be positive");
    }
    let byzantine = byzantine_kind(args.byzantine.as_deref())?;
    let sizes = if args.nodes.is_empty() { vec![4, 7, 10, 16, 31] } else { args.nodes.clone() };
    let cpu = CpuModel { lag: args.lag * 1_000, bandwidth_bps: args.bw * 1_000 };
    println!(
        "atomic broadcast, {} txs of {} B, batch {}, lag {} ms, uplink {} kbit/s per replica, Byzantine: {}",
        args.txs,
        args.tx_size,
        args.batch,
        args.lag,
        args.bw,
        if byzantine == Behaviour::Honest { "none".to_string() } else { format!("t {}", byzantine.name()) }
    );
    println!(
        "{:>4} {:>3} | {:>10} {:>14} {:>12} | {:>12} | {:>6} {:>10} | {:>9} {:>11} | {:>11} | {:>8}",
        "n",
        "t",
        "tx/s",
        "distinct/epoch",
        "epoch (ms)",
        "first (ms)",
        "epochs",
        "all (ms)",
        "msgs/node",
        "MB/node",
        "CPU ms/node",
        "wall (s)"
    );
    for n in sizes {
        let case = AbcBenchCase {
            n,
            byzantine: byzantine.clone(),
            txs: args.txs,
            batch: args.batch,
            tx_size: args.tx_size,
            cpu,
            seed: args.seed,
        };
        let started = Instant::now();
        let summary = bench_case(&case).map_err(|e| anyhow::anyhow!("n = {n}, seed {}: {e}", args.seed))?;
        let wall = started.elapsed().as_secs_f64();
        let seconds = summary.all_delivered_at as f64 / 1e6;
        println!(
            "{:>4} {:>3} | {:>10.0} {:>14.0} {:>12.2} | {:>12.2} | {:>6} {:>10.1} | {:>9.0} {:>11.2} | {:>11.1} | {:>8.1}",
            n,
            (n - 1) / 3,
            summary.requests as f64 / seconds,
            summary.requests as f64 / summary.epochs.max(1) as f64,
            summary.all_delivered_at as f64 / 1e3 / summary.epochs.max(1) as f64,
            summary.first_commit_at as f64 / 1e3,
            summary.epochs,
            summary.all_delivered_at as f64 / 1e3,
            summary.messages_per_node,
            summary.bytes_per_node / 1e6,
            summary.cpu_micros_per_node / 1e3,
            wall,
        );
    }
    Ok(())
}

fn aba(args: AbaArgs) -> Result<()> {
    if args.runs == 0 || args.bw == 0 {
        bail!("--runs and --bw must be positive");
    }
    let byzantine = byzantine_kind(args.byzantine.as_deref())?;
    let sizes = if args.nodes.is_empty() { vec![4, 7, 10, 16, 31] } else { args.nodes.clone() };
    let cpu = CpuModel { lag: args.lag * 1_000, bandwidth_bps: args.bw * 1_000 };
    println!(
        "binary agreement, {} runs per size, {} proposals{}, lag {} ms, uplink {} kbit/s per replica, Byzantine: {}",
        args.runs,
        match args.proposals {
            Proposals::Mixed => "mixed",
            Proposals::Unanimous => "unanimous",
        },
        if args.validated { ", validated" } else { "" },
        args.lag,
        args.bw,
        if byzantine == Behaviour::Honest { "none".to_string() } else { format!("t {}", byzantine.name()) }
    );
    println!(
        "{:>4} {:>3} | {:>11} {:>12} | {:>10} {:>11} | {:>17} | {:>15}",
        "n", "t", "round mean", "round worst", "msgs/node", "bytes/node", "CPU µs/decision", "decided at (ms)"
    );
    for n in sizes {
        let mut summaries: Vec<AbaSummary> = Vec::new();
        for run in 0..args.runs {
            // Seeds ≡ 2, 3 (mod 4) give mixed proposals, ≡ 0, 1 unanimous ones (see AbaScenario).
            let seed = 4 * run + 2 * u64::from(matches!(args.proposals, Proposals::Mixed)) + run % 2;
            let case = AbaCase {
                scheduler: SchedulerKind::Random,
                validated: args.validated,
                ..AbaCase::new(n, byzantine.clone(), seed)
            };
            match run_case_with(&case, Some(cpu)) {
                Ok(summary) => summaries.push(summary),
                Err(error) => bail!("n = {n}, seed {seed}: {error}"),
            }
        }
        let count = summaries.len() as f64;
        let mean = |f: &dyn Fn(&AbaSummary) -> f64| summaries.iter().map(f).sum::<f64>() / count;
        println!(
            "{:>4} {:>3} | {:>11.2} {:>12} | {:>10.0} {:>11.0} | {:>17.0} | {:>15.2}",
            n,
            (n - 1) / 3,
            mean(&|s| s.rounds_mean),
            summaries.iter().map(|s| s.rounds_worst).max().unwrap_or(0),
            mean(&|s| s.messages_per_node),
            mean(&|s| s.bytes_per_node),
            mean(&|s| s.cpu_micros_per_node),
            mean(&|s| s.decided_at_worst as f64 / 1_000.0),
        );
    }
    Ok(())
}
