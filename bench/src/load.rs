//! What the benches with a load generator share: client tasks that each make one request at a
//! time against a target for a window after a warm-up, the figures they make, and the small
//! helpers of their processes (printing, a temporary directory, a server's stop signal).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Distinct error messages kept per part (the rest are counted as "other").
const ERROR_KINDS_MAX: usize = 16;
/// Pause of a client task after a failed request.
const ERROR_PAUSE: Duration = Duration::from_millis(100);

/// What the client tasks load: one request, verified.
pub trait Load: Send + Sync + 'static {
    /// Make one request for client task `task` and verify the answer. Returns the epoch that
    /// certified it, if the answer has one.
    fn one(&self, task: usize) -> impl Future<Output = Result<Option<u64>, String>> + Send;
}

/// What the tasks measured within the window.
#[derive(Debug)]
pub struct Measured {
    /// Verified answers per second.
    pub rate: f64,
    /// Latency quantiles, ms.
    pub p50: f64,
    pub p99: f64,
    /// Failed requests.
    pub errors: u64,
    /// Why they failed, most frequent first.
    pub reasons: Vec<(String, u64)>,
    /// Distinct epochs of the verified answers.
    pub epochs: usize,
    /// Verified answers.
    pub count: u64,
}

/// One client task's counts.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    errors: u64,
    reasons: HashMap<String, u64>,
    epochs: HashSet<u64>,
}

impl Tally {
    fn error(&mut self, reason: String) {
        self.errors += 1;
        if self.reasons.len() < ERROR_KINDS_MAX || self.reasons.contains_key(&reason) {
            *self.reasons.entry(reason).or_default() += 1;
        } else {
            *self.reasons.entry("other errors".into()).or_default() += 1;
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        for (reason, count) in other.reasons {
            *self.reasons.entry(reason).or_default() += count;
        }
        self.epochs.extend(other.epochs);
    }
}

/// Run `clients` tasks against `target`; after `warm_up`, count what completes within `window`.
/// Requests still in flight when it closes are dropped.
pub async fn drive<T: Load>(
    target: Arc<T>,
    clients: u32,
    warm_up: Duration,
    window: Duration,
) -> anyhow::Result<Measured> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (measure_tx, measure_rx) = watch::channel(false);
    // Dropping the set (on an early return) aborts the tasks.
    let mut tasks = JoinSet::new();
    for task in 0..clients as usize {
        let target = Arc::clone(&target);
        let mut stop = stop_rx.clone();
        let measuring = measure_rx.clone();
        tasks.spawn(async move {
            let mut tally = Tally::default();
            loop {
                let started = Instant::now();
                let answer = tokio::select! {
                    answer = target.one(task) => answer,
                    _ = stop.wait_for(|stopped| *stopped) => break,
                };
                let counted = *measuring.borrow() && !*stop.borrow();
                match answer {
                    Ok(epoch) if counted => {
                        tally.latencies.push(started.elapsed());
                        tally.epochs.extend(epoch);
                    }
                    Ok(_) => {}
                    Err(reason) => {
                        if counted {
                            tally.error(reason);
                        }
                        tokio::time::sleep(ERROR_PAUSE).await;
                    }
                }
            }
            tally
        });
    }
    tokio::time::sleep(warm_up).await;
    let _ = measure_tx.send(true);
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let _ = stop_tx.send(true);
    let elapsed = started.elapsed();
    let mut all = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        all.merge(joined.context("a client task panicked")?);
    }
    let mut latencies = all.latencies;
    latencies.sort_unstable();
    let quantile = |q: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies[i].as_secs_f64() * 1000.0
    };
    let mut reasons: Vec<(String, u64)> = all.reasons.into_iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Ok(Measured {
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: quantile(0.5),
        p99: quantile(0.99),
        errors: all.errors,
        reasons,
        epochs: all.epochs.len(),
        count: latencies.len() as u64,
    })
}

/// Print the three most frequent reasons of failure.
pub fn print_reasons(reasons: &[(String, u64)]) {
    for (reason, count) in reasons.iter().take(3) {
        println!("            {count} × {reason}");
    }
}

/// A rate with thousands separators.
pub fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "?".into();
    }
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Milliseconds: a decimal below 10 ms, none above.
pub fn milliseconds(x: f64) -> String {
    if !x.is_finite() {
        "?".into()
    } else if x < 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    }
}

/// Removes a directory when dropped.
pub struct RemoveDir(pub PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The last `count` lines of a log file (none if it cannot be read).
pub fn log_tail(path: &Path, count: usize) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].iter().map(|l| l.to_string()).collect()
}

/// Resolves on SIGTERM, Ctrl-C, or the end of standard input if `on_stdin_close`.
pub async fn stopped(on_stdin_close: bool) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let stdin_closed = async {
        if !on_stdin_close {
            return std::future::pending::<()>().await;
        }
        let mut stdin = tokio::io::stdin();
        let mut buffer = [0u8; 64];
        loop {
            match stdin.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        _ = terminate => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = stdin_closed => {}
    }
}

/// A baseline server process (a hidden subcommand of this binary), killed if dropped.
pub struct ServerProcess {
    child: tokio::process::Child,
    /// The first line of its standard output: where it listens, and what a client needs.
    pub banner: String,
}

impl ServerProcess {
    /// Start `binary subcommand --listen 127.0.0.1:0 --exit-on-stdin-close EXTRA…` and read its
    /// first line.
    pub async fn start_with(binary: &Path, subcommand: &str, extra: &[&str]) -> anyhow::Result<ServerProcess> {
        let mut child = tokio::process::Command::new(binary)
            .args([subcommand, "--listen", "127.0.0.1:0", "--exit-on-stdin-close"])
            .args(extra)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            // The bench drops the requests in flight when the window closes, and h2 warns about so
            // many reset streams; that is expected here, not worth a line on the terminal.
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,h2=error".into()))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} {subcommand}", binary.display()))?;
        let stdout = child.stdout.take().context("the baseline server's standard output is not a pipe")?;
        let mut lines = BufReader::new(stdout).lines();
        let banner = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .context("the baseline server did not say where it listens within 60 s")?
            .context("reading the baseline server's standard output")?
            .context("the baseline server exited before saying where it listens")?;
        Ok(ServerProcess { child, banner })
    }

    /// Its resident memory, KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        self.child.id().and_then(fides_replica::launcher::rss_kib)
    }

    /// Close its standard input (it then stops); kill it if it is not gone within 5 s.
    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_get_thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(12_345.0), "12,345");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(f64::NAN), "?");
    }
}
