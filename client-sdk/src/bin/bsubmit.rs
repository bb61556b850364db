//! `bsubmit`: submit a file to an upload event of a Fides bistro, keep the signed ticket and
//! receipts, and check them later, offline.
//!
//! ```text
//! bsubmit config -set email=you@example.org [-set cluster=PATH] | -show
//! bsubmit upload -event EVID -file FILE [-email ADDRESS] [-via HOST:PORT]
//! bsubmit resend -event EVID -ticket N [-via HOST:PORT]
//! bsubmit records -event EVID
//! bsubmit verify FILE.bti|FILE.bri [FILE]
//! ```
//!
//! Options may be spelled `-event` (as the original bistro's bsubmit did) or `--event`.
//!
//! Files, under `~/.bistro` (or `$BISTRO_HOME`):
//! - `config`: `key=value` lines (`email`, `cluster`);
//! - `tickets/EVID/N.bti`: ticket `N`, signed by the cluster; `N.dat`: a copy of the file;
//! - `tickets/EVID/<intermediary>_<receipt>.bri`: an intermediary's signed receipt;
//! - `commits/EVID/N`: the encrypted upload (only the event's owner, with the cluster, can open it).
//!
//! The cluster file comes from `--cluster PATH`, else `$BISTRO_CLUSTER`, else `cluster=` in the
//! config.
//!
//! Exit status: 0 done; 1 failed (one line on stderr says why); 2 bad usage or no e-mail address;
//! 3 the event's deadline has passed; 4 the ticket is kept but no intermediary took the upload.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand};
use fides_bistro::commit::{seal_commit, CommitHeader};
use fides_bistro::proof::EpochProof;
use fides_bistro::records::{EventId, EventRecord, Receipt, Signed, Ticket, TicketRequest, FIELD_MAX};
use fides_bistro::records::{StatusRecord, TicketState, STATUS_TICKETS_MAX};
use fides_bistro::service::format_time;
use fides_bistro::stream::{digest_reader, HashAlg};
use fides_bistro::text::{self, hash_name, render_receipt, render_ticket, verify_receipt_text, verify_ticket_text};
use fides_cli::{Exit, Logging};
use fides_client_sdk::bistro::{BistroClient, RelayInfo};
use fides_client_sdk::ClientError;
use fides_dealer::ClusterFile;
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use tonic::Code;

/// `println!` that never panics: a closed stdout (as in `bsubmit records | head`) is ignored.
macro_rules! out {
    () => {{
        let _ = writeln!(io::stdout());
    }};
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that never panics.
macro_rules! err {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stderr(), $($arg)*);
    }};
}

/// Files larger than this get a progress bar.
const PROGRESS_MIN: u64 = 1024 * 1024;
/// Largest ticket, receipt or config file read.
const TEXT_MAX: u64 = 1024 * 1024;
/// Hex digits of an intermediary's key in receipt file names.
const SHORT_KEY: usize = 8;

const NO_EMAIL: &str = "Cannot start bsubmit without your e-mail address.\nPlease run bsubmit with '-email'.";

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

#[derive(Parser, Debug)]
#[command(
    name = "bsubmit",
    version,
    about = "Submit a file to a Fides bistro upload event, with a signed timestamp (a ticket).",
    after_help = "Options may also be written with one dash, as in `bsubmit upload -event EVID -file F`."
)]
struct Cli {
    /// The cluster file (cluster.toml); default: $BISTRO_CLUSTER, then `cluster=` in the config.
    #[arg(long, global = true, value_name = "PATH")]
    cluster: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show or change the settings in ~/.bistro/config (`email`, `cluster`).
    Config(ConfigArgs),
    /// Get a signed ticket for a file, keep a copy, encrypt it and upload it to an intermediary.
    Upload(UploadArgs),
    /// Upload the encrypted file of a ticket again (by default directly to a replica).
    Resend(ResendArgs),
    /// List your tickets of an event, and what the cluster says became of each upload.
    Records(RecordsArgs),
    /// Check a ticket (.bti) or receipt (.bri) file offline, and optionally a file against it.
    Verify(VerifyArgs),
}

#[derive(Args, Debug)]
struct ConfigArgs {
    /// Set a value: `email=you@example.org` or `cluster=PATH` (may be given more than once).
    #[arg(long, value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print the settings.
    #[arg(long)]
    show: bool,
}

#[derive(Args, Debug)]
struct UploadArgs {
    /// The event id (32 hex digits).
    #[arg(long, value_name = "EVID")]
    event: String,
    /// The file to submit.
    #[arg(long, value_name = "FILE")]
    file: PathBuf,
    /// Your e-mail address (default: `email=` in the config).
    #[arg(long, value_name = "ADDRESS")]
    email: Option<String>,
    /// Upload through this intermediary (`host:port`) only.
    #[arg(long, value_name = "HOST:PORT")]
    via: Option<String>,
}

#[derive(Args, Debug)]
struct ResendArgs {
    /// The event id.
    #[arg(long, value_name = "EVID")]
    event: String,
    /// The ticket number.
    #[arg(long, value_name = "N")]
    ticket: u64,
    /// Upload through this intermediary (`host:port`); default: directly to a replica.
    #[arg(long, value_name = "HOST:PORT")]
    via: Option<String>,
}

#[derive(Args, Debug)]
struct RecordsArgs {
    /// The event id.
    #[arg(long, value_name = "EVID")]
    event: String,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// A ticket (.bti) or receipt (.bri) file.
    signed: PathBuf,
    /// The submitted file (for a ticket) or the encrypted file (for a receipt) to check against it.
    file: Option<PathBuf>,
}

/// `-event` → `--event`: a single dash followed by a word becomes a long option (single letters
/// such as `-h` stay short options); nothing after `--` changes.
fn long_options(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut rest = false;
    for (i, arg) in args.into_iter().enumerate() {
        if i == 0 || rest {
            out.push(arg);
            continue;
        }
        if arg == "--" {
            rest = true;
            out.push(arg);
            continue;
        }
        match arg.to_str() {
            Some(text)
                if text.len() > 2
                    && text.starts_with('-')
                    && text.as_bytes().get(1).is_some_and(|b| b.is_ascii_alphabetic()) =>
            {
                out.push(format!("-{text}").into());
            }
            _ => out.push(arg),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------------------------

fn exit(code: u8, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Exit::new(code, message))
}

fn main() -> ExitCode {
    match fides_cli::parse_from::<Cli, _, _>("bsubmit", long_options(std::env::args_os())) {
        // Only what bsubmit prints itself: the library's warnings are not for submitters.
        Ok(cli) => fides_cli::main_with("bsubmit", Logging::Off, run(cli)),
        Err(code) => code,
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let home = Home::locate();
    match cli.command {
        Command::Config(args) => config(&home?, args),
        Command::Upload(args) => upload(&home?, cli.cluster.as_deref(), args).await,
        Command::Resend(args) => resend(&home?, cli.cluster.as_deref(), args).await,
        Command::Records(args) => records(&home?, cli.cluster.as_deref(), args).await,
        Command::Verify(args) => verify(home.ok().as_ref(), cli.cluster.as_deref(), args),
    }
}

// ---------------------------------------------------------------------------------------------
// ~/.bistro and the config
// ---------------------------------------------------------------------------------------------

/// The `~/.bistro` directory.
struct Home {
    root: PathBuf,
    /// `$HOME`, to show paths under it as `~/…`.
    user_home: Option<PathBuf>,
}

impl Home {
    fn locate() -> anyhow::Result<Home> {
        let user_home = std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
        if let Some(root) = std::env::var_os("BISTRO_HOME").filter(|h| !h.is_empty()) {
            return Ok(Home { root: PathBuf::from(root), user_home });
        }
        let Some(home) = user_home.clone() else {
            bail!("cannot find your home directory: set HOME (or BISTRO_HOME for the bistro directory)");
        };
        Ok(Home { root: home.join(".bistro"), user_home })
    }

    fn config_path(&self) -> PathBuf {
        self.root.join("config")
    }

    fn tickets(&self, event: &EventId) -> PathBuf {
        self.root.join("tickets").join(event.to_string())
    }

    fn commits(&self, event: &EventId) -> PathBuf {
        self.root.join("commits").join(event.to_string())
    }

    /// `path` for people: `~/…` when under `$HOME`.
    fn show(&self, path: &Path) -> String {
        if let Some(rest) = self.user_home.as_ref().and_then(|home| path.strip_prefix(home).ok()) {
            return Path::new("~").join(rest).display().to_string();
        }
        path.display().to_string()
    }
}

/// The settings: `key=value` lines, in file order.
#[derive(Default)]
struct Config {
    entries: Vec<(String, String)>,
}

const CONFIG_KEYS: [&str; 2] = ["email", "cluster"];

impl Config {
    fn load(path: &Path) -> anyhow::Result<Config> {
        let text = match read_text(path) {
            Ok(text) => text,
            Err(error) if error.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::NotFound) => {
                return Ok(Config::default())
            }
            Err(error) => return Err(error),
        };
        let mut entries: Vec<(String, String)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                bail!("{} line {}: {line:?} is not key=value", path.display(), i + 1);
            };
            let (key, value) = (key.trim().to_string(), value.trim().to_string());
            entries.retain(|(k, _)| *k != key);
            entries.push((key, value));
        }
        Ok(Config { entries })
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }

    fn set(&mut self, key: &str, value: String) {
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.entries.push((key.to_string(), value)),
        }
    }

    fn render(&self) -> String {
        let mut out = String::from("# bsubmit settings (bsubmit config -set key=value)\n");
        for (key, value) in &self.entries {
            out.push_str(&format!("{key}={value}\n"));
        }
        out
    }
}

/// Whether `email` can be a ticket's contact.
fn check_email(email: &str) -> anyhow::Result<()> {
    if email.len() > FIELD_MAX {
        bail!("the e-mail address is {} bytes long; at most {FIELD_MAX} are allowed", email.len());
    }
    let Some((local, domain)) = email.split_once('@') else {
        bail!("{email:?} is not an e-mail address (it has no @)");
    };
    if local.is_empty() || domain.is_empty() || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("{email:?} is not an e-mail address");
    }
    Ok(())
}

fn config(home: &Home, args: ConfigArgs) -> anyhow::Result<()> {
    let path = home.config_path();
    let mut settings = Config::load(&path)?;
    for assignment in &args.set {
        let Some((key, value)) = assignment.split_once('=') else {
            return Err(exit(
                2,
                format!("-set {assignment:?}: write it as key=value, e.g. -set email=you@example.org"),
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "email" => check_email(value)?,
            "cluster" => {
                let cluster = fides_dealer::read_cluster(Path::new(value))
                    .map_err(|e| anyhow!("-set cluster={value}: not a usable cluster file: {e}"))?;
                let absolute = fs::canonicalize(value).with_context(|| format!("-set cluster={value}"))?;
                out!("Cluster {} ({} replicas) at {}", cluster.id(), cluster.quorum().n(), absolute.display());
                settings.set(key, absolute.display().to_string());
                continue;
            }
            other => {
                return Err(exit(2, format!("unknown setting {other:?}; the settings are {}", CONFIG_KEYS.join(", "))))
            }
        }
        settings.set(key, value.to_string());
    }
    if !args.set.is_empty() {
        fs::create_dir_all(&home.root).with_context(|| format!("cannot create {}", home.root.display()))?;
        write_atomically(&path, settings.render().as_bytes(), true)?;
        out!("Saved in {}", home.show(&path));
    }
    if args.show || args.set.is_empty() {
        if settings.entries.is_empty() {
            out!("No settings in {} yet.", home.show(&path));
        }
        for (key, value) in &settings.entries {
            out!("{key}={value}");
        }
    }
    Ok(())
}

/// The cluster file: `--cluster`, else `$BISTRO_CLUSTER`, else the config's `cluster=`.
fn load_cluster(home: Option<&Home>, given: Option<&Path>) -> anyhow::Result<ClusterFile> {
    let path = match given {
        Some(path) => path.to_path_buf(),
        None => match std::env::var_os("BISTRO_CLUSTER").filter(|v| !v.is_empty()) {
            Some(path) => PathBuf::from(path),
            None => {
                let settings = match home {
                    Some(home) => Config::load(&home.config_path())?,
                    None => Config::default(),
                };
                match settings.get("cluster") {
                    Some(path) => PathBuf::from(path),
                    None => bail!(
                        "no cluster file: give --cluster PATH, set BISTRO_CLUSTER, \
                         or run `bsubmit config -set cluster=PATH`"
                    ),
                }
            }
        },
    };
    fides_dealer::read_cluster(&path).map_err(|e| anyhow!("cluster file {}: {e}", path.display()))
}

fn parse_event(text: &str) -> anyhow::Result<EventId> {
    EventId::parse(text).map_err(|reason| exit(2, format!("-event: {reason}")))
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

fn read_text(path: &Path) -> anyhow::Result<String> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut text = String::new();
    file.take(TEXT_MAX + 1).read_to_string(&mut text).with_context(|| format!("cannot read {}", path.display()))?;
    if text.len() as u64 > TEXT_MAX {
        bail!("{} is larger than {TEXT_MAX} bytes: not a bistro text file", path.display());
    }
    Ok(text)
}

/// A temporary name next to `path`.
fn temporary(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{:016x}.tmp", rand::random::<u64>()))
}

/// Write `bytes` to `path` through a temporary file and a rename; if `replace` is false, an
/// existing `path` is kept and this fails.
fn write_atomically(path: &Path, bytes: &[u8], replace: bool) -> anyhow::Result<()> {
    let tmp = temporary(path);
    let result = (|| -> io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        Ok(())
    })()
    .with_context(|| format!("cannot write {}", tmp.display()))
    .and_then(|()| place(&tmp, path, replace));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Move the finished temporary file `tmp` to `path`.
fn place(tmp: &Path, path: &Path, replace: bool) -> anyhow::Result<()> {
    if replace {
        fs::rename(tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
    } else {
        // A hard link fails if `path` exists, so nothing is ever overwritten.
        fs::hard_link(tmp, path).with_context(|| format!("cannot create {}", path.display()))?;
        let _ = fs::remove_file(tmp);
    }
    if let Some(dir) = path.parent() {
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

fn create_dir(path: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(path).with_context(|| format!("cannot create the directory {}", path.display()))
}

fn progress_bar(size: u64, what: &str) -> Option<ProgressBar> {
    if size <= PROGRESS_MIN {
        return None;
    }
    let bar = ProgressBar::new(size);
    let style = ProgressStyle::with_template("{msg:>10} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})")
        .map(|style| style.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(what.to_string());
    Some(bar)
}

/// Reads `inner`, copies what it read to `copy` and shows progress.
struct Tee<R, W> {
    inner: R,
    copy: W,
    count: u64,
    bar: Option<ProgressBar>,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.copy.write_all(&buf[..read])?;
        self.count += read as u64;
        if let Some(bar) = &self.bar {
            bar.set_position(self.count);
        }
        Ok(read)
    }
}

/// The digest of a file under `hash`, and its size.
fn digest_file(path: &Path, hash: HashAlg) -> anyhow::Result<([u8; 32], u64)> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut tee = Tee { inner: BufReader::new(file), copy: io::sink(), count: 0, bar: progress_bar(size, "hashing") };
    let (digest, size) = digest_reader(hash, &mut tee).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
    if let Some(bar) = &tee.bar {
        bar.finish_and_clear();
    }
    Ok((digest, size))
}

/// The last part of `path`, as a ticket's file name (at most [`FIELD_MAX`] bytes).
fn ticket_file_name(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut end = name.len().min(FIELD_MAX);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

fn short_key(key: &[u8; 32]) -> String {
    hex::encode(&key[..SHORT_KEY])
}

// ---------------------------------------------------------------------------------------------
// Talking to the cluster
// ---------------------------------------------------------------------------------------------

fn client_error(what: &str, error: ClientError) -> anyhow::Error {
    anyhow!("{what}: {error}")
}

fn connect(cluster: ClusterFile) -> anyhow::Result<BistroClient> {
    BistroClient::connect(cluster).map_err(|e| client_error("cannot use the cluster file", e))
}

/// The event's verified record.
async fn get_event(client: &BistroClient, event: EventId) -> anyhow::Result<EventRecord> {
    match client.get_event(event).await {
        Ok((record, proof)) => {
            // The client verified it; checking again costs one pairing and keeps this program
            // honest on its own.
            client
                .verify_record(&Signed::Event(record.clone()), &proof)
                .map_err(|e| anyhow!("the cluster's record of event {event} does not verify: {e}"))?;
            Ok(record)
        }
        Err(ClientError::Status { code: Code::NotFound, .. }) => {
            Err(anyhow!("the cluster has no event {event}; check the event id"))
        }
        Err(error) => Err(client_error(&format!("cannot get event {event}"), error)),
    }
}

/// An intermediary to try: what to call it, and where it is.
struct Intermediary {
    name: String,
    address: String,
}

/// Intermediaries in the order to try them: `via` alone if given; else the relays (if
/// `relays_first`) in random order, then the replicas in random order.
async fn intermediaries(client: &BistroClient, via: Option<&str>, relays_first: bool) -> Vec<Intermediary> {
    if let Some(address) = via {
        return vec![Intermediary { name: format!("intermediary {address}"), address: address.to_string() }];
    }
    let mut rng = rand::thread_rng();
    let mut out = Vec::new();
    if relays_first {
        match client.list_relays().await {
            Ok(mut relays) => {
                relays.shuffle(&mut rng);
                out.extend(relays.into_iter().map(|relay| Intermediary {
                    name: format!("relay {} ({})", short_key(&relay.key), relay.address),
                    address: relay.address,
                }));
            }
            Err(error) => err!("Cannot list the relays ({error}); uploading directly to a replica."),
        }
    }
    let mut replicas: Vec<Intermediary> = client
        .cluster()
        .replicas()
        .iter()
        .map(|replica| Intermediary {
            name: format!("replica {} ({})", replica.index.0, replica.client_address),
            address: replica.client_address.to_string(),
        })
        .collect();
    replicas.shuffle(&mut rng);
    out.extend(replicas);
    out
}

/// Upload the commit file to the first intermediary that takes it; write and show the receipt.
async fn upload_commit(
    home: &Home,
    client: &BistroClient,
    event: EventId,
    ticket: u64,
    commit: &Path,
    targets: Vec<Intermediary>,
) -> anyhow::Result<()> {
    let size = fs::metadata(commit).with_context(|| format!("cannot read {}", commit.display()))?.len();
    let (hash, _) = digest_file(commit, HashAlg::Sha256)?;
    let count = targets.len();
    for (i, target) in targets.into_iter().enumerate() {
        let bar = progress_bar(size, "uploading");
        let mut progress = |sent: u64| {
            if let Some(bar) = &bar {
                bar.set_position(sent);
            }
        };
        let result = client.upload(&target.address, commit, &mut progress).await;
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        let failure = match result {
            Ok((receipt, signature)) => match check_receipt(client, &receipt, &signature, event, ticket, hash, size) {
                Ok(()) => return save_receipt(home, client, &receipt, &signature, &target.name),
                Err(reason) => reason,
            },
            Err(error) => error.to_string(),
        };
        let next = if i + 1 < count { "trying the next intermediary" } else { "no intermediary is left" };
        err!("The upload to {} failed: {}; {next}.", target.name, failure.replace('\n', " "));
    }
    Err(exit(
        4,
        format!(
            "no intermediary took the encrypted file; your ticket is kept: try again later with \
             `bsubmit resend -event {event} -ticket {ticket}`"
        ),
    ))
}

fn check_receipt(
    client: &BistroClient,
    receipt: &Receipt,
    signature: &[u8; 64],
    event: EventId,
    ticket: u64,
    hash: [u8; 32],
    size: u64,
) -> Result<(), String> {
    if !receipt.verify(&client.cluster_id(), signature) {
        return Err("its receipt's signature does not verify".into());
    }
    if receipt.event != event || receipt.ticket != ticket {
        return Err(format!("its receipt is for ticket {} of event {}", receipt.ticket, receipt.event));
    }
    if receipt.upload_hash != hash || receipt.upload_size != size {
        return Err("its receipt names another file (hash or size differ)".into());
    }
    Ok(())
}

fn save_receipt(
    home: &Home,
    client: &BistroClient,
    receipt: &Receipt,
    signature: &[u8; 64],
    intermediary: &str,
) -> anyhow::Result<()> {
    let cluster = client.cluster_id();
    let dir = home.tickets(&receipt.event);
    create_dir(&dir)?;
    let text = render_receipt(&cluster, receipt, signature);
    verify_receipt_text(&text, &cluster).map_err(|e| anyhow!("the receipt file does not verify: {e}"))?;
    let name = format!("{}_{}.bri", short_key(&receipt.intermediary), receipt.receipt_id);
    write_atomically(&dir.join(&name), text.as_bytes(), true)?;
    out!("Verification Successful");
    out!("    The receipt (which has been successfully verified) for this submission");
    out!("    has been placed in {name}");
    out!("    in the following directory:");
    out!("        {}", home.show(&dir));
    out!("    The intermediary that took the encrypted submission is {intermediary}.");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// upload
// ---------------------------------------------------------------------------------------------

async fn upload(home: &Home, cluster_path: Option<&Path>, args: UploadArgs) -> anyhow::Result<()> {
    let settings = Config::load(&home.config_path())?;
    let Some(email) = args.email.clone().or_else(|| settings.get("email").map(str::to_string)) else {
        return Err(anyhow::Error::new(Exit::bare(2, NO_EMAIL)));
    };
    check_email(&email)?;
    let event = parse_event(&args.event)?;
    let file_size = fs::metadata(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))
        .and_then(|m| if m.is_file() { Ok(m.len()) } else { bail!("{} is not a file", args.file.display()) })?;
    let cluster = load_cluster(Some(home), cluster_path)?;
    let cluster_id = cluster.id().0;
    let public = cluster.signing().public_key();
    let encryption = cluster.encryption().public_key();
    let client = connect(cluster)?;
    let record = get_event(&client, event).await?;

    // Copy the file while hashing it: the copy, the ticket and the encrypted file are of the
    // same bytes even if the original changes meanwhile.
    let tickets = home.tickets(&event);
    create_dir(&tickets)?;
    let copy_tmp = temporary(&tickets.join("upload.dat"));
    let hashed = copy_and_digest(&args.file, &copy_tmp, record.terms.hash, file_size);
    let (digest, size) = match hashed {
        Ok(hashed) => hashed,
        Err(error) => {
            let _ = fs::remove_file(&copy_tmp);
            return Err(error);
        }
    };
    let request =
        TicketRequest { event, digest: digest.to_vec(), size, contact: email, file_name: ticket_file_name(&args.file) };
    let ticket = match client.request_ticket(request).await {
        Ok((ticket, proof)) => save_ticket(home, &cluster_id, &public, &ticket, &proof, &copy_tmp),
        Err(error) => Err(ticket_refused(event, error)),
    };
    let ticket = match ticket {
        Ok(ticket) => ticket,
        Err(error) => {
            let _ = fs::remove_file(&copy_tmp);
            // Only removes the directory if it is empty (this was the event's first try).
            let _ = fs::remove_dir(&tickets);
            return Err(error);
        }
    };
    let n = ticket.ticket;

    let commits = home.commits(&event);
    create_dir(&commits)?;
    let commit = commits.join(n.to_string());
    seal(&cluster_id, &encryption, &record, n, &tickets.join(format!("{n}.dat")), &commit)?;
    let targets = intermediaries(&client, args.via.as_deref(), true).await;
    let uploaded = upload_commit(home, &client, event, n, &commit, targets).await;
    out!("    The encrypted submission has been placed in");
    out!("    {n} in the following directory:");
    out!("        {}", home.show(&commits));
    uploaded
}

fn copy_and_digest(source: &Path, copy: &Path, hash: HashAlg, size: u64) -> anyhow::Result<([u8; 32], u64)> {
    let input = File::open(source).with_context(|| format!("cannot open {}", source.display()))?;
    let output = File::create(copy).with_context(|| format!("cannot create {}", copy.display()))?;
    let mut tee = Tee {
        inner: BufReader::new(input),
        copy: BufWriter::new(output),
        count: 0,
        bar: progress_bar(size, "hashing"),
    };
    let (digest, size) = digest_reader(hash, &mut tee).map_err(|e| anyhow!("cannot read {}: {e}", source.display()))?;
    if let Some(bar) = &tee.bar {
        bar.finish_and_clear();
    }
    let output = tee
        .copy
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write {}", copy.display()))?;
    output.sync_all().with_context(|| format!("cannot write {}", copy.display()))?;
    Ok((digest, size))
}

/// Why the cluster gave no ticket, for people (the deadline has its own exit status).
fn ticket_refused(event: EventId, error: ClientError) -> anyhow::Error {
    match error {
        ClientError::Status { code: Code::FailedPrecondition, message } => {
            exit(3, format!("no ticket for event {event}: {message}"))
        }
        ClientError::Status { code: Code::NotFound, message } => anyhow!("no ticket: {message}"),
        error => client_error("no ticket", error),
    }
}

/// Write `N.bti` (verified) and move the copy to `N.dat`; print where they are.
fn save_ticket(
    home: &Home,
    cluster: &[u8; 32],
    public: &blsttc::PublicKey,
    ticket: &Ticket,
    proof: &EpochProof,
    copy: &Path,
) -> anyhow::Result<Ticket> {
    let text = render_ticket(cluster, ticket, proof);
    let (verified, _) =
        verify_ticket_text(&text, cluster, public).map_err(|e| anyhow!("the ticket file does not verify: {e}"))?;
    let dir = home.tickets(&ticket.event);
    let n = verified.ticket;
    let bti = dir.join(format!("{n}.bti"));
    write_atomically(&bti, text.as_bytes(), false)
        .with_context(|| format!("ticket {n} was issued but {} exists already", bti.display()))?;
    place(copy, &dir.join(format!("{n}.dat")), true)?;
    let shown = home.show(&dir);
    out!("Verification Successful");
    out!("    The timestamped upload ticket (which has been successfully verified) for");
    out!("    this submission has been placed in {n}.bti in the following directory:");
    out!("        {shown}");
    out!("    A copy of your submission has been placed in {n}.dat in the");
    out!("    following directory:");
    out!("        {shown}");
    out!("    The timestamp (time at the server) is '{}'.", format_time(verified.time_ms));
    Ok(verified)
}

/// Encrypt `plain` into the commit file `commit` (through a temporary file).
fn seal(
    cluster: &[u8; 32],
    encryption: &blsttc::PublicKey,
    record: &EventRecord,
    ticket: u64,
    plain: &Path,
    commit: &Path,
) -> anyhow::Result<()> {
    let input = File::open(plain).with_context(|| format!("cannot open {}", plain.display()))?;
    let size = input.metadata().map(|m| m.len()).unwrap_or(0);
    let tmp = temporary(commit);
    let result = (|| -> anyhow::Result<()> {
        let output = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut writer = BufWriter::new(output);
        let bar = progress_bar(size, "encrypting");
        let mut progress = |done: u64| {
            if let Some(bar) = &bar {
                bar.set_position(done);
            }
        };
        seal_commit(
            cluster,
            encryption,
            record.terms.aead,
            &record.event,
            ticket,
            BufReader::new(input),
            &mut writer,
            &mut rand::rngs::OsRng,
            &mut progress,
        )
        .map_err(|e| anyhow!("cannot encrypt {}: {e}", plain.display()))?;
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        let output = writer
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        output.sync_all().with_context(|| format!("cannot write {}", tmp.display()))?;
        place(&tmp, commit, true)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

// ---------------------------------------------------------------------------------------------
// resend
// ---------------------------------------------------------------------------------------------

async fn resend(home: &Home, cluster_path: Option<&Path>, args: ResendArgs) -> anyhow::Result<()> {
    let event = parse_event(&args.event)?;
    let commit = home.commits(&event).join(args.ticket.to_string());
    let mut file = File::open(&commit)
        .with_context(|| format!("there is no encrypted file of ticket {} of event {event}", args.ticket))?;
    let header = CommitHeader::read(&mut file).map_err(|e| anyhow!("{}: {e}", commit.display()))?;
    if header.event != event || header.ticket != args.ticket {
        bail!(
            "{} is the encrypted file of ticket {} of event {}, not this one",
            commit.display(),
            header.ticket,
            header.event
        );
    }
    let cluster = load_cluster(Some(home), cluster_path)?;
    let client = connect(cluster)?;
    let targets = intermediaries(&client, args.via.as_deref(), false).await;
    upload_commit(home, &client, event, args.ticket, &commit, targets).await
}

// ---------------------------------------------------------------------------------------------
// records
// ---------------------------------------------------------------------------------------------

/// A local ticket file and what became of it.
struct Local {
    name: String,
    ticket: Ticket,
}

async fn records(home: &Home, cluster_path: Option<&Path>, args: RecordsArgs) -> anyhow::Result<()> {
    let event = parse_event(&args.event)?;
    let cluster = load_cluster(Some(home), cluster_path)?;
    let cluster_id = cluster.id().0;
    let public = cluster.signing().public_key();
    let t = cluster.quorum().t();
    let n = cluster.quorum().n();
    let replica_keys: HashMap<[u8; 32], u32> =
        cluster.replicas().iter().map(|r| (r.identity.to_bytes(), r.index.0)).collect();
    let dir = home.tickets(&event);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            out!("You have no tickets for event {event} (nothing in {}).", home.show(&dir));
            return Ok(());
        }
        Err(error) => return Err(anyhow!("cannot list {}: {error}", dir.display())),
    };
    let mut names: Vec<String> =
        entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();

    let mut tickets: BTreeMap<u64, Local> = BTreeMap::new();
    let mut receipts: BTreeMap<u64, Vec<(String, Receipt)>> = BTreeMap::new();
    let mut problems = Vec::new();
    for name in &names {
        let path = dir.join(name);
        if name.ends_with(".bti") {
            match read_text(&path).and_then(|text| Ok(verify_ticket_text(&text, &cluster_id, &public)?)) {
                Ok((ticket, _)) if ticket.event == event => {
                    tickets.insert(ticket.ticket, Local { name: name.clone(), ticket });
                }
                Ok((ticket, _)) => {
                    problems.push(format!("{name}: a ticket of event {}, not of this one", ticket.event))
                }
                Err(error) => problems.push(format!("{name}: does not verify: {error:#}")),
            }
        } else if name.ends_with(".bri") {
            match read_text(&path).and_then(|text| Ok(verify_receipt_text(&text, &cluster_id)?)) {
                Ok(receipt) if receipt.event == event => {
                    receipts.entry(receipt.ticket).or_default().push((name.clone(), receipt))
                }
                Ok(receipt) => problems.push(format!("{name}: a receipt of event {}, not of this one", receipt.event)),
                Err(error) => problems.push(format!("{name}: does not verify: {error:#}")),
            }
        }
    }
    if tickets.is_empty() {
        out!("You have no verified tickets for event {event} in {}.", home.show(&dir));
        for problem in &problems {
            out!("Warning: {problem}");
        }
        return Ok(());
    }

    let client = connect(cluster)?;
    let relays: HashMap<[u8; 32], RelayInfo> = match client.list_relays().await {
        Ok(relays) => relays.into_iter().map(|relay| (relay.key, relay)).collect(),
        Err(_) => HashMap::new(),
    };
    let numbers: Vec<u64> = tickets.keys().copied().collect();
    let mut states: HashMap<u64, TicketState> = HashMap::new();
    let mut status: Option<StatusRecord> = None;
    for chunk in numbers.chunks(STATUS_TICKETS_MAX) {
        let (record, proof) = client
            .status(event, chunk.to_vec())
            .await
            .map_err(|e| client_error(&format!("cannot get the status of event {event}"), e))?;
        client
            .verify_record(&Signed::Status(record.clone()), &proof)
            .map_err(|e| anyhow!("the cluster's status record does not verify: {e}"))?;
        states.extend(record.tickets.iter().map(|state| (state.ticket, state.clone())));
        status = Some(record);
    }
    let Some(status) = status else { bail!("the cluster sent no status") };

    out!("Event {event}: {} ticket(s) in {}", tickets.len(), home.show(&dir));
    out!(
        "    Status signed by the cluster as of '{}'; the deadline has {}passed; the owner collected {} time(s).",
        format_time(status.as_of_ms),
        if status.deadline_passed { "" } else { "not " },
        status.collections
    );
    for (number, local) in &tickets {
        let ticket = &local.ticket;
        let name =
            if ticket.file_name.is_empty() { "(no name)".to_string() } else { format!("{:?}", ticket.file_name) };
        out!();
        out!(
            "Ticket {number} ({}): '{}', {name}, {} bytes, {} {}",
            local.name,
            format_time(ticket.time_ms),
            ticket.size,
            hash_name(ticket.hash),
            hex::encode(ticket.digest)
        );
        let commit_exists = home.commits(&event).join(number.to_string()).exists();
        match states.get(number) {
            Some(state) if !state.issued => {
                out!("    WARNING: the cluster says it never issued this ticket.");
            }
            Some(state) if state.uploads.is_empty() => {
                out!("    No upload of it reached the cluster yet.");
                if commit_exists {
                    out!("    Send it again with `bsubmit resend -event {event} -ticket {number}`.");
                }
            }
            Some(state) => {
                for upload in &state.uploads {
                    let holders: Vec<String> = upload
                        .intermediaries
                        .iter()
                        .map(|key| match (replica_keys.get(key), relays.get(key)) {
                            (Some(index), _) => format!("replica {index}"),
                            (None, Some(relay)) => format!("relay {} ({})", short_key(key), relay.address),
                            (None, None) => format!("intermediary {}", short_key(key)),
                        })
                        .collect();
                    let stored = upload.stored_by.len() as u32;
                    out!("    Upload of {} bytes (sha256 {}):", upload.upload_size, hex::encode(upload.upload_hash));
                    out!(
                        "        intermediaries: {}",
                        if holders.is_empty() { "none".into() } else { holders.join(", ") }
                    );
                    out!(
                        "        stored by {stored} of {n} replicas: {}",
                        if stored > t { "transferred" } else { "not yet transferred" }
                    );
                    out!("        collected: {}", if upload.collected { "yes" } else { "no" });
                    if upload.overdue {
                        out!(
                            "        OVERDUE: the intermediary did not deliver; run \
                             `bsubmit resend -event {event} -ticket {number}`"
                        );
                    }
                }
            }
            None => out!("    The cluster's status does not mention this ticket."),
        }
        for (name, receipt) in receipts.get(number).map(Vec::as_slice).unwrap_or_default() {
            out!(
                "    Receipt {name}: intermediary {}, '{}', {} bytes",
                short_key(&receipt.intermediary),
                format_time(receipt.time_ms),
                receipt.upload_size
            );
        }
    }
    for problem in &problems {
        out!("Warning: {problem}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// verify
// ---------------------------------------------------------------------------------------------

fn verify(home: Option<&Home>, cluster_path: Option<&Path>, args: VerifyArgs) -> anyhow::Result<()> {
    let text = read_text(&args.signed)?;
    let cluster = load_cluster(home, cluster_path)?;
    let cluster_id = cluster.id().0;
    let shown = args.signed.display();
    let is_receipt = text.lines().any(|line| line.trim() == "[receipt]");
    if is_receipt {
        let receipt = verify_receipt_text(&text, &cluster_id).map_err(|e| anyhow!("{shown}: {e}"))?;
        out!("Verification Successful");
        out!("    {shown} is a receipt signed by intermediary {}", hex::encode(receipt.intermediary));
        out!("    for ticket {} of event {} of cluster {}:", receipt.ticket, receipt.event, cluster.id());
        out!(
            "    it took {} encrypted bytes at '{}' (its own clock).",
            receipt.upload_size,
            format_time(receipt.time_ms)
        );
        if let Some(file) = &args.file {
            let (digest, size) = digest_file(file, HashAlg::Sha256)?;
            compare(file, "encrypted file", "sha256", &digest, size, &receipt.upload_hash, receipt.upload_size)?;
        }
        return Ok(());
    }
    let (ticket, proof) =
        verify_ticket_text(&text, &cluster_id, &cluster.signing().public_key()).map_err(|e| anyhow!("{shown}: {e}"))?;
    out!("Verification Successful");
    out!("    {shown} is ticket {} of event {}, signed by cluster {}", ticket.ticket, ticket.event, cluster.id());
    out!("    (epoch {}, leaf {} of {}).", proof.epoch, proof.index + 1, proof.count);
    let name = if ticket.file_name.is_empty() { String::new() } else { format!(" {:?},", ticket.file_name) };
    out!(
        "    It is for{name} {} bytes, {} {}, from {}.",
        ticket.size,
        hash_name(ticket.hash),
        hex::encode(ticket.digest),
        text::escape(&ticket.contact)
    );
    out!("    The timestamp (time at the server) is '{}'.", format_time(ticket.time_ms));
    if let Some(file) = &args.file {
        let (digest, size) = digest_file(file, ticket.hash)?;
        compare(file, "file", hash_name(ticket.hash), &digest, size, &ticket.digest, ticket.size)?;
    }
    Ok(())
}

fn compare(
    file: &Path,
    what: &str,
    hash: &str,
    digest: &[u8; 32],
    size: u64,
    expected: &[u8; 32],
    expected_size: u64,
) -> anyhow::Result<()> {
    let shown = file.display();
    if digest != expected {
        bail!(
            "{shown} does NOT match: its {hash} digest is {}, the signed one is {}",
            hex::encode(digest),
            hex::encode(expected)
        );
    }
    if size != expected_size {
        bail!("{shown} does NOT match: it has {size} bytes, the signed size is {expected_size}");
    }
    out!("Verification Successful");
    out!("    The {what} {shown} matches: same {hash} digest, same size ({size} bytes).");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        long_options(list.iter().map(OsString::from)).into_iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn single_dash_words_become_long_options() {
        assert_eq!(
            args(&["bsubmit", "upload", "-event", "ab", "-file", "-x", "--via", "h:1", "-h", "--", "-event"]),
            ["bsubmit", "upload", "--event", "ab", "--file", "-x", "--via", "h:1", "-h", "--", "-event"]
        );
        assert_eq!(args(&["bsubmit", "config", "-set", "email=a@b"]), ["bsubmit", "config", "--set", "email=a@b"]);
    }

    #[test]
    fn e_mail_addresses_are_checked() {
        assert!(check_email("you@example.org").is_ok());
        for bad in ["", "you", "@x", "you@", "a b@c", "a@b\n"] {
            assert!(check_email(bad).is_err(), "{bad:?}");
        }
    }
}
