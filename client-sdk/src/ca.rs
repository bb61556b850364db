//! The client of the certification authority: issue, update and revoke certificates (answering
//! every replica's key-confirmation challenge itself), signed status, retrieval, the CRL and the
//! transparency log. `docs/ca.md` describes the protocol.
//!
//! - **Challenges.** A mutation first asks every replica for its challenge for the request (not
//!   ordered) and answers each with the key's secret: a signature for Ed25519 and P-256, the
//!   decrypted nonce for X25519. At least `t + 1` replicas must answer (a request with fewer
//!   answers could not be confirmed).
//! - **Sending.** The request with the answers goes to one replica, and to the next with the
//!   same `(client, request id)` if that one fails or answers something that does not verify
//!   ([`Engine::failover`]): it is executed once.
//! - **Checking.** A certificate is accepted when its threshold RSA signature verifies under the
//!   cluster's RSA key over the TBS of the issued record, and that record is a leaf of an epoch
//!   certificate signed by the cluster (`fides_service::certificate::verify`). Revocation and
//!   status records are checked the same way. A retrieval is accepted when `2t + 1` replicas give
//!   the same certificates (MAFTIA D5 §3.2.4), each with a valid RSA signature; a CRL when its
//!   RSA signature verifies.

use std::sync::Arc;
use std::time::Duration;

use der::{Decode, Encode};
use fides_api::proto;
use fides_ca::service::{
    answer as answer_challenge, Binding, Csr, IssuedRecord, KeySecret, Mutation, Record, StatusRecord, Token,
    SERVICE_ID,
};
use fides_ca::{AltNames, RevocationReason, Serial, SubjectKey, SubjectName};
use fides_dealer::ClusterFile;
use fides_service::certificate::{verify, Certificate, Inclusion, Leaf};
use fides_service::ServiceId;
use fides_threshold_rsa::PublicKey as RsaPublicKey;
use fides_types::codec::Wire;
use futures::stream::{FuturesUnordered, StreamExt};
use tonic::transport::Channel;
use tonic::Code;

use crate::engine::{Engine, EngineOptions, MESSAGE_MAX};
use crate::proto::certification_authority_service_client::CertificationAuthorityServiceClient as CaGrpc;
use crate::ClientError;

/// How long the challenges of the last `t` replicas are waited for once `n − t` replied: a silent
/// (crashed or Byzantine) replica must not hold every request for a whole attempt.
const CHALLENGE_GRACE: Duration = Duration::from_secs(1);

/// How a [`CaClient`] behaves.
#[derive(Clone, Debug)]
pub struct CaOptions {
    /// How long one attempt at one replica may take: a mutation is ordered, agreed on and
    /// threshold-signed, which takes a few epochs.
    pub attempt_timeout: Duration,
    /// Pause after a failed attempt once every replica was tried.
    pub backoff: Duration,
    /// The client number; random when `None`.
    pub client: Option<u64>,
    /// Send each issue, update, revocation and status request to `2t + 1` replicas at once
    /// (MAFTIA D5 §3.2.5), instead of to one and then the next on failure.
    pub to_quorum: bool,
}

impl Default for CaOptions {
    fn default() -> Self {
        CaOptions {
            attempt_timeout: Duration::from_secs(30),
            backoff: Duration::from_millis(200),
            client: None,
            to_quorum: false,
        }
    }
}

/// What an issue or update binds (besides the key, which the secret gives).
#[derive(Clone, Debug)]
pub enum Subject {
    /// Field by field.
    Fields {
        /// The subject name.
        name: SubjectName,
        /// The DNS names and e-mail addresses.
        alt_names: AltNames,
    },
    /// A PKCS#10 request (PEM or DER) for the same key.
    Csr(Vec<u8>),
}

/// A record of the CA with what makes it the cluster's word: its inclusion path in an epoch's
/// tree and that epoch's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertifiedRecord {
    /// The record's canonical bytes.
    pub bytes: Vec<u8>,
    /// The record, decoded.
    pub record: Record,
    /// The inclusion path.
    pub inclusion: Inclusion,
    /// The epoch's certificate.
    pub certificate: Certificate,
}

impl CertifiedRecord {
    /// As the API carries it (and the CLI stores it next to a certificate).
    pub fn to_proto(&self) -> proto::CertifiedRecord {
        proto::CertifiedRecord {
            record: self.bytes.clone(),
            inclusion: self.inclusion.to_bytes(),
            certificate: self.certificate.to_bytes(),
            epoch: self.certificate.root.epoch,
            agreed_time: None,
        }
    }
}

/// An issued certificate, verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// The certificate's DER.
    pub der: Vec<u8>,
    /// Its serial.
    pub serial: Serial,
    /// The issued record (its TBS is the certificate's), certified.
    pub record: CertifiedRecord,
    /// For an update: the revocations of the certificates it replaced, certified.
    pub revoked: Vec<CertifiedRecord>,
}

/// A CRL, its signature verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crl {
    /// Its DER.
    pub der: Vec<u8>,
    /// Its cRLNumber.
    pub number: u64,
    /// The serials it lists.
    pub revoked: u32,
}

/// The CA's client of one cluster.
#[derive(Clone, Debug)]
pub struct CaClient {
    engine: Engine,
    cluster: [u8; 32],
    signing: blsttc::PublicKey,
    rsa: Arc<RsaPublicKey>,
    to_quorum: bool,
}

/// Verify a record of the CA alone: it is a leaf of an epoch certificate of the cluster.
pub fn verify_record(
    cluster: &[u8; 32],
    signing: &blsttc::PublicKey,
    record: &proto::CertifiedRecord,
) -> Result<CertifiedRecord, String> {
    let inclusion = Inclusion::from_bytes(&record.inclusion).map_err(|e| format!("inclusion path: {e}"))?;
    let certificate = Certificate::from_bytes(&record.certificate).map_err(|e| format!("epoch certificate: {e}"))?;
    let leaf = Leaf::Service { service: ServiceId(SERVICE_ID), record: record.record.clone() }.to_bytes();
    verify(cluster, signing, &leaf, &inclusion, &certificate)
        .map_err(|e| format!("the record does not verify: {e}"))?;
    let decoded = Record::from_bytes(&record.record).map_err(|e| format!("the record does not decode: {e}"))?;
    Ok(CertifiedRecord { bytes: record.record.clone(), record: decoded, inclusion, certificate })
}

/// The TBS of a signed X.509 object's DER and its signature bits (a certificate or a CRL: both
/// are `SEQUENCE { tbs, algorithm, BIT STRING }`).
fn tbs_and_signature(der: &[u8], crl: bool) -> Result<(Vec<u8>, Vec<u8>), String> {
    if crl {
        let list = x509_cert::crl::CertificateList::from_der(der).map_err(|e| format!("not a CRL: {e}"))?;
        let tbs = list.tbs_cert_list.to_der().map_err(|e| e.to_string())?;
        Ok((tbs, list.signature.raw_bytes().to_vec()))
    } else {
        let certificate = x509_cert::Certificate::from_der(der).map_err(|e| format!("not a certificate: {e}"))?;
        let tbs = certificate.tbs_certificate.to_der().map_err(|e| e.to_string())?;
        Ok((tbs, certificate.signature.raw_bytes().to_vec()))
    }
}

/// Verify a certificate's threshold RSA signature under the cluster's key; its TBS.
pub fn verify_certificate(rsa: &RsaPublicKey, der: &[u8]) -> Result<Vec<u8>, String> {
    let (tbs, signature) = tbs_and_signature(der, false)?;
    if !fides_threshold_rsa::verify_signature(rsa, &tbs, &signature) {
        return Err("the certificate's signature does not verify under the cluster's RSA key".into());
    }
    Ok(tbs)
}

/// Verify a CRL's threshold RSA signature under the cluster's key; its TBS.
pub fn verify_crl(rsa: &RsaPublicKey, der: &[u8]) -> Result<Vec<u8>, String> {
    let (tbs, signature) = tbs_and_signature(der, true)?;
    if !fides_threshold_rsa::verify_signature(rsa, &tbs, &signature) {
        return Err("the CRL's signature does not verify under the cluster's RSA key".into());
    }
    Ok(tbs)
}

/// The serials a CRL lists (big-endian magnitudes).
pub fn crl_serials(der: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let list = x509_cert::crl::CertificateList::from_der(der).map_err(|e| format!("not a CRL: {e}"))?;
    Ok(list
        .tbs_cert_list
        .revoked_certificates
        .iter()
        .flatten()
        .map(|entry| strip_zeros(entry.serial_number.as_bytes()))
        .collect())
}

/// The serial of a certificate (big-endian magnitude).
pub fn certificate_serial(der: &[u8]) -> Result<Vec<u8>, String> {
    let certificate = x509_cert::Certificate::from_der(der).map_err(|e| format!("not a certificate: {e}"))?;
    Ok(strip_zeros(certificate.tbs_certificate.serial_number.as_bytes()))
}

fn strip_zeros(bytes: &[u8]) -> Vec<u8> {
    let start = bytes.iter().position(|byte| *byte != 0).unwrap_or(bytes.len());
    bytes[start..].to_vec()
}

/// A key as the API carries it.
pub fn key_proto(key: &SubjectKey) -> proto::SubjectPublicKey {
    let kind = match key {
        SubjectKey::Ed25519(_) => proto::KeyType::Ed25519,
        SubjectKey::P256(_) => proto::KeyType::P256,
        SubjectKey::X25519(_) => proto::KeyType::X25519,
    };
    proto::SubjectPublicKey { r#type: kind.into(), key: key.public_key_bytes().to_vec() }
}

/// A subject name as the API carries it.
pub fn name_proto(name: &SubjectName) -> proto::DistinguishedName {
    proto::DistinguishedName {
        common_name: name.common_name().to_string(),
        attributes: name
            .attributes()
            .iter()
            .map(|(kind, value)| proto::NameAttribute { r#type: kind.short_name().to_string(), value: value.clone() })
            .collect(),
    }
}

fn token_bytes(token: &Token) -> Vec<u8> {
    [&token.name_hash[..], &token.not_after_ms.to_le_bytes(), &token.signature].concat()
}

/// A request of one mutation, as sent (answers filled in later).
#[derive(Clone)]
enum Asked {
    Issue(proto::IssueRequest),
    Update(proto::UpdateRequest),
    Revoke(proto::RevokeRequest),
}

impl Asked {
    fn for_challenge(&self) -> proto::GetChallengeRequest {
        use proto::get_challenge_request::Request;
        let request = match self.clone() {
            Asked::Issue(r) => Request::Issue(r),
            Asked::Update(r) => Request::Update(r),
            Asked::Revoke(r) => Request::Revoke(r),
        };
        proto::GetChallengeRequest { request: Some(request) }
    }

    fn set_answers(&mut self, answers: Vec<proto::ChallengeAnswer>) {
        match self {
            Asked::Issue(r) => r.answers = answers,
            Asked::Update(r) => r.answers = answers,
            Asked::Revoke(r) => r.answers = answers,
        }
    }
}

impl CaClient {
    /// A client of `cluster`, which must have a threshold RSA key.
    pub fn new(cluster: &ClusterFile, options: CaOptions) -> Result<CaClient, ClientError> {
        let rsa = cluster.rsa().ok_or_else(|| {
            ClientError::Cluster("the cluster has no threshold RSA key, so no certification authority".into())
        })?;
        let n = cluster.quorum().n();
        let engine = Engine::new(
            cluster,
            EngineOptions {
                attempt_timeout: options.attempt_timeout,
                attempts_max: 2 * n,
                backoff: options.backoff,
                client: options.client,
                elsewhere: &[],
            },
        )?;
        Ok(CaClient {
            engine,
            cluster: cluster.id().0,
            signing: cluster.signing().public_key(),
            rsa: Arc::new(rsa.clone()),
            to_quorum: options.to_quorum,
        })
    }

    /// Send an ordered request (id `id`) as the options say: to one replica and then the next,
    /// or to `2t + 1` at once; the first answer `check` accepts.
    async fn send<T, U, F, Fut>(
        &self,
        id: u64,
        call: F,
        check: impl Fn(T) -> Result<U, String>,
    ) -> Result<U, ClientError>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let first = self.engine.first_for(id);
        if self.to_quorum {
            let targets = 2 * self.engine.quorum().t() + 1;
            self.engine.first_of(first, targets, call, check).await
        } else {
            self.engine.failover(first, call, check).await
        }
    }

    /// The connection engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn grpc(channel: Channel) -> CaGrpc<Channel> {
        CaGrpc::new(channel).max_decoding_message_size(MESSAGE_MAX)
    }

    /// The binding of `subject` for `secret`'s key, as the API carries it, and as the replicas
    /// will decode it (for the digest the challenges bind).
    fn binding(secret: &KeySecret, subject: &Subject) -> Result<(proto::issue_request::Binding, Binding), ClientError> {
        let key = secret.public();
        match subject {
            Subject::Fields { name, alt_names } => {
                let fields = proto::CertificateFields {
                    key: Some(key_proto(&key)),
                    name: Some(name_proto(name)),
                    dns_names: alt_names.dns().iter().map(|d| d.as_str().to_string()).collect(),
                    email_addresses: alt_names.email().iter().map(|e| e.as_str().to_string()).collect(),
                };
                let binding = Binding::Fields { key, name: name.clone(), alt_names: alt_names.clone() };
                Ok((proto::issue_request::Binding::Fields(fields), binding))
            }
            Subject::Csr(bytes) => {
                let csr = Csr::new(bytes).map_err(|e| ClientError::BadReply(format!("the CSR is refused: {e}")))?;
                if csr.request().key != key {
                    return Err(ClientError::Cluster("the CSR is for another key than the one given".into()));
                }
                Ok((proto::issue_request::Binding::Csr(bytes.clone()), Binding::Csr(csr)))
            }
        }
    }

    /// Issue a certificate binding `secret`'s key to `subject`.
    pub async fn issue(
        &self,
        secret: &KeySecret,
        subject: &Subject,
        token: Option<&Token>,
    ) -> Result<Issued, ClientError> {
        let id = self.engine.next_id();
        let (binding, decoded) = Self::binding(secret, subject)?;
        let mutation = Mutation::Issue { binding: decoded, token: token.cloned() };
        let request = proto::IssueRequest {
            client: self.engine.client(),
            request_id: id,
            binding: Some(binding),
            token: token.map(token_bytes).unwrap_or_default(),
            answers: Vec::new(),
        };
        let asked = self.answered(secret, &mutation, id, Asked::Issue(request)).await?;
        let Asked::Issue(request) = asked else { unreachable!("an issue stays an issue") };
        let key = secret.public();
        self.send(
            id,
            |channel| {
                let request = request.clone();
                async move { Self::grpc(channel).issue(request).await }
            },
            |reply| self.check_issued(&key, reply.certificate, reply.issued, Vec::new()),
        )
        .await
    }

    /// Replace the certificate of `secret`'s key (key-major) or of the name (name-major).
    pub async fn update(
        &self,
        secret: &KeySecret,
        subject: &Subject,
        token: Option<&Token>,
    ) -> Result<Issued, ClientError> {
        let id = self.engine.next_id();
        let (binding, decoded) = Self::binding(secret, subject)?;
        let binding = match binding {
            proto::issue_request::Binding::Fields(fields) => proto::update_request::Binding::Fields(fields),
            proto::issue_request::Binding::Csr(csr) => proto::update_request::Binding::Csr(csr),
        };
        let mutation = Mutation::Update { binding: decoded, token: token.cloned() };
        let request = proto::UpdateRequest {
            client: self.engine.client(),
            request_id: id,
            binding: Some(binding),
            token: token.map(token_bytes).unwrap_or_default(),
            answers: Vec::new(),
        };
        let asked = self.answered(secret, &mutation, id, Asked::Update(request)).await?;
        let Asked::Update(request) = asked else { unreachable!("an update stays an update") };
        let key = secret.public();
        self.send(
            id,
            |channel| {
                let request = request.clone();
                async move { Self::grpc(channel).update(request).await }
            },
            |reply| self.check_issued(&key, reply.certificate, reply.issued, reply.revoked),
        )
        .await
    }

    /// Revoke the certificates of `secret`'s key (only those with `name`, if given).
    pub async fn revoke(
        &self,
        secret: &KeySecret,
        name: Option<&SubjectName>,
        reason: RevocationReason,
    ) -> Result<Vec<CertifiedRecord>, ClientError> {
        let id = self.engine.next_id();
        let key = secret.public();
        let mutation = Mutation::Revoke { key: key.clone(), name: name.cloned(), reason };
        let request = proto::RevokeRequest {
            client: self.engine.client(),
            request_id: id,
            key: Some(key_proto(&key)),
            name: name.map(name_proto),
            // The proto numbers the reasons as RFC 5280 does.
            reason: i32::from(reason.code()),
            answers: Vec::new(),
        };
        let asked = self.answered(secret, &mutation, id, Asked::Revoke(request)).await?;
        let Asked::Revoke(request) = asked else { unreachable!("a revocation stays a revocation") };
        self.send(
            id,
            |channel| {
                let request = request.clone();
                async move { Self::grpc(channel).revoke(request).await }
            },
            |reply| {
                let revoked = self.check_revoked(&reply.revoked)?;
                if revoked.is_empty() {
                    return Err("the revocation answer has no revocation record".into());
                }
                Ok(revoked)
            },
        )
        .await
    }

    /// A signed status of `serial` at the agreed time of its request.
    pub async fn status(&self, serial: &Serial) -> Result<(StatusRecord, CertifiedRecord), ClientError> {
        let id = self.engine.next_id();
        let request = proto::GetStatusRequest {
            client: self.engine.client(),
            request_id: id,
            serial: serial.as_be_bytes().to_vec(),
        };
        self.send(
            id,
            |channel| {
                let request = request.clone();
                async move { Self::grpc(channel).get_status(request).await }
            },
            |reply| {
                let record = reply.status.ok_or("no status record")?;
                let certified = verify_record(&self.cluster, &self.signing, &record)?;
                let Record::Status(status) = &certified.record else {
                    return Err("the record is not a status".to_string());
                };
                if status.serial != *serial {
                    return Err("the status is of another serial".into());
                }
                Ok((status.clone(), certified))
            },
        )
        .await
    }

    /// The current certificates of `key`, `name` or both, as `2t + 1` replicas give them, each
    /// with a valid signature (DER, in the replicas' order).
    pub async fn retrieve(
        &self,
        key: Option<&SubjectKey>,
        name: Option<&SubjectName>,
    ) -> Result<Vec<Vec<u8>>, ClientError> {
        let request = proto::RetrieveRequest { key: key.map(key_proto), name: name.map(name_proto) };
        let quorum = self.engine.quorum();
        let k = 2 * quorum.t() + 1;
        self.engine
            .matching(
                self.engine.first_for_read(),
                quorum.n(),
                k,
                |channel| {
                    let request = request.clone();
                    async move { Self::grpc(channel).retrieve(request).await }
                },
                |reply| {
                    reply
                        .certificates
                        .iter()
                        .map(|certificate| {
                            verify_certificate(&self.rsa, &certificate.der).map(|_| certificate.der.clone())
                        })
                        .collect::<Result<Vec<_>, _>>()
                },
            )
            .await
    }

    /// The latest CRL of one replica, its signature verified.
    pub async fn crl(&self) -> Result<Crl, ClientError> {
        self.engine
            .failover(
                self.engine.first_for_read(),
                |channel| async move { Self::grpc(channel).get_crl(proto::GetCrlRequest {}).await },
                |reply| {
                    verify_crl(&self.rsa, &reply.der)?;
                    let revoked = crl_serials(&reply.der)?.len() as u32;
                    Ok(Crl { der: reply.der, number: reply.number, revoked })
                },
            )
            .await
    }

    /// A page of the transparency log, from `from`: every issued and revoked record in order,
    /// each verified alone (a leaf of an epoch certificate of the cluster), so no replica is
    /// trusted for what it lists. (Whether a replica left entries out of the end of a page cannot
    /// be seen from one answer; the next page starts where it says.)
    pub async fn list_issued(&self, from: u64, max: u32) -> Result<(Vec<(u64, Record)>, u64), ClientError> {
        let request = proto::ListIssuedRequest { from_sequence: from, max };
        self.engine
            .failover(
                self.engine.first_for_read(),
                |channel| async move { Self::grpc(channel).list_issued(request).await },
                |reply| {
                    // Every entry verifies alone (a leaf of a certified epoch), in sequence from `from`.
                    let mut entries = Vec::with_capacity(reply.entries.len());
                    for (offset, entry) in reply.entries.iter().enumerate() {
                        if entry.sequence != from + offset as u64 {
                            return Err(format!("log entry {} where {} was due", entry.sequence, from + offset as u64));
                        }
                        let certified = entry.certified.as_ref().ok_or("a log entry without its proof")?;
                        if certified.record != entry.record {
                            return Err("a log entry's proof is of another record".into());
                        }
                        let certified = verify_record(&self.cluster, &self.signing, certified)?;
                        entries.push((entry.sequence, certified.record));
                    }
                    Ok((entries, reply.next_sequence))
                },
            )
            .await
    }

    /// Ask every replica for its challenge and answer each with `secret`; the request with the
    /// answers.
    async fn answered(
        &self,
        secret: &KeySecret,
        mutation: &Mutation,
        id: u64,
        mut asked: Asked,
    ) -> Result<Asked, ClientError> {
        let digest = mutation.digest(&self.cluster, self.engine.client(), id);
        let challenge = asked.for_challenge();
        let mut calls: FuturesUnordered<_> = (0..self.engine.n())
            .map(|index| {
                let challenge = challenge.clone();
                async move {
                    let reply = self
                        .engine
                        .one(index, |channel| async move { Self::grpc(channel).get_challenge(challenge).await })
                        .await;
                    (index, reply)
                }
            })
            .collect();
        let mut answers = Vec::new();
        let mut last = String::from("no replica answered");
        // Every replica's answer is a vote, so all are waited for — but once n − t replied (all
        // the honest ones may be among them), a silent replica gets only CHALLENGE_GRACE more.
        let enough = self.engine.n() - self.engine.quorum().t();
        let mut replied = 0;
        loop {
            let next = if replied >= enough {
                match tokio::time::timeout(CHALLENGE_GRACE, calls.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                }
            } else {
                calls.next().await
            };
            let Some((index, reply)) = next else { break };
            replied += 1;
            match reply {
                Ok(reply) if reply.replica == index => {
                    match answer_challenge(secret, &reply.challenge, &self.cluster, index, &digest) {
                        Ok(answer) => answers.push(proto::ChallengeAnswer { replica: index, answer }),
                        Err(error) => last = format!("replica {index}: a bad challenge: {error}"),
                    }
                }
                Ok(reply) => last = format!("replica {index} answered as replica {}", reply.replica),
                // A refusal of the request itself (a bad field) is the same at every replica.
                Err(ClientError::Replica { status, .. }) if status.code() == Code::InvalidArgument => {
                    return Err(ClientError::from_status(status));
                }
                Err(error) => last = error.to_string(),
            }
        }
        let needed = self.engine.quorum().t() + 1;
        if (answers.len() as u32) < needed {
            return Err(ClientError::NoMatch { needed, asked: self.engine.n(), agreeing: answers.len() as u32, last });
        }
        answers.sort_by_key(|answer| answer.replica);
        asked.set_answers(answers);
        Ok(asked)
    }

    fn check_revoked(&self, records: &[proto::CertifiedRecord]) -> Result<Vec<CertifiedRecord>, String> {
        records
            .iter()
            .map(|record| {
                let certified = verify_record(&self.cluster, &self.signing, record)?;
                match certified.record {
                    Record::Revoked(_) => Ok(certified),
                    _ => Err("a revocation record is not one".to_string()),
                }
            })
            .collect()
    }

    fn check_issued(
        &self,
        key: &SubjectKey,
        certificate: Option<proto::IssuedCertificate>,
        issued: Option<proto::CertifiedRecord>,
        revoked: Vec<proto::CertifiedRecord>,
    ) -> Result<Issued, String> {
        let certificate = certificate.ok_or("no certificate")?;
        let record = verify_record(&self.cluster, &self.signing, &issued.ok_or("no issued record")?)?;
        let Record::Issued(IssuedRecord { serial, tbs }) = &record.record else {
            return Err("the issued record is not one".into());
        };
        let signed = verify_certificate(&self.rsa, &certificate.der)?;
        if signed != *tbs {
            return Err("the certificate is not the one the issued record names".into());
        }
        let parsed = x509_cert::TbsCertificate::from_der(tbs).map_err(|e| e.to_string())?;
        if parsed.subject_public_key_info.subject_public_key.raw_bytes() != key.public_key_bytes() {
            return Err("the certificate is for another key".into());
        }
        let revoked = self.check_revoked(&revoked)?;
        Ok(Issued { der: certificate.der, serial: serial.clone(), record, revoked })
    }
}
