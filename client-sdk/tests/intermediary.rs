//! The `Intermediary` service without a cluster: a fake reporter stands in for the cluster, the
//! service runs on a local port, and real commit files go through `BistroClient::upload`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ed25519_dalek::SigningKey;
use fides_bistro::commit::{seal_commit, CommitHeader};
use fides_bistro::records::{domain, ed_sign, EventId, HeldReport, StoredReport};
use fides_bistro::stream::Aead;
use fides_client_sdk::bistro::BistroClient;
use fides_client_sdk::proto;
use fides_client_sdk::ClientError;
use fides_dealer::{ClusterFile, Quorum, ReplicaFile};
use fides_relay::{BlobEntry, BlobStore, ClusterReporter, IntermediaryConfig, IntermediaryService, UploadKey};
use sha2::{Digest, Sha256};
use tonic::{Code, Status};

/// Accepts or refuses reports, and remembers the accepted ones.
#[derive(Default)]
struct FakeCluster {
    refuse: AtomicBool,
    reports: Mutex<Vec<HeldReport>>,
}

#[tonic::async_trait]
impl ClusterReporter for FakeCluster {
    async fn report_held(&self, report: HeldReport) -> Result<bool, Status> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(Status::not_found(format!(
                "no ticket {} in event {}",
                report.receipt.ticket, report.receipt.event
            )));
        }
        let mut reports = self.reports.lock().expect("lock");
        reports.push(report);
        Ok(reports.len() == 1)
    }
}

struct Setup {
    cluster: ClusterFile,
    replicas: Vec<ReplicaFile>,
    dir: tempfile::TempDir,
    address: String,
    fake: Arc<FakeCluster>,
    service: IntermediaryService<Arc<FakeCluster>>,
    client: BistroClient,
    relay_key: SigningKey,
}

async fn start(adjust: impl FnOnce(&mut IntermediaryConfig)) -> Setup {
    let quorum = Quorum::new(4, 1).expect("quorum");
    let (cluster, replicas) =
        fides_dealer::generate(quorum, fides_dealer::default_addresses(quorum), &mut rand::thread_rng())
            .expect("cluster")
            .into_parts();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = BlobStore::open(&dir.path().join("relay")).expect("store");
    let relay_key = SigningKey::generate(&mut rand::rngs::OsRng);
    let mut config = IntermediaryConfig::relay(&cluster, relay_key.clone(), 1 << 30);
    adjust(&mut config);
    let fake = Arc::new(FakeCluster::default());
    let service = IntermediaryService::new(config, store, Arc::clone(&fake));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let server = tonic::transport::Server::builder()
        .add_service(service.clone().into_server())
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    let client = BistroClient::connect(cluster.clone()).expect("client");
    Setup { cluster, replicas, dir, address, fake, service, client, relay_key }
}

impl Setup {
    /// A commit file of `size` random bytes for `ticket` of `event`.
    fn commit_file(&self, event: EventId, ticket: u64, size: usize, name: &str) -> PathBuf {
        let data: Vec<u8> = (0..size).map(|_| rand::random::<u8>()).collect();
        let mut out = Vec::new();
        seal_commit(
            &self.cluster.id().0,
            &self.cluster.encryption().public_key(),
            Aead::XChaCha20Poly1305,
            &event,
            ticket,
            data.as_slice(),
            &mut out,
            &mut rand::thread_rng(),
            &mut |_| {},
        )
        .expect("seal");
        let path = self.dir.path().join(name);
        std::fs::write(&path, out).expect("write");
        path
    }

    fn intermediary(&self) -> proto::intermediary_client::IntermediaryClient<tonic::transport::Channel> {
        BistroClient::intermediary_client(&self.address).expect("client")
    }

    async fn fetch(&self, key: &UploadKey, offset: u64) -> Result<Vec<u8>, Status> {
        let request = proto::FetchRequest {
            event: key.event.0.to_vec(),
            ticket: key.ticket,
            upload_hash: key.upload_hash.to_vec(),
            offset,
        };
        let mut stream = self.intermediary().fetch(request).await?.into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream.message().await? {
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }

    async fn confirm(&self, key: &UploadKey, replica: u32, signer: u32) -> Result<proto::ConfirmReply, Status> {
        let body = StoredReport::body(&key.event, key.ticket, &key.upload_hash, replica);
        let signature =
            ed_sign(self.replicas[signer as usize].identity(), domain::CONFIRM, &self.cluster.id().0, &body);
        let request = proto::ConfirmRequest {
            event: key.event.0.to_vec(),
            ticket: key.ticket,
            upload_hash: key.upload_hash.to_vec(),
            replica,
            signature: signature.to_vec(),
        };
        Ok(self.intermediary().confirm(request).await?.into_inner())
    }

    async fn raw_upload(&self, bytes: Vec<u8>) -> Result<proto::UploadReply, Status> {
        let chunks: Vec<proto::UploadChunk> =
            bytes.chunks(1000).map(|c| proto::UploadChunk { data: c.to_vec() }).collect();
        Ok(self.intermediary().upload(tokio_stream::iter(chunks)).await?.into_inner())
    }

    fn stored_files(&self) -> usize {
        let root = self.dir.path().join("relay");
        let mut count = 0;
        for sub in ["blobs", "tmp"] {
            count += walk(&root.join(sub));
        }
        count
    }
}

fn walk(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries.filter_map(Result::ok).map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 }).sum()
        })
        .unwrap_or(0)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_receipted_fetched_and_resumable() {
    let setup = start(|_| {}).await;
    let event = EventId([7; 16]);
    let path = setup.commit_file(event, 3, 300_000, "a.commit");
    let bytes = std::fs::read(&path).expect("read");
    let mut seen = Vec::new();
    let (receipt, signature) =
        setup.client.upload(&setup.address, &path, &mut |sent| seen.push(sent)).await.expect("upload");
    assert!(receipt.verify(&setup.cluster.id().0, &signature));
    assert_eq!(receipt.upload_hash, sha256(&bytes));
    assert_eq!(receipt.upload_size, bytes.len() as u64);
    assert_eq!((receipt.event, receipt.ticket), (event, 3));
    assert_eq!(receipt.intermediary, setup.relay_key.verifying_key().to_bytes());
    assert_eq!(seen.last().copied(), Some(bytes.len() as u64));
    assert!(seen.len() > 1, "several chunks");

    // The cluster was told, with the upload's capsule.
    {
        let reports = setup.fake.reports.lock().expect("lock");
        assert_eq!(reports.len(), 1);
        let header = CommitHeader::read(&mut bytes.as_slice()).expect("header");
        assert_eq!(reports[0].capsule, header.capsule);
        assert_eq!(reports[0].receipt, receipt);
    }

    let key = UploadKey::of_receipt(&receipt);
    assert_eq!(setup.fetch(&key, 0).await.expect("fetch"), bytes);
    assert_eq!(setup.fetch(&key, 100_001).await.expect("fetch from an offset"), bytes[100_001..]);
    assert_eq!(setup.fetch(&key, bytes.len() as u64).await.expect("fetch at the end"), Vec::<u8>::new());
    assert_eq!(setup.fetch(&key, bytes.len() as u64 + 1).await.map_err(|s| s.code()), Err(Code::OutOfRange));
    let other = UploadKey { upload_hash: [0; 32], ..key };
    assert_eq!(setup.fetch(&other, 0).await.map_err(|s| s.code()), Err(Code::NotFound));

    // The same bytes again: the same receipt, no second report.
    let (again, _) = setup.client.upload(&setup.address, &path, &mut |_| {}).await.expect("re-upload");
    assert_eq!(again, receipt);
    assert_eq!(setup.fake.reports.lock().expect("lock").len(), 1);
    let held = setup.service.store().list().await.expect("list");
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].0, key);

    let identity = setup.intermediary().identity(proto::IdentityRequest {}).await.expect("identity").into_inner();
    assert_eq!(identity.key, setup.relay_key.verifying_key().to_bytes().to_vec());
    assert_eq!(identity.replica, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reports_and_garbage_leave_nothing_stored() {
    let setup = start(|_| {}).await;
    let event = EventId([8; 16]);
    let path = setup.commit_file(event, 1, 100_000, "b.commit");

    setup.fake.refuse.store(true, Ordering::SeqCst);
    match setup.client.upload(&setup.address, &path, &mut |_| {}).await {
        Err(ClientError::Status { code: Code::NotFound, message }) => {
            assert!(message.contains("no ticket 1"), "{message}")
        }
        other => panic!("expected the cluster's NOT_FOUND, got {other:?}"),
    }
    assert!(setup.service.store().list().await.expect("list").is_empty());
    assert_eq!(setup.stored_files(), 0);
    setup.fake.refuse.store(false, Ordering::SeqCst);

    // Not a commit file.
    let garbage = setup.raw_upload(vec![0x42; 5000]).await;
    assert_eq!(garbage.map_err(|s| s.code()).err(), Some(Code::InvalidArgument));
    let short = setup.raw_upload(b"FIDESBC1".to_vec()).await;
    assert_eq!(short.map_err(|s| s.code()).err(), Some(Code::InvalidArgument));
    // A capsule moved to another ticket does not verify under that ticket's label.
    let mut moved = std::fs::read(&path).expect("read");
    moved[24..32].copy_from_slice(&2u64.to_le_bytes());
    let refused = setup.raw_upload(moved).await.expect_err("refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");
    assert!(refused.message().contains("capsule"), "{refused}");

    assert!(setup.fake.reports.lock().expect("lock").is_empty());
    assert!(setup.service.store().list().await.expect("list").is_empty());
    assert_eq!(setup.stored_files(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t_plus_one_confirmations_delete_the_blob() {
    let setup = start(|_| {}).await;
    let event = EventId([9; 16]);
    let path = setup.commit_file(event, 5, 10_000, "c.commit");
    let (receipt, _) = setup.client.upload(&setup.address, &path, &mut |_| {}).await.expect("upload");
    let key = UploadKey::of_receipt(&receipt);

    // Signed by another replica than the one named, or by no replica at all.
    let forged = setup.confirm(&key, 0, 1).await.expect_err("forged");
    assert_eq!(forged.code(), Code::PermissionDenied);
    let unknown = setup.confirm(&key, 9, 0).await.expect_err("unknown replica");
    assert_eq!(unknown.code(), Code::InvalidArgument);

    let first = setup.confirm(&key, 0, 0).await.expect("confirm");
    assert_eq!((first.confirmations, first.deleted), (1, false));
    let repeated = setup.confirm(&key, 0, 0).await.expect("confirm again");
    assert_eq!((repeated.confirmations, repeated.deleted), (1, false));
    assert!(setup.fetch(&key, 0).await.is_ok());
    let second = setup.confirm(&key, 2, 2).await.expect("confirm");
    assert_eq!((second.confirmations, second.deleted), (2, true));

    assert_eq!(setup.fetch(&key, 0).await.map_err(|s| s.code()), Err(Code::NotFound));
    assert!(setup.service.store().list().await.expect("list").is_empty());
    assert_eq!(setup.stored_files(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_delivering_relay_gives_receipts_but_no_fetch() {
    let setup = start(|config| config.never_deliver = true).await;
    let path = setup.commit_file(EventId([1; 16]), 1, 1000, "d.commit");
    let (receipt, _) = setup.client.upload(&setup.address, &path, &mut |_| {}).await.expect("upload");
    let key = UploadKey::of_receipt(&receipt);
    assert_eq!(setup.fetch(&key, 0).await.map_err(|s| s.code()), Err(Code::Unavailable));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_past_the_limit_are_refused() {
    let setup = start(|config| config.upload_max = 50_000).await;
    let path = setup.commit_file(EventId([2; 16]), 1, 100_000, "e.commit");
    match setup.client.upload(&setup.address, &path, &mut |_| {}).await {
        Err(ClientError::Status { code: Code::ResourceExhausted, .. }) => {}
        other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
    }
    assert!(setup.fake.reports.lock().expect("lock").is_empty());
    assert_eq!(setup.stored_files(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_survives_reopening_and_sweeps_leftovers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("store");
    let bytes = b"some commit file bytes".to_vec();
    let key = UploadKey { event: EventId([4; 16]), ticket: 2, upload_hash: sha256(&bytes) };
    let receipt = fides_bistro::records::Receipt {
        event: key.event,
        ticket: key.ticket,
        upload_hash: key.upload_hash,
        upload_size: bytes.len() as u64,
        intermediary: [1; 32],
        receipt_id: 0,
        time_ms: 0,
    };
    {
        let store = BlobStore::open(&root).expect("store");
        let id = store.next_receipt_id().await.expect("id");
        let receipt = fides_bistro::records::Receipt { receipt_id: id, ..receipt.clone() };
        let entry = BlobEntry { receipt, signature: [0; 64], confirmations: Default::default() };
        // A writer dropped without commit leaves nothing.
        let mut dropped = store.begin().await.expect("begin");
        dropped.write(b"abandoned").await.expect("write");
        drop(dropped);
        // Bytes that are not the key's are refused.
        let mut wrong = store.begin().await.expect("begin");
        wrong.write(b"other bytes").await.expect("write");
        assert!(store.commit(wrong, &key, entry.clone()).await.is_err());
        let mut writer = store.begin().await.expect("begin");
        writer.write(&bytes[..5]).await.expect("write");
        writer.write(&bytes[5..]).await.expect("write");
        assert_eq!(writer.size(), bytes.len() as u64);
        store.commit(writer, &key, entry).await.expect("commit");
        assert_eq!(store.confirm(&key, 3).await.expect("confirm"), Some(1));
        assert_eq!(walk(&root.join("tmp")), 0);
    }
    // What a crash can leave: a temporary file and a blob without an index entry.
    std::fs::write(root.join("tmp").join("0000.part"), b"partial").expect("write");
    let orphan = root.join("blobs").join("ab").join("ab".repeat(32));
    std::fs::create_dir_all(orphan.parent().expect("parent")).expect("mkdir");
    std::fs::write(&orphan, b"orphan").expect("write");

    let reopened = BlobStore::open(&root).expect("reopen");
    assert!(!orphan.exists());
    assert!(!root.join("tmp").join("0000.part").exists());
    let entry = reopened.held(&key).await.expect("held").expect("still held");
    assert_eq!(entry.receipt.upload_hash, key.upload_hash);
    assert_eq!(entry.confirmations.len(), 1);
    let (mut file, size) = reopened.open_blob(&key).await.expect("open").expect("blob");
    assert_eq!(size, bytes.len() as u64);
    let mut read = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut file, &mut read).await.expect("read");
    assert_eq!(read, bytes);
    assert_eq!(reopened.next_receipt_id().await.expect("id"), 2);
    assert!(reopened.delete(&key).await.expect("delete"));
    assert!(reopened.open_blob(&key).await.expect("open").is_none());
    assert_eq!(walk(&root.join("blobs")), 0);
}

// ---------------------------------------------------------------------------------------------
// A fake cluster behind the Bistro gRPC API: the client's failover and verification, and a relay.
// ---------------------------------------------------------------------------------------------

mod fake_cluster {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    use blsttc::SecretKeyShare;
    use fides_bistro::proof::{path, root, root_message, EpochProof};
    use fides_bistro::records::{
        EventId, EventRecord, EventTerms, HeldReport, Signed, StatusRecord, Ticket, TicketState,
    };
    use fides_bistro::stream::HashAlg;
    use fides_bistro::text::{parse_aead_name, parse_hash_name};
    use fides_client_sdk::proto;
    use fides_client_sdk::proto::bistro_server::Bistro;
    use fides_types::codec::Wire;
    use tonic::{Request, Response, Status};

    /// What every fake replica shares.
    #[derive(Default)]
    pub struct Shared {
        /// `(replica, method, client, id)` of every call.
        pub calls: Mutex<Vec<(usize, &'static str, u64, u64)>>,
        /// Answer UNAVAILABLE to this many calls first.
        pub unavailable: AtomicU32,
        /// Relays registered: key, address, seq.
        pub relays: Mutex<Vec<([u8; 32], String, u64)>>,
        /// Held reports.
        pub held: Mutex<Vec<HeldReport>>,
    }

    pub struct FakeReplica {
        pub index: usize,
        pub cluster: [u8; 32],
        pub public: blsttc::PublicKeySet,
        pub shares: Vec<(usize, SecretKeyShare)>,
        pub shared: Arc<Shared>,
        /// Tamper with signed records after signing them.
        pub corrupt: AtomicBool,
    }

    impl FakeReplica {
        fn enter(&self, method: &'static str, client: u64, id: u64) -> Result<(), Status> {
            self.shared.calls.lock().expect("lock").push((self.index, method, client, id));
            let left = self.shared.unavailable.load(Ordering::SeqCst);
            if left > 0 {
                self.shared.unavailable.store(left - 1, Ordering::SeqCst);
                return Err(Status::unavailable("fake: not now"));
            }
            Ok(())
        }

        /// The record signed as leaf 1 of 3 of epoch 5, agreed time 1000.
        fn sign(&self, record: Signed) -> proto::SignedReply {
            let leaves = vec![[1u8; 32], record.leaf(&self.cluster), [2u8; 32]];
            let top = root(&leaves);
            let message = root_message(&self.cluster, 5, 1000, 3, &top);
            let shares: BTreeMap<usize, blsttc::SignatureShare> =
                self.shares.iter().map(|(i, share)| (*i, share.sign(&message))).collect();
            let signature = self.public.combine_signatures(&shares).expect("combine");
            let proof = EpochProof {
                format: fides_bistro::proof::FORMAT_BISTRO_TREE,
                epoch: 5,
                time_ms: 1000,
                index: 1,
                count: 3,
                path: path(&leaves, 1),
                signature: signature.to_bytes(),
            };
            let record = if self.corrupt.load(Ordering::SeqCst) {
                match record {
                    Signed::Ticket(ticket) => Signed::Ticket(Ticket { size: ticket.size + 1, ..ticket }),
                    other => other,
                }
            } else {
                record
            };
            proto::SignedReply { record: record.to_bytes(), proof: proof.to_bytes(), epoch: 5, index: 1 }
        }
    }

    fn event_id(bytes: &[u8]) -> Result<EventId, Status> {
        Ok(EventId(bytes.try_into().map_err(|_| Status::invalid_argument("event id"))?))
    }

    #[tonic::async_trait]
    impl Bistro for FakeReplica {
        async fn create_event(
            &self,
            request: Request<proto::CreateEventRequest>,
        ) -> Result<Response<proto::SignedReply>, Status> {
            let r = request.into_inner();
            self.enter("create_event", r.client, r.id)?;
            let terms = EventTerms {
                deadline_ms: r.deadline_ms,
                description: r.description,
                owner: r.owner_key.as_slice().try_into().map_err(|_| Status::invalid_argument("key"))?,
                hash: parse_hash_name(&r.hash_algorithm).ok_or_else(|| Status::invalid_argument("hash"))?,
                aead: parse_aead_name(&r.aead).ok_or_else(|| Status::invalid_argument("aead"))?,
                transfer_window_ms: r.transfer_window_ms,
                nonce: r.nonce,
            };
            let event = EventId::derive(&self.cluster, 5, 1);
            Ok(Response::new(self.sign(Signed::Event(EventRecord { event, terms, created_ms: 1000 }))))
        }

        async fn get_event(
            &self,
            _request: Request<proto::GetEventRequest>,
        ) -> Result<Response<proto::SignedReply>, Status> {
            Err(Status::not_found("fake: no such event"))
        }

        async fn list_events(
            &self,
            _request: Request<proto::ListEventsRequest>,
        ) -> Result<Response<proto::ListEventsReply>, Status> {
            Ok(Response::new(proto::ListEventsReply { events: Vec::new() }))
        }

        async fn request_ticket(
            &self,
            request: Request<proto::TicketRequest>,
        ) -> Result<Response<proto::SignedReply>, Status> {
            let r = request.into_inner();
            self.enter("request_ticket", r.client, r.id)?;
            let ticket = Ticket {
                event: event_id(&r.event)?,
                ticket: 1,
                hash: HashAlg::Sha256,
                digest: r.digest.as_slice().try_into().map_err(|_| Status::invalid_argument("digest"))?,
                size: r.size,
                contact: r.contact,
                file_name: r.file_name,
                time_ms: 1000,
            };
            Ok(Response::new(self.sign(Signed::Ticket(ticket))))
        }

        async fn status(
            &self,
            request: Request<proto::TicketStatusRequest>,
        ) -> Result<Response<proto::SignedReply>, Status> {
            let r = request.into_inner();
            self.enter("status", r.client, r.id)?;
            let tickets = r
                .tickets
                .iter()
                .map(|t| TicketState { ticket: *t, issued: false, time_ms: 0, uploads: Vec::new() })
                .collect();
            let status = StatusRecord {
                event: event_id(&r.event)?,
                as_of_ms: 1000,
                deadline_passed: false,
                collections: 0,
                tickets,
            };
            Ok(Response::new(self.sign(Signed::Status(status))))
        }

        async fn register_relay(
            &self,
            request: Request<proto::RegisterRelayRequest>,
        ) -> Result<Response<proto::RegisterRelayReply>, Status> {
            let r = request.into_inner();
            self.enter("register_relay", r.client, r.id)?;
            let key = r.key.as_slice().try_into().map_err(|_| Status::invalid_argument("key"))?;
            self.shared.relays.lock().expect("lock").push((key, r.address, r.seq));
            Ok(Response::new(proto::RegisterRelayReply {}))
        }

        async fn list_relays(
            &self,
            _request: Request<proto::ListRelaysRequest>,
        ) -> Result<Response<proto::ListRelaysReply>, Status> {
            let relays = self.shared.relays.lock().expect("lock");
            let relays = relays
                .iter()
                .map(|(key, address, _)| proto::RelayInfo {
                    key: key.to_vec(),
                    address: address.clone(),
                    undelivered: 0,
                })
                .collect();
            Ok(Response::new(proto::ListRelaysReply { relays }))
        }

        async fn report_held(
            &self,
            request: Request<proto::ReportHeldRequest>,
        ) -> Result<Response<proto::ReportHeldReply>, Status> {
            let r = request.into_inner();
            self.enter("report_held", r.client, r.id)?;
            let report = HeldReport::from_bytes(&r.held).map_err(|e| Status::invalid_argument(e.to_string()))?;
            let mut held = self.shared.held.lock().expect("lock");
            held.push(report);
            Ok(Response::new(proto::ReportHeldReply { first: held.len() == 1 }))
        }

        async fn collect(
            &self,
            request: Request<proto::CollectRequest>,
        ) -> Result<Response<proto::CollectReply>, Status> {
            let r = request.into_inner();
            self.enter("collect", r.client, r.id)?;
            Ok(Response::new(proto::CollectReply { number: 1, uploads: 0 }))
        }

        async fn collect_shares(
            &self,
            _request: Request<proto::CollectSharesRequest>,
        ) -> Result<Response<proto::CollectSharesReply>, Status> {
            Err(Status::unimplemented("fake"))
        }
    }
}

use fake_cluster::{FakeReplica, Shared};

struct FakeBistroCluster {
    cluster: ClusterFile,
    dir: tempfile::TempDir,
    shared: Arc<Shared>,
    replicas: Vec<Arc<FakeReplica>>,
}

/// Four fake replicas, each on its own port, and the cluster file naming them.
async fn fake_cluster() -> FakeBistroCluster {
    let quorum = Quorum::new(4, 1).expect("quorum");
    let mut listeners = Vec::new();
    let mut client_addresses = Vec::new();
    for _ in 0..4 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        client_addresses.push(fides_dealer::Address::parse(&address).expect("address"));
        listeners.push(listener);
    }
    let dealt = fides_dealer::generate_with_client_addresses(
        quorum,
        fides_dealer::default_addresses(quorum),
        client_addresses,
        &mut rand::thread_rng(),
    )
    .expect("cluster");
    let dir = tempfile::tempdir().expect("temp dir");
    fides_dealer::write(&dir.path().join("cluster"), &dealt, false).expect("write the cluster");
    let (cluster, replica_files) = dealt.into_parts();
    let shares: Vec<(usize, blsttc::SecretKeyShare)> =
        replica_files.iter().take(2).map(|r| (r.index().as_usize(), r.signing_share().clone())).collect();
    let shared = Arc::new(Shared::default());
    let mut replicas = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let replica = Arc::new(FakeReplica {
            index,
            cluster: cluster.id().0,
            public: cluster.signing().clone(),
            shares: shares.clone(),
            shared: Arc::clone(&shared),
            corrupt: AtomicBool::new(false),
        });
        replicas.push(Arc::clone(&replica));
        let server = tonic::transport::Server::builder()
            .add_service(proto::bistro_server::BistroServer::from_arc(replica))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
    }
    FakeBistroCluster { cluster, dir, shared, replicas }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_calls_fail_over_with_the_same_id_and_answers_are_verified() {
    use fides_bistro::records::{EventTerms, TicketRequest};
    use fides_bistro::stream::HashAlg;
    use fides_client_sdk::bistro::{BistroOptions, RootCache};

    let fake = fake_cluster().await;
    let options = BistroOptions { backoff: std::time::Duration::from_millis(5), ..BistroOptions::default() };
    let client = BistroClient::with_options(fake.cluster.clone(), options).expect("client");
    let owner = SigningKey::generate(&mut rand::rngs::OsRng);
    let terms = EventTerms {
        deadline_ms: 2000,
        description: "papers".into(),
        owner: owner.verifying_key().to_bytes(),
        hash: HashAlg::Sha256,
        aead: Aead::XChaCha20Poly1305,
        transfer_window_ms: 100,
        nonce: 1,
    };

    // Two replicas unavailable: the third attempt gets it, under the same (client, id).
    fake.shared.unavailable.store(2, Ordering::SeqCst);
    let event = client.create_event(terms.clone(), &owner).await.expect("create");
    assert_eq!(event.record.terms, terms);
    {
        let calls = fake.shared.calls.lock().expect("lock");
        assert_eq!(calls.len(), 3);
        assert!(calls.iter().all(|(_, method, client_number, id)| *method == "create_event"
            && *client_number == client.client_number()
            && *id == calls[0].3));
        let replicas: std::collections::HashSet<usize> = calls.iter().map(|c| c.0).collect();
        assert_eq!(replicas.len(), 3, "each attempt went to another replica");
    }

    let request = TicketRequest {
        event: event.record.event,
        digest: vec![3; 32],
        size: 10,
        contact: "a@example.org".into(),
        file_name: "paper.pdf".into(),
    };
    let (ticket, proof) = client.request_ticket(request.clone()).await.expect("ticket");
    assert_eq!((ticket.size, ticket.time_ms, proof.time_ms), (10, 1000, 1000));

    // A replica that tampers with its answer is passed over; when all do, the error says why.
    fake.replicas[0].corrupt.store(true, Ordering::SeqCst);
    fake.replicas[1].corrupt.store(true, Ordering::SeqCst);
    for _ in 0..4 {
        client.request_ticket(request.clone()).await.expect("an honest replica answers");
    }
    for replica in &fake.replicas {
        replica.corrupt.store(true, Ordering::SeqCst);
    }
    match client.request_ticket(request.clone()).await {
        Err(ClientError::BadReply(reason)) => assert!(reason.contains("does not verify"), "{reason}"),
        other => panic!("expected a bad reply, got {other:?}"),
    }
    for replica in &fake.replicas {
        replica.corrupt.store(false, Ordering::SeqCst);
    }

    // The root cache: one signature check per distinct root, paths always checked.
    let cache = RootCache::new();
    let (ticket, proof) = client.request_ticket_cached(request.clone(), &cache).await.expect("ticket");
    assert_eq!(cache.len(), 1);
    let public = fake.cluster.signing().public_key();
    let id = fake.cluster.id().0;
    let record = fides_bistro::records::Signed::Ticket(ticket.clone());
    cache.verify(&id, &public, &proof, &record).expect("cached");
    let changed = fides_bistro::records::Signed::Ticket(fides_bistro::records::Ticket { size: 11, ..ticket });
    assert!(cache.verify(&id, &public, &proof, &changed).is_err(), "a changed record misses the cached root");
    assert_eq!(cache.len(), 2, "the root the changed record leads to is remembered as failed");
    // The same root with another signature (a valid point, not the cluster's) is checked, not
    // taken from the cache.
    let other = blsttc::SecretKey::random().sign(b"not the root").to_bytes();
    let forged = fides_bistro::proof::EpochProof { signature: other, ..proof.clone() };
    match cache.verify(&id, &public, &forged, &record) {
        Err(fides_bistro::proof::ProofError::Signature) => {}
        other => panic!("a cached root with another signature verified: {other:?}"),
    }

    let (status, _) = client.status(event.record.event, vec![1, 2]).await.expect("status");
    assert_eq!(status.tickets.len(), 2);

    // Refusals are answers, not reasons to try elsewhere.
    let calls_before = fake.shared.calls.lock().expect("lock").len();
    match client.get_event(event.record.event).await {
        Err(ClientError::Status { code: Code::NotFound, .. }) => {}
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
    assert_eq!(fake.shared.calls.lock().expect("lock").len(), calls_before);
    assert_eq!(client.collect(event.record.event, &owner, [5; 32], 1).await.expect("collect"), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_registers_takes_uploads_and_reports_them() {
    use fides_client_sdk::relay::{run_relay, RelayConfig};

    let fake = fake_cluster().await;
    let data = fake.dir.path().join("relay");
    // The cluster is unavailable at first: the relay retries its registration.
    fake.shared.unavailable.store(9, Ordering::SeqCst);
    let config = RelayConfig {
        cluster_file: fake.dir.path().join("cluster").join(fides_dealer::CLUSTER_FILE_NAME),
        data: data.clone(),
        listen: "127.0.0.1:0".parse().expect("address"),
        advertise: None,
        never_deliver: false,
        upload_max: 1 << 20,
    };
    let relay = tokio::spawn(run_relay(config));
    let registered = async {
        loop {
            if let Some(relay) = fake.shared.relays.lock().expect("lock").first().cloned() {
                return relay;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let (key, address, seq) =
        tokio::time::timeout(std::time::Duration::from_secs(8), registered).await.expect("the relay registers");
    assert!(seq > 1_600_000_000_000, "seq is the unix time in ms");
    let stored = std::fs::read_to_string(data.join("relay.key")).expect("key file");
    let secret: [u8; 32] = hex::decode(stored.trim()).expect("hex").try_into().expect("32 bytes");
    assert_eq!(SigningKey::from_bytes(&secret).verifying_key().to_bytes(), key);

    let client = BistroClient::connect(fake.cluster.clone()).expect("client");
    let relays = client.list_relays().await.expect("relays");
    assert_eq!(relays[0].address, address);

    // Upload through the relay: it reports to the (fake) cluster and answers a receipt.
    let mut bytes = Vec::new();
    let event = EventId([6; 16]);
    seal_commit(
        &fake.cluster.id().0,
        &fake.cluster.encryption().public_key(),
        Aead::Aes256Gcm,
        &event,
        4,
        vec![9u8; 70_000].as_slice(),
        &mut bytes,
        &mut rand::thread_rng(),
        &mut |_| {},
    )
    .expect("seal");
    let path = fake.dir.path().join("g.commit");
    std::fs::write(&path, &bytes).expect("write");
    let (receipt, _) = client.upload(&address, &path, &mut |_| {}).await.expect("upload");
    assert_eq!(receipt.intermediary, key);
    assert_eq!(fake.shared.held.lock().expect("lock")[0].receipt, receipt);
    relay.abort();
}
