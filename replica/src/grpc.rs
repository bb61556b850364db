//! The client API over gRPC (tonic): `fides.v1.Ordering`, the standard health service and server
//! reflection, so that off-the-shelf gRPC tools can list and call it.
//!
//! Bounds: each connection (client address) may have `per_connection_max` submissions in flight,
//! and as many lookups (a lookup of a request ordered in an epoch not certified yet waits for the
//! certificate); past that, and when the driver's queues are full, the answer is
//! `RESOURCE_EXHAUSTED` at once — nothing waits in an unbounded queue.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fides_api::proto;
use fides_atomic_broadcast::epoch::Request;
use proto::ordering_server::{Ordering, OrderingServer};
use tokio::sync::oneshot;
use tonic::{Request as GrpcRequest, Response, Status};

use crate::host::orderer::{submit_and_wait, wait_answer, Reply, ToHost, Waiting, Wants};
use crate::host::worker::Certified;
use crate::host::worker::{Input as WorkerInput, WorkerHandle};
use crate::node::{Command, Lookup, NodeHandle, Ordered};

/// The gRPC service of one replica.
#[derive(Clone, Debug)]
pub struct OrderingService {
    node: NodeHandle,
    /// The services' worker, which certifies each answer.
    worker: WorkerHandle,
    /// How long a submission may take, ordering and certificate together.
    wait: Duration,
    /// Submissions in flight, by connection.
    in_flight: InFlightMap,
    /// Lookups in flight, by connection.
    lookups: InFlightMap,
    per_connection_max: usize,
}

type InFlightMap = Arc<Mutex<HashMap<SocketAddr, usize>>>;

struct InFlight {
    map: Arc<Mutex<HashMap<SocketAddr, usize>>>,
    peer: SocketAddr,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut map) = self.map.lock() {
            if let Some(count) = map.get_mut(&self.peer) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    map.remove(&self.peer);
                }
            }
        }
    }
}

impl OrderingService {
    /// A service in front of `node`; its answers are certified by `worker` (each submission
    /// takes at most `wait` in all).
    pub fn new(node: NodeHandle, worker: WorkerHandle, wait: Duration, per_connection_max: usize) -> Self {
        OrderingService { node, worker, wait, in_flight: Arc::default(), lookups: Arc::default(), per_connection_max }
    }

    /// The tonic server of it.
    pub fn into_server(self) -> OrderingServer<OrderingService> {
        OrderingServer::new(self)
    }

    /// Count one more call of `what` (submissions or lookups, in `table`) in flight from `peer`,
    /// or refuse it past the bound.
    fn admit(&self, table: &InFlightMap, what: &str, peer: Option<SocketAddr>) -> Result<Option<InFlight>, Status> {
        let Some(peer) = peer else { return Ok(None) };
        let mut map = table.lock().map_err(|_| Status::internal("in-flight table poisoned"))?;
        let count = map.entry(peer).or_insert(0);
        if *count >= self.per_connection_max {
            return Err(Status::resource_exhausted(format!(
                "this connection already has {} {what} in flight (the bound)",
                self.per_connection_max
            )));
        }
        *count += 1;
        Ok(Some(InFlight { map: Arc::clone(table), peer }))
    }

    async fn ask<R>(&self, make: impl FnOnce(oneshot::Sender<R>) -> Command) -> Result<R, Status> {
        let (tx, rx) = oneshot::channel();
        if let Err(command) = self.node.try_send(make(tx)) {
            drop(command);
            return Err(Status::resource_exhausted("the replica's command queue is full"));
        }
        rx.await.map_err(|_| Status::unavailable("the replica is shutting down"))
    }

    /// The ordered request `ordered` as an answer, with the inclusion path of its ordering leaf
    /// and its epoch's certificate, once the services' worker has them (by `deadline`).
    async fn certified(&self, ordered: Ordered, deadline: tokio::time::Instant) -> Result<proto::Ordered, Status> {
        let (epoch, index) = (ordered.epoch, ordered.index);
        let (tx, rx) = oneshot::channel();
        if !self.worker.try_send(WorkerInput::Wait(Waiting::Certified(Reply::new(ordered, tx)))) {
            return Err(Status::resource_exhausted("the services' worker queue is full"));
        }
        let wait = self.wait;
        let timed_out = || {
            format!(
                "ordered at epoch {epoch}, index {index}, but not certified within {wait:?} (ask again: the answer \
                 will be the same)"
            )
        };
        let (ordered, certified) = wait_answer(rx, deadline, timed_out, "the services' worker stopped").await?;
        Ok(with_certificate(ordered, certified))
    }
}

/// An ordering answer with its ordering leaf's inclusion path and its epoch's certificate.
fn with_certificate(ordered: Ordered, (inclusion, certificate): Certified) -> proto::Ordered {
    let mut reply = to_proto(ordered);
    reply.inclusion = fides_types::codec::Wire::to_bytes(&inclusion);
    reply.certificate = fides_types::codec::Wire::to_bytes(&certificate);
    reply
}

fn to_proto(o: Ordered) -> proto::Ordered {
    proto::Ordered {
        inclusion: Vec::new(),
        certificate: Vec::new(),
        client: o.client,
        id: o.id,
        epoch: o.epoch,
        index: o.index,
        time_ms: o.time_ms,
        log_digest: o.log_digest.to_vec(),
        payload_digest: o.payload_digest.to_vec(),
    }
}

#[tonic::async_trait]
impl Ordering for OrderingService {
    async fn submit(&self, request: GrpcRequest<proto::SubmitRequest>) -> Result<Response<proto::Ordered>, Status> {
        let _slot = self.admit(&self.in_flight, "submissions", request.remote_addr())?;
        let proto::SubmitRequest { client, id, payload } = request.into_inner();
        let request = Request { client, id, payload };
        // One wait: once ordered, the driver hands the reply to the services' worker, which
        // answers once the epoch is certified.
        let deadline = tokio::time::Instant::now() + self.wait;
        let (tx, rx) = oneshot::channel();
        let then = ToHost::new(self.worker.clone(), Wants::Certified(tx));
        let (ordered, certified) = submit_and_wait(&self.node, request, then, rx, deadline, self.wait).await?;
        Ok(Response::new(with_certificate(ordered, certified)))
    }

    async fn lookup(&self, request: GrpcRequest<proto::LookupRequest>) -> Result<Response<proto::LookupReply>, Status> {
        let _slot = self.admit(&self.lookups, "lookups", request.remote_addr())?;
        let proto::LookupRequest { client, id, payload_digest } = request.into_inner();
        // `(client, id)` alone could name another payload ordered under the same id.
        let digest: [u8; 32] = payload_digest
            .try_into()
            .map_err(|_| Status::invalid_argument("payload_digest must be the 32-byte SHA-256 of the payload"))?;
        let deadline = tokio::time::Instant::now() + self.wait;
        let answer = self.ask(|reply| Command::Lookup { key: (client, id, digest), reply }).await?;
        let reply = match answer {
            Lookup::Unknown => proto::LookupReply { state: proto::lookup_reply::State::Unknown as i32, ordered: None },
            Lookup::Pending => proto::LookupReply { state: proto::lookup_reply::State::Pending as i32, ordered: None },
            Lookup::Ordered(o) => proto::LookupReply {
                state: proto::lookup_reply::State::Ordered as i32,
                ordered: Some(self.certified(o, deadline).await?),
            },
        };
        Ok(Response::new(reply))
    }

    async fn status(&self, _: GrpcRequest<proto::StatusRequest>) -> Result<Response<proto::StatusReply>, Status> {
        let s = self.ask(|reply| Command::Status { reply }).await?;
        Ok(Response::new(proto::StatusReply {
            index: s.index,
            n: s.n,
            t: s.t,
            next_epoch: s.next_epoch,
            agreed_time_ms: s.agreed_time_ms,
            queue_len: s.queue_len,
            delivered_requests: s.delivered_requests,
            log_digest: s.log_digest.to_vec(),
            checkpoint_epoch: s.checkpoint_epoch,
            peers: s
                .peers
                .iter()
                .enumerate()
                .map(|(i, p)| proto::PeerStatus {
                    index: i as u32,
                    connected: p.counters.connected,
                    frames_sent: p.counters.frames_sent,
                    frames_received: p.counters.frames_received,
                    frames_dropped_out: p.counters.frames_dropped_out,
                    frames_dropped_in: p.counters.frames_dropped_in,
                    faults: p.faults,
                    equivocations: p.equivocations,
                })
                .collect(),
            wal_events: s.wal_events,
            uptime_s: s.uptime_s,
            joining: s.joining,
            log_first_epoch: s.log_first_epoch,
        }))
    }

    async fn log(&self, request: GrpcRequest<proto::LogRequest>) -> Result<Response<proto::LogReply>, Status> {
        let proto::LogRequest { from_epoch, max_batches } = request.into_inner();
        if max_batches == 0 {
            return Err(Status::invalid_argument("max_batches must be at least 1"));
        }
        let answer = self.ask(|reply| Command::Log { from: from_epoch, max: max_batches as usize, reply }).await?;
        let crate::node::LogPage { batches, next_epoch, first_epoch } = answer.map_err(Status::internal)?;
        Ok(Response::new(proto::LogReply {
            batches: batches
                .into_iter()
                .map(|stored| proto::Batch {
                    epoch: stored.batch.epoch,
                    time_ms: stored.batch.time,
                    requests: stored
                        .batch
                        .requests
                        .into_iter()
                        .map(|r| proto::Request { client: r.client, id: r.id, payload: r.payload })
                        .collect(),
                    log_digest: stored.log.to_vec(),
                })
                .collect(),
            next_epoch,
            first_epoch,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tonic::transport::server::TcpConnectInfo;

    use super::*;

    fn from(peer: SocketAddr, request: proto::LookupRequest) -> GrpcRequest<proto::LookupRequest> {
        let mut request = GrpcRequest::new(request);
        request.extensions_mut().insert(TcpConnectInfo { local_addr: None, remote_addr: Some(peer) });
        request
    }

    /// Lookups of a request ordered in an epoch not certified yet wait for its certificate: one
    /// connection may have only `per_connection_max` of them waiting, the next is refused at once
    /// (and a lookup that ended frees its place). Without the bound, a flood of lookups piles up
    /// waiters at the worker for as long as the epoch stays uncertified.
    #[tokio::test]
    async fn lookups_waiting_for_a_certificate_are_bounded_per_connection() {
        let (node, mut commands) = NodeHandle::detached(64);
        let (worker, inputs) = WorkerHandle::detached(64);
        let service = OrderingService::new(node, worker, Duration::from_secs(600), 2);
        // The driver: every request asked about is ordered (at epoch 4, index 0).
        tokio::spawn(async move {
            while let Some(command) = commands.recv().await {
                if let Command::Lookup { key: (client, id, payload_digest), reply } = command {
                    let ordered =
                        Ordered { client, id, epoch: 4, index: 0, time_ms: 1, log_digest: [0; 32], payload_digest };
                    let _ = reply.send(Lookup::Ordered(ordered));
                }
            }
        });
        let peer: SocketAddr = "127.0.0.1:40000".parse().expect("address");
        let other: SocketAddr = "127.0.0.1:40001".parse().expect("address");
        let ask = |peer, id| {
            let service = service.clone();
            let request = proto::LookupRequest { client: 1, id, payload_digest: vec![7; 32] };
            tokio::spawn(async move { service.lookup(from(peer, request)).await })
        };
        let waiting = [ask(peer, 1), ask(peer, 2)];
        // Both wait at the worker (which never certifies epoch 4 here).
        let mut waiters = Vec::new();
        while waiters.len() < 2 {
            match inputs.try_recv() {
                Ok(input) => waiters.push(input),
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        let third = tokio::time::timeout(Duration::from_secs(30), ask(peer, 3)).await;
        let status = third.expect("the third lookup is answered at once").expect("task").expect_err("over the bound");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("2 lookups in flight"), "{}", status.message());
        // Another connection has its own bound.
        let elsewhere = ask(other, 4);
        // One waiting lookup ends (its handler is dropped): the connection may ask again.
        waiting[0].abort();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let again = ask(peer, 5);
            tokio::time::sleep(Duration::from_millis(20)).await;
            if !again.is_finished() {
                again.abort();
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the ended lookup's place was never freed");
        }
        assert!(!elsewhere.is_finished(), "a lookup from another connection was refused: {:?}", elsewhere.await);
        elsewhere.abort();
        drop(waiters);
    }
}
