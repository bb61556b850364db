//! `fides-bench ca`: the certification authority under load, against one ordinary CA process on
//! the same machine.
//!
//! Two parts, one after the other, each with the same load generator in this process:
//! - **cluster**: `n` replica processes on 127.0.0.1 with an RSA-`--rsa-bits` threshold key
//!   (dealt into a temporary directory); `--clients` tasks each issue one certificate at a time
//!   through [`CaClient::issue`]: a fresh Ed25519 key and name each time, every replica's
//!   challenge answered, the request ordered, agreed on (one binary agreement) and
//!   threshold-signed; the client checks the certificate's RSA signature and its issued record's
//!   inclusion under the epoch certificate;
//! - **baseline**: one process of this binary (`fides-bench ca-baseline-server`) serving
//!   `GetChallenge` and `Issue` of the same `fides.v1.CertificationAuthorityService` on the same
//!   gRPC stack, with one ordinary RSA key of the same size (CRT, the `rsa` crate): it checks its
//!   own key-confirmation challenge, builds the same X.509 profile (`fides-ca`) and signs it —
//!   what one trusted CA server does. The tasks verify every certificate's signature.
//!
//! The replicas are stopped before the baseline starts. Prints both parts' certificates per
//! second and p50/p99 issue latency, and the issue's targets (≥ 50 certificates/s, p50 ≤ 200 ms).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use ed25519_dalek::SigningKey;
use fides_api::proto;
use fides_ca::service::challenge::{answer, Challenger, KeySecret};
use fides_ca::service::request::{Binding, Mutation};
use fides_ca::{certificate_tbs, AltNames, CertificateParams, Root, Serial, SubjectKey, SubjectName, UnixTime};
use fides_client_sdk::ca::{key_proto, name_proto, CaClient, CaOptions, Subject};
use fides_client_sdk::{Client, ClientOptions};
use fides_dealer::ProtocolParameters;
use fides_replica::launcher::{deal_if_missing_with_rsa, rss_kib, LocalCluster, ReplicaOptions};
use fides_types::NodeIndex;
use proto::certification_authority_service_client::CertificationAuthorityServiceClient as CaGrpc;
use proto::certification_authority_service_server::{
    CertificationAuthorityService, CertificationAuthorityServiceServer,
};
use rsa::pkcs1v15::{Signature as RsaSignature, SigningKey as RsaSigningKey, VerifyingKey as RsaVerifyingKey};
use rsa::signature::{SignatureEncoding, Signer as _, Verifier as _};
use sha2::Sha256;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::load::{
    drive, log_tail, milliseconds, print_reasons, stopped, thousands, Load, Measured, RemoveDir, ServerProcess,
};

/// First peer port of the bench cluster (replica `i`: `PORT_FIRST + i`, its clients `+ 100`).
/// Clear of `replica cluster` (7100…), `e2e` (7600…), `ts-surge` (7650…) and `restart` (7700…).
const PORT_FIRST: u16 = 7850;
/// Before the window: the first certificates pay for connections and caches.
const WARM_UP: Duration = Duration::from_secs(3);
/// The baseline server's first line: `ca-baseline-server listening ADDRESS ROOT-DER-HEX`.
const BANNER: &str = "ca-baseline-server listening";
/// The issue's targets: certificates per second, p50 in ms.
const TARGET_RATE: f64 = 50.0;
const TARGET_P50_MS: f64 = 200.0;
/// The baseline's certificates' validity.
const BASELINE_VALIDITY_SECS: u64 = 90 * 24 * 3600;

/// Settings of the run.
#[derive(Clone, Debug, clap::Args)]
pub struct CaArgs {
    /// Replicas.
    #[arg(short = 'n', default_value_t = 4)]
    pub n: u32,
    /// Seconds of measured load, for the cluster and again for the baseline (each after a 3 s
    /// warm-up).
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Concurrent clients: tasks that each issue one certificate at a time.
    #[arg(long, default_value_t = 32)]
    pub clients: u32,
    /// The RSA key's size, for the cluster's threshold key and the baseline's key alike.
    #[arg(long, default_value_t = 2048)]
    pub rsa_bits: u64,
    /// Where to put the cluster (default: a new temporary directory). Must be empty, absent, or
    /// a cluster directory; it is removed at the end.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Settings of the baseline server.
#[derive(Clone, Debug, clap::Args)]
pub struct CaBaselineServerArgs {
    /// Where to listen (port 0: a free port). The first line of standard output is
    /// `ca-baseline-server listening ADDRESS ROOT-DER-HEX`.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Stop when standard input closes (for the bench that starts it).
    #[arg(long)]
    pub exit_on_stdin_close: bool,
    /// The RSA key's size.
    #[arg(long, default_value_t = 2048)]
    pub rsa_bits: u64,
}

/// Run the benchmark.
pub async fn run(args: CaArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.n >= 4, "-n must be at least 4 (t ≥ 1)");
    anyhow::ensure!(args.clients >= 1, "--clients must be at least 1");
    anyhow::ensure!(args.seconds >= 1, "--seconds must be at least 1");
    let dir = crate::cluster_dir(args.dir.as_ref(), "ca")?;
    let _remove = RemoveDir(dir.clone());
    let binary = std::env::current_exe().context("finding the bench executable (it runs the replicas too)")?;
    tokio::select! {
        result = both(&args, &dir, &binary) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted (the replicas and the baseline server were stopped)")),
    }
}

async fn both(args: &CaArgs, dir: &Path, binary: &Path) -> anyhow::Result<()> {
    let t = (args.n - 1) / 3;
    println!("ca: {} replicas (t = {t}), RSA-{}, {} clients, {} s", args.n, args.rsa_bits, args.clients, args.seconds);
    let cluster = cluster_part(args, dir, binary).await;
    let line = |m: &Measured| {
        format!(
            "{} certificates/s  p50 {} ms  p99 {} ms  errors {}",
            thousands(m.rate),
            milliseconds(m.p50),
            milliseconds(m.p99),
            m.errors
        )
    };
    match &cluster {
        Ok((m, rss)) => {
            let rss: Vec<String> = rss.iter().map(|k| k.map_or("?".into(), |k| (k / 1024).to_string())).collect();
            println!("  cluster : {}  epochs {}  RSS {} MiB", line(m), m.epochs, rss.join("/"));
            print_reasons(&m.reasons);
        }
        Err(error) => println!("  cluster : FAILED: {error:#}"),
    }
    let baseline = baseline_part(args, binary).await;
    match &baseline {
        Ok((m, rss)) => {
            let rss = rss.map_or("?".into(), |k| (k / 1024).to_string());
            println!("  baseline: {}  RSS {rss} MiB", line(m));
            print_reasons(&m.reasons);
        }
        Err(error) => println!("  baseline: FAILED: {error:#}"),
    }
    let ((cluster, _), (baseline, _)) = match (cluster, baseline) {
        (Ok(c), Ok(b)) => (c, b),
        (Err(_), _) => bail!("the cluster part failed (see above)"),
        (_, Err(_)) => bail!("the baseline part failed (see above)"),
    };
    let ratio = if baseline.rate > 0.0 { cluster.rate / baseline.rate } else { f64::NAN };
    println!("  ratio cluster/baseline: {ratio:.2}");
    let mut missed = Vec::new();
    if cluster.rate.is_nan() || cluster.rate < TARGET_RATE {
        missed.push(format!("{} certificates/s", thousands(cluster.rate)));
    }
    if cluster.p50.is_nan() || cluster.p50 > TARGET_P50_MS {
        missed.push(format!("p50 {} ms", milliseconds(cluster.p50)));
    }
    println!(
        "  target (≥ {TARGET_RATE:.0} certificates/s, p50 ≤ {TARGET_P50_MS:.0} ms): {}",
        if missed.is_empty() { "met".to_string() } else { format!("missed: {}", missed.join(", ")) }
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------------------------

/// A fresh key and a name no one holds.
fn fresh_subject() -> Result<(KeySecret, SubjectName), String> {
    let secret = KeySecret::Ed25519(SigningKey::generate(&mut rand::rngs::OsRng));
    let name = SubjectName::new(&format!("bench {:016x}", rand::random::<u64>()), &[]).map_err(|e| e.to_string())?;
    Ok((secret, name))
}

/// Issue through the cluster's client.
struct ClusterTarget {
    clients: Vec<CaClient>,
}

impl Load for ClusterTarget {
    async fn one(&self, task: usize) -> Result<Option<u64>, String> {
        let client = &self.clients[task % self.clients.len()];
        let (secret, name) = fresh_subject()?;
        let alt_names = AltNames::new(&[], &[]).map_err(|e| e.to_string())?;
        let issued =
            client.issue(&secret, &Subject::Fields { name, alt_names }, None).await.map_err(|e| e.to_string())?;
        Ok(Some(issued.record.certificate.root.epoch))
    }
}

async fn cluster_part(args: &CaArgs, dir: &Path, binary: &Path) -> anyhow::Result<(Measured, Vec<Option<u64>>)> {
    let t = (args.n - 1) / 3;
    deal_if_missing_with_rsa(dir, args.n, t, PORT_FIRST, ProtocolParameters::DEFAULT, Some(args.rsa_bits))
        .context("dealing the bench cluster")?;
    let options = ReplicaOptions { metrics_port_first: None, extra_args: Vec::new() };
    let mut local = LocalCluster::new(dir, binary, options)?;
    local.start_all()?;
    let result = cluster_load(&mut local, args).await;
    if result.is_err() {
        eprintln!("ca: the cluster part failed; the last lines of the replicas' logs:");
        for i in 0..args.n {
            for line in log_tail(&local.log_file(i), 3) {
                eprintln!("  replica {i}: {line}");
            }
        }
    }
    local.stop_all(Duration::from_secs(10));
    result
}

async fn cluster_load(local: &mut LocalCluster, args: &CaArgs) -> anyhow::Result<(Measured, Vec<Option<u64>>)> {
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
    // A few clients (each with its channels to every replica) shared by the tasks.
    let clients: Vec<CaClient> =
        (0..4).map(|_| CaClient::new(local.cluster(), CaOptions::default())).collect::<Result<_, _>>()?;
    let target = ClusterTarget { clients };
    target.one(0).await.map_err(|reason| anyhow!("the cluster's first certificate failed: {reason}"))?;
    let measured = drive(Arc::new(target), args.clients, WARM_UP, Duration::from_secs(args.seconds)).await?;
    let rss = local.pids().iter().map(|pid| pid.and_then(rss_kib)).collect();
    Ok((measured, rss))
}

// ---------------------------------------------------------------------------------------------
// The baseline
// ---------------------------------------------------------------------------------------------

/// The cluster id the baseline's challenges are bound to (it has no cluster).
const BASELINE_CLUSTER: [u8; 32] = *b"fides/bench/ca-baseline/cluster!";

/// Issue through the baseline server, over plain gRPC stubs.
struct BaselineTarget {
    stubs: Vec<CaGrpc<Channel>>,
    key: RsaVerifyingKey<Sha256>,
    ids: AtomicU64,
}

impl Load for BaselineTarget {
    async fn one(&self, task: usize) -> Result<Option<u64>, String> {
        let (secret, name) = fresh_subject()?;
        let key = secret.public();
        let client = task as u64;
        let request_id = self.ids.fetch_add(1, Ordering::Relaxed);
        let fields = proto::CertificateFields {
            key: Some(key_proto(&key)),
            name: Some(name_proto(&name)),
            dns_names: Vec::new(),
            email_addresses: Vec::new(),
        };
        let mut request = proto::IssueRequest {
            client,
            request_id,
            binding: Some(proto::issue_request::Binding::Fields(fields)),
            token: Vec::new(),
            answers: Vec::new(),
        };
        let mut stub = self.stubs[task % self.stubs.len()].clone();
        let asked =
            proto::GetChallengeRequest { request: Some(proto::get_challenge_request::Request::Issue(request.clone())) };
        let challenge = stub.get_challenge(asked).await.map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
        let challenge = challenge.into_inner();
        let alt_names = AltNames::new(&[], &[]).map_err(|e| e.to_string())?;
        let mutation = Mutation::Issue { binding: Binding::Fields { key, name, alt_names }, token: None };
        let digest = mutation.digest(&BASELINE_CLUSTER, client, request_id);
        let answered = answer(&secret, &challenge.challenge, &BASELINE_CLUSTER, challenge.replica, &digest)
            .map_err(|e| e.to_string())?;
        request.answers.push(proto::ChallengeAnswer { replica: challenge.replica, answer: answered });
        let reply = stub.issue(request).await.map_err(|s| format!("{:?}: {}", s.code(), s.message()))?.into_inner();
        let der = reply.certificate.ok_or("no certificate in the answer")?.der;
        verify_baseline(&self.key, &der)?;
        Ok(None)
    }
}

/// The certificate's signature under the baseline's key.
fn verify_baseline(key: &RsaVerifyingKey<Sha256>, der: &[u8]) -> Result<(), String> {
    use der::{Decode, Encode};
    let certificate = x509_cert::Certificate::from_der(der).map_err(|e| format!("not a certificate: {e}"))?;
    let tbs = certificate.tbs_certificate.to_der().map_err(|e| e.to_string())?;
    let signature = RsaSignature::try_from(certificate.signature.raw_bytes()).map_err(|e| e.to_string())?;
    key.verify(&tbs, &signature).map_err(|_| "the certificate's signature does not verify".to_string())
}

async fn baseline_part(args: &CaArgs, binary: &Path) -> anyhow::Result<(Measured, Option<u64>)> {
    let server =
        ServerProcess::start_with(binary, "ca-baseline-server", &["--rsa-bits", &args.rsa_bits.to_string()]).await?;
    let (address, root) = parse_banner(&server.banner).with_context(|| {
        format!("the baseline server's first line is not `{BANNER} ADDRESS ROOT`: {:?}", server.banner)
    })?;
    let key = root_key(&root)?;
    let address = address.to_string();
    let stubs = (0..4 * args.n)
        .map(|_| Ok(CaGrpc::new(fides_api::lazy_channel(&address)?)))
        .collect::<Result<Vec<_>, String>>()
        .map_err(|reason| anyhow!("making channels to {address}: {reason}"))?;
    let target = BaselineTarget { stubs, key, ids: AtomicU64::new(0) };
    target.one(0).await.map_err(|reason| anyhow!("the baseline server's first certificate failed: {reason}"))?;
    let result = drive(Arc::new(target), args.clients, WARM_UP, Duration::from_secs(args.seconds)).await;
    let rss = server.rss_kib();
    server.stop().await;
    Ok((result?, rss))
}

fn parse_banner(line: &str) -> Option<(SocketAddr, Vec<u8>)> {
    let rest = line.strip_prefix(BANNER)?;
    let mut words = rest.split_whitespace();
    let address = words.next()?.parse().ok()?;
    let root = hex::decode(words.next()?).ok()?;
    Some((address, root))
}

/// The RSA key of a root certificate.
fn root_key(root: &[u8]) -> anyhow::Result<RsaVerifyingKey<Sha256>> {
    use der::{Decode, Encode};
    use rsa::pkcs8::DecodePublicKey;
    let certificate = x509_cert::Certificate::from_der(root).context("the baseline's root is not a certificate")?;
    let spki = certificate.tbs_certificate.subject_public_key_info.to_der()?;
    let key = rsa::RsaPublicKey::from_public_key_der(&spki).context("the baseline's root key is not RSA")?;
    Ok(RsaVerifyingKey::new(key))
}

/// The baseline's service: `GetChallenge` and `Issue`.
struct BaselineCa {
    key: RsaSigningKey<Sha256>,
    root: Root,
    challenger: Challenger,
    serial: AtomicU64,
}

fn not_here() -> Status {
    Status::unimplemented("the ca baseline server answers GetChallenge and Issue only")
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The mutation an issue request asks for (fields only, no token: what the bench sends).
fn baseline_mutation(request: &proto::IssueRequest) -> Result<Mutation, Status> {
    let invalid = |what: &str| Status::invalid_argument(what.to_string());
    let Some(proto::issue_request::Binding::Fields(fields)) = &request.binding else {
        return Err(invalid("the baseline takes fields, not a CSR"));
    };
    let key = fields.key.as_ref().ok_or_else(|| invalid("no key"))?;
    if key.r#type != proto::KeyType::Ed25519 as i32 {
        return Err(invalid("the baseline takes Ed25519 keys"));
    }
    let key = SubjectKey::ed25519(&key.key).map_err(|e| invalid(&e.to_string()))?;
    let name = fields.name.as_ref().ok_or_else(|| invalid("no name"))?;
    let name = SubjectName::new(&name.common_name, &[]).map_err(|e| invalid(&e.to_string()))?;
    let alt_names = AltNames::new(&[], &[]).map_err(|e| invalid(&e.to_string()))?;
    Ok(Mutation::Issue { binding: Binding::Fields { key, name, alt_names }, token: None })
}

#[tonic::async_trait]
impl CertificationAuthorityService for BaselineCa {
    async fn get_challenge(
        &self,
        request: Request<proto::GetChallengeRequest>,
    ) -> Result<Response<proto::GetChallengeResponse>, Status> {
        let Some(proto::get_challenge_request::Request::Issue(issue)) = request.into_inner().request else {
            return Err(not_here());
        };
        let mutation = baseline_mutation(&issue)?;
        let digest = mutation.digest(&BASELINE_CLUSTER, issue.client, issue.request_id);
        let challenge =
            self.challenger.challenge(mutation.key(), &digest).map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(proto::GetChallengeResponse { replica: 0, challenge }))
    }

    /// Check the answer to our challenge, build the certificate and sign it with the one key.
    async fn issue(&self, request: Request<proto::IssueRequest>) -> Result<Response<proto::IssueResponse>, Status> {
        let issue = request.into_inner();
        let mutation = baseline_mutation(&issue)?;
        let digest = mutation.digest(&BASELINE_CLUSTER, issue.client, issue.request_id);
        let answered = issue.answers.iter().find(|a| a.replica == 0).map(|a| a.answer.as_slice()).unwrap_or_default();
        if !self.challenger.check(mutation.key(), &digest, answered) {
            return Err(Status::permission_denied("the key-confirmation answer is wrong"));
        }
        let Mutation::Issue { binding: Binding::Fields { key, name, alt_names }, .. } = mutation else {
            return Err(not_here());
        };
        let now = UnixTime::from_millis(now_ms());
        let params = CertificateParams {
            serial: Serial::from_u64(self.serial.fetch_add(1, Ordering::Relaxed) + 1)
                .map_err(|e| Status::internal(e.to_string()))?,
            not_before: now,
            not_after: UnixTime(now.seconds() + BASELINE_VALIDITY_SECS),
            subject: name,
            key,
            alt_names,
        };
        let unsigned = certificate_tbs(&self.root, &params).map_err(|e| Status::internal(e.to_string()))?;
        let signature = self.key.sign(unsigned.tbs_der()).to_vec();
        let issued = unsigned.with_signature(&signature).map_err(|e| Status::internal(e.to_string()))?;
        let certificate = proto::IssuedCertificate {
            der: issued.der().to_vec(),
            serial: params.serial.as_be_bytes().to_vec(),
            subject: params.subject.common_name().to_string(),
            not_before: None,
            not_after: None,
        };
        Ok(Response::new(proto::IssueResponse { certificate: Some(certificate), issued: None }))
    }

    async fn update(&self, _: Request<proto::UpdateRequest>) -> Result<Response<proto::UpdateResponse>, Status> {
        Err(not_here())
    }

    async fn revoke(&self, _: Request<proto::RevokeRequest>) -> Result<Response<proto::RevokeResponse>, Status> {
        Err(not_here())
    }

    async fn get_status(
        &self,
        _: Request<proto::GetStatusRequest>,
    ) -> Result<Response<proto::GetStatusResponse>, Status> {
        Err(not_here())
    }

    async fn retrieve(&self, _: Request<proto::RetrieveRequest>) -> Result<Response<proto::RetrieveResponse>, Status> {
        Err(not_here())
    }

    async fn get_crl(&self, _: Request<proto::GetCrlRequest>) -> Result<Response<proto::GetCrlResponse>, Status> {
        Err(not_here())
    }

    async fn list_issued(
        &self,
        _: Request<proto::ListIssuedRequest>,
    ) -> Result<Response<proto::ListIssuedResponse>, Status> {
        Err(not_here())
    }
}

/// A self-signed root for the baseline's key (rcgen signing with it).
struct RootSigner {
    public_pkcs1: Vec<u8>,
    key: RsaSigningKey<Sha256>,
}

impl rcgen::RemoteKeyPair for RootSigner {
    fn public_key(&self) -> &[u8] {
        &self.public_pkcs1
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(self.key.sign(message).to_vec())
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}

fn baseline_root(key: &rsa::RsaPrivateKey) -> anyhow::Result<Vec<u8>> {
    use rsa::pkcs1::EncodeRsaPublicKey;
    let public_pkcs1 = key.to_public_key().to_pkcs1_der()?.as_bytes().to_vec();
    let signer = RootSigner { public_pkcs1, key: RsaSigningKey::new(key.clone()) };
    let key_pair = rcgen::KeyPair::from_remote(Box::new(signer))?;
    let mut params = rcgen::CertificateParams::default();
    let mut subject = rcgen::DistinguishedName::new();
    subject.push(rcgen::DnType::CommonName, "Fides bench baseline CA");
    params.distinguished_name = subject;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    Ok(params.self_signed(&key_pair)?.der().to_vec())
}

/// `fides-bench ca-baseline-server`: one CA process with one RSA key, serving `GetChallenge` and
/// `Issue` until SIGTERM, Ctrl-C or (with `--exit-on-stdin-close`) the end of standard input.
pub async fn baseline_server(args: CaBaselineServerArgs) -> anyhow::Result<()> {
    let bits = usize::try_from(args.rsa_bits).context("--rsa-bits")?;
    let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, bits).context("generating the RSA key")?;
    let root_der = baseline_root(&private)?;
    let root = Root::from_der(&root_der).map_err(|e| anyhow!("the baseline root: {e}"))?;
    let identity = SigningKey::generate(&mut rand::rngs::OsRng);
    let incoming =
        TcpIncoming::bind(args.listen).map_err(|e| anyhow!("binding {}: {e}", args.listen))?.with_nodelay(Some(true));
    let address = incoming.local_addr().context("reading the bound address")?;
    println!("{BANNER} {address} {}", hex::encode(&root_der));
    let service = BaselineCa {
        key: RsaSigningKey::new(private),
        root,
        challenger: Challenger::new(BASELINE_CLUSTER, 0, &identity),
        serial: AtomicU64::new(0),
    };
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(CertificationAuthorityServiceServer::new(service))
        .serve_with_incoming_shutdown(incoming, stopped(args.exit_on_stdin_close))
        .await
        .context("serving the baseline")
}
