//! A local cluster of replica processes on one machine: deal it (if its directory has no cluster
//! file), start, kill, restart and wipe replicas, stop them all. Used by `replica cluster`, by the
//! tests that run real processes, and by `bench e2e`.
//!
//! Layout of a cluster directory:
//! ```text
//! DIR/cluster.toml, DIR/replica-<i>.toml     made by the dealer
//! DIR/data/replica-<i>/                      each replica's store
//! DIR/logs/replica-<i>.log                   each replica's log (appended to across restarts)
//! ```
//! Every replica gets `--exit-on-stdin-close` with a pipe from the launcher as its standard input:
//! if the launcher dies, even by SIGKILL, the pipe closes and the replicas stop by themselves.
//!
//! A replica can be given a command prefix ([`LocalCluster::set_command_prefix`]): a program that
//! runs the replica for it, such as one that enters a network namespace first. The prefix must
//! `exec` the replica, so that the process the launcher signals is the replica itself.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use fides_dealer::{
    derive_client_addresses, generate_with_rsa, parse_addresses, read_cluster, write, ClusterFile, ProtocolParameters,
    Quorum, RsaOptions, PROPOSAL_BYTES_LIMIT, WINDOW_IDS_LIMIT,
};
use fides_types::NodeIndex;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Options of the replicas a launcher starts.
#[derive(Clone, Debug, Default)]
pub struct ReplicaOptions {
    /// First metrics port (replica i serves on `127.0.0.1:(port + i)`); none without it.
    pub metrics_port_first: Option<u16>,
    /// Extra arguments for `replica run`.
    pub extra_args: Vec<String>,
}

/// A local cluster of replica processes.
pub struct LocalCluster {
    dir: PathBuf,
    binary: PathBuf,
    cluster: ClusterFile,
    children: Vec<Option<Child>>,
    options: ReplicaOptions,
    prefixes: Vec<Vec<String>>,
    extra: Vec<Vec<String>>,
}

/// Deal a cluster of `n` replicas tolerating `t` into `dir` unless it already has one; replica `i`
/// listens for peers on `127.0.0.1:(port_first + i)` and for clients on `127.0.0.1:(port_first + 100 + i)`.
/// The cluster gets the default protocol parameters.
pub fn deal_if_missing(dir: &Path, n: u32, t: u32, port_first: u16) -> anyhow::Result<bool> {
    deal_if_missing_with(dir, n, t, port_first, ProtocolParameters::DEFAULT)
}

/// [`deal_if_missing`] with these protocol parameters. A cluster already in `dir` is kept as it
/// is, whatever its parameters: a replica given a contradicting setting refuses to start.
pub fn deal_if_missing_with(
    dir: &Path,
    n: u32,
    t: u32,
    port_first: u16,
    protocol: ProtocolParameters,
) -> anyhow::Result<bool> {
    deal_if_missing_with_rsa(dir, n, t, port_first, protocol, None)
}

/// [`deal_if_missing_with`], and with `rsa_bits` also a threshold RSA key of that size and the
/// certification authority's root certificate (safe primes: seconds for 2048 bits, progress on
/// stderr).
pub fn deal_if_missing_with_rsa(
    dir: &Path,
    n: u32,
    t: u32,
    port_first: u16,
    protocol: ProtocolParameters,
    rsa_bits: Option<u64>,
) -> anyhow::Result<bool> {
    if dir.join(fides_dealer::CLUSTER_FILE_NAME).exists() {
        return Ok(false);
    }
    let quorum = Quorum::new(n, t)?;
    let list = (0..n).map(|i| format!("127.0.0.1:{}", u32::from(port_first) + i)).collect::<Vec<_>>().join(",");
    let addresses = parse_addresses(&list, quorum)?;
    let client_addresses = derive_client_addresses(&addresses)?;
    let mut progress = |p: fides_threshold_rsa::SearchProgress| {
        eprint!("\rthreshold RSA: looking for safe prime {} of 2, {} candidates tested", p.prime, p.tested);
    };
    let rsa = rsa_bits.map(|modulus_bits| RsaOptions {
        modulus_bits,
        not_before: std::time::SystemTime::now(),
        progress: &mut progress,
    });
    let cluster = generate_with_rsa(quorum, protocol, addresses, client_addresses, rsa, &mut rand::rngs::OsRng)?;
    if rsa_bits.is_some() {
        eprintln!();
    }
    write(dir, &cluster, true)?;
    Ok(true)
}

/// The default protocol parameters with `batch_size`, for benchmarks: `payload_len_max` and
/// `dedup_window_epochs` are lowered where the defaults would make proposals or at-most-once
/// windows above the wire bounds at that batch size.
pub fn protocol_with_batch_size(n: u32, batch_size: u32) -> ProtocolParameters {
    let defaults = ProtocolParameters::DEFAULT;
    let requests = u64::from(batch_size).div_ceil(u64::from(n.max(1))).max(1);
    let payload_fit = (PROPOSAL_BYTES_LIMIT / requests).saturating_sub(20);
    let window_fit = WINDOW_IDS_LIMIT / (requests * u64::from(n.max(1)));
    ProtocolParameters {
        batch_size,
        payload_len_max: u32::try_from(payload_fit).unwrap_or(u32::MAX).min(defaults.payload_len_max),
        dedup_window_epochs: window_fit.min(defaults.dedup_window_epochs),
        ..defaults
    }
}

impl LocalCluster {
    /// A launcher for the cluster dealt in `dir`, running `binary` (the `replica` executable).
    pub fn new(dir: &Path, binary: &Path, options: ReplicaOptions) -> anyhow::Result<LocalCluster> {
        let cluster = read_cluster(&dir.join(fides_dealer::CLUSTER_FILE_NAME))?;
        let n = cluster.quorum().n() as usize;
        std::fs::create_dir_all(dir.join("logs"))?;
        std::fs::create_dir_all(dir.join("data"))?;
        Ok(LocalCluster {
            dir: dir.to_path_buf(),
            binary: binary.to_path_buf(),
            cluster,
            children: (0..n).map(|_| None).collect(),
            options,
            prefixes: vec![Vec::new(); n],
            extra: vec![Vec::new(); n],
        })
    }

    /// The cluster file.
    pub fn cluster(&self) -> &ClusterFile {
        &self.cluster
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Replica `i`'s data directory.
    pub fn data_dir(&self, i: u32) -> PathBuf {
        self.dir.join("data").join(format!("replica-{i}"))
    }

    /// Replica `i`'s log file.
    pub fn log_file(&self, i: u32) -> PathBuf {
        self.dir.join("logs").join(format!("replica-{i}.log"))
    }

    /// Run replica `i` as `PREFIX… BINARY run …` from its next start on (an empty prefix: the
    /// binary itself). The prefix must end by executing its arguments in its own process.
    pub fn set_command_prefix(&mut self, i: u32, prefix: Vec<String>) {
        if let Some(slot) = self.prefixes.get_mut(i as usize) {
            *slot = prefix;
        }
    }

    /// Give replica `i` these arguments for `replica run` besides the common ones.
    pub fn set_extra_args(&mut self, i: u32, args: Vec<String>) {
        if let Some(slot) = self.extra.get_mut(i as usize) {
            *slot = args;
        }
    }

    /// Start replica `i` (if it is not running).
    pub fn start(&mut self, i: u32) -> anyhow::Result<()> {
        if self.is_running(i) {
            return Ok(());
        }
        let log = OpenOptions::new().create(true).append(true).open(self.log_file(i))?;
        let prefix = self.prefixes.get(i as usize).map(Vec::as_slice).unwrap_or_default();
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&self.binary);
                command
            }
            None => Command::new(&self.binary),
        };
        command
            .arg("run")
            .arg("--init")
            .arg(self.dir.join(fides_dealer::replica_file_name(NodeIndex(i))))
            .arg("--cluster")
            .arg(self.dir.join(fides_dealer::CLUSTER_FILE_NAME))
            .arg("--data")
            .arg(self.data_dir(i))
            .arg("--exit-on-stdin-close");
        if let Some(port) = self.options.metrics_port_first {
            command.arg("--metrics").arg(format!("127.0.0.1:{}", u32::from(port) + i));
        }
        command.args(&self.options.extra_args);
        if let Some(extra) = self.extra.get(i as usize) {
            command.args(extra);
        }
        command.stdin(Stdio::piped()).stdout(log.try_clone()?).stderr(log);
        let child = command.spawn().with_context(|| match prefix.first() {
            Some(program) => format!("starting {} through {program}", self.binary.display()),
            None => format!("starting {}", self.binary.display()),
        })?;
        if let Some(slot) = self.children.get_mut(i as usize) {
            *slot = Some(child);
        }
        Ok(())
    }

    /// Start every replica.
    pub fn start_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.children.len() as u32 {
            self.start(i)?;
        }
        Ok(())
    }

    /// Whether replica `i` runs.
    pub fn is_running(&mut self, i: u32) -> bool {
        match self.children.get_mut(i as usize) {
            Some(Some(child)) => matches!(child.try_wait(), Ok(None)),
            _ => false,
        }
    }

    /// Kill replica `i` with SIGKILL (no chance to clean up), and reap it.
    pub fn kill(&mut self, i: u32) {
        if let Some(slot) = self.children.get_mut(i as usize) {
            if let Some(mut child) = slot.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Stop replica `i` with SIGTERM (and the end of its standard input), waiting up to `grace`
    /// before SIGKILL.
    pub fn stop(&mut self, i: u32, grace: Duration) {
        let Some(slot) = self.children.get_mut(i as usize) else { return };
        let Some(mut child) = slot.take() else { return };
        terminate(&mut child);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stop every replica (SIGTERM to all, then wait, then SIGKILL what is left).
    pub fn stop_all(&mut self, grace: Duration) {
        for child in self.children.iter_mut().flatten() {
            terminate(child);
        }
        for i in 0..self.children.len() as u32 {
            self.stop(i, grace);
        }
    }

    /// Remove replica `i`'s data directory (it must be stopped).
    pub fn wipe(&mut self, i: u32) -> anyhow::Result<()> {
        if self.is_running(i) {
            bail!("replica {i} is running; stop it before wiping its data");
        }
        let dir = self.data_dir(i);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        Ok(())
    }

    /// The replicas' process ids (for measuring them).
    pub fn pids(&self) -> Vec<Option<u32>> {
        self.children.iter().map(|c| c.as_ref().map(Child::id)).collect()
    }
}

/// Ask a replica to stop: SIGTERM, and close its standard input. A replica reads its standard
/// input on a blocking thread that nothing can interrupt but the end of the input, and its process
/// only exits once that read returns; closing the pipe lets it exit at once.
fn terminate(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    drop(child.stdin.take());
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop_all(Duration::from_secs(5));
    }
}

/// Resident set size of a process, in KiB (Linux).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The `replayed=N` of the last "replayed the log" line in a replica's log text (terminal colour
/// codes, `ESC [ … m`, removed first): how many events its last restart replayed.
pub fn replayed_events(log: &str) -> Option<u64> {
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let line = plain.lines().rev().find(|line| line.contains("replayed the log"))?;
    let rest = &line[line.find("replayed=")? + "replayed=".len()..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}
