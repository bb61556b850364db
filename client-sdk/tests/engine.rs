//! The connection engine against fake replicas of the ordering service: failover with the same
//! request id, and "k matching answers".

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fides_client_sdk::proto;
use fides_client_sdk::proto::ordering_server::{Ordering, OrderingServer};
use fides_client_sdk::{Client, ClientError, ClientOptions};
use fides_dealer::{ClusterFile, Quorum};
use tonic::{Code, Request, Response, Status};

/// What a fake replica answers to `Submit`.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// Ordered in this epoch.
    Epoch(u64),
    /// This status.
    Fail(Code),
}

struct FakeReplica {
    index: usize,
    answer: Mutex<Answer>,
    /// Every `Submit` received by any replica: (replica, client, id).
    calls: Arc<Mutex<Vec<(usize, u64, u64)>>>,
}

#[tonic::async_trait]
impl Ordering for FakeReplica {
    async fn submit(&self, request: Request<proto::SubmitRequest>) -> Result<Response<proto::Ordered>, Status> {
        let request = request.into_inner();
        self.calls.lock().expect("calls").push((self.index, request.client, request.id));
        match *self.answer.lock().expect("answer") {
            Answer::Epoch(epoch) => Ok(Response::new(proto::Ordered {
                client: request.client,
                id: request.id,
                epoch,
                index: 0,
                time_ms: 1,
                log_digest: vec![epoch as u8; 32],
                payload_digest: vec![0; 32],
            })),
            Answer::Fail(code) => Err(Status::new(code, "fake")),
        }
    }

    async fn lookup(&self, _: Request<proto::LookupRequest>) -> Result<Response<proto::LookupReply>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn status(&self, _: Request<proto::StatusRequest>) -> Result<Response<proto::StatusReply>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn log(&self, _: Request<proto::LogRequest>) -> Result<Response<proto::LogReply>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

struct FakeCluster {
    cluster: ClusterFile,
    calls: Arc<Mutex<Vec<(usize, u64, u64)>>>,
}

impl FakeCluster {
    /// Four fake replicas (t = 1), answering `answers`.
    async fn start(answers: [Answer; 4]) -> FakeCluster {
        let quorum = Quorum::new(4, 1).expect("quorum");
        let calls = Arc::new(Mutex::new(Vec::new()));
        let mut client_addresses = Vec::new();
        for (index, answer) in answers.into_iter().enumerate() {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let address = listener.local_addr().expect("address").to_string();
            client_addresses.push(fides_dealer::Address::parse(&address).expect("address"));
            let replica = Arc::new(FakeReplica { index, answer: Mutex::new(answer), calls: Arc::clone(&calls) });
            let server = tonic::transport::Server::builder()
                .add_service(OrderingServer::from_arc(replica))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
            tokio::spawn(server);
        }
        let dealt = fides_dealer::generate_with_client_addresses(
            quorum,
            fides_dealer::default_addresses(quorum),
            client_addresses,
            &mut rand::thread_rng(),
        )
        .expect("cluster");
        FakeCluster { cluster: dealt.into_parts().0, calls }
    }

    /// A client numbered 0, so that request 0 goes to replica 0 first.
    fn client(&self) -> Client {
        let options = ClientOptions {
            attempt_timeout: Duration::from_secs(5),
            attempts_max: 4,
            overload_backoff: Duration::from_millis(5),
            client: Some(0),
        };
        Client::from_cluster(&self.cluster, options).expect("client")
    }

    fn calls(&self) -> Vec<(usize, u64, u64)> {
        self.calls.lock().expect("calls").clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_fails_over_with_the_same_id_past_an_unavailable_replica_and_one_without_the_answer() {
    use Answer::*;
    let fake = FakeCluster::start([Fail(Code::Unavailable), Fail(Code::AlreadyExists), Epoch(7), Epoch(7)]).await;
    let ordered = fake.client().submit_with_id(0, b"x".to_vec()).await.expect("ordered");
    assert_eq!(ordered.epoch, 7);
    assert_eq!(fake.calls(), vec![(0, 0, 0), (1, 0, 0), (2, 0, 0)], "one replica after the other, one name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_the_answer_and_goes_to_no_other_replica() {
    use Answer::*;
    let fake = FakeCluster::start([Fail(Code::InvalidArgument), Epoch(7), Epoch(7), Epoch(7)]).await;
    match fake.client().submit_with_id(0, b"x".to_vec()).await {
        Err(ClientError::Status { code: Code::InvalidArgument, .. }) => {}
        other => panic!("expected the refusal, got {other:?}"),
    }
    assert_eq!(fake.calls().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_submit_returns_the_answer_t_plus_1_replicas_give() {
    use Answer::*;
    // Replicas 0, 1 and 2 are asked (2t + 1 from replica 0); one of them lies.
    let fake = FakeCluster::start([Epoch(5), Epoch(9), Epoch(5), Epoch(9)]).await;
    let ordered = fake.client().submit_quorum_with_id(0, b"x".to_vec()).await.expect("ordered");
    assert_eq!(ordered.epoch, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_that_cannot_agree_are_a_clear_error() {
    use Answer::*;
    let fake = FakeCluster::start([Epoch(5), Epoch(6), Fail(Code::AlreadyExists), Epoch(8)]).await;
    match fake.client().submit_quorum_with_id(0, b"x".to_vec()).await {
        Err(error @ ClientError::NoMatch { needed: 2, asked: 3, agreeing: 1, .. }) => {
            assert!(error.to_string().contains("only 1 of 3 replicas asked gave the same answer, 2 needed"), "{error}")
        }
        other => panic!("expected no match, got {other:?}"),
    }
    // Replica 2 does not keep the answer, so its failure is not retried there; replica 3 is not asked.
    let mut asked: Vec<usize> = fake.calls().iter().map(|(replica, _, _)| *replica).collect();
    asked.sort();
    assert_eq!(asked, vec![0, 1, 2]);
}
