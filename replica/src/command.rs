//! The `run` command of a replica process, shared by `replica run` and the benchmark binary
//! (`fides-bench`), which starts the replicas of its clusters as itself so that they always run the
//! code it was built with.

use std::path::PathBuf;

use crate::run::{run, RunConfig};

/// `run`: a replica until SIGTERM or Ctrl-C.
#[derive(clap::Args)]
pub struct RunArgs {
    /// A TOML file with any of the settings below (flags win over it).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The settings given as flags.
    #[command(flatten)]
    pub settings: RunConfig,
    /// Log as JSON lines.
    #[arg(long)]
    pub log_json: bool,
    /// Stop when standard input closes (for launchers).
    #[arg(long)]
    pub exit_on_stdin_close: bool,
}

impl RunArgs {
    /// Run the replica: the settings of `--config`, overridden by the flags.
    pub async fn run(self) -> anyhow::Result<()> {
        let file = match self.config {
            Some(path) => RunConfig::from_file(&path)?,
            None => RunConfig::default(),
        };
        run(file.overridden_by(self.settings), self.exit_on_stdin_close).await
    }
}

/// The body of a binary's `main`: log as [`init_tracing`] says, run `work` on a multi-threaded
/// runtime, and turn its error into `NAME: error: …` on standard error and a failing exit code.
pub fn main_with<F>(name: &str, json: bool, work: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    init_tracing(json);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{name}: error: cannot start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(work);
    // A read of standard input (see `--exit-on-stdin-close`) blocks a thread that the runtime
    // would otherwise wait for on drop.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Log to standard error, filtered by `RUST_LOG` (by default `info`, `warn` for the network
/// libraries), as JSON lines if `json`.
pub fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,libp2p=warn,h2=warn,tower=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
