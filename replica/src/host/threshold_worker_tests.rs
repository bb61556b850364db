//! The services' worker with threshold RSA, in process: four workers over their own stores, the
//! driver played by a router that carries their frames; a test service asks for a signature.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fides_atomic_broadcast::epoch::{Batch, Request};
use fides_crypto::{PublicShares, ThresholdKeys};
use fides_service::{Applied, Code, Outcome, QueryError, SchemeId, ServiceId, StoreError, Tables};
use fides_threshold_rsa::verify_signature;
use fides_types::codec::DecodeError;
use fides_types::{FaultKind, NodeIndex, Quorum};
use rand::SeedableRng;
use tokio::sync::oneshot;

use super::threshold::tests::{dealt, keys};
use super::threshold::{RsaKeys, FRAME_KIND};
use crate::host::epochs::HostAnswer;
use crate::host::orderer::{Reply, Waiting};
use crate::host::worker::{self, Input, Query, WorkerHandle, WorkerSetup};
use crate::node::{Command, NodeHandle, Ordered, ServiceEvent, FRAME_SERVICE};

/// How long the router holds each threshold RSA frame.
const RSA_DELAY: Duration = Duration::from_millis(300);

/// A service that asks the replicas to sign each request's payload (after its id) with
/// threshold RSA, and replies with the payload's length.
struct Signs;

impl fides_service::Service for Signs {
    const ID: ServiceId = ServiceId(*b"TSG1");
    const NAME: &'static str = "signs";
    const TABLES: &'static [&'static str] = &["asked"];
    const PAYLOAD_MAX: usize = 1024;
    type Request = Vec<u8>;
    type Query = ();
    type View = ();

    fn decode(&self, payload: &[u8]) -> Result<Vec<u8>, DecodeError> {
        Ok(payload.get(4..).unwrap_or_default().to_vec())
    }

    fn apply(&self, tables: &mut dyn Tables, at: &Applied, message: Vec<u8>) -> Result<Vec<Outcome>, StoreError> {
        tables.put("asked", &at.payload_digest, &message)?;
        let length = (message.len() as u32).to_le_bytes().to_vec();
        Ok(vec![Outcome::Reply(length), Outcome::ThresholdSign { scheme: SchemeId::ThresholdRsa, message }])
    }

    fn query(&self, _: &dyn Tables, _: ()) -> Result<(), QueryError> {
        Ok(())
    }
}

/// Four workers and the router between them; the faults they reported.
struct Cluster {
    workers: Arc<Mutex<Vec<WorkerHandle>>>,
    faults: Arc<Mutex<Vec<(NodeIndex, FaultKind)>>>,
    _dirs: Vec<tempfile::TempDir>,
    _stores: Vec<crate::store::Store>,
}

fn cluster(rsa: impl Fn(usize) -> Option<RsaKeys>) -> Cluster {
    let quorum = Quorum::new(4, 1).expect("n = 4, t = 1");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let signing = blsttc::SecretKeySet::random(1, &mut rng);
    let encryption = blsttc::SecretKeySet::random(1, &mut rng);
    let signing_public = Arc::new(PublicShares::new(signing.public_keys(), 4));
    let encryption_public = Arc::new(PublicShares::new(encryption.public_keys(), 4));
    let workers: Arc<Mutex<Vec<WorkerHandle>>> = Arc::new(Mutex::new(Vec::new()));
    let faults = Arc::new(Mutex::new(Vec::new()));
    let (mut dirs, mut stores) = (Vec::new(), Vec::new());
    for i in 0..4u32 {
        let dir = tempfile::tempdir().expect("a directory");
        let (store, _) = crate::store::Store::open(dir.path(), [i as u8; 32]).expect("a store");
        let (node, mut commands) = NodeHandle::detached(65_536);
        let mut services = fides_service::Registry::new();
        services
            .register(fides_bistro::service::Service::new(fides_bistro::service::ServiceConfig {
                cluster: [7; 32],
                t: 1,
                replicas: (0..4).map(|r| [r as u8 + 1; 32]).collect(),
                encryption: encryption.public_keys(),
            }))
            .expect("registers");
        services.register(Signs).expect("registers");
        let at = NodeIndex(i);
        let identities: Vec<ed25519_dalek::SigningKey> =
            (0..4u8).map(|r| ed25519_dalek::SigningKey::from_bytes(&[r + 1; 32])).collect();
        let setup = WorkerSetup {
            services: Arc::new(services),
            cluster: [7; 32],
            signing: Arc::new(ThresholdKeys::with_shared(
                at,
                Arc::clone(&signing_public),
                signing.secret_key_share(i as usize),
            )),
            quorum,
            encryption: Arc::new(ThresholdKeys::with_shared(
                at,
                Arc::clone(&encryption_public),
                encryption.secret_key_share(i as usize),
            )),
            our_index: at,
            batches: store.reader(),
            node,
            wrong_shares: false,
            rsa: rsa(i as usize),
            notices: crate::host::worker::NoticeKeys {
                identity: identities[i as usize].clone(),
                identities: identities.iter().map(|k| k.verifying_key().to_bytes()).collect(),
            },
        };
        let (handle, _) = worker::start(dir.path(), setup).expect("the worker starts");
        workers.lock().expect("not poisoned").push(handle);
        // The driver's part: carry each service frame to its peers, count faults.
        let (workers, faults) = (Arc::clone(&workers), Arc::clone(&faults));
        std::thread::spawn(move || {
            while let Some(command) = commands.blocking_recv() {
                match command {
                    Command::Send { to, frame } => {
                        let Some((&FRAME_SERVICE, body)) = frame.split_first() else { continue };
                        let workers = workers.lock().expect("not poisoned").clone();
                        let rsa = body.first() == Some(&FRAME_KIND);
                        let body = body.to_vec();
                        let carry = move || {
                            for (j, peer) in workers.iter().enumerate() {
                                let j = NodeIndex(j as u32);
                                if j != at && to.is_none_or(|to| to == j) {
                                    let frame = ServiceEvent::Frame { from: at, bytes: body.clone() };
                                    peer.try_send(Input::Service(frame));
                                }
                            }
                        };
                        if rsa {
                            // RSA frames are slow: the epoch is certified before its signatures
                            // are in, and the answer must wait for them.
                            std::thread::spawn(move || {
                                std::thread::sleep(RSA_DELAY);
                                carry();
                            });
                        } else {
                            carry();
                        }
                    }
                    Command::Fault { peer, kind } => faults.lock().expect("not poisoned").push((peer, kind)),
                    _ => {}
                }
            }
        });
        dirs.push(dir);
        stores.push(store);
    }
    Cluster { workers, faults, _dirs: dirs, _stores: stores }
}

impl Cluster {
    fn worker(&self, i: usize) -> WorkerHandle {
        self.workers.lock().expect("not poisoned")[i].clone()
    }

    /// Every worker applies the batch of `epoch` with these payloads.
    fn deliver(&self, epoch: u64, payloads: &[&[u8]]) {
        let requests = payloads
            .iter()
            .enumerate()
            .map(|(id, payload)| Request { client: 9, id: epoch * 100 + id as u64, payload: payload.to_vec() })
            .collect();
        let batch = Arc::new(Batch { epoch, time: 1_700_000_000_000 + epoch, requests });
        for i in 0..4 {
            assert!(self.worker(i).try_send(Input::Service(ServiceEvent::Batch(Arc::clone(&batch)))));
        }
    }

    /// Worker `i`'s answer for the request at (epoch, index), waited for at most 20 s.
    fn answer(&self, i: usize, epoch: u64, index: u32) -> HostAnswer {
        let (reply, mut rx) = oneshot::channel();
        // The worker reads only where the request was ordered.
        let ordered =
            Ordered { client: 0, id: 0, epoch, index, time_ms: 0, log_digest: [0; 32], payload_digest: [0; 32] };
        assert!(self.worker(i).try_send(Input::Wait(Waiting::Outcome(Reply::new(ordered, reply)))));
        let started = Instant::now();
        loop {
            match rx.try_recv() {
                Ok(answer) => return answer.expect("an answer").1,
                Err(oneshot::error::TryRecvError::Empty) if started.elapsed() < Duration::from_secs(20) => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(error) => panic!("replica {i} did not answer the request at ({epoch}, {index}): {error}"),
            }
        }
    }
}

#[test]
fn the_worker_answers_a_request_with_the_threshold_rsa_signature_it_asked_for() {
    let cluster = cluster(|i| Some(keys(i)));
    let message = b"the bytes to be signed".to_vec();
    cluster.deliver(0, &[b"not for any service", &[&b"TSG1"[..], &message].concat()]);
    let mut signatures = Vec::new();
    for i in 0..4 {
        let answer = cluster.answer(i, 0, 1);
        assert_eq!(answer.service, ServiceId(*b"TSG1"));
        assert_eq!(answer.outcomes[0].0, Outcome::Reply((message.len() as u32).to_le_bytes().to_vec()));
        let signature = answer.signature(1).expect("the ThresholdSign outcome has its signature").to_vec();
        assert!(verify_signature(&dealt().public, &message, &signature), "replica {i}'s signature verifies");
        signatures.push(signature);
    }
    assert!(signatures.windows(2).all(|w| w[0] == w[1]), "one signature at every replica");
    // Looked up by message id, as a service's adapter does.
    let (reply, mut rx) = oneshot::channel();
    let id = fides_service::rsa_signer::MessageId::of(&message);
    assert!(cluster.worker(2).try_send(Input::Query(Query::ThresholdSignature { id, reply })));
    let started = Instant::now();
    let found = loop {
        if let Ok(found) = rx.try_recv() {
            break found.expect("reads");
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the query is answered");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(found.as_deref(), Some(signatures[0].as_slice()));
    assert!(cluster.faults.lock().expect("not poisoned").is_empty());
}

#[test]
fn without_an_rsa_key_the_worker_refuses_the_request() {
    let cluster = cluster(|_| None);
    cluster.deliver(0, &[b"TSG1sign this"]);
    for i in 0..4 {
        let answer = cluster.answer(i, 0, 0);
        match &answer.outcomes[..] {
            [(Outcome::Refuse(refusal), None)] => assert_eq!(refusal.code, Code::FailedPrecondition),
            other => panic!("replica {i}: not a refusal: {other:?}"),
        }
    }
}
