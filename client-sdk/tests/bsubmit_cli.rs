//! The `bsubmit` binary's offline paths: settings, the missing e-mail address, and verifying
//! tickets and receipts with nothing but the cluster file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ed25519_dalek::SigningKey;
use fides_bistro::proof::{self, EpochProof};
use fides_bistro::records::{EventId, Receipt, Signed, Ticket};
use fides_bistro::stream::{digest_reader, HashAlg};
use fides_bistro::text::{render_receipt, render_ticket};
use fides_dealer::{ClusterFile, Quorum};
use fides_types::NodeIndex;

const EVENT: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

/// Run `bsubmit` with `home` as its bistro directory and `$HOME`, and no cluster in the
/// environment.
fn bsubmit(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bsubmit"))
        .args(args)
        .env("BISTRO_HOME", home.join(".bistro"))
        .env("HOME", home)
        .env_remove("BISTRO_CLUSTER")
        .output()
        .expect("the bsubmit binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A failure: the exit status, and exactly one line on stderr that is no panic.
fn failed_with(output: &Output, code: i32) -> String {
    let text = stderr(output);
    assert_eq!(output.status.code(), Some(code), "stdout: {}\nstderr: {text}", stdout(output));
    assert_eq!(text.lines().count(), 1, "one line expected: {text}");
    assert!(text.starts_with("bsubmit: "), "{text}");
    assert!(!text.contains("panicked") && !text.contains("RUST_BACKTRACE"), "{text}");
    text
}

/// A dealt cluster of 4 replicas (t = 1) written to `dir`: its public file, path, and the shares
/// of the signing key of `t + 1` replicas.
struct Dealt {
    public: ClusterFile,
    path: PathBuf,
    signers: Vec<fides_crypto::ThresholdKeys>,
}

fn deal(dir: &Path) -> Dealt {
    let quorum = Quorum::new(4, 1).expect("4 replicas tolerate 1 fault");
    let cluster = fides_dealer::generate(quorum, fides_dealer::default_addresses(quorum), &mut rand::thread_rng())
        .expect("a cluster is dealt");
    let written = fides_dealer::write(&dir.join("cluster"), &cluster, false).expect("the cluster is written");
    let path = written.last().expect("the cluster file is written last").clone();
    let public = fides_dealer::read_cluster(&path).expect("the cluster file reads back");
    let signers = cluster.replicas()[..2]
        .iter()
        .map(|replica| replica.signing_keys(&public).expect("the replica file is of the cluster"))
        .collect();
    Dealt { public, path, signers }
}

/// The cluster's signature on `record` as leaf 1 of an epoch of 3 leaves (format 1: tickets issued
/// before the epoch certificate keep verifying), combined from `t + 1`
/// signature shares.
fn sign(dealt: &Dealt, record: &Signed, time_ms: u64) -> EpochProof {
    let cluster = dealt.public.id().0;
    let leaves = vec![[1u8; 32], record.leaf(&cluster), [3u8; 32]];
    let root = proof::root(&leaves);
    let point = proof::root_point(&cluster, 17, time_ms, 3, &root);
    let shares: BTreeMap<NodeIndex, _> =
        dealt.signers.iter().enumerate().map(|(i, keys)| (NodeIndex(i as u32), keys.sign_share(point))).collect();
    let signature = dealt.signers[0].combine(&shares, point).expect("t + 1 valid shares combine");
    EpochProof {
        format: proof::FORMAT_BISTRO_TREE,
        epoch: 17,
        time_ms,
        index: 1,
        count: 3,
        path: proof::path(&leaves, 1),
        signature: signature.to_bytes(),
    }
}

/// A submission and its ticket file, in `dir`.
fn ticket_files(dir: &Path, dealt: &Dealt) -> (PathBuf, PathBuf, Ticket) {
    let content = b"the programming assignment, as a tarball".repeat(100);
    let file = dir.join("out.tar.gz");
    std::fs::write(&file, &content).expect("the submission is written");
    let (digest, size) = digest_reader(HashAlg::Sha256, content.as_slice()).expect("hashing memory works");
    let ticket = Ticket {
        event: EventId::parse(EVENT).expect("a valid event id"),
        ticket: 24,
        hash: HashAlg::Sha256,
        digest,
        size,
        contact: "you@example.org".into(),
        file_name: "out.tar.gz".into(),
        time_ms: 1_700_000_000_123,
    };
    let proof = sign(dealt, &Signed::Ticket(ticket.clone()), ticket.time_ms);
    let bti = dir.join("24.bti");
    std::fs::write(&bti, render_ticket(&dealt.public.id().0, &ticket, &proof)).expect("the ticket is written");
    (bti, file, ticket)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

#[test]
fn config_stores_the_email_address_and_shows_it() {
    let home = tempfile::tempdir().expect("a temporary directory");
    let output = bsubmit(home.path(), &["config", "-set", "email=you@example.org"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let saved = std::fs::read_to_string(home.path().join(".bistro/config")).expect("the config is written");
    assert!(saved.lines().any(|line| line == "email=you@example.org"), "{saved}");

    let output = bsubmit(home.path(), &["config", "--show"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).lines().any(|line| line == "email=you@example.org"), "{}", stdout(&output));

    let output = bsubmit(home.path(), &["config", "-set", "email=not an address"]);
    failed_with(&output, 1);
    let output = bsubmit(home.path(), &["config", "-set", "colour=blue"]);
    assert!(failed_with(&output, 2).contains("unknown setting \"colour\""));
    let output = bsubmit(home.path(), &["config", "-set", "cluster=/nonexistent/cluster.toml"]);
    assert!(failed_with(&output, 1).contains("not a usable cluster file"));
}

#[test]
fn upload_without_an_email_address_says_how_to_give_one() {
    let home = tempfile::tempdir().expect("a temporary directory");
    let file = home.path().join("out.tar.gz");
    std::fs::write(&file, b"data").expect("the submission is written");
    let output = bsubmit(home.path(), &["upload", "-event", EVENT, "-file", path(&file)]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr(&output),
        "Cannot start bsubmit without your e-mail address.\nPlease run bsubmit with '-email'.\n"
    );
}

#[test]
fn upload_names_what_is_missing_before_contacting_anyone() {
    let home = tempfile::tempdir().expect("a temporary directory");
    let file = home.path().join("out.tar.gz");
    std::fs::write(&file, b"data").expect("the submission is written");
    let output = bsubmit(home.path(), &["upload", "-event", EVENT, "-file", path(&file), "-email", "you@example.org"]);
    assert!(failed_with(&output, 1).contains("no cluster file"), "{}", stderr(&output));
    let output = bsubmit(home.path(), &["upload", "-event", "xyz", "-file", path(&file), "-email", "you@example.org"]);
    assert!(failed_with(&output, 2).contains("-event"), "{}", stderr(&output));
    let missing = home.path().join("missing.tar.gz");
    let output =
        bsubmit(home.path(), &["upload", "-event", EVENT, "-file", path(&missing), "-email", "you@example.org"]);
    assert!(failed_with(&output, 1).contains("missing.tar.gz"), "{}", stderr(&output));
    let output = bsubmit(home.path(), &["upload", "-event", EVENT]);
    failed_with(&output, 2);
    let output = bsubmit(home.path(), &["resend", "-event", EVENT, "-ticket", "3"]);
    assert!(failed_with(&output, 1).contains("no encrypted file of ticket 3"), "{}", stderr(&output));
}

#[test]
fn verify_accepts_a_valid_ticket_and_its_file_and_refuses_a_changed_file() {
    let home = tempfile::tempdir().expect("a temporary directory");
    let dealt = deal(home.path());
    let (bti, file, ticket) = ticket_files(home.path(), &dealt);

    let output = bsubmit(home.path(), &["-cluster", path(&dealt.path), "verify", path(&bti), path(&file)]);
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    assert_eq!(out.matches("Verification Successful").count(), 2, "{out}");
    assert!(out.contains("ticket 24 of event 5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"), "{out}");
    assert!(out.contains("The timestamp (time at the server) is '2023-11-14T22:13:20.123Z'."), "{out}");
    assert!(out.contains(&format!("same sha256 digest, same size ({} bytes)", ticket.size)), "{out}");

    // The cluster file may also come from the environment or the config.
    let output = Command::new(env!("CARGO_BIN_EXE_bsubmit"))
        .args(["verify", path(&bti)])
        .env("BISTRO_HOME", home.path().join(".bistro"))
        .env("BISTRO_CLUSTER", &dealt.path)
        .output()
        .expect("the bsubmit binary runs");
    assert!(output.status.success(), "{}", stderr(&output));
    let output = bsubmit(home.path(), &["config", "-set", &format!("cluster={}", path(&dealt.path))]);
    assert!(output.status.success(), "{}", stderr(&output));
    let output = bsubmit(home.path(), &["verify", path(&bti)]);
    assert!(output.status.success(), "{}", stderr(&output));

    // One changed byte in the file.
    let mut content = std::fs::read(&file).expect("the submission reads");
    content[100] ^= 0x01;
    std::fs::write(&file, &content).expect("the submission is written");
    let output = bsubmit(home.path(), &["verify", path(&bti), path(&file)]);
    assert!(failed_with(&output, 1).contains("does NOT match: its sha256 digest is"), "{}", stderr(&output));

    // One more byte in the file.
    content[100] ^= 0x01;
    content.push(0);
    std::fs::write(&file, &content).expect("the submission is written");
    let output = bsubmit(home.path(), &["verify", path(&bti), path(&file)]);
    failed_with(&output, 1);
}

#[test]
fn verify_refuses_a_changed_ticket_or_one_of_another_cluster() {
    let home = tempfile::tempdir().expect("a temporary directory");
    let dealt = deal(home.path());
    let (bti, _, _) = ticket_files(home.path(), &dealt);
    let text = std::fs::read_to_string(&bti).expect("the ticket reads");

    let changed = home.path().join("changed.bti");
    std::fs::write(&changed, text.replace("file_size=", "file_size=1")).expect("written");
    let output = bsubmit(home.path(), &["--cluster", path(&dealt.path), "verify", path(&changed)]);
    assert!(failed_with(&output, 1).contains("does not verify"), "{}", stderr(&output));

    std::fs::write(&changed, text.replace("ticket_id=24", "ticket_id=25")).expect("written");
    let output = bsubmit(home.path(), &["--cluster", path(&dealt.path), "verify", path(&changed)]);
    assert!(failed_with(&output, 1).contains("does not verify"), "{}", stderr(&output));

    std::fs::write(&changed, text.replace("ticket_id=24", "ticket_id=x")).expect("written");
    let output = bsubmit(home.path(), &["--cluster", path(&dealt.path), "verify", path(&changed)]);
    assert!(failed_with(&output, 1).contains("ticket_id= must be a decimal number"), "{}", stderr(&output));

    let other = tempfile::tempdir().expect("a temporary directory");
    let other = deal(other.path());
    let output = bsubmit(home.path(), &["--cluster", path(&other.path), "verify", path(&bti)]);
    assert!(failed_with(&output, 1).contains("not of this cluster"), "{}", stderr(&output));

    let output = bsubmit(home.path(), &["--cluster", path(&dealt.path), "verify", path(&home.path().join("nope.bti"))]);
    assert!(failed_with(&output, 1).contains("nope.bti"), "{}", stderr(&output));
}

#[test]
fn verify_checks_a_receipt_and_its_encrypted_file() {
    let home = tempfile::tempdir().expect("a temporary directory");
    let dealt = deal(home.path());
    let cluster = dealt.public.id().0;
    let encrypted = home.path().join("24");
    std::fs::write(&encrypted, b"an encrypted file, as far as this test cares").expect("written");
    let bytes = std::fs::read(&encrypted).expect("reads");
    let (upload_hash, upload_size) = digest_reader(HashAlg::Sha256, bytes.as_slice()).expect("hashing memory works");
    let key = SigningKey::from_bytes(&[9; 32]);
    let receipt = Receipt {
        event: EventId::parse(EVENT).expect("a valid event id"),
        ticket: 24,
        upload_hash,
        upload_size,
        intermediary: key.verifying_key().to_bytes(),
        receipt_id: 15,
        time_ms: 1_700_000_001_000,
    };
    let signature = receipt.sign(&key, &cluster);
    let bri = home.path().join("relay_15.bri");
    std::fs::write(&bri, render_receipt(&cluster, &receipt, &signature)).expect("written");

    let output = bsubmit(home.path(), &["--cluster", path(&dealt.path), "verify", path(&bri), path(&encrypted)]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("is a receipt signed by intermediary"), "{}", stdout(&output));

    let text = std::fs::read_to_string(&bri).expect("reads");
    std::fs::write(&bri, text.replace("receipt_id=15", "receipt_id=16")).expect("written");
    let output = bsubmit(home.path(), &["--cluster", path(&dealt.path), "verify", path(&bri)]);
    assert!(failed_with(&output, 1).contains("does not verify on this receipt"), "{}", stderr(&output));
}

#[test]
fn records_without_tickets_says_so() {
    let home = tempfile::tempdir().expect("a temporary directory");
    let dealt = deal(home.path());
    let output = bsubmit(home.path(), &["--cluster", path(&dealt.path), "records", "-event", EVENT]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("You have no tickets for event"), "{}", stdout(&output));
}
