//! The timestamping bistro at a replica: its tables beside the host's ([`kv`]), the
//! `fides.v1.Bistro` gRPC service (here), the replica's side as an intermediary, and the transfer
//! of uploads after deadlines ([`transfer`]). The host's worker (`crate::host::worker`) runs the
//! service over delivered batches.
//! `docs/bistro.md` describes the protocol.

pub mod kv;
pub mod queries;
pub mod transfer;

use fides_api::proto;
use fides_bistro::records::{
    ed_verify, CollectRequest, EventId, EventTerms, HeldReport, RelayRegistration, Request, TicketRequest,
};
use fides_bistro::service::Outcome;
use fides_bistro::stream::{Aead, HashAlg};
use fides_types::codec::Wire;
use proto::bistro_server::{Bistro, BistroServer};
use tonic::{Request as GrpcRequest, Response, Status};

use self::queries::Answer;
use crate::host::orderer::code_status;
use crate::host::worker::{View, WorkerHandle};

/// One upload of a collection, as a replica reports it.
#[derive(Clone, Debug)]
pub struct UploadInfo {
    /// Ticket.
    pub ticket: u64,
    /// Upload hash.
    pub hash: [u8; 32],
    /// Upload size.
    pub size: u64,
    /// Capsule.
    pub capsule: Vec<u8>,
    /// Replicas that stored it.
    pub stored_by: Vec<u32>,
    /// The ticket's canonical bytes.
    pub ticket_record: Vec<u8>,
}

/// A replica's answer to `CollectShares`.
#[derive(Clone, Debug)]
pub struct CollectShares {
    /// The replica.
    pub replica: u32,
    /// The uploads.
    pub uploads: Vec<UploadInfo>,
    /// The shares, sealed to the owner.
    pub sealed: Vec<u8>,
}

/// Orders bistro requests through the host and reads the bistro's answers out of the host's.
#[derive(Clone)]
pub struct Orderer {
    host: crate::host::Orderer,
}

impl Orderer {
    /// The bistro's orderer over the host's.
    pub fn new(host: crate::host::Orderer) -> Orderer {
        Orderer { host }
    }

    /// The worker.
    pub fn worker(&self) -> &WorkerHandle {
        self.host.worker()
    }

    /// Order `request` as the replica itself.
    pub async fn order_own(&self, request: &Request) -> Result<(Answer, u64, u32), Status> {
        let (answer, epoch, index) = self.host.order_own(request.to_payload()).await?;
        Ok((Answer::of(&answer).map_err(Status::internal)?, epoch, index))
    }

    /// Order a payload and wait for the bistro's outcome (refusals become gRPC statuses).
    pub async fn order(&self, client: u64, id: u64, payload: Vec<u8>) -> Result<(Answer, u64, u32), Status> {
        let (answer, epoch, index) = self.host.order(client, id, payload).await?;
        Ok((Answer::of(&answer).map_err(Status::internal)?, epoch, index))
    }

    /// Ask the host's worker a question of the bistro's (see [`queries`]).
    pub async fn run<R: Send + 'static>(
        &self,
        question: impl FnOnce(&mut View<'_>) -> R + Send + 'static,
    ) -> Result<R, Status> {
        self.host.run(question).await
    }
}

/// The `fides.v1.Bistro` service of a replica.
#[derive(Clone)]
pub struct BistroApi {
    orderer: Orderer,
    cluster: [u8; 32],
}

impl BistroApi {
    /// The service.
    pub fn new(orderer: Orderer, cluster: [u8; 32]) -> BistroApi {
        BistroApi { orderer, cluster }
    }

    /// The tonic server of it.
    pub fn into_server(self) -> BistroServer<BistroApi> {
        BistroServer::new(self).max_decoding_message_size(1 << 20)
    }
}

fn signed_reply(answer: Answer, epoch: u64, index: u32) -> Result<Response<proto::SignedReply>, Status> {
    let Outcome::Signed { record, .. } = answer.outcome else {
        return Err(Status::internal("the request was ordered but gave no signed record"));
    };
    let Some(proof) = answer.proof else {
        return Err(Status::unavailable("the record is not signed yet: ask again"));
    };
    Ok(Response::new(proto::SignedReply { record: record.to_bytes(), proof: proof.to_bytes(), epoch, index }))
}

fn event_id(bytes: &[u8]) -> Result<EventId, Status> {
    <[u8; 16]>::try_from(bytes)
        .map(EventId)
        .map_err(|_| Status::invalid_argument(format!("an event id is 16 bytes, not {}", bytes.len())))
}

fn key32(bytes: &[u8], what: &str) -> Result<[u8; 32], Status> {
    <[u8; 32]>::try_from(bytes)
        .map_err(|_| Status::invalid_argument(format!("{what} is 32 bytes, not {}", bytes.len())))
}

fn sig64(bytes: &[u8], what: &str) -> Result<[u8; 64], Status> {
    <[u8; 64]>::try_from(bytes)
        .map_err(|_| Status::invalid_argument(format!("{what} is 64 bytes, not {}", bytes.len())))
}

fn bounded(text: &str, max: usize, what: &str) -> Result<(), Status> {
    if text.len() > max {
        return Err(Status::invalid_argument(format!("{what} is {} bytes, above the bound of {max}", text.len())));
    }
    Ok(())
}

#[tonic::async_trait]
impl Bistro for BistroApi {
    async fn create_event(
        &self,
        request: GrpcRequest<proto::CreateEventRequest>,
    ) -> Result<Response<proto::SignedReply>, Status> {
        let r = request.into_inner();
        bounded(&r.description, fides_bistro::records::DESCRIPTION_MAX, "the description")?;
        let hash = if r.hash_algorithm.is_empty() {
            HashAlg::Sha256
        } else {
            r.hash_algorithm.parse().map_err(|_| {
                Status::invalid_argument(format!("unknown hash algorithm {:?} (sha256, blake3)", r.hash_algorithm))
            })?
        };
        let aead = if r.aead.is_empty() {
            Aead::XChaCha20Poly1305
        } else {
            r.aead.parse().map_err(|_| {
                Status::invalid_argument(format!("unknown AEAD {:?} (xchacha20-poly1305, aes-256-gcm)", r.aead))
            })?
        };
        let terms = EventTerms {
            deadline_ms: r.deadline_ms,
            description: r.description,
            owner: key32(&r.owner_key, "the owner key")?,
            hash,
            aead,
            transfer_window_ms: r.transfer_window_ms,
            nonce: r.nonce,
        };
        let signature = sig64(&r.signature, "the owner's signature")?;
        // Checked here too, so that a forged request does not even get ordered.
        if !ed_verify(&terms.owner, fides_bistro::records::domain::CREATE, &self.cluster, &terms.to_bytes(), &signature)
        {
            return Err(Status::permission_denied("the owner's signature on the event does not verify"));
        }
        let payload = Request::CreateEvent { terms, signature }.to_payload();
        let (answer, epoch, index) = self.orderer.order(r.client, r.id, payload).await?;
        signed_reply(answer, epoch, index)
    }

    async fn get_event(
        &self,
        request: GrpcRequest<proto::GetEventRequest>,
    ) -> Result<Response<proto::SignedReply>, Status> {
        let event = event_id(&request.into_inner().event)?;
        let answer = self
            .orderer
            .run(move |view| queries::event(view, event))
            .await?
            .map_err(|e| Status::internal(e.to_string()))?;
        let Some((answer, epoch, index)) = answer else {
            return Err(Status::not_found(format!("no event {event}")));
        };
        signed_reply(answer, epoch, index)
    }

    async fn list_events(
        &self,
        request: GrpcRequest<proto::ListEventsRequest>,
    ) -> Result<Response<proto::ListEventsReply>, Status> {
        let r = request.into_inner();
        let after = if r.after.is_empty() { None } else { Some(event_id(&r.after)?) };
        let max = (r.max as usize).clamp(1, 1000);
        let events = self
            .orderer
            .run(move |view| queries::events(view, after, max))
            .await?
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(proto::ListEventsReply {
            events: events
                .into_iter()
                .map(|e| proto::EventSummary {
                    event: e.event.to_vec(),
                    description: e.description,
                    deadline_ms: e.deadline_ms,
                    created_ms: e.created_ms,
                    tickets: e.tickets,
                    collections: e.collections,
                })
                .collect(),
        }))
    }

    async fn request_ticket(
        &self,
        request: GrpcRequest<proto::TicketRequest>,
    ) -> Result<Response<proto::SignedReply>, Status> {
        let r = request.into_inner();
        bounded(&r.contact, fides_bistro::records::FIELD_MAX, "the contact")?;
        bounded(&r.file_name, fides_bistro::records::FIELD_MAX, "the file name")?;
        if r.digest.len() != fides_bistro::records::DIGEST_LEN {
            return Err(Status::invalid_argument(format!("a digest is 32 bytes, not {}", r.digest.len())));
        }
        let ticket = TicketRequest {
            event: event_id(&r.event)?,
            digest: r.digest,
            size: r.size,
            contact: r.contact,
            file_name: r.file_name,
        };
        let (answer, epoch, index) = self.orderer.order(r.client, r.id, Request::Ticket(ticket).to_payload()).await?;
        signed_reply(answer, epoch, index)
    }

    async fn status(
        &self,
        request: GrpcRequest<proto::TicketStatusRequest>,
    ) -> Result<Response<proto::SignedReply>, Status> {
        let r = request.into_inner();
        if r.tickets.len() > fides_bistro::records::STATUS_TICKETS_MAX {
            return Err(Status::invalid_argument(format!(
                "at most {} tickets per status request",
                fides_bistro::records::STATUS_TICKETS_MAX
            )));
        }
        let payload = Request::Status { event: event_id(&r.event)?, tickets: r.tickets }.to_payload();
        let (answer, epoch, index) = self.orderer.order(r.client, r.id, payload).await?;
        signed_reply(answer, epoch, index)
    }

    async fn register_relay(
        &self,
        request: GrpcRequest<proto::RegisterRelayRequest>,
    ) -> Result<Response<proto::RegisterRelayReply>, Status> {
        let r = request.into_inner();
        bounded(&r.address, fides_bistro::records::FIELD_MAX, "the address")?;
        let registration = RelayRegistration { key: key32(&r.key, "the relay key")?, address: r.address, seq: r.seq };
        let signature = sig64(&r.signature, "the relay's signature")?;
        let payload = Request::RegisterRelay { registration, signature }.to_payload();
        self.orderer.order(r.client, r.id, payload).await?;
        Ok(Response::new(proto::RegisterRelayReply {}))
    }

    async fn list_relays(
        &self,
        _: GrpcRequest<proto::ListRelaysRequest>,
    ) -> Result<Response<proto::ListRelaysReply>, Status> {
        let relays =
            self.orderer.run(|view| queries::relays(view)).await?.map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(proto::ListRelaysReply {
            relays: relays
                .into_iter()
                .map(|(key, state)| proto::RelayInfo {
                    key: key.to_vec(),
                    address: state.address,
                    undelivered: state.undelivered,
                })
                .collect(),
        }))
    }

    async fn report_held(
        &self,
        request: GrpcRequest<proto::ReportHeldRequest>,
    ) -> Result<Response<proto::ReportHeldReply>, Status> {
        let r = request.into_inner();
        let report =
            HeldReport::from_bytes(&r.held).map_err(|e| Status::invalid_argument(format!("not a held report: {e}")))?;
        if !report.receipt.verify(&self.cluster, &report.signature) {
            return Err(Status::permission_denied("the receipt's signature does not verify"));
        }
        let (answer, _, _) = self.orderer.order(r.client, r.id, Request::Held(report).to_payload()).await?;
        let first = matches!(answer.outcome, Outcome::Held { first: true });
        Ok(Response::new(proto::ReportHeldReply { first }))
    }

    async fn collect(
        &self,
        request: GrpcRequest<proto::CollectRequest>,
    ) -> Result<Response<proto::CollectReply>, Status> {
        let r = request.into_inner();
        let request = CollectRequest {
            event: event_id(&r.event)?,
            recipient: key32(&r.recipient, "the recipient key")?,
            nonce: r.nonce,
        };
        let signature = sig64(&r.signature, "the owner's signature")?;
        let payload = Request::Collect { request, signature }.to_payload();
        let (answer, _, _) = self.orderer.order(r.client, r.id, payload).await?;
        match answer.outcome {
            Outcome::Collected { number, uploads } => Ok(Response::new(proto::CollectReply { number, uploads })),
            _ => Err(Status::internal("the collection was ordered but gave no collection")),
        }
    }

    async fn collect_shares(
        &self,
        request: GrpcRequest<proto::CollectSharesRequest>,
    ) -> Result<Response<proto::CollectSharesReply>, Status> {
        let r = request.into_inner();
        let event = event_id(&r.event)?;
        let number = r.number;
        let answer = self
            .orderer
            .run(move |view| queries::collect_shares(view, event, number))
            .await?
            .map_err(|(code, message)| code_status(code, message))?;
        Ok(Response::new(proto::CollectSharesReply {
            replica: answer.replica,
            uploads: answer
                .uploads
                .into_iter()
                .map(|u| proto::UploadInfo {
                    ticket: u.ticket,
                    upload_hash: u.hash.to_vec(),
                    upload_size: u.size,
                    capsule: u.capsule,
                    stored_by: u.stored_by,
                    ticket_record: u.ticket_record,
                })
                .collect(),
            sealed_shares: answer.sealed,
        }))
    }
}
