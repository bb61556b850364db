//! From the gRPC messages to the CA service's requests and back: every field checked, a bad one
//! refused as `INVALID_ARGUMENT` with a `google.rpc.BadRequest` naming it.

use fides_api::proto;
use fides_ca::service::{Answer, Binding, CertificateStatus, Csr, Mutation, Query, StatusRecord, Token};
use fides_ca::{AltNames, AttributeKind, RevocationReason, Serial, SubjectKey, SubjectName};
use tonic::Status;

use super::x509::timestamp_ms;

/// The domain of the CA's `google.rpc.ErrorInfo`s.
pub const ERROR_DOMAIN: &str = "ca.fides";

/// `INVALID_ARGUMENT` for `field` (a path in the request, empty for the whole request).
pub fn invalid(field: &str, description: &str) -> Status {
    let message = if field.is_empty() { description.to_string() } else { format!("{field}: {description}") };
    fides_api::status_with_details(
        tonic::Code::InvalidArgument,
        message,
        &[(field, description)],
        Some(("INVALID_FIELD", ERROR_DOMAIN)),
    )
}

/// A subject's key.
pub fn key_of(key: Option<&proto::SubjectPublicKey>, field: &str) -> Result<SubjectKey, Status> {
    let Some(key) = key else { return Err(invalid(field, "missing")) };
    let made = match proto::KeyType::try_from(key.r#type) {
        Ok(proto::KeyType::Ed25519) => SubjectKey::ed25519(&key.key),
        Ok(proto::KeyType::P256) => SubjectKey::p256(&key.key),
        Ok(proto::KeyType::X25519) => SubjectKey::x25519(&key.key),
        _ => return Err(invalid(&format!("{field}.type"), &format!("unknown key type {}", key.r#type))),
    };
    made.map_err(|e| invalid(&format!("{field}.key"), &e.to_string()))
}

/// A subject name.
pub fn name_of(name: &proto::DistinguishedName, field: &str) -> Result<SubjectName, Status> {
    let mut attributes = Vec::with_capacity(name.attributes.len().min(fides_ca::ATTRIBUTES_MAX + 1));
    for (position, attribute) in name.attributes.iter().enumerate() {
        if position > fides_ca::ATTRIBUTES_MAX {
            break; // SubjectName::new refuses the count.
        }
        let kind = AttributeKind::from_short_name(&attribute.r#type)
            .map_err(|e| invalid(&format!("{field}.attributes[{position}].type"), &e.to_string()))?;
        attributes.push((kind, attribute.value.as_str()));
    }
    SubjectName::new(&name.common_name, &attributes).map_err(|e| invalid(field, &e.to_string()))
}

/// Update's binding as Issue's (the same fields).
pub fn update_binding(binding: proto::update_request::Binding) -> proto::issue_request::Binding {
    match binding {
        proto::update_request::Binding::Fields(fields) => proto::issue_request::Binding::Fields(fields),
        proto::update_request::Binding::Csr(csr) => proto::issue_request::Binding::Csr(csr),
    }
}

fn binding_of(binding: Option<proto::issue_request::Binding>) -> Result<Binding, Status> {
    match binding {
        Some(proto::issue_request::Binding::Fields(fields)) => {
            let key = key_of(fields.key.as_ref(), "fields.key")?;
            let Some(name) = &fields.name else { return Err(invalid("fields.name", "missing")) };
            let name = name_of(name, "fields.name")?;
            let dns: Vec<&str> = fields.dns_names.iter().map(String::as_str).collect();
            let email: Vec<&str> = fields.email_addresses.iter().map(String::as_str).collect();
            let alt_names = AltNames::new(&dns, &email).map_err(|e| invalid("fields", &e.to_string()))?;
            Ok(Binding::Fields { key, name, alt_names })
        }
        Some(proto::issue_request::Binding::Csr(bytes)) => {
            Csr::new(&bytes).map(Binding::Csr).map_err(|e| invalid("csr", &e.to_string()))
        }
        None => Err(invalid("binding", "neither fields nor a CSR")),
    }
}

/// A token: `name hash [32] ‖ not-after ms u64 LE ‖ signature [64]`, or none when empty.
pub fn token_of(bytes: &[u8]) -> Result<Option<Token>, Status> {
    if bytes.is_empty() {
        return Ok(None);
    }
    if bytes.len() != 104 {
        return Err(invalid("token", &format!("{} bytes, a token has 104", bytes.len())));
    }
    let mut name_hash = [0; 32];
    name_hash.copy_from_slice(&bytes[..32]);
    let mut not_after = [0; 8];
    not_after.copy_from_slice(&bytes[32..40]);
    let mut signature = [0; 64];
    signature.copy_from_slice(&bytes[40..]);
    Ok(Some(Token { name_hash, not_after_ms: u64::from_le_bytes(not_after), signature }))
}

/// An issue (`issue`) or update.
pub fn mutation_of(
    issue: bool,
    binding: Option<proto::issue_request::Binding>,
    token: &[u8],
) -> Result<Mutation, Status> {
    let binding = binding_of(binding)?;
    let token = token_of(token)?;
    Ok(if issue { Mutation::Issue { binding, token } } else { Mutation::Update { binding, token } })
}

/// A revocation reason (RFC 5280's numbers, which the proto's enum keeps).
pub fn reason_of(code: i32) -> Result<RevocationReason, Status> {
    u8::try_from(code)
        .ok()
        .and_then(RevocationReason::from_code)
        .ok_or_else(|| invalid("reason", &format!("unknown revocation reason {code}")))
}

/// The proto's value of a revocation reason: its RFC 5280 number.
pub fn reason_code(reason: RevocationReason) -> proto::RevocationReason {
    proto::RevocationReason::try_from(i32::from(reason.code())).unwrap_or(proto::RevocationReason::Unspecified)
}

/// A revocation.
pub fn revoke_mutation(r: &proto::RevokeRequest) -> Result<Mutation, Status> {
    let key = key_of(r.key.as_ref(), "key")?;
    let name = r.name.as_ref().map(|name| name_of(name, "name")).transpose()?;
    Ok(Mutation::Revoke { key, name, reason: reason_of(r.reason)? })
}

/// The answers, each replica of the cluster at most once, in increasing order of replica.
pub fn sorted_answers(answers: &[proto::ChallengeAnswer], n: u32) -> Result<Vec<Answer>, Status> {
    if answers.len() > n as usize {
        return Err(invalid("answers", &format!("{} answers, the cluster has {n} replicas", answers.len())));
    }
    let mut sorted: Vec<Answer> = Vec::with_capacity(answers.len());
    for (position, answer) in answers.iter().enumerate() {
        let field = format!("answers[{position}]");
        if answer.replica >= n {
            return Err(invalid(&field, &format!("replica {} is not below n = {n}", answer.replica)));
        }
        if answer.answer.len() > fides_ca::service::ANSWER_BYTES_MAX {
            let max = fides_ca::service::ANSWER_BYTES_MAX;
            return Err(invalid(&field, &format!("{} bytes, above the bound of {max}", answer.answer.len())));
        }
        sorted.push(Answer { replica: answer.replica, bytes: answer.answer.clone() });
    }
    sorted.sort_by_key(|answer| answer.replica);
    if sorted.windows(2).any(|pair| pair[0].replica == pair[1].replica) {
        return Err(invalid("answers", "two answers of one replica"));
    }
    Ok(sorted)
}

/// A serial: big-endian, 1 to 20 octets, positive, without leading zeros.
pub fn serial_of(bytes: &[u8], field: &str) -> Result<Serial, Status> {
    if bytes.first() == Some(&0) {
        return Err(invalid(field, "leading zero octets"));
    }
    Serial::from_be_bytes(bytes).map_err(|e| invalid(field, &e.to_string()))
}

/// A retrieval by key, name or both.
pub fn retrieve_query(r: proto::RetrieveRequest) -> Result<Query, Status> {
    let key = r.key.as_ref().map(|key| key_of(Some(key), "key")).transpose()?;
    let name = r.name.as_ref().map(|name| name_of(name, "name")).transpose()?;
    if key.is_none() && name.is_none() {
        return Err(invalid("", "give a key, a name or both"));
    }
    Ok(Query::Retrieve { key, name })
}

/// A status record, decoded next to its bytes.
pub fn status_response(status: &StatusRecord, record: proto::CertifiedRecord) -> proto::GetStatusResponse {
    let (state, revocation_time, reason) = match status.status {
        CertificateStatus::Good => (proto::CertificateState::Good, None, proto::RevocationReason::Unspecified),
        CertificateStatus::Revoked { at_ms, reason } => {
            (proto::CertificateState::Revoked, Some(timestamp_ms(at_ms)), reason_code(reason))
        }
        CertificateStatus::Unknown => (proto::CertificateState::Unknown, None, proto::RevocationReason::Unspecified),
    };
    proto::GetStatusResponse {
        status: Some(record),
        state: state.into(),
        checked_time: Some(timestamp_ms(status.time_ms)),
        revocation_time,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proto's reasons are RFC 5280's numbers: each reason goes to the proto value of its
    /// own name and back, and no other number is a reason.
    #[test]
    fn revocation_reasons_keep_their_numbers_and_names() {
        for reason in RevocationReason::ALL {
            let value = reason_code(reason);
            let screaming: String = format!("{reason:?}")
                .chars()
                .flat_map(|c| if c.is_uppercase() { vec!['_', c] } else { vec![c.to_ascii_uppercase()] })
                .collect();
            assert_eq!(value.as_str_name(), format!("REVOCATION_REASON{screaming}"));
            assert_eq!(reason_of(value.into()).expect("a reason"), reason);
        }
        for code in [-1, 2, 6, 7, 8, 10, 256] {
            assert!(reason_of(code).is_err(), "{code} is no reason");
        }
    }

    /// The field the refusal's `google.rpc.BadRequest` names.
    fn refused_field(status: Status) -> String {
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
        let details = fides_api::status_details(&status).expect("google.rpc details");
        let bad = <fides_api::rpc::BadRequest as prost::Message>::decode(details.details[0].value.as_slice())
            .expect("a BadRequest");
        bad.field_violations[0].field.clone()
    }

    fn key(kind: proto::KeyType, bytes: Vec<u8>) -> proto::SubjectPublicKey {
        proto::SubjectPublicKey { r#type: kind.into(), key: bytes }
    }

    #[test]
    fn bad_fields_are_invalid_arguments_naming_the_field() {
        let ed = ed25519_dalek::SigningKey::from_bytes(&[3; 32]).verifying_key().to_bytes().to_vec();
        assert!(key_of(Some(&key(proto::KeyType::Ed25519, ed.clone())), "key").is_ok());
        let cases = [
            (key_of(None, "fields.key").err(), "fields.key"),
            (key_of(Some(&key(proto::KeyType::Unspecified, ed.clone())), "key").err(), "key.type"),
            (key_of(Some(&key(proto::KeyType::Ed25519, vec![1; 31])), "key").err(), "key.key"),
            (key_of(Some(&key(proto::KeyType::P256, vec![4; 65])), "key").err(), "key.key"),
            (token_of(&[0; 103]).err(), "token"),
            (serial_of(&[0, 1], "serial").err(), "serial"),
            (serial_of(&[1; 21], "serial").err(), "serial"),
            (mutation_of(true, None, &[]).err(), "binding"),
            (reason_of(2).err(), "reason"),
        ];
        for (refused, field) in cases {
            assert_eq!(refused_field(refused.expect("refused")), field);
        }
        let name = |common_name: &str, kind: &str| proto::DistinguishedName {
            common_name: common_name.into(),
            attributes: vec![proto::NameAttribute { r#type: kind.into(), value: "x".into() }],
        };
        assert!(name_of(&name("alice", "O"), "name").is_ok());
        assert_eq!(
            refused_field(name_of(&name("alice", "XX"), "name").expect_err("unknown")),
            "name.attributes[0].type"
        );
        assert_eq!(refused_field(name_of(&name(&"a".repeat(65), "O"), "name").expect_err("too long")), "name");
        assert_eq!(refused_field(name_of(&name("", "O"), "name").expect_err("empty")), "name");
    }

    #[test]
    fn answers_are_sorted_and_each_replica_answers_once_within_bounds() {
        let answer = |replica: u32, len: usize| proto::ChallengeAnswer { replica, answer: vec![7; len] };
        let sorted = sorted_answers(&[answer(3, 64), answer(0, 64), answer(2, 32)], 4).expect("valid");
        assert_eq!(sorted.iter().map(|a| a.replica).collect::<Vec<_>>(), [0, 2, 3]);
        let cases = [
            (vec![answer(0, 64); 5], "answers"),
            (vec![answer(4, 64)], "answers[0]"),
            (vec![answer(1, 64), answer(1, 64)], "answers"),
            (vec![answer(0, 64), answer(1, 129)], "answers[1]"),
        ];
        for (answers, field) in cases {
            assert_eq!(refused_field(sorted_answers(&answers, 4).expect_err("refused")), field);
        }
    }
}
