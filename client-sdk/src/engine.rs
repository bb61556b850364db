//! The connection engine that every service's client runs on: the channels to the replicas, the
//! client number and request ids, failover, and "k matching answers".
//!
//! - **Channels.** One per replica, to the client address in the cluster file, connected lazily
//!   (on first use) and again after a failure; see [`fides_api::lazy_channel`].
//! - **Names.** A request is named by `(client, id)`: the client number is drawn at random unless
//!   given, ids count up from 0. Replicas order a name at most once, so a request may be sent again,
//!   to the same or another replica, without being ordered twice.
//! - **Failover** ([`Engine::failover`]): send to one replica; on a transient failure
//!   ([`transient`]: unavailable, deadline exceeded, resource exhausted, cancelled, a transport
//!   error), a status the service names as "ask another replica" ([`EngineOptions::elsewhere`]), or
//!   an answer that does not verify, send the same request to the next replica, round robin, at
//!   most [`EngineOptions::attempts_max`] attempts. It pauses [`EngineOptions::backoff`] after a
//!   replica said it is overloaded, and before every attempt once each replica was tried. Any other
//!   status is the answer ([`ClientError::Status`]).
//! - **k matching answers** ([`Engine::matching`]): send to several replicas at once, retrying each
//!   on transient failures, and return the answer `k` of them give; with `k = t + 1`, at least one
//!   honest replica vouches for it. When no `k` can agree any more, [`ClientError::NoMatch`] says
//!   how far they got.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use fides_dealer::ClusterFile;
use fides_types::Quorum;
use futures::stream::{FuturesUnordered, StreamExt};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::ClientError;

/// Largest gRPC message a client decodes: a page of the log holds at least one whole batch, which
/// may exceed gRPC's 4 MiB default.
pub const MESSAGE_MAX: usize = 64 * 1024 * 1024;

/// Whether a failed attempt may succeed later or at another replica: the replica is down, slow or
/// overloaded, or the transport failed.
pub fn transient(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Cancelled => true,
        // Transport failures that tonic reports with their cause attached.
        Code::Unknown => std::error::Error::source(status).is_some(),
        _ => false,
    }
}

/// How an [`Engine`] sends.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// How long one attempt at one replica may take.
    pub attempt_timeout: Duration,
    /// Attempts of one failover, over all replicas; attempts at each replica of a
    /// [`Engine::matching`].
    pub attempts_max: u32,
    /// Pause after a replica said it is overloaded, and between rounds of the replicas.
    pub backoff: Duration,
    /// The client number; random when `None`.
    pub client: Option<u64>,
    /// Statuses, besides the [`transient`] ones, that mean "this replica cannot answer, another
    /// may" (for the ordering service: `ALREADY_EXISTS`, the answer of a request ordered in epochs
    /// this replica skipped). In [`Engine::matching`] such a replica's answer does not count.
    pub elsewhere: &'static [Code],
}

/// Why one attempt failed.
enum Attempt {
    /// The replica answered a status (or none in time).
    Status(Status),
    /// The answer did not verify.
    Bad(String),
}

impl Attempt {
    fn describe(&self, index: usize) -> String {
        match self {
            Attempt::Status(status) => format!("replica {index}: {status}"),
            Attempt::Bad(reason) => format!("replica {index}: {reason}"),
        }
    }
}

/// The connections of one client to the replicas of one cluster. Cheap to clone; clones share the
/// request ids.
#[derive(Clone, Debug)]
pub struct Engine {
    channels: Vec<Channel>,
    quorum: Quorum,
    client: u64,
    next_id: Arc<AtomicU64>,
    /// Where the next read starts, so that reads spread over the replicas.
    rotate: Arc<AtomicUsize>,
    options: EngineOptions,
}

impl Engine {
    /// An engine for `cluster`. Connections are made lazily, on first use.
    pub fn new(cluster: &ClusterFile, options: EngineOptions) -> Result<Engine, ClientError> {
        let mut channels = Vec::new();
        for info in cluster.replicas() {
            let address = info.client_address.to_string();
            let channel = fides_api::lazy_channel(&address).map_err(|reason| ClientError::Address {
                index: info.index.0,
                address: address.clone(),
                reason,
            })?;
            channels.push(channel);
        }
        Ok(Engine {
            channels,
            quorum: cluster.quorum(),
            client: options.client.unwrap_or_else(rand::random),
            next_id: Arc::new(AtomicU64::new(0)),
            rotate: Arc::new(AtomicUsize::new(rand::random::<u16>() as usize)),
            options,
        })
    }

    /// The cluster's `n` and `t`.
    pub fn quorum(&self) -> Quorum {
        self.quorum
    }

    /// The number of replicas.
    pub fn n(&self) -> u32 {
        self.channels.len() as u32
    }

    /// This client's number.
    pub fn client(&self) -> u64 {
        self.client
    }

    /// A fresh request id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, AtomicOrdering::Relaxed)
    }

    /// How this engine sends.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// The channel to replica `index`'s client address.
    pub fn channel(&self, index: u32) -> Option<Channel> {
        self.channels.get(index as usize).cloned()
    }

    /// The first replica for request `id`: spread over the replicas by client and id, and the same
    /// for every retry of the id.
    pub fn first_for(&self, id: u64) -> usize {
        ((self.client ^ id) % self.channels.len().max(1) as u64) as usize
    }

    /// The first replica for a read: each read starts at the next one.
    pub fn first_for_read(&self) -> usize {
        self.rotate.fetch_add(1, AtomicOrdering::Relaxed) % self.channels.len().max(1)
    }

    /// Whether a failed attempt should go to another replica.
    fn elsewhere(&self, status: &Status) -> bool {
        transient(status) || self.options.elsewhere.contains(&status.code())
    }

    /// One attempt: `call` on replica `index`, within the attempt timeout.
    async fn attempt<T, Fut>(&self, index: usize, call: impl FnOnce(Channel) -> Fut) -> Result<T, Status>
    where
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let Some(channel) = self.channels.get(index) else {
            return Err(Status::invalid_argument(format!("no replica {index}")));
        };
        match tokio::time::timeout(self.options.attempt_timeout, call(channel.clone())).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(Status::deadline_exceeded(format!("no answer within {:?}", self.options.attempt_timeout))),
        }
    }

    /// One call to replica `index` only, within the attempt timeout; its failure is
    /// [`ClientError::Replica`].
    pub async fn one<T, Fut>(&self, index: u32, call: impl FnOnce(Channel) -> Fut) -> Result<T, ClientError>
    where
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        if index as usize >= self.channels.len() {
            return Err(ClientError::Replica { index, status: Status::invalid_argument("no such replica") });
        }
        self.attempt(index as usize, call).await.map_err(|status| ClientError::Replica { index, status })
    }

    /// Send a call to `targets` replicas at once, starting at `first`, each retried as
    /// [`Engine::matching`] does, and take the first answer `check` accepts (MAFTIA D5 §3.2.5: a
    /// request sent to `2t + 1` replicas reaches `t + 1` honest ones, so it is ordered even if up
    /// to `t` of them drop it; ordering executes it once).
    pub async fn first_of<T, U, F, Fut>(
        &self,
        first: usize,
        targets: u32,
        call: F,
        check: impl Fn(T) -> Result<U, String>,
    ) -> Result<U, ClientError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let targets = (targets as usize).min(self.channels.len());
        let mut calls = self.spread(first, targets, &call, &check);
        let mut last = String::from("no replica to send to");
        while let Some((index, result)) = calls.next().await {
            match result {
                Ok(answer) => return Ok(answer),
                Err(Attempt::Status(status)) if !self.elsewhere(&status) => {
                    return Err(ClientError::from_status(status))
                }
                Err(attempt) => last = attempt.describe(index),
            }
        }
        Err(ClientError::NoAnswer { attempts: targets as u32, last })
    }

    /// Send a call to one replica after the other, starting at `first`, until one answers
    /// something that `check` accepts or a status that is not worth another replica.
    pub async fn failover<T, U, F, Fut>(
        &self,
        first: usize,
        mut call: F,
        check: impl Fn(T) -> Result<U, String>,
    ) -> Result<U, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let n = self.channels.len();
        if n == 0 {
            return Err(ClientError::Cluster("the cluster has no replicas".into()));
        }
        let attempts = self.options.attempts_max as usize;
        let mut last: Option<(usize, Attempt)> = None;
        for attempt in 0..attempts {
            let index = (first + attempt) % n;
            let outcome = match self.attempt(index, &mut call).await {
                Ok(reply) => match check(reply) {
                    Ok(value) => return Ok(value),
                    Err(reason) => {
                        tracing::warn!(replica = index, %reason, "an answer does not verify; trying the next replica");
                        Attempt::Bad(reason)
                    }
                },
                Err(status) if self.elsewhere(&status) => {
                    tracing::debug!(replica = index, %status, "attempt failed; trying the next replica");
                    Attempt::Status(status)
                }
                Err(status) => return Err(ClientError::from_status(status)),
            };
            let overloaded = matches!(&outcome, Attempt::Status(s) if s.code() == Code::ResourceExhausted);
            last = Some((index, outcome));
            if attempt + 1 < attempts && (overloaded || attempt + 1 >= n) {
                tokio::time::sleep(self.options.backoff).await;
            }
        }
        Err(match last {
            Some((index, Attempt::Bad(reason))) => ClientError::BadReply(format!("replica {index}: {reason}")),
            Some((index, attempt)) => {
                ClientError::NoAnswer { attempts: attempts as u32, last: attempt.describe(index) }
            }
            None => ClientError::NoAnswer { attempts: 0, last: "no attempt made".into() },
        })
    }

    /// Send a call to `targets` replicas at once (from `first` on), retrying each on transient
    /// failures, and return the first answer that `k` of them give (after `check`). A status that
    /// is neither transient nor [`EngineOptions::elsewhere`] is the answer, from any replica.
    pub async fn matching<T, U, F, Fut>(
        &self,
        first: usize,
        targets: u32,
        k: u32,
        call: F,
        check: impl Fn(T) -> Result<U, String>,
    ) -> Result<U, ClientError>
    where
        U: Clone + Eq + Hash,
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let targets = (targets as usize).min(self.channels.len());
        let mut calls = self.spread(first, targets, &call, &check);
        let mut votes: HashMap<U, u32> = HashMap::new();
        let mut last = String::from("no answer");
        let mut pending = targets as u32;
        while let Some((index, result)) = calls.next().await {
            pending -= 1;
            match result {
                Ok(answer) => {
                    let count = votes.entry(answer.clone()).or_insert(0);
                    *count += 1;
                    if *count >= k {
                        return Ok(answer);
                    }
                }
                Err(Attempt::Status(status)) if !self.elsewhere(&status) => {
                    return Err(ClientError::from_status(status))
                }
                Err(attempt) => last = attempt.describe(index),
            }
            let agreeing = votes.values().copied().max().unwrap_or(0);
            if agreeing + pending < k {
                return Err(ClientError::NoMatch { needed: k, asked: targets as u32, agreeing, last });
            }
        }
        let agreeing = votes.values().copied().max().unwrap_or(0);
        Err(ClientError::NoMatch { needed: k, asked: targets as u32, agreeing, last })
    }

    /// `call` on `targets` replicas from `first` on, at once, each retried as [`Self::retry_at`]
    /// does: the answers as they come, with the replica that gave each.
    fn spread<'a, T, U, F, Fut>(
        &'a self,
        first: usize,
        targets: usize,
        call: &'a F,
        check: &'a impl Fn(T) -> Result<U, String>,
    ) -> FuturesUnordered<impl Future<Output = (usize, Result<U, Attempt>)> + 'a>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let n = self.channels.len().max(1);
        (0..targets)
            .map(|offset| {
                let index = (first + offset) % n;
                async move { (index, self.retry_at(index, call, check).await) }
            })
            .collect()
    }

    /// Attempts at replica `index` until it answers something `check` accepts, answers a status
    /// that is not transient, or the attempts run out (pausing after each transient failure).
    async fn retry_at<T, U, F, Fut>(
        &self,
        index: usize,
        call: &F,
        check: &impl Fn(T) -> Result<U, String>,
    ) -> Result<U, Attempt>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut last = Attempt::Status(Status::unavailable("no attempt made"));
        for attempt in 0..self.options.attempts_max {
            if attempt > 0 {
                tokio::time::sleep(self.options.backoff).await;
            }
            match self.attempt(index, call).await {
                Ok(reply) => return check(reply).map_err(Attempt::Bad),
                Err(status) if transient(&status) => last = Attempt::Status(status),
                Err(status) => return Err(Attempt::Status(status)),
            }
        }
        Err(last)
    }
}
