//! Rust client library of a Fides cluster: connect from the cluster's public file, order requests.
//!
//! Every service's client runs on one [`engine::Engine`]: the channels to the replicas, the client
//! number and request ids, failover and "k matching answers". A request is named by
//! `(client, id)`, and replicas order a name at most once, so a request may be sent again, to the
//! same or another replica, without being ordered twice. The ordering service's client, [`Client`],
//! sends two ways:
//!
//! - [`Client::submit`]: to one replica (they take turns); on a timeout, an unreachable or
//!   overloaded replica, or one that no longer keeps the answer (`ALREADY_EXISTS`), the same
//!   request goes to the next one, until an answer or `attempts_max` attempts;
//! - [`Client::submit_quorum`]: to `2t + 1` replicas at once; the answer is the one `t + 1` of them
//!   give (so at least one honest replica vouches for it).
//!
//! Every answer to a submission carries the cluster's signature on it (its ordering leaf, path and
//! epoch certificate, docs/certificate.md); the client checks it against the cluster's public key
//! ([`certified::check_ordered`]) and takes an answer that does not verify as a failed attempt, so a
//! single replica's answer is the cluster's word. (The log digest in it is not signed.)

/// The gRPC API (package `fides.v1`): the messages and the generated clients and servers.
pub use fides_api::proto;

pub mod bistro;
pub mod ca;
pub mod certified;
pub mod engine;
pub mod relay;

use std::path::{Path, PathBuf};
use std::time::Duration;

use fides_dealer::ClusterFile;
use fides_types::NodeIndex;
use tonic::transport::Channel;
use tonic::Code;

use engine::{Engine, EngineOptions, MESSAGE_MAX};
use proto::ordering_client::OrderingClient;

/// Where a request was ordered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ordered {
    /// The client number.
    pub client: u64,
    /// The request id.
    pub id: u64,
    /// The epoch that ordered it.
    pub epoch: u64,
    /// Its position in the epoch's batch.
    pub index: u32,
    /// The epoch's agreed time, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The log digest after the epoch.
    pub log_digest: Vec<u8>,
}

impl From<proto::Ordered> for Ordered {
    fn from(o: proto::Ordered) -> Self {
        Ordered {
            client: o.client,
            id: o.id,
            epoch: o.epoch,
            index: o.index,
            time_ms: o.time_ms,
            log_digest: o.log_digest,
        }
    }
}

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The cluster file could not be read.
    #[error("cluster file: {0}")]
    Cluster(String),
    /// A replica's address is not a valid endpoint.
    #[error("replica {index}: address {address:?} is not usable: {reason}")]
    Address {
        /// The replica.
        index: u32,
        /// Its client address.
        address: String,
        /// Why.
        reason: String,
    },
    /// No replica answered within the attempts.
    #[error("no answer after {attempts} attempts; last error: {last}")]
    NoAnswer {
        /// Attempts made.
        attempts: u32,
        /// The last error seen.
        last: String,
    },
    /// Fewer than `needed` of the replicas asked gave the same answer, and no more can.
    #[error("only {agreeing} of {asked} replicas asked gave the same answer, {needed} needed; last error: {last}")]
    NoMatch {
        /// Matching answers needed.
        needed: u32,
        /// Replicas asked.
        asked: u32,
        /// The most that gave one answer.
        agreeing: u32,
        /// The last error seen.
        last: String,
    },
    /// A gRPC call to one replica failed.
    #[error("replica {index}: {status}")]
    Replica {
        /// The replica.
        index: u32,
        /// What it answered.
        status: tonic::Status,
    },
    /// The cluster (or an intermediary) answered with a gRPC status other than a transient one:
    /// the request is refused whatever replica gets it.
    #[error("refused ({code:?}): {message}")]
    Status {
        /// The status code.
        code: Code,
        /// Its message.
        message: String,
    },
    /// An answer does not verify or does not match the request.
    #[error("bad answer: {0}")]
    BadReply(String),
    /// An intermediary's address is not a valid endpoint.
    #[error("address {address:?} is not usable: {reason}")]
    Endpoint {
        /// The address.
        address: String,
        /// Why.
        reason: String,
    },
    /// A local file cannot be used.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl ClientError {
    /// A status that is the answer, not a failure of one replica.
    pub fn from_status(status: tonic::Status) -> ClientError {
        ClientError::Status { code: status.code(), message: status.message().to_string() }
    }
}

/// How a client behaves.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// How long one attempt at one replica may take before the request goes to the next one.
    pub attempt_timeout: Duration,
    /// Attempts before giving up (with `submit_quorum`: at each replica asked).
    pub attempts_max: u32,
    /// Pause after a replica said it is overloaded, and between rounds of the replicas.
    pub overload_backoff: Duration,
    /// The client number; random when `None`.
    pub client: Option<u64>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            attempt_timeout: Duration::from_secs(10),
            attempts_max: 12,
            overload_backoff: Duration::from_millis(50),
            client: None,
        }
    }
}

/// A client of one cluster's ordering service.
#[derive(Clone, Debug)]
pub struct Client {
    engine: Engine,
    cluster_id: [u8; 32],
    public: blsttc::PublicKey,
    verified: std::sync::Arc<certified::VerifiedCertificates>,
}

impl Client {
    /// A client of the cluster described by the public cluster file at `path`.
    pub fn connect(path: &Path, options: ClientOptions) -> Result<Client, ClientError> {
        let cluster = fides_dealer::read_cluster(path).map_err(|e| ClientError::Cluster(e.to_string()))?;
        Client::from_cluster(&cluster, options)
    }

    /// A client of `cluster`. Connections are made lazily, on first use.
    pub fn from_cluster(cluster: &ClusterFile, options: ClientOptions) -> Result<Client, ClientError> {
        let options = EngineOptions {
            attempt_timeout: options.attempt_timeout,
            attempts_max: options.attempts_max,
            backoff: options.overload_backoff,
            client: options.client,
            // A replica that installed a checkpoint no longer keeps the answers of the epochs it
            // skipped; another replica may.
            elsewhere: &[Code::AlreadyExists],
        };
        Ok(Client {
            engine: Engine::new(cluster, options)?,
            cluster_id: cluster.id().0,
            public: cluster.signing().public_key(),
            verified: certified::VerifiedCertificates::shared(),
        })
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

    /// The gRPC client of replica `index` (for the calls this library does not wrap).
    pub fn replica(&self, index: NodeIndex) -> Option<OrderingClient<Channel>> {
        self.engine.channel(index.0).map(ordering)
    }

    /// What checks an answer to the submission of `payload` under `id`: the cluster's signature
    /// on it (an answer that does not verify is a failed attempt).
    fn checker(&self, id: u64, payload: &[u8]) -> impl Fn(proto::Ordered) -> Result<Ordered, String> + '_ {
        let asked = (self.client_number(), id, fides_crypto::sha256(payload));
        move |reply: proto::Ordered| {
            certified::check_ordered(&self.cluster_id, &self.public, &self.verified, asked, &reply)?;
            Ok(Ordered::from(reply))
        }
    }

    /// Order `payload`: to one replica, then to the next on a timeout or failure.
    pub async fn submit(&self, payload: Vec<u8>) -> Result<Ordered, ClientError> {
        let id = self.next_id();
        self.submit_with_id(id, payload).await
    }

    /// Order `payload` under request id `id` (sending an id again never orders it twice).
    pub async fn submit_with_id(&self, id: u64, payload: Vec<u8>) -> Result<Ordered, ClientError> {
        let check = self.checker(id, &payload);
        let request = proto::SubmitRequest { client: self.client_number(), id, payload };
        let call = |channel| {
            let request = request.clone();
            async move { ordering(channel).submit(request).await }
        };
        self.engine.failover(self.engine.first_for(id), call, check).await
    }

    /// Order `payload` by sending it to `2t + 1` replicas at once; the answer is the first that
    /// `t + 1` of them give.
    pub async fn submit_quorum(&self, payload: Vec<u8>) -> Result<Ordered, ClientError> {
        let id = self.next_id();
        self.submit_quorum_with_id(id, payload).await
    }

    /// [`Client::submit_quorum`] under request id `id` (sending an id again never orders it twice).
    pub async fn submit_quorum_with_id(&self, id: u64, payload: Vec<u8>) -> Result<Ordered, ClientError> {
        let check = self.checker(id, &payload);
        let request = proto::SubmitRequest { client: self.client_number(), id, payload };
        let call = |channel| {
            let request = request.clone();
            async move { ordering(channel).submit(request).await }
        };
        let quorum = self.engine.quorum();
        let first = self.engine.first_for(id);
        self.engine.matching(first, quorum.honest_majority(), quorum.one_honest(), call, check).await
    }

    /// Replica `index`'s status.
    pub async fn status(&self, index: NodeIndex) -> Result<proto::StatusReply, ClientError> {
        self.engine.one(index.0, |channel| async move { ordering(channel).status(proto::StatusRequest {}).await }).await
    }

    /// Replica `index`'s whole delivered log from `from_epoch` on, fetched page by page.
    pub async fn log(&self, index: NodeIndex, from_epoch: u64) -> Result<Vec<proto::Batch>, ClientError> {
        let mut channel = self.replica(index).ok_or_else(|| ClientError::Replica {
            index: index.0,
            status: tonic::Status::invalid_argument("no such replica"),
        })?;
        let mut batches = Vec::new();
        let mut from = from_epoch;
        loop {
            let reply = channel
                .log(proto::LogRequest { from_epoch: from, max_batches: 512 })
                .await
                .map_err(|status| ClientError::Replica { index: index.0, status })?
                .into_inner();
            let Some(last) = reply.batches.last() else { break };
            from = last.epoch + 1;
            batches.extend(reply.batches);
            if from >= reply.next_epoch {
                break;
            }
        }
        Ok(batches)
    }
}

/// The ordering service's gRPC client on `channel`.
fn ordering(channel: Channel) -> OrderingClient<Channel> {
    OrderingClient::new(channel).max_decoding_message_size(MESSAGE_MAX)
}

pub mod collect;
