//! The `ca` program's local commands (no replica needed): keys, tokens, and the refusals of bad
//! input before anything is sent.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use fides_ca::service::Token;
use fides_ca::{AttributeKind, SubjectName};
use rand::SeedableRng;

fn ca(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ca")).args(args).output().expect("the ca binary runs")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn path(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// A cluster file (no RSA key needed for tokens) in `dir`.
fn cluster(dir: &Path) -> fides_dealer::ClusterFile {
    let quorum = fides_dealer::Quorum::new(4, 1).expect("valid quorum");
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
    let dealt = fides_dealer::generate(quorum, fides_dealer::default_addresses(quorum), &mut rng).expect("dealt");
    fides_dealer::write(dir, &dealt, true).expect("written");
    dealt.public().clone()
}

#[test]
fn keys_are_written_private_once_for_each_type_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().expect("temporary directory");
    for kind in ["ed25519", "p256", "x25519"] {
        let key = dir.path().join(format!("{kind}.key"));
        let output = ca(&["keygen", "--type", kind, "--out", path(&key)]);
        assert!(output.status.success(), "{}", text(&output));
        assert!(text(&output).contains(&format!("public key {kind} ")), "{}", text(&output));
        let mode = std::fs::metadata(&key).expect("written").permissions().mode();
        assert_eq!(mode & 0o077, 0, "{kind} key readable by others");
        let again = ca(&["keygen", "--type", kind, "--out", path(&key)]);
        assert!(!again.status.success() && text(&again).contains("exists already"), "{}", text(&again));
    }
    let output = ca(&["keygen", "--type", "rsa", "--out", path(&dir.path().join("rsa.key"))]);
    assert!(!output.status.success() && text(&output).contains("unknown key type \"rsa\""), "{}", text(&output));
}

#[test]
fn an_administrator_token_names_the_name_and_verifies_under_the_admin_key() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let cluster = cluster(dir.path());
    let admin = dir.path().join("admin.key");
    assert!(ca(&["keygen", "--out", path(&admin)]).status.success());
    let cluster_path = dir.path().join("cluster.toml");
    let output = ca(&[
        "token",
        "--cluster",
        path(&cluster_path),
        "--admin-key",
        path(&admin),
        "--name",
        "alice",
        "--attr",
        "O=Example",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let bytes = hex::decode(String::from_utf8_lossy(&output.stdout).trim()).expect("hex");
    assert_eq!(bytes.len(), 104);
    let secret = std::fs::read_to_string(&admin).expect("key file");
    let secret: [u8; 32] =
        hex::decode(secret.split_whitespace().nth(1).expect("the secret")).expect("hex").try_into().expect("32 bytes");
    let admin_key = ed25519_dalek::SigningKey::from_bytes(&secret).verifying_key().to_bytes();
    let token = Token {
        name_hash: bytes[..32].try_into().expect("32"),
        not_after_ms: u64::from_le_bytes(bytes[32..40].try_into().expect("8")),
        signature: bytes[40..].try_into().expect("64"),
    };
    assert!(token.verify(&admin_key, &cluster.id().0));
    let name = SubjectName::new("alice", &[(AttributeKind::Organization, "Example")]).expect("valid");
    assert_eq!(token.name_hash, fides_ca::service::name_hash(&name).expect("a name"));
}

#[test]
fn bad_input_is_refused_with_a_clear_line_before_anything_is_sent() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let _ = cluster(dir.path());
    let key = dir.path().join("k.key");
    assert!(ca(&["keygen", "--out", path(&key)]).status.success());
    let cluster_path = dir.path().join("cluster.toml");
    let base = ["issue", "--cluster", path(&cluster_path), "--key", path(&key)];
    let cases: [(&[&str], &str); 4] = [
        (&["--name", "alice", "--attr", "XX=1"], "--attr XX"),
        (&["--name", "alice", "--attr", "O"], "is not KEY=VALUE"),
        (&["--name", &"a".repeat(65)], "--name"),
        (&["--name", "alice", "--dns", "bad-.example"], "--dns/--email"),
    ];
    for (extra, needle) in cases {
        let output = ca(&[&base[..], extra].concat());
        assert_eq!(output.status.code(), Some(1), "{extra:?}: {}", text(&output));
        assert!(text(&output).contains(needle), "{extra:?}: {}", text(&output));
    }
    // The cluster has no RSA key, so no CA.
    let output = ca(&[&base[..], &["--name", "alice"]].concat());
    assert!(text(&output).contains("no threshold RSA key"), "{}", text(&output));
}
