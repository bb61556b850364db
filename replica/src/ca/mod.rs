//! The certification authority at a replica: the `fides.v1.CertificationAuthorityService` gRPC
//! service over the CA service of the host (`fides_ca::service`). `docs/ca.md` describes the
//! protocol.
//!
//! - Every request's fields and bounds are checked here, before anything is ordered: a bad one
//!   is `INVALID_ARGUMENT` with a `google.rpc.BadRequest` naming the field.
//! - `GetChallenge` is not ordered: this replica computes its challenge from the request and its
//!   own identity key (`Challenger`), and recomputes it when the ordered request comes.
//! - `Issue`, `Update`, `Revoke` and `GetStatus` are ordered through the host
//!   (`host::Orderer::order`); the answer carries each signed record with its inclusion path and
//!   the epoch's certificate, and the certificate's threshold RSA signature.
//! - `Retrieve`, `GetCrl` and `ListIssued` are questions to this replica's store
//!   (`host::Orderer::run`) with the service's queries; the RSA signatures of certificates and
//!   CRLs are the host's, found by message id.

mod convert;
mod x509;

use fides_api::proto;
use fides_ca::service::{
    Challenger, IssuedRecord, Mutation, Query, Record, Request, RevokedRecord, Service as CaService, StatusRecord,
    View as CaView,
};
use fides_service::certificate::Leaf;
use fides_service::rsa_signer::MessageId;
use fides_service::{Outcome, Service as _};
use fides_types::codec::Wire;
use proto::certification_authority_service_server::{
    CertificationAuthorityService, CertificationAuthorityServiceServer,
};
use redb::ReadableDatabase;
use tonic::{Request as GrpcRequest, Response, Status};

use self::convert::{invalid, mutation_of, revoke_mutation, serial_of, sorted_answers};
use crate::host::epochs::{Certified, HostAnswer};

/// Listed at most per `ListIssued` page.
pub const LOG_PAGE_MAX: u32 = 1000;

/// The `fides.v1.CertificationAuthorityService` of a replica.
#[derive(Clone)]
pub struct CaApi {
    host: crate::host::Orderer,
    /// The replica's services (the CA among them), for the CA's queries.
    services: std::sync::Arc<fides_service::Registry>,
    cluster: [u8; 32],
    n: u32,
    challenger: Challenger,
}

impl CaApi {
    /// The service of replica `index` of a cluster of `n` with id `cluster`, whose identity key
    /// is `identity` (its challenges are derived from it); `services` holds the CA service.
    pub fn new(
        host: crate::host::Orderer,
        services: std::sync::Arc<fides_service::Registry>,
        cluster: [u8; 32],
        n: u32,
        index: u32,
        identity: &ed25519_dalek::SigningKey,
    ) -> CaApi {
        CaApi { host, services, cluster, n, challenger: Challenger::new(cluster, index, identity) }
    }

    /// The tonic server of it.
    pub fn into_server(self) -> CertificationAuthorityServiceServer<CaApi> {
        CertificationAuthorityServiceServer::new(self).max_decoding_message_size(1 << 20)
    }

    /// Order a mutation with its answers and wait for the host's answer.
    async fn order_mutation(
        &self,
        client: u64,
        id: u64,
        mutation: Mutation,
        answers: &[proto::ChallengeAnswer],
    ) -> Result<HostAnswer, Status> {
        let answers = sorted_answers(answers, self.n)?;
        let payload = Request::Mutation { mutation, answers }.to_payload();
        check_payload(&payload)?;
        let (answer, _, _) = self.host.order(client, id, payload).await?;
        Ok(answer)
    }
}

/// A payload the service would refuse undecoded is refused here.
fn check_payload(payload: &[u8]) -> Result<(), Status> {
    let max = <CaService as fides_service::Service>::PAYLOAD_MAX;
    if payload.len() > max {
        return Err(invalid("", &format!("the request takes {} bytes, above the bound of {max}", payload.len())));
    }
    Ok(())
}

/// The records and signatures of a host's answer, decoded.
#[derive(Default)]
struct Signed {
    issued: Option<(IssuedRecord, proto::CertifiedRecord)>,
    revoked: Vec<(RevokedRecord, proto::CertifiedRecord)>,
    status: Option<(StatusRecord, proto::CertifiedRecord)>,
    /// The threshold RSA signatures, by the message signed.
    signatures: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

fn signed(answer: &HostAnswer) -> Result<Signed, Status> {
    if answer.service != <CaService as fides_service::Service>::ID {
        return Err(Status::internal(format!("the request ordered there is for service {}", answer.service)));
    }
    let mut out = Signed::default();
    for (position, (outcome, certified)) in answer.outcomes.iter().enumerate() {
        match outcome {
            Outcome::Sign(bytes) => {
                let record = Record::from_bytes(bytes)
                    .map_err(|e| Status::internal(format!("the CA signed a record that does not decode: {e}")))?;
                let Some(certified) = certified else {
                    return Err(Status::unavailable("the record is not certified yet: ask again"));
                };
                let proto_record = certified_record(bytes, certified);
                match record {
                    Record::Issued(issued) => out.issued = Some((issued, proto_record)),
                    Record::Revoked(revoked) => out.revoked.push((revoked, proto_record)),
                    Record::Status(status) => out.status = Some((status, proto_record)),
                }
            }
            Outcome::ThresholdSign { message, .. } => {
                out.signatures.push((message.clone(), answer.signature(position).map(<[u8]>::to_vec)));
            }
            _ => {}
        }
    }
    Ok(out)
}

fn certified_record(record: &[u8], (inclusion, certificate): &Certified) -> proto::CertifiedRecord {
    proto::CertifiedRecord {
        record: record.to_vec(),
        inclusion: inclusion.to_bytes(),
        certificate: certificate.to_bytes(),
        epoch: certificate.root.epoch,
        agreed_time: Some(x509::timestamp_ms(certificate.root.time_ms)),
    }
}

/// How long a handler waits for a certificate's threshold signature after its decision was
/// certified (the replicas exchange their shares once the decision's epoch is durable).
const SIGNATURE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How often it looks.
const SIGNATURE_POLL: std::time::Duration = std::time::Duration::from_millis(25);

impl CaApi {
    /// The certificate of an issued record: its signature from the answer, or once this replica
    /// has combined it (a decision's signatures are asked for with its epoch and found by
    /// message id), within [`SIGNATURE_WAIT`].
    async fn issued_certificate(
        &self,
        signed: &Signed,
    ) -> Result<(proto::IssuedCertificate, proto::CertifiedRecord), Status> {
        let Some((issued, record)) = &signed.issued else {
            return Err(Status::internal("the request was decided but gave no issued record"));
        };
        let given = signed
            .signatures
            .iter()
            .find(|(message, _)| *message == issued.tbs)
            .and_then(|(_, signature)| signature.clone());
        let signature = match given {
            Some(signature) => signature,
            None => self.await_signature(&issued.tbs).await?,
        };
        let certificate = x509::certificate(&issued.tbs, &signature).map_err(Status::internal)?;
        Ok((certificate, record.clone()))
    }

    async fn await_signature(&self, message: &[u8]) -> Result<Vec<u8>, Status> {
        let deadline = tokio::time::Instant::now() + SIGNATURE_WAIT;
        loop {
            let messages = vec![message.to_vec()];
            let found = self.host.run(move |view| signatures(view, &messages)).await??;
            if let Some(Some(signature)) = found.into_iter().next() {
                return Ok(signature);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::unavailable(
                    "the certificate's threshold signature is not combined at this replica yet: ask again",
                ));
            }
            tokio::time::sleep(SIGNATURE_POLL).await;
        }
    }
}

#[tonic::async_trait]
impl CertificationAuthorityService for CaApi {
    async fn get_challenge(
        &self,
        request: GrpcRequest<proto::GetChallengeRequest>,
    ) -> Result<Response<proto::GetChallengeResponse>, Status> {
        use proto::get_challenge_request::Request as Asked;
        let (client, id, mutation) = match request.into_inner().request {
            Some(Asked::Issue(r)) => (r.client, r.request_id, mutation_of(true, r.binding, &r.token)?),
            Some(Asked::Update(r)) => {
                (r.client, r.request_id, mutation_of(false, r.binding.map(convert::update_binding), &r.token)?)
            }
            Some(Asked::Revoke(r)) => (r.client, r.request_id, revoke_mutation(&r)?),
            None => return Err(invalid("request", "no request to challenge")),
        };
        let digest = mutation.digest(&self.cluster, client, id);
        let challenge =
            self.challenger.challenge(mutation.key(), &digest).map_err(|e| invalid("key", &e.to_string()))?;
        Ok(Response::new(proto::GetChallengeResponse { replica: self.challenger.index(), challenge }))
    }

    async fn issue(&self, request: GrpcRequest<proto::IssueRequest>) -> Result<Response<proto::IssueResponse>, Status> {
        let r = request.into_inner();
        let mutation = mutation_of(true, r.binding, &r.token)?;
        let answer = self.order_mutation(r.client, r.request_id, mutation, &r.answers).await?;
        let (certificate, issued) = self.issued_certificate(&signed(&answer)?).await?;
        Ok(Response::new(proto::IssueResponse { certificate: Some(certificate), issued: Some(issued) }))
    }

    async fn update(
        &self,
        request: GrpcRequest<proto::UpdateRequest>,
    ) -> Result<Response<proto::UpdateResponse>, Status> {
        let r = request.into_inner();
        let mutation = mutation_of(false, r.binding.map(convert::update_binding), &r.token)?;
        let answer = self.order_mutation(r.client, r.request_id, mutation, &r.answers).await?;
        let signed = signed(&answer)?;
        let (certificate, issued) = self.issued_certificate(&signed).await?;
        let revoked = signed.revoked.into_iter().map(|(_, record)| record).collect();
        Ok(Response::new(proto::UpdateResponse { certificate: Some(certificate), issued: Some(issued), revoked }))
    }

    async fn revoke(
        &self,
        request: GrpcRequest<proto::RevokeRequest>,
    ) -> Result<Response<proto::RevokeResponse>, Status> {
        let r = request.into_inner();
        let mutation = revoke_mutation(&r)?;
        let answer = self.order_mutation(r.client, r.request_id, mutation, &r.answers).await?;
        let revoked = signed(&answer)?.revoked.into_iter().map(|(_, record)| record).collect();
        Ok(Response::new(proto::RevokeResponse { revoked }))
    }

    async fn get_status(
        &self,
        request: GrpcRequest<proto::GetStatusRequest>,
    ) -> Result<Response<proto::GetStatusResponse>, Status> {
        let r = request.into_inner();
        let serial = serial_of(&r.serial, "serial")?;
        let payload = Request::Status { serial }.to_payload();
        let (answer, _, _) = self.host.order(r.client, r.request_id, payload).await?;
        let Some((status, record)) = signed(&answer)?.status else {
            return Err(Status::internal("the status request gave no status record"));
        };
        Ok(Response::new(convert::status_response(&status, record)))
    }

    async fn retrieve(
        &self,
        request: GrpcRequest<proto::RetrieveRequest>,
    ) -> Result<Response<proto::RetrieveResponse>, Status> {
        let query = convert::retrieve_query(request.into_inner())?;
        let services = std::sync::Arc::clone(&self.services);
        let rows = match self.host.run(move |view| query_ca(view, &services, query)).await? {
            Ok(CaView::Certificates(rows)) => rows,
            // None is an answer like any other: 2t + 1 replicas agree on it.
            Err(status) if status.code() == tonic::Code::NotFound => Vec::new(),
            Ok(_) => return Err(Status::internal("the CA answered another question")),
            Err(status) => return Err(status),
        };
        let tbs: Vec<Vec<u8>> = rows.iter().map(|row| row.tbs.clone()).collect();
        let signatures = self.host.run(move |view| signatures(view, &tbs)).await??;
        let mut certificates = Vec::with_capacity(rows.len());
        for (row, signature) in rows.iter().zip(signatures) {
            let Some(signature) = signature else {
                return Err(Status::unavailable(
                    "a certificate's threshold signature is not combined at this replica yet: ask another",
                ));
            };
            certificates.push(x509::certificate(&row.tbs, &signature).map_err(Status::internal)?);
        }
        Ok(Response::new(proto::RetrieveResponse { certificates }))
    }

    async fn get_crl(&self, _: GrpcRequest<proto::GetCrlRequest>) -> Result<Response<proto::GetCrlResponse>, Status> {
        let services = std::sync::Arc::clone(&self.services);
        let found = self.host.run(move |view| query_ca(view, &services, Query::Crl)).await??;
        let CaView::Crl { latest, previous } = found else {
            return Err(Status::internal("the CA answered another question"));
        };
        // The latest CRL whose signature is in here; the previous one while the latest's is not.
        let candidates: Vec<Vec<u8>> = latest.into_iter().chain(previous).map(|entry| entry.tbs).collect();
        let signatures = self.host.run({
            let candidates = candidates.clone();
            move |view| signatures(view, &candidates)
        });
        for (tbs, signature) in candidates.iter().zip(signatures.await??) {
            if let Some(signature) = signature {
                return Ok(Response::new(x509::crl(tbs, &signature).map_err(Status::internal)?));
            }
        }
        Err(Status::not_found("no CRL is signed at this replica yet"))
    }

    async fn list_issued(
        &self,
        request: GrpcRequest<proto::ListIssuedRequest>,
    ) -> Result<Response<proto::ListIssuedResponse>, Status> {
        let r = request.into_inner();
        let max = if r.max == 0 { LOG_PAGE_MAX } else { r.max.min(LOG_PAGE_MAX) };
        let query = Query::Log { from: r.from_sequence, max };
        let services = std::sync::Arc::clone(&self.services);
        let found = self.host.run(move |view| query_ca(view, &services, query)).await??;
        let CaView::Log(entries) = found else {
            return Err(Status::internal("the CA answered another question"));
        };
        let next_sequence = entries.last().map_or(r.from_sequence, |entry| entry.sequence + 1);
        // Each entry with its proof: the record's leaf in the epoch that signed it.
        let entries = self
            .host
            .run(move |view| {
                entries
                    .into_iter()
                    .map(|entry| {
                        let leaf = Leaf::Service { service: CaService::ID, record: entry.record.clone() }.hash();
                        let certified = view.certified_leaf(entry.epoch, &leaf).ok().map(|(inclusion, certificate)| {
                            proto::CertifiedRecord {
                                record: entry.record.clone(),
                                inclusion: inclusion.to_bytes(),
                                epoch: certificate.root.epoch,
                                agreed_time: Some(x509::timestamp_ms(certificate.root.time_ms)),
                                certificate: certificate.to_bytes(),
                            }
                        });
                        proto::LogEntry {
                            sequence: entry.sequence,
                            record: entry.record,
                            epoch: entry.epoch,
                            certified,
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .await?;
        Ok(Response::new(proto::ListIssuedResponse { entries, next_sequence }))
    }
}

/// Ask the CA service a question over its tables in this replica's store.
fn query_ca(
    view: &mut crate::host::worker::View<'_>,
    services: &fides_service::Registry,
    query: Query,
) -> Result<CaView, Status> {
    let service = services.get::<CaService>().ok_or_else(|| Status::unimplemented("no CA service here"))?;
    // `read_tables` is the service's namespace already (the registry's `query` would add it again).
    let tables = view.read_tables::<CaService>().map_err(|e| Status::internal(e.to_string()))?;
    fides_service::Service::query(service, &tables, query).map_err(|error| match error {
        fides_service::QueryError::Refused(refusal) => crate::host::orderer::code_status(refusal.code, refusal.reason),
        other => Status::internal(other.to_string()),
    })
}

/// The threshold RSA signature of each message, if this replica holds it.
fn signatures(view: &mut crate::host::worker::View<'_>, messages: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, Status> {
    let read = view.db().begin_read().map_err(|e| Status::internal(e.to_string()))?;
    messages
        .iter()
        .map(|message| {
            crate::host::threshold::lookup(&read, &MessageId::of(message)).map_err(|e| Status::internal(e.to_string()))
        })
        .collect()
}
