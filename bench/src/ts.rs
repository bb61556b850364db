//! `fides-bench ts-surge`: the timestamping bistro under a surge of ticket requests, against one
//! ordinary trusted timestamp server on the same machine.
//!
//! Two parts, one after the other, each with the same load generator in this process:
//! - **cluster**: `n` replica processes on 127.0.0.1 (dealt into a temporary directory); one event
//!   is created, then `--clients` tasks each ask one ticket per request, one request at a time,
//!   through [`BistroClient::request_ticket_cached`]: every inclusion path is checked, and each
//!   distinct epoch root signature is verified once, in a [`RootCache`] the tasks share (a real
//!   client pays that pairing on its own machine);
//! - **baseline**: one process of this binary (`fides-bench ts-baseline-server`) serving the same
//!   `fides.v1.Bistro` service on the same gRPC stack, where `RequestTicket` builds the same ticket
//!   record and signs it with Ed25519 — what one trusted timestamp server does; the tasks verify
//!   every signature and the record's fields.
//!
//! The replicas are stopped before the baseline starts, so the two never compete. Each part warms
//! up for [`WARM_UP`], then counts the verified tickets that complete within `--seconds`. Prints
//! both parts' verified tickets per second and p50/p99 latency, and the ratio cluster / baseline.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::load::{
    drive, log_tail, milliseconds, print_reasons, stopped, thousands, Load, Measured, RemoveDir, ServerProcess,
};
use anyhow::{anyhow, bail, Context};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use fides_api::proto;
use fides_bistro::records::{EventId, EventTerms, Signed, Ticket, TicketRequest, DIGEST_LEN, FIELD_MAX};
use fides_bistro::stream::{Aead, HashAlg};
use fides_client_sdk::bistro::{BistroClient, BistroOptions, RootCache, MESSAGE_MAX};
use fides_client_sdk::{Client, ClientOptions};
use fides_crypto::tagged;
use fides_replica::launcher::{deal_if_missing_with, protocol_with_batch_size, rss_kib, LocalCluster, ReplicaOptions};
use fides_types::codec::Wire;
use fides_types::NodeIndex;
use proto::bistro_client::BistroClient as BistroGrpc;
use proto::bistro_server::{Bistro, BistroServer};
use tonic::transport::server::TcpIncoming;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// First peer port of the bench cluster (replica `i`: `PORT_FIRST + i`, its clients `+ 100`).
/// Clear of `replica cluster` (7100…) and `fides-bench e2e` (7600…, 7700…).
const PORT_FIRST: u16 = 7650;
/// Load before each measured window.
const WARM_UP: Duration = Duration::from_secs(3);
/// How long one attempt at one server may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// What the baseline server signs: `tagged(BASELINE_TAG, [canonical Signed::Ticket bytes])`.
const BASELINE_TAG: &[u8] = b"fides/v1/bench-baseline-ticket";
/// The first line the baseline server prints: `BANNER ADDRESS KEY-HEX`.
const BANNER: &str = "ts-baseline-server listening";
/// The contact every bench ticket carries.
const CONTACT: &str = "bench@example.org";
/// The targets: verified tickets per second, p99 in ms, ratio cluster / baseline.
const TARGET_RATE: f64 = 30_000.0;
const TARGET_P99_MS: f64 = 500.0;
const TARGET_RATIO: f64 = 0.5;

/// Settings of the run.
#[derive(Clone, Debug, clap::Args)]
pub struct SurgeArgs {
    /// Replicas.
    #[arg(short = 'n', default_value_t = 4)]
    pub n: u32,
    /// Seconds of measured load, for the cluster and again for the baseline (each after a 3 s
    /// warm-up).
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Concurrent clients: tasks that each ask one ticket per request, one request at a time.
    /// With 1,000 the cluster is bound by latency (1,000 clients / ~0.2 s), not by capacity; the
    /// default puts it near saturation on a 2-core machine.
    #[arg(long, default_value_t = 4000)]
    pub clients: u32,
    /// Requests considered per epoch, over all proposers (dealt into the bench cluster).
    #[arg(long, default_value_t = 8000)]
    pub batch_size: u32,
    /// gRPC connections per replica that the clients share, round robin. The baseline server gets
    /// as many connections in all as the cluster does (n × this).
    #[arg(long, default_value_t = 8)]
    pub connections: u32,
    /// Where to put the cluster (default: a new temporary directory). Must be empty, absent, or
    /// a cluster directory; it is removed at the end.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Settings of the baseline server.
#[derive(Clone, Debug, clap::Args)]
pub struct BaselineServerArgs {
    /// Where to listen (port 0: a free port). The first line of standard output is
    /// `ts-baseline-server listening ADDRESS PUBLIC-KEY-HEX`.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Stop when standard input closes (for the bench that starts it).
    #[arg(long)]
    pub exit_on_stdin_close: bool,
}

/// What one part of the run measured.
#[derive(Debug)]
struct Figures {
    /// Verified tickets per second over the window.
    rate: f64,
    /// Latency quantiles, ms.
    p50: f64,
    p99: f64,
    /// Failed requests within the window.
    errors: u64,
    /// Why they failed, most frequent first.
    reasons: Vec<(String, u64)>,
    /// Distinct epochs (so roots) of the tickets verified within the window (cluster only).
    window_roots: usize,
    /// Verified tickets within the window.
    tickets: u64,
    /// Distinct roots whose signature the clients verified over the whole part, warm-up
    /// included (the root cache's size; cluster only).
    roots_verified: usize,
    /// Resident memory of the server processes at the end of the window, KiB.
    rss: Vec<Option<u64>>,
}

impl Figures {
    fn of(m: Measured) -> Figures {
        Figures {
            rate: m.rate,
            p50: m.p50,
            p99: m.p99,
            errors: m.errors,
            reasons: m.reasons,
            window_roots: m.epochs,
            tickets: m.count,
            roots_verified: 0,
            rss: Vec::new(),
        }
    }
}

/// Run the benchmark.
pub async fn run(args: SurgeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.n >= 1, "-n must be at least 1");
    anyhow::ensure!(args.clients >= 1, "--clients must be at least 1");
    anyhow::ensure!(args.connections >= 1, "--connections must be at least 1");
    anyhow::ensure!(args.seconds >= 1, "--seconds must be at least 1");
    let dir = crate::cluster_dir(args.dir.as_ref(), "ts")?;
    // Removes the directory on every way out, after the replicas (dropped inside) stopped.
    let _remove = RemoveDir(dir.clone());
    let binary = std::env::current_exe().context("finding the bench executable (it runs the replicas too)")?;
    tokio::select! {
        result = surge(&args, &dir, &binary) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted (the replicas and the baseline server were stopped)")),
    }
}

async fn surge(args: &SurgeArgs, dir: &Path, binary: &Path) -> anyhow::Result<()> {
    let t = (args.n - 1) / 3;
    println!(
        "ts-surge: {} replicas (t = {t}), {} clients, {} s, batch {}, {} connections per replica ({} to the baseline)",
        args.n,
        args.clients,
        args.seconds,
        args.batch_size,
        args.connections,
        args.connections * args.n,
    );
    let cluster = cluster_part(args, dir, binary).await;
    match &cluster {
        Ok(f) => {
            let rss: Vec<String> = f.rss.iter().map(|k| k.map_or("?".into(), |k| (k / 1024).to_string())).collect();
            println!(
                "  cluster : {}  roots {} ({:.0} tickets/root; {} verified in all)  RSS {} MiB",
                figures_line(f),
                f.window_roots,
                f.tickets as f64 / f.window_roots.max(1) as f64,
                f.roots_verified,
                rss.join("/"),
            );
            print_reasons(&f.reasons);
        }
        Err(error) => println!("  cluster : FAILED: {error:#}"),
    }
    let baseline = baseline_part(args, binary).await;
    match &baseline {
        Ok(f) => {
            let rss = f.rss.first().copied().flatten().map_or("?".into(), |k| (k / 1024).to_string());
            println!("  baseline: {}  RSS {rss} MiB", figures_line(f));
            print_reasons(&f.reasons);
        }
        Err(error) => println!("  baseline: FAILED: {error:#}"),
    }
    let (cluster, baseline) = match (cluster, baseline) {
        (Ok(c), Ok(b)) => (c, b),
        (Err(_), _) => bail!("the cluster part failed (see above)"),
        (_, Err(_)) => bail!("the baseline part failed (see above)"),
    };
    let ratio = if baseline.rate > 0.0 { cluster.rate / baseline.rate } else { f64::NAN };
    println!("  ratio cluster/baseline: {ratio:.2}");
    let mut missed = Vec::new();
    if cluster.rate.is_nan() || cluster.rate < TARGET_RATE {
        missed.push(format!("{} tickets/s", thousands(cluster.rate)));
    }
    if cluster.p99.is_nan() || cluster.p99 > TARGET_P99_MS {
        missed.push(format!("p99 {} ms", milliseconds(cluster.p99)));
    }
    if ratio.is_nan() || ratio < TARGET_RATIO {
        missed.push(format!("ratio {ratio:.2}"));
    }
    println!(
        "  target (≥ {} verified tickets/s, p99 ≤ {TARGET_P99_MS:.0} ms, ratio ≥ {TARGET_RATIO}): {}",
        thousands(TARGET_RATE),
        if missed.is_empty() { "met".to_string() } else { format!("missed: {}", missed.join(", ")) }
    );
    Ok(())
}

/// `12,345 verified tickets/s  p50 120 ms  p99 340 ms  errors 0`.
fn figures_line(f: &Figures) -> String {
    format!(
        "{} verified tickets/s  p50 {} ms  p99 {} ms  errors {}",
        thousands(f.rate),
        milliseconds(f.p50),
        milliseconds(f.p99),
        f.errors
    )
}

// ---------------------------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------------------------

/// Deal and start the replicas, load them, measure, stop them.
async fn cluster_part(args: &SurgeArgs, dir: &Path, binary: &Path) -> anyhow::Result<Figures> {
    let t = (args.n - 1) / 3;
    deal_if_missing_with(dir, args.n, t, PORT_FIRST, protocol_with_batch_size(args.n, args.batch_size))
        .context("dealing the bench cluster")?;
    let options = ReplicaOptions {
        metrics_port_first: None,
        extra_args: vec!["--batch-size".into(), args.batch_size.to_string()],
    };
    // Dropping it (on every way out) stops the replicas.
    let mut local = LocalCluster::new(dir, binary, options)?;
    local.start_all()?;
    let result = cluster_load(&mut local, args).await;
    if result.is_err() {
        eprintln!("ts-surge: the cluster part failed; the last lines of the replicas' logs:");
        for i in 0..args.n {
            for line in log_tail(&local.log_file(i), 3) {
                eprintln!("  replica {i}: {line}");
            }
        }
    }
    local.stop_all(Duration::from_secs(10));
    result
}

async fn cluster_load(local: &mut LocalCluster, args: &SurgeArgs) -> anyhow::Result<Figures> {
    let cluster_file = local.dir().join(fides_dealer::CLUSTER_FILE_NAME);
    let probe = Client::connect(&cluster_file, ClientOptions::default())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..args.n {
        while probe.status(NodeIndex(i)).await.is_err() {
            if Instant::now() > deadline || !local.is_running(i) {
                bail!("replica {i} did not come up");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let options = BistroOptions { attempt_timeout: ATTEMPT_TIMEOUT, ..BistroOptions::default() };
    // Each client holds one channel per replica: `connections` of them make that many
    // connections to each replica.
    let clients: Vec<BistroClient> = (0..args.connections)
        .map(|_| BistroClient::with_options(local.cluster().clone(), options.clone()))
        .collect::<Result<_, _>>()?;

    let owner = SigningKey::generate(&mut rand::rngs::OsRng);
    let terms = EventTerms {
        deadline_ms: now_ms() + 3_600_000,
        description: "bench ts-surge".into(),
        owner: owner.verifying_key().to_bytes(),
        hash: HashAlg::Sha256,
        aead: Aead::XChaCha20Poly1305,
        transfer_window_ms: 3_600_000,
        nonce: rand::random(),
    };
    let event = clients[0]
        .create_event(terms, &owner)
        .await
        .context("creating the bench event (does the replica serve fides.v1.Bistro?)")?
        .record
        .event;

    let cache = Arc::new(RootCache::new());
    let target = Arc::new(Target::Cluster { clients, cache: Arc::clone(&cache), event });
    let mut figures = Figures::of(drive(target, args.clients, WARM_UP, Duration::from_secs(args.seconds)).await?);
    figures.rss = local.pids().iter().map(|pid| pid.and_then(rss_kib)).collect();
    figures.roots_verified = cache.len();
    Ok(figures)
}

// ---------------------------------------------------------------------------------------------
// The load generator
// ---------------------------------------------------------------------------------------------

/// Where the client tasks get their tickets.
enum Target {
    /// The cluster, through bistro clients that share one root cache.
    Cluster { clients: Vec<BistroClient>, cache: Arc<RootCache>, event: EventId },
    /// The baseline server, over plain gRPC stubs; `key` is its Ed25519 key.
    Baseline { stubs: Vec<BistroGrpc<Channel>>, key: VerifyingKey, event: EventId, ids: AtomicU64 },
}

/// A fresh ticket request: a random digest, as if of a new file.
fn ticket_request(event: EventId) -> TicketRequest {
    TicketRequest {
        event,
        digest: rand::random::<[u8; DIGEST_LEN]>().to_vec(),
        size: 1 << 20,
        contact: CONTACT.into(),
        file_name: String::new(),
    }
}

impl Load for Target {
    /// Ask one ticket for client task `task` and verify it. Returns the ticket's epoch, if it has one.
    async fn one(&self, task: usize) -> Result<Option<u64>, String> {
        match self {
            Target::Cluster { clients, cache, event } => {
                let client = &clients[task % clients.len()];
                let (_, proof) =
                    client.request_ticket_cached(ticket_request(*event), cache).await.map_err(|e| e.to_string())?;
                Ok(Some(proof.epoch))
            }
            Target::Baseline { stubs, key, event, ids } => {
                let request = ticket_request(*event);
                let message = proto::TicketRequest {
                    client: task as u64,
                    id: ids.fetch_add(1, Ordering::Relaxed),
                    event: request.event.0.to_vec(),
                    digest: request.digest.clone(),
                    size: request.size,
                    contact: request.contact.clone(),
                    file_name: request.file_name.clone(),
                };
                let mut stub = stubs[task % stubs.len()].clone();
                let reply = tokio::time::timeout(ATTEMPT_TIMEOUT, stub.request_ticket(message))
                    .await
                    .map_err(|_| format!("no answer within {ATTEMPT_TIMEOUT:?}"))?
                    .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?
                    .into_inner();
                verify_baseline(key, &request, &reply)?;
                Ok(None)
            }
        }
    }
}

/// What a client of the baseline server checks: the signature on the record, then that the
/// record is a ticket for exactly this request.
fn verify_baseline(key: &VerifyingKey, request: &TicketRequest, reply: &proto::SignedReply) -> Result<(), String> {
    let signature: [u8; 64] =
        reply.proof.as_slice().try_into().map_err(|_| format!("a signature of {} bytes, not 64", reply.proof.len()))?;
    key.verify_strict(&tagged(BASELINE_TAG, &[&reply.record]), &Signature::from_bytes(&signature))
        .map_err(|_| "the ticket's signature does not verify".to_string())?;
    let record = Signed::from_bytes(&reply.record).map_err(|e| format!("the signed record does not decode: {e}"))?;
    let Signed::Ticket(ticket) = record else { return Err("the signed record is not a ticket".into()) };
    if ticket.event != request.event
        || ticket.digest.as_slice() != request.digest.as_slice()
        || ticket.size != request.size
        || ticket.contact != request.contact
        || ticket.file_name != request.file_name
    {
        return Err("the ticket differs from the request".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The baseline
// ---------------------------------------------------------------------------------------------

/// Where the baseline server listens and its key, from the first line of its standard output.
fn parse_banner(line: &str) -> Option<(SocketAddr, VerifyingKey)> {
    let rest = line.strip_prefix(BANNER)?;
    let mut words = rest.split_whitespace();
    let address = words.next()?.parse().ok()?;
    let key: [u8; 32] = hex::decode(words.next()?).ok()?.try_into().ok()?;
    Some((address, VerifyingKey::from_bytes(&key).ok()?))
}

/// Start the baseline server, load it like the cluster, stop it.
async fn baseline_part(args: &SurgeArgs, binary: &Path) -> anyhow::Result<Figures> {
    let server = ServerProcess::start_with(binary, "ts-baseline-server", &[]).await?;
    let (address, key) = parse_banner(&server.banner).with_context(|| {
        format!("the baseline server's first line is not `{BANNER} ADDRESS KEY`: {:?}", server.banner)
    })?;
    let address = address.to_string();
    let stubs = (0..args.connections * args.n)
        .map(|_| {
            // As every client makes its channels.
            let channel = fides_api::lazy_channel(&address)?;
            Ok(BistroGrpc::new(channel).max_decoding_message_size(MESSAGE_MAX))
        })
        .collect::<Result<Vec<_>, String>>()
        .map_err(|reason| anyhow!("making channels to {address}: {reason}"))?;
    let target = Target::Baseline { stubs, key, event: EventId(rand::random()), ids: AtomicU64::new(0) };
    // One request first, so that a server that does not work fails clearly.
    target.one(0).await.map_err(|reason| anyhow!("the baseline server's first ticket failed: {reason}"))?;
    let target = Arc::new(target);
    let result = drive(target, args.clients, WARM_UP, Duration::from_secs(args.seconds)).await;
    let rss = server.rss_kib();
    server.stop().await;
    let mut figures = Figures::of(result?);
    figures.rss = vec![rss];
    Ok(figures)
}

/// The baseline's service: `RequestTicket` only.
struct BaselineService {
    key: SigningKey,
    next_ticket: AtomicU64,
}

fn not_here() -> Status {
    Status::unimplemented("the ts-surge baseline server answers RequestTicket only")
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[tonic::async_trait]
impl Bistro for BaselineService {
    async fn create_event(
        &self,
        _: Request<proto::CreateEventRequest>,
    ) -> Result<Response<proto::SignedReply>, Status> {
        Err(not_here())
    }

    async fn get_event(&self, _: Request<proto::GetEventRequest>) -> Result<Response<proto::SignedReply>, Status> {
        Err(not_here())
    }

    async fn list_events(
        &self,
        _: Request<proto::ListEventsRequest>,
    ) -> Result<Response<proto::ListEventsReply>, Status> {
        Err(not_here())
    }

    /// Build the ticket, encode it canonically and sign it with Ed25519.
    async fn request_ticket(
        &self,
        request: Request<proto::TicketRequest>,
    ) -> Result<Response<proto::SignedReply>, Status> {
        let r = request.into_inner();
        let event: [u8; 16] = r
            .event
            .as_slice()
            .try_into()
            .map_err(|_| Status::invalid_argument(format!("an event id is 16 bytes, not {}", r.event.len())))?;
        let digest: [u8; DIGEST_LEN] = r
            .digest
            .as_slice()
            .try_into()
            .map_err(|_| Status::invalid_argument(format!("a digest is 32 bytes, not {}", r.digest.len())))?;
        if r.contact.len() > FIELD_MAX || r.file_name.len() > FIELD_MAX {
            return Err(Status::invalid_argument(format!("the contact and file name are at most {FIELD_MAX} bytes")));
        }
        let ticket = Ticket {
            event: EventId(event),
            ticket: self.next_ticket.fetch_add(1, Ordering::Relaxed) + 1,
            hash: HashAlg::Sha256,
            digest,
            size: r.size,
            contact: r.contact,
            file_name: r.file_name,
            time_ms: now_ms(),
        };
        let record = Signed::Ticket(ticket).to_bytes();
        let signature = self.key.sign(&tagged(BASELINE_TAG, &[&record]));
        Ok(Response::new(proto::SignedReply { record, proof: signature.to_bytes().to_vec(), epoch: 0, index: 0 }))
    }

    async fn status(&self, _: Request<proto::TicketStatusRequest>) -> Result<Response<proto::SignedReply>, Status> {
        Err(not_here())
    }

    async fn register_relay(
        &self,
        _: Request<proto::RegisterRelayRequest>,
    ) -> Result<Response<proto::RegisterRelayReply>, Status> {
        Err(not_here())
    }

    async fn list_relays(
        &self,
        _: Request<proto::ListRelaysRequest>,
    ) -> Result<Response<proto::ListRelaysReply>, Status> {
        Err(not_here())
    }

    async fn report_held(
        &self,
        _: Request<proto::ReportHeldRequest>,
    ) -> Result<Response<proto::ReportHeldReply>, Status> {
        Err(not_here())
    }

    async fn collect(&self, _: Request<proto::CollectRequest>) -> Result<Response<proto::CollectReply>, Status> {
        Err(not_here())
    }

    async fn collect_shares(
        &self,
        _: Request<proto::CollectSharesRequest>,
    ) -> Result<Response<proto::CollectSharesReply>, Status> {
        Err(not_here())
    }
}

/// `fides-bench ts-baseline-server`: serve the baseline's `fides.v1.Bistro` until SIGTERM,
/// Ctrl-C or (with `--exit-on-stdin-close`) the end of standard input. Runs on the process's
/// multi-threaded runtime.
pub async fn baseline_server(args: BaselineServerArgs) -> anyhow::Result<()> {
    let incoming =
        TcpIncoming::bind(args.listen).map_err(|e| anyhow!("binding {}: {e}", args.listen))?.with_nodelay(Some(true));
    let address = incoming.local_addr().context("reading the bound address")?;
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    println!("{BANNER} {address} {}", hex::encode(key.verifying_key().to_bytes()));
    let service = BaselineService { key, next_ticket: AtomicU64::new(0) };
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(BistroServer::new(service).max_decoding_message_size(1 << 20))
        .serve_with_incoming_shutdown(incoming, stopped(args.exit_on_stdin_close))
        .await
        .context("serving the baseline")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_tickets_verify_only_unchanged() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let request = ticket_request(EventId([1; 16]));
        let ticket = Ticket {
            event: request.event,
            ticket: 1,
            hash: HashAlg::Sha256,
            digest: request.digest.as_slice().try_into().expect("32 bytes"),
            size: request.size,
            contact: request.contact.clone(),
            file_name: String::new(),
            time_ms: 7,
        };
        let record = Signed::Ticket(ticket).to_bytes();
        let proof = key.sign(&tagged(BASELINE_TAG, &[&record])).to_bytes().to_vec();
        let reply = proto::SignedReply { record, proof, epoch: 0, index: 0 };
        assert_eq!(verify_baseline(&key.verifying_key(), &request, &reply), Ok(()));
        let other = ticket_request(EventId([1; 16]));
        assert!(verify_baseline(&key.verifying_key(), &other, &reply).is_err());
        let mut forged = reply.clone();
        forged.record[10] ^= 1;
        assert!(verify_baseline(&key.verifying_key(), &request, &forged).is_err());
    }

    #[test]
    fn the_banner_parses() {
        let key = SigningKey::from_bytes(&[5; 32]).verifying_key();
        let line = format!("{BANNER} 127.0.0.1:4000 {}", hex::encode(key.to_bytes()));
        assert_eq!(parse_banner(&line), Some(("127.0.0.1:4000".parse().expect("an address"), key)));
        assert_eq!(parse_banner("something else"), None);
    }
}
