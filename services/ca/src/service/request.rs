//! The CA's requests and their payloads: `CA01 ‖ kind u8 ‖ body`, in the workspace's wire codec
//! (little-endian integers, byte strings as a `u32` length then the bytes).
//!
//! | kind | body |
//! | --- | --- |
//! | 1 issue, 2 update | binding ‖ token option ‖ answers |
//! | 3 revoke | key ‖ name option ‖ reason u8 ‖ answers |
//! | 4 status | serial (len u8 ‖ big-endian magnitude) |
//!
//! - binding: `1 ‖ key ‖ name ‖ dns names ‖ e-mail addresses` (fields) or `2 ‖ CSR bytes`
//!   (PKCS#10 in DER or PEM, read by [`crate::parse_csr`]);
//! - key: type u8 (1 Ed25519, 2 P-256, 3 X25519) ‖ the key's bytes (32, 65 uncompressed SEC1, 32);
//! - name: common name ‖ attributes (count, then kind u8 ‖ value each; kinds 1 C, 2 ST, 3 L, 4 O,
//!   5 OU, 6 emailAddress), in the canonical order of [`SubjectName`];
//! - token option: 0, or 1 ‖ name hash \[32\] ‖ not-after ms u64 ‖ signature \[64\];
//! - answers: count, then replica u32 ‖ answer bytes (at most 128) each, in increasing order of
//!   replica.
//!
//! One request has one encoding: the decoder refuses any body that its own encoder would not
//! write back byte for byte (attributes out of order, upper-case DNS names, a compressed P-256
//! key, a serial with leading zeros), because the key-confirmation challenges bind the body's
//! bytes ([`request_digest`]).

use fides_crypto::sha256_tagged;
use fides_service::InstanceId;
use fides_types::codec::{get_option, get_seq, put_bytes, put_option, put_seq, DecodeError, Reader};

use super::domain;
use crate::{
    parse_csr, AltNames, AttributeKind, CertificationRequest, CsrError, DnsName, EmailAddress, InputError,
    RevocationReason, Serial, SubjectKey, SubjectName, ALT_NAMES_MAX, ATTRIBUTES_MAX, CSR_BYTES_MAX, SERIAL_OCTETS_MAX,
};

/// The service's id: every payload's first four bytes.
pub const SERVICE_ID: [u8; 4] = *b"CA01";
/// At most this many bytes in one answer to a challenge (an Ed25519 or P-256 signature takes 64,
/// an X25519 answer 32).
pub const ANSWER_BYTES_MAX: usize = 128;
/// At most this many answers the decoder reads (the service also bounds them by `n`).
pub const ANSWERS_MAX: usize = 256;
/// At most this many bytes in one string of a name or an alternative name before its own checks
/// (each is at most 254 characters of at most 4 bytes).
const TEXT_BYTES_MAX: usize = 1024;

/// Which operation a request asks for (the payload's fifth byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// Certify a new binding of a key and a name.
    Issue = 1,
    /// Replace the certificates of a key (key-major) or of a name (name-major).
    Update = 2,
    /// Revoke the certificates of a key (and name).
    Revoke = 3,
    /// A signed status of a serial at the agreed time.
    Status = 4,
}

impl Kind {
    /// Its byte.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The kind numbered `code`.
    pub fn from_code(code: u8) -> Option<Kind> {
        [Kind::Issue, Kind::Update, Kind::Revoke, Kind::Status].into_iter().find(|kind| kind.code() == code)
    }
}

/// A PKCS#10 request as sent, with what it says (its self-signature checked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Csr {
    bytes: Vec<u8>,
    request: CertificationRequest,
}

impl Csr {
    /// Read a request (PEM or DER, at most [`CSR_BYTES_MAX`] bytes) and check its signature.
    pub fn new(bytes: &[u8]) -> Result<Csr, CsrError> {
        let request = parse_csr(bytes)?;
        Ok(Csr { bytes: bytes.to_vec(), request })
    }

    /// The request's bytes, as sent.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// What it asks for.
    pub fn request(&self) -> &CertificationRequest {
        &self.request
    }
}

/// The binding an issue or an update asks for: a key, a subject name and alternative names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Binding {
    /// Given field by field (the only way for an X25519 key, which cannot sign a CSR).
    Fields {
        /// The key.
        key: SubjectKey,
        /// The subject.
        name: SubjectName,
        /// The DNS names and e-mail addresses.
        alt_names: AltNames,
    },
    /// Given as a PKCS#10 request.
    Csr(Csr),
}

impl Binding {
    /// The key to certify.
    pub fn key(&self) -> &SubjectKey {
        match self {
            Binding::Fields { key, .. } => key,
            Binding::Csr(csr) => &csr.request.key,
        }
    }

    /// The subject.
    pub fn name(&self) -> &SubjectName {
        match self {
            Binding::Fields { name, .. } => name,
            Binding::Csr(csr) => &csr.request.subject,
        }
    }

    /// The alternative names.
    pub fn alt_names(&self) -> &AltNames {
        match self {
            Binding::Fields { alt_names, .. } => alt_names,
            Binding::Csr(csr) => &csr.request.alt_names,
        }
    }
}

/// A registration token: the administrator's permission to bind one name, until a time
/// (`Policy::Token`). The signature is Ed25519 over
/// `tagged("fides/v1/ca/token", [cluster, name_hash, not_after_ms LE])`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    /// SHA-256 of the subject name's DER ([`name_hash`]).
    pub name_hash: [u8; 32],
    /// The last agreed time (ms since 1970) at which the token is accepted.
    pub not_after_ms: u64,
    /// The administrator's signature.
    pub signature: [u8; 64],
}

impl Token {
    /// The token the administrator `admin` signs for `name` in cluster `cluster`, valid until
    /// `not_after_ms` (for the CLI and tests).
    pub fn sign(
        admin: &ed25519_dalek::SigningKey,
        cluster: &[u8; 32],
        name: &SubjectName,
        not_after_ms: u64,
    ) -> Result<Token, InputError> {
        use ed25519_dalek::Signer;
        let name_hash = name_hash(name)?;
        let signature = admin.sign(&token_message(cluster, &name_hash, not_after_ms)).to_bytes();
        Ok(Token { name_hash, not_after_ms, signature })
    }

    /// Whether `admin` signed this token for cluster `cluster` (strict Ed25519; the name and the
    /// time are the caller's to check).
    pub fn verify(&self, admin: &[u8; 32], cluster: &[u8; 32]) -> bool {
        let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(admin) else { return false };
        let signature = ed25519_dalek::Signature::from_bytes(&self.signature);
        key.verify_strict(&token_message(cluster, &self.name_hash, self.not_after_ms), &signature).is_ok()
    }
}

fn token_message(cluster: &[u8; 32], name_hash: &[u8; 32], not_after_ms: u64) -> Vec<u8> {
    fides_crypto::tagged(domain::TOKEN, &[cluster, name_hash, &not_after_ms.to_le_bytes()])
}

/// The DER of a subject name: what name-major binding compares and what tokens name.
pub fn name_der(name: &SubjectName) -> Result<Vec<u8>, InputError> {
    use der::Encode;
    Ok(name.to_name()?.to_der()?)
}

/// SHA-256 of the subject name's DER.
pub fn name_hash(name: &SubjectName) -> Result<[u8; 32], InputError> {
    Ok(fides_crypto::sha256(&name_der(name)?))
}

/// One replica's answer to its challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The replica's index.
    pub replica: u32,
    /// The answer (at most [`ANSWER_BYTES_MAX`] bytes).
    pub bytes: Vec<u8>,
}

/// A request that changes the store, confirmed by the key's holder: issue, update, revoke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Certify a binding not certified yet.
    Issue {
        /// What to certify.
        binding: Binding,
        /// The administrator's token for the name (`Policy::Token`).
        token: Option<Token>,
    },
    /// Replace the subject's certificates with one for this binding.
    Update {
        /// What to certify.
        binding: Binding,
        /// The administrator's token for the name (`Policy::Token`, or to rebind a name in
        /// name-major mode).
        token: Option<Token>,
    },
    /// Revoke the certificates of `key` (only those of `name`, if given).
    Revoke {
        /// The key, whose holder confirms.
        key: SubjectKey,
        /// Only the certificates with this subject, if given.
        name: Option<SubjectName>,
        /// Why (the CRL's reason code).
        reason: RevocationReason,
    },
}

impl Mutation {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Mutation::Issue { .. } => Kind::Issue,
            Mutation::Update { .. } => Kind::Update,
            Mutation::Revoke { .. } => Kind::Revoke,
        }
    }

    /// The key whose holder must confirm the request.
    pub fn key(&self) -> &SubjectKey {
        match self {
            Mutation::Issue { binding, .. } | Mutation::Update { binding, .. } => binding.key(),
            Mutation::Revoke { key, .. } => key,
        }
    }

    /// The body without the answers: what the challenges bind.
    pub fn body(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Mutation::Issue { binding, token } | Mutation::Update { binding, token } => {
                put_binding(&mut out, binding);
                put_option(&mut out, token.as_ref(), put_token);
            }
            Mutation::Revoke { key, name, reason } => {
                put_key(&mut out, key);
                put_option(&mut out, name.as_ref(), put_name);
                out.push(reason.code());
            }
        }
        out
    }

    /// Decode a mutation's body without answers (what [`Self::body`] writes), as the client sends
    /// it to ask for challenges; checked and canonical as in [`Request::from_payload`].
    pub fn from_body(kind: Kind, body: &[u8]) -> Result<Mutation, RequestError> {
        if kind == Kind::Status {
            return Err(RequestError::Kind(kind.code()));
        }
        let mut payload = SERVICE_ID.to_vec();
        payload.push(kind.code());
        payload.extend_from_slice(body);
        payload.extend_from_slice(&0u32.to_le_bytes()); // no answers
        match Request::from_payload(&payload)? {
            Request::Mutation { mutation, .. } => Ok(mutation),
            Request::Status { .. } => Err(RequestError::Kind(kind.code())),
        }
    }

    /// The digest each replica's challenge binds for this request of `client` with id `request`
    /// in cluster `cluster` ([`request_digest`]).
    pub fn digest(&self, cluster: &[u8; 32], client: u64, request: u64) -> [u8; 32] {
        request_digest(cluster, client, request, self.kind().code(), &self.body())
    }
}

/// What a challenge binds: `SHA-256(tagged("fides/v1/ca/request", [cluster, client LE, request
/// LE, kind, body without the answers]))`.
pub fn request_digest(cluster: &[u8; 32], client: u64, request: u64, kind: u8, body: &[u8]) -> [u8; 32] {
    sha256_tagged(domain::REQUEST, &[cluster, &client.to_le_bytes(), &request.to_le_bytes(), &[kind], body])
}

/// The agreement instance of the mutation `request` of `client`:
/// `SHA-256(tagged("fides/v1/ca/instance", [client LE, request LE]))`.
pub fn instance_of(client: u64, request: u64) -> InstanceId {
    InstanceId(sha256_tagged(domain::INSTANCE, &[&client.to_le_bytes(), &request.to_le_bytes()]))
}

/// A decoded request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // decoded once per payload and moved whole; boxing buys nothing
pub enum Request {
    /// Issue, update or revoke, with the client's answers to the replicas' challenges.
    Mutation {
        /// What it asks.
        mutation: Mutation,
        /// One answer per replica at most, in increasing order of replica.
        answers: Vec<Answer>,
    },
    /// The status of a serial.
    Status {
        /// The serial.
        serial: Serial,
    },
}

/// Why a payload is not a request: its bytes (a [`DecodeError`]) or what they say.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The bytes do not decode.
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// Not a `CA01` payload.
    #[error("the payload does not start with CA01")]
    WrongService,
    /// An unknown kind.
    #[error("unknown request kind {0} (1 issue, 2 update, 3 revoke, 4 status)")]
    Kind(u8),
    /// An unknown key type.
    #[error("unknown key type {0} (1 Ed25519, 2 ECDSA P-256, 3 X25519)")]
    KeyType(u8),
    /// An unknown name attribute.
    #[error("unknown name attribute kind {0} (1 C, 2 ST, 3 L, 4 O, 5 OU, 6 emailAddress)")]
    AttributeKind(u8),
    /// An unknown revocation reason.
    #[error("unknown revocation reason {0} (0, 1, 3, 4, 5 or 9 of RFC 5280's CRLReason)")]
    Reason(u8),
    /// A field breaks its bounds or syntax.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The CSR is refused.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// Answers not in increasing order of replica (or one twice), or from no replica.
    #[error("the answers must name each replica at most once, in increasing order, and only replicas of the cluster")]
    Answers,
    /// A body that the encoder would write otherwise.
    #[error("the request is not in its canonical encoding (names in order, DNS names in lower case, P-256 keys uncompressed, serials without leading zeros)")]
    NonCanonical,
}

impl Request {
    /// The whole payload, `CA01` first.
    pub fn to_payload(&self) -> Vec<u8> {
        match self {
            Request::Mutation { mutation, answers } => mutation_payload(mutation, answers),
            Request::Status { serial } => {
                let mut out = SERVICE_ID.to_vec();
                out.push(Kind::Status.code());
                put_serial(&mut out, serial);
                out
            }
        }
    }

    /// Decode a whole payload. Every field is checked (names and alternative names as
    /// [`SubjectName`] and [`AltNames`] check them, keys as [`SubjectKey`], a CSR by
    /// [`crate::parse_csr`]) and the encoding must be canonical.
    pub fn from_payload(payload: &[u8]) -> Result<Request, RequestError> {
        let mut reader = Reader::new(payload);
        if reader.array::<4>()? != SERVICE_ID {
            return Err(RequestError::WrongService);
        }
        let code = reader.u8()?;
        let kind = Kind::from_code(code).ok_or(RequestError::Kind(code))?;
        let body_start = payload.len() - reader.remaining();
        let mutation = match kind {
            Kind::Status => {
                let serial = get_serial(&mut reader)?;
                reader.finish()?;
                let request = Request::Status { serial };
                if request.to_payload() != payload {
                    return Err(RequestError::NonCanonical);
                }
                return Ok(request);
            }
            Kind::Issue => {
                let binding = get_binding(&mut reader)?;
                Mutation::Issue { binding, token: get_option(&mut reader, get_token)? }
            }
            Kind::Update => {
                let binding = get_binding(&mut reader)?;
                Mutation::Update { binding, token: get_option(&mut reader, get_token)? }
            }
            Kind::Revoke => {
                let key = get_key(&mut reader)?;
                let name = get_option_checked(&mut reader, get_name)?;
                let code = reader.u8()?;
                let reason = RevocationReason::from_code(code).ok_or(RequestError::Reason(code))?;
                Mutation::Revoke { key, name, reason }
            }
        };
        let body_end = payload.len() - reader.remaining();
        if mutation.body() != payload[body_start..body_end] {
            return Err(RequestError::NonCanonical);
        }
        let answers = get_seq(&mut reader, ANSWERS_MAX, |reader| {
            Ok(Answer { replica: reader.u32()?, bytes: reader.bytes(ANSWER_BYTES_MAX)?.to_vec() })
        })?;
        reader.finish()?;
        if answers.windows(2).any(|pair| pair[0].replica >= pair[1].replica) {
            return Err(RequestError::Answers);
        }
        Ok(Request::Mutation { mutation, answers })
    }
}

/// The payload of a mutation with its answers (what [`Request::to_payload`] writes).
pub(crate) fn mutation_payload(mutation: &Mutation, answers: &[Answer]) -> Vec<u8> {
    let mut out = SERVICE_ID.to_vec();
    out.push(mutation.kind().code());
    out.extend_from_slice(&mutation.body());
    put_seq(&mut out, answers.iter(), |out, answer| {
        out.extend_from_slice(&answer.replica.to_le_bytes());
        put_bytes(out, &answer.bytes);
    });
    out
}

pub(crate) fn put_key(out: &mut Vec<u8>, key: &SubjectKey) {
    out.push(match key {
        SubjectKey::Ed25519(_) => 1,
        SubjectKey::P256(_) => 2,
        SubjectKey::X25519(_) => 3,
    });
    put_bytes(out, key.public_key_bytes());
}

pub(crate) fn get_key(reader: &mut Reader<'_>) -> Result<SubjectKey, RequestError> {
    let kind = reader.u8()?;
    let bytes = reader.bytes(65)?;
    Ok(match kind {
        1 => SubjectKey::ed25519(bytes)?,
        2 => SubjectKey::p256(bytes)?,
        3 => SubjectKey::x25519(bytes)?,
        other => return Err(RequestError::KeyType(other)),
    })
}

fn attribute_code(kind: AttributeKind) -> u8 {
    match kind {
        AttributeKind::Country => 1,
        AttributeKind::State => 2,
        AttributeKind::Locality => 3,
        AttributeKind::Organization => 4,
        AttributeKind::OrganizationalUnit => 5,
        AttributeKind::Email => 6,
    }
}

fn attribute_kind(code: u8) -> Option<AttributeKind> {
    [
        AttributeKind::Country,
        AttributeKind::State,
        AttributeKind::Locality,
        AttributeKind::Organization,
        AttributeKind::OrganizationalUnit,
        AttributeKind::Email,
    ]
    .into_iter()
    .find(|kind| attribute_code(*kind) == code)
}

fn put_name(out: &mut Vec<u8>, name: &SubjectName) {
    put_bytes(out, name.common_name().as_bytes());
    put_seq(out, name.attributes().iter(), |out, (kind, value)| {
        out.push(attribute_code(*kind));
        put_bytes(out, value.as_bytes());
    });
}

fn get_text<'a>(reader: &mut Reader<'a>) -> Result<&'a str, RequestError> {
    let bytes = reader.bytes(TEXT_BYTES_MAX)?;
    std::str::from_utf8(bytes)
        .map_err(|_| RequestError::Input(InputError::BadCharacter { field: "a name", reason: "not UTF-8" }))
}

fn get_name(reader: &mut Reader<'_>) -> Result<SubjectName, RequestError> {
    let common_name = get_text(reader)?;
    let count = reader.count(ATTRIBUTES_MAX)?;
    let mut attributes = Vec::with_capacity(count);
    for _ in 0..count {
        let code = reader.u8()?;
        let kind = attribute_kind(code).ok_or(RequestError::AttributeKind(code))?;
        attributes.push((kind, get_text(reader)?));
    }
    Ok(SubjectName::new(common_name, &attributes)?)
}

fn put_binding(out: &mut Vec<u8>, binding: &Binding) {
    match binding {
        Binding::Fields { key, name, alt_names } => {
            out.push(1);
            put_key(out, key);
            put_name(out, name);
            put_seq(out, alt_names.dns().iter(), |out, name| put_bytes(out, name.as_str().as_bytes()));
            put_seq(out, alt_names.email().iter(), |out, address| put_bytes(out, address.as_str().as_bytes()));
        }
        Binding::Csr(csr) => {
            out.push(2);
            put_bytes(out, &csr.bytes);
        }
    }
}

fn get_binding(reader: &mut Reader<'_>) -> Result<Binding, RequestError> {
    match reader.u8()? {
        1 => {
            let key = get_key(reader)?;
            let name = get_name(reader)?;
            let dns_count = reader.count(ALT_NAMES_MAX)?;
            let mut dns = Vec::with_capacity(dns_count);
            for _ in 0..dns_count {
                dns.push(DnsName::new(get_text(reader)?)?);
            }
            let email_count = reader.count(ALT_NAMES_MAX)?;
            let mut email = Vec::with_capacity(email_count);
            for _ in 0..email_count {
                email.push(EmailAddress::new(get_text(reader)?)?);
            }
            let alt_names = AltNames::from_checked(dns, email)?;
            Ok(Binding::Fields { key, name, alt_names })
        }
        2 => Ok(Binding::Csr(Csr::new(reader.bytes(CSR_BYTES_MAX)?)?)),
        other => Err(DecodeError::Invalid { what: "binding", value: other.into() }.into()),
    }
}

fn put_token(out: &mut Vec<u8>, token: &Token) {
    out.extend_from_slice(&token.name_hash);
    out.extend_from_slice(&token.not_after_ms.to_le_bytes());
    out.extend_from_slice(&token.signature);
}

fn get_token(reader: &mut Reader<'_>) -> Result<Token, DecodeError> {
    Ok(Token { name_hash: reader.array()?, not_after_ms: reader.u64()?, signature: reader.array()? })
}

/// An option whose value's decoder can refuse for more than its bytes.
fn get_option_checked<T>(
    reader: &mut Reader<'_>,
    get: impl FnOnce(&mut Reader<'_>) -> Result<T, RequestError>,
) -> Result<Option<T>, RequestError> {
    match reader.bool()? {
        false => Ok(None),
        true => get(reader).map(Some),
    }
}

/// A serial: its length (u8, 1 to 20) then its big-endian magnitude, without leading zeros.
pub(crate) fn put_serial(out: &mut Vec<u8>, serial: &Serial) {
    let bytes = serial.as_be_bytes();
    out.push(u8::try_from(bytes.len()).expect("a serial has at most 20 octets"));
    out.extend_from_slice(bytes);
}

/// Read a serial written by [`put_serial`]; leading zeros are refused (one encoding).
pub(crate) fn get_serial(reader: &mut Reader<'_>) -> Result<Serial, RequestError> {
    let len = usize::from(reader.u8()?);
    if len > SERIAL_OCTETS_MAX {
        return Err(DecodeError::TooLong { len: len as u64, max: SERIAL_OCTETS_MAX as u64 }.into());
    }
    let bytes = reader.take(len)?;
    if bytes.first() == Some(&0) {
        return Err(RequestError::NonCanonical);
    }
    Ok(Serial::from_be_bytes(bytes)?)
}
