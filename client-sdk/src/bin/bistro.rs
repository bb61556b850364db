//! `bistro`: the event owner's and the operator's command line for the timestamping bistro.
//!
//! ```text
//! bistro keygen --out owner.key
//! bistro event create --owner-key K --deadline WHEN --description D [--hash H] [--aead A]
//!                     [--transfer-window SECONDS] [--save FILE]
//! bistro event show EVID [--save FILE]
//! bistro event list
//! bistro collect --owner-key K --event EVID --out DIR
//! bistro relay --data DIR [--listen HOST:PORT] [--advertise HOST:PORT]
//! ```
//!
//! Every command that talks to the cluster takes `--cluster PATH` (the public cluster file),
//! else `$BISTRO_CLUSTER`. Exit status: 0 done; 1 failed (one line on stderr says why), or for
//! `collect`, some upload was not verified; 2 bad usage.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use ed25519_dalek::SigningKey;
use fides_bistro::records::{EventId, EventRecord, EventTerms, DESCRIPTION_MAX};
use fides_bistro::service::format_time;
use fides_bistro::stream::{Aead, HashAlg};
use fides_bistro::text::render_event;
use fides_cli::Logging;
use fides_client_sdk::bistro::BistroClient;
use fides_client_sdk::collect::{collect, Manifest, Progress, UploadStatus};
use fides_client_sdk::relay::{run_relay, RelayConfig};
use fides_dealer::ClusterFile;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::OsRng;
use rand::RngCore;

/// `println!` that never panics: a closed stdout (as in `bistro event list | head`) is ignored.
macro_rules! out {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// `eprintln!` that never panics.
macro_rules! err {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// Largest key file read.
const KEY_FILE_MAX: u64 = 4096;
/// Events asked for per `ListEvents` call.
const LIST_PAGE: u32 = 100;
/// Uploads larger than this get a progress bar while they are fetched.
const PROGRESS_MIN: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------------

#[derive(Parser, Debug)]
#[command(
    name = "bistro",
    version,
    about = "Create and collect upload events of a Fides timestamping bistro, and run relays."
)]
struct Cli {
    /// The public cluster file (cluster.toml); default: $BISTRO_CLUSTER.
    #[arg(long, global = true, value_name = "PATH")]
    cluster: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Make an Ed25519 owner key (hex, readable by you alone) and print its public key.
    Keygen {
        /// Where to write it; an existing file is never overwritten.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Create, show or list upload events.
    #[command(subcommand)]
    Event(EventCommand),
    /// Collect an event's uploads as its owner: decrypt and verify each file, save it in DIR, and
    /// write DIR/manifest.txt. Exit status 1 unless every upload was verified.
    Collect {
        /// The owner's key file (made by `bistro keygen`).
        #[arg(long, value_name = "FILE")]
        owner_key: PathBuf,
        /// The event id (32 hex digits).
        #[arg(long, value_name = "EVID")]
        event: String,
        /// Where to put the files and the manifest (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Run a relay: an untrusted intermediary that takes encrypted uploads and hands them on to
    /// the replicas. Stops on Ctrl-C or SIGTERM.
    Relay {
        /// Its data directory: its key (relay.key, made on first run) and the uploads it holds.
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Where it serves the Intermediary gRPC service.
        #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:7500")]
        listen: SocketAddr,
        /// The address it registers with the cluster [default: the bound listen address].
        #[arg(long, value_name = "HOST:PORT")]
        advertise: Option<String>,
        /// Largest upload it takes, in bytes.
        #[arg(long, value_name = "BYTES", default_value_t = 4 << 30)]
        upload_max: u64,
        /// Fault injection for tests: take uploads but never deliver them.
        #[arg(long, hide = true)]
        never_deliver: bool,
    },
}

#[derive(Subcommand, Debug)]
enum EventCommand {
    /// Create an event signed by the owner's key; prints its id and deadline.
    Create {
        /// The owner's key file (made by `bistro keygen`).
        #[arg(long, value_name = "FILE")]
        owner_key: PathBuf,
        /// The deadline: an RFC 3339 UTC time such as 2026-11-22T12:00:00Z, or from now: +SECONDS,
        /// +Nm (minutes), +Nh (hours), +Nd (days).
        #[arg(long, value_name = "WHEN", allow_hyphen_values = true)]
        deadline: String,
        /// What the event is, for submitters.
        #[arg(long)]
        description: String,
        /// The hash of submitted files: sha256 or blake3.
        #[arg(long, value_name = "NAME", default_value = "sha256")]
        hash: HashAlg,
        /// The AEAD of submitted files: xchacha20-poly1305 or aes-256-gcm.
        #[arg(long, value_name = "NAME", default_value = "xchacha20-poly1305")]
        aead: Aead,
        /// Seconds after the deadline that intermediaries have to deliver uploads.
        #[arg(long, value_name = "SECONDS", default_value_t = 600)]
        transfer_window: u64,
        /// Also save the signed event record (a text file anyone can verify offline).
        #[arg(long, value_name = "FILE")]
        save: Option<PathBuf>,
    },
    /// Fetch an event's signed record, verify it and print it.
    Show {
        /// The event id (32 hex digits).
        #[arg(value_name = "EVID")]
        event: String,
        /// Also save the signed event record.
        #[arg(long, value_name = "FILE")]
        save: Option<PathBuf>,
    },
    /// List the cluster's events (unsigned; `event show` verifies one).
    List,
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

fn main() -> ExitCode {
    let cli = match fides_cli::parse::<Cli>("bistro") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    // A relay is a server: it says what it does; otherwise only warnings.
    let logging =
        Logging::Text(if matches!(cli.command, Command::Relay { .. }) { "info,h2=warn,tower=warn" } else { "warn" });
    fides_cli::main_with("bistro", logging, run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let cluster = cli.cluster.as_deref();
    match cli.command {
        Command::Keygen { out } => keygen(&out),
        Command::Event(EventCommand::Create {
            owner_key,
            deadline,
            description,
            hash,
            aead,
            transfer_window,
            save,
        }) => {
            let request = CreateRequest { deadline, description, hash, aead, transfer_window, save };
            create_event(cluster, &owner_key, request).await
        }
        Command::Event(EventCommand::Show { event, save }) => show_event(cluster, &event, save.as_deref()).await,
        Command::Event(EventCommand::List) => list_events(cluster).await,
        Command::Collect { owner_key, event, out } => collect_event(cluster, &owner_key, &event, &out).await,
        Command::Relay { data, listen, advertise, upload_max, never_deliver } => {
            let config = RelayConfig {
                cluster_file: cluster_path(cluster)?,
                data,
                listen,
                advertise,
                never_deliver,
                upload_max,
            };
            run_relay(config).await
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

/// The cluster file's path: `--cluster`, else `$BISTRO_CLUSTER`.
fn cluster_path(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    match given {
        Some(path) => Ok(path.to_path_buf()),
        None => match std::env::var_os("BISTRO_CLUSTER").filter(|v| !v.is_empty()) {
            Some(path) => Ok(PathBuf::from(path)),
            None => bail!("no cluster file: give --cluster PATH or set BISTRO_CLUSTER"),
        },
    }
}

fn load_cluster(given: Option<&Path>) -> anyhow::Result<ClusterFile> {
    let path = cluster_path(given)?;
    fides_dealer::read_cluster(&path).map_err(|e| anyhow!("cluster file {}: {e}", path.display()))
}

fn parse_event(text: &str) -> anyhow::Result<EventId> {
    EventId::parse(text).map_err(|reason| anyhow!("{reason}"))
}

/// Create `path` for writing, readable and writable by the owner alone; never overwrites.
fn create_private(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|error| {
        if error.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow!("{} exists already; not overwriting it", path.display())
        } else {
            anyhow!("cannot create {}: {error}", path.display())
        }
    })
}

fn keygen(out: &Path) -> anyhow::Result<()> {
    let key = SigningKey::generate(&mut OsRng);
    let mut file = create_private(out)?;
    let written =
        file.write_all(format!("{}\n", hex::encode(key.to_bytes())).as_bytes()).and_then(|()| file.sync_all());
    if let Err(error) = written {
        let _ = fs::remove_file(out);
        bail!("cannot write {}: {error}", out.display());
    }
    out!("owner key written to {}", out.display());
    out!("public key {}", hex::encode(key.verifying_key().to_bytes()));
    Ok(())
}

/// Read an owner key file: 64 hex digits (32 bytes), surrounding whitespace allowed.
fn read_owner_key(path: &Path) -> anyhow::Result<SigningKey> {
    let file = File::open(path).with_context(|| format!("cannot open the owner key {}", path.display()))?;
    let mut text = String::new();
    file.take(KEY_FILE_MAX + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read the owner key {}", path.display()))?;
    if text.len() as u64 > KEY_FILE_MAX {
        bail!("{} is too large to be an owner key", path.display());
    }
    let bytes = hex::decode(text.trim())
        .map_err(|_| anyhow!("{}: the owner key is not hex (made by `bistro keygen`?)", path.display()))?;
    let secret: [u8; 32] =
        bytes.try_into().map_err(|_| anyhow!("{}: the owner key is not 32 bytes (64 hex digits)", path.display()))?;
    Ok(SigningKey::from_bytes(&secret))
}

/// Write a text file that must not exist yet.
fn save_new(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path).map_err(|error| {
        if error.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow!("{} exists already; not overwriting it", path.display())
        } else {
            anyhow!("cannot create {}: {error}", path.display())
        }
    })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Times
// ---------------------------------------------------------------------------------------------

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A deadline: `+N` seconds (or `+Nm`, `+Nh`, `+Nd`, `+Ns`) after `now_ms`, or an RFC 3339 UTC time.
fn parse_deadline(text: &str, now_ms: u64) -> Result<u64, String> {
    let text = text.trim();
    let Some(relative) = text.strip_prefix('+') else { return parse_rfc3339(text) };
    let (digits, unit) = match relative.char_indices().last() {
        Some((at, unit @ ('s' | 'm' | 'h' | 'd'))) => (&relative[..at], unit),
        _ => (relative, 's'),
    };
    let count: u64 =
        digits.parse().map_err(|_| format!("{text:?} is not +SECONDS, +Nm, +Nh or +Nd (nor an RFC 3339 time)"))?;
    let seconds = match unit {
        'm' => count.checked_mul(60),
        'h' => count.checked_mul(3600),
        'd' => count.checked_mul(86_400),
        _ => Some(count),
    };
    seconds
        .and_then(|s| s.checked_mul(1000))
        .and_then(|ms| ms.checked_add(now_ms))
        .ok_or_else(|| format!("{text:?} is too far in the future"))
}

/// An RFC 3339 time in UTC (`2026-11-22T12:00:00Z`, with or without fractional seconds and the
/// `Z`; `+00:00` is UTC too), in ms since the Unix epoch. Other offsets are refused.
fn parse_rfc3339(text: &str) -> Result<u64, String> {
    let bad = |why: &str| format!("{text:?} is not an RFC 3339 UTC time like 2026-11-22T12:00:00Z: {why}");
    let b = text.as_bytes();
    if b.len() < 19 {
        return Err(bad("too short"));
    }
    let number = |from: usize, len: usize| -> Result<u64, String> {
        let part = &b[from..from + len];
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(bad("a digit is missing"));
        }
        Ok(part.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
    };
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(at, c)| b[at] != c) || !matches!(b[10], b'T' | b't' | b' ') {
        return Err(bad("expected YYYY-MM-DDTHH:MM:SS"));
    }
    let (year, month, day) = (number(0, 4)?, number(5, 2)?, number(8, 2)?);
    let (hour, minute, second) = (number(11, 2)?, number(14, 2)?, number(17, 2)?);
    let mut rest = &b[19..];
    let mut millis = 0u64;
    if let Some((b'.', fraction)) = rest.split_first() {
        let digits = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 9 {
            return Err(bad("fractional seconds need 1 to 9 digits"));
        }
        millis = fraction[..digits.min(3)].iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        millis *= 10u64.pow(3u32.saturating_sub(digits as u32));
        rest = &fraction[digits..];
    }
    match rest {
        b"" | b"Z" | b"z" | b"+00:00" | b"-00:00" => {}
        [b'+' | b'-', ..] => return Err(bad("only UTC is accepted (end with Z)")),
        _ => return Err(bad("unexpected text after the seconds")),
    }
    if year < 1970 {
        return Err(bad("years before 1970 are not accepted"));
    }
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(bad("no such date"));
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(bad("no such time of day"));
    }
    let days = days_from_civil(year, month, day);
    Ok((days * 86_400 + hour * 3600 + minute * 60 + second) * 1000 + millis)
}

fn days_in_month(year: u64, month: u64) -> u64 {
    let leap = (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400);
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a date on or after it (Howard Hinnant's algorithm).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// What `event create` was asked.
struct CreateRequest {
    deadline: String,
    description: String,
    hash: HashAlg,
    aead: Aead,
    transfer_window: u64,
    save: Option<PathBuf>,
}

async fn create_event(cluster: Option<&Path>, owner_key: &Path, request: CreateRequest) -> anyhow::Result<()> {
    let now = now_ms();
    let deadline_ms = parse_deadline(&request.deadline, now).map_err(|e| anyhow!("--deadline: {e}"))?;
    if deadline_ms <= now {
        bail!("--deadline: {} is not in the future", format_time(deadline_ms));
    }
    if request.description.len() > DESCRIPTION_MAX {
        bail!("--description: {} bytes; at most {DESCRIPTION_MAX} allowed", request.description.len());
    }
    let transfer_window_ms = request
        .transfer_window
        .checked_mul(1000)
        .ok_or_else(|| anyhow!("--transfer-window: {} seconds is too long", request.transfer_window))?;
    if let Some(path) = &request.save {
        if path.exists() {
            bail!("--save: {} exists already; not overwriting it", path.display());
        }
    }
    let owner = read_owner_key(owner_key)?;
    let cluster = load_cluster(cluster)?;
    let client = BistroClient::connect(cluster.clone())?;
    let terms = EventTerms {
        deadline_ms,
        description: request.description,
        owner: owner.verifying_key().to_bytes(),
        hash: request.hash,
        aead: request.aead,
        transfer_window_ms,
        nonce: OsRng.next_u64(),
    };
    let signed = client.create_event(terms, &owner).await.context("creating the event")?;
    let record = &signed.record;
    out!("event {}", record.event);
    out!("deadline {}", format_time(record.terms.deadline_ms));
    out!("created {}", format_time(record.created_ms));
    if let Some(path) = &request.save {
        save_new(path, &render_event(&cluster.id().0, record, &signed.proof))?;
        out!("saved the signed event record to {}", path.display());
    }
    Ok(())
}

fn print_event(record: &EventRecord, epoch: u64) {
    let terms = &record.terms;
    let state = if now_ms() > terms.deadline_ms { "closed" } else { "open" };
    out!("event {}", record.event);
    out!("description {}", terms.description.escape_default());
    out!("deadline {} ({state})", format_time(terms.deadline_ms));
    out!("created {} (epoch {epoch})", format_time(record.created_ms));
    out!("owner key {}", hex::encode(terms.owner));
    out!("hash {}", terms.hash.name());
    out!("aead {}", terms.aead.name());
    out!("transfer window {} s", terms.transfer_window_ms / 1000);
    out!("signature verified against the cluster's signing key");
}

async fn show_event(cluster: Option<&Path>, event: &str, save: Option<&Path>) -> anyhow::Result<()> {
    let event = parse_event(event)?;
    if let Some(path) = save {
        if path.exists() {
            bail!("--save: {} exists already; not overwriting it", path.display());
        }
    }
    let cluster = load_cluster(cluster)?;
    let client = BistroClient::connect(cluster.clone())?;
    let (record, proof) = client.get_event(event).await.with_context(|| format!("event {event}"))?;
    print_event(&record, proof.epoch);
    if let Some(path) = save {
        save_new(path, &render_event(&cluster.id().0, &record, &proof))?;
        out!("saved the signed event record to {}", path.display());
    }
    Ok(())
}

async fn list_events(cluster: Option<&Path>) -> anyhow::Result<()> {
    let client = BistroClient::connect(load_cluster(cluster)?)?;
    let now = now_ms();
    let mut after = None;
    let mut count = 0usize;
    loop {
        let page = client.list_events(after, LIST_PAGE).await.context("listing the events")?;
        let Some(last) = page.last() else { break };
        // A replica that answers the same page again would loop forever.
        if after.is_some_and(|after| last.event <= after) {
            bail!("a replica listed events out of order");
        }
        after = Some(last.event);
        for summary in &page {
            let state = if now > summary.deadline_ms { "closed" } else { "open" };
            out!(
                "{}  deadline {} ({state})  tickets {}  collections {}  {}",
                summary.event,
                format_time(summary.deadline_ms),
                summary.tickets,
                summary.collections,
                summary.description.escape_default()
            );
        }
        count += page.len();
        if page.len() < LIST_PAGE as usize {
            break;
        }
    }
    if count == 0 {
        out!("no events");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Collection
// ---------------------------------------------------------------------------------------------

async fn collect_event(cluster: Option<&Path>, owner_key: &Path, event: &str, out: &Path) -> anyhow::Result<()> {
    let event = parse_event(event)?;
    let owner = read_owner_key(owner_key)?;
    let cluster = load_cluster(cluster)?;
    let client = BistroClient::connect(cluster.clone())?;
    let mut bar: Option<(u64, ProgressBar)> = None;
    let mut progress = |step: Progress| match step {
        Progress::Collected { number, uploads } => {
            err!("collection {number} of event {event}: {uploads} uploads");
        }
        Progress::Replica { replica, result: Err(why) } => err!("replica {replica}: {why}"),
        Progress::Replica { .. } => {}
        Progress::Fetching { ticket, received, size } => {
            if size <= PROGRESS_MIN {
                return;
            }
            if bar.as_ref().is_none_or(|(shown, _)| *shown != ticket) {
                bar = Some((ticket, progress_bar(size, &format!("ticket {ticket}"))));
            }
            if let Some((_, bar)) = &bar {
                bar.set_position(received);
            }
        }
        Progress::Done { ticket, .. } => {
            if let Some((shown, bar)) = bar.take() {
                if shown == ticket {
                    bar.finish_and_clear();
                }
            }
        }
    };
    let manifest = collect(&client, &cluster, event, &owner, out, &mut progress)
        .await
        .with_context(|| format!("collecting event {event}"))?;
    report(&manifest);
    if !manifest.all_verified() {
        let missing = manifest.uploads.len() - manifest.verified();
        bail!("{missing} of {} uploads not verified (see {})", manifest.uploads.len(), manifest.path.display());
    }
    Ok(())
}

fn progress_bar(size: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(size);
    let style = ProgressStyle::with_template("{msg:>12} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})")
        .map(|style| style.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}

/// A line per upload, the replicas that misbehaved, and a summary.
fn report(manifest: &Manifest) {
    for upload in &manifest.uploads {
        match (&upload.status, &upload.saved, &upload.record) {
            (UploadStatus::Verified, Some(saved), Some(ticket)) => out!(
                "verified      ticket {}  {}  ({} bytes, from {}, {})",
                upload.ticket,
                saved.display(),
                ticket.size,
                ticket.contact.escape_default(),
                format_time(ticket.time_ms)
            ),
            (UploadStatus::NotVerified(why), _, _) => out!("NOT VERIFIED  ticket {}  {why}", upload.ticket),
            _ => out!("verified      ticket {}", upload.ticket),
        }
    }
    for (replica, what) in &manifest.faults {
        out!("replica {replica} misbehaved: {}", what.join("; "));
    }
    out!(
        "{} of {} uploads verified; manifest: {}",
        manifest.verified(),
        manifest.uploads.len(),
        manifest.path.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_utc_times_parse_with_or_without_fractions_and_z() {
        let noon = 1_795_348_800_000; // 2026-11-22T12:00:00Z
        assert_eq!(parse_rfc3339("2026-11-22T12:00:00Z"), Ok(noon));
        assert_eq!(parse_rfc3339("2026-11-22T12:00:00"), Ok(noon));
        assert_eq!(parse_rfc3339("2026-11-22t12:00:00z"), Ok(noon));
        assert_eq!(parse_rfc3339("2026-11-22 12:00:00+00:00"), Ok(noon));
        assert_eq!(parse_rfc3339("2026-11-22T12:00:00.5Z"), Ok(noon + 500));
        assert_eq!(parse_rfc3339("2026-11-22T12:00:00.123456789Z"), Ok(noon + 123));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Ok(1_709_164_800_000));
        for ms in [0, 951_782_400_000, 1_709_164_800_123, 4_102_444_799_999] {
            assert_eq!(parse_rfc3339(&format_time(ms)), Ok(ms), "{}", format_time(ms));
        }
    }

    #[test]
    fn other_spellings_offsets_and_impossible_dates_are_refused() {
        for text in [
            "",
            "2026-11-22",
            "2026-11-22T12:00Z",
            "2026/11/22T12:00:00Z",
            "2026-11-22T12:00:00+01:00",
            "2026-11-22T12:00:00.Z",
            "2026-11-22T12:00:00.1234567890Z",
            "2026-11-22T12:00:00ZZ",
            "2026-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2026-11-22T24:00:00Z",
            "2026-11-22T12:60:00Z",
            "2026-11-22T12:00:60Z",
            "1969-12-31T23:59:59Z",
            "２026-11-22T12:00:00Z",
        ] {
            assert!(parse_rfc3339(text).is_err(), "{text:?} parsed");
        }
        assert!(parse_rfc3339("2026-11-22T12:00:00+02:00").is_err_and(|e| e.contains("only UTC")));
    }

    #[test]
    fn relative_deadlines_count_from_now() {
        let now = 1_000_000;
        assert_eq!(parse_deadline("+90", now), Ok(now + 90_000));
        assert_eq!(parse_deadline("+90s", now), Ok(now + 90_000));
        assert_eq!(parse_deadline("+5m", now), Ok(now + 300_000));
        assert_eq!(parse_deadline("+2h", now), Ok(now + 7_200_000));
        assert_eq!(parse_deadline("+1d", now), Ok(now + 86_400_000));
        assert_eq!(parse_deadline("2026-11-22T12:00:00Z", now), Ok(1_795_348_800_000));
        for text in ["+", "+m", "+-5", "+5x", "+5 m", "+99999999999999999999h"] {
            assert!(parse_deadline(text, now).is_err(), "{text:?} parsed");
        }
    }

    #[test]
    fn owner_keys_are_written_private_once_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("owner.key");
        keygen(&path).expect("keygen");
        assert_eq!(fs::metadata(&path).expect("exists").permissions().mode() & 0o777, 0o600);
        let key = read_owner_key(&path).expect("read");
        let text = fs::read_to_string(&path).expect("text");
        assert_eq!(text.trim(), hex::encode(key.to_bytes()));
        assert!(keygen(&path).is_err_and(|e| e.to_string().contains("not overwriting")));
        fs::write(&path, "abcd").expect("write");
        assert!(read_owner_key(&path).is_err_and(|e| e.to_string().contains("not 32 bytes")));
        fs::write(&path, "zz").expect("write");
        assert!(read_owner_key(&path).is_err_and(|e| e.to_string().contains("not hex")));
    }
}
