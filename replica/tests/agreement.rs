//! Agreement instances end to end, with four whole replicas joined in memory (driver, core,
//! host, services): a test service asks for an agreement on each request and answers from its
//! decision; replica 3 is Byzantine in its notices (a wrong value in its own name, a forged one in
//! another's). Every replica must answer every request alike — the decided value, signed in the
//! certificate of the epoch where the decision was applied — and the answer must verify alone.
//!
//! The test service is defined here, so no release binary contains it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fides_atomic_broadcast::epoch::{AtomicBroadcast, Config, Request};
use fides_atomic_broadcast::instances::{Decided, InstanceId as CoreInstance};
use fides_dealer::{default_addresses, generate, Cluster, Quorum};
use fides_host::asker::Asker;
use fides_replica::host::decisions::Notice;
use fides_replica::host::orderer::{Reply, Waiting};
use fides_replica::host::worker::{self, HostAnswer, Input, NoticeKeys, WorkerHandle, WorkerSetup};
use fides_replica::metrics::Metrics;
use fides_replica::node::{Command, Limits, Node, NodeHandle, NodeSetup, Ordered, FRAME_INSTANCE};
use fides_replica::run::{instances, keys};
use fides_replica::transport::memory::MemoryNetwork;
use fides_service::certificate::Leaf;
use fides_service::{Outcome, Registry, Service, ServiceId};
use fides_types::codec::Wire;
use fides_types::NodeIndex;
use rand::SeedableRng;
use tokio::sync::{oneshot, watch};

/// The test service that asks for agreement (`fides_host::asker`).
const ASKER: ServiceId = <Asker as Service>::ID;

struct Running {
    node: NodeHandle,
    worker: WorkerHandle,
    shutdown: watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
    worker_thread: std::thread::JoinHandle<()>,
}

/// Stop a replica: its driver, then its worker (which ends when the last handle to it is gone),
/// so that its stores are closed.
fn stop(running: Running) {
    let _ = running.shutdown.send(true);
    running.thread.join().expect("node thread");
    drop(running.worker);
    running.worker_thread.join().expect("worker thread");
}

fn deal() -> Cluster {
    let quorum = Quorum::new(4, 1).expect("quorum");
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(12);
    generate(quorum, default_addresses(quorum), &mut rng).expect("deal")
}

/// Replica `i`, assembled as `replica run` does (with the test service registered after the
/// bistro).
fn start(cluster: &Cluster, i: u32, dir: &Path, network: &MemoryNetwork) -> Running {
    let public = cluster.public();
    let replica = &cluster.replicas()[i as usize];
    let quorum = public.quorum();
    let config = Config::new(public.id().0.to_vec());
    let keys = keys(replica, public).expect("keys");
    let mut services = Registry::new();
    services
        .register(fides_bistro::service::Service::new(fides_bistro::service::ServiceConfig {
            cluster: public.id().0,
            t: quorum.t(),
            replicas: public.replicas().iter().map(|r| r.identity.to_bytes()).collect(),
            encryption: public.encryption().clone(),
        }))
        .expect("the bistro registers");
    services.register(Asker).expect("the test service registers");
    let services = Arc::new(services);
    let setup = NodeSetup {
        quorum,
        our_index: NodeIndex(i),
        session: config.session.clone(),
        checkpoint_interval: config.checkpoint_interval,
        epochs_in_flight: config.epochs_in_flight,
        abc: AtomicBroadcast::new(quorum, NodeIndex(i), config, keys.clone()),
        limits: Limits::default(),
    };
    let hosted = instances(quorum, NodeIndex(i), &keys, public, &services);
    let (mut node, handle) =
        Node::start_hosting(setup, Some(hosted), dir, network.join(NodeIndex(i)), Arc::new(Metrics::new()))
            .expect("node starts");
    let (worker, worker_thread) = worker::start(
        dir,
        WorkerSetup {
            services,
            cluster: public.id().0,
            signing: Arc::clone(&keys.signing),
            quorum,
            encryption: Arc::clone(&keys.encryption),
            our_index: NodeIndex(i),
            batches: node.batch_reader(),
            node: handle.clone(),
            wrong_shares: false,
            rsa: None,
            notices: NoticeKeys {
                identity: replica.identity().clone(),
                identities: public.replicas().iter().map(|r| r.identity.to_bytes()).collect(),
            },
        },
    )
    .expect("worker starts");
    node.set_service(worker.service_sink());
    node.set_decided(worker.decided_sink());
    let (shutdown, stop) = watch::channel(false);
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(node.run(stop)).expect("node runs");
    });
    Running { node: handle, worker, shutdown, thread, worker_thread }
}

async fn submit(node: &NodeHandle, request: Request) -> Ordered {
    let (reply, answer) = oneshot::channel();
    assert!(node.send(Command::Submit { request, reply: Box::new(reply) }).await, "node gone");
    answer.await.expect("answered").expect("ordered")
}

/// Replica's answer for the request ordered at `ordered` (it waits for the decision and its
/// certificate).
async fn answer(worker: &WorkerHandle, ordered: &Ordered) -> HostAnswer {
    let (reply, answer) = oneshot::channel();
    assert!(worker.try_send(Input::Wait(Waiting::Outcome(Reply::new(ordered.clone(), reply)))));
    let answer = tokio::time::timeout(Duration::from_secs(60), answer).await.expect("answered within 60 s");
    answer.expect("worker alive").expect("an answer").1
}

/// Replica 3's Byzantine notices on instance `key`: 0 in its own name (the honest replicas vote
/// 1, so 1 is decided), the same again, and 0 in replica 0's name, signed with its own key. Any
/// two of them counted would decide 0.
fn byzantine_notices(cluster: &Cluster, key: [u8; 32]) -> Vec<Request> {
    let identity = cluster.replicas()[3].identity();
    let zero = Decided { instance: CoreInstance { service: ASKER.0, key }, value: false, justification: None };
    let id = cluster.public().id().0;
    let own = Notice::sign(identity, &id, 3, &zero);
    [own.clone(), own, Notice::sign(identity, &id, 0, &zero)]
        .into_iter()
        .enumerate()
        .map(|(k, notice)| Request { client: 66, id: u64::from(key[0]) * 2 + k as u64, payload: notice.to_payload() })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_apply_an_agreement_decision_at_one_ordered_point_despite_a_byzantine_notice() {
    let cluster = deal();
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().expect("temporary directory")).collect();
    let network = MemoryNetwork::new(4);
    let mut running: Vec<Running> = (0..4).map(|i| start(&cluster, i, dirs[i as usize].path(), &network)).collect();
    let public_key = cluster.public().signing().public_key();
    let cluster_id = cluster.public().id().0;

    for k in 0..3u8 {
        let key = [k + 1; 32];
        let payload = [&ASKER.0[..], &key, &[1]].concat();
        // The instance's messages wait until replica 3's notices are ordered: no core can decide
        // before, so every honest notice comes after them in the log, and they are counted.
        network.hold(Box::new(|_, _, frame: &[u8]| frame.first() == Some(&FRAME_INSTANCE)));
        let ordered = submit(&running[usize::from(k) % 3].node, Request { client: 7, id: u64::from(k), payload }).await;
        if k == 1 {
            // Replica 2 restarts while the instance runs: its vote (logged or not yet) is handed
            // to its core again from the host's store, and the instance resumes.
            let replica = running.remove(2);
            stop(replica);
            running.insert(2, start(&cluster, 2, dirs[2].path(), &network));
        }
        for notice in byzantine_notices(&cluster, key) {
            submit(&running[3].node, notice).await;
        }
        network.release();
        let mut answers = Vec::new();
        for replica in &running {
            answers.push(answer(&replica.worker, &ordered).await);
        }
        let record = [&key[..], &[1]].concat();
        for (i, answer) in answers.iter().enumerate() {
            assert_eq!(answer.service, ASKER);
            let [(Outcome::Sign(signed), Some((inclusion, certificate)))] = answer.outcomes.as_slice() else {
                panic!("replica {i} answers request {k} with {:?}", answer.outcomes)
            };
            assert_eq!(signed, &record, "replica {i}: the decision is 1, whatever replica 3 said");
            assert!(certificate.root.epoch > ordered.epoch, "certified by the epoch of the decision, a later one");
            let leaf = Leaf::Service { service: ASKER, record: record.clone() }.to_bytes();
            fides_service::certificate::verify(&cluster_id, &public_key, &leaf, inclusion, certificate)
                .unwrap_or_else(|e| panic!("replica {i}'s answer to request {k} does not verify alone: {e:?}"));
            let first = &answers[0].outcomes[0].1.as_ref().expect("certified").1;
            assert_eq!(certificate.to_bytes(), first.to_bytes(), "one certificate, one epoch, at every replica");
        }
    }
    for replica in running {
        stop(replica);
    }
}
