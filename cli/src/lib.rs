//! The shared body of the Fides command-line programs (`replica`, `dealer`, `fides`, `bistro`,
//! `bsubmit`, `fides-bench`, the simulator's `demo` and `bench`), so that they all fail the same
//! way:
//!
//! - a usage error is one line on standard error, `NAME: error: WHAT (see `NAME --help`)`, and
//!   exit status 2 (help and version print as clap prints them, status 0);
//! - any other failure is one line, `NAME: error: WHAT`, and exit status 1, or the status and line
//!   an [`Exit`] error carries;
//! - with the `runtime` feature, [`main_with`] also sets up logging to standard error and runs the
//!   program on a multi-threaded tokio runtime.
//!
//! A small crate of its own, so that the dealer and the simulator (no runtime, no logging) get only
//! the first two, and no program pulls in another's crate for it.

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

/// Exit status of a usage error (as clap's own).
pub const USAGE: u8 = 2;

/// A failure with its own exit status, and a line printed as it is when `bare`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    code: u8,
    message: String,
    bare: bool,
}

impl Exit {
    /// Exit with status `code` after the usual `NAME: error: MESSAGE` line.
    pub fn new(code: u8, message: impl Into<String>) -> Exit {
        Exit { code, message: message.into(), bare: false }
    }

    /// Exit with status `code` after `message` alone.
    pub fn bare(code: u8, message: impl Into<String>) -> Exit {
        Exit { code, message: message.into(), bare: true }
    }
}

/// The command line, parsed as `C`; on a usage error, the line is printed and the exit status is
/// returned (with `--help` or `--version`, what they print, and success).
pub fn parse<C: clap::Parser>(name: &str) -> Result<C, ExitCode> {
    parse_from(name, std::env::args_os())
}

/// [`parse`] of `args` (the program's name first).
pub fn parse_from<C, I, T>(name: &str, args: I) -> Result<C, ExitCode>
where
    C: clap::Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    use clap::error::ErrorKind;
    C::try_parse_from(args).map_err(|error| {
        match error.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                let _ = error.print();
                return ExitCode::SUCCESS;
            }
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                let _ = error.print();
                return ExitCode::from(USAGE);
            }
            _ => {}
        }
        let rendered = error.render().to_string();
        // What is wrong, before the usage and the hints, on one line.
        let paragraph: Vec<&str> = rendered
            .lines()
            .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect();
        let what = paragraph.join(" ");
        let what = what.trim_start_matches("error: ");
        say(&format!("{name}: error: {what} (see `{name} --help`)"));
        ExitCode::from(USAGE)
    })
}

/// The exit status of a program's `result`, after its error line on standard error.
pub fn finish(name: &str, result: anyhow::Result<()>) -> ExitCode {
    let Err(error) = result else { return ExitCode::SUCCESS };
    match error.downcast_ref::<Exit>() {
        Some(exit) if exit.bare => {
            say(&exit.message);
            ExitCode::from(exit.code)
        }
        found => {
            say(&format!("{name}: error: {}", one_line(&format!("{error:#}"))));
            ExitCode::from(found.map_or(1, |exit| exit.code))
        }
    }
}

/// `text` with its line breaks turned into spaces.
pub fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// A line on standard error; a closed standard error is not worth a panic.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// How a program logs to standard error.
#[cfg(feature = "runtime")]
#[derive(Clone, Copy, Debug)]
pub enum Logging {
    /// Not at all (the library's warnings are not for this program's users).
    Off,
    /// Text lines, filtered by `RUST_LOG`, else by this filter.
    Text(&'static str),
    /// JSON lines, filtered by `RUST_LOG`, else by this filter.
    Json(&'static str),
}

/// The default filter of a server: `info`, and `warn` for the network libraries.
#[cfg(feature = "runtime")]
pub const SERVER_LOG: &str = "info,libp2p=warn,h2=warn,tower=warn";

/// Start logging as `logging` says.
#[cfg(feature = "runtime")]
pub fn init_logging(logging: Logging) {
    let (default, json) = match logging {
        Logging::Off => return,
        Logging::Text(filter) => (filter, false),
        Logging::Json(filter) => (filter, true),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

/// The body of an asynchronous program's `main`: log as `logging` says, run `work` on a
/// multi-threaded runtime, and [`finish`].
#[cfg(feature = "runtime")]
pub fn main_with<F>(name: &str, logging: Logging, work: F) -> ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    init_logging(logging);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return finish(name, Err(anyhow::anyhow!("cannot start the runtime: {error}"))),
    };
    let result = runtime.block_on(work);
    // A read of standard input (a replica's `--exit-on-stdin-close`) blocks a thread that the
    // runtime would otherwise wait for on drop.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    finish(name, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser, Debug)]
    struct Args {
        #[arg(long)]
        count: u32,
    }

    #[test]
    fn a_usage_error_is_one_line_and_status_2() {
        let parsed = parse_from::<Args, _, _>("prog", ["prog", "--count", "x"]);
        assert_eq!(parsed.err(), Some(ExitCode::from(USAGE)));
        let parsed = parse_from::<Args, _, _>("prog", ["prog", "--count", "3"]);
        assert_eq!(parsed.map(|a| a.count).ok(), Some(3));
    }

    #[test]
    fn an_exit_error_carries_its_status() {
        assert_eq!(finish("prog", Err(Exit::new(3, "no").into())), ExitCode::from(3));
        assert_eq!(finish("prog", Err(anyhow::anyhow!("no"))), ExitCode::FAILURE);
        assert_eq!(finish("prog", Ok(())), ExitCode::SUCCESS);
    }
}
