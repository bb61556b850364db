//! The certification authority over real processes on 127.0.0.1: four replicas with a 1024-bit
//! threshold RSA key, the client SDK, and the system's `openssl` as an independent verifier.
//!
//! The test deals its own cluster into a temporary directory on free ports, bounds its run time,
//! and stops every process it started when it ends, passing or not.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use fides_api::proto;
use fides_api::proto::certification_authority_service_server::{
    CertificationAuthorityService, CertificationAuthorityServiceServer,
};
use fides_ca::service::{CertificateStatus, KeySecret, Record};
use fides_ca::{AltNames, AttributeKind, RevocationReason, SubjectName};
use fides_client_sdk::ca::{certificate_serial, crl_serials, CaClient, CaOptions, Subject};
use fides_dealer::{
    derive_client_addresses, generate_with_ca, parse_addresses, write, CaSettings, ProtocolParameters, Quorum,
    RsaOptions,
};
use fides_replica::launcher::{LocalCluster, ReplicaOptions};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use rand::SeedableRng;

const UP: Duration = Duration::from_secs(60);

/// A 4-replica cluster with a 1024-bit threshold RSA key (the smallest the system's openssl
/// accepts; dealt from a fixed seed, so the safe-prime search takes a fraction of a second) and
/// the CA's default settings, in `dir`, on free ports.
fn deal(dir: &Path) -> LocalCluster {
    deal_with(dir, CaSettings::DEFAULT)
}

/// [`deal`] with these CA settings.
fn deal_with(dir: &Path, settings: CaSettings) -> LocalCluster {
    let quorum = Quorum::new(4, 1).expect("valid quorum");
    let base = free_port_base(4);
    let list = (0..4).map(|i| format!("127.0.0.1:{}", u32::from(base) + i)).collect::<Vec<_>>().join(",");
    let addresses = parse_addresses(&list, quorum).expect("addresses");
    let clients = derive_client_addresses(&addresses).expect("client addresses");
    let mut progress = |_| {};
    let not_before = SystemTime::now() - Duration::from_secs(3600);
    let rsa = RsaOptions { modulus_bits: 1024, not_before, progress: &mut progress };
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(13);
    let protocol = ProtocolParameters { checkpoint_interval: 8, ..ProtocolParameters::DEFAULT };
    let cluster =
        generate_with_ca(quorum, protocol, addresses, clients, Some(rsa), Some(settings), &mut rng).expect("dealing");
    write(dir, &cluster, true).expect("writing the cluster");
    let options = ReplicaOptions { metrics_port_first: None, extra_args: Vec::new() };
    LocalCluster::new(dir, Path::new(env!("CARGO_BIN_EXE_replica")), options).expect("launcher")
}

fn openssl_present() -> bool {
    Command::new("openssl").arg("version").output().is_ok_and(|output| output.status.success())
}

/// `openssl verify` of `cert` against the cluster's root, with `extra` arguments: (success, output).
fn openssl_verify(dir: &Path, cert: &Path, extra: &[&str]) -> (bool, String) {
    let output = Command::new("openssl")
        .arg("verify")
        .args(["-CAfile", &dir.join("ca-root.pem").display().to_string()])
        .args(extra)
        .arg(cert)
        .output()
        .expect("openssl runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn pem(label: &str, der: &[u8]) -> String {
    der::pem::encode_string(label, der::pem::LineEnding::LF, der).expect("PEM")
}

fn name(common_name: &str) -> SubjectName {
    SubjectName::new(common_name, &[(AttributeKind::Organization, "Example")]).expect("a valid name")
}

#[test]
fn certificates_are_issued_updated_revoked_and_checked_by_openssl_over_four_replica_processes() {
    let _one = one_at_a_time();
    let root = tempfile::tempdir().expect("temporary directory");
    let dir = root.path().join("cluster");
    let mut local = deal(&dir);
    let _logs = LogsOnFailure::new(&dir, 4);
    let openssl = openssl_present();
    if !openssl {
        eprintln!("note: no openssl on this machine; the certificates are checked by the SDK only");
    }
    runtime_test(
        async {
            let probe = client(&dir, Duration::from_secs(10));
            local.start_all().expect("start");
            for i in 0..4 {
                wait_up(&probe, &mut local, i, UP).await;
            }
            let cluster = fides_dealer::read_cluster(&dir.join("cluster.toml")).expect("cluster file");
            let ca =
                CaClient::new(&cluster, CaOptions { attempt_timeout: Duration::from_secs(20), ..CaOptions::default() })
                    .expect("CA client");
            let secret = KeySecret::Ed25519(ed25519_dalek::SigningKey::from_bytes(&[7; 32]));
            let key = secret.public();

            // Issue.
            let alt_names = AltNames::new(&["alice.example.org"], &[]).expect("valid names");
            let subject = Subject::Fields { name: name("alice"), alt_names: alt_names.clone() };
            let first = ca.issue(&secret, &subject, None).await.expect("issued");
            let first_path = dir.join("first.pem");
            std::fs::write(&first_path, pem("CERTIFICATE", &first.der)).expect("write");
            if openssl {
                let (ok, text) = openssl_verify(&dir, &first_path, &[]);
                assert!(ok, "openssl refused the issued certificate: {text}");
            }
            // Another key's issue sent to 2t + 1 replicas at once (MAFTIA D5 §3.2.5): executed once.
            let quorum = CaClient::new(
                &cluster,
                CaOptions { attempt_timeout: Duration::from_secs(20), to_quorum: true, ..CaOptions::default() },
            )
            .expect("CA client");
            let other = KeySecret::Ed25519(ed25519_dalek::SigningKey::from_bytes(&[8; 32]));
            let bob = Subject::Fields { name: name("bob"), alt_names: AltNames::new(&[], &[]).expect("none") };
            let bobs = quorum.issue(&other, &bob, None).await.expect("issued through 2t + 1 replicas");
            assert_eq!(quorum.retrieve(Some(&other.public()), None).await.expect("retrieved"), vec![bobs.der]);

            // A second issue for the same key is refused: it has a certificate (key-major).
            let again = ca.issue(&secret, &subject, None).await;
            assert!(
                matches!(&again, Err(fides_client_sdk::ClientError::Status { code: tonic::Code::AlreadyExists, .. })),
                "{again:?}"
            );

            // Update while replica 3 lags: stopped (SIGSTOP) while the others order, agree on and
            // sign the update (the client takes its challenges from the three), resumed before the
            // retrieval below, which its stale store answers with the first certificate until it
            // catches up: the client must take what 2t + 1 replicas agree on.
            let lagging = local.pids()[3].expect("replica 3 runs");
            signal(lagging, Signal::SIGSTOP);
            let renamed = Subject::Fields { name: name("alice2"), alt_names };
            let second = ca.update(&secret, &renamed, None).await;
            signal(lagging, Signal::SIGCONT);
            let second = second.expect("updated with a replica stopped");
            assert_ne!(second.serial, first.serial);
            let superseded: Vec<_> = second
                .revoked
                .iter()
                .filter_map(|r| if let Record::Revoked(r) = &r.record { Some(r.serial.clone()) } else { None })
                .collect();
            assert_eq!(superseded, vec![first.serial.clone()], "the update did not revoke the first certificate");
            let second_path = dir.join("second.pem");
            std::fs::write(&second_path, pem("CERTIFICATE", &second.der)).expect("write");

            // Retrieve: 2t + 1 replicas agree on the current certificate.
            let current = ca.retrieve(Some(&key), None).await.expect("retrieved");
            assert_eq!(current, vec![second.der.clone()]);

            // Status: the first is revoked (superseded), the second good.
            let (status, _) = ca.status(&first.serial).await.expect("status");
            assert!(
                matches!(status.status, CertificateStatus::Revoked { reason: RevocationReason::Superseded, .. }),
                "{status:?}"
            );
            let (status, _) = ca.status(&second.serial).await.expect("status");
            assert_eq!(status.status, CertificateStatus::Good);

            // Revoke the second.
            let revoked = ca.revoke(&secret, None, RevocationReason::KeyCompromise).await.expect("revoked");
            assert_eq!(revoked.len(), 1);
            let (status, _) = ca.status(&second.serial).await.expect("status");
            assert!(matches!(status.status, CertificateStatus::Revoked { .. }), "{status:?}");
            assert_eq!(ca.retrieve(Some(&key), None).await.expect("retrieved"), Vec::<Vec<u8>>::new());

            // The CRL lists both within an epoch or so (each status request orders one).
            let serial = certificate_serial(&second.der).expect("a certificate");
            let deadline = Instant::now() + Duration::from_secs(60);
            let crl = loop {
                let crl = ca.crl().await.expect("a CRL");
                let serials = crl_serials(&crl.der).expect("a CRL");
                if serials.contains(&serial) {
                    assert!(serials.contains(&first.serial.as_be_bytes().to_vec()), "the superseded one is missing");
                    break crl;
                }
                assert!(Instant::now() < deadline, "the CRL does not list the revoked certificate");
                let _ = ca.status(&second.serial).await;
            };
            if openssl {
                let crl_path = dir.join("crl.pem");
                std::fs::write(&crl_path, pem("X509 CRL", &crl.der)).expect("write");
                let crl_arg = crl_path.display().to_string();
                let (ok, text) = openssl_verify(&dir, &second_path, &["-crl_check", "-CRLfile", &crl_arg]);
                assert!(!ok && text.contains("certificate revoked"), "openssl accepted a revoked certificate: {text}");
                let (ok, text) = openssl_verify(&dir, &first_path, &["-crl_check", "-CRLfile", &crl_arg]);
                assert!(
                    !ok && text.contains("certificate revoked"),
                    "openssl accepted a superseded certificate: {text}"
                );
                let (ok, text) = openssl_verify(&dir, &second_path, &[]);
                assert!(ok, "without the CRL the certificate verifies: {text}");
            }
            // The log lists the three issues and both revocations.
            let (entries, _) = ca.list_issued(0, 100).await.expect("the log");
            let issued = entries.iter().filter(|(_, r)| matches!(r, Record::Issued(_))).count();
            let revocations = entries.iter().filter(|(_, r)| matches!(r, Record::Revoked(_))).count();
            assert_eq!((issued, revocations), (3, 2), "{entries:?}");

            // A Byzantine replica 3 that sends bad challenges: the real one is stopped and a
            // server on its client address answers every challenge with bytes of its own (a
            // signature of them is no answer to replica 3's real challenge) and refuses the rest.
            // The client answers what it got, replicas 0 to 2 confirm the key, and the
            // certificate is issued all the same.
            local.kill(3);
            let address = cluster.replicas()[3].client_address.to_string();
            let listener = tokio::net::TcpListener::bind(&address).await.expect("replica 3's client address");
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let server = tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(CertificationAuthorityServiceServer::new(BadChallenges))
                    .serve_with_incoming(incoming),
            );
            let carol = KeySecret::Ed25519(ed25519_dalek::SigningKey::from_bytes(&[9; 32]));
            let subject = Subject::Fields { name: name("carol"), alt_names: AltNames::new(&[], &[]).expect("none") };
            let carols = ca.issue(&carol, &subject, None).await.expect("issued despite bad challenges");
            assert_eq!(certificate_serial(&carols.der).expect("a certificate"), carols.serial.as_be_bytes().to_vec());
            server.abort();
        },
        Duration::from_secs(240),
    );
    local.stop_all(Duration::from_secs(5));
}

/// A Byzantine replica's client API: a challenge of its own for every request, nothing else.
struct BadChallenges;

fn refused() -> tonic::Status {
    tonic::Status::unavailable("a Byzantine replica")
}

#[tonic::async_trait]
impl CertificationAuthorityService for BadChallenges {
    async fn get_challenge(
        &self,
        _: tonic::Request<proto::GetChallengeRequest>,
    ) -> Result<tonic::Response<proto::GetChallengeResponse>, tonic::Status> {
        Ok(tonic::Response::new(proto::GetChallengeResponse { replica: 3, challenge: vec![0x5a; 32] }))
    }

    async fn issue(
        &self,
        _: tonic::Request<proto::IssueRequest>,
    ) -> Result<tonic::Response<proto::IssueResponse>, tonic::Status> {
        Err(refused())
    }

    async fn update(
        &self,
        _: tonic::Request<proto::UpdateRequest>,
    ) -> Result<tonic::Response<proto::UpdateResponse>, tonic::Status> {
        Err(refused())
    }

    async fn revoke(
        &self,
        _: tonic::Request<proto::RevokeRequest>,
    ) -> Result<tonic::Response<proto::RevokeResponse>, tonic::Status> {
        Err(refused())
    }

    async fn get_status(
        &self,
        _: tonic::Request<proto::GetStatusRequest>,
    ) -> Result<tonic::Response<proto::GetStatusResponse>, tonic::Status> {
        Err(refused())
    }

    async fn retrieve(
        &self,
        _: tonic::Request<proto::RetrieveRequest>,
    ) -> Result<tonic::Response<proto::RetrieveResponse>, tonic::Status> {
        Err(refused())
    }

    async fn get_crl(
        &self,
        _: tonic::Request<proto::GetCrlRequest>,
    ) -> Result<tonic::Response<proto::GetCrlResponse>, tonic::Status> {
        Err(refused())
    }

    async fn list_issued(
        &self,
        _: tonic::Request<proto::ListIssuedRequest>,
    ) -> Result<tonic::Response<proto::ListIssuedResponse>, tonic::Status> {
        Err(refused())
    }
}

/// Send `signal` to process `pid`.
fn signal(pid: u32, signal: Signal) {
    let pid = Pid::from_raw(i32::try_from(pid).expect("a process id"));
    nix::sys::signal::kill(pid, signal).expect("the replica process takes the signal");
}

/// Run the `ca` program against the cluster in `dir`.
fn ca_cli(dir: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(workspace_binary("ca"))
        .arg("--cluster")
        .arg(dir.join("cluster.toml"))
        .args(args)
        .output()
        .expect("the ca program runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// The value of `key=` in the first line of `text` that has it.
fn field<'t>(text: &'t str, key: &str) -> &'t str {
    let start = text.find(&format!("{key}=")).unwrap_or_else(|| panic!("no {key}= in {text}")) + key.len() + 1;
    text[start..].split_whitespace().next().expect("a value")
}

#[test]
fn the_ca_program_binds_names_with_tokens_in_name_major_mode_and_verify_sees_the_revocation() {
    let _one = one_at_a_time();
    let root = tempfile::tempdir().expect("temporary directory");
    let dir = root.path().join("cluster");
    let admin = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let settings = CaSettings {
        mode: fides_dealer::CaMode::NameMajor,
        policy: fides_dealer::CaPolicy::Token { admin: admin.verifying_key() },
        validity_days: 30,
    };
    let mut local = deal_with(&dir, settings);
    let _logs = LogsOnFailure::new(&dir, 4);
    let admin_key = root.path().join("admin.key");
    std::fs::write(&admin_key, format!("ed25519 {}\n", hex::encode(admin.to_bytes()))).expect("admin key");
    runtime_test(
        async {
            let probe = client(&dir, Duration::from_secs(10));
            local.start_all().expect("start");
            for i in 0..4 {
                wait_up(&probe, &mut local, i, UP).await;
            }
            let work = |name: &str| root.path().join(name).display().to_string();
            let (alice_key, bob_key) = (work("alice.key"), work("bob.key"));
            assert!(ca_cli(&dir, &["keygen", "--type", "p256", "--out", &alice_key]).0);
            assert!(ca_cli(&dir, &["keygen", "--type", "x25519", "--out", &bob_key]).0);
            // Without a token the policy refuses.
            let (ok, text) = ca_cli(&dir, &["issue", "--key", &alice_key, "--name", "alice", "--dns", "alice.example"]);
            assert!(!ok && text.contains("PermissionDenied"), "{text}");
            // With the administrator's token for the name.
            let (ok, token) =
                ca_cli(&dir, &["token", "--admin-key", &admin_key.display().to_string(), "--name", "alice"]);
            assert!(ok, "{token}");
            let token = token.trim().to_string();
            let alice_pem = work("alice.pem");
            let args = ["issue", "--key", &alice_key, "--name", "alice", "--dns", "alice.example"];
            let (ok, text) = ca_cli(&dir, &[&args[..], &["--token", &token, "--out", &alice_pem]].concat());
            assert!(ok, "{text}");
            let alice_serial = field(&text, "serial").to_string();
            let (ok, text) = ca_cli(&dir, &["verify", &alice_pem]);
            assert!(ok && text.contains("inclusion ok") && text.contains("not revoked"), "{text}");
            if openssl_present() {
                let (ok, text) = openssl_verify(&dir, Path::new(&alice_pem), &[]);
                assert!(ok, "openssl refused a P-256 certificate: {text}");
            }
            // Name-major: the name is bound, another key gets it by an update only.
            let bob_pem = work("bob.pem");
            let (ok, text) = ca_cli(&dir, &["issue", "--key", &bob_key, "--name", "alice", "--token", &token]);
            assert!(!ok && text.contains("AlreadyExists"), "{text}");
            let args = ["update", "--key", &bob_key, "--name", "alice", "--token", &token, "--out", &bob_pem];
            let (ok, text) = ca_cli(&dir, &args);
            assert!(ok && text.contains(&format!("superseded serial={alice_serial}")), "{text}");
            let bob_serial = field(&text, "serial").to_string();
            let (ok, text) = ca_cli(&dir, &["get", "--name", "alice"]);
            assert!(ok && text.matches("BEGIN CERTIFICATE").count() == 1, "{text}");
            let (ok, text) = ca_cli(&dir, &["verify", &alice_pem]);
            assert!(!ok && text.contains("revoked"), "the superseded certificate verified: {text}");
            // Revoke bob's; `verify` sees it once the CRL lists it.
            let (ok, text) = ca_cli(&dir, &["revoke", "--key", &bob_key, "--reason", "key-compromise"]);
            assert!(ok && text.contains(&format!("revoked serial={bob_serial}")), "{text}");
            let (ok, text) = ca_cli(&dir, &["status", &bob_serial]);
            assert!(ok && text.contains("revoked"), "{text}");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let (ok, text) = ca_cli(&dir, &["verify", &bob_pem]);
                if !ok && text.contains("revoked") {
                    break;
                }
                assert!(Instant::now() < deadline, "verify never saw the revocation: {text}");
                let _ = ca_cli(&dir, &["status", &bob_serial]);
            }
        },
        Duration::from_secs(240),
    );
    local.stop_all(Duration::from_secs(5));
}
