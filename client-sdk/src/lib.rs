//! Rust client library of a Fides cluster: connect from the cluster's public file, order requests.
//!
//! A request is named by `(client, id)`: the client number is drawn at random when a [`Client`] is
//! made, ids count up. Replicas order a name at most once, so a request may be sent again, to the
//! same or another replica, without being ordered twice. Two ways to send:
//!
//! - [`Client::submit`]: to one replica (they take turns); on a timeout or an unreachable replica,
//!   the same request goes to the next one, until an answer or `attempts_max` attempts;
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
pub mod certified;
pub mod relay;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::Duration;

use fides_dealer::ClusterFile;
use fides_types::NodeIndex;
use futures::stream::{FuturesUnordered, StreamExt};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

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
    /// The request is refused whatever replica gets it.
    #[error("refused: {0}")]
    Refused(tonic::Status),
    /// No replica (or not `t + 1` matching ones) answered within the attempts.
    #[error("no answer after {attempts} attempts; last error: {last}")]
    NoAnswer {
        /// Attempts made.
        attempts: u32,
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
    /// The cluster (or an intermediary) answered with a gRPC status other than a transient one.
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

/// How a client behaves.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// How long one attempt at one replica may take before the request goes to the next one.
    pub attempt_timeout: Duration,
    /// Attempts before giving up.
    pub attempts_max: u32,
    /// Pause after a replica said it is overloaded.
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

/// A client of one cluster.
#[derive(Clone, Debug)]
pub struct Client {
    channels: Vec<OrderingClient<Channel>>,
    t: u32,
    cluster_id: [u8; 32],
    public: blsttc::PublicKey,
    verified: std::sync::Arc<certified::VerifiedCertificates>,
    client: u64,
    next_id: std::sync::Arc<AtomicU64>,
    options: ClientOptions,
}

impl Client {
    /// A client of the cluster described by the public cluster file at `path`.
    pub fn connect(path: &Path, options: ClientOptions) -> Result<Client, ClientError> {
        let cluster = fides_dealer::read_cluster(path).map_err(|e| ClientError::Cluster(e.to_string()))?;
        Client::from_cluster(&cluster, options)
    }

    /// A client of `cluster`. Connections are made lazily, on first use.
    pub fn from_cluster(cluster: &ClusterFile, options: ClientOptions) -> Result<Client, ClientError> {
        let mut channels = Vec::new();
        for info in cluster.replicas() {
            let address = info.client_address.to_string();
            let endpoint = Endpoint::from_shared(format!("http://{address}"))
                .map_err(|e| ClientError::Address {
                    index: info.index.0,
                    address: address.clone(),
                    reason: e.to_string(),
                })?
                .connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true);
            // A page of the log holds at least one whole batch, which may exceed gRPC's 4 MiB default.
            channels.push(OrderingClient::new(endpoint.connect_lazy()).max_decoding_message_size(64 * 1024 * 1024));
        }
        let client = options.client.unwrap_or_else(rand::random);
        Ok(Client {
            channels,
            t: cluster.quorum().t(),
            cluster_id: cluster.id().0,
            public: cluster.signing().public_key(),
            verified: std::sync::Arc::default(),
            client,
            next_id: std::sync::Arc::new(AtomicU64::new(0)),
            options,
        })
    }

    /// The number of replicas.
    pub fn n(&self) -> u32 {
        self.channels.len() as u32
    }

    /// This client's number.
    pub fn client_number(&self) -> u64 {
        self.client
    }

    /// A fresh request id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, AtomicOrdering::Relaxed)
    }

    /// The gRPC client of replica `index` (for the calls this library does not wrap).
    pub fn replica(&self, index: NodeIndex) -> Option<OrderingClient<Channel>> {
        self.channels.get(index.0 as usize).cloned()
    }

    /// Order `payload`: to one replica, then to the next on a timeout or failure.
    pub async fn submit(&self, payload: Vec<u8>) -> Result<Ordered, ClientError> {
        let id = self.next_id();
        self.submit_with_id(id, payload).await
    }

    /// Order `payload` under request id `id` (sending an id again never orders it twice).
    pub async fn submit_with_id(&self, id: u64, payload: Vec<u8>) -> Result<Ordered, ClientError> {
        let n = self.channels.len() as u64;
        let first = (self.client ^ id) % n.max(1);
        let mut last = String::from("no attempt made");
        for attempt in 0..self.options.attempts_max {
            let index = ((first + u64::from(attempt)) % n) as usize;
            match self.submit_to(index, id, payload.clone()).await {
                Ok(ordered) => return Ok(ordered),
                Err(status) if status.code() == Code::InvalidArgument => return Err(ClientError::Refused(status)),
                Err(status) => {
                    if status.code() == Code::ResourceExhausted {
                        tokio::time::sleep(self.options.overload_backoff).await;
                    }
                    tracing::debug!(replica = index, %status, "submit attempt failed; trying the next replica");
                    last = format!("replica {index}: {status}");
                }
            }
        }
        Err(ClientError::NoAnswer { attempts: self.options.attempts_max, last })
    }

    /// Order `payload` by sending it to `2t + 1` replicas at once; the answer is the first that
    /// `t + 1` of them give.
    pub async fn submit_quorum(&self, payload: Vec<u8>) -> Result<Ordered, ClientError> {
        let id = self.next_id();
        self.submit_quorum_with_id(id, payload).await
    }

    /// [`Client::submit_quorum`] under request id `id` (sending an id again never orders it twice).
    pub async fn submit_quorum_with_id(&self, id: u64, payload: Vec<u8>) -> Result<Ordered, ClientError> {
        let n = self.channels.len();
        let targets = (2 * self.t as usize + 1).min(n);
        let first = ((self.client ^ id) % n.max(1) as u64) as usize;
        let mut calls: FuturesUnordered<_> = (0..targets)
            .map(|k| {
                let index = (first + k) % n;
                let payload = payload.clone();
                async move { (index, self.submit_to_retrying(index, id, payload).await) }
            })
            .collect();
        let mut votes: HashMap<Ordered, u32> = HashMap::new();
        let mut last = String::from("no answer");
        while let Some((index, result)) = calls.next().await {
            match result {
                Ok(ordered) => {
                    let count = votes.entry(ordered.clone()).or_insert(0);
                    *count += 1;
                    if *count > self.t {
                        return Ok(ordered);
                    }
                }
                Err(status) if status.code() == Code::InvalidArgument => return Err(ClientError::Refused(status)),
                Err(status) => last = format!("replica {index}: {status}"),
            }
        }
        Err(ClientError::NoAnswer { attempts: targets as u32, last })
    }

    async fn submit_to_retrying(&self, index: usize, id: u64, payload: Vec<u8>) -> Result<Ordered, tonic::Status> {
        let mut result = Err(tonic::Status::unavailable("no attempt made"));
        for _ in 0..self.options.attempts_max {
            result = self.submit_to(index, id, payload.clone()).await;
            match &result {
                Err(status) if status.code() == Code::ResourceExhausted => {
                    tokio::time::sleep(self.options.overload_backoff).await
                }
                Err(status) if matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) => {
                    tokio::time::sleep(self.options.overload_backoff).await
                }
                _ => break,
            }
        }
        result
    }

    async fn submit_to(&self, index: usize, id: u64, payload: Vec<u8>) -> Result<Ordered, tonic::Status> {
        let Some(channel) = self.channels.get(index) else {
            return Err(tonic::Status::invalid_argument(format!("no replica {index}")));
        };
        let mut channel = channel.clone();
        let asked = (self.client, id, fides_crypto::sha256(&payload));
        let request = proto::SubmitRequest { client: self.client, id, payload };
        match tokio::time::timeout(self.options.attempt_timeout, channel.submit(request)).await {
            Ok(Ok(reply)) => {
                let reply = reply.into_inner();
                certified::check_ordered(&self.cluster_id, &self.public, &self.verified, asked, &reply).map_err(
                    |reason| tonic::Status::data_loss(format!("replica {index}'s answer does not verify: {reason}")),
                )?;
                Ok(reply.into())
            }
            Ok(Err(status)) => Err(status),
            Err(_) => {
                Err(tonic::Status::deadline_exceeded(format!("no answer within {:?}", self.options.attempt_timeout)))
            }
        }
    }

    /// Replica `index`'s status.
    pub async fn status(&self, index: NodeIndex) -> Result<proto::StatusReply, ClientError> {
        let mut channel = self.replica(index).ok_or_else(|| ClientError::Replica {
            index: index.0,
            status: tonic::Status::invalid_argument("no such replica"),
        })?;
        let call = channel.status(proto::StatusRequest {});
        match tokio::time::timeout(self.options.attempt_timeout, call).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(ClientError::Replica { index: index.0, status }),
            Err(_) => Err(ClientError::Replica { index: index.0, status: tonic::Status::deadline_exceeded("timeout") }),
        }
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
pub mod collect;
