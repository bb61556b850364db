//! The timestamping bistro over real processes on 127.0.0.1: replicas, a relay, submitters, the
//! owner.
//!
//! Each test deals its own cluster into a temporary directory on free ports, bounds its run time,
//! and stops every process it started when it ends, passing or not.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use ed25519_dalek::SigningKey;
use fides_bistro::commit::seal_commit;
use fides_bistro::proof::EpochProof;
use fides_bistro::records::{EventId, EventRecord, EventTerms, Receipt, Signed, Ticket, TicketRequest};
use fides_bistro::stream::{digest_reader, Aead, HashAlg};
use fides_client_sdk::bistro::{BistroClient, BistroOptions};
use fides_client_sdk::collect::collect;
use fides_client_sdk::ClientError;
use fides_types::codec::Wire;
use rand::{Rng, RngCore, SeedableRng};

const UP: Duration = Duration::from_secs(60);

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// The `bistro` binary, built beside the test's own binaries by `cargo test --workspace`.
fn bistro_binary() -> PathBuf {
    workspace_binary("bistro")
}

/// A relay process; killed when dropped.
struct Relay {
    child: Child,
    address: String,
    log: PathBuf,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("---- last lines of the relay's log ----");
            for line in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{line}");
            }
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

fn start_relay(dir: &Path, never_deliver: bool) -> Relay {
    let address = format!("127.0.0.1:{}", free_port());
    let data = dir.join("relay");
    let log = dir.join("relay.log");
    let mut command = Command::new(bistro_binary());
    command
        .args(["relay", "--cluster"])
        .arg(dir.join("cluster.toml"))
        .arg("--data")
        .arg(&data)
        .args(["--listen", &address])
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::fs::File::create(&log).expect("relay log")))
        .stderr(Stdio::from(std::fs::File::create(dir.join("relay.err")).expect("relay err")));
    if never_deliver {
        command.arg("--never-deliver");
    }
    let child = command.spawn().expect("starting the relay");
    Relay { child, address, log }
}

fn bistro_client(dir: &Path) -> BistroClient {
    let cluster = fides_dealer::read_cluster(&dir.join("cluster.toml")).expect("cluster file");
    let options = BistroOptions { attempt_timeout: Duration::from_secs(10), ..BistroOptions::default() };
    BistroClient::with_options(cluster, options).expect("bistro client")
}

async fn start(local: &mut fides_replica::launcher::LocalCluster, dir: &Path) {
    let probe = client(dir, Duration::from_secs(10));
    local.start_all().expect("start");
    for i in 0..probe.n() {
        wait_up(&probe, local, i, UP).await;
    }
}

/// Wait until the relay registered with the cluster.
async fn wait_relay(client: &BistroClient, relay: &mut Relay) {
    let deadline = Instant::now() + UP;
    loop {
        if let Ok(relays) = client.list_relays().await {
            if relays.iter().any(|r| r.address == relay.address) {
                return;
            }
        }
        assert!(relay.child.try_wait().ok().flatten().is_none(), "the relay exited; see {}", relay.log.display());
        assert!(Instant::now() < deadline, "the relay did not register within {UP:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn create_event(client: &BistroClient, owner: &SigningKey, deadline_ms: u64, window_ms: u64) -> EventRecord {
    let terms = EventTerms {
        deadline_ms,
        description: "assignment 1".into(),
        owner: owner.verifying_key().to_bytes(),
        hash: HashAlg::Sha256,
        aead: Aead::XChaCha20Poly1305,
        transfer_window_ms: window_ms,
        nonce: rand::random(),
    };
    client.create_event(terms, owner).await.expect("event created").record
}

/// A submitter: ticket, commit file, upload to `via`. Returns the ticket and its proof, the
/// receipt and its signature, and the commit file's path.
async fn submit(
    client: &BistroClient,
    event: &EventRecord,
    file: &[u8],
    contact: &str,
    via: &str,
    work: &Path,
) -> (Ticket, EpochProof, Receipt, [u8; 64], PathBuf) {
    let (digest, size) = digest_reader(event.terms.hash, file).expect("digest");
    let request = TicketRequest {
        event: event.event,
        digest: digest.to_vec(),
        size,
        contact: contact.into(),
        file_name: format!("{contact}.tar.gz"),
    };
    let (ticket, proof) = client.request_ticket(request).await.expect("ticket");
    let cluster = client.cluster();
    let commit = work.join(format!("commit-{}-{}", event.event, ticket.ticket));
    let output = std::fs::File::create(&commit).expect("commit file");
    seal_commit(
        &cluster.id().0,
        &cluster.encryption().public_key(),
        event.terms.aead,
        &event.event,
        ticket.ticket,
        file,
        output,
        &mut rand::rngs::OsRng,
        &mut |_| {},
    )
    .expect("sealing");
    let (receipt, signature) = upload_retrying(client, via, &commit).await;
    (ticket, proof, receipt, signature, commit)
}

/// Upload, trying again while the intermediary or the cluster is briefly unavailable (a replica
/// may be down in these tests).
async fn upload_retrying(client: &BistroClient, via: &str, commit: &Path) -> (Receipt, [u8; 64]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.upload(via, commit, &mut |_| {}).await {
            Ok(answer) => return answer,
            Err(error) => {
                assert!(Instant::now() < deadline, "upload to {via} kept failing: {error}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

/// Wait until every ticket's uploads are stored by at least t + 1 replicas (a signed status).
async fn wait_transferred(client: &BistroClient, event: EventId, tickets: &[u64], within: Duration) {
    let deadline = Instant::now() + within;
    let t = client.cluster().quorum().t() as usize;
    loop {
        let mut done = true;
        for chunk in tickets.chunks(64) {
            match client.status(event, chunk.to_vec()).await {
                Ok((status, _)) => {
                    for ticket in &status.tickets {
                        if ticket.uploads.is_empty() || ticket.uploads.iter().all(|u| u.stored_by.len() <= t) {
                            done = false;
                        }
                    }
                }
                Err(_) => done = false,
            }
        }
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "the uploads were not transferred within {within:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn wait_until(ms: u64) {
    let now = now_ms();
    if ms > now {
        tokio::time::sleep(Duration::from_millis(ms - now)).await;
    }
}

/// 4 replicas and a relay; an owner's event; 50 submitters, half through the relay and half
/// directly to replicas; one replica killed mid-run and restarted; the deadline passes; the
/// replicas pull every upload; the owner collects and every file verifies. Tickets stop
/// verifying when one bit of the file, the ticket or the signature changes.
#[test]
fn fifty_submitters_through_a_relay_and_replicas_reach_the_owner_with_a_replica_killed() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().expect("temporary directory");
    let _logs = LogsOnFailure::new(dir.path(), 4);
    let mut local = cluster(dir.path(), 4, 1, &[]);
    runtime_test(
        async {
            start(&mut local, dir.path()).await;
            let client = bistro_client(dir.path());
            let mut relay = start_relay(dir.path(), false);
            wait_relay(&client, &mut relay).await;

            let owner = SigningKey::generate(&mut rand::rngs::OsRng);
            let deadline = now_ms() + 25_000;
            let event = create_event(&client, &owner, deadline, 120_000).await;
            let work = dir.path().join("work");
            std::fs::create_dir_all(&work).expect("work directory");

            let addresses: Vec<String> =
                client.cluster().replicas().iter().map(|r| r.client_address.to_string()).collect();
            let mut submitters = Vec::new();
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            for s in 0..50u32 {
                let mut file = vec![0u8; rng.gen_range(1..200_000)];
                rng.fill_bytes(&mut file);
                // Half through the relay; the others straight to replica 0, 1 or 2 (3 is killed).
                let via = if s % 2 == 0 { relay.address.clone() } else { addresses[(s as usize / 2) % 3].clone() };
                let client = bistro_client(dir.path());
                let event = event.clone();
                let work = work.clone();
                submitters.push(async move {
                    let contact = format!("student{s}@example.org");
                    let (ticket, proof, receipt, _, _) = submit(&client, &event, &file, &contact, &via, &work).await;
                    (ticket, proof, receipt, file)
                });
            }
            // Replica 3 is killed while the submitters work, and comes back after.
            let killer = async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                local.kill(3);
            };
            let (submitted, ()) = tokio::join!(futures::future::join_all(submitters), killer);
            local.start(3).expect("restart replica 3");
            assert_eq!(submitted.len(), 50);
            for (ticket, _, receipt, file) in &submitted {
                assert!(ticket.time_ms <= deadline, "ticket {} after the deadline", ticket.ticket);
                assert_eq!(ticket.size, file.len() as u64);
                assert_eq!((receipt.event, receipt.ticket), (event.event, ticket.ticket));
            }
            let mut numbers: Vec<u64> = submitted.iter().map(|(t, _, _, _)| t.ticket).collect();
            numbers.sort_unstable();
            assert_eq!(numbers, (1..=50).collect::<Vec<_>>(), "ticket numbers count from 1 without gaps");

            // One ticket and file, with single bits changed.
            let (ticket, proof, _, file) = &submitted[0];
            check_bit_flips(&client, ticket, proof, file);
            let (record, _) = client.get_event(event.event).await.expect("event record");
            assert_eq!(record, event);

            // A ticket after the deadline is refused with both times named.
            wait_until(deadline + 500).await;
            let late = TicketRequest {
                event: event.event,
                digest: vec![1; 32],
                size: 1,
                contact: "late@example.org".into(),
                file_name: String::new(),
            };
            match client.request_ticket(late).await {
                Err(ClientError::Status { code, message }) => {
                    assert_eq!(code, tonic::Code::FailedPrecondition, "{message}");
                    assert!(message.contains("deadline") && message.contains("agreed time"), "{message}");
                }
                other => panic!("a late ticket request was answered {other:?}"),
            }

            let tickets: Vec<u64> = (1..=50).collect();
            wait_transferred(&client, event.event, &tickets, Duration::from_secs(180)).await;
            let out = dir.path().join("collected");
            let manifest =
                collect(&client, client.cluster(), event.event, &owner, &out, &mut |_| {}).await.expect("collect");
            assert_eq!(manifest.uploads.len(), 50, "{}", manifest.render());
            assert!(manifest.all_verified(), "{}", manifest.render());
            for (ticket, _, _, file) in &submitted {
                let outcome = manifest.uploads.iter().find(|u| u.ticket == ticket.ticket).expect("in the manifest");
                let saved = outcome.saved.as_ref().expect("saved");
                assert_eq!(&std::fs::read(saved).expect("saved file"), file, "ticket {}", ticket.ticket);
            }
            // The relay deleted what t + 1 replicas confirmed.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let left = count_files(&dir.path().join("relay").join("blobs"));
                if left == 0 {
                    break;
                }
                assert!(Instant::now() < deadline, "the relay still holds {left} uploads");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let probe = client_probe(dir.path());
            assert_no_equivocation(&probe, &[0, 1, 2, 3]).await;
        },
        Duration::from_secs(420),
    );
    local.stop_all(Duration::from_secs(10));
}

fn client_probe(dir: &Path) -> fides_client_sdk::Client {
    client(dir, Duration::from_secs(10))
}

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.flatten().map(|e| if e.path().is_dir() { count_files(&e.path()) } else { 1 }).sum()
}

/// The ticket verifies; with any one bit of its record, path or signature changed, it does not;
/// a file with one bit changed does not match its digest.
fn check_bit_flips(client: &BistroClient, ticket: &Ticket, proof: &EpochProof, file: &[u8]) {
    let cluster = client.cluster_id();
    let public = client.cluster().signing().public_key();
    let record = Signed::Ticket(ticket.clone());
    proof.verify(&cluster, &public, &record).expect("the ticket verifies");
    let bytes = ticket.to_bytes();
    for bit in 0..bytes.len() * 8 {
        let mut changed = bytes.clone();
        changed[bit / 8] ^= 1 << (bit % 8);
        // A change either breaks the encoding or gives a record that does not verify.
        if let Ok(other) = Ticket::from_bytes(&changed) {
            assert!(proof.verify(&cluster, &public, &Signed::Ticket(other)).is_err(), "ticket bit {bit}");
        }
    }
    for bit in 0..proof.signature.len() * 8 {
        let mut changed = proof.clone();
        changed.signature[bit / 8] ^= 1 << (bit % 8);
        assert!(changed.verify(&cluster, &public, &record).is_err(), "signature bit {bit}");
    }
    for k in 0..proof.path.len() {
        for bit in [0, 77, 255] {
            let mut changed = proof.clone();
            changed.path[k][bit / 8] ^= 1 << (bit % 8);
            assert!(changed.verify(&cluster, &public, &record).is_err(), "path {k} bit {bit}");
        }
    }
    let (digest, size) = digest_reader(ticket.hash, file).expect("digest");
    assert_eq!((digest, size), (ticket.digest, ticket.size));
    for bit in [0, 8 * file.len() / 2 + 3, 8 * file.len() - 1] {
        let mut changed = file.to_vec();
        changed[bit / 8] ^= 1 << (bit % 8);
        let (other, _) = digest_reader(ticket.hash, changed.as_slice()).expect("digest");
        assert_ne!(other, ticket.digest, "file bit {bit}");
    }
}

/// A relay that gives receipts and never delivers: the cluster marks its upload overdue and
/// counts it against the relay; the submitter resends directly to a replica; the owner gets the
/// file even though one replica answers with wrong decryption shares. Bad input gets clear
/// statuses and changes nothing.
#[test]
fn a_relay_that_never_delivers_is_caught_and_wrong_shares_do_not_stop_the_owner() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().expect("temporary directory");
    let _logs = LogsOnFailure::new(dir.path(), 4);
    let mut local = cluster(dir.path(), 4, 1, &[]);
    // Replica 0 sends wrong signature shares of every epoch's root and answers collections with
    // wrong decryption shares.
    local.set_extra_args(0, vec!["--fault-wrong-shares".into()]);
    runtime_test(
        async {
            start(&mut local, dir.path()).await;
            let client = bistro_client(dir.path());
            let mut relay = start_relay(dir.path(), true);
            wait_relay(&client, &mut relay).await;
            let owner = SigningKey::generate(&mut rand::rngs::OsRng);
            let deadline = now_ms() + 8_000;
            let event = create_event(&client, &owner, deadline, 4_000).await;
            let work = dir.path().join("work");
            std::fs::create_dir_all(&work).expect("work directory");
            let file = b"my submission".repeat(1000);
            let (ticket, _, receipt, signature, commit) =
                submit(&client, &event, &file, "a@example.org", &relay.address, &work).await;
            assert!(receipt.verify(&client.cluster_id(), &signature));

            bad_input(&client, &event, &owner, &ticket, &commit, &relay.address).await;

            // After the deadline and the transfer window the upload is overdue.
            wait_until(deadline + 4_000 + 500).await;
            let deadline_overdue = Instant::now() + Duration::from_secs(60);
            loop {
                let (status, _) = client.status(event.event, vec![ticket.ticket]).await.expect("status");
                let upload = &status.tickets[0].uploads[0];
                if upload.overdue {
                    assert!(upload.stored_by.len() <= 1, "an overdue upload is not transferred");
                    break;
                }
                assert!(Instant::now() < deadline_overdue, "the upload never became overdue: {status:?}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            // The relay list is read from one replica, which may not have applied the epoch that
            // made the upload overdue yet: wait for it, within a bound.
            let deadline_counted = Instant::now() + Duration::from_secs(30);
            loop {
                let relays = client.list_relays().await.expect("relays");
                let ours = relays.iter().find(|r| r.address == relay.address).expect("our relay");
                if ours.undelivered >= 1 {
                    break;
                }
                assert!(Instant::now() < deadline_counted, "the relay's failure is recorded: {relays:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }

            // The submitter resends the same commit file directly to replica 1.
            let replica1 = client.cluster().replicas()[1].client_address.to_string();
            let (again, _) = upload_retrying(&client, &replica1, &commit).await;
            assert_eq!(again.upload_hash, receipt.upload_hash);
            wait_transferred(&client, event.event, &[ticket.ticket], Duration::from_secs(120)).await;

            let out = dir.path().join("collected");
            let manifest =
                collect(&client, client.cluster(), event.event, &owner, &out, &mut |_| {}).await.expect("collect");
            assert!(manifest.all_verified(), "{}", manifest.render());
            let outcome = &manifest.uploads[0];
            assert_eq!(&std::fs::read(outcome.saved.as_ref().expect("saved")).expect("file"), &file);
            // Whether the owner's client met replica 0's shares depends on which replies came
            // first. Put all four replies in one book: the first t + 1 by index include replica 0,
            // so its wrong share must be found, named and left out.
            let secret = fides_crypto::x25519_dalek::StaticSecret::random_from_rng(rand::rngs::OsRng);
            let recipient = fides_crypto::x25519_dalek::PublicKey::from(&secret).to_bytes();
            let (number, _) = client.collect(event.event, &owner, recipient, rand::random()).await.expect("collect");
            let mut book = fides_client_sdk::collect::ShareBook::new(client.cluster(), event.event, number);
            for replica in 0..4u32 {
                let deadline = Instant::now() + Duration::from_secs(30);
                let reply = loop {
                    match client.collect_shares(replica, event.event, number).await {
                        Ok(reply) => break reply,
                        Err(error) => {
                            assert!(Instant::now() < deadline, "replica {replica} gave no shares: {error}");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                };
                book.add_reply(replica, &reply, &secret).expect("a usable reply");
            }
            book.recover();
            let agreed = book.agreed();
            assert_eq!(agreed.len(), 1);
            assert!(book.key(&agreed[0].id()).is_some(), "the key is recovered despite replica 0");
            assert_eq!(book.bad_shares(&agreed[0]), vec![fides_types::NodeIndex(0)], "replica 0's shares are named");
            // Replica 0's signature shares were found out by the others (and left out: every ticket
            // above verified).
            let named = (1..4).any(|i| {
                std::fs::read_to_string(dir.path().join("logs").join(format!("replica-{i}.log")))
                    .is_ok_and(|log| log.contains("replica 0 sent a bad epoch signature share or certificate"))
            });
            assert!(named, "no replica noticed replica 0's wrong signature shares");
            // …and counted it as replica 0's fault, as the replica's status reports.
            let ordering = fides_client_sdk::Client::from_cluster(local.cluster(), Default::default())
                .expect("a client of the cluster");
            let mut counted = 0;
            for i in 1..4 {
                let status = ordering.status(fides_types::NodeIndex(i)).await.expect("status");
                counted += status.peers.first().map_or(0, |p| p.faults);
            }
            assert!(counted > 0, "no replica counted replica 0's wrong signature shares as faults");
            // A collection signed by another key than the owner's is refused, and so is a replayed
            // one.
            let stranger = SigningKey::generate(&mut rand::rngs::OsRng);
            match client.collect(event.event, &stranger, [7; 32], 1).await {
                Err(ClientError::Status { code, .. }) => assert_eq!(code, tonic::Code::PermissionDenied),
                other => panic!("a stranger's collection was answered {other:?}"),
            }
            client.collect(event.event, &owner, [7; 32], 99).await.expect("a collection");
            match client.collect(event.event, &owner, [7; 32], 99).await {
                Err(ClientError::Status { code, .. }) => assert_eq!(code, tonic::Code::AlreadyExists),
                other => panic!("a replayed collection was answered {other:?}"),
            }
        },
        Duration::from_secs(300),
    );
    local.stop_all(Duration::from_secs(10));
}

/// Each kind of bad input gets its status and changes nothing.
async fn bad_input(
    client: &BistroClient,
    event: &EventRecord,
    owner: &SigningKey,
    ticket: &Ticket,
    commit: &Path,
    via: &str,
) {
    let request = |event: EventId, digest: Vec<u8>, contact: String| TicketRequest {
        event,
        digest,
        size: 1,
        contact,
        file_name: String::new(),
    };
    let expect = |result: Result<(Ticket, EpochProof), ClientError>, want: tonic::Code| match result {
        Err(ClientError::Status { code, message }) => assert_eq!(code, want, "{message}"),
        other => panic!("expected {want:?}, got {other:?}"),
    };
    expect(client.request_ticket(request(EventId([9; 16]), vec![1; 32], "x".into())).await, tonic::Code::NotFound);
    expect(client.request_ticket(request(event.event, vec![1; 20], "x".into())).await, tonic::Code::InvalidArgument);
    expect(
        client.request_ticket(request(event.event, vec![1; 32], "x".repeat(300))).await,
        tonic::Code::InvalidArgument,
    );
    // A forged owner signature on an event.
    let terms = EventTerms { nonce: 1, ..event.terms.clone() };
    let stranger = SigningKey::generate(&mut rand::rngs::OsRng);
    let forged = EventTerms { owner: owner.verifying_key().to_bytes(), ..terms };
    match client.create_event(forged, &stranger).await {
        Err(ClientError::Status { code, .. }) => assert_eq!(code, tonic::Code::PermissionDenied),
        other => panic!("a forged event was answered {other:?}"),
    }
    // A tampered upload: one bit of the capsule changed.
    let mut bytes = std::fs::read(commit).expect("commit file");
    bytes[fides_bistro::commit::HEADER_LEN + 150] ^= 1;
    let tampered = commit.with_extension("tampered");
    std::fs::write(&tampered, &bytes).expect("tampered file");
    match client.upload(via, &tampered, &mut |_| {}).await {
        Err(ClientError::Status { code, .. }) => assert_eq!(code, tonic::Code::InvalidArgument),
        other => panic!("a tampered upload was answered {other:?}"),
    }
    // A truncated upload whose size does not fit the ticket.
    let mut cut = std::fs::read(commit).expect("commit file");
    cut.truncate(cut.len() - 100);
    let cut_path = commit.with_extension("cut");
    std::fs::write(&cut_path, &cut).expect("cut file");
    match client.upload(via, &cut_path, &mut |_| {}).await {
        Err(ClientError::Status { code, .. }) => assert_eq!(code, tonic::Code::InvalidArgument),
        other => panic!("a cut upload was answered {other:?}"),
    }
    // Nothing changed: the ticket has exactly its one upload.
    let (status, _) = client.status(event.event, vec![ticket.ticket]).await.expect("status");
    assert_eq!(status.tickets[0].uploads.len(), 1, "{status:?}");
}
