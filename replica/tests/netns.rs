//! Real replica processes on four hosts of their own, cut off the network and healed.
//!
//! The test builds a small network out of Linux network namespaces: one namespace per replica
//! host, one for the client, and a switch namespace holding a bridge; a veth pair joins each host
//! (and the client) to the bridge, with addresses in `10.231.<k>.0/24` (hosts `.1`–`.4`, client
//! `.10`) that exist only inside these namespaces. Cutting a host off is setting its port on the
//! bridge down: its TCP connections stall as they would behind a broken switch port.
//!
//! The test itself stays in the root namespace, from where those addresses cannot be reached, so it
//! talks to the cluster through `fides submit` and `fides log` run inside the client namespace.
//!
//! Without the rights to make namespaces (or without `ip`), the test says why it is skipped and
//! passes; with `FIDES_NETNS_REQUIRED=1` it fails instead. It always removes what it made: the
//! replicas are stopped and the namespaces deleted by drop guards, on failure too, and namespaces
//! left behind by a run of this test that was killed are deleted by the next run.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{assert_acknowledged_present, assert_logs_agree, one_at_a_time, workspace_binary, LogsOnFailure};
use fides_client_sdk::proto::{Batch, Request};
use fides_client_sdk::Ordered;
use fides_dealer::{generate_with_protocol, write, Address, ProtocolParameters, Quorum};
use fides_replica::launcher::{LocalCluster, ReplicaOptions};

/// Replicas (tolerating one fault).
const N: u32 = 4;
/// Where replicas listen for their peers, and for clients, on their hosts.
const PEER_PORT: u16 = 7100;
const CLIENT_PORT: u16 = 7200;
/// The whole test, from the first namespace to the last check.
const TEST_LIMIT: Duration = Duration::from_secs(230);
/// One `ip` command.
const IP_LIMIT: Duration = Duration::from_secs(10);

const REPLICA: &str = env!("CARGO_BIN_EXE_replica");

// ---------------------------------------------------------------------------------------------
// Commands with a deadline

/// A process whose output is being collected; killed if dropped before it finished.
struct Running {
    what: String,
    child: Option<Child>,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

/// How a process ended.
struct Finished {
    what: String,
    /// `None` if it was killed at its deadline.
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    fn describe(&self) -> String {
        let ended = match self.status {
            Some(status) => format!("{status}"),
            None => "killed at its deadline".to_string(),
        };
        format!("`{}`: {ended}; stderr: {}", self.what, self.stderr.trim())
    }
}

fn collect(stream: Option<impl Read + Send + 'static>) -> Option<JoinHandle<Vec<u8>>> {
    stream.map(|mut stream| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = stream.read_to_end(&mut bytes);
            bytes
        })
    })
}

fn describe(program: &str, args: &[String]) -> String {
    std::iter::once(program).chain(args.iter().map(String::as_str)).collect::<Vec<_>>().join(" ")
}

impl Running {
    fn spawn(program: &str, args: &[String]) -> std::io::Result<Running> {
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn()?;
        let stdout = collect(child.stdout.take());
        let stderr = collect(child.stderr.take());
        Ok(Running { what: describe(program, args), child: Some(child), stdout, stderr })
    }

    /// Wait for the process until `deadline`, then kill it.
    fn finish(mut self, deadline: Instant) -> Finished {
        let mut status = None;
        if let Some(mut child) = self.child.take() {
            loop {
                match child.try_wait() {
                    Ok(Some(exit)) => {
                        status = Some(exit);
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        let text = |handle: Option<JoinHandle<Vec<u8>>>| {
            handle.and_then(|h| h.join().ok()).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
        };
        Finished {
            what: std::mem::take(&mut self.what),
            status,
            stdout: text(self.stdout.take()),
            stderr: text(self.stderr.take()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn run(program: &str, args: &[String], within: Duration) -> std::io::Result<Finished> {
    Ok(Running::spawn(program, args)?.finish(Instant::now() + within))
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Run `ip ARGS`; an error (with `ip`'s own words) if it cannot be run or fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let args = strings(args);
    match run("ip", &args, IP_LIMIT) {
        Ok(done) if done.success() => Ok(()),
        Ok(done) => Err(done.describe()),
        Err(error) => Err(format!("cannot run `{}`: {error}", describe("ip", &args))),
    }
}

// ---------------------------------------------------------------------------------------------
// The network

/// The namespaces of one run; deleted when dropped.
struct Network {
    /// `fides<pid>`: every namespace's name starts with it.
    stem: String,
    /// The third byte of the addresses.
    subnet: u8,
    /// Namespaces made so far, deleted in reverse order.
    made: Vec<String>,
}

impl Network {
    fn host(&self, i: u32) -> String {
        format!("{}h{i}", self.stem)
    }

    fn switch(&self) -> String {
        format!("{}sw", self.stem)
    }

    fn client(&self) -> String {
        format!("{}c", self.stem)
    }

    fn host_address(&self, i: u32) -> String {
        format!("10.231.{}.{}", self.subnet, i + 1)
    }

    /// The bridge port of host `i`, in the switch namespace.
    fn port(i: u32) -> String {
        format!("h{i}")
    }

    fn add_namespace(&mut self, name: String) -> Result<(), String> {
        ip(&["netns", "add", &name])?;
        self.made.push(name);
        Ok(())
    }

    /// Attach namespace `ns` to the bridge through a veth pair (`eth0` there, `port` on the
    /// bridge), with `address`/24 on its side, and bring up its loopback.
    fn attach(&self, ns: &str, port: &str, address: &str) -> Result<(), String> {
        let switch = self.switch();
        ip(&["-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", &switch])?;
        ip(&["-n", &switch, "link", "set", port, "master", "br0"])?;
        ip(&["-n", &switch, "link", "set", port, "up"])?;
        ip(&["-n", ns, "addr", "add", &format!("{address}/24"), "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])
    }

    /// Build it all: namespaces, bridge, veth pairs, addresses. On an error, what was made so far
    /// is deleted when the returned error's network is dropped.
    fn build() -> Result<Network, (Network, String)> {
        let pid = std::process::id();
        let mut network = Network { stem: format!("fides{pid}"), subnet: (pid % 250 + 1) as u8, made: Vec::new() };
        match network.build_parts() {
            Ok(()) => Ok(network),
            Err(reason) => Err((network, reason)),
        }
    }

    fn build_parts(&mut self) -> Result<(), String> {
        // A namespace of one of these names can only be left over from an earlier process with
        // this id.
        let names: Vec<String> = (0..N).map(|i| self.host(i)).chain([self.switch(), self.client()]).collect();
        let existing = namespaces()?;
        for name in names.iter().filter(|name| existing.contains(name)) {
            let _ = ip(&["netns", "delete", name]);
        }
        for name in names {
            self.add_namespace(name)?;
        }
        let switch = self.switch();
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        ip(&["-n", &switch, "link", "set", "lo", "up"])?;
        for i in 0..N {
            self.attach(&self.host(i), &Network::port(i), &self.host_address(i))?;
        }
        self.attach(&self.client(), "c", &format!("10.231.{}.10", self.subnet))?;
        // Running a program inside a namespace needs more than making one (a private /sys mount).
        let probe = run("ip", &strings(&["netns", "exec", &self.client(), REPLICA, "--version"]), IP_LIMIT)
            .map_err(|error| format!("cannot run `ip netns exec`: {error}"))?;
        if !probe.success() {
            return Err(probe.describe());
        }
        Ok(())
    }

    /// Cut host `i` off the network (its bridge port goes down) or connect it again.
    fn set_connected(&self, i: u32, connected: bool) {
        let state = if connected { "up" } else { "down" };
        ip(&["-n", &self.switch(), "link", "set", &Network::port(i), state])
            .unwrap_or_else(|error| panic!("setting host {i}'s port {state}: {error}"));
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for name in self.made.drain(..).rev() {
            if let Err(error) = ip(&["netns", "delete", &name]) {
                eprintln!("netns test: could not delete namespace {name}: {error}");
            }
        }
    }
}

/// The names of the network namespaces `ip netns list` knows.
fn namespaces() -> Result<Vec<String>, String> {
    let args = strings(&["netns", "list"]);
    let done = run("ip", &args, IP_LIMIT).map_err(|error| format!("cannot run `ip netns list`: {error}"))?;
    if !done.success() {
        return Err(done.describe());
    }
    // Lines are `NAME` or `NAME (id: K)`.
    Ok(done.stdout.lines().filter_map(|line| line.split_whitespace().next()).map(str::to_string).collect())
}

/// Whether a process `pid` exists.
fn process_exists(pid: i32) -> bool {
    !matches!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None), Err(nix::errno::Errno::ESRCH))
}

/// Delete namespaces that runs of this test left behind when they were killed: named
/// `fides<pid>…` with no process `pid` any more.
fn delete_stale_namespaces() {
    let Ok(names) = namespaces() else { return };
    for name in names {
        let Some(rest) = name.strip_prefix("fides") else { continue };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let suffix = &rest[digits.len()..];
        let ours =
            suffix == "sw" || suffix == "c" || suffix.strip_prefix('h').is_some_and(|h| h.parse::<u32>().is_ok());
        let Ok(pid) = digits.parse::<i32>() else { continue };
        if !ours || pid <= 0 || process_exists(pid) {
            continue;
        }
        match ip(&["netns", "delete", &name]) {
            Ok(()) => eprintln!("netns test: deleted namespace {name}, left behind by a killed run"),
            Err(error) => eprintln!("netns test: could not delete stale namespace {name}: {error}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster, seen from the client namespace

struct Cluster<'a> {
    network: &'a Network,
    dir: PathBuf,
    end: Instant,
}

/// One replica's log as `fides log` printed it.
#[derive(Clone, Debug)]
struct Log {
    /// The first epoch it serves (later than 0 while it fetches batches it skipped).
    first_epoch: u64,
    next_epoch: u64,
    digest: String,
    queue: u64,
    equivocations: u64,
    batches: BTreeMap<u64, Batch>,
}

/// What one `fides submit` printed: the ordered requests (with their payloads) and the ids of
/// the failed ones.
struct Submitted {
    ordered: Vec<(Ordered, Vec<u8>)>,
    failed: Vec<u64>,
    done: Finished,
}

/// The `key=value` fields of a line after its first word.
fn fields(line: &str) -> (&str, HashMap<&str, &str>) {
    let mut words = line.split_whitespace();
    let kind = words.next().unwrap_or("");
    (kind, words.filter_map(|w| w.split_once('=')).collect())
}

fn field<T: std::str::FromStr>(map: &HashMap<&str, &str>, key: &str, line: &str) -> T {
    map.get(key).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no valid {key} in {line:?}"))
}

fn hex_field(map: &HashMap<&str, &str>, key: &str, line: &str) -> Vec<u8> {
    map.get(key).and_then(|v| hex::decode(v).ok()).unwrap_or_else(|| panic!("no valid {key} in {line:?}"))
}

fn parse_log(text: &str) -> Log {
    let mut log = Log {
        first_epoch: 0,
        next_epoch: 0,
        digest: String::new(),
        queue: 0,
        equivocations: 0,
        batches: BTreeMap::new(),
    };
    let mut saw_status = false;
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let (kind, map) = fields(line);
        match kind {
            "status" => {
                saw_status = true;
                log.next_epoch = field(&map, "next_epoch", line);
                log.digest = field(&map, "log", line);
                log.queue = field(&map, "queue", line);
                log.equivocations = field(&map, "equivocations", line);
            }
            "log" => log.first_epoch = field(&map, "first_epoch", line),
            "batch" => {
                let epoch = field(&map, "epoch", line);
                counts.insert(epoch, field::<usize>(&map, "requests", line));
                let batch = Batch {
                    epoch,
                    time_ms: field(&map, "time_ms", line),
                    requests: Vec::new(),
                    log_digest: hex_field(&map, "log", line),
                };
                assert!(log.batches.insert(epoch, batch).is_none(), "epoch {epoch} listed twice");
            }
            "request" => {
                let epoch: u64 = field(&map, "epoch", line);
                let index: usize = field(&map, "index", line);
                let batch = log.batches.get_mut(&epoch).unwrap_or_else(|| panic!("request before its batch: {line:?}"));
                assert_eq!(batch.requests.len(), index, "requests out of order: {line:?}");
                batch.requests.push(Request {
                    client: field(&map, "client", line),
                    id: field(&map, "id", line),
                    payload: hex_field(&map, "payload", line),
                });
            }
            _ => {}
        }
    }
    assert!(saw_status, "no status line in the log listing:\n{text}");
    for (epoch, batch) in &log.batches {
        assert_eq!(Some(&batch.requests.len()), counts.get(epoch), "requests listed for epoch {epoch}");
    }
    log
}

impl Cluster<'_> {
    /// The end of `within` from now, but never past the test's end.
    fn deadline(&self, within: Duration) -> Instant {
        (Instant::now() + within).min(self.end)
    }

    fn cluster_file(&self) -> String {
        self.dir.join(fides_dealer::CLUSTER_FILE_NAME).display().to_string()
    }

    /// `ip netns exec CLIENT-NS fides ARGS`, running.
    fn start_client(&self, args: &[String]) -> Running {
        let client = workspace_binary("fides").display().to_string();
        let mut all = strings(&["netns", "exec", &self.network.client(), &client]);
        all.extend_from_slice(args);
        Running::spawn("ip", &all).expect("running a client command in the client namespace")
    }

    fn log_of(&self, i: u32) -> Result<Log, String> {
        let args =
            strings(&["log", "--cluster", &self.cluster_file(), "--replica", &i.to_string(), "--timeout-s", "5"]);
        let done = self.start_client(&args).finish(self.deadline(Duration::from_secs(10)));
        if done.success() {
            Ok(parse_log(&done.stdout))
        } else {
            Err(done.describe())
        }
    }

    fn logs(&self, replicas: &[u32]) -> Vec<Log> {
        replicas.iter().map(|&i| self.log_of(i).unwrap_or_else(|e| panic!("log of replica {i}: {e}"))).collect()
    }

    fn wait_up(&self, local: &mut LocalCluster, i: u32, within: Duration) {
        let deadline = self.deadline(within);
        loop {
            let error = match self.log_of(i) {
                Ok(_) => return,
                Err(error) => error,
            };
            assert!(local.is_running(i), "replica {i} exited; see {}", local.log_file(i).display());
            assert!(Instant::now() < deadline, "replica {i} did not answer within {within:?}: {error}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Wait until `replicas` report the same next epoch and log digest, at least `min_epoch`;
    /// with `complete`, also until each serves its whole log from epoch 0 (a replica that jumped
    /// to a checkpoint has fetched the batches it skipped).
    fn wait_converged(&self, replicas: &[u32], min_epoch: u64, complete: bool, within: Duration) -> Vec<Log> {
        let deadline = self.deadline(within);
        loop {
            let logs: Vec<Result<Log, String>> = replicas.iter().map(|&i| self.log_of(i)).collect();
            let states: Vec<Option<(u64, String)>> =
                logs.iter().map(|l| l.as_ref().ok().map(|l| (l.next_epoch, l.digest.clone()))).collect();
            let firsts: Vec<Option<u64>> = logs.iter().map(|l| l.as_ref().ok().map(|l| l.first_epoch)).collect();
            let whole = |log: &Log| {
                log.first_epoch == 0
                    && log.batches.keys().next() == Some(&0)
                    && log.batches.len() as u64 >= log.next_epoch
            };
            let converged = states.iter().all(Option::is_some)
                && states.windows(2).all(|w| w[0] == w[1])
                && states.first().and_then(Option::as_ref).is_some_and(|s| s.0 >= min_epoch)
                && (!complete || logs.iter().flatten().all(whole));
            if converged {
                return logs.into_iter().flatten().collect();
            }
            assert!(
                Instant::now() < deadline,
                "replicas {replicas:?} did not converge on epoch {min_epoch} or later{} within {within:?}: \
                 (next epoch, digest) {states:?}, logs served from {firsts:?}",
                if complete { " with whole logs" } else { "" }
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// `fides submit` arguments for `count` requests of `client` from id `first_id` on.
    fn submit_args(client: u64, first_id: u64, count: u64, prefix: &str, extra: &[&str]) -> Vec<String> {
        let mut args = strings(&[
            "submit",
            "--quorum",
            "--client",
            &client.to_string(),
            "--first-id",
            &first_id.to_string(),
            "--count",
            &count.to_string(),
            "--prefix",
            prefix,
        ]);
        args.extend(strings(extra));
        args
    }

    fn submit_start(&self, client: u64, first_id: u64, count: u64, prefix: &str, extra: &[&str]) -> Running {
        let mut args = Cluster::submit_args(client, first_id, count, prefix, extra);
        args.splice(1..1, strings(&["--cluster", &self.cluster_file()]));
        self.start_client(&args)
    }

    /// Parse what a `fides submit` of requests `prefix k` from id `first_id` on printed.
    fn submitted(done: Finished, first_id: u64, prefix: &str) -> Submitted {
        let mut ordered = Vec::new();
        let mut failed = Vec::new();
        for line in done.stdout.lines() {
            let (kind, map) = fields(line);
            match kind {
                "ordered" => {
                    let o = Ordered {
                        client: field(&map, "client", line),
                        id: field(&map, "id", line),
                        epoch: field(&map, "epoch", line),
                        index: field(&map, "index", line),
                        time_ms: field(&map, "time_ms", line),
                        log_digest: hex_field(&map, "log", line),
                    };
                    let payload = format!("{prefix} {}", o.id - first_id).into_bytes();
                    ordered.push((o, payload));
                }
                "failed" => failed.push(field(&map, "id", line)),
                _ => {}
            }
        }
        Submitted { ordered, failed, done }
    }

    /// Order `count` requests (quorum answers) and expect every one ordered.
    fn submit_all(
        &self,
        client: u64,
        first_id: u64,
        count: u64,
        prefix: &str,
        within: Duration,
    ) -> Vec<(Ordered, Vec<u8>)> {
        let running = self.submit_start(client, first_id, count, prefix, &["--timeout-s", "10"]);
        let result = Cluster::submitted(running.finish(self.deadline(within)), first_id, prefix);
        assert!(result.done.success(), "submitting {prefix:?}: {}", result.done.describe());
        assert_eq!(result.ordered.len() as u64, count, "submitting {prefix:?}:\n{}", result.done.stdout);
        result.ordered
    }
}

/// Every two of `logs` agree, and each has no gaps.
fn agree(logs: &[&Log]) {
    let maps: Vec<BTreeMap<u64, Batch>> = logs.iter().map(|l| l.batches.clone()).collect();
    assert_logs_agree(&maps);
}

fn holds(log: &Log, client: u64, id: u64) -> bool {
    log.batches.values().flat_map(|b| &b.requests).any(|r| r.client == client && r.id == id)
}

// ---------------------------------------------------------------------------------------------
// The test

fn skip(reason: &str) {
    let required = std::env::var("FIDES_NETNS_REQUIRED").is_ok_and(|v| v == "1");
    assert!(!required, "FIDES_NETNS_REQUIRED=1 but the network could not be built: {reason}");
    println!("SKIPPED netns test: cannot build a network of namespaces here ({reason})");
    println!("        it needs the `ip` command and the rights to make network namespaces (root, or");
    println!("        CAP_NET_ADMIN and CAP_SYS_ADMIN); FIDES_NETNS_REQUIRED=1 turns this into a failure");
}

fn deal(dir: &Path, network: &Network) {
    let quorum = Quorum::new(N, 1).expect("4 replicas tolerate 1 fault");
    let address =
        |i: u32, port: u16| Address::parse(&format!("{}:{port}", network.host_address(i))).expect("a valid address");
    let addresses = (0..N).map(|i| address(i, PEER_PORT)).collect();
    let client_addresses = (0..N).map(|i| address(i, CLIENT_PORT)).collect();
    // Checkpoints every 4 epochs, so that several become stable in this short run (and a replica
    // that falls behind by more than a few epochs can catch up through one).
    let protocol = ProtocolParameters { checkpoint_interval: 4, ..ProtocolParameters::DEFAULT };
    let cluster = generate_with_protocol(quorum, protocol, addresses, client_addresses, &mut rand::rngs::OsRng)
        .expect("dealing the cluster");
    write(dir, &cluster, true).expect("writing the cluster files");
}

#[test]
fn replicas_on_four_hosts_survive_one_host_cut_off_and_stall_safely_without_a_quorum() {
    let _one = one_at_a_time();
    let start = Instant::now();
    delete_stale_namespaces();
    let network = match Network::build() {
        Ok(network) => network,
        Err((network, reason)) => {
            drop(network);
            skip(&reason);
            return;
        }
    };
    println!(
        "network: namespaces {}h0..h{} {}sw {}c, addresses 10.231.{}.0/24",
        network.stem,
        N - 1,
        network.stem,
        network.stem,
        network.subnet
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    deal(dir.path(), &network);
    let _logs_on_failure = LogsOnFailure::new(dir.path(), N);
    let options = ReplicaOptions { metrics_port_first: None, extra_args: Vec::new() };
    let mut local = LocalCluster::new(dir.path(), Path::new(REPLICA), options).expect("launcher");
    for i in 0..N {
        local.set_command_prefix(i, strings(&["ip", "netns", "exec", &network.host(i)]));
    }
    let cluster = Cluster { network: &network, dir: dir.path().to_path_buf(), end: start + TEST_LIMIT };
    let mut acknowledged: Vec<(Ordered, Vec<u8>)> = Vec::new();
    let mut snapshots: Vec<Log> = Vec::new();
    let elapsed = || format!("{:.1} s", start.elapsed().as_secs_f64());

    // All four up.
    local.start_all().expect("starting the replicas");
    for i in 0..N {
        cluster.wait_up(&mut local, i, Duration::from_secs(60));
    }
    println!("[{}] all 4 replicas answer", elapsed());
    acknowledged.extend(cluster.submit_all(1, 0, 10, "all up", Duration::from_secs(60)));
    let max_epoch = acknowledged.iter().map(|(o, _)| o.epoch).max().unwrap_or(0);
    snapshots.extend(cluster.wait_converged(&[0, 1, 2, 3], max_epoch + 1, false, Duration::from_secs(30)));
    println!("[{}] 10 requests ordered with all 4 up; replicas at epoch {}", elapsed(), snapshots[0].next_epoch);

    // Host 3 cut off: the other three go on.
    network.set_connected(3, false);
    let ordered = cluster.submit_all(2, 0, 10, "host 3 cut off", Duration::from_secs(60));
    let max_epoch = ordered.iter().map(|(o, _)| o.epoch).max().unwrap_or(0);
    acknowledged.extend(ordered);
    snapshots.extend(cluster.wait_converged(&[0, 1, 2], max_epoch + 1, false, Duration::from_secs(30)));
    assert!(cluster.log_of(3).is_err(), "replica 3 answers the client while its host is cut off");
    println!("[{}] 10 requests ordered by replicas 0, 1, 2 with host 3 cut off", elapsed());

    // Host 3 back: it catches up.
    network.set_connected(3, true);
    let healed = cluster.wait_converged(&[0, 1, 2, 3], max_epoch + 1, false, Duration::from_secs(60));
    println!(
        "[{}] host 3 connected again; all 4 at epoch {} (replica 3 serves its log from epoch {})",
        elapsed(),
        healed[3].next_epoch,
        healed[3].first_epoch
    );
    snapshots.extend(healed);

    // Hosts 1 and 2 cut off: two of four cannot order anything.
    let before = cluster.logs(&[0, 3]);
    network.set_connected(1, false);
    network.set_connected(2, false);
    let (stalled_client, stalled_count, stalled_prefix) = (3u64, 5u64, "without a quorum");
    let stalled = cluster.submit_start(
        stalled_client,
        0,
        stalled_count,
        stalled_prefix,
        &["--timeout-s", "2", "--attempts", "2", "--concurrent"],
    );
    std::thread::sleep(Duration::from_secs(2));
    let during = cluster.logs(&[0, 3]);
    let stalled = Cluster::submitted(stalled.finish(cluster.deadline(Duration::from_secs(40))), 0, stalled_prefix);
    assert!(
        stalled.done.status.is_some(),
        "the submission without a quorum did not give up: {}",
        stalled.done.describe()
    );
    assert!(!stalled.done.success(), "a submission without a quorum succeeded:\n{}", stalled.done.stdout);
    assert!(stalled.ordered.is_empty(), "requests ordered without a quorum:\n{}", stalled.done.stdout);
    assert_eq!(stalled.failed.len() as u64, stalled_count, "every request reported failed:\n{}", stalled.done.stdout);
    let after = cluster.logs(&[0, 3]);
    for (log, i) in during.iter().chain(&after).zip([0, 3, 0, 3]) {
        assert!(
            (0..stalled_count).all(|id| !holds(log, stalled_client, id)),
            "replica {i} delivered a request submitted without a quorum"
        );
    }
    // The cluster was idle when cut (converged, every request delivered), so no epoch was under
    // way that the two could still finish.
    for (then, now) in before.iter().zip(&after) {
        assert_eq!(then.next_epoch, now.next_epoch, "an epoch was delivered by two replicas of four");
    }
    let mut all: Vec<&Log> = snapshots.iter().chain(&before).chain(&during).chain(&after).collect();
    agree(&all);
    println!(
        "[{}] hosts 1 and 2 cut off: nothing ordered ({} requests timed out), replicas 0 and 3 agree and stay at epoch {}",
        elapsed(),
        stalled.failed.len(),
        after[0].next_epoch
    );

    // Hosts 1 and 2 back: the requests sent during the cut are ordered (sent again under the same
    // ids: once each), and new ones too.
    network.set_connected(1, true);
    network.set_connected(2, true);
    acknowledged.extend(cluster.submit_all(stalled_client, 0, stalled_count, stalled_prefix, Duration::from_secs(90)));
    acknowledged.extend(cluster.submit_all(4, 0, 10, "healed", Duration::from_secs(60)));
    let max_epoch = acknowledged.iter().map(|(o, _)| o.epoch).max().unwrap_or(0);
    let last = cluster.wait_converged(&[0, 1, 2, 3], max_epoch + 1, true, Duration::from_secs(60));
    println!("[{}] hosts 1 and 2 connected again; all 4 at epoch {}", elapsed(), last[0].next_epoch);

    // Every log agrees with every other and with every earlier listing; every acknowledged request
    // is where its answer said, and no request is ordered twice.
    all.extend(&last);
    agree(&all);
    let maps: Vec<BTreeMap<u64, Batch>> = last.iter().map(|l| l.batches.clone()).collect();
    assert_acknowledged_present(&maps, &acknowledged);
    let mut union: BTreeMap<u64, &Batch> = BTreeMap::new();
    for log in all.iter() {
        for (epoch, batch) in &log.batches {
            union.entry(*epoch).or_insert(batch);
        }
    }
    let mut seen: HashMap<(u64, u64), u64> = HashMap::new();
    for (epoch, batch) in &union {
        for request in &batch.requests {
            if let Some(earlier) = seen.insert((request.client, request.id), *epoch) {
                panic!("request {:?} ordered twice, in epochs {earlier} and {epoch}", (request.client, request.id));
            }
        }
    }
    assert_eq!(union.keys().next(), Some(&0), "some replica holds the log from epoch 0");
    assert_eq!(seen.len(), acknowledged.len(), "exactly the acknowledged requests are ordered");
    for log in &last {
        assert_eq!(log.equivocations, 0, "a replica saw an equivocation");
        assert_eq!(log.queue, 0, "a replica still has requests waiting");
    }
    println!(
        "[{}] all 4 logs agree on every epoch they share; {} acknowledged requests each ordered once",
        elapsed(),
        acknowledged.len()
    );

    local.stop_all(Duration::from_secs(10));
    println!("[{}] all replicas stopped", elapsed());
}
