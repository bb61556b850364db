//! The owner's side of a collection without a cluster: replicas' decryption shares, sealed as the
//! replicas seal them, go through the share book, which recovers each upload's session key, names
//! replicas that sent wrong shares, and refuses when too few shares are valid.

use std::collections::BTreeMap;

use blsttc::DecryptionShare;
use fides_bistro::commit::{open_commit, seal_commit, CommitHeader};
use fides_bistro::records::{EventId, Ticket};
use fides_bistro::stream::{digest_reader, Aead, HashAlg};
use fides_client_sdk::collect::{
    recover_key, sanitize_file_name, shares_associated, CollectError, Manifest, ShareBook, UploadOutcome, UploadStatus,
};
use fides_client_sdk::proto;
use fides_crypto::labeled::LabeledCapsule;
use fides_crypto::sealed::seal_to;
use fides_crypto::x25519_dalek::{PublicKey, StaticSecret};
use fides_crypto::ThresholdKeys;
use fides_dealer::{ClusterFile, Quorum, ReplicaFile};
use fides_types::codec::Wire;
use fides_types::NodeIndex;
use rand::rngs::StdRng;
use rand::SeedableRng;

const EVENT: EventId = EventId([7; 16]);
const NUMBER: u64 = 3;

struct Setup {
    cluster: ClusterFile,
    replicas: Vec<ReplicaFile>,
    rng: StdRng,
    secret: StaticSecret,
    recipient: [u8; 32],
}

fn setup(n: u32, t: u32, seed: u64) -> Setup {
    let quorum = Quorum::new(n, t).expect("quorum");
    let mut rng = StdRng::seed_from_u64(seed);
    let (cluster, replicas) = fides_dealer::generate(quorum, fides_dealer::default_addresses(quorum), &mut rng)
        .expect("cluster")
        .into_parts();
    let secret = StaticSecret::random_from_rng(&mut rng);
    let recipient = PublicKey::from(&secret).to_bytes();
    Setup { cluster, replicas, rng, secret, recipient }
}

/// A submitter's upload: the file, its commit file and the header.
struct Upload {
    plaintext: Vec<u8>,
    commit: Vec<u8>,
    header: CommitHeader,
    record: Ticket,
}

fn upload(setup: &mut Setup, ticket: u64, plaintext: Vec<u8>) -> Upload {
    let cluster_id = setup.cluster.id().0;
    let mut commit = Vec::new();
    seal_commit(
        &cluster_id,
        &setup.cluster.encryption().public_key(),
        Aead::XChaCha20Poly1305,
        &EVENT,
        ticket,
        plaintext.as_slice(),
        &mut commit,
        &mut setup.rng,
        &mut |_| {},
    )
    .expect("seal");
    let header = CommitHeader::read(&mut commit.as_slice()).expect("header");
    let (digest, size) = digest_reader(HashAlg::Sha256, plaintext.as_slice()).expect("digest");
    let record = Ticket {
        event: EVENT,
        ticket,
        hash: HashAlg::Sha256,
        digest,
        size,
        contact: "a@example.org".into(),
        file_name: "paper.pdf".into(),
        time_ms: 1_700_000_000_000,
    };
    Upload { plaintext, commit, header, record }
}

/// Replica `index`'s decryption share of `capsule`, as the replica computes it.
fn share(setup: &Setup, index: u32, capsule: &[u8]) -> DecryptionShare {
    let capsule = LabeledCapsule::from_bytes(capsule).expect("capsule");
    let replica = &setup.replicas[index as usize];
    let keys = ThresholdKeys::new(
        NodeIndex(index),
        setup.cluster.quorum().n(),
        setup.cluster.encryption().clone(),
        replica.encryption_share().clone(),
    );
    keys.labeled_share(&capsule)
}

/// A replica's `CollectShares` answer: its `shares` in upload order, sealed to the recipient.
fn reply(setup: &mut Setup, index: u32, uploads: &[&Upload], shares: &[DecryptionShare]) -> proto::CollectSharesReply {
    let bytes: Vec<u8> = shares.iter().flat_map(|s| s.to_bytes()).collect();
    let associated = shares_associated(&setup.cluster.id().0, &EVENT, NUMBER, index);
    let sealed = seal_to(&setup.recipient, &associated, &bytes, &mut setup.rng).expect("seal");
    proto::CollectSharesReply {
        replica: index,
        uploads: uploads
            .iter()
            .map(|u| proto::UploadInfo {
                ticket: u.header.ticket,
                upload_hash: fides_crypto::sha256(&u.commit).to_vec(),
                upload_size: u.commit.len() as u64,
                capsule: u.header.capsule.clone(),
                stored_by: vec![index],
                ticket_record: u.record.to_bytes(),
            })
            .collect(),
        sealed_shares: sealed,
    }
}

/// An honest replica's answer.
fn honest(setup: &mut Setup, index: u32, uploads: &[&Upload]) -> proto::CollectSharesReply {
    let shares: Vec<DecryptionShare> = uploads.iter().map(|u| share(setup, index, &u.header.capsule)).collect();
    reply(setup, index, uploads, &shares)
}

/// A Byzantine replica's answer: its own shares, but of other capsules.
fn wrong(setup: &mut Setup, index: u32, uploads: &[&Upload]) -> proto::CollectSharesReply {
    let others: Vec<Upload> =
        uploads.iter().map(|u| upload(setup, u.header.ticket, b"something else".to_vec())).collect();
    let shares: Vec<DecryptionShare> = others.iter().map(|o| share(setup, index, &o.header.capsule)).collect();
    reply(setup, index, uploads, &shares)
}

fn decrypt(setup: &Setup, upload: &Upload, key: &[u8; 32]) -> Vec<u8> {
    let mut input = upload.commit.as_slice();
    let header = CommitHeader::read(&mut input).expect("header");
    let mut plaintext = Vec::new();
    open_commit(&setup.cluster.id().0, &header, key, input, &mut plaintext).expect("the file decrypts");
    plaintext
}

fn id(upload: &Upload) -> (u64, [u8; 32]) {
    (upload.header.ticket, fides_crypto::sha256(&upload.commit))
}

#[test]
fn the_owner_recovers_each_session_key_from_sealed_replies_and_decrypts_the_files() {
    let mut setup = setup(4, 1, 1);
    let first = upload(&mut setup, 1, b"the first submission".repeat(5000));
    let second = upload(&mut setup, 2, Vec::new());
    let uploads = [&first, &second];
    let replies: Vec<_> = (0..4).map(|i| honest(&mut setup, i, &uploads)).collect();
    let cluster = setup.cluster.clone();
    let mut book = ShareBook::new(&cluster, EVENT, NUMBER);
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(book.add_reply(i as u32, reply, &setup.secret), Ok(2));
        book.recover();
        // One reply is not t + 1: no upload counts yet.
        assert_eq!(book.agreed().is_empty(), i == 0);
        assert_eq!(book.complete(2), i >= 1);
    }
    let agreed = book.agreed();
    assert_eq!(agreed.len(), 2);
    for (upload, agreed) in uploads.iter().zip(&agreed) {
        assert_eq!(agreed.id(), id(upload));
        assert_eq!(agreed.stored_by, vec![0, 1, 2, 3]);
        let key = book.key(&agreed.id()).expect("a key");
        assert!(key.bad.is_empty());
        assert!(!key.checked, "honest shares need no check");
        assert_eq!(decrypt(&setup, upload, &key.key), upload.plaintext);
    }
    assert!(book.faults().is_empty());
    assert!(book.ignored().is_empty());
}

#[test]
fn a_replica_sending_shares_of_another_capsule_is_named_and_the_others_suffice() {
    for (n, t, bad) in [(4u32, 1u32, vec![0u32]), (7, 2, vec![0, 2])] {
        let mut setup = setup(n, t, 2 + u64::from(n));
        let file = upload(&mut setup, 5, b"a paper".repeat(1000));
        let replies: Vec<_> = (0..n)
            .map(|i| if bad.contains(&i) { wrong(&mut setup, i, &[&file]) } else { honest(&mut setup, i, &[&file]) })
            .collect();
        let cluster = setup.cluster.clone();
        let mut book = ShareBook::new(&cluster, EVENT, NUMBER);
        for (i, reply) in replies.iter().enumerate() {
            book.add_reply(i as u32, reply, &setup.secret).expect("the reply opens");
        }
        book.recover();
        let agreed = book.agreed();
        assert_eq!(agreed.len(), 1);
        let key = book.key(&agreed[0].id()).expect("a key despite the wrong shares");
        assert!(key.checked);
        let named: Vec<NodeIndex> = bad.iter().map(|&i| NodeIndex(i)).collect();
        assert_eq!(key.bad, named);
        assert_eq!(book.bad_shares(&agreed[0]), named);
        assert_eq!(decrypt(&setup, &file, &key.key), file.plaintext);
        let faults = book.faults();
        assert_eq!(faults.keys().copied().collect::<Vec<_>>(), bad);
        assert!(faults[&bad[0]][0].contains("invalid decryption share for ticket 5"), "{faults:?}");

        // The pure function directly, with every share.
        let shares: BTreeMap<NodeIndex, DecryptionShare> = agreed[0].shares.clone();
        let direct = recover_key(&setup.cluster, &EVENT, 5, &file.header.capsule, &shares).expect("recovered");
        assert_eq!(direct.key, key.key);
        assert_eq!(direct.bad, named);
    }
}

#[test]
fn only_t_valid_shares_fail_with_a_clear_error_naming_the_bad_replica() {
    let mut setup = setup(4, 1, 3);
    let file = upload(&mut setup, 9, b"late".to_vec());
    let good = share(&setup, 1, &file.header.capsule);
    let other = upload(&mut setup, 9, b"other".to_vec());
    let bad = share(&setup, 0, &other.header.capsule);
    let shares: BTreeMap<NodeIndex, DecryptionShare> = [(NodeIndex(0), bad), (NodeIndex(1), good.clone())].into();
    let error = recover_key(&setup.cluster, &EVENT, 9, &file.header.capsule, &shares).expect_err("t valid shares");
    assert!(
        matches!(&error, CollectError::NotEnoughShares { ticket: 9, given: 2, need: 2, bad } if bad == &vec![NodeIndex(0)]),
        "{error:?}"
    );
    assert_eq!(error.to_string(), "ticket 9: 2 decryption shares (invalid ones from replicas 0), 2 valid ones needed");
    let alone: BTreeMap<NodeIndex, DecryptionShare> = [(NodeIndex(1), good)].into();
    let error = recover_key(&setup.cluster, &EVENT, 9, &file.header.capsule, &alone).expect_err("t shares");
    assert_eq!(error.to_string(), "ticket 9: 1 decryption shares, 2 valid ones needed");

    // Through the book: t + 1 replicas list the upload but one of them lies; no key yet, and the
    // upload is not settled (an honest replica's shares may still come).
    let replies = [wrong(&mut setup, 0, &[&file]), honest(&mut setup, 1, &[&file])];
    let cluster = setup.cluster.clone();
    let mut book = ShareBook::new(&cluster, EVENT, NUMBER);
    for (i, reply) in replies.iter().enumerate() {
        book.add_reply(i as u32, reply, &setup.secret).expect("opens");
    }
    book.recover();
    assert!(book.key(&id(&file)).is_none());
    assert!(book.failure(&id(&file)).is_some_and(|why| why.contains("invalid ones from replicas 0")));
    assert!(!book.complete(1));
    let third = honest(&mut setup, 2, &[&file]);
    book.add_reply(2, &third, &setup.secret).expect("opens");
    book.recover();
    let key = book.key(&id(&file)).expect("the third replica's share completes it");
    assert_eq!(decrypt(&setup, &file, &key.key), file.plaintext);
    assert!(book.complete(1));
}

#[test]
fn replies_that_do_not_open_or_come_from_another_replica_are_unusable() {
    let mut setup = setup(4, 1, 4);
    let file = upload(&mut setup, 1, b"x".to_vec());
    let cluster = setup.cluster.clone();
    let mut book = ShareBook::new(&cluster, EVENT, NUMBER);

    // Replica 1's answer presented as replica 0's.
    let other = honest(&mut setup, 1, &[&file]);
    assert_eq!(book.add_reply(0, &other, &setup.secret), Err("answered as replica 1".to_string()));
    // Sealed for another collection.
    let mut stale = honest(&mut setup, 1, &[&file]);
    let associated = shares_associated(&setup.cluster.id().0, &EVENT, NUMBER + 1, 1);
    stale.sealed_shares =
        seal_to(&setup.recipient, &associated, &share(&setup, 1, &file.header.capsule).to_bytes(), &mut setup.rng)
            .expect("seal");
    assert!(book.add_reply(1, &stale, &setup.secret).is_err_and(|e| e.contains("do not open")));
    // Fewer share bytes than uploads listed.
    let mut short = honest(&mut setup, 2, &[&file]);
    let associated = shares_associated(&setup.cluster.id().0, &EVENT, NUMBER, 2);
    short.sealed_shares = seal_to(&setup.recipient, &associated, &[1; 47], &mut setup.rng).expect("seal");
    assert!(book.add_reply(2, &short, &setup.secret).is_err_and(|e| e.contains("47 bytes of shares for 1 uploads")));
    // A replica that does not exist.
    let ghost = honest(&mut setup, 3, &[&file]);
    assert!(book.add_reply(9, &ghost, &setup.secret).is_err());

    assert_eq!(book.usable(), 0);
    assert_eq!(book.faults().keys().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
}

#[test]
fn uploads_listed_by_fewer_than_t_plus_1_replicas_or_listed_otherwise_do_not_count() {
    let mut setup = setup(4, 1, 5);
    let real = upload(&mut setup, 1, b"real".to_vec());
    let fake = upload(&mut setup, 2, b"fake".to_vec());
    // Replica 3 lists a fake upload and another size for the real one.
    let mut liar = honest(&mut setup, 3, &[&real, &fake]);
    liar.uploads[0].upload_size += 1;
    let replies = [honest(&mut setup, 0, &[&real]), honest(&mut setup, 1, &[&real]), liar];
    let cluster = setup.cluster.clone();
    let mut book = ShareBook::new(&cluster, EVENT, NUMBER);
    for (index, reply) in [0u32, 1, 3].into_iter().zip(&replies) {
        book.add_reply(index, reply, &setup.secret).expect("opens");
    }
    book.recover();
    let agreed = book.agreed();
    assert_eq!(agreed.iter().map(|u| u.ticket).collect::<Vec<_>>(), vec![1]);
    assert_eq!(agreed[0].conflicting, vec![3]);
    assert_eq!(agreed[0].shares.keys().copied().collect::<Vec<_>>(), vec![NodeIndex(0), NodeIndex(1)]);
    assert_eq!(book.ignored(), vec![(id(&fake), vec![3])]);
    assert!(book.faults()[&3][0].contains("otherwise than t + 1 replicas"));
    // The fake upload keeps the book from being complete until every replica answered.
    assert!(!book.complete(1));
    let key = book.key(&agreed[0].id()).expect("key");
    assert_eq!(decrypt(&setup, &real, &key.key), real.plaintext);
}

#[test]
fn file_names_from_tickets_are_made_safe() {
    assert_eq!(sanitize_file_name("paper.pdf"), "paper.pdf");
    assert_eq!(sanitize_file_name("../../etc/passwd"), "_.._etc_passwd");
    assert_eq!(sanitize_file_name("..\\x"), "_x");
    assert_eq!(sanitize_file_name(".hidden"), "hidden");
    assert_eq!(sanitize_file_name(""), "file");
    assert_eq!(sanitize_file_name("..."), "file");
    assert_eq!(sanitize_file_name("a\nb\0c"), "a_b_c");
    let long = "é".repeat(300);
    let cut = sanitize_file_name(&long);
    assert!(cut.len() <= 200 && cut.chars().all(|c| c == 'é'));
}

#[test]
fn the_manifest_says_for_each_upload_whether_it_was_verified_and_why_not() {
    let record = Ticket {
        event: EVENT,
        ticket: 4,
        hash: HashAlg::Blake3,
        digest: [1; 32],
        size: 10,
        contact: "x@y\nz".into(),
        file_name: "f".into(),
        time_ms: 0,
    };
    let manifest = Manifest {
        event: EVENT,
        number: 2,
        path: "out/manifest.txt".into(),
        uploads: vec![
            UploadOutcome {
                ticket: 4,
                upload_hash: [2; 32],
                upload_size: 99,
                record: Some(record),
                saved: Some("out/4-f".into()),
                bad_shares: vec![NodeIndex(3)],
                status: UploadStatus::Verified,
            },
            UploadOutcome {
                ticket: 5,
                upload_hash: [3; 32],
                upload_size: 99,
                record: None,
                saved: None,
                bad_shares: Vec::new(),
                status: UploadStatus::NotVerified("not fetched: replica 0: gone".into()),
            },
        ],
        faults: [(3, vec!["invalid decryption share for ticket 4".to_string()])].into(),
        unanswered: BTreeMap::new(),
        ignored: Vec::new(),
    };
    assert!(!manifest.all_verified());
    assert_eq!(manifest.verified(), 1);
    let text = manifest.render();
    assert!(text.contains("contact: x@y\\nz\n"), "{text}");
    assert!(text.contains("agreed time: 1970-01-01T00:00:00.000Z\n"));
    assert!(text.contains("digest (blake3): "));
    assert!(text.contains("invalid shares from replicas: 3\n"));
    assert!(text.contains("replica 3 misbehaved: invalid decryption share for ticket 4\n"));
    assert!(text.contains("status: verified\n"));
    assert!(text.contains("status: NOT VERIFIED: not fetched: replica 0: gone\n"));
}

// ---------------------------------------------------------------------------------------------
// The whole collection against fake replicas (gRPC on local ports, no consensus)
// ---------------------------------------------------------------------------------------------

mod fake {
    use std::collections::BTreeMap;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    use ed25519_dalek::SigningKey;
    use fides_bistro::commit::CommitHeader;
    use fides_bistro::proof::{root_point, EpochProof};
    use fides_bistro::records::{EventId, EventRecord, EventTerms, Signed, Ticket};
    use fides_bistro::stream::{Aead, HashAlg};
    use fides_client_sdk::collect::shares_associated;
    use fides_client_sdk::proto;
    use fides_crypto::labeled::LabeledCapsule;
    use fides_crypto::ThresholdKeys;
    use fides_dealer::{Address, ClusterFile, Quorum, ReplicaFile};
    use fides_types::codec::Wire;
    use fides_types::NodeIndex;
    use futures::Stream;
    use tonic::{Request, Response, Status, Streaming};

    /// An upload the fake replicas know.
    pub struct Held {
        pub commit: Vec<u8>,
        pub header: CommitHeader,
        pub record: Ticket,
        pub stored_by: Vec<u32>,
    }

    /// What every fake replica shares.
    pub struct World {
        pub cluster: ClusterFile,
        pub event: EventRecord,
        pub proof: EpochProof,
        pub uploads: Vec<Held>,
        pub recipient: Mutex<Option<[u8; 32]>>,
        /// (replica, ticket, offset) of every Fetch.
        pub fetches: Mutex<Vec<(u32, u64, u64)>>,
    }

    /// One fake replica.
    #[derive(Clone)]
    pub struct Replica {
        pub index: u32,
        pub world: Arc<World>,
        pub encryption: ThresholdKeys,
        /// Sends shares of other capsules.
        pub wrong_shares: bool,
        /// `NOT_FOUND` answers to `CollectShares` before it answers.
        pub lagging: Arc<AtomicU32>,
        /// Its next Fetch breaks after 1000 bytes.
        pub break_once: Arc<AtomicBool>,
    }

    /// A dealt cluster whose replicas serve clients on the given local ports.
    pub fn cluster(ports: &[u16], seed: u64) -> (ClusterFile, Vec<ReplicaFile>) {
        use rand::SeedableRng;
        let n = ports.len() as u32;
        let quorum = Quorum::new(n, (n - 1) / 3).expect("quorum");
        let clients = ports.iter().map(|p| Address::parse(&format!("127.0.0.1:{p}")).expect("address")).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        fides_dealer::generate_with_client_addresses(quorum, fides_dealer::default_addresses(quorum), clients, &mut rng)
            .expect("cluster")
            .into_parts()
    }

    /// The event record of `owner`, signed by `t + 1` of `replicas` as the only leaf of epoch 5.
    pub fn signed_event(
        cluster: &ClusterFile,
        replicas: &[ReplicaFile],
        event: EventId,
        owner: &SigningKey,
    ) -> (EventRecord, EpochProof) {
        let record = EventRecord {
            event,
            terms: EventTerms {
                deadline_ms: 1_800_000_000_000,
                description: "papers".into(),
                owner: owner.verifying_key().to_bytes(),
                hash: HashAlg::Sha256,
                aead: Aead::XChaCha20Poly1305,
                transfer_window_ms: 600_000,
                nonce: 1,
            },
            created_ms: 1_700_000_000_000,
        };
        let id = cluster.id().0;
        let leaf = Signed::Event(record.clone()).leaf(&id);
        let point = root_point(&id, 5, record.created_ms, 1, &leaf);
        let keys: Vec<ThresholdKeys> = replicas.iter().map(|r| r.signing_keys(cluster).expect("keys")).collect();
        let shares: BTreeMap<NodeIndex, _> =
            keys.iter().enumerate().map(|(i, k)| (NodeIndex(i as u32), k.sign_share(point))).collect();
        let signature = keys[0].combine(&shares, point).expect("signature").to_bytes();
        let proof = EpochProof {
            format: fides_bistro::proof::FORMAT_BISTRO_TREE,
            epoch: 5,
            time_ms: record.created_ms,
            index: 0,
            count: 1,
            path: Vec::new(),
            signature,
        };
        (record, proof)
    }

    fn unimplemented<T>() -> Result<Response<T>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    #[tonic::async_trait]
    impl proto::bistro_server::Bistro for Replica {
        async fn create_event(
            &self,
            _: Request<proto::CreateEventRequest>,
        ) -> Result<Response<proto::SignedReply>, Status> {
            unimplemented()
        }

        async fn get_event(&self, _: Request<proto::GetEventRequest>) -> Result<Response<proto::SignedReply>, Status> {
            Ok(Response::new(proto::SignedReply {
                record: Signed::Event(self.world.event.clone()).to_bytes(),
                proof: self.world.proof.to_bytes(),
                epoch: 5,
                index: 0,
            }))
        }

        async fn list_events(
            &self,
            _: Request<proto::ListEventsRequest>,
        ) -> Result<Response<proto::ListEventsReply>, Status> {
            unimplemented()
        }

        async fn request_ticket(
            &self,
            _: Request<proto::TicketRequest>,
        ) -> Result<Response<proto::SignedReply>, Status> {
            unimplemented()
        }

        async fn status(&self, _: Request<proto::TicketStatusRequest>) -> Result<Response<proto::SignedReply>, Status> {
            unimplemented()
        }

        async fn register_relay(
            &self,
            _: Request<proto::RegisterRelayRequest>,
        ) -> Result<Response<proto::RegisterRelayReply>, Status> {
            unimplemented()
        }

        async fn list_relays(
            &self,
            _: Request<proto::ListRelaysRequest>,
        ) -> Result<Response<proto::ListRelaysReply>, Status> {
            unimplemented()
        }

        async fn report_held(
            &self,
            _: Request<proto::ReportHeldRequest>,
        ) -> Result<Response<proto::ReportHeldReply>, Status> {
            unimplemented()
        }

        async fn collect(
            &self,
            request: Request<proto::CollectRequest>,
        ) -> Result<Response<proto::CollectReply>, Status> {
            let recipient: [u8; 32] =
                request.into_inner().recipient.try_into().map_err(|_| Status::invalid_argument("recipient"))?;
            *self.world.recipient.lock().expect("lock") = Some(recipient);
            Ok(Response::new(proto::CollectReply { number: 1, uploads: self.world.uploads.len() as u64 }))
        }

        async fn collect_shares(
            &self,
            request: Request<proto::CollectSharesRequest>,
        ) -> Result<Response<proto::CollectSharesReply>, Status> {
            let request = request.into_inner();
            let recipient = *self.world.recipient.lock().expect("lock");
            let Some(recipient) = recipient else { return Err(Status::not_found("no collection yet")) };
            if request.number != 1 || request.event != self.world.event.event.0 {
                return Err(Status::not_found("no such collection"));
            }
            if self.lagging.load(Ordering::SeqCst) > 0 {
                self.lagging.fetch_sub(1, Ordering::SeqCst);
                return Err(Status::not_found("not applied here yet"));
            }
            let mut shares = Vec::new();
            let mut uploads = Vec::new();
            for held in &self.world.uploads {
                let capsule = if self.wrong_shares {
                    let other = LabeledCapsule::encrypt(
                        &self.world.cluster.encryption().public_key(),
                        b"wrong",
                        &[0; 40],
                        &mut rand::thread_rng(),
                    )
                    .expect("capsule");
                    other
                } else {
                    LabeledCapsule::from_bytes(&held.header.capsule).expect("capsule")
                };
                shares.extend_from_slice(&self.encryption.labeled_share(&capsule).to_bytes());
                uploads.push(proto::UploadInfo {
                    ticket: held.record.ticket,
                    upload_hash: fides_crypto::sha256(&held.commit).to_vec(),
                    upload_size: held.commit.len() as u64,
                    capsule: held.header.capsule.clone(),
                    stored_by: held.stored_by.clone(),
                    ticket_record: held.record.to_bytes(),
                });
            }
            let associated = shares_associated(&self.world.cluster.id().0, &self.world.event.event, 1, self.index);
            let sealed =
                fides_crypto::sealed::seal_to(&recipient, &associated, &shares, &mut rand::thread_rng()).expect("seal");
            Ok(Response::new(proto::CollectSharesReply { replica: self.index, uploads, sealed_shares: sealed }))
        }
    }

    type FetchStream = Pin<Box<dyn Stream<Item = Result<proto::FetchChunk, Status>> + Send>>;

    #[tonic::async_trait]
    impl proto::intermediary_server::Intermediary for Replica {
        async fn upload(
            &self,
            _: Request<Streaming<proto::UploadChunk>>,
        ) -> Result<Response<proto::UploadReply>, Status> {
            unimplemented()
        }

        type FetchStream = FetchStream;

        async fn fetch(&self, request: Request<proto::FetchRequest>) -> Result<Response<FetchStream>, Status> {
            let request = request.into_inner();
            self.world.fetches.lock().expect("lock").push((self.index, request.ticket, request.offset));
            let Some(held) = self.world.uploads.iter().find(|u| {
                u.record.ticket == request.ticket && fides_crypto::sha256(&u.commit).as_slice() == request.upload_hash
            }) else {
                return Err(Status::not_found("no such upload"));
            };
            if !held.stored_by.contains(&self.index) {
                return Err(Status::not_found("not held here"));
            }
            let offset = request.offset as usize;
            let rest = held.commit.get(offset..).ok_or_else(|| Status::out_of_range("offset"))?;
            let mut chunks: Vec<Result<proto::FetchChunk, Status>> =
                rest.chunks(64 * 1024).map(|c| Ok(proto::FetchChunk { data: c.to_vec() })).collect();
            if self.break_once.swap(false, Ordering::SeqCst) {
                chunks = vec![
                    Ok(proto::FetchChunk { data: rest[..1000].to_vec() }),
                    Err(Status::unavailable("the connection broke")),
                ];
            }
            Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
        }

        async fn confirm(&self, _: Request<proto::ConfirmRequest>) -> Result<Response<proto::ConfirmReply>, Status> {
            unimplemented()
        }

        async fn identity(&self, _: Request<proto::IdentityRequest>) -> Result<Response<proto::IdentityReply>, Status> {
            unimplemented()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collect_saves_the_verified_files_despite_a_lying_replica_a_lagging_one_and_a_broken_stream() {
    use std::sync::atomic::{AtomicBool, AtomicU32};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use ed25519_dalek::SigningKey;
    use fides_client_sdk::bistro::BistroClient;
    use fides_client_sdk::collect::{collect_with, CollectOptions, Progress};

    let mut listeners = Vec::new();
    for _ in 0..4 {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind"));
    }
    let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().expect("address").port()).collect();
    let (cluster, replicas) = fake::cluster(&ports, 11);
    let owner = SigningKey::from_bytes(&[5; 32]);
    let (event, proof) = fake::signed_event(&cluster, &replicas, EVENT, &owner);

    let mut setup = Setup {
        cluster: cluster.clone(),
        replicas: replicas.clone(),
        rng: StdRng::seed_from_u64(12),
        secret: StaticSecret::random_from_rng(StdRng::seed_from_u64(13)),
        recipient: [0; 32],
    };
    let paper = upload(&mut setup, 1, (0..200_000u32).map(|i| (i % 251) as u8).collect());
    let mut forged = upload(&mut setup, 2, b"not what the ticket says".to_vec());
    forged.record.digest = [0; 32];
    forged.record.file_name = "../evil".into();
    let lost = upload(&mut setup, 3, b"nobody kept this".to_vec());
    let uploads = vec![
        fake::Held {
            commit: paper.commit.clone(),
            header: paper.header.clone(),
            record: paper.record.clone(),
            stored_by: vec![0, 1],
        },
        fake::Held {
            commit: forged.commit.clone(),
            header: forged.header.clone(),
            record: forged.record.clone(),
            stored_by: vec![2],
        },
        fake::Held {
            commit: lost.commit.clone(),
            header: lost.header.clone(),
            record: lost.record.clone(),
            stored_by: vec![],
        },
    ];
    let world = Arc::new(fake::World {
        cluster: cluster.clone(),
        event,
        proof,
        uploads,
        recipient: Mutex::new(None),
        fetches: Mutex::new(Vec::new()),
    });
    for (index, listener) in listeners.into_iter().enumerate() {
        let replica = &replicas[index];
        let fake = fake::Replica {
            index: index as u32,
            world: Arc::clone(&world),
            encryption: ThresholdKeys::new(
                NodeIndex(index as u32),
                4,
                cluster.encryption().clone(),
                replica.encryption_share().clone(),
            ),
            wrong_shares: index == 0,
            // Replica 2 answers late, replica 3 not before the collection is complete: the
            // wrong shares of replica 0 are among the first t + 1 and must be found.
            lagging: Arc::new(AtomicU32::new([0, 0, 3, 1_000_000][index])),
            break_once: Arc::new(AtomicBool::new(index == 0)),
        };
        let server = tonic::transport::Server::builder()
            .add_service(proto::bistro_server::BistroServer::new(fake.clone()))
            .add_service(proto::intermediary_server::IntermediaryServer::new(fake))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
    }

    let client = BistroClient::connect(cluster.clone()).expect("client");
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("collected");
    let options = CollectOptions {
        shares_wait: Duration::from_secs(10),
        retry_pause: Duration::from_millis(50),
        fetch_attempts: 3,
        chunk_timeout: Duration::from_secs(5),
    };

    // Not the owner: refused before anything is ordered.
    let stranger = SigningKey::from_bytes(&[6; 32]);
    let refused = collect_with(&client, &cluster, EVENT, &stranger, &out, &options, &mut |_| {}).await;
    assert!(matches!(refused, Err(CollectError::NotOwner { .. })), "{refused:?}");
    assert!(world.recipient.lock().expect("lock").is_none());

    let mut steps = Vec::new();
    let manifest = collect_with(&client, &cluster, EVENT, &owner, &out, &options, &mut |step| steps.push(step))
        .await
        .expect("collected");
    assert!(steps.contains(&Progress::Collected { number: 1, uploads: 3 }));
    assert_eq!(manifest.uploads.len(), 3);
    assert!(!manifest.all_verified());
    assert_eq!(manifest.verified(), 1);

    let [first, second, third] = &manifest.uploads[..] else { panic!("three uploads") };
    assert_eq!(first.status, UploadStatus::Verified, "{first:?}");
    let saved = first.saved.as_ref().expect("saved");
    assert_eq!(saved, &out.join("1-paper.pdf"));
    assert_eq!(std::fs::read(saved).expect("read"), paper.plaintext);
    assert!(matches!(&second.status, UploadStatus::NotVerified(why) if why.contains("digest")), "{second:?}");
    assert!(second.saved.is_none());
    assert!(matches!(&third.status, UploadStatus::NotVerified(why) if why.contains("not fetched")), "{third:?}");
    for upload in &manifest.uploads {
        assert_eq!(upload.bad_shares, vec![NodeIndex(0)], "ticket {}", upload.ticket);
    }
    assert_eq!(manifest.faults.keys().copied().collect::<Vec<_>>(), vec![0]);

    // The broken stream was resumed at the offset reached, from the same replica.
    let fetches = world.fetches.lock().expect("lock").clone();
    let of_paper: Vec<(u32, u64)> = fetches.iter().filter(|f| f.1 == 1).map(|f| (f.0, f.2)).collect();
    assert_eq!(of_paper, vec![(0, 0), (0, 1000)]);

    // Only the verified file and the manifest are left.
    let mut names: Vec<String> =
        std::fs::read_dir(&out).expect("dir").map(|e| e.expect("entry").file_name().to_string_lossy().into()).collect();
    names.sort();
    assert_eq!(names, vec!["1-paper.pdf".to_string(), "manifest.txt".to_string()]);
    let text = std::fs::read_to_string(&manifest.path).expect("manifest");
    assert_eq!(text, manifest.render());
    assert!(text.contains("status: verified\n"));
    assert!(text.contains("ticket: 3\n"));
    assert!(text.contains("replica 0 misbehaved: invalid decryption share for ticket 1"));
}
