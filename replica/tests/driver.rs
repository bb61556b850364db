//! The driver with replicas joined in memory: ordering through the real store and core, and a
//! restart that replays the log without contradicting anything sent before.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fides_atomic_broadcast::epoch::{AtomicBroadcast, Config, Request};
use fides_dealer::{default_addresses, generate, Cluster, Quorum};
use fides_replica::metrics::Metrics;
use fides_replica::node::{Command, Limits, LogPage, Node, NodeHandle, NodeSetup, Ordered, Status};
use fides_replica::run::keys;
use fides_replica::transport::memory::MemoryNetwork;
use fides_types::NodeIndex;
use rand::SeedableRng;
use tokio::sync::{oneshot, watch};

struct Running {
    handle: NodeHandle,
    shutdown: watch::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

fn deal(n: u32, t: u32) -> Cluster {
    let quorum = Quorum::new(n, t).expect("quorum");
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
    generate(quorum, default_addresses(quorum), &mut rng).expect("deal")
}

fn start(cluster: &Cluster, i: u32, dir: &Path, network: &MemoryNetwork) -> Running {
    let public = cluster.public();
    let replica = &cluster.replicas()[i as usize];
    let mut config = Config::new(public.id().0.to_vec());
    config.checkpoint_interval = 4;
    let setup = NodeSetup {
        quorum: public.quorum(),
        our_index: NodeIndex(i),
        session: config.session.clone(),
        checkpoint_interval: config.checkpoint_interval,
        epochs_in_flight: config.epochs_in_flight,
        abc: AtomicBroadcast::new(public.quorum(), NodeIndex(i), config, keys(replica, public).expect("keys")),
        // Compact often, so that restarts replay from snapshots as well as from whole logs.
        limits: Limits { compact_events: 40, ..Limits::default() },
    };
    let (node, handle) =
        Node::start(setup, dir, network.join(NodeIndex(i)), Arc::new(Metrics::new())).expect("node starts");
    let (shutdown, stop) = watch::channel(false);
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(node.run(stop)).expect("node runs");
    });
    Running { handle, shutdown, thread }
}

fn stop(running: Running) {
    let _ = running.shutdown.send(true);
    running.thread.join().expect("node thread");
}

async fn submit(handle: &NodeHandle, request: Request) -> Ordered {
    let (reply, answer) = oneshot::channel();
    assert!(handle.send(Command::Submit { request, reply: Box::new(reply) }).await, "node gone");
    answer.await.expect("answered").expect("ordered")
}

async fn status(handle: &NodeHandle) -> Status {
    let (reply, answer) = oneshot::channel();
    assert!(handle.send(Command::Status { reply }).await, "node gone");
    answer.await.expect("answered")
}

async fn log(handle: &NodeHandle) -> LogPage {
    let (reply, answer) = oneshot::channel();
    assert!(handle.send(Command::Log { from: 0, max: 4096, reply }).await, "node gone");
    answer.await.expect("answered").expect("log read")
}

async fn converge(handles: &[&NodeHandle], min_epoch: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut states = Vec::new();
        for handle in handles {
            let s = status(handle).await;
            states.push((s.next_epoch, s.log_digest));
        }
        if states.windows(2).all(|w| w[0] == w[1]) && states[0].0 >= min_epoch {
            return;
        }
        assert!(Instant::now() < deadline, "no convergence: {states:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn request(client: u64, id: u64) -> Request {
    Request { client, id, payload: format!("request {client}/{id}").into_bytes() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_joined_in_memory_order_requests_and_a_restart_replays_without_contradiction() {
    let cluster = deal(4, 1);
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().expect("temporary directory")).collect();
    let network = MemoryNetwork::new(4);
    let mut running: Vec<Option<Running>> =
        (0..4).map(|i| Some(start(&cluster, i, dirs[i as usize].path(), &network))).collect();
    let handle = |running: &Vec<Option<Running>>, i: usize| running[i].as_ref().expect("running").handle.clone();

    // The same request through two replicas gets one answer.
    let mut answers = Vec::new();
    for id in 0..10 {
        let (first, second) = (handle(&running, (id % 4) as usize), handle(&running, ((id + 1) % 4) as usize));
        let (a, b) = tokio::join!(submit(&first, request(1, id)), submit(&second, request(1, id)));
        assert_eq!(a, b, "two replicas answer differently for the same request");
        answers.push(a);
    }

    // Replica 0 stops in the middle of things and comes back from its log.
    stop(running[0].take().expect("running"));
    for id in 10..20 {
        answers.push(submit(&handle(&running, 1 + (id % 3) as usize), request(2, id)).await);
    }
    running[0] = Some(start(&cluster, 0, dirs[0].path(), &network));
    for id in 20..30 {
        answers.push(submit(&handle(&running, (id % 4) as usize), request(3, id)).await);
    }
    // Replicas 1, 2 and 0 in turn stop and come back, while the others go on (replica 3 never
    // stops: it holds the whole log).
    for victim in [1usize, 2, 0] {
        stop(running[victim].take().expect("running"));
        for id in 0..5 {
            let via = (victim + 1 + id as usize % 3) % 4;
            answers.push(submit(&handle(&running, via), request(10 + victim as u64, id)).await);
        }
        running[victim] = Some(start(&cluster, victim as u32, dirs[victim].path(), &network));
    }
    for id in 30..40 {
        answers.push(submit(&handle(&running, (id % 4) as usize), request(3, id)).await);
    }
    let max_epoch = answers.iter().map(|o| o.epoch).max().unwrap_or(0);
    let handles: Vec<NodeHandle> = (0..4).map(|i| handle(&running, i)).collect();
    converge(&handles.iter().collect::<Vec<_>>(), max_epoch + 1).await;

    // Replicas that jumped to a checkpoint fetch the batches they skipped.
    let deadline = Instant::now() + Duration::from_secs(60);
    let pages = loop {
        let pages = futures::future::join_all(handles.iter().map(log)).await;
        if pages.iter().all(|p| p.first_epoch == 0) {
            break pages;
        }
        assert!(
            Instant::now() < deadline,
            "logs not complete: {:?}",
            pages.iter().map(|p| p.first_epoch).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for page in &pages[1..] {
        let a: Vec<_> = pages[0].batches.iter().filter(|b| b.batch.epoch >= page.first_epoch).collect();
        let b: Vec<_> = page.batches.iter().filter(|b| b.batch.epoch >= pages[0].first_epoch).collect();
        assert_eq!(a, b, "two replicas hold different logs");
    }
    for answer in &answers {
        let held: Vec<_> =
            pages.iter().filter_map(|p| p.batches.iter().find(|b| b.batch.epoch == answer.epoch)).collect();
        assert_eq!(held.len(), 4, "epoch {} is not held by every replica", answer.epoch);
        for batch in held {
            let r = &batch.batch.requests[answer.index as usize];
            assert_eq!((r.client, r.id), (answer.client, answer.id));
            assert_eq!(batch.log, answer.log_digest);
        }
    }
    for (i, page) in pages.iter().enumerate() {
        println!("replica {i}: log from epoch {} to {}", page.first_epoch, page.next_epoch);
    }
    for handle in &handles {
        for (peer, p) in status(handle).await.peers.iter().enumerate() {
            assert_eq!(p.equivocations, 0, "replica {peer} was seen equivocating");
        }
    }
    for r in running.into_iter().flatten() {
        stop(r);
    }
}
