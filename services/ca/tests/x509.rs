//! Certificates, CRLs and requests against a threshold RSA root dealt by the dealer, checked with
//! the system's `openssl` (an implementation no one here wrote; the checks are skipped with a
//! note when it is not installed).

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, UNIX_EPOCH};

use fides_ca::{
    certificate_tbs, crl_tbs, parse_csr, AltNames, AttributeKind, CertificateParams, CrlParams, CsrError, InputError,
    IssuedCertificate, IssuedCrl, RevocationReason, Revoked, Root, RootError, Serial, SubjectKey, SubjectName,
    UnixTime,
};
use fides_threshold_rsa::{combine, sign_share, verify_signature, PublicKey, SecretShare};
use rand::SeedableRng;

/// The root's notBefore, the leaves' notBefore, and the time `openssl verify` checks at
/// (`-attime`), so that no check depends on the clock.
const ROOT_NOT_BEFORE: u64 = 1_700_000_000;
const ISSUED_AT: u64 = 1_750_000_000;
const CHECKED_AT: u64 = 1_751_000_000;
const NINETY_DAYS: u64 = 90 * 24 * 3600;

struct Ca {
    root_pem: String,
    root: Root,
    public: PublicKey,
    shares: Vec<SecretShare>,
}

/// A 4-replica cluster (t = 1) with a 1024-bit threshold RSA key and its root certificate, dealt
/// once by the dealer from a fixed seed (about 0.1 s).
fn ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| {
        let quorum = fides_types::Quorum::new(4, 1).expect("4 replicas tolerate 1 fault");
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let options = fides_dealer::RsaOptions {
            modulus_bits: 1024,
            not_before: UNIX_EPOCH + Duration::from_secs(ROOT_NOT_BEFORE),
            progress: &mut |_| {},
        };
        let addresses = fides_dealer::default_addresses(quorum);
        let client_addresses = fides_dealer::default_client_addresses(quorum);
        let cluster = fides_dealer::generate_with_rsa(
            quorum,
            Default::default(),
            addresses,
            client_addresses,
            Some(options),
            &mut rng,
        )
        .expect("a valid cluster");
        let root_pem = cluster.root_certificate().expect("an RSA cluster has a root").to_owned();
        let public = cluster.public().rsa().expect("an RSA cluster has the key").clone();
        let shares = cluster.replicas().iter().map(|replica| replica.rsa_share().expect("a share").clone()).collect();
        let root = Root::from_pem(root_pem.as_bytes()).expect("the dealer's root is usable");
        Ca { root_pem, root, public, shares }
    })
}

/// What `t + 1` replicas (1 and 3) make: shares of `message`, combined and verified.
fn threshold_sign(message: &[u8]) -> Vec<u8> {
    let ca = ca();
    let shares: Vec<_> = [1, 3]
        .iter()
        .map(|&index| sign_share(&ca.public, &ca.shares[index], message).expect("the share fits the key"))
        .collect();
    let combined = combine(&ca.public, message, &shares).expect("two honest shares combine");
    assert!(combined.faults.is_empty());
    combined.signature
}

fn ed25519_key() -> SubjectKey {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    SubjectKey::ed25519(key.verifying_key().as_bytes()).expect("a valid key")
}

fn params(serial: u64, key: SubjectKey) -> CertificateParams {
    CertificateParams {
        serial: Serial::from_u64(serial).expect("positive"),
        not_before: UnixTime(ISSUED_AT),
        not_after: UnixTime(ISSUED_AT + NINETY_DAYS),
        subject: SubjectName::new(
            "alice.example.org",
            &[(AttributeKind::Organization, "Example Ltd"), (AttributeKind::Country, "CH")],
        )
        .expect("a valid name"),
        key,
        alt_names: AltNames::new(&["alice.example.org", "www.example.org"], &["alice@example.org"])
            .expect("valid names"),
    }
}

fn issue(params: &CertificateParams) -> IssuedCertificate {
    let unsigned = certificate_tbs(&ca().root, params).expect("valid parameters");
    let signature = threshold_sign(unsigned.tbs_der());
    unsigned.with_signature(&signature).expect("a signature of the modulus's length")
}

fn crl(number: u64, revoked: Vec<Revoked>) -> IssuedCrl {
    let params = CrlParams {
        this_update: UnixTime(CHECKED_AT - 3600),
        next_update: UnixTime(CHECKED_AT + 3600),
        number,
        revoked,
    };
    let unsigned = crl_tbs(&ca().root, &params).expect("valid parameters");
    let signature = threshold_sign(unsigned.tbs_der());
    unsigned.with_signature(&signature).expect("a signature of the modulus's length")
}

fn openssl_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| {
        let present = Command::new("openssl").arg("version").output().is_ok_and(|output| output.status.success());
        if !present {
            eprintln!("note: no openssl on this machine; the openssl checks are skipped");
        }
        present
    })
}

/// Run `openssl args` in `dir`: (success, stdout and stderr).
fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn write(dir: &Path, name: &str, contents: &[u8]) {
    std::fs::write(dir.join(name), contents).expect("the temporary directory is writable");
}

/// `openssl verify` at [`CHECKED_AT`] against the root, with RFC 5280's stricter checks
/// (`-x509_strict`) and `extra` options.
fn verify(dir: &Path, leaf: &str, extra: &[&str]) -> (bool, String) {
    let at = CHECKED_AT.to_string();
    let mut args = vec!["verify", "-x509_strict", "-attime", &at, "-CAfile", "root.pem"];
    args.extend_from_slice(extra);
    args.push(leaf);
    openssl(dir, &args)
}

fn setup_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    write(dir.path(), "root.pem", ca().root_pem.as_bytes());
    dir
}

#[test]
fn the_root_is_the_clusters_threshold_key_and_not_another() {
    let ca = ca();
    ca.root.check_key(&ca.public).expect("the dealer's root carries the threshold key");
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
    let other = fides_threshold_rsa::deal(512, 4, 1, &mut rng, &mut |_| {}).expect("a test key");
    assert_eq!(ca.root.check_key(&other.public), Err(RootError::KeyMismatch));
}

#[test]
fn a_certificate_signed_by_t_plus_one_shares_verifies_with_openssl_and_shows_its_profile() {
    let params = params(0x0102_0304, ed25519_key());
    let certificate = issue(&params);
    let unsigned = certificate_tbs(&ca().root, &params).expect("valid parameters");
    let signature = &certificate.der()[certificate.der().len() - 128..];
    assert!(verify_signature(&ca().public, unsigned.tbs_der(), signature), "the signature covers the TBS bytes");
    if !openssl_present() {
        return;
    }
    let dir = setup_dir();
    write(dir.path(), "leaf.pem", certificate.pem().as_bytes());
    let (ok, text) = verify(dir.path(), "leaf.pem", &[]);
    assert!(ok && text.contains("leaf.pem: OK"), "openssl verify: {text}");
    // The purposes a TLS stack and a mail client check: key usage, extended key usage, names.
    for purpose in [
        ["-purpose", "sslserver", "-verify_hostname", "www.example.org"],
        ["-purpose", "sslclient", "-verify_hostname", "alice.example.org"],
        ["-purpose", "smimesign", "-verify_email", "alice@example.org"],
    ] {
        let (ok, text) = verify(dir.path(), "leaf.pem", &purpose);
        assert!(ok, "openssl verify {purpose:?}: {text}");
    }
    let (ok, _) = verify(dir.path(), "leaf.pem", &["-verify_hostname", "mallory.example.org"]);
    assert!(!ok, "a name the certificate does not carry");
    let (ok, text) = openssl(dir.path(), &["x509", "-in", "leaf.pem", "-noout", "-text"]);
    assert!(ok, "{text}");
    for expected in [
        "Version: 3 (0x2)",
        "Serial Number: 16909060 (0x1020304)",
        "Signature Algorithm: sha256WithRSAEncryption",
        "Subject: C = CH, O = Example Ltd, CN = alice.example.org",
        "Public Key Algorithm: ED25519",
        "X509v3 Basic Constraints: critical\n                CA:FALSE",
        "X509v3 Key Usage: critical\n                Digital Signature",
        "TLS Web Server Authentication, TLS Web Client Authentication, E-mail Protection",
        "DNS:alice.example.org, DNS:www.example.org, email:alice@example.org",
        "X509v3 Subject Key Identifier",
        "X509v3 Authority Key Identifier",
        "Not Before: Jun 15 15:06:40 2025 GMT",
    ] {
        assert!(text.contains(expected), "openssl x509 -text lacks {expected:?}:\n{text}");
    }
    // The issuer is the root's subject, byte for byte as openssl reads it.
    let (_, issuer) = openssl(dir.path(), &["x509", "-in", "leaf.pem", "-noout", "-issuer", "-nameopt", "RFC2253"]);
    let (_, subject) = openssl(dir.path(), &["x509", "-in", "root.pem", "-noout", "-subject", "-nameopt", "RFC2253"]);
    assert_eq!(issuer.trim_start_matches("issuer="), subject.trim_start_matches("subject="));
    // The authority key identifier is the root's subject key identifier.
    let (_, root_text) = openssl(dir.path(), &["x509", "-in", "root.pem", "-noout", "-ext", "subjectKeyIdentifier"]);
    let root_ski = root_text.lines().nth(1).expect("the root has a subject key identifier").trim().to_owned();
    assert!(text.contains(&root_ski), "the AKI is not the root's SKI {root_ski}:\n{text}");
}

#[test]
fn p256_and_x25519_certificates_verify_with_openssl_and_carry_their_key_usage() {
    let p256_secret = p256::SecretKey::from_slice(&[9; 32]).expect("a scalar below the order");
    let compressed = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&p256_secret.public_key(), true);
    let p256_key = SubjectKey::p256(compressed.as_bytes()).expect("a valid key");
    let x25519_key =
        SubjectKey::x25519(x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([5; 32])).as_bytes())
            .expect("a valid key");
    let mut p256_params = params(2, p256_key);
    // A notAfter from 2050 on is a GeneralizedTime (RFC 5280 §4.1.2.5).
    p256_params.not_after = UnixTime(2_556_143_999);
    let mut x25519_params = params(3, x25519_key);
    x25519_params.alt_names = AltNames::new(&[], &["alice@example.org"]).expect("a valid address");
    let p256_certificate = issue(&p256_params);
    let x25519_certificate = issue(&x25519_params);
    if !openssl_present() {
        return;
    }
    let dir = setup_dir();
    write(dir.path(), "p256.pem", p256_certificate.pem().as_bytes());
    write(dir.path(), "x25519.pem", x25519_certificate.pem().as_bytes());
    for (file, expected) in [
        (
            "p256.pem",
            ["id-ecPublicKey", "NIST CURVE: P-256", "Digital Signature", "Not After : Dec 31 23:59:59 2050 GMT"],
        ),
        ("x25519.pem", ["X25519", "Key Agreement", "E-mail Protection", "email:alice@example.org"]),
    ] {
        let (ok, text) = verify(dir.path(), file, &[]);
        assert!(ok, "openssl verify {file}: {text}");
        let (_, text) = openssl(dir.path(), &["x509", "-in", file, "-noout", "-text"]);
        for expected in expected {
            assert!(text.contains(expected), "{file} lacks {expected:?}:\n{text}");
        }
    }
    let (_, text) = openssl(dir.path(), &["x509", "-in", "x25519.pem", "-noout", "-text"]);
    assert!(!text.contains("TLS Web"), "an X25519 key is not for TLS authentication:\n{text}");
    let (ok, _) = verify(dir.path(), "x25519.pem", &["-purpose", "sslserver"]);
    assert!(!ok, "openssl accepts an X25519 certificate for a TLS server");
    let (ok, text) =
        verify(dir.path(), "p256.pem", &["-purpose", "sslserver", "-verify_hostname", "alice.example.org"]);
    assert!(ok, "openssl verify -purpose sslserver p256.pem: {text}");
}

#[test]
fn a_crl_that_revokes_the_certificate_makes_openssl_refuse_it_and_one_without_it_does_not() {
    let certificate = issue(&params(0x0a0b, ed25519_key()));
    let revoked = |serial: u64, reason| Revoked {
        serial: Serial::from_u64(serial).expect("positive"),
        revoked_at: UnixTime(CHECKED_AT - 7200),
        reason,
    };
    let revoking = crl(7, vec![revoked(99, None), revoked(0x0a0b, Some(RevocationReason::KeyCompromise))]);
    let other = crl(8, vec![revoked(99, Some(RevocationReason::Superseded))]);
    let empty = crl(9, vec![]);
    if !openssl_present() {
        return;
    }
    let dir = setup_dir();
    write(dir.path(), "leaf.pem", certificate.pem().as_bytes());
    write(dir.path(), "revoking.pem", revoking.pem().as_bytes());
    write(dir.path(), "other.pem", other.pem().as_bytes());
    write(dir.path(), "empty.pem", empty.pem().as_bytes());
    let (ok, text) = verify(dir.path(), "leaf.pem", &["-crl_check", "-CRLfile", "revoking.pem"]);
    assert!(!ok && text.contains("certificate revoked"), "openssl verify with the revoking CRL: {text}");
    for crl in ["other.pem", "empty.pem"] {
        let (ok, text) = verify(dir.path(), "leaf.pem", &["-crl_check", "-CRLfile", crl]);
        assert!(ok, "openssl verify with {crl}: {text}");
    }
    let (ok, text) = openssl(dir.path(), &["crl", "-in", "revoking.pem", "-noout", "-text", "-CAfile", "root.pem"]);
    assert!(ok, "{text}");
    for expected in [
        "verify OK",
        "Version 2 (0x1)",
        "X509v3 CRL Number: \n                7",
        "X509v3 Authority Key Identifier",
        "Serial Number: 0A0B",
        "Key Compromise",
    ] {
        assert!(text.contains(expected), "openssl crl -text lacks {expected:?}:\n{text}");
    }
    // Entries are in increasing order of serial (99 before 0x0a0b) whatever the order given.
    assert!(text.find("Serial Number: 63") < text.find("Serial Number: 0A0B"), "{text}");
}

#[test]
fn a_changed_tbs_byte_makes_the_certificate_fail_verification() {
    let certificate = issue(&params(5, ed25519_key()));
    let mut der = certificate.der().to_vec();
    let at = der.windows(5).position(|window| window == b"alice").expect("the common name is in the DER");
    der[at] = b'A';
    if !openssl_present() {
        return;
    }
    let dir = setup_dir();
    write(dir.path(), "tampered.der", &der);
    let (ok, _) = openssl(dir.path(), &["x509", "-inform", "DER", "-in", "tampered.der", "-out", "tampered.pem"]);
    assert!(ok, "the tampered certificate still parses");
    let (ok, text) = verify(dir.path(), "tampered.pem", &[]);
    assert!(!ok && text.contains("certificate signature failure"), "openssl verify of a tampered TBS: {text}");
}

#[test]
fn the_same_inputs_give_the_same_tbs_bytes_and_the_attribute_order_does_not_matter() {
    let first = certificate_tbs(&ca().root, &params(42, ed25519_key())).expect("valid parameters");
    let second = certificate_tbs(&ca().root, &params(42, ed25519_key())).expect("valid parameters");
    assert_eq!(first.tbs_der(), second.tbs_der());
    let mut reordered = params(42, ed25519_key());
    reordered.subject = SubjectName::new(
        "alice.example.org",
        &[(AttributeKind::Country, "CH"), (AttributeKind::Organization, "Example Ltd")],
    )
    .expect("a valid name");
    assert_eq!(certificate_tbs(&ca().root, &reordered).expect("valid").tbs_der(), first.tbs_der());
    let other_serial = certificate_tbs(&ca().root, &params(43, ed25519_key())).expect("valid parameters");
    assert_ne!(other_serial.tbs_der(), first.tbs_der());
    let crl_params = CrlParams {
        this_update: UnixTime(CHECKED_AT),
        next_update: UnixTime(CHECKED_AT + 1),
        number: 1,
        revoked: vec![Revoked {
            serial: Serial::from_u64(1).expect("positive"),
            revoked_at: UnixTime(0),
            reason: None,
        }],
    };
    let crl_first = crl_tbs(&ca().root, &crl_params).expect("valid parameters");
    assert_eq!(crl_first.tbs_der(), crl_tbs(&ca().root, &crl_params).expect("valid").tbs_der());
}

/// An `openssl req` request in `dir`: (PEM, the key's SubjectPublicKeyInfo DER).
fn openssl_request(dir: &Path, algorithm: &[&str], name: &str) -> (Vec<u8>, Vec<u8>) {
    let key = format!("{name}.key");
    let (ok, text) = openssl(dir, &[&["genpkey"], algorithm, &["-out", &key]].concat());
    assert!(ok, "{text}");
    let request = format!("{name}.csr");
    let (ok, text) = openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &key,
            "-subj",
            "/C=CH/O=Example Ltd/OU=Ops/CN=bob.example.org",
            "-addext",
            "subjectAltName=DNS:bob.example.org,DNS:Mail.Example.org,email:bob@example.org",
            "-out",
            &request,
        ],
    );
    assert!(ok, "{text}");
    let spki = format!("{name}.spki");
    let (ok, text) = openssl(dir, &["pkey", "-in", &key, "-pubout", "-outform", "DER", "-out", &spki]);
    assert!(ok, "{text}");
    let read = |file: &str| std::fs::read(dir.join(file)).expect("openssl wrote it");
    (read(&request), read(&spki))
}

#[test]
fn requests_made_by_openssl_parse_verify_and_issue_and_a_tampered_one_is_refused() {
    if !openssl_present() {
        return;
    }
    let dir = setup_dir();
    for (name, algorithm) in [
        ("ed25519", &["-algorithm", "ed25519"][..]),
        ("p256", &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
    ] {
        let (pem, spki) = openssl_request(dir.path(), algorithm, name);
        let request = parse_csr(&pem).unwrap_or_else(|error| panic!("the {name} request: {error}"));
        assert_eq!(request.subject.common_name(), "bob.example.org");
        assert_eq!(
            request.subject.attributes(),
            &[
                (AttributeKind::Country, "CH".to_owned()),
                (AttributeKind::Organization, "Example Ltd".to_owned()),
                (AttributeKind::OrganizationalUnit, "Ops".to_owned()),
            ]
        );
        let dns: Vec<&str> = request.alt_names.dns().iter().map(|name| name.as_str()).collect();
        assert_eq!(dns, ["bob.example.org", "mail.example.org"]);
        assert_eq!(request.alt_names.email()[0].as_str(), "bob@example.org");
        use der::Encode;
        assert_eq!(request.key.to_spki().expect("encodes").to_der().expect("encodes"), spki, "the {name} key");
        // The DER form parses the same.
        let (_, der) = der::pem::decode_vec(&pem).expect("openssl wrote PEM");
        assert_eq!(parse_csr(&der).expect("the DER form"), request);
        // A changed byte of the signed part (the common name) breaks the signature.
        let mut tampered = der.clone();
        let at = tampered.windows(3).position(|window| window == b"bob").expect("the name is in the DER");
        tampered[at] = b'B';
        assert_eq!(parse_csr(&tampered), Err(CsrError::BadSignature), "the tampered {name} request");
        // What the request asks for is issued, and openssl verifies it and finds the request's key.
        let mut params = params(11, request.key.clone());
        params.subject = request.subject.clone();
        params.alt_names = request.alt_names.clone();
        let certificate = issue(&params);
        let file = format!("{name}.pem");
        write(dir.path(), &file, certificate.pem().as_bytes());
        let (ok, text) = verify(dir.path(), &file, &[]);
        assert!(ok, "openssl verify of the certificate for the {name} request: {text}");
        let (_, from_certificate) = openssl(dir.path(), &["x509", "-in", &file, "-noout", "-pubkey"]);
        let (_, from_request) = openssl(dir.path(), &["req", "-in", &format!("{name}.csr"), "-noout", "-pubkey"]);
        assert_eq!(from_certificate, from_request);
    }
}

#[test]
fn malformed_oversized_and_unsupported_requests_are_refused() {
    assert!(matches!(parse_csr(&vec![b'0'; 16 * 1024 + 1]), Err(CsrError::TooLarge { .. })));
    assert!(matches!(parse_csr(b"not a request"), Err(CsrError::Decode(_))));
    assert!(matches!(parse_csr(b""), Err(CsrError::Decode(_))));
    let wrong_label = der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &[0x30, 0x00]).expect("PEM");
    assert!(matches!(parse_csr(wrong_label.as_bytes()), Err(CsrError::Decode(_))));
    // A request for an X25519 key (made with x509-cert's types; openssl cannot make one).
    use der::Encode;
    let x25519 = SubjectKey::x25519(&[9; 32]).expect("a valid key");
    let request = x509_cert::request::CertReq {
        info: x509_cert::request::CertReqInfo {
            version: x509_cert::request::Version::V1,
            subject: SubjectName::new("carol", &[]).expect("valid").to_name().expect("encodes"),
            public_key: x25519.to_spki().expect("encodes"),
            attributes: Default::default(),
        },
        algorithm: spki::AlgorithmIdentifierOwned { oid: const_oid::db::rfc8410::ID_ED_25519, parameters: None },
        signature: der::asn1::BitString::from_bytes(&[0; 64]).expect("a bit string"),
    };
    assert_eq!(parse_csr(&request.to_der().expect("encodes")), Err(CsrError::X25519Request));
    // Truncations of an openssl request are refused.
    if !openssl_present() {
        return;
    }
    let dir = setup_dir();
    let (pem, _) = openssl_request(dir.path(), &["-algorithm", "ed25519"], "truncated");
    let (_, der) = der::pem::decode_vec(&pem).expect("openssl wrote PEM");
    for len in 0..der.len() {
        assert!(parse_csr(&der[..len]).is_err(), "a request cut to {len} bytes");
    }
    // Every changed byte (a seeded non-zero XOR at each position) is refused, never accepted as
    // another valid request and never a panic.
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
    for at in 0..der.len() {
        let mut changed = der.clone();
        changed[at] ^= rand::Rng::gen_range(&mut rng, 1..=255u8);
        assert!(parse_csr(&changed).is_err(), "a request with byte {at} changed");
    }
}

#[test]
fn bad_inputs_are_refused_with_a_named_bound() {
    assert_eq!(Serial::from_u64(0), Err(InputError::SerialZero));
    assert!(Serial::from_be_bytes(&[0x7f; 20]).is_ok());
    assert_eq!(Serial::from_be_bytes(&[0x80; 20]), Err(InputError::SerialTooLong { octets: 21 }));
    assert_eq!(Serial::from_be_bytes(&[0; 30]), Err(InputError::SerialZero));
    assert!(Serial::from_be_bytes(&[[0; 10].as_slice(), &[1; 20]].concat()).is_ok());
    assert!(matches!(SubjectName::new(&"a".repeat(65), &[]), Err(InputError::TooLong { max: 64, .. })));
    assert!(SubjectName::new(&"é".repeat(64), &[]).is_ok());
    assert!(matches!(SubjectName::new("", &[]), Err(InputError::Empty { .. })));
    assert!(matches!(SubjectName::new("a\nb", &[]), Err(InputError::BadCharacter { .. })));
    assert!(matches!(SubjectName::new("a", &[(AttributeKind::Country, "ch")]), Err(InputError::BadCharacter { .. })));
    assert!(matches!(
        SubjectName::new("a", &[(AttributeKind::Organization, "o"); 9]),
        Err(InputError::TooMany { max: 8, .. })
    ));
    assert!(SubjectName::new("a", &[(AttributeKind::Email, "not-an-address")]).is_err());
    assert!(matches!(AttributeKind::from_short_name("SN"), Err(InputError::UnknownAttribute(_))));
    let many: Vec<String> = (0..17).map(|i| format!("h{i}.example.org")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert!(matches!(AltNames::new(&many, &[]), Err(InputError::TooMany { max: 16, .. })));
    for bad in ["", "-a.org", "a-.org", "a..org", "*.example.org", "a.org.", "ex ample.org", "é.org", "10.0.0.1"] {
        assert!(AltNames::new(&[bad], &[]).is_err(), "the DNS name {bad:?}");
    }
    assert!(AltNames::new(&[&format!("{}.org", "a".repeat(64))], &[]).is_err());
    assert!(matches!(AltNames::new(&["a.org", "A.org"], &[]), Err(InputError::Duplicate { .. })));
    for bad in ["", "a", "@a.org", "a@", "a..b@a.org", "a b@a.org", "\"a\"@a.org"] {
        assert!(AltNames::new(&[], &[bad]).is_err(), "the address {bad:?}");
    }
    assert!(matches!(SubjectKey::ed25519(&[1; 31]), Err(InputError::BadKey { .. })));
    assert!(matches!(SubjectKey::p256(&[4; 65]), Err(InputError::BadKey { .. })));
    assert!(matches!(SubjectKey::x25519(&[0; 32]), Err(InputError::BadKey { .. })));
    let mut backwards = params(1, ed25519_key());
    backwards.not_after = backwards.not_before;
    assert!(matches!(certificate_tbs(&ca().root, &backwards), Err(InputError::TimeOrder { .. })));
    let mut too_late = params(1, ed25519_key());
    too_late.not_after = UnixTime(u64::MAX);
    assert!(matches!(certificate_tbs(&ca().root, &too_late), Err(InputError::TimeOutOfRange { .. })));
    let unsigned = certificate_tbs(&ca().root, &params(1, ed25519_key())).expect("valid parameters");
    assert_eq!(unsigned.with_signature(&[1; 127]), Err(InputError::SignatureLength { len: 127, expected: 128 }));
    let entry = |serial, at| Revoked {
        serial: Serial::from_u64(serial).expect("positive"),
        revoked_at: UnixTime(at),
        reason: None,
    };
    let crl_params = |revoked| CrlParams { this_update: UnixTime(100), next_update: UnixTime(200), number: 1, revoked };
    assert!(matches!(
        crl_tbs(&ca().root, &crl_params(vec![entry(1, 0), entry(1, 0)])),
        Err(InputError::Duplicate { .. })
    ));
    assert!(matches!(crl_tbs(&ca().root, &crl_params(vec![entry(1, 101)])), Err(InputError::RevokedInFuture { .. })));
    let mut stale = crl_params(vec![]);
    stale.next_update = UnixTime(100);
    assert!(matches!(crl_tbs(&ca().root, &stale), Err(InputError::TimeOrder { .. })));
}

#[test]
fn a_root_that_is_not_a_ca_certificate_or_not_a_certificate_is_refused() {
    let leaf = issue(&params(1, ed25519_key()));
    assert_eq!(Root::from_der(leaf.der()), Err(RootError::Unusable("no basicConstraints with CA:true")));
    assert!(matches!(
        Root::from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
        Err(RootError::Decode(_))
    ));
    assert!(matches!(Root::from_der(&vec![0; 64 * 1024 + 1]), Err(RootError::TooLarge { .. })));
    assert_eq!(Root::from_der(&der::pem::decode_vec(ca().root_pem.as_bytes()).expect("PEM").1), Ok(ca().root.clone()));
}

/// The SHA-256 of `bytes` in hex.
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The encodings are part of the protocol: replicas that encode one input differently make
/// shares that do not combine. A change here is a wire break between versions (the root is a
/// fixed file, so only this crate's encoding is pinned).
#[test]
fn the_encodings_of_fixed_inputs_do_not_change_between_versions() {
    let root = Root::from_pem(include_bytes!("data/ca-root.pem")).expect("the fixed root");
    let certificate = certificate_tbs(&root, &params(0x0102_0304, ed25519_key())).expect("valid parameters");
    let revoked = vec![Revoked {
        serial: Serial::from_u64(0x0102_0304).expect("positive"),
        revoked_at: UnixTime(CHECKED_AT - 60),
        reason: Some(RevocationReason::KeyCompromise),
    }];
    let crl_params =
        CrlParams { this_update: UnixTime(CHECKED_AT), next_update: UnixTime(CHECKED_AT + 86_400), number: 3, revoked };
    let crl = crl_tbs(&root, &crl_params).expect("valid parameters");
    assert_eq!(
        [sha256_hex(certificate.tbs_der()), sha256_hex(crl.tbs_der())],
        [
            "667db97a54e159da548475ea43e4c972be0e2f5ebf87a398fb62af0059e70693",
            "47ad938e0c56a5f075c88b62f94fd25021d3d1528a9d818ba106443cda7a8968"
        ],
        "the TBSCertificate and TBSCertList encodings changed"
    );
}
