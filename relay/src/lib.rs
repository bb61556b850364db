//! Intermediaries: they take encrypted uploads (commit files) from submitters, report them to the
//! cluster, and hand them on to the replicas. Replicas and relays both serve the `Intermediary`
//! gRPC service ([`IntermediaryService`]) over a [`BlobStore`]; a relay (`bistro relay`, run by
//! the client SDK's `relay::run_relay`) is a stand-alone, untrusted one with its own Ed25519 key,
//! registered with the cluster.
//!
//! An intermediary answers an upload only once the cluster has recorded that it holds it (through
//! its [`ClusterReporter`]), and it answers with a signed [`Receipt`]: the submitter's evidence that
//! the intermediary took the file.

#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use fides_bistro::commit::{CommitHeader, COMMIT_MAGIC, HEADER_LEN};
use fides_bistro::records::{
    capsule_label, domain, ed_verify, EventId, HeldReport, Receipt, StoredReport, CAPSULE_MAX,
};
use fides_crypto::labeled::LabeledCapsule;
use fides_dealer::ClusterFile;
use fides_types::codec::{put_bytes, DecodeError, Reader, Wire};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use fides_api::proto;
use fides_api::proto::intermediary_server::{Intermediary, IntermediaryServer};
use fides_api::CHUNK;

const UPLOADS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("uploads");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_RECEIPT: &str = "next receipt";

/// Milliseconds since the Unix epoch by this machine's clock.
fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// The blob store
// ---------------------------------------------------------------------------------------------

/// Why the blob store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{what} {}: {error}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        error: std::io::Error,
    },
    /// The index database failed.
    #[error("the index database: {0}")]
    Database(String),
    /// The index holds something unreadable.
    #[error("the index is corrupt: {0}")]
    Corrupt(String),
    /// A blob was committed under the key of other bytes.
    #[error("the upload's hash {actual} differs from its key's {expected}")]
    HashMismatch {
        /// The key's hash (hex).
        expected: String,
        /// The written bytes' hash (hex).
        actual: String,
    },
}

macro_rules! db_err {
    ($($ty:ty),*) => {$(
        impl From<$ty> for StoreError {
            fn from(e: $ty) -> Self {
                StoreError::Database(e.to_string())
            }
        }
    )*};
}
db_err!(redb::DatabaseError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |error| StoreError::Io { what, path, error }
}

/// Names one upload: event id (16) ‖ ticket (8, big-endian) ‖ upload hash (32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UploadKey {
    /// The event.
    pub event: EventId,
    /// The ticket.
    pub ticket: u64,
    /// SHA-256 of the commit file.
    pub upload_hash: [u8; 32],
}

impl UploadKey {
    /// Length of the key's bytes.
    pub const LEN: usize = 56;

    /// The key's bytes (they sort by event, then ticket).
    pub fn to_bytes(&self) -> [u8; UploadKey::LEN] {
        let mut out = [0u8; UploadKey::LEN];
        out[..16].copy_from_slice(&self.event.0);
        out[16..24].copy_from_slice(&self.ticket.to_be_bytes());
        out[24..].copy_from_slice(&self.upload_hash);
        out
    }

    /// Parse the key's bytes.
    pub fn from_bytes(bytes: &[u8]) -> Option<UploadKey> {
        if bytes.len() != UploadKey::LEN {
            return None;
        }
        Some(UploadKey {
            event: EventId(bytes[..16].try_into().ok()?),
            ticket: u64::from_be_bytes(bytes[16..24].try_into().ok()?),
            upload_hash: bytes[24..].try_into().ok()?,
        })
    }

    /// The key of the upload a receipt is for.
    pub fn of_receipt(receipt: &Receipt) -> UploadKey {
        UploadKey { event: receipt.event, ticket: receipt.ticket, upload_hash: receipt.upload_hash }
    }

    /// The key named by the fields of a gRPC request.
    fn from_request(event: &[u8], ticket: u64, upload_hash: &[u8]) -> Result<UploadKey, Status> {
        let event: [u8; 16] = event
            .try_into()
            .map_err(|_| Status::invalid_argument(format!("an event id is 16 bytes, not {}", event.len())))?;
        let upload_hash: [u8; 32] = upload_hash
            .try_into()
            .map_err(|_| Status::invalid_argument(format!("an upload hash is 32 bytes, not {}", upload_hash.len())))?;
        Ok(UploadKey { event: EventId(event), ticket, upload_hash })
    }
}

impl std::fmt::Display for UploadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "event {} ticket {} upload {}", self.event, self.ticket, hex::encode(self.upload_hash))
    }
}

/// What the index keeps of a held upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobEntry {
    /// The receipt given for it.
    pub receipt: Receipt,
    /// This intermediary's signature on the receipt.
    pub signature: [u8; 64],
    /// The replicas that confirmed they hold it.
    pub confirmations: BTreeSet<u32>,
}

impl Wire for BlobEntry {
    fn encode(&self, out: &mut Vec<u8>) {
        put_bytes(out, &self.receipt.to_bytes());
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(&(self.confirmations.len() as u32).to_le_bytes());
        for replica in &self.confirmations {
            out.extend_from_slice(&replica.to_le_bytes());
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let receipt = Receipt::from_bytes(reader.bytes(256)?)?;
        let signature = reader.array()?;
        let count = reader.u32()?;
        if count > 4096 {
            return Err(DecodeError::TooLong { len: u64::from(count), max: 4096 });
        }
        let confirmations = (0..count).map(|_| reader.u32()).collect::<Result<_, _>>()?;
        Ok(BlobEntry { receipt, signature, confirmations })
    }
}

struct StoreInner {
    blobs: PathBuf,
    tmp: PathBuf,
    db: Database,
}

impl StoreInner {
    fn blob_path(&self, hash: &[u8; 32]) -> PathBuf {
        let name = hex::encode(hash);
        self.blobs.join(&name[..2]).join(name)
    }

    fn get(&self, key: &UploadKey) -> Result<Option<BlobEntry>, StoreError> {
        let read = self.db.begin_read()?;
        let table = read.open_table(UPLOADS)?;
        let value = table.get(key.to_bytes().as_slice())?;
        value
            .map(|v| BlobEntry::from_bytes(v.value()).map_err(|e| StoreError::Corrupt(format!("entry of {key}: {e}"))))
            .transpose()
    }
}

/// Uploads on disk, content-addressed by their SHA-256 (`blobs/<2 hex>/<64 hex>`), with an index
/// in redb (`intermediary.redb`) from [`UploadKey`] to [`BlobEntry`]. Cheap to clone.
///
/// A blob is written to `tmp/`, fsync'd, renamed into place and its directory fsync'd before its
/// index entry is written; an entry is removed before its blob. Opening the store removes what a
/// crash can leave: temporary files, and blobs without an entry.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<StoreInner>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore").field("blobs", &self.inner.blobs).finish()
    }
}

/// A blob being written: hashes and counts what it is given. Dropped without
/// [`BlobStore::commit`], it removes its temporary file.
#[derive(Debug)]
pub struct BlobWriter {
    file: Option<tokio::fs::File>,
    path: PathBuf,
    hasher: Sha256,
    size: u64,
    committed: bool,
}

impl BlobWriter {
    /// Append `data`.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        let Some(file) = self.file.as_mut() else {
            return Err(StoreError::Io {
                what: "writing",
                path: self.path.clone(),
                error: std::io::Error::other("the writer is closed"),
            });
        };
        file.write_all(data).await.map_err(io_error("writing", &self.path))?;
        self.hasher.update(data);
        self.size += data.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// SHA-256 of the bytes written so far.
    pub fn hash(&self) -> [u8; 32] {
        self.hasher.clone().finalize().into()
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

async fn sync_dir(path: &Path) -> Result<(), StoreError> {
    let dir = tokio::fs::File::open(path).await.map_err(io_error("opening directory", path))?;
    dir.sync_all().await.map_err(io_error("syncing directory", path))
}

impl BlobStore {
    /// Open (or create) the store in `dir`.
    pub fn open(dir: &Path) -> Result<BlobStore, StoreError> {
        let blobs = dir.join("blobs");
        let tmp = dir.join("tmp");
        for path in [dir, &blobs, &tmp] {
            std::fs::create_dir_all(path).map_err(io_error("creating directory", path))?;
        }
        let db_path = dir.join("intermediary.redb");
        let db = Database::create(&db_path)?;
        {
            let txn = db.begin_write()?;
            txn.open_table(UPLOADS)?;
            txn.open_table(META)?;
            txn.commit()?;
        }
        let inner = StoreInner { blobs, tmp, db };
        // Temporary files of uploads that were under way.
        for entry in std::fs::read_dir(&inner.tmp).map_err(io_error("listing", &inner.tmp))? {
            let path = entry.map_err(io_error("listing", &inner.tmp))?.path();
            std::fs::remove_file(&path).map_err(io_error("removing", &path))?;
        }
        // Blobs whose index entry was never written, or was removed before them.
        let held: std::collections::HashSet<String> = {
            let read = inner.db.begin_read()?;
            let table = read.open_table(UPLOADS)?;
            let mut held = std::collections::HashSet::new();
            for item in table.iter()? {
                let (key, _) = item?;
                if let Some(key) = UploadKey::from_bytes(key.value()) {
                    held.insert(hex::encode(key.upload_hash));
                }
            }
            held
        };
        for shard in std::fs::read_dir(&inner.blobs).map_err(io_error("listing", &inner.blobs))? {
            let shard = shard.map_err(io_error("listing", &inner.blobs))?.path();
            if !shard.is_dir() {
                continue;
            }
            for blob in std::fs::read_dir(&shard).map_err(io_error("listing", &shard))? {
                let path = blob.map_err(io_error("listing", &shard))?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                if !held.contains(name) {
                    tracing::info!(path = %path.display(), "removing a blob that no index entry names");
                    std::fs::remove_file(&path).map_err(io_error("removing", &path))?;
                }
            }
        }
        Ok(BlobStore { inner: Arc::new(inner) })
    }

    /// Run a blocking index operation off the async runtime.
    async fn blocking<T: Send + 'static>(
        &self,
        job: impl FnOnce(&StoreInner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || job(&inner))
            .await
            .map_err(|e| StoreError::Database(format!("an index task failed: {e}")))?
    }

    /// Start writing a blob.
    pub async fn begin(&self) -> Result<BlobWriter, StoreError> {
        let path = self.inner.tmp.join(format!("{:016x}.part", rand::random::<u64>()));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(io_error("creating", &path))?;
        Ok(BlobWriter { file: Some(file), path, hasher: Sha256::new(), size: 0, committed: false })
    }

    /// Make the written blob durable and index it under `key` (whose hash must be the blob's).
    /// If the upload is held already, its confirmations are kept.
    pub async fn commit(&self, mut writer: BlobWriter, key: &UploadKey, entry: BlobEntry) -> Result<(), StoreError> {
        let hash = writer.hash();
        if hash != key.upload_hash {
            return Err(StoreError::HashMismatch { expected: hex::encode(key.upload_hash), actual: hex::encode(hash) });
        }
        if let Some(mut file) = writer.file.take() {
            file.flush().await.map_err(io_error("writing", &writer.path))?;
            file.sync_all().await.map_err(io_error("syncing", &writer.path))?;
        }
        let target = self.inner.blob_path(&hash);
        let shard = target.parent().map(Path::to_path_buf).unwrap_or_else(|| self.inner.blobs.clone());
        let new_shard = !tokio::fs::try_exists(&shard).await.unwrap_or(false);
        tokio::fs::create_dir_all(&shard).await.map_err(io_error("creating directory", &shard))?;
        if new_shard {
            sync_dir(&self.inner.blobs).await?;
        }
        tokio::fs::rename(&writer.path, &target).await.map_err(io_error("renaming into", &target))?;
        writer.committed = true;
        sync_dir(&shard).await?;
        let key = *key;
        self.blocking(move |inner| {
            let txn = inner.db.begin_write()?;
            {
                let mut table = txn.open_table(UPLOADS)?;
                let mut entry = entry;
                if let Some(old) = table.get(key.to_bytes().as_slice())? {
                    if let Ok(old) = BlobEntry::from_bytes(old.value()) {
                        entry.confirmations.extend(old.confirmations);
                    }
                }
                table.insert(key.to_bytes().as_slice(), entry.to_bytes().as_slice())?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    /// The next receipt number (counts up from 1, durably).
    pub async fn next_receipt_id(&self) -> Result<u64, StoreError> {
        self.blocking(|inner| {
            let txn = inner.db.begin_write()?;
            let id = {
                let mut meta = txn.open_table(META)?;
                let id = meta.get(NEXT_RECEIPT)?.map(|v| v.value()).unwrap_or(1);
                meta.insert(NEXT_RECEIPT, id + 1)?;
                id
            };
            txn.commit()?;
            Ok(id)
        })
        .await
    }

    /// The index entry of `key`, if held.
    pub async fn held(&self, key: &UploadKey) -> Result<Option<BlobEntry>, StoreError> {
        let key = *key;
        self.blocking(move |inner| inner.get(&key)).await
    }

    /// The blob of `key` and its size, opened for reading, if held.
    pub async fn open_blob(&self, key: &UploadKey) -> Result<Option<(tokio::fs::File, u64)>, StoreError> {
        if self.held(key).await?.is_none() {
            return Ok(None);
        }
        let path = self.inner.blob_path(&key.upload_hash);
        let file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Corrupt(format!("{key} is indexed but its blob is missing")))
            }
            Err(error) => return Err(StoreError::Io { what: "opening", path, error }),
        };
        let size = file.metadata().await.map_err(io_error("reading metadata of", &path))?.len();
        Ok(Some((file, size)))
    }

    /// Record that `replica` confirmed it holds `key`; the number of confirmations, or `None` if
    /// `key` is not held.
    pub async fn confirm(&self, key: &UploadKey, replica: u32) -> Result<Option<u32>, StoreError> {
        let key = *key;
        self.blocking(move |inner| {
            let txn = inner.db.begin_write()?;
            let count = {
                let mut table = txn.open_table(UPLOADS)?;
                let entry = match table.get(key.to_bytes().as_slice())? {
                    Some(value) => BlobEntry::from_bytes(value.value())
                        .map_err(|e| StoreError::Corrupt(format!("entry of {key}: {e}")))?,
                    None => return Ok(None),
                };
                let mut entry = entry;
                entry.confirmations.insert(replica);
                table.insert(key.to_bytes().as_slice(), entry.to_bytes().as_slice())?;
                entry.confirmations.len() as u32
            };
            txn.commit()?;
            Ok(Some(count))
        })
        .await
    }

    /// Forget `key` and remove its blob; whether it was held.
    pub async fn delete(&self, key: &UploadKey) -> Result<bool, StoreError> {
        let key = *key;
        let removed = self
            .blocking(move |inner| {
                let txn = inner.db.begin_write()?;
                let removed = txn.open_table(UPLOADS)?.remove(key.to_bytes().as_slice())?.is_some();
                txn.commit()?;
                Ok(removed)
            })
            .await?;
        let path = self.inner.blob_path(&key.upload_hash);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(StoreError::Io { what: "removing", path, error }),
        }
        Ok(removed)
    }

    /// Every held upload, in key order.
    pub async fn list(&self) -> Result<Vec<(UploadKey, BlobEntry)>, StoreError> {
        self.blocking(|inner| {
            let read = inner.db.begin_read()?;
            let table = read.open_table(UPLOADS)?;
            let mut out = Vec::new();
            for item in table.iter()? {
                let (key, value) = item?;
                let key = UploadKey::from_bytes(key.value())
                    .ok_or_else(|| StoreError::Corrupt(format!("a key of {} bytes", key.value().len())))?;
                let entry = BlobEntry::from_bytes(value.value())
                    .map_err(|e| StoreError::Corrupt(format!("entry of {key}: {e}")))?;
                out.push((key, entry));
            }
            Ok(out)
        })
        .await
    }
}

// ---------------------------------------------------------------------------------------------
// The gRPC service
// ---------------------------------------------------------------------------------------------

/// How an intermediary tells the cluster that it holds an upload. A replica orders the report
/// itself; a relay sends it with the client SDK's `BistroClient::report_held`.
#[tonic::async_trait]
pub trait ClusterReporter: Send + Sync + 'static {
    /// Have the cluster record `report`; `Ok(first)` once it did (`first`: the upload was new to
    /// the cluster), or the cluster's refusal as a status (passed on to the uploader unchanged).
    async fn report_held(&self, report: HeldReport) -> Result<bool, Status>;
}

#[tonic::async_trait]
impl<R: ClusterReporter> ClusterReporter for Arc<R> {
    async fn report_held(&self, report: HeldReport) -> Result<bool, Status> {
        R::report_held(self, report).await
    }
}

/// What an intermediary needs to know.
#[derive(Clone)]
pub struct IntermediaryConfig {
    /// The cluster id.
    pub cluster: [u8; 32],
    /// `t`: a blob is deleted (if `delete_after_confirmations`) once `t + 1` replicas confirmed it.
    pub t: u32,
    /// The replicas' Ed25519 identity keys, by index (they sign confirmations).
    pub replicas: Vec<[u8; 32]>,
    /// This intermediary's key: it signs receipts.
    pub key: SigningKey,
    /// This intermediary's replica index, if it is a replica.
    pub replica: Option<u32>,
    /// Largest upload taken (bytes).
    pub upload_max: u64,
    /// Delete a blob once `t + 1` replicas confirmed they hold it (relays do).
    pub delete_after_confirmations: bool,
    /// Test-only fault injection: take uploads and give receipts, but answer every Fetch with
    /// `UNAVAILABLE`, as a relay that never delivers would. Never set it in production.
    pub never_deliver: bool,
}

impl std::fmt::Debug for IntermediaryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntermediaryConfig")
            .field("cluster", &hex::encode(self.cluster))
            .field("t", &self.t)
            .field("key", &hex::encode(self.key.verifying_key().as_bytes()))
            .field("replica", &self.replica)
            .field("upload_max", &self.upload_max)
            .field("delete_after_confirmations", &self.delete_after_confirmations)
            .field("never_deliver", &self.never_deliver)
            .finish()
    }
}

impl IntermediaryConfig {
    /// The configuration of a relay of `cluster` with key `key`: it deletes blobs after `t + 1`
    /// confirmations.
    pub fn relay(cluster: &ClusterFile, key: SigningKey, upload_max: u64) -> IntermediaryConfig {
        IntermediaryConfig {
            cluster: cluster.id().0,
            t: cluster.quorum().t(),
            replicas: cluster.replicas().iter().map(|r| r.identity.to_bytes()).collect(),
            key,
            replica: None,
            upload_max,
            delete_after_confirmations: true,
            never_deliver: false,
        }
    }

    /// The configuration of replica `index` of `cluster`, whose identity key is `key`: it keeps
    /// its blobs.
    pub fn replica(cluster: &ClusterFile, index: u32, key: SigningKey, upload_max: u64) -> IntermediaryConfig {
        IntermediaryConfig {
            replica: Some(index),
            delete_after_confirmations: false,
            ..IntermediaryConfig::relay(cluster, key, upload_max)
        }
    }
}

/// The `Intermediary` gRPC service over a [`BlobStore`]. Cheap to clone.
pub struct IntermediaryService<R: ClusterReporter> {
    inner: Arc<ServiceInner<R>>,
}

impl<R: ClusterReporter> Clone for IntermediaryService<R> {
    fn clone(&self) -> Self {
        IntermediaryService { inner: Arc::clone(&self.inner) }
    }
}

struct ServiceInner<R> {
    config: IntermediaryConfig,
    store: BlobStore,
    reporter: R,
}

fn internal(error: StoreError) -> Status {
    tracing::error!(%error, "intermediary store");
    Status::internal(format!("the intermediary's store failed: {error}"))
}

/// Where the header of a commit file being received stands.
enum HeaderState {
    /// Collecting its first bytes.
    Reading(Vec<u8>),
    /// Parsed and checked.
    Done(CommitHeader),
}

impl<R: ClusterReporter> IntermediaryService<R> {
    /// The service.
    pub fn new(config: IntermediaryConfig, store: BlobStore, reporter: R) -> Self {
        IntermediaryService { inner: Arc::new(ServiceInner { config, store, reporter }) }
    }

    /// As a tonic service.
    pub fn into_server(self) -> IntermediaryServer<Self> {
        IntermediaryServer::new(self)
    }

    /// The store.
    pub fn store(&self) -> &BlobStore {
        &self.inner.store
    }

    /// The configuration.
    pub fn config(&self) -> &IntermediaryConfig {
        &self.inner.config
    }

    /// Feed `data` to the header parser; the header once it is complete and its capsule valid.
    fn read_header(&self, head: &mut Vec<u8>, data: &[u8]) -> Result<Option<CommitHeader>, Status> {
        let want = HEADER_LEN + CAPSULE_MAX;
        let take = data.len().min(want.saturating_sub(head.len()));
        head.extend_from_slice(&data[..take]);
        let magic = head.len().min(COMMIT_MAGIC.len());
        if head[..magic] != COMMIT_MAGIC[..magic] {
            return Err(Status::invalid_argument("not a commit file: wrong magic"));
        }
        if head.len() < HEADER_LEN {
            return Ok(None);
        }
        let capsule_len = u16::from_le_bytes([head[32], head[33]]) as usize;
        if capsule_len == 0 || capsule_len > CAPSULE_MAX {
            return Err(Status::invalid_argument(format!("not a commit file: a capsule of {capsule_len} bytes")));
        }
        if head.len() < HEADER_LEN + capsule_len {
            return Ok(None);
        }
        let header = CommitHeader::read(&mut head.as_slice())
            .map_err(|e| Status::invalid_argument(format!("not a commit file: {e}")))?;
        let label = capsule_label(&self.inner.config.cluster, &header.event, header.ticket);
        let valid = LabeledCapsule::from_bytes(&header.capsule).map(|c| c.verify(&label)).unwrap_or(false);
        if !valid {
            return Err(Status::invalid_argument(format!(
                "the key capsule is not valid for event {} ticket {}",
                header.event, header.ticket
            )));
        }
        Ok(Some(header))
    }
}

#[tonic::async_trait]
impl<R: ClusterReporter> Intermediary for IntermediaryService<R> {
    async fn upload(
        &self,
        request: Request<Streaming<proto::UploadChunk>>,
    ) -> Result<Response<proto::UploadReply>, Status> {
        let config = &self.inner.config;
        let store = &self.inner.store;
        let mut stream = request.into_inner();
        let mut writer = store.begin().await.map_err(internal)?;
        let mut header = HeaderState::Reading(Vec::new());
        while let Some(chunk) = stream.message().await? {
            if writer.size().saturating_add(chunk.data.len() as u64) > config.upload_max {
                return Err(Status::resource_exhausted(format!(
                    "the upload is larger than this intermediary takes ({} bytes)",
                    config.upload_max
                )));
            }
            if let HeaderState::Reading(head) = &mut header {
                if let Some(parsed) = self.read_header(head, &chunk.data)? {
                    header = HeaderState::Done(parsed);
                }
            }
            writer.write(&chunk.data).await.map_err(internal)?;
        }
        let HeaderState::Done(header) = header else {
            return Err(Status::invalid_argument("not a commit file: shorter than its header"));
        };
        let key = UploadKey { event: header.event, ticket: header.ticket, upload_hash: writer.hash() };
        if let Some(entry) = store.held(&key).await.map_err(internal)? {
            // The same bytes again: the cluster knows already; the receipt stands.
            return Ok(Response::new(proto::UploadReply {
                receipt: entry.receipt.to_bytes(),
                signature: entry.signature.to_vec(),
            }));
        }
        let receipt = Receipt {
            event: header.event,
            ticket: header.ticket,
            upload_hash: key.upload_hash,
            upload_size: writer.size(),
            intermediary: config.key.verifying_key().to_bytes(),
            receipt_id: store.next_receipt_id().await.map_err(internal)?,
            time_ms: now_ms(),
        };
        let signature = receipt.sign(&config.key, &config.cluster);
        let report = HeldReport { receipt: receipt.clone(), signature, capsule: header.capsule };
        // On a refusal the writer is dropped, which removes its file.
        self.inner.reporter.report_held(report).await?;
        let entry = BlobEntry { receipt: receipt.clone(), signature, confirmations: BTreeSet::new() };
        store.commit(writer, &key, entry).await.map_err(internal)?;
        tracing::info!(%key, size = receipt.upload_size, receipt = receipt.receipt_id, "took an upload");
        Ok(Response::new(proto::UploadReply { receipt: receipt.to_bytes(), signature: signature.to_vec() }))
    }

    type FetchStream = ReceiverStream<Result<proto::FetchChunk, Status>>;

    async fn fetch(&self, request: Request<proto::FetchRequest>) -> Result<Response<Self::FetchStream>, Status> {
        let request = request.into_inner();
        let key = UploadKey::from_request(&request.event, request.ticket, &request.upload_hash)?;
        if self.inner.config.never_deliver {
            return Err(Status::unavailable("this intermediary never delivers (test-only fault injection)"));
        }
        let Some((mut file, size)) = self.inner.store.open_blob(&key).await.map_err(internal)? else {
            return Err(Status::not_found(format!("{key} is not held here")));
        };
        if request.offset > size {
            return Err(Status::out_of_range(format!("offset {} is past the upload's {size} bytes", request.offset)));
        }
        file.seek(SeekFrom::Start(request.offset))
            .await
            .map_err(|e| Status::internal(format!("seeking in the upload: {e}")))?;
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let mut buffer = vec![0u8; CHUNK];
                let mut filled = 0;
                while filled < CHUNK {
                    match file.read(&mut buffer[filled..]).await {
                        Ok(0) => break,
                        Ok(read) => filled += read,
                        Err(error) => {
                            let _ = sender.send(Err(Status::internal(format!("reading the upload: {error}")))).await;
                            return;
                        }
                    }
                }
                if filled == 0 {
                    return;
                }
                buffer.truncate(filled);
                if sender.send(Ok(proto::FetchChunk { data: buffer })).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn confirm(&self, request: Request<proto::ConfirmRequest>) -> Result<Response<proto::ConfirmReply>, Status> {
        let config = &self.inner.config;
        let request = request.into_inner();
        let key = UploadKey::from_request(&request.event, request.ticket, &request.upload_hash)?;
        let Some(identity) = config.replicas.get(request.replica as usize) else {
            return Err(Status::invalid_argument(format!("there is no replica {}", request.replica)));
        };
        let signature: [u8; 64] =
            request.signature.as_slice().try_into().map_err(|_| Status::invalid_argument("a signature is 64 bytes"))?;
        let body = StoredReport::body(&key.event, key.ticket, &key.upload_hash, request.replica);
        if !ed_verify(identity, domain::CONFIRM, &config.cluster, &body, &signature) {
            return Err(Status::permission_denied(format!(
                "the confirmation is not signed by replica {}",
                request.replica
            )));
        }
        let store = &self.inner.store;
        let Some(confirmations) = store.confirm(&key, request.replica).await.map_err(internal)? else {
            return Err(Status::not_found(format!("{key} is not held here")));
        };
        let mut deleted = false;
        if config.delete_after_confirmations && confirmations > config.t {
            deleted = store.delete(&key).await.map_err(internal)?;
            tracing::info!(%key, confirmations, "deleted an upload that t + 1 replicas hold");
        }
        Ok(Response::new(proto::ConfirmReply { confirmations, deleted }))
    }

    async fn identity(
        &self,
        _request: Request<proto::IdentityRequest>,
    ) -> Result<Response<proto::IdentityReply>, Status> {
        let config = &self.inner.config;
        Ok(Response::new(proto::IdentityReply {
            key: config.key.verifying_key().to_bytes().to_vec(),
            replica: config.replica,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_keys_and_entries_round_trip() {
        let key = UploadKey { event: EventId([3; 16]), ticket: 0x0102, upload_hash: [9; 32] };
        assert_eq!(UploadKey::from_bytes(&key.to_bytes()), Some(key));
        assert_eq!(&key.to_bytes()[16..24], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(UploadKey::from_bytes(&[0; 55]), None);
        let entry = BlobEntry {
            receipt: Receipt {
                event: key.event,
                ticket: key.ticket,
                upload_hash: key.upload_hash,
                upload_size: 10,
                intermediary: [1; 32],
                receipt_id: 4,
                time_ms: 5,
            },
            signature: [7; 64],
            confirmations: [0, 2].into_iter().collect(),
        };
        assert_eq!(BlobEntry::from_bytes(&entry.to_bytes()), Ok(entry));
    }
}
