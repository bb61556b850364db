//! The `run` command of a replica process, shared by `replica run` and the benchmark binary
//! (`fides-bench`), which starts the replicas of its clusters as itself so that they always run the
//! code it was built with.

use std::path::PathBuf;

use fides_cli::Logging;

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

    /// How the replica logs: text or (`--log-json`) JSON lines, by default `info` (`warn` for
    /// the network libraries).
    pub fn logging(&self) -> Logging {
        if self.log_json {
            Logging::Json(fides_cli::SERVER_LOG)
        } else {
            Logging::Text(fides_cli::SERVER_LOG)
        }
    }
}
