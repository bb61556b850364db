//! Ordering a request for a service and waiting for the host's answer: what every service's gRPC
//! adapter uses.

use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use fides_atomic_broadcast::epoch::Request as AbcRequest;
use fides_service::{Code, Outcome};
use tokio::sync::oneshot;
use tonic::Status;

use super::epochs::HostAnswer;
use crate::host::worker::{Input, WorkerHandle};
use crate::node::{Command, NodeHandle, SubmitError};

/// A host's answer with where its request was ordered: (answer, epoch, index).
pub type Located = (HostAnswer, u64, u32);

/// Orders requests through the driver and waits for their outcome from the host.
#[derive(Clone)]
pub struct Orderer {
    node: NodeHandle,
    worker: WorkerHandle,
    /// The replica's own client number, for the requests it makes itself.
    own_client: u64,
    own_ids: Arc<AtomicU64>,
    wait: Duration,
}

/// A service's refusal as a gRPC status (the service's codes are gRPC's numbers).
pub fn code_status(code: Code, message: String) -> Status {
    Status::new(tonic::Code::from(i32::from(code.number())), message)
}

impl Orderer {
    /// An orderer in front of the driver and the host; a request takes at most `wait` in all.
    pub fn new(node: NodeHandle, worker: WorkerHandle, wait: Duration) -> Orderer {
        Orderer { node, worker, own_client: rand::random(), own_ids: Arc::new(AtomicU64::new(1)), wait }
    }

    /// The host's worker.
    pub fn worker(&self) -> &WorkerHandle {
        &self.worker
    }

    /// Order `payload` as the replica itself.
    pub async fn order_own(&self, payload: Vec<u8>) -> Result<Located, Status> {
        let id = self.own_ids.fetch_add(1, AtomicOrdering::Relaxed);
        self.order(self.own_client, id, payload).await
    }

    /// Order a payload and wait for the outcome of the service it is for: its answer, with the
    /// inclusion path and certificate of each signed record. A refusal becomes the gRPC status
    /// with the service's code.
    ///
    /// One deadline for the whole request: the driver gives up ordering it after the same wait,
    /// and what is left of it after ordering is what the outcome may take (not a second wait).
    pub async fn order(&self, client: u64, id: u64, payload: Vec<u8>) -> Result<Located, Status> {
        let deadline = tokio::time::Instant::now() + self.wait;
        let (tx, rx) = oneshot::channel();
        let request = AbcRequest { client, id, payload };
        if self.node.try_send(Command::Submit { request, reply: tx }).is_err() {
            return Err(Status::resource_exhausted("the replica's command queue is full"));
        }
        let ordered = match rx.await.map_err(|_| Status::unavailable("the replica is shutting down"))? {
            Ok(ordered) => ordered,
            Err(SubmitError::Invalid(reason)) => return Err(Status::invalid_argument(reason)),
            Err(SubmitError::Overloaded(reason)) => return Err(Status::resource_exhausted(reason)),
            Err(error @ SubmitError::TimedOut(_)) => return Err(Status::deadline_exceeded(error.to_string())),
            Err(error @ SubmitError::AlreadyOrdered) => return Err(Status::already_exists(error.to_string())),
            Err(SubmitError::ShuttingDown) => return Err(Status::unavailable("the replica is shutting down")),
        };
        let (tx, rx) = oneshot::channel();
        if !self.worker.try_send(Input::Outcome { epoch: ordered.epoch, index: ordered.index, reply: tx }) {
            return Err(Status::resource_exhausted("the services' worker queue is full"));
        }
        let answer = match tokio::time::timeout_at(deadline, rx).await {
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "ordered in epoch {} but not signed within {:?} (ask again: the answer will be the same)",
                    ordered.epoch, self.wait
                )))
            }
            Ok(Err(_)) => return Err(Status::unavailable("the services' worker stopped")),
            Ok(Ok(Err(error))) => return Err(Status::internal(error)),
            Ok(Ok(Ok(answer))) => answer,
        };
        // A refusal of `apply` stands alone; one from the decision of an instance the request asked
        // for comes after `apply`'s outcomes, and refuses the request as well.
        if let Some((Outcome::Refuse(refusal), _)) =
            answer.outcomes.iter().find(|(o, _)| matches!(o, Outcome::Refuse(_)))
        {
            return Err(code_status(refusal.code, refusal.reason.clone()));
        }
        Ok((answer, ordered.epoch, ordered.index))
    }
}
