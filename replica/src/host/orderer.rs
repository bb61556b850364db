//! Ordering a request for a service and waiting for the host's answer: what every service's gRPC
//! adapter uses.

use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use fides_atomic_broadcast::epoch::Request as AbcRequest;
use fides_service::{Code, Outcome};
use tokio::sync::oneshot;
use tonic::Status;

use super::epochs::{Certified, HostAnswer};
use crate::host::worker::{Input, Query, View, WorkerHandle};
use crate::node::{Command, NodeHandle, Ordered, SubmitError, Then};

/// A host's answer with where its request was ordered: (answer, epoch, index).
pub type Located = (HostAnswer, u64, u32);

/// Why a handler got no answer.
#[derive(Debug)]
pub enum Failure {
    /// The driver did not order the request (or stopped waiting for it).
    Submit(SubmitError),
    /// Ordered, but the host could not answer.
    Host(String),
    /// Ordered, but the services' worker's queue was full: the answer is not lost, ask again.
    Busy {
        /// Where the request was ordered.
        ordered: Box<Ordered>,
    },
}

impl Failure {
    /// As a gRPC status.
    pub fn status(self) -> Status {
        match self {
            Failure::Submit(SubmitError::Invalid(reason)) => Status::invalid_argument(reason),
            Failure::Submit(SubmitError::Overloaded(reason)) => Status::resource_exhausted(reason),
            Failure::Submit(error @ SubmitError::TimedOut(_)) => Status::deadline_exceeded(error.to_string()),
            Failure::Submit(error @ SubmitError::AlreadyOrdered) => Status::already_exists(error.to_string()),
            Failure::Submit(SubmitError::ShuttingDown) => Status::unavailable("the replica is shutting down"),
            Failure::Host(error) => Status::internal(error),
            Failure::Busy { ordered } => Status::resource_exhausted(format!(
                "ordered at epoch {}, index {}, but the services' worker queue is full (ask again: the answer will \
                 be the same)",
                ordered.epoch, ordered.index
            )),
        }
    }
}

/// Where the host's answer to an ordered request goes: the waiting handler, with where its
/// request was ordered.
pub struct Reply<T> {
    ordered: Ordered,
    tx: oneshot::Sender<Result<(Ordered, T), Failure>>,
}

impl<T> Reply<T> {
    /// A reply for the request ordered at `ordered`.
    pub fn new(ordered: Ordered, tx: oneshot::Sender<Result<(Ordered, T), Failure>>) -> Reply<T> {
        Reply { ordered, tx }
    }

    /// The epoch the request was ordered in.
    pub fn epoch(&self) -> u64 {
        self.ordered.epoch
    }

    /// Its index in the batch (and its ordering leaf's).
    pub fn index(&self) -> u32 {
        self.ordered.index
    }

    /// The handler gave up.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Answer the handler.
    pub fn send(self, answer: Result<T, String>) {
        let Reply { ordered, tx } = self;
        let _ = tx.send(answer.map(|answer| (ordered, answer)).map_err(Failure::Host));
    }

    /// Tell the handler the worker could not take its reply (its queue was full).
    fn busy(self) {
        let Reply { ordered, tx } = self;
        let _ = tx.send(Err(Failure::Busy { ordered: Box::new(ordered) }));
    }
}

/// A handler waiting at the services' worker for what its ordered request gets.
pub enum Waiting {
    /// The services' outcome.
    Outcome(Reply<HostAnswer>),
    /// The certificate of the ordering leaf alone.
    Certified(Reply<Certified>),
}

impl Waiting {
    /// The epoch the request was ordered in.
    pub fn epoch(&self) -> u64 {
        match self {
            Waiting::Outcome(reply) => reply.epoch(),
            Waiting::Certified(reply) => reply.epoch(),
        }
    }

    /// The handler gave up.
    pub fn is_closed(&self) -> bool {
        match self {
            Waiting::Outcome(reply) => reply.is_closed(),
            Waiting::Certified(reply) => reply.is_closed(),
        }
    }

    fn busy(self) {
        match self {
            Waiting::Outcome(reply) => reply.busy(),
            Waiting::Certified(reply) => reply.busy(),
        }
    }
}

/// A submission the host answers: once the driver ordered the request it hands the handler's
/// reply to the services' worker, without a second wait in the handler.
pub struct ToHost {
    worker: WorkerHandle,
    wants: Wants,
}

/// What the handler waits for.
pub enum Wants {
    /// The services' outcome.
    Outcome(oneshot::Sender<Result<(Ordered, HostAnswer), Failure>>),
    /// The certificate of the ordering leaf alone.
    Certified(oneshot::Sender<Result<(Ordered, Certified), Failure>>),
}

impl ToHost {
    /// Hand the answer to `worker`.
    pub fn new(worker: WorkerHandle, wants: Wants) -> Box<ToHost> {
        Box::new(ToHost { worker, wants })
    }
}

impl Then for ToHost {
    fn is_closed(&self) -> bool {
        match &self.wants {
            Wants::Outcome(tx) => tx.is_closed(),
            Wants::Certified(tx) => tx.is_closed(),
        }
    }

    fn ordered(self: Box<Self>, answer: Result<Ordered, SubmitError>) {
        let ToHost { worker, wants } = *self;
        let waiting = match (wants, answer) {
            (Wants::Outcome(tx), Ok(ordered)) => Waiting::Outcome(Reply::new(ordered, tx)),
            (Wants::Certified(tx), Ok(ordered)) => Waiting::Certified(Reply::new(ordered, tx)),
            (Wants::Outcome(tx), Err(error)) => return drop(tx.send(Err(Failure::Submit(error)))),
            (Wants::Certified(tx), Err(error)) => return drop(tx.send(Err(Failure::Submit(error)))),
        };
        if let Err(Input::Wait(waiting)) = worker.offer(Input::Wait(waiting)) {
            waiting.busy();
        }
    }
}

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

/// Submit `request` to the driver, the answer going to `then`, and wait once, until `deadline`,
/// for what comes on `rx`.
pub async fn submit_and_wait<T>(
    node: &NodeHandle,
    request: AbcRequest,
    then: Box<dyn Then>,
    rx: oneshot::Receiver<Result<(Ordered, T), Failure>>,
    deadline: tokio::time::Instant,
    wait: Duration,
) -> Result<(Ordered, T), Status> {
    if node.try_send(Command::Submit { request, reply: then }).is_err() {
        return Err(Status::resource_exhausted("the replica's command queue is full"));
    }
    let timed_out =
        || format!("not answered within {wait:?} (ask again: if it was ordered, the answer will be the same)");
    wait_answer(rx, deadline, timed_out, "the replica is shutting down").await
}

/// Wait until `deadline` for the answer on `rx`; `timed_out` says why there is none then, `gone`
/// why there is none when its sender is dropped.
pub async fn wait_answer<T>(
    rx: oneshot::Receiver<Result<(Ordered, T), Failure>>,
    deadline: tokio::time::Instant,
    timed_out: impl FnOnce() -> String,
    gone: &str,
) -> Result<(Ordered, T), Status> {
    match tokio::time::timeout_at(deadline, rx).await {
        Err(_) => Err(Status::deadline_exceeded(timed_out())),
        Ok(Err(_)) => Err(Status::unavailable(gone)),
        Ok(Ok(Err(failure))) => Err(failure.status()),
        Ok(Ok(Ok(answer))) => Ok(answer),
    }
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

    /// Run `question` on the services' worker's thread, with its [`View`] of the store, and
    /// return its answer.
    pub async fn run<R: Send + 'static>(
        &self,
        question: impl FnOnce(&mut View<'_>) -> R + Send + 'static,
    ) -> Result<R, Status> {
        let (tx, rx) = oneshot::channel();
        let run = Box::new(move |view: &mut View<'_>| drop(tx.send(question(view))));
        if !self.worker.try_send(Input::Query(Query::Run(run))) {
            return Err(Status::resource_exhausted("the services' worker queue is full"));
        }
        rx.await.map_err(|_| Status::unavailable("the services' worker stopped"))
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
    /// One wait for the whole request: the driver hands the reply to the host once the request
    /// is ordered, and the host answers once its outcome is applied and certified.
    pub async fn order(&self, client: u64, id: u64, payload: Vec<u8>) -> Result<Located, Status> {
        let deadline = tokio::time::Instant::now() + self.wait;
        let (tx, rx) = oneshot::channel();
        let request = AbcRequest { client, id, payload };
        let then = ToHost::new(self.worker.clone(), Wants::Outcome(tx));
        let (ordered, answer) = submit_and_wait(&self.node, request, then, rx, deadline, self.wait).await?;
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

#[cfg(test)]
mod tests {
    use fides_service::ServiceId;

    use super::*;

    fn ordered(epoch: u64, index: u32) -> Ordered {
        Ordered { client: 7, id: 9, epoch, index, time_ms: 5, log_digest: [1; 32], payload_digest: [2; 32] }
    }

    fn answer() -> HostAnswer {
        HostAnswer { service: ServiceId(*b"TEST"), outcomes: Vec::new(), signatures: Vec::new() }
    }

    fn request() -> AbcRequest {
        AbcRequest { client: 7, id: 9, payload: b"payload".to_vec() }
    }

    /// The driver's answer and the host's come to the handler on one channel: it waits once.
    #[tokio::test]
    async fn an_ordered_request_is_answered_by_the_host_through_one_wait() {
        let (node, mut commands) = NodeHandle::detached(4);
        let (worker, inputs) = WorkerHandle::detached(4);
        let (tx, rx) = oneshot::channel();
        let then = ToHost::new(worker, Wants::Outcome(tx));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let handler = tokio::spawn(async move {
            submit_and_wait(&node, request(), then, rx, deadline, Duration::from_secs(60)).await
        });
        // The driver orders it and hands the reply on...
        let Some(Command::Submit { request: got, reply }) = commands.recv().await else { panic!("no submission") };
        assert_eq!(got.payload, b"payload");
        reply.ordered(Ok(ordered(3, 1)));
        // ... to the worker, which answers the handler directly.
        let Ok(Input::Wait(Waiting::Outcome(reply))) = inputs.try_recv() else { panic!("the worker got no waiter") };
        assert_eq!((reply.epoch(), reply.index()), (3, 1));
        reply.send(Ok(answer()));
        let (at, answer) = handler.await.expect("handler ran").expect("answered");
        assert_eq!(at, ordered(3, 1));
        assert_eq!(answer.service, ServiceId(*b"TEST"));
    }

    /// What the driver refuses comes to the handler with its own code, not as a host error.
    #[tokio::test]
    async fn a_refusal_of_the_driver_keeps_its_code() {
        let cases = [
            (SubmitError::Invalid("too big".into()), tonic::Code::InvalidArgument),
            (SubmitError::Overloaded("full".into()), tonic::Code::ResourceExhausted),
            (SubmitError::TimedOut(Duration::from_secs(1)), tonic::Code::DeadlineExceeded),
            (SubmitError::AlreadyOrdered, tonic::Code::AlreadyExists),
            (SubmitError::ShuttingDown, tonic::Code::Unavailable),
        ];
        for (error, code) in cases {
            let (node, mut commands) = NodeHandle::detached(4);
            let (worker, inputs) = WorkerHandle::detached(4);
            let (tx, rx) = oneshot::channel::<Result<(Ordered, Certified), Failure>>();
            let then = ToHost::new(worker, Wants::Certified(tx));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            let handler = tokio::spawn(async move {
                submit_and_wait(&node, request(), then, rx, deadline, Duration::from_secs(60)).await
            });
            let Some(Command::Submit { reply, .. }) = commands.recv().await else { panic!("no submission") };
            reply.ordered(Err(error.clone()));
            let status = handler.await.expect("handler ran").expect_err("refused");
            assert_eq!(status.code(), code, "{error:?}");
            assert!(inputs.try_recv().is_err(), "a refused request reached the worker");
        }
    }

    /// A full worker queue: the handler hears at once where its request was ordered (asking again
    /// gets the same answer), rather than waiting out its deadline.
    #[tokio::test]
    async fn a_full_worker_queue_answers_at_once_with_the_place() {
        let (worker, _inputs) = WorkerHandle::detached(1);
        let (filler, _) = oneshot::channel();
        assert!(worker.try_send(Input::Wait(Waiting::Outcome(Reply::new(ordered(0, 0), filler)))));
        let (tx, rx) = oneshot::channel();
        let then: Box<dyn Then> = ToHost::new(worker, Wants::Outcome(tx));
        assert!(!then.is_closed());
        then.ordered(Ok(ordered(8, 2)));
        let failure = rx.await.expect("answered").expect_err("busy");
        let status = failure.status();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("epoch 8, index 2"), "{}", status.message());
    }

    /// A handler that gave up is seen as closed by the driver (which then drops its waiter).
    #[test]
    fn a_handler_that_gave_up_is_closed() {
        let (worker, _inputs) = WorkerHandle::detached(1);
        let (tx, rx) = oneshot::channel::<Result<(Ordered, HostAnswer), Failure>>();
        let then: Box<dyn Then> = ToHost::new(worker, Wants::Outcome(tx));
        drop(rx);
        assert!(then.is_closed());
    }
}
