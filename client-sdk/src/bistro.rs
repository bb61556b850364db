//! The client of the timestamping bistro: create events, get tickets and status records (each
//! verified against the cluster's signing key), register relays, collect, and upload commit files
//! to an intermediary.
//!
//! It runs on the [`Engine`]: ordered calls carry `(client, id)`; on a transient failure (a
//! transport error, `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED` or `CANCELLED`) or an
//! answer that does not verify, the same `(client, id)` goes to the next replica (round robin, at
//! most `2n` attempts), so a request is never ordered twice. Any other gRPC status is the answer:
//! [`ClientError::Status`].

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use fides_bistro::commit::CommitHeader;
use fides_bistro::proof::{EpochProof, ProofError};
use fides_bistro::records::{
    domain, ed_sign, CollectRequest, EventId, EventRecord, EventTerms, HeldReport, Receipt, RelayRegistration, Signed,
    StatusRecord, Ticket, TicketRequest,
};
use fides_bistro::text::{aead_name, hash_name};
use fides_dealer::ClusterFile;
use fides_types::codec::Wire;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tonic::transport::Channel;

use crate::engine::{Engine, EngineOptions};
use crate::proto;
use crate::proto::bistro_client::BistroClient as BistroGrpc;
use crate::proto::intermediary_client::IntermediaryClient;
use crate::ClientError;

pub use crate::engine::MESSAGE_MAX;
pub use fides_api::CHUNK;

/// How a [`BistroClient`] behaves.
#[derive(Clone, Debug)]
pub struct BistroOptions {
    /// How long one attempt at one replica may take before the request goes to the next one.
    pub attempt_timeout: Duration,
    /// Pause after a failed attempt once every replica was tried, and after `RESOURCE_EXHAUSTED`.
    pub backoff: Duration,
    /// How long an intermediary may take to answer an upload once the whole file was sent (it
    /// reports the upload to the cluster first).
    pub upload_reply_timeout: Duration,
    /// The client number; random when `None`.
    pub client: Option<u64>,
}

impl Default for BistroOptions {
    fn default() -> Self {
        BistroOptions {
            attempt_timeout: Duration::from_secs(10),
            backoff: Duration::from_millis(100),
            upload_reply_timeout: Duration::from_secs(120),
            client: None,
        }
    }
}

/// An event record with the proof that the cluster signed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedEvent {
    /// The record.
    pub record: EventRecord,
    /// Its proof.
    pub proof: EpochProof,
}

/// One event as listed (unsigned: use [`BistroClient::get_event`] to verify it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventSummary {
    /// Its id.
    pub event: EventId,
    /// What it is.
    pub description: String,
    /// Its deadline (ms since the Unix epoch).
    pub deadline_ms: u64,
    /// When it was created (agreed time).
    pub created_ms: u64,
    /// Tickets issued.
    pub tickets: u64,
    /// Times the owner collected.
    pub collections: u64,
}

/// A registered relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayInfo {
    /// Its Ed25519 key.
    pub key: [u8; 32],
    /// Where it is reached (`host:port`).
    pub address: String,
    /// Uploads it reported and did not deliver in time.
    pub undelivered: u64,
}

/// The epoch roots whose signatures were verified already, shared by verifiers: each record's
/// inclusion path is always checked, but a root signature (one BLS pairing check) only once.
///
/// Keyed by the SHA-256 of the cluster key, the signed root message and the signature, so a cached
/// entry vouches only for exactly what verified; a root that failed is remembered as failed.
/// Single-flight: verifiers that bring the same root at once check it once between them.
/// Bounded: when [`ROOTS_MAX`] roots are cached it starts over.
#[derive(Debug, Default)]
pub struct RootCache {
    verified: Mutex<HashMap<[u8; 32], Arc<RootCheck>>>,
}

/// One root's check, done once: its result, or being done by one verifier while the others wait.
type RootCheck = OnceLock<Result<(), ProofError>>;

/// Roots a [`RootCache`] remembers before it starts over.
pub const ROOTS_MAX: usize = 4096;

impl RootCache {
    /// An empty cache.
    pub fn new() -> RootCache {
        RootCache::default()
    }

    /// How many distinct roots are cached (verified or failed).
    pub fn len(&self) -> usize {
        self.verified.lock().map(|map| map.len()).unwrap_or(0)
    }

    /// Whether no root is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// [`EpochProof::verify`], checking the signature of each root once.
    pub fn verify(
        &self,
        cluster: &[u8; 32],
        public: &blsttc::PublicKey,
        proof: &EpochProof,
        record: &Signed,
    ) -> Result<(), ProofError> {
        if let Signed::Ticket(ticket) = record {
            if ticket.time_ms != proof.time_ms {
                return Err(ProofError::Time);
            }
        }
        let message = proof.message(cluster, record)?;
        // Decompressing the signature (a G2 point, with its subgroup check) costs a good part of
        // a pairing: only on a miss.
        let check = || {
            blsttc::Signature::from_bytes(proof.signature).map_or(Err(ProofError::Malformed), |signature| {
                if public.verify(&signature, &message) {
                    Ok(())
                } else {
                    Err(ProofError::Signature)
                }
            })
        };
        let key: [u8; 32] = Sha256::new()
            .chain_update(public.to_bytes())
            .chain_update((message.len() as u64).to_le_bytes())
            .chain_update(&message)
            .chain_update(proof.signature)
            .finalize()
            .into();
        let cell = match self.verified.lock() {
            Ok(mut verified) => {
                if verified.len() >= ROOTS_MAX && !verified.contains_key(&key) {
                    verified.clear();
                }
                Arc::clone(verified.entry(key).or_default())
            }
            // A poisoned lock only means another thread panicked: check without the cache.
            Err(_) => return check(),
        };
        cell.get_or_init(check).clone()
    }
}

/// Read up to [`CHUNK`] bytes (fewer only at the end of the file).
async fn read_chunk(file: &mut tokio::fs::File) -> std::io::Result<Vec<u8>> {
    let mut buffer = vec![0u8; CHUNK];
    let mut filled = 0;
    while filled < CHUNK {
        let read = file.read(&mut buffer[filled..]).await?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    buffer.truncate(filled);
    Ok(buffer)
}

/// A client of a cluster's bistro service.
#[derive(Clone, Debug)]
pub struct BistroClient {
    cluster: Arc<ClusterFile>,
    cluster_id: [u8; 32],
    public: blsttc::PublicKey,
    engine: Engine,
    options: BistroOptions,
}

impl BistroClient {
    /// A client of `cluster` with default options. Connections are made lazily, on first use.
    pub fn connect(cluster: ClusterFile) -> Result<BistroClient, ClientError> {
        BistroClient::with_options(cluster, BistroOptions::default())
    }

    /// A client of the cluster described by the public cluster file at `path`.
    pub fn from_path(path: &Path) -> Result<BistroClient, ClientError> {
        let cluster = fides_dealer::read_cluster(path).map_err(|e| ClientError::Cluster(e.to_string()))?;
        BistroClient::connect(cluster)
    }

    /// A client of `cluster`.
    pub fn with_options(cluster: ClusterFile, options: BistroOptions) -> Result<BistroClient, ClientError> {
        let engine = Engine::new(
            &cluster,
            EngineOptions {
                attempt_timeout: options.attempt_timeout,
                attempts_max: 2 * cluster.quorum().n(),
                backoff: options.backoff,
                client: options.client,
                elsewhere: &[],
            },
        )?;
        Ok(BistroClient {
            cluster_id: cluster.id().0,
            public: cluster.signing().public_key(),
            cluster: Arc::new(cluster),
            engine,
            options,
        })
    }

    /// The cluster.
    pub fn cluster(&self) -> &ClusterFile {
        &self.cluster
    }

    /// The cluster id.
    pub fn cluster_id(&self) -> [u8; 32] {
        self.cluster_id
    }

    /// The number of replicas.
    pub fn n(&self) -> u32 {
        self.engine.n()
    }

    /// This client's number.
    pub fn client_number(&self) -> u64 {
        self.engine.client()
    }

    /// A fresh request id.
    pub fn next_id(&self) -> u64 {
        self.engine.next_id()
    }

    /// Verify that the cluster signed `record` (proof of inclusion and the epoch's signature).
    pub fn verify_record(&self, record: &Signed, proof: &EpochProof) -> Result<(), ProofError> {
        proof.verify(&self.cluster_id, &self.public, record)
    }

    /// The channel to replica `index`'s client address (it serves `Bistro` and `Intermediary`).
    pub fn replica_channel(&self, index: u32) -> Option<Channel> {
        self.engine.channel(index)
    }

    /// Replica `index`'s `Intermediary` service.
    pub fn replica_intermediary(&self, index: u32) -> Option<IntermediaryClient<Channel>> {
        self.replica_channel(index)
            .map(|channel| IntermediaryClient::new(channel).max_decoding_message_size(MESSAGE_MAX))
    }

    /// The `Intermediary` service at `address` (`host:port`, a relay's or a replica's), connected
    /// lazily.
    pub fn intermediary_client(address: &str) -> Result<IntermediaryClient<Channel>, ClientError> {
        let channel = fides_api::lazy_channel(address)
            .map_err(|reason| ClientError::Endpoint { address: address.to_string(), reason })?;
        Ok(IntermediaryClient::new(channel).max_decoding_message_size(MESSAGE_MAX))
    }

    fn grpc(channel: Channel) -> BistroGrpc<Channel> {
        BistroGrpc::new(channel).max_decoding_message_size(MESSAGE_MAX)
    }

    /// [`Engine::failover`] with the `Bistro` service's client.
    async fn failover<T, U, F, Fut>(
        &self,
        first: usize,
        mut call: F,
        check: impl Fn(T) -> Result<U, String>,
    ) -> Result<U, ClientError>
    where
        F: FnMut(BistroGrpc<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.engine.failover(first, |channel| call(Self::grpc(channel)), check).await
    }

    /// The first replica for an ordered request.
    fn first_for(&self, id: u64) -> usize {
        self.engine.first_for(id)
    }

    /// The first replica for a read.
    fn first_for_read(&self) -> usize {
        self.engine.first_for_read()
    }

    /// Decode and verify a signed reply.
    fn signed(&self, reply: proto::SignedReply, cache: Option<&RootCache>) -> Result<(Signed, EpochProof), String> {
        let record =
            Signed::from_bytes(&reply.record).map_err(|e| format!("the signed record does not decode: {e}"))?;
        let proof = EpochProof::from_bytes(&reply.proof).map_err(|e| format!("the proof does not decode: {e}"))?;
        let verified = match cache {
            Some(cache) => cache.verify(&self.cluster_id, &self.public, &proof, &record),
            None => proof.verify(&self.cluster_id, &self.public, &record),
        };
        verified.map_err(|e| e.to_string())?;
        Ok((record, proof))
    }

    /// Create an event with `terms`, signed by `owner` (whose key must be `terms.owner`).
    pub async fn create_event(&self, terms: EventTerms, owner: &SigningKey) -> Result<SignedEvent, ClientError> {
        let signature = ed_sign(owner, domain::CREATE, &self.cluster_id, &terms.to_bytes());
        let id = self.next_id();
        let request = proto::CreateEventRequest {
            client: self.client_number(),
            id,
            deadline_ms: terms.deadline_ms,
            description: terms.description.clone(),
            owner_key: terms.owner.to_vec(),
            hash_algorithm: hash_name(terms.hash).to_string(),
            aead: aead_name(terms.aead).to_string(),
            transfer_window_ms: terms.transfer_window_ms,
            nonce: terms.nonce,
            signature: signature.to_vec(),
        };
        self.failover(
            self.first_for(id),
            |mut grpc| {
                let request = request.clone();
                async move { grpc.create_event(request).await }
            },
            |reply| match self.signed(reply, None)? {
                (Signed::Event(record), proof) if record.terms == terms => Ok(SignedEvent { record, proof }),
                (Signed::Event(_), _) => Err("the event record's terms differ from the request's".into()),
                _ => Err("the signed record is not an event record".into()),
            },
        )
        .await
    }

    /// An event's record, verified.
    pub async fn get_event(&self, event: EventId) -> Result<(EventRecord, EpochProof), ClientError> {
        let request = proto::GetEventRequest { event: event.0.to_vec() };
        self.failover(
            self.first_for_read(),
            |mut grpc| {
                let request = request.clone();
                async move { grpc.get_event(request).await }
            },
            |reply| match self.signed(reply, None)? {
                (Signed::Event(record), proof) if record.event == event => Ok((record, proof)),
                (Signed::Event(record), _) => Err(format!("asked for event {event}, got {}", record.event)),
                _ => Err("the signed record is not an event record".into()),
            },
        )
        .await
    }

    /// Up to `max` events after `after` (from the first when `None`), in id order. Unsigned.
    pub async fn list_events(&self, after: Option<EventId>, max: u32) -> Result<Vec<EventSummary>, ClientError> {
        let request = proto::ListEventsRequest { after: after.map(|e| e.0.to_vec()).unwrap_or_default(), max };
        self.failover(
            self.first_for_read(),
            |mut grpc| {
                let request = request.clone();
                async move { grpc.list_events(request).await }
            },
            |reply| {
                reply
                    .events
                    .into_iter()
                    .map(|summary| {
                        let id: [u8; 16] = summary
                            .event
                            .as_slice()
                            .try_into()
                            .map_err(|_| format!("an event id of {} bytes", summary.event.len()))?;
                        Ok(EventSummary {
                            event: EventId(id),
                            description: summary.description,
                            deadline_ms: summary.deadline_ms,
                            created_ms: summary.created_ms,
                            tickets: summary.tickets,
                            collections: summary.collections,
                        })
                    })
                    .collect()
            },
        )
        .await
    }

    /// Request a ticket; the ticket is verified and must match the request.
    pub async fn request_ticket(&self, request: TicketRequest) -> Result<(Ticket, EpochProof), ClientError> {
        self.ticket(request, None).await
    }

    /// [`BistroClient::request_ticket`], verifying each distinct epoch root's signature only once
    /// across everything that shares `cache`.
    pub async fn request_ticket_cached(
        &self,
        request: TicketRequest,
        cache: &RootCache,
    ) -> Result<(Ticket, EpochProof), ClientError> {
        self.ticket(request, Some(cache)).await
    }

    async fn ticket(
        &self,
        request: TicketRequest,
        cache: Option<&RootCache>,
    ) -> Result<(Ticket, EpochProof), ClientError> {
        let id = self.next_id();
        let message = proto::TicketRequest {
            client: self.client_number(),
            id,
            event: request.event.0.to_vec(),
            digest: request.digest.clone(),
            size: request.size,
            contact: request.contact.clone(),
            file_name: request.file_name.clone(),
        };
        self.failover(
            self.first_for(id),
            |mut grpc| {
                let message = message.clone();
                async move { grpc.request_ticket(message).await }
            },
            |reply| match self.signed(reply, cache)? {
                (Signed::Ticket(ticket), proof) => {
                    if ticket.event != request.event
                        || ticket.digest.as_slice() != request.digest.as_slice()
                        || ticket.size != request.size
                        || ticket.contact != request.contact
                        || ticket.file_name != request.file_name
                    {
                        return Err("the ticket differs from the request".into());
                    }
                    Ok((ticket, proof))
                }
                _ => Err("the signed record is not a ticket".into()),
            },
        )
        .await
    }

    /// A signed status of `tickets` of `event`, as of the agreed time it was ordered at.
    pub async fn status(&self, event: EventId, tickets: Vec<u64>) -> Result<(StatusRecord, EpochProof), ClientError> {
        let id = self.next_id();
        let request = proto::TicketStatusRequest {
            client: self.client_number(),
            id,
            event: event.0.to_vec(),
            tickets: tickets.clone(),
        };
        self.failover(
            self.first_for(id),
            |mut grpc| {
                let request = request.clone();
                async move { grpc.status(request).await }
            },
            |reply| match self.signed(reply, None)? {
                (Signed::Status(status), proof) => {
                    if status.event != event {
                        return Err(format!("asked about event {event}, got {}", status.event));
                    }
                    let answered: Vec<u64> = status.tickets.iter().map(|t| t.ticket).collect();
                    if answered != tickets {
                        return Err(format!("asked about tickets {tickets:?}, got {answered:?}"));
                    }
                    Ok((status, proof))
                }
                _ => Err("the signed record is not a status record".into()),
            },
        )
        .await
    }

    /// Register (or re-register, with a higher `seq`) the relay with key `key` at `address`.
    pub async fn register_relay(&self, key: &SigningKey, address: &str, seq: u64) -> Result<(), ClientError> {
        let registration = RelayRegistration { key: key.verifying_key().to_bytes(), address: address.to_string(), seq };
        let signature = ed_sign(key, domain::RELAY, &self.cluster_id, &registration.to_bytes());
        let id = self.next_id();
        let request = proto::RegisterRelayRequest {
            client: self.client_number(),
            id,
            key: registration.key.to_vec(),
            address: registration.address,
            seq,
            signature: signature.to_vec(),
        };
        self.failover(
            self.first_for(id),
            |mut grpc| {
                let request = request.clone();
                async move { grpc.register_relay(request).await }
            },
            |_| Ok(()),
        )
        .await
    }

    /// The registered relays.
    pub async fn list_relays(&self) -> Result<Vec<RelayInfo>, ClientError> {
        self.failover(
            self.first_for_read(),
            |mut grpc| async move { grpc.list_relays(proto::ListRelaysRequest {}).await },
            |reply| {
                reply
                    .relays
                    .into_iter()
                    .map(|relay| {
                        let key: [u8; 32] = relay
                            .key
                            .as_slice()
                            .try_into()
                            .map_err(|_| format!("a relay key of {} bytes", relay.key.len()))?;
                        Ok(RelayInfo { key, address: relay.address, undelivered: relay.undelivered })
                    })
                    .collect()
            },
        )
        .await
    }

    /// Report that an intermediary holds an upload; true if the upload was new to the cluster.
    pub async fn report_held(&self, report: HeldReport) -> Result<bool, ClientError> {
        let id = self.next_id();
        let request = proto::ReportHeldRequest { client: self.client_number(), id, held: report.to_bytes() };
        self.failover(
            self.first_for(id),
            |mut grpc| {
                let request = request.clone();
                async move { grpc.report_held(request).await }
            },
            |reply| Ok(reply.first),
        )
        .await
    }

    /// Collect `event` as its owner: the replicas release their decryption shares, sealed to
    /// `recipient` (X25519). Returns the collection's number and how many uploads it covers.
    pub async fn collect(
        &self,
        event: EventId,
        owner: &SigningKey,
        recipient: [u8; 32],
        nonce: u64,
    ) -> Result<(u64, u64), ClientError> {
        let body = CollectRequest { event, recipient, nonce };
        let signature = ed_sign(owner, domain::COLLECT, &self.cluster_id, &body.to_bytes());
        let id = self.next_id();
        let request = proto::CollectRequest {
            client: self.client_number(),
            id,
            event: event.0.to_vec(),
            recipient: recipient.to_vec(),
            nonce,
            signature: signature.to_vec(),
        };
        self.failover(
            self.first_for(id),
            |mut grpc| {
                let request = request.clone();
                async move { grpc.collect(request).await }
            },
            |reply| Ok((reply.number, reply.uploads)),
        )
        .await
    }

    /// Replica `replica`'s sealed decryption shares for collection `number` of `event` (that
    /// replica only: each replica's shares are its own).
    pub async fn collect_shares(
        &self,
        replica: u32,
        event: EventId,
        number: u64,
    ) -> Result<proto::CollectSharesReply, ClientError> {
        let request = proto::CollectSharesRequest { event: event.0.to_vec(), number };
        self.engine.one(replica, |channel| async move { Self::grpc(channel).collect_shares(request).await }).await
    }

    /// Upload the commit file at `path` to the intermediary at `address`, in [`CHUNK`]-byte
    /// chunks, calling `progress` with the bytes sent so far. Returns the intermediary's receipt
    /// and signature, verified, for exactly this file (its SHA-256 and length, event and ticket).
    pub async fn upload(
        &self,
        address: &str,
        path: &Path,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(Receipt, [u8; 64]), ClientError> {
        let file_error = |reason: String| ClientError::File { path: path.to_path_buf(), reason };
        let mut file = tokio::fs::File::open(path).await.map_err(|e| file_error(e.to_string()))?;
        let first = read_chunk(&mut file).await.map_err(|e| file_error(e.to_string()))?;
        let header = CommitHeader::read(&mut first.as_slice()).map_err(|e| file_error(e.to_string()))?;
        let mut client = Self::intermediary_client(address)?;

        let (sender, receiver) = tokio::sync::mpsc::channel::<proto::UploadChunk>(4);
        let call = async move { client.upload(tokio_stream::wrappers::ReceiverStream::new(receiver)).await };
        let feed = async move {
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            let mut chunk = first;
            while !chunk.is_empty() {
                hasher.update(&chunk);
                size += chunk.len() as u64;
                if sender.send(proto::UploadChunk { data: chunk }).await.is_err() {
                    // The call ended early: its status says why.
                    return Ok(None);
                }
                progress(size);
                chunk = read_chunk(&mut file).await?;
            }
            let hash: [u8; 32] = hasher.finalize().into();
            Ok::<_, std::io::Error>(Some((hash, size)))
        };
        tokio::pin!(call);
        tokio::pin!(feed);
        let fed = tokio::select! {
            fed = &mut feed => fed,
            reply = &mut call => {
                return Err(match reply {
                    Err(status) => ClientError::from_status(status),
                    Ok(_) => ClientError::BadReply(format!("{address}: answered before the whole file was sent")),
                });
            }
        };
        // On a read error, returning drops the call, which cancels the upload.
        let fed = fed.map_err(|e| file_error(e.to_string()))?;
        let reply = match tokio::time::timeout(self.options.upload_reply_timeout, &mut call).await {
            Ok(Ok(reply)) => reply.into_inner(),
            Ok(Err(status)) => return Err(ClientError::from_status(status)),
            Err(_) => {
                return Err(ClientError::NoAnswer {
                    attempts: 1,
                    last: format!("{address}: no answer within {:?}", self.options.upload_reply_timeout),
                })
            }
        };
        let Some((hash, size)) = fed else {
            return Err(ClientError::BadReply(format!("{address}: answered before the whole file was sent")));
        };
        let bad = |reason: &str| ClientError::BadReply(format!("{address}: {reason}"));
        let receipt =
            Receipt::from_bytes(&reply.receipt).map_err(|e| bad(&format!("the receipt does not decode: {e}")))?;
        let signature: [u8; 64] =
            reply.signature.as_slice().try_into().map_err(|_| bad("the receipt's signature is not 64 bytes"))?;
        if !receipt.verify(&self.cluster_id, &signature) {
            return Err(bad("the receipt's signature does not verify"));
        }
        if receipt.upload_hash != hash || receipt.upload_size != size {
            return Err(bad("the receipt names another file (hash or size differ)"));
        }
        if receipt.event != header.event || receipt.ticket != header.ticket {
            return Err(bad("the receipt names another event or ticket"));
        }
        Ok((receipt, signature))
    }
}
