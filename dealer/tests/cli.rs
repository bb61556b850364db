//! The `dealer` binary, run as an operator would run it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The threshold RSA modulus `init` deals in these tests unless one says otherwise: a test-only
/// size, so that the safe-prime search takes milliseconds, not seconds.
const TEST_RSA_BITS: &str = "512";

/// Run the dealer; an `init` without `--rsa-bits` gets [`TEST_RSA_BITS`].
fn dealer(args: &[&str]) -> Output {
    let mut args = args.to_vec();
    if args.first() == Some(&"init") && !args.contains(&"--rsa-bits") {
        args.extend(["--rsa-bits", TEST_RSA_BITS]);
    }
    Command::new(env!("CARGO_BIN_EXE_dealer")).args(args).output().expect("the dealer binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn init(dir: &Path, n: u32, t: u32) {
    let output = dealer(&["init", "-n", &n.to_string(), "-t", &t.to_string(), "--out", path_str(dir)]);
    assert!(output.status.success(), "init -n {n} -t {t} failed: {}", stderr(&output));
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

fn out_dir() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().expect("a temporary directory");
    let dir = root.path().join("cluster");
    (root, dir)
}

fn verify(dir: &Path) -> Output {
    dealer(&["verify", path_str(dir)])
}

fn assert_refused(output: &Output, needle: &str) {
    assert!(!output.status.success(), "accepted; stdout: {}", stdout(output));
    assert!(stderr(output).contains(needle), "stderr does not mention {needle:?}: {}", stderr(output));
}

/// The value of `key = "…"` in a TOML file.
fn value_of(text: &str, key: &str) -> String {
    let line = text
        .lines()
        .find(|line| line.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no {key} in the file"));
    line.split('"').nth(1).expect("a quoted value").to_string()
}

fn replace_value(path: &Path, key: &str, new_value: &str) {
    let text = fs::read_to_string(path).expect("replica file readable");
    let old_value = value_of(&text, key);
    fs::write(path, text.replace(&old_value, new_value)).expect("replica file writable");
}

/// Flip one hex digit in the middle of `key`'s value.
fn flip_one_hex_digit(path: &Path, key: &str) {
    let text = fs::read_to_string(path).expect("replica file readable");
    let mut value = value_of(&text, key).into_bytes();
    let middle = value.len() / 2;
    value[middle] = if value[middle] == b'0' { b'1' } else { b'0' };
    replace_value(path, key, &String::from_utf8(value).expect("hex is ASCII"));
}

#[test]
fn init_then_verify_succeeds() {
    let (_root, dir) = out_dir();
    init(&dir, 4, 1);
    let output = verify(&dir);
    assert!(output.status.success(), "verify failed: {}", stderr(&output));
    assert!(stdout(&output).starts_with("OK"), "{}", stdout(&output));
    let names: Vec<String> = (0..4).map(|i| format!("replica-{i}.toml")).collect();
    for name in names.iter().map(String::as_str).chain(["cluster.toml"]) {
        assert!(dir.join(name).is_file(), "{name} not written");
    }
}

#[test]
fn a_cluster_of_31_replicas_verifies() {
    let (_root, dir) = out_dir();
    init(&dir, 31, 10);
    let output = verify(&dir);
    assert!(output.status.success(), "verify failed: {}", stderr(&output));
}

#[test]
fn replica_files_are_private_and_the_cluster_file_is_not() {
    let (_root, dir) = out_dir();
    init(&dir, 4, 1);
    for i in 0..4 {
        let mode = fs::metadata(dir.join(format!("replica-{i}.toml"))).expect("written").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "replica-{i}.toml has mode {mode:o}");
    }
    let mode = fs::metadata(dir.join("cluster.toml")).expect("written").permissions().mode();
    assert_eq!(mode & 0o077, 0o044, "cluster.toml has mode {mode:o}");
}

#[test]
fn too_few_replicas_for_t_are_refused() {
    let (_root, dir) = out_dir();
    assert_refused(&dealer(&["init", "-n", "3", "-t", "1", "--out", path_str(&dir)]), "3t + 1");
    assert!(!dir.exists(), "a refused init wrote files");
}

#[test]
fn zero_replicas_are_refused() {
    let (_root, dir) = out_dir();
    assert_refused(&dealer(&["init", "-n", "0", "-t", "0", "--out", path_str(&dir)]), "n = 0");
}

#[test]
fn more_than_1024_replicas_are_refused() {
    let (_root, dir) = out_dir();
    assert_refused(&dealer(&["init", "-n", "1025", "-t", "1", "--out", path_str(&dir)]), "1024");
}

#[test]
fn a_non_empty_directory_needs_force() {
    let (_root, dir) = out_dir();
    fs::create_dir(&dir).expect("directory created");
    fs::write(dir.join("notes.txt"), "keep me").expect("file written");
    assert_refused(&dealer(&["init", "-n", "4", "-t", "1", "--out", path_str(&dir)]), "--force");
    assert!(!dir.join("cluster.toml").exists());
    let output = dealer(&["init", "-n", "4", "-t", "1", "--out", path_str(&dir), "--force"]);
    assert!(output.status.success(), "init --force failed: {}", stderr(&output));
    assert!(verify(&dir).status.success());
    assert!(dir.join("notes.txt").exists(), "--force removed a file that is not the dealer's");
}

#[test]
fn forcing_a_smaller_cluster_over_a_larger_one_removes_its_replica_files() {
    let (_root, dir) = out_dir();
    init(&dir, 7, 2);
    let output = dealer(&["init", "-n", "4", "-t", "1", "--out", path_str(&dir), "--force"]);
    assert!(output.status.success(), "init --force failed: {}", stderr(&output));
    assert!(!dir.join("replica-6.toml").exists());
    let output = verify(&dir);
    assert!(output.status.success(), "verify failed: {}", stderr(&output));
}

#[test]
fn address_lists_of_the_wrong_length_are_refused() {
    let (_root, dir) = out_dir();
    let list = "10.0.0.1:7100,10.0.0.2:7100,10.0.0.3:7100";
    assert_refused(&dealer(&["init", "-n", "4", "-t", "1", "--out", path_str(&dir), "--addresses", list]), "n = 4");
}

#[test]
fn malformed_address_lists_are_refused() {
    let (_root, dir) = out_dir();
    let cases = [
        ("10.0.0.1:7100,10.0.0.2,10.0.0.3:7100,10.0.0.4:7100", "10.0.0.2"),
        ("a:1,b:2,c:99999,d:4", "65535"),
        ("a:1,,c:3,d:4", "empty entry"),
        ("a:1,b:2,c:3,d:4,", "empty entry"),
        ("a:1,b:2,a:1,d:4", "more than once"),
        ("a b:1,b:2,c:3,d:4", "a b"),
    ];
    for (list, needle) in cases {
        let output = dealer(&["init", "-n", "4", "-t", "1", "--out", path_str(&dir), "--addresses", list]);
        assert_refused(&output, needle);
    }
    assert!(!dir.exists(), "a refused init wrote files");
}

#[test]
fn given_addresses_are_used_in_order() {
    let (_root, dir) = out_dir();
    let list = "r0.example.org:7100,10.0.0.2:7200,[::1]:7300,r3.example.org:7400";
    let output = dealer(&["init", "-n", "4", "-t", "1", "--out", path_str(&dir), "--addresses", list]);
    assert!(output.status.success(), "init failed: {}", stderr(&output));
    let summary = stdout(&dealer(&["inspect", path_str(&dir.join("cluster.toml"))]));
    let positions: Vec<usize> = list.split(',').map(|a| summary.find(a).expect("address shown")).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{summary}");
}

#[test]
fn default_addresses_are_consecutive_loopback_ports_from_7100() {
    let (_root, dir) = out_dir();
    init(&dir, 4, 1);
    let text = fs::read_to_string(dir.join("cluster.toml")).expect("cluster file readable");
    for port in 7100..7104 {
        assert!(text.contains(&format!("\"127.0.0.1:{port}\"")), "{text}");
    }
}

fn assert_verify_names(dir: &Path, file: &str) {
    let output = verify(dir);
    assert_refused(&output, file);
}

#[test]
fn verify_names_the_file_with_a_flipped_digit_in_any_share() {
    for key in ["signing_share", "coin_share", "encryption_share", "identity", "rsa_share"] {
        let (_root, dir) = out_dir();
        init(&dir, 4, 1);
        flip_one_hex_digit(&dir.join("replica-2.toml"), key);
        let output = verify(&dir);
        assert_refused(&output, "replica-2.toml");
        for other in ["replica-0.toml", "replica-1.toml", "replica-3.toml"] {
            assert!(!stderr(&output).contains(other), "{key}: {other} blamed: {}", stderr(&output));
        }
    }
}

#[test]
fn verify_names_both_files_when_shares_are_swapped() {
    for key in ["signing_share", "coin_share", "encryption_share"] {
        let (_root, dir) = out_dir();
        init(&dir, 4, 1);
        let (one, two) = (dir.join("replica-1.toml"), dir.join("replica-2.toml"));
        let share_one = value_of(&fs::read_to_string(&one).expect("readable"), key);
        let share_two = value_of(&fs::read_to_string(&two).expect("readable"), key);
        replace_value(&one, key, &share_two);
        replace_value(&two, key, &share_one);
        let output = verify(&dir);
        assert_refused(&output, "replica-1.toml");
        assert_refused(&output, "replica-2.toml");
    }
}

#[test]
fn verify_names_swapped_replica_files() {
    let (_root, dir) = out_dir();
    init(&dir, 4, 1);
    let (one, two, spare) = (dir.join("replica-1.toml"), dir.join("replica-2.toml"), dir.join("spare"));
    fs::rename(&one, &spare).expect("renamed");
    fs::rename(&two, &one).expect("renamed");
    fs::rename(&spare, &two).expect("renamed");
    assert_refused(&verify(&dir), "replica-1.toml");
}

#[test]
fn verify_names_a_missing_replica_file() {
    let (_root, dir) = out_dir();
    init(&dir, 4, 1);
    fs::remove_file(dir.join("replica-3.toml")).expect("removed");
    assert_verify_names(&dir, "replica-3.toml");
}

#[test]
fn verify_names_a_malformed_replica_file() {
    let (_root, dir) = out_dir();
    init(&dir, 4, 1);
    fs::write(dir.join("replica-0.toml"), "format = \"fides-replica-v1\"\nindex = [\n").expect("written");
    assert_verify_names(&dir, "replica-0.toml");
}

#[test]
fn verify_names_a_replica_file_of_another_cluster() {
    let (_root, dir) = out_dir();
    let (_other_root, other) = out_dir();
    init(&dir, 4, 1);
    init(&other, 4, 1);
    fs::copy(other.join("replica-1.toml"), dir.join("replica-1.toml")).expect("copied");
    let output = verify(&dir);
    assert_refused(&output, "replica-1.toml");
    assert_refused(&output, "cluster");
}

#[test]
fn verify_refuses_a_tampered_cluster_file() {
    let (_root, dir) = out_dir();
    init(&dir, 4, 1);
    let path = dir.join("cluster.toml");
    let text = fs::read_to_string(&path).expect("readable");
    fs::write(&path, text.replace("127.0.0.1:7102", "127.0.0.1:7101")).expect("written");
    assert_verify_names(&dir, "cluster.toml");
}

#[test]
fn verify_refuses_a_directory_without_cluster_file() {
    let (_root, dir) = out_dir();
    init(&dir, 4, 1);
    fs::remove_file(dir.join("cluster.toml")).expect("removed");
    assert_verify_names(&dir, "cluster.toml");
}

#[test]
fn verify_refuses_a_readable_replica_file() {
    let (_root, dir) = out_dir();
    init(&dir, 4, 1);
    let path = dir.join("replica-0.toml");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
    assert_verify_names(&dir, "replica-0.toml");
}

#[test]
fn inspect_prints_no_secret() {
    let (_root, dir) = out_dir();
    init(&dir, 4, 1);
    let secrets: Vec<String> = (0..4)
        .flat_map(|i| {
            let text = fs::read_to_string(dir.join(format!("replica-{i}.toml"))).expect("readable");
            ["signing_share", "coin_share", "encryption_share", "identity", "rsa_share"].map(|key| value_of(&text, key))
        })
        .collect();
    let cluster_id = value_of(&fs::read_to_string(dir.join("cluster.toml")).expect("readable"), "cluster_id");
    for name in ["cluster.toml", "replica-0.toml", "replica-3.toml"] {
        let output = dealer(&["inspect", path_str(&dir.join(name))]);
        assert!(output.status.success(), "inspect {name} failed: {}", stderr(&output));
        let printed = format!("{}{}", stdout(&output), stderr(&output)).to_lowercase();
        assert!(printed.contains(&cluster_id), "{name}: no cluster id in {printed}");
        for secret in &secrets {
            assert!(!printed.contains(&secret.to_lowercase()), "{name}: a secret is printed");
        }
    }
}

#[test]
fn inspect_of_a_tampered_replica_file_quotes_no_secret() {
    let (_root, dir) = out_dir();
    init(&dir, 4, 1);
    let path = dir.join("replica-1.toml");
    let text = fs::read_to_string(&path).expect("readable");
    let share = value_of(&text, "coin_share");
    fs::write(&path, text.replace(&share, &format!("{share}zz"))).expect("written");
    let output = dealer(&["inspect", path_str(&path)]);
    assert_refused(&output, "replica-1.toml");
    assert!(!stderr(&output).contains(&share));
}

fn init_with(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["init", "-n", "4", "-t", "1", "--out", path_str(dir)];
    args.extend_from_slice(extra);
    dealer(&args)
}

/// The `client_address` values of a cluster file, in order.
fn client_addresses(dir: &Path) -> Vec<String> {
    let text = fs::read_to_string(dir.join("cluster.toml")).expect("cluster file readable");
    text.lines()
        .filter(|line| line.starts_with("client_address = "))
        .map(|line| line.split('"').nth(1).expect("a quoted value").to_string())
        .collect()
}

#[test]
fn default_client_addresses_are_consecutive_loopback_ports_from_7200() {
    let (_root, dir) = out_dir();
    init(&dir, 4, 1);
    assert_eq!(client_addresses(&dir), ["127.0.0.1:7200", "127.0.0.1:7201", "127.0.0.1:7202", "127.0.0.1:7203"]);
    let summary = stdout(&dealer(&["inspect", path_str(&dir.join("cluster.toml"))]));
    assert!(summary.contains("client address"), "{summary}");
    assert!(
        summary.lines().any(|line| line.contains("127.0.0.1:7103") && line.contains("127.0.0.1:7203")),
        "{summary}"
    );
}

#[test]
fn client_addresses_follow_given_addresses_at_port_plus_100() {
    let (_root, dir) = out_dir();
    let output = init_with(&dir, &["--addresses", "r0.example.org:7100,10.0.0.2:8000,[::1]:9000,r3.example.org:65435"]);
    assert!(output.status.success(), "init failed: {}", stderr(&output));
    assert_eq!(client_addresses(&dir), ["r0.example.org:7200", "10.0.0.2:8100", "[::1]:9100", "r3.example.org:65535"]);
    assert!(verify(&dir).status.success());
}

#[test]
fn client_addresses_that_cannot_be_derived_are_refused() {
    let (_root, dir) = out_dir();
    let output = init_with(&dir, &["--addresses", "a:1,b:2,c:65436,d:4"]);
    assert_refused(&output, "c:65436");
    assert_refused(&output, "--client-addresses");
    // Derived from replica 0's address, replica 0's client address is replica 1's address.
    assert_refused(&init_with(&dir, &["--addresses", "a:7100,a:7200,a:7300,a:7400"]), "replica-to-replica address");
    assert!(!dir.exists(), "a refused init wrote files");
    let output = init_with(&dir, &["--addresses", "a:1,b:2,c:65436,d:4", "--client-addresses", "a:5,b:6,c:7,d:8"]);
    assert!(output.status.success(), "init failed: {}", stderr(&output));
}

#[test]
fn given_client_addresses_are_used_in_order() {
    let (_root, dir) = out_dir();
    let list = "c0.example.org:443, 10.0.0.2:50051,[0::1]:50051,C3.Example.org:443";
    let output = init_with(&dir, &["--client-addresses", list]);
    assert!(output.status.success(), "init failed: {}", stderr(&output));
    let expected = ["c0.example.org:443", "10.0.0.2:50051", "[::1]:50051", "c3.example.org:443"];
    assert_eq!(client_addresses(&dir), expected);
    let text = fs::read_to_string(dir.join("cluster.toml")).expect("cluster file readable");
    assert!(text.contains("\"127.0.0.1:7103\""), "the default addresses are not used: {text}");
    let summary = stdout(&dealer(&["inspect", path_str(&dir.join("cluster.toml"))]));
    let positions: Vec<usize> = expected.iter().map(|a| summary.find(a).expect("client address shown")).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{summary}");
    let output = verify(&dir);
    assert!(output.status.success(), "verify failed: {}", stderr(&output));
}

#[test]
fn malformed_client_address_lists_are_refused() {
    let (_root, dir) = out_dir();
    let cases = [
        ("10.0.0.1:7200,10.0.0.2,10.0.0.3:7200,10.0.0.4:7200", "client address list entry 2"),
        ("a:1,b:2,c:99999,d:4", "65535"),
        ("a:1,,c:3,d:4", "empty entry"),
        ("a:1,b:2,c:3", "client address list has 3 entries but n = 4"),
        ("a:1,b:2,A:1,d:4", "client address list: a:1 appears more than once"),
    ];
    for (list, needle) in cases {
        assert_refused(&init_with(&dir, &["--client-addresses", list]), needle);
    }
    assert!(!dir.exists(), "a refused init wrote files");
}

#[test]
fn a_client_address_equal_to_a_replica_address_is_refused() {
    let (_root, dir) = out_dir();
    // Another replica's default address.
    let output = init_with(&dir, &["--client-addresses", "c:1,c:2,127.0.0.1:7101,c:4"]);
    assert_refused(&output, "client address 127.0.0.1:7101 of replica #2");
    assert_refused(&output, "replica-to-replica address of replica #1");
    // Its own given address.
    let addresses = ["--addresses", "a:1,b:2,c:3,d:4"];
    assert_refused(&init_with(&dir, &[&addresses[..], &["--client-addresses", "a:5,b:6,c:7,D:4"]].concat()), "d:4");
    assert!(!dir.exists(), "a refused init wrote files");
}

#[test]
fn a_cluster_file_without_client_addresses_reads_with_derived_ones() {
    let (_root, dir) = out_dir();
    let output = init_with(&dir, &["--client-addresses", "c:1,c:2,c:3,c:4"]);
    assert!(output.status.success(), "init failed: {}", stderr(&output));
    let path = dir.join("cluster.toml");
    let text = fs::read_to_string(&path).expect("readable");
    let old: String = text.lines().filter(|l| !l.starts_with("client_address")).map(|l| format!("{l}\n")).collect();
    assert_ne!(old, text);
    fs::write(&path, old).expect("written");
    let output = verify(&dir);
    assert!(output.status.success(), "verify of a file without client addresses failed: {}", stderr(&output));
    let summary = stdout(&dealer(&["inspect", path_str(&path)]));
    for i in 0..4 {
        let (address, client) = (format!("127.0.0.1:{}", 7100 + i), format!("127.0.0.1:{}", 7200 + i));
        assert!(summary.lines().any(|line| line.contains(&address) && line.contains(&client)), "{summary}");
    }
}

#[test]
fn a_tampered_client_address_is_refused_by_the_reader() {
    let (_root, dir) = out_dir();
    init(&dir, 4, 1);
    let path = dir.join("cluster.toml");
    let text = fs::read_to_string(&path).expect("readable");
    fs::write(&path, text.replace("\"127.0.0.1:7202\"", "\"127.0.0.1:7100\"")).expect("written");
    let output = verify(&dir);
    assert_refused(&output, "cluster.toml");
    assert_refused(&output, "replica-to-replica address of replica #0");
}

#[test]
fn protocol_parameters_given_to_init_are_in_the_file_and_shown_by_inspect_and_verify() {
    let (_root, dir) = out_dir();
    let output = dealer(&[
        "init",
        "-n",
        "4",
        "-t",
        "1",
        "--out",
        path_str(&dir),
        "--batch-size",
        "200",
        "--checkpoint-interval",
        "8",
    ]);
    assert!(output.status.success(), "init failed: {}", stderr(&output));
    let text = fs::read_to_string(dir.join("cluster.toml")).expect("cluster file readable");
    assert!(text.contains("format = \"fides-cluster-v2\""), "{text}");
    assert!(text.contains("\n[protocol]\nbatch_size = 200\ncheckpoint_interval = 8\n"), "{text}");
    let summary = stdout(&dealer(&["inspect", path_str(&dir.join("cluster.toml"))]));
    assert!(summary.contains("batch_size           200"), "{summary}");
    assert!(summary.contains("dedup_window_epochs  10000"), "{summary}");
    let verified = verify(&dir);
    assert!(verified.status.success(), "verify failed: {}", stderr(&verified));
    assert!(stdout(&verified).contains("protocol: batch_size = 200, checkpoint_interval = 8"), "{}", stdout(&verified));
}

#[test]
fn protocol_parameters_that_cannot_run_the_cluster_are_refused_by_init() {
    let (_root, dir) = out_dir();
    let output = dealer(&["init", "-n", "4", "-t", "1", "--out", path_str(&dir), "--checkpoint-interval", "0"]);
    assert_refused(&output, "protocol parameters: checkpoint_interval = 0");
    assert!(!dir.join("cluster.toml").exists(), "a refused init wrote a cluster file");
}

#[test]
fn verify_refuses_a_cluster_file_whose_parameter_was_changed() {
    let (_root, dir) = out_dir();
    init(&dir, 4, 1);
    let path = dir.join("cluster.toml");
    let text = fs::read_to_string(&path).expect("cluster file readable");
    fs::write(&path, text.replacen("batch_size = 1000", "batch_size = 999", 1)).expect("cluster file writable");
    assert_refused(&verify(&dir), "does not match the key material");
}

fn openssl(args: &[&str]) -> Option<Output> {
    let present = Command::new("openssl").arg("version").output().is_ok_and(|out| out.status.success());
    if !present {
        println!("note: no openssl on this machine; the openssl check is skipped");
        return None;
    }
    Some(Command::new("openssl").args(args).output().expect("openssl runs"))
}

#[test]
fn init_writes_a_self_signed_root_certificate_that_openssl_accepts() {
    let (_root, dir) = out_dir();
    // 1024 bits: openssl's default security level refuses smaller keys in a chain.
    let output = dealer(&["init", "-n", "4", "-t", "1", "--out", path_str(&dir), "--rsa-bits", "1024"]);
    assert!(output.status.success(), "init failed: {}", stderr(&output));
    assert!(stderr(&output).contains("looking for safe prime 2 of 2"), "no progress shown: {}", stderr(&output));
    let root = dir.join("ca-root.pem");
    let mode = fs::metadata(&root).expect("ca-root.pem written").permissions().mode();
    assert_eq!(mode & 0o077, 0o044, "ca-root.pem has mode {mode:o}");
    assert!(fs::read_to_string(&root).expect("readable").starts_with("-----BEGIN CERTIFICATE-----"));
    let output = verify(&dir);
    assert!(stdout(&output).contains("1024-bit threshold RSA key"), "{}{}", stdout(&output), stderr(&output));
    let cluster_id = value_of(&fs::read_to_string(dir.join("cluster.toml")).expect("readable"), "cluster_id");
    let Some(checked) = openssl(&["verify", "-CAfile", path_str(&root), path_str(&root)]) else { return };
    assert!(checked.status.success(), "openssl verify: {}{}", stdout(&checked), stderr(&checked));
    let text = openssl(&["x509", "-in", path_str(&root), "-noout", "-text"]).expect("openssl is present");
    let text = stdout(&text);
    for needle in [
        "Version: 3",
        "Signature Algorithm: sha256WithRSAEncryption",
        "Public-Key: (1024 bit)",
        "Exponent: 65537",
        "CA:TRUE",
        "Certificate Sign, CRL Sign",
        &format!("OU = {cluster_id}"),
    ] {
        assert!(text.contains(needle), "no {needle:?} in the root certificate:\n{text}");
    }
}

#[test]
fn verify_names_a_replica_file_without_its_rsa_share() {
    let (_root, dir) = out_dir();
    init(&dir, 4, 1);
    let path = dir.join("replica-3.toml");
    let text = fs::read_to_string(&path).expect("readable");
    let kept: String =
        text.lines().filter(|line| !line.starts_with("rsa_share = ")).map(|l| format!("{l}\n")).collect();
    fs::write(&path, kept).expect("written");
    assert_verify_names(&dir, "replica-3.toml");
    assert!(stderr(&verify(&dir)).contains("no threshold RSA share"));
}

#[test]
fn rsa_sizes_that_are_not_a_multiple_of_16_bits_in_range_are_refused_before_dealing() {
    let (_root, dir) = out_dir();
    for bits in ["1000", "256", "16384"] {
        assert_refused(&dealer(&["init", "-n", "4", "-t", "1", "--out", path_str(&dir), "--rsa-bits", bits]), bits);
    }
    assert!(!dir.join("cluster.toml").exists());
}

#[test]
fn init_writes_the_ca_settings_given_and_refuses_bad_ones() {
    let (_root, dir) = out_dir();
    let output = init_with(&dir, &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = fs::read_to_string(dir.join("cluster.toml")).expect("cluster file readable");
    assert!(text.contains("[ca]\nmode = \"key-major\"\npolicy = \"open\"\nvalidity_days = 90\n"), "{text}");
    assert!(stdout(&dealer(&["inspect", path_str(&dir.join("cluster.toml"))])).contains("policy = open"));
    let admin = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    let flags = ["--ca-mode", "name-major", "--ca-policy", "token", "--ca-admin", admin, "--ca-validity-days", "7"];
    let output = init_with(&dir, &[&flags[..], &["--force"]].concat());
    assert!(output.status.success(), "{}", stderr(&output));
    let text = fs::read_to_string(dir.join("cluster.toml")).expect("cluster file readable");
    let table = format!("[ca]\nmode = \"name-major\"\npolicy = \"token\"\nadmin = \"{admin}\"\nvalidity_days = 7\n");
    assert!(text.contains(&table), "{text}");
    assert!(verify(&dir).status.success());
    let refused = [
        (vec!["--ca-policy", "token"], "--ca-policy: the token policy needs the administrator's Ed25519 key"),
        (vec!["--ca-admin", admin], "--ca-admin is given but the policy is open"),
        (vec!["--ca-mode", "key"], "--ca-mode: \"key\" is not a binding mode"),
        (vec!["--ca-validity-days", "0"], "validity_days = 0 is not in 1 ..= 3660"),
        (vec!["--ca-policy", "token", "--ca-admin", "zz"], "--ca-admin: not 64 hex digits"),
    ];
    for (extra, needle) in refused {
        let (_root, dir) = out_dir();
        assert_refused(&init_with(&dir, &extra), needle);
        assert!(!dir.join("cluster.toml").exists(), "written despite {needle}");
    }
}
