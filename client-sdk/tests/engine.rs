//! The connection engine against fake replicas of the ordering service: failover with the same
//! request id, and "k matching answers". The fakes certify their answers with the cluster's key
//! (as real replicas do), or, to play a forger, with another key.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use fides_crypto::ThresholdKeys;
use fides_service::certificate::{Certificate, Leaf, Tree};
use fides_types::codec::Wire;
use fides_types::NodeIndex;

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
    /// Ordered in this epoch, but the certificate is not the cluster's (a forger's answer).
    Forged(u64),
    /// This status.
    Fail(Code),
}

struct FakeReplica {
    index: usize,
    answer: Mutex<Answer>,
    /// Every `Submit` received by any replica: (replica, client, id).
    calls: Arc<Mutex<Vec<(usize, u64, u64)>>>,
    /// The cluster's id and the signing keys of `t + 1` of its replicas (set once dealt).
    keys: Arc<OnceLock<([u8; 32], Vec<ThresholdKeys>)>>,
}

impl FakeReplica {
    /// The answer for `request` ordered alone at index 0 of `epoch`, certified with the cluster's
    /// key (or, `forged`, with the cluster's key over another cluster id: a valid signature that
    /// is not on this answer).
    fn certified(&self, request: &proto::SubmitRequest, epoch: u64, forged: bool) -> proto::Ordered {
        let (cluster, keys) = self.keys.get().expect("the cluster is dealt before any request");
        let digest = fides_crypto::sha256(&request.payload);
        let tree = Tree::new(vec![Leaf::Ordering { client: request.client, id: request.id, digest, index: 0 }.hash()]);
        let root = tree.epoch_root(epoch, 1);
        let signed_as = if forged { [0xee; 32] } else { *cluster };
        let point = root.point(&signed_as);
        let shares: BTreeMap<NodeIndex, _> =
            keys.iter().enumerate().map(|(i, k)| (NodeIndex(i as u32), k.sign_share(point))).collect();
        let signature = keys[0].combine(&shares, point).expect("t + 1 shares combine").to_bytes();
        proto::Ordered {
            client: request.client,
            id: request.id,
            epoch,
            index: 0,
            time_ms: 1,
            log_digest: vec![epoch as u8; 32],
            payload_digest: digest.to_vec(),
            inclusion: tree.inclusion(0).expect("leaf 0").to_bytes(),
            certificate: Certificate { root, signature }.to_bytes(),
        }
    }
}

#[tonic::async_trait]
impl Ordering for FakeReplica {
    async fn submit(&self, request: Request<proto::SubmitRequest>) -> Result<Response<proto::Ordered>, Status> {
        let request = request.into_inner();
        self.calls.lock().expect("calls").push((self.index, request.client, request.id));
        match *self.answer.lock().expect("answer") {
            Answer::Epoch(epoch) => Ok(Response::new(self.certified(&request, epoch, false))),
            Answer::Forged(epoch) => Ok(Response::new(self.certified(&request, epoch, true))),
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
        let keys = Arc::new(OnceLock::new());
        let mut client_addresses = Vec::new();
        for (index, answer) in answers.into_iter().enumerate() {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let address = listener.local_addr().expect("address").to_string();
            client_addresses.push(fides_dealer::Address::parse(&address).expect("address"));
            let replica = Arc::new(FakeReplica {
                index,
                answer: Mutex::new(answer),
                calls: Arc::clone(&calls),
                keys: Arc::clone(&keys),
            });
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
        let (cluster, replicas) = dealt.into_parts();
        let signers = replicas.iter().take(2).map(|r| r.signing_keys(&cluster).expect("keys")).collect();
        keys.set((cluster.id().0, signers)).map_err(|_| ()).expect("set once");
        FakeCluster { cluster, calls }
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

/// A replica whose answer does not verify against the cluster's key is passed over, like one that
/// does not answer; a forger alone gets no answer accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_does_not_verify_goes_to_the_next_replica() {
    use Answer::*;
    let fake = FakeCluster::start([Forged(3), Epoch(7), Epoch(7), Epoch(7)]).await;
    let ordered = fake.client().submit_with_id(0, b"x".to_vec()).await.expect("ordered");
    assert_eq!(ordered.epoch, 7, "the forged epoch 3 is not taken");
    assert_eq!(fake.calls(), vec![(0, 0, 0), (1, 0, 0)]);
    let fake = FakeCluster::start([Forged(3), Forged(3), Forged(3), Forged(3)]).await;
    match fake.client().submit_with_id(0, b"x".to_vec()).await {
        Err(ClientError::BadReply(reason)) => assert!(reason.contains("does not verify"), "{reason}"),
        other => panic!("a forged answer was taken: {other:?}"),
    }
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
    let fake = FakeCluster::start([Epoch(5), Forged(9), Epoch(5), Forged(9)]).await;
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
