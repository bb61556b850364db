//! `fides-bench`: benchmarks of whole Fides processes on one machine. Each prints its figures.
//!
//! ```text
//! fides-bench e2e         replica processes and a load generator: ordered requests per second
//! fides-bench ts-surge    the timestamping bistro under a surge, against one Ed25519 server
//! fides-bench ca          the certification authority, against one CA process with one RSA key
//! ```
//!
//! The replicas of a bench run as this binary (its hidden `run` command is `replica run`), so
//! that they always run the code the bench was built with.

#![forbid(unsafe_code)]

mod ca;
mod e2e;
mod load;
mod restart;
mod ts;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use clap::{Parser, Subcommand};
use fides_cli::Logging;
use fides_replica::command::RunArgs;

/// Benchmarks with real processes.
#[derive(Parser)]
#[command(name = "fides-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the `run` settings does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Replica processes on 127.0.0.1 and a load generator: ordered requests per second, latency, memory.
    E2e(e2e::E2eArgs),
    /// The timestamping bistro under a surge of ticket requests: verified tickets per second and
    /// latency of the cluster, against one Ed25519 timestamp server on the same machine.
    TsSurge(ts::SurgeArgs),
    /// The one-server baseline of `ts-surge` (started by it).
    #[command(hide = true)]
    TsBaselineServer(ts::BaselineServerArgs),
    /// The certification authority: certificates per second and issue latency of the cluster
    /// (threshold RSA, one agreement per request), against one CA process with one RSA key.
    Ca(ca::CaArgs),
    /// The one-server baseline of `ca` (started by it).
    #[command(hide = true)]
    CaBaselineServer(ca::CaBaselineServerArgs),
    /// Kill -9 under load after a long history: time to serve again, events replayed; and the
    /// time for a wiped replica to rejoin.
    Restart(restart::RestartArgs),
    /// A replica of a bench's cluster, as `replica run` (started by the benches).
    #[command(hide = true)]
    Run(RunArgs),
}

fn main() -> ExitCode {
    let cli = match fides_cli::parse::<Cli>("fides-bench") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let logging = match &cli.command {
        Command::Run(args) => args.logging(),
        _ => Logging::Text(fides_cli::SERVER_LOG),
    };
    fides_cli::main_with("fides-bench", logging, dispatch(cli))
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::E2e(args) => e2e::run(args).await,
        Command::TsSurge(args) => ts::run(args).await,
        Command::TsBaselineServer(args) => ts::baseline_server(args).await,
        Command::Restart(args) => restart::run(args).await,
        Command::Ca(args) => ca::run(args).await,
        Command::CaBaselineServer(args) => ca::baseline_server(args).await,
        Command::Run(args) => args.run().await,
    }
}

/// The directory a bench deals its cluster into: `given` (`--dir`), or a new one under the
/// system's temporary directory named after the bench and this process. It is cleared first; a
/// `--dir` that holds something other than a cluster is refused, not removed.
fn cluster_dir(given: Option<&PathBuf>, bench: &str) -> anyhow::Result<PathBuf> {
    let dir = match given {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("fides-bench-{bench}-{}", std::process::id())),
    };
    if !dir.exists() {
        return Ok(dir);
    }
    let empty = std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?.next().is_none();
    if !empty && !dir.join(fides_dealer::CLUSTER_FILE_NAME).exists() {
        anyhow::bail!("{} is neither empty nor a cluster directory; not removing it", dir.display());
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    Ok(dir)
}
