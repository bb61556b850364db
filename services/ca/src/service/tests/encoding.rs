//! Encodings (round trips, truncations, canonical form, bounds) and
//! key confirmation for each key type.

use der::Encode;
use ed25519_dalek::SigningKey;
use fides_types::codec::Wire;

use crate::service::*;
use crate::{AltNames, AttributeKind, CsrError, InputError, RevocationReason, Serial, SubjectKey, SubjectName};

const CLUSTER: [u8; 32] = [0xc1; 32];

fn name(common_name: &str) -> SubjectName {
    SubjectName::new(common_name, &[(AttributeKind::Organization, "Example"), (AttributeKind::Country, "CH")])
        .expect("a valid name")
}

fn ed25519(seed: u8) -> KeySecret {
    KeySecret::Ed25519(SigningKey::from_bytes(&[seed; 32]))
}

fn secrets() -> [KeySecret; 3] {
    [
        KeySecret::Ed25519(SigningKey::from_bytes(&[1; 32])),
        KeySecret::P256(p256::ecdsa::SigningKey::from_slice(&[2; 32]).expect("a valid scalar")),
        KeySecret::X25519(x25519_dalek::StaticSecret::from([3; 32])),
    ]
}

fn fields(key: SubjectKey, common_name: &str) -> Binding {
    Binding::Fields {
        key,
        name: name(common_name),
        alt_names: AltNames::new(&["alice.example.org"], &["alice@example.org"]).expect("valid names"),
    }
}

/// A PKCS#10 request for `name`, signed by the Ed25519 key `key` (made with x509-cert's types).
fn csr(key: &SigningKey, name: &SubjectName) -> Vec<u8> {
    use ed25519_dalek::Signer;
    let info = x509_cert::request::CertReqInfo {
        version: x509_cert::request::Version::V1,
        subject: name.to_name().expect("encodes"),
        public_key: SubjectKey::Ed25519(key.verifying_key().to_bytes()).to_spki().expect("encodes"),
        attributes: Default::default(),
    };
    let signature = key.sign(&info.to_der().expect("encodes")).to_bytes();
    let request = x509_cert::request::CertReq {
        info,
        algorithm: spki::AlgorithmIdentifierOwned { oid: const_oid::db::rfc8410::ID_ED_25519, parameters: None },
        signature: der::asn1::BitString::from_bytes(&signature).expect("a bit string"),
    };
    request.to_der().expect("encodes")
}

fn answers() -> Vec<Answer> {
    vec![Answer { replica: 0, bytes: vec![1; 64] }, Answer { replica: 2, bytes: vec![2; 32] }]
}

fn every_request() -> Vec<Request> {
    let [ed, p256, x25519] = secrets();
    let admin = SigningKey::from_bytes(&[9; 32]);
    let token = Token::sign(&admin, &CLUSTER, &name("alice"), 1_800_000_000_000).expect("a valid name");
    let csr = Csr::new(&csr(&SigningKey::from_bytes(&[1; 32]), &name("alice"))).expect("a valid request");
    vec![
        Request::Mutation {
            mutation: Mutation::Issue { binding: fields(ed.public(), "alice"), token: None },
            answers: answers(),
        },
        Request::Mutation {
            mutation: Mutation::Issue { binding: fields(p256.public(), "alice"), token: Some(token.clone()) },
            answers: Vec::new(),
        },
        Request::Mutation {
            mutation: Mutation::Update { binding: fields(x25519.public(), "bob"), token: Some(token) },
            answers: answers(),
        },
        Request::Mutation { mutation: Mutation::Issue { binding: Binding::Csr(csr), token: None }, answers: answers() },
        Request::Mutation {
            mutation: Mutation::Revoke {
                key: ed.public(),
                name: Some(name("alice")),
                reason: RevocationReason::KeyCompromise,
            },
            answers: answers(),
        },
        Request::Mutation {
            mutation: Mutation::Revoke { key: p256.public(), name: None, reason: RevocationReason::Unspecified },
            answers: Vec::new(),
        },
        Request::Status { serial: Serial::from_be_bytes(&[0x7f; 16]).expect("a valid serial") },
    ]
}

#[test]
fn every_request_round_trips_and_every_truncation_is_refused() {
    for request in every_request() {
        let payload = request.to_payload();
        assert_eq!(&payload[..4], b"CA01");
        assert_eq!(Request::from_payload(&payload), Ok(request.clone()));
        for cut in 0..payload.len() {
            assert!(
                Request::from_payload(&payload[..cut]).is_err(),
                "{cut} of {} bytes of {request:?} decode",
                payload.len()
            );
        }
        if let Request::Mutation { mutation, .. } = &request {
            assert_eq!(Mutation::from_body(mutation.kind(), &mutation.body()).as_ref(), Ok(mutation));
        }
        let mut longer = payload.clone();
        longer.push(0);
        assert!(Request::from_payload(&longer).is_err(), "a trailing byte");
    }
}

#[test]
fn the_digest_binds_cluster_client_request_and_body_but_not_the_answers() {
    let [ed, ..] = secrets();
    let mutation = Mutation::Issue { binding: fields(ed.public(), "alice"), token: None };
    let digest = mutation.digest(&CLUSTER, 7, 1);
    assert_eq!(digest, request_digest(&CLUSTER, 7, 1, 1, &mutation.body()));
    assert_ne!(digest, mutation.digest(&[0; 32], 7, 1));
    assert_ne!(digest, mutation.digest(&CLUSTER, 8, 1));
    assert_ne!(digest, mutation.digest(&CLUSTER, 7, 2));
    let other = Mutation::Issue { binding: fields(ed.public(), "bob"), token: None };
    assert_ne!(digest, other.digest(&CLUSTER, 7, 1));
    let update = Mutation::Update { binding: fields(ed.public(), "alice"), token: None };
    assert_ne!(digest, update.digest(&CLUSTER, 7, 1), "the kind is bound");
    assert_ne!(instance_of(7, 1), instance_of(1, 7));
}

/// The payload of an issue with the key bytes `key` of type `kind` (the rest valid).
fn issue_payload_with_key(kind: u8, key: &[u8]) -> Vec<u8> {
    let [ed, ..] = secrets();
    let request = Request::Mutation {
        mutation: Mutation::Issue { binding: fields(ed.public(), "alice"), token: None },
        answers: Vec::new(),
    };
    let payload = request.to_payload();
    // CA01, kind, binding tag 1, then the key: type u8 ‖ len u32 ‖ 32 bytes.
    let mut out = payload[..6].to_vec();
    out.push(kind);
    out.extend_from_slice(&u32::try_from(key.len()).expect("short").to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&payload[6 + 1 + 4 + 32..]);
    out
}

#[test]
fn bad_inputs_are_refused_with_what_is_wrong() {
    // An unknown key type, a key of the wrong length, a key off the curve.
    assert_eq!(Request::from_payload(&issue_payload_with_key(4, &[1; 32])), Err(RequestError::KeyType(4)));
    assert!(matches!(
        Request::from_payload(&issue_payload_with_key(1, &[1; 31])),
        Err(RequestError::Input(InputError::BadKey { .. }))
    ));
    assert!(matches!(
        Request::from_payload(&issue_payload_with_key(2, &[4; 65])),
        Err(RequestError::Input(InputError::BadKey { .. }))
    ));
    // A compressed P-256 key is a valid key but not the canonical encoding.
    let p256 = p256::ecdsa::SigningKey::from_slice(&[2; 32]).expect("a valid scalar");
    let compressed = p256.verifying_key().to_encoded_point(true);
    assert_eq!(
        Request::from_payload(&issue_payload_with_key(2, compressed.as_bytes())),
        Err(RequestError::NonCanonical)
    );
    // An oversized common name.
    let mut payload = Request::Mutation {
        mutation: Mutation::Issue { binding: fields(secrets()[0].public(), "alice"), token: None },
        answers: Vec::new(),
    }
    .to_payload();
    let at = payload.windows(5).position(|window| window == b"alice").expect("the name is in the payload");
    let long = "a".repeat(65);
    payload.splice(at - 4..at + 5, [&65u32.to_le_bytes()[..], long.as_bytes()].concat());
    assert!(matches!(Request::from_payload(&payload), Err(RequestError::Input(InputError::TooLong { max: 64, .. }))));
    // An upper-case DNS name is not canonical.
    let mut payload = Request::Mutation {
        mutation: Mutation::Issue { binding: fields(secrets()[0].public(), "alice"), token: None },
        answers: Vec::new(),
    }
    .to_payload();
    let at = payload.windows(17).position(|window| window == b"alice.example.org").expect("the DNS name");
    payload[at] = b'A';
    assert_eq!(Request::from_payload(&payload), Err(RequestError::NonCanonical));
    // A malformed CSR.
    let mut csr_payload = Request::Mutation {
        mutation: Mutation::Issue {
            binding: Binding::Csr(Csr::new(&csr(&SigningKey::from_bytes(&[1; 32]), &name("alice"))).expect("valid")),
            token: None,
        },
        answers: Vec::new(),
    }
    .to_payload();
    let last_signature_byte = csr_payload.len() - 1 - 4 - 1; // before: token option, answers count
    csr_payload[last_signature_byte] ^= 1;
    assert_eq!(Request::from_payload(&csr_payload), Err(RequestError::Csr(CsrError::BadSignature)));
    // Unknown kinds, reasons, services; answers out of order.
    assert_eq!(Request::from_payload(b"CA01\x09"), Err(RequestError::Kind(9)));
    assert_eq!(Request::from_payload(b"BST1\x01"), Err(RequestError::WrongService));
    let mut revoke = Request::Mutation {
        mutation: Mutation::Revoke { key: secrets()[0].public(), name: None, reason: RevocationReason::Superseded },
        answers: Vec::new(),
    }
    .to_payload();
    let reason_at = revoke.len() - 4 - 1;
    revoke[reason_at] = 2; // certificateHold: not used by this CA
    assert_eq!(Request::from_payload(&revoke), Err(RequestError::Reason(2)));
    let reversed = Request::Mutation {
        mutation: Mutation::Revoke { key: secrets()[0].public(), name: None, reason: RevocationReason::Superseded },
        answers: answers().into_iter().rev().collect(),
    };
    assert_eq!(Request::from_payload(&reversed.to_payload()), Err(RequestError::Answers));
    // An answer over 128 bytes, a serial with a leading zero.
    let long_answer = Request::Mutation {
        mutation: Mutation::Revoke { key: secrets()[0].public(), name: None, reason: RevocationReason::Superseded },
        answers: vec![Answer { replica: 0, bytes: vec![0; 129] }],
    };
    assert!(matches!(Request::from_payload(&long_answer.to_payload()), Err(RequestError::Decode(_))));
    assert_eq!(Request::from_payload(b"CA01\x04\x02\x00\x01"), Err(RequestError::NonCanonical));
    assert!(matches!(Request::from_payload(b"CA01\x04\x15"), Err(RequestError::Decode(_))), "21 octets");
}

#[test]
fn records_round_trip_and_every_truncation_is_refused() {
    let tbs = {
        // Any strict-DER TBSCertificate will do: one from the crate's test root.
        let root = crate::Root::from_pem(include_bytes!("../../../tests/data/ca-root.pem")).expect("the test root");
        let params = crate::CertificateParams {
            serial: Serial::from_u64(5).expect("positive"),
            not_before: crate::UnixTime(1_750_000_000),
            not_after: crate::UnixTime(1_760_000_000),
            subject: name("alice"),
            key: secrets()[0].public(),
            alt_names: AltNames::default(),
        };
        crate::certificate_tbs(&root, &params).expect("valid parameters").tbs_der().to_vec()
    };
    let serial = Serial::from_be_bytes(&[0x45; 16]).expect("valid");
    let records = [
        Record::Issued(IssuedRecord { serial: serial.clone(), tbs }),
        Record::Revoked(RevokedRecord {
            serial: serial.clone(),
            revoked_at_ms: 17,
            reason: RevocationReason::Superseded,
        }),
        Record::Status(StatusRecord { serial: serial.clone(), status: CertificateStatus::Good, time_ms: 5 }),
        Record::Status(StatusRecord { serial: serial.clone(), status: CertificateStatus::Unknown, time_ms: 5 }),
        Record::Status(StatusRecord {
            serial,
            status: CertificateStatus::Revoked { at_ms: 3, reason: RevocationReason::Unspecified },
            time_ms: 5,
        }),
    ];
    for record in records {
        let bytes = record.to_bytes();
        assert_eq!(Record::from_bytes(&bytes), Ok(record.clone()));
        for cut in 0..bytes.len() {
            assert!(Record::from_bytes(&bytes[..cut]).is_err(), "{cut} bytes of {record:?} decode");
        }
    }
    assert!(Record::from_bytes(&[2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4]).is_err(), "a zero serial");
    assert!(Record::from_bytes(&[2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2]).is_err(), "an unknown reason");
    assert!(Record::from_bytes(&[4]).is_err());
}

#[test]
fn a_challenge_answered_by_the_keys_holder_passes_and_any_other_answer_fails() {
    let identity = |seed| SigningKey::from_bytes(&[seed; 32]);
    let replica = Challenger::new(CLUSTER, 1, &identity(11));
    let other_replica = Challenger::new(CLUSTER, 2, &identity(12));
    let digest = [0xd1; 32];
    let other_digest = [0xd2; 32];
    for secret in secrets() {
        let key = secret.public();
        let challenge = replica.challenge(&key, &digest).expect("a challenge");
        assert_eq!(challenge.len(), if key.kind().signs() { 32 } else { 64 });
        let right = answer(&secret, &challenge, &CLUSTER, 1, &digest).expect("an answer");
        assert!(replica.check(&key, &digest, &right), "{key:?}");
        // Another request, another replica, another cluster, another key, garbage: all fail.
        assert!(!replica.check(&key, &other_digest, &right), "{key:?}");
        assert!(!other_replica.check(&key, &digest, &right), "{key:?}");
        let wrong_cluster = answer(&secret, &challenge, &[0; 32], 1, &digest).expect("an answer");
        if key.kind().signs() {
            assert!(!replica.check(&key, &digest, &wrong_cluster), "{key:?}");
        }
        let other_challenge = other_replica.challenge(&key, &digest).expect("a challenge");
        let to_other = answer(&secret, &other_challenge, &CLUSTER, 2, &digest).expect("an answer");
        assert!(other_replica.check(&key, &digest, &to_other));
        assert!(!replica.check(&key, &digest, &to_other), "{key:?}");
        for impostor in secrets() {
            if impostor.public().kind() == key.kind() {
                let impostor = match impostor {
                    KeySecret::Ed25519(_) => KeySecret::Ed25519(SigningKey::from_bytes(&[5; 32])),
                    KeySecret::P256(_) => {
                        KeySecret::P256(p256::ecdsa::SigningKey::from_slice(&[6; 32]).expect("valid"))
                    }
                    KeySecret::X25519(_) => KeySecret::X25519(x25519_dalek::StaticSecret::from([7; 32])),
                };
                let forged = answer(&impostor, &challenge, &CLUSTER, 1, &digest).expect("an answer");
                assert!(!replica.check(&key, &digest, &forged), "an impostor's answer for {key:?}");
            }
        }
        assert!(!replica.check(&key, &digest, &[]));
        assert!(!replica.check(&key, &digest, &[0; 64]));
        assert!(!replica.check(&key, &digest, &[0; 32]));
        assert!(answer(&secret, &challenge[..31], &CLUSTER, 1, &digest).is_err());
    }
    // A low-order X25519 key has no challenge and no answer passes.
    let low_order = SubjectKey::X25519({
        let mut point = [0; 32];
        point[0] = 1;
        point
    });
    assert!(matches!(replica.challenge(&low_order, &digest), Err(InputError::BadKey { .. })));
    assert!(!replica.check(&low_order, &digest, &[0; 32]));
}

#[test]
fn a_token_verifies_under_its_administrator_and_cluster_only() {
    let admin = SigningKey::from_bytes(&[9; 32]);
    let token = Token::sign(&admin, &CLUSTER, &name("alice"), 1000).expect("a valid name");
    assert_eq!(token.name_hash, name_hash(&name("alice")).expect("encodes"));
    assert!(token.verify(&admin.verifying_key().to_bytes(), &CLUSTER));
    assert!(!token.verify(&SigningKey::from_bytes(&[8; 32]).verifying_key().to_bytes(), &CLUSTER));
    assert!(!token.verify(&admin.verifying_key().to_bytes(), &[0; 32]));
    let mut later = token.clone();
    later.not_after_ms += 1;
    assert!(!later.verify(&admin.verifying_key().to_bytes(), &CLUSTER));
}

#[test]
fn changed_or_random_bytes_never_panic_and_what_decodes_is_canonical() {
    use rand::{Rng, SeedableRng};
    for request in every_request() {
        let payload = request.to_payload();
        for at in 0..payload.len() {
            for flip in [0x01, 0x80] {
                let mut changed = payload.clone();
                changed[at] ^= flip;
                if let Ok(decoded) = Request::from_payload(&changed) {
                    assert_eq!(decoded.to_payload(), changed, "one encoding per request");
                }
            }
        }
    }
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(13);
    for _ in 0..2000 {
        let len = rng.gen_range(0..96);
        let mut bytes = b"CA01".to_vec();
        bytes.push(rng.gen_range(1..=4));
        bytes.extend((0..len).map(|_| rng.gen::<u8>()));
        if let Ok(decoded) = Request::from_payload(&bytes) {
            assert_eq!(decoded.to_payload(), bytes);
        }
        let _ = Record::from_bytes(&bytes[4..]);
    }
}

#[test]
fn a_replica_whose_key_is_not_its_configured_identity_never_votes_yes() {
    let root = crate::Root::from_pem(include_bytes!("../../../tests/data/ca-root.pem")).expect("the test root");
    let identity = SigningKey::from_bytes(&[11; 32]);
    let config = CaConfig {
        cluster: CLUSTER,
        identities: vec![[0; 32], identity.verifying_key().to_bytes()],
        root,
        mode: Mode::KeyMajor,
        policy: Policy::Open,
        validity_secs: DEFAULT_VALIDITY_SECS,
        checkpoint_interval: 0,
    };
    let secret = ed25519(1);
    let mutation = Mutation::Issue { binding: fields(secret.public(), "alice"), token: None };
    let digest = mutation.digest(&CLUSTER, 1, 1);
    // Answers to the challenges this identity makes as replica 0 and as replica 1.
    let answers = (0..2)
        .map(|index| {
            let challenge =
                Challenger::new(CLUSTER, index, &identity).challenge(mutation.key(), &digest).expect("a challenge");
            Answer { replica: index, bytes: answer(&secret, &challenge, &CLUSTER, index, &digest).expect("an answer") }
        })
        .collect();
    let payload = Request::Mutation { mutation, answers }.to_payload();
    let vote = |own: Own| {
        let mut registry = fides_service::Registry::new();
        registry.register(Service::new(config.clone(), Some(own))).expect("registers");
        let mut store = fides_service::MemoryTables::default();
        let ordered = fides_service::Ordered { client: 1, request: 1, payload: &payload };
        let batch = registry.apply_batch(&mut store, 1, 1_750_000_000_000, [ordered]).expect("the store works");
        match batch.requests[0].2.as_slice() {
            [fides_service::Outcome::Agree { vote, .. }] => *vote,
            other => panic!("{other:?}"),
        }
    };
    assert!(vote(Own { index: 1, identity: identity.clone() }), "the configured identity confirms");
    assert!(!vote(Own { index: 0, identity }), "another index's key does not vote yes");
}
