//! The service's protocol: issue, update, revoke and status in both modes and both policies,
//! key confirmation, Byzantine justifications, transitions, reused ids, bad input, the CRL's
//! cadence, and a certificate `openssl` verifies.

use fides_service::{Code, Outcome, QueryError, Service as _};
use fides_types::codec::Wire;

use super::*;
use crate::{RevocationReason, Serial};

/// The issued record and the TBS to sign of an issue's or update's answer, and the revoked
/// records after them.
fn issued(outcomes: &[Outcome]) -> (IssuedRecord, Vec<RevokedRecord>) {
    let [Outcome::Sign(record), Outcome::ThresholdSign { message, .. }, rest @ ..] = outcomes else {
        panic!("not an issued certificate: {outcomes:?}");
    };
    let Ok(Record::Issued(record)) = Record::from_bytes(record) else { panic!("not an issued record") };
    assert_eq!(&record.tbs, message, "the TBS signed is the one recorded");
    (record, rest.iter().map(revoked).collect())
}

fn revoked(outcome: &Outcome) -> RevokedRecord {
    let Outcome::Sign(record) = outcome else { panic!("not a signed record: {outcome:?}") };
    let Ok(Record::Revoked(record)) = Record::from_bytes(record) else { panic!("not a revoked record") };
    record
}

fn refusal(outcomes: &[Outcome]) -> (Code, String) {
    let [Outcome::Refuse(refusal)] = outcomes else { panic!("not a refusal: {outcomes:?}") };
    (refusal.code, refusal.reason.clone())
}

fn status(h: &mut Harness, client: u64, request: u64, serial: &Serial) -> CertificateStatus {
    let outcomes = h.run(client, request, Request::Status { serial: serial.clone() }.to_payload());
    let [Outcome::Sign(record)] = outcomes.as_slice() else { panic!("not a status: {outcomes:?}") };
    let Ok(Record::Status(record)) = Record::from_bytes(record) else { panic!("not a status record") };
    assert_eq!(&record.serial, serial);
    assert_eq!(record.time_ms, h.time_ms, "at the agreed time");
    record.status
}

fn retrieved(h: &Harness, query: Query) -> Vec<Serial> {
    match h.query(query) {
        Ok(View::Certificates(certs)) => certs.into_iter().map(|cert| cert.serial).collect(),
        Err(QueryError::Refused(refusal)) if refusal.code == Code::NotFound => Vec::new(),
        other => panic!("retrieve: {other:?}"),
    }
}

fn token(common_name: &str, not_after_ms: u64) -> Option<Token> {
    Some(Token::sign(&admin(), &CLUSTER, &name(common_name), not_after_ms).expect("a valid name"))
}

#[test]
fn issue_update_revoke_and_status_work_in_both_modes_and_both_policies() {
    for mode in [Mode::KeyMajor, Mode::NameMajor] {
        for policy in [Policy::Open, token_policy()] {
            let context = format!("{mode:?}, {policy:?}");
            let mut h = Harness::new(config(mode, policy));
            let open = policy == Policy::Open;
            let token_for = |common_name: &str| if open { None } else { token(common_name, u64::MAX) };
            let [alice, bob] = [ed25519(1), p256(2)];
            let carol = x25519(3);
            // Issue three certificates, one per key type.
            let mut serials = Vec::new();
            for (request, (secret, common_name)) in
                [(&alice, "alice"), (&bob, "bob"), (&carol, "carol")].into_iter().enumerate()
            {
                let mutation = Mutation::Issue { binding: fields(secret, common_name), token: token_for(common_name) };
                let outcomes = h.run(7, request as u64, payload(mutation, secret, 7, request as u64));
                let (record, revoked) = issued(&outcomes);
                assert!(revoked.is_empty(), "{context}");
                assert_eq!(
                    retrieved(&h, Query::Retrieve { key: Some(secret.public()), name: None }),
                    std::slice::from_ref(&record.serial)
                );
                assert_eq!(
                    retrieved(&h, Query::Retrieve { key: None, name: Some(name(common_name)) }),
                    std::slice::from_ref(&record.serial)
                );
                serials.push(record.serial);
            }
            // Issuing again for the same subject is refused: use update.
            let again = Mutation::Issue { binding: fields(&alice, "alice"), token: token_for("alice") };
            let (code, reason) = refusal(&h.run(7, 10, payload(again, &alice, 7, 10)));
            assert_eq!(code, Code::AlreadyExists, "{context}: {reason}");
            // Update: key-major renames alice's key; name-major rebinds alice's name (to a new
            // key only with a token; the same key with the open policy).
            let (secret, common_name) = match (mode, open) {
                (Mode::KeyMajor, _) => (&alice, "alicia"),
                (Mode::NameMajor, true) => (&alice, "alice"),
                (Mode::NameMajor, false) => (&bob, "alice"),
            };
            let update = Mutation::Update { binding: fields(secret, common_name), token: token_for(common_name) };
            let (record, replaced) = issued(&h.run(7, 11, payload(update, secret, 7, 11)));
            assert_eq!(replaced.len(), 1, "{context}");
            assert_eq!(replaced[0].serial, serials[0]);
            assert_eq!(replaced[0].reason, RevocationReason::Superseded);
            assert_eq!(
                status(&mut h, 8, 1, &serials[0]),
                CertificateStatus::Revoked { at_ms: replaced[0].revoked_at_ms, reason: RevocationReason::Superseded }
            );
            assert_eq!(status(&mut h, 8, 2, &record.serial), CertificateStatus::Good);
            assert!(retrieved(&h, Query::Certificate(serials[0].clone())).is_empty(), "{context}: replaced");
            // Revoke carol's certificate (by its key, the name given).
            let revoke = Mutation::Revoke {
                key: carol.public(),
                name: Some(name("carol")),
                reason: RevocationReason::KeyCompromise,
            };
            let outcomes = h.run(7, 12, payload(revoke, &carol, 7, 12));
            let [one] = outcomes.as_slice() else { panic!("{context}: {outcomes:?}") };
            assert_eq!(revoked(one).serial, serials[2]);
            assert!(retrieved(&h, Query::Retrieve { key: Some(carol.public()), name: None }).is_empty());
            assert!(matches!(status(&mut h, 8, 3, &serials[2]), CertificateStatus::Revoked { .. }));
            let unknown = Serial::from_u64(42).expect("positive");
            assert_eq!(status(&mut h, 8, 4, &unknown), CertificateStatus::Unknown);
            // Revoking again finds nothing.
            let again = Mutation::Revoke { key: carol.public(), name: None, reason: RevocationReason::Unspecified };
            assert_eq!(refusal(&h.run(7, 13, payload(again, &carol, 7, 13))).0, Code::NotFound, "{context}");
            // The next epoch's CRL lists both revoked serials; the log lists everything done.
            h.order(&[]);
            let (_, crl) = h.crls.last().expect("a CRL");
            let der_serials = [&serials[0], &serials[2]].map(|serial| serial.as_be_bytes().to_vec());
            for serial in der_serials {
                assert!(crl.windows(serial.len()).any(|window| window == serial), "{context}: the CRL lists it");
            }
            let Ok(View::Log(log)) = h.query(Query::Log { from: 0, max: 1000 }) else { panic!("a log") };
            let kinds: Vec<u8> = log.iter().map(|entry| entry.record[0]).collect();
            assert_eq!(kinds, [1, 1, 1, 2, 1, 2], "{context}: three issued, one replaced, one issued, one revoked");
            assert!(log.iter().enumerate().all(|(i, entry)| entry.sequence == i as u64));
        }
    }
}

#[test]
fn the_token_policy_refuses_a_missing_wrong_or_expired_token() {
    let mut h = Harness::new(config(Mode::KeyMajor, token_policy()));
    let alice = ed25519(1);
    let issue = |token| Mutation::Issue { binding: fields(&alice, "alice"), token };
    let other_admin = Token::sign(&SigningKey::from_bytes(&[1; 32]), &CLUSTER, &name("alice"), u64::MAX).ok();
    for (request, (token, expected)) in [
        (None, "needs a registration token"),
        (token("bob", u64::MAX), "for another name"),
        (other_admin, "not signed by the administrator"),
        (token("alice", START_MS), "expired"),
    ]
    .into_iter()
    .enumerate()
    {
        let outcomes = h.run(1, request as u64, payload(issue(token), &alice, 1, request as u64));
        let (code, reason) = refusal(&outcomes);
        assert_eq!(code, Code::PermissionDenied);
        assert!(reason.contains(expected), "{reason}");
    }
    issued(&h.run(1, 9, payload(issue(token("alice", u64::MAX)), &alice, 1, 9)));
}

#[test]
fn a_client_without_the_key_gets_no_certificate() {
    for (holder, impostor) in [(ed25519(1), ed25519(2)), (p256(1), p256(2)), (x25519(1), x25519(2))] {
        let mut h = Harness::new(config(Mode::KeyMajor, Policy::Open));
        let mutation = Mutation::Issue { binding: fields(&holder, "alice"), token: None };
        let outcomes = h.order(&[(1, 1, payload(mutation, &impostor, 1, 1))]).remove(0);
        assert!(matches!(outcomes.as_slice(), [Outcome::Agree { .. }]));
        let (_, votes) = h.pending.front().expect("asked");
        assert!(votes.iter().all(|(vote, justification)| !vote && justification.is_empty()), "every replica says no");
        let (code, reason) = refusal(&h.decide_next().1);
        assert_eq!(code, Code::PermissionDenied);
        assert!(reason.contains("did not confirm"), "{reason}");
        assert!(retrieved(&h, Query::Retrieve { key: Some(holder.public()), name: None }).is_empty());
        // A request without answers gets no vote either.
        let mutation = Mutation::Issue { binding: fields(&holder, "alice"), token: None };
        let bare = Request::Mutation { mutation, answers: Vec::new() }.to_payload();
        assert_eq!(refusal(&h.run(1, 2, bare)).0, Code::PermissionDenied);
    }
}

#[test]
fn byzantine_justifications_are_refused_by_validate() {
    let mut h = Harness::new(config(Mode::KeyMajor, Policy::Open));
    let alice = ed25519(1);
    let mutation = Mutation::Issue { binding: fields(&alice, "alice"), token: None };
    h.order(&[(1, 1, payload(mutation, &alice, 1, 1))]);
    let (instance, votes) = h.pending.front().expect("asked").clone();
    assert!(votes.iter().all(|(vote, _)| *vote), "every replica confirmed the key");
    let service = h.replicas[0].registry.get::<Service>().expect("registered");
    let honest = &votes[2].1;
    assert!(service.validate(instance, honest));
    // Another instance; a replica index out of range; a signature by a key that is not the
    // named replica's; a truncated or empty one.
    assert!(!service.validate(instance_of(1, 2), honest));
    let mut out_of_range = honest.clone();
    out_of_range[..4].copy_from_slice(&4u32.to_le_bytes());
    assert!(!service.validate(instance, &out_of_range));
    let mut other_index = honest.clone();
    other_index[..4].copy_from_slice(&1u32.to_le_bytes());
    assert!(!service.validate(instance, &other_index));
    let stranger = {
        use ed25519_dalek::Signer;
        let signature = SigningKey::from_bytes(&[0x66; 32]).sign(&confirmed_message(&CLUSTER, &instance));
        [&0u32.to_le_bytes()[..], &signature.to_bytes()].concat()
    };
    assert!(!service.validate(instance, &stranger));
    assert!(!service.validate(instance, &honest[..honest.len() - 1]));
    assert!(!service.validate(instance, &[]));
}

#[test]
fn two_updates_on_one_key_run_in_request_order() {
    let mut h = Harness::new(config(Mode::KeyMajor, Policy::Open));
    let alice = ed25519(1);
    issued(&h.run(1, 1, payload(Mutation::Issue { binding: fields(&alice, "alice"), token: None }, &alice, 1, 1)));
    let update = |common_name| Mutation::Update { binding: fields(&alice, common_name), token: None };
    let outcomes =
        h.order(&[(2, 1, payload(update("first"), &alice, 2, 1)), (3, 1, payload(update("second"), &alice, 3, 1))]);
    assert!(matches!(outcomes[0].as_slice(), [Outcome::Agree { instance, .. }] if *instance == instance_of(2, 1)));
    assert_eq!(outcomes[1], [Outcome::Await { instance: instance_of(3, 1) }], "the second waits");
    let Ok(View::Pending(row)) = h.query(Query::Pending(instance_of(3, 1))) else { panic!("pending") };
    assert_eq!(row.state, RequestState::Queued);
    // The first's decision answers it and starts the second.
    let (instance, first) = h.decide_next();
    assert_eq!(instance, instance_of(2, 1));
    let (first, _) = issued(&first);
    assert_eq!(h.pending.front().map(|(instance, _)| *instance), Some(instance_of(3, 1)));
    let (_, second) = h.decide_next();
    let (second, replaced) = issued(&second);
    assert_eq!(replaced[0].serial, first.serial, "the second replaced the first's certificate");
    let Ok(View::Certificates(certs)) = h.query(Query::Retrieve { key: Some(alice.public()), name: None }) else {
        panic!("alice's certificate")
    };
    assert_eq!(certs.len(), 1);
    assert_eq!(certs[0].serial, second.serial);
    assert_eq!(certs[0].name, name_der(&name("second")).expect("encodes"));
}

#[test]
fn a_request_id_reused_with_other_content_is_refused() {
    let mut h = Harness::new(config(Mode::KeyMajor, Policy::Open));
    let alice = ed25519(1);
    let first = payload(Mutation::Issue { binding: fields(&alice, "alice"), token: None }, &alice, 1, 1);
    issued(&h.run(1, 1, first.clone()));
    let other = payload(Mutation::Issue { binding: fields(&alice, "other"), token: None }, &alice, 1, 1);
    assert_eq!(refusal(&h.run(1, 1, other)), (Code::AlreadyExists, "request id reused with other content".into()));
    let (code, reason) = refusal(&h.run(1, 1, first));
    assert_eq!(code, Code::AlreadyExists);
    assert!(reason.contains("ordered already"), "{reason}");
    assert!(h.pending.is_empty(), "neither started an instance");
}

#[test]
fn bad_inputs_are_refused_with_a_clear_code_and_change_nothing() {
    let mut h = Harness::new(config(Mode::KeyMajor, Policy::Open));
    let alice = ed25519(1);
    let good = payload(Mutation::Issue { binding: fields(&alice, "alice"), token: None }, &alice, 1, 1);
    h.order(&[]); // the first CRL
    let before = h.replicas[0].store.tables().clone();
    // An unknown key type (the key's type byte is the eighth).
    let mut unknown_key = good.clone();
    unknown_key[6] = 9;
    // An oversized common name: 65 characters.
    let long = "a".repeat(65);
    let mut oversized = good.clone();
    let at = oversized.windows(5).position(|window| window == b"alice").expect("the name");
    oversized.splice(at - 4..at + 5, [&65u32.to_le_bytes()[..], long.as_bytes()].concat());
    // A malformed CSR.
    let mut csr = b"CA01\x01\x02".to_vec();
    fides_types::codec::put_bytes(
        &mut csr,
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    );
    csr.extend_from_slice(&[0, 0, 0, 0, 0]);
    // A payload over 32 KiB; answers from a replica the cluster does not have; a low-order
    // X25519 key.
    let huge = [b"CA01\x01".to_vec(), vec![0; PAYLOAD_MAX]].concat();
    let stranger_answer = Request::Mutation {
        mutation: Mutation::Issue { binding: fields(&alice, "alice"), token: None },
        answers: vec![Answer { replica: 4, bytes: vec![0; 64] }],
    }
    .to_payload();
    let mut low_order_key = [0; 32];
    low_order_key[0] = 1;
    let low_order = Request::Mutation {
        mutation: Mutation::Issue {
            binding: Binding::Fields {
                key: crate::SubjectKey::X25519(low_order_key),
                name: name("alice"),
                alt_names: AltNames::default(),
            },
            token: None,
        },
        answers: Vec::new(),
    }
    .to_payload();
    for (request, (payload, expected)) in [
        (unknown_key, "unknown key type 9"),
        (oversized, "65 characters long"),
        (csr, "the request does not decode"),
        (huge, "above the bound"),
        (stranger_answer, "replicas the cluster does not have"),
        (low_order, "low order"),
        (b"CA01\x07".to_vec(), "unknown request kind"),
        (b"CA01\x01\x01".to_vec(), "malformed ca request"),
    ]
    .into_iter()
    .enumerate()
    {
        let (code, reason) = refusal(&h.run(1, request as u64 + 100, payload));
        assert_eq!(code, Code::InvalidArgument, "{reason}");
        assert!(reason.contains(expected), "{reason:?} does not say {expected:?}");
    }
    assert_eq!(h.replicas[0].store.tables(), &before, "nothing changed");
    // The state's refusals: an update or revocation of nothing.
    let update = Mutation::Update { binding: fields(&alice, "alice"), token: None };
    assert_eq!(refusal(&h.run(1, 200, payload(update, &alice, 1, 200))).0, Code::NotFound);
    let revoke = Mutation::Revoke { key: alice.public(), name: None, reason: RevocationReason::Unspecified };
    assert_eq!(refusal(&h.run(1, 201, payload(revoke, &alice, 1, 201))).0, Code::NotFound);
    // Bad questions.
    let refused = |query| match h.query(query) {
        Err(QueryError::Refused(refusal)) => refusal.code,
        other => panic!("{other:?}"),
    };
    assert_eq!(refused(Query::Log { from: 0, max: 1001 }), Code::InvalidArgument);
    assert_eq!(refused(Query::Retrieve { key: None, name: None }), Code::InvalidArgument);
    assert_eq!(refused(Query::Certificate(Serial::from_u64(1).expect("positive"))), Code::NotFound);
    assert_eq!(refused(Query::Pending(instance_of(9, 9))), Code::NotFound);
}

#[test]
fn a_crl_is_made_at_the_first_epoch_at_checkpoints_and_within_an_epoch_of_a_revocation() {
    let mut h = Harness::new(config(Mode::KeyMajor, Policy::Open)); // checkpoint interval 10
    h.order(&[]);
    assert_eq!(h.crls.iter().map(|(epoch, _)| *epoch).collect::<Vec<_>>(), [1], "the first epoch makes one");
    for _ in 2..=10 {
        h.order(&[]);
    }
    assert_eq!(h.crls.iter().map(|(epoch, _)| *epoch).collect::<Vec<_>>(), [1, 10], "then at the checkpoint");
    let alice = ed25519(1);
    issued(&h.run(1, 1, payload(Mutation::Issue { binding: fields(&alice, "alice"), token: None }, &alice, 1, 1)));
    assert_eq!(h.crls.len(), 2, "an issue makes none");
    let revoke = Mutation::Revoke { key: alice.public(), name: None, reason: RevocationReason::CessationOfOperation };
    let outcomes = h.run(1, 2, payload(revoke, &alice, 1, 2));
    let serial = revoked(&outcomes[0]).serial;
    let decided_at = h.epoch;
    h.order(&[]);
    let (epoch, crl) = h.crls.last().expect("a CRL").clone();
    assert_eq!(epoch, decided_at + 1, "the epoch after the revocation");
    assert!(crl.windows(serial.as_be_bytes().len()).any(|window| window == serial.as_be_bytes()));
    h.order(&[]);
    assert_eq!(h.crls.len(), 3, "not again until the next revocation or checkpoint");
    let Ok(View::Crl { latest: Some(latest), previous: Some(previous) }) = h.query(Query::Crl) else {
        panic!("two CRLs")
    };
    assert_eq!((latest.number, previous.number), (3, 2));
    assert_eq!(latest.tbs, crl);
}

#[test]
fn an_issued_certificate_verifies_with_openssl_and_fails_once_revoked() {
    let mut h = Harness::new(config(Mode::NameMajor, Policy::Open));
    let alice = p256(1);
    let outcomes =
        h.run(1, 1, payload(Mutation::Issue { binding: fields(&alice, "alice"), token: None }, &alice, 1, 1));
    let (record, _) = issued(&outcomes);
    let root = &dealt().root;
    let pem =
        crate::certificate_from_tbs(root, &record.tbs, &threshold_sign(&record.tbs)).expect("a certificate").pem();
    let revoke = Mutation::Revoke { key: alice.public(), name: None, reason: RevocationReason::KeyCompromise };
    h.run(1, 2, payload(revoke, &alice, 1, 2));
    h.order(&[]);
    let (_, crl_tbs) = h.crls.last().expect("a CRL").clone();
    let crl_pem = crate::crl_from_tbs(root, &crl_tbs, &threshold_sign(&crl_tbs)).expect("a CRL").pem();
    let present = std::process::Command::new("openssl").arg("version").output().is_ok_and(|out| out.status.success());
    if !present {
        eprintln!("note: no openssl on this machine; the openssl check is skipped");
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(dir.path().join("root.pem"), &dealt().root_pem).expect("writable");
    std::fs::write(dir.path().join("leaf.pem"), pem).expect("writable");
    std::fs::write(dir.path().join("crl.pem"), crl_pem).expect("writable");
    let at = (h.time_ms / 1000 + 60).to_string();
    let verify = |extra: &[&str]| {
        let mut args = vec!["verify", "-x509_strict", "-attime", &at, "-CAfile", "root.pem"];
        args.extend_from_slice(extra);
        args.push("leaf.pem");
        let output = std::process::Command::new("openssl").args(&args).current_dir(dir.path()).output().expect("runs");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    };
    let (ok, text) = verify(&["-verify_hostname", "alice.example.org"]);
    assert!(ok && text.contains("leaf.pem: OK"), "openssl verify: {text}");
    let (ok, text) = verify(&["-crl_check", "-CRLfile", "crl.pem"]);
    assert!(!ok && text.contains("certificate revoked"), "openssl verify -crl_check: {text}");
}

#[test]
fn the_policy_is_checked_again_when_the_decision_is_applied() {
    // Two keys ask for one name at once: their subjects differ (key-major), so both start and
    // both pass the policy then; the second decision finds the name taken.
    let mut h = Harness::new(config(Mode::KeyMajor, Policy::Open));
    let [alice, mallory] = [ed25519(1), ed25519(2)];
    let outcomes = h.order(&[
        (1, 1, payload(Mutation::Issue { binding: fields(&alice, "alice"), token: None }, &alice, 1, 1)),
        (2, 1, payload(Mutation::Issue { binding: fields(&mallory, "alice"), token: None }, &mallory, 2, 1)),
    ]);
    assert!(outcomes.iter().all(|outcomes| matches!(outcomes.as_slice(), [Outcome::Agree { .. }])));
    assert!(h.pending.iter().all(|(_, votes)| votes.iter().all(|(vote, _)| *vote)), "both pass at the start");
    issued(&h.decide_next().1);
    let (code, reason) = refusal(&h.decide_next().1);
    assert_eq!((code, reason.as_str()), (Code::AlreadyExists, "the name is bound to another key"));
    assert!(retrieved(&h, Query::Retrieve { key: Some(mallory.public()), name: None }).is_empty());
}
