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
