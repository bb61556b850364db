//! Durable state of a replica, in one redb file (`DIR/replica.redb`).
//!
//! The replica is a deterministic function of what it was given: its keys, an RNG seed, and the
//! sequence of events (client requests, clock readings, frames from peers) it handled. So the
//! store keeps exactly that:
//!
//! - `meta`: the RNG seed (drawn once from the OS), the epoch from which a replica that lost its
//!   data may vote again (see `node.rs`), the format version;
//! - `wal`: every event, numbered, written and fsynced *before* the replica acts on it. A restart
//!   replays the log into a fresh core with the same seed and reaches the very state it had, so it
//!   can never send anything that contradicts what it sent before, and every request it accepted
//!   is in it;
//! - `batches`: each delivered batch with the log digest after it (derived data, for serving the
//!   log; rebuilt by the replay if a crash came between delivery and its write);
//! - `checkpoint`: the latest stable checkpoint (derived as well).
//!
//! Every write is one transaction with redb's immediate durability (fsync before commit returns).

use std::path::Path;

use crate::backfill::Backfill;
use fides_atomic_broadcast::checkpoint::{CatchUp, Checkpoint, Digest};
use fides_atomic_broadcast::epoch::Batch;
use fides_atomic_broadcast::epoch::Message;
use fides_types::codec::{get_option, get_seq, put_bytes, put_option, put_seq, DecodeError, Reader, Wire};

/// The events of the log and their encoding are the core's (`fides_host::event`).
pub use fides_host::event::Event;
use fides_types::{NodeIndex, Outgoing, Target};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const WAL: TableDefinition<u64, &[u8]> = TableDefinition::new("wal");
const BATCHES: TableDefinition<u64, &[u8]> = TableDefinition::new("batches");

/// The format written. v2 keeps a snapshot of the whole core state (`KEY_SNAPSHOT`); a v1 store
/// (whose base held only the delivered state, `KEY_BASE`) is read and marked v2 when opened: its
/// base is restored the old way, and the next compaction replaces it by a snapshot.
const FORMAT: &[u8] = b"fides-replica-store-v2";
const FORMAT_V1: &[u8] = b"fides-replica-store-v1";
const KEY_FORMAT: &str = "format";
const KEY_SEED: &str = "rng_seed";
const KEY_JOIN: &str = "join_epoch";
const KEY_CHECKPOINT: &str = "checkpoint";
const KEY_BASE: &str = "base";
const KEY_SNAPSHOT: &str = "snapshot";
const KEY_FIRST_EPOCH: &str = "log_first_epoch";
const KEY_BACKFILL: &str = "backfill";

/// A storage failure: local, never a peer's doing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed.
    #[error("database: {0}")]
    Database(String),
    /// The file holds something this version cannot read.
    #[error("the store is corrupt or of another format: {0}")]
    Corrupt(String),
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

/// A delivered batch with the log digest after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBatch {
    /// The batch.
    pub batch: Batch,
    /// The log digest after it.
    pub log: Digest,
}

impl Wire for StoredBatch {
    fn encode(&self, out: &mut Vec<u8>) {
        self.batch.encode(out);
        out.extend_from_slice(&self.log);
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(StoredBatch { batch: Batch::decode(reader)?, log: reader.array()? })
    }
}

/// Derived data written along with the next events.
#[derive(Debug, Default)]
pub struct Derived {
    /// Batches delivered.
    pub batches: Vec<StoredBatch>,
    /// A checkpoint that became stable.
    pub checkpoint: Option<Checkpoint>,
    /// The epoch from which the replica may vote, once decided.
    pub join_epoch: Option<u64>,
    /// The first epoch of the log this replica serves (after it installed a checkpoint).
    pub first_epoch: Option<u64>,
    /// What is still missing of the log (`Some(None)`: nothing any more).
    pub backfill: Option<Option<Backfill>>,
}

impl Derived {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
            && self.checkpoint.is_none()
            && self.join_epoch.is_none()
            && self.first_epoch.is_none()
            && self.backfill.is_none()
    }
}

/// The replica's store.
pub struct Store {
    db: std::sync::Arc<Database>,
    next_seq: u64,
}

/// What a store held when it was opened.
#[derive(Debug)]
pub struct Opened {
    /// Whether the store was just created (no earlier life of this replica is known).
    pub fresh: bool,
    /// The RNG seed.
    pub seed: [u8; 32],
    /// The epoch from which the replica may vote (absent while it is still joining).
    pub join_epoch: Option<u64>,
    /// The delivered state the log starts from, if it was compacted by a v1 store.
    pub base: Option<Base>,
    /// The whole state the log starts from, if it was compacted.
    pub snapshot: Option<Snapshot>,
    /// The first epoch of the log this replica serves, if it installed a checkpoint.
    pub first_epoch: Option<u64>,
    /// What is still missing of the log.
    pub backfill: Option<Backfill>,
}

/// Where a log compacted by a v1 store starts: the replica's delivered state (its own, trusted)
/// and its clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Base {
    /// The first sequence number after it (the events the log still holds come after).
    pub seq: u64,
    /// The latest stable checkpoint and the batches delivered after it.
    pub snapshot: CatchUp,
    /// The clock's last reading.
    pub clock: u64,
}

impl Wire for Base {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.clock.to_le_bytes());
        self.snapshot.encode(out);
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Base { seq: reader.u64()?, clock: reader.u64()?, snapshot: CatchUp::decode(reader)? })
    }
}

/// Where a compacted log starts: the whole state of the replica's core after the event before
/// `seq`, and what the driver keeps beside it (see `node.rs`, "Compaction").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// The first sequence number after it (the events the log still holds come after).
    pub seq: u64,
    /// The clock's last reading logged.
    pub clock: u64,
    /// The highest epoch this replica voted in.
    pub voted_max: Option<u64>,
    /// Requests delivered so far (a counter for the status).
    pub delivered_requests: u64,
    /// The core's state (`Core::encode_state`).
    pub core: Vec<u8>,
    /// The messages the core sent in the epochs still running: sent again after a restart, as a
    /// replay of the log would (a crash may have come before they left).
    pub recent: Vec<Outgoing<Message>>,
}

/// The most recent messages a snapshot holds.
const RECENT_MAX: usize = 1 << 20;

impl Wire for Snapshot {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.clock.to_le_bytes());
        put_option(out, self.voted_max, |out, epoch| out.extend_from_slice(&epoch.to_le_bytes()));
        out.extend_from_slice(&self.delivered_requests.to_le_bytes());
        put_bytes(out, &self.core);
        put_seq(out, self.recent.iter(), |out, outgoing| {
            match outgoing.target {
                Target::All => out.push(0),
                Target::Node(node) => {
                    out.push(1);
                    out.extend_from_slice(&node.0.to_le_bytes());
                }
            }
            outgoing.message.encode(out);
        });
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Snapshot {
            seq: reader.u64()?,
            clock: reader.u64()?,
            voted_max: get_option(reader, |r| r.u64())?,
            delivered_requests: reader.u64()?,
            core: reader.bytes(u32::MAX as usize)?.to_vec(),
            recent: get_seq(reader, RECENT_MAX, |r| {
                let target = match r.u8()? {
                    0 => Target::All,
                    1 => Target::Node(NodeIndex(r.u32()?)),
                    other => return Err(DecodeError::Invalid { what: "target", value: u64::from(other) }),
                };
                Ok(Outgoing { target, message: Message::decode(r)? })
            })?,
        })
    }
}

fn read_u64(value: Option<redb::AccessGuard<'_, &'static [u8]>>, what: &str) -> Result<Option<u64>, StoreError> {
    match value {
        None => Ok(None),
        Some(v) => Ok(Some(u64::from_le_bytes(
            v.value().try_into().map_err(|_| StoreError::Corrupt(format!("{what} is not 8 bytes")))?,
        ))),
    }
}

impl Store {
    /// Open (or create) the store in `dir`; a new store gets `new_seed` as its RNG seed.
    pub fn open(dir: &Path, new_seed: [u8; 32]) -> Result<(Store, Opened), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Database(format!("{}: {e}", dir.display())))?;
        // A small page cache: the log is written once and read back only on restart.
        let db = Database::builder().set_cache_size(64 * 1024 * 1024).create(dir.join("replica.redb"))?;
        let txn = db.begin_write()?;
        let opened;
        {
            let mut meta = txn.open_table(META)?;
            let format = meta.get(KEY_FORMAT)?.map(|v| v.value().to_vec());
            match format {
                None => {
                    meta.insert(KEY_FORMAT, FORMAT)?;
                    meta.insert(KEY_SEED, new_seed.as_slice())?;
                    opened = Opened {
                        fresh: true,
                        seed: new_seed,
                        join_epoch: None,
                        base: None,
                        snapshot: None,
                        first_epoch: None,
                        backfill: None,
                    };
                }
                Some(format) if format == FORMAT || format == FORMAT_V1 => {
                    // A v1 store is read as it is; from now on it is a v2 store (its v1 base is
                    // restored the old way until the next compaction replaces it).
                    meta.insert(KEY_FORMAT, FORMAT)?;
                    let seed = meta.get(KEY_SEED)?.map(|v| v.value().to_vec()).unwrap_or_default();
                    let seed: [u8; 32] =
                        seed.try_into().map_err(|_| StoreError::Corrupt("the RNG seed is not 32 bytes".into()))?;
                    let join_epoch = read_u64(meta.get(KEY_JOIN)?, "the join epoch")?;
                    let first_epoch = read_u64(meta.get(KEY_FIRST_EPOCH)?, "the first epoch")?;
                    let base = match meta.get(KEY_BASE)? {
                        None => None,
                        Some(v) => Some(
                            Base::from_bytes(v.value()).map_err(|e| StoreError::Corrupt(format!("log base: {e}")))?,
                        ),
                    };
                    let backfill = match meta.get(KEY_BACKFILL)? {
                        None => None,
                        Some(v) => Some(
                            Backfill::from_bytes(v.value())
                                .map_err(|e| StoreError::Corrupt(format!("backfill: {e}")))?,
                        ),
                    };
                    let snapshot = match meta.get(KEY_SNAPSHOT)? {
                        None => None,
                        Some(v) => Some(
                            Snapshot::from_bytes(v.value())
                                .map_err(|e| StoreError::Corrupt(format!("snapshot: {e}")))?,
                        ),
                    };
                    opened = Opened { fresh: false, seed, join_epoch, base, snapshot, first_epoch, backfill };
                }
                Some(other) => {
                    return Err(StoreError::Corrupt(format!(
                        "format {:?}, this version reads {:?} and {:?}",
                        String::from_utf8_lossy(&other),
                        String::from_utf8_lossy(FORMAT_V1),
                        String::from_utf8_lossy(FORMAT)
                    )));
                }
            }
            txn.open_table(WAL)?;
            txn.open_table(BATCHES)?;
        }
        txn.commit()?;
        let next_seq = {
            let read = db.begin_read()?;
            let wal = read.open_table(WAL)?;
            let last = wal.last()?.map(|(k, _)| k.value() + 1).unwrap_or(0);
            last
        };
        Ok((Store { db: std::sync::Arc::new(db), next_seq }, opened))
    }

    /// Events in the log.
    pub fn wal_len(&self) -> u64 {
        self.next_seq
    }

    /// Up to `max` logged events from sequence number `from` on, in order (a replay reads the log
    /// in such chunks, so that it never holds all of it in memory).
    pub fn events_from(&self, from: u64, max: usize) -> Result<Vec<(u64, Event)>, StoreError> {
        let read = self.db.begin_read()?;
        let wal = read.open_table(WAL)?;
        let mut out = Vec::new();
        for entry in wal.range(from..)?.take(max) {
            let (seq, bytes) = entry?;
            let event = Event::from_bytes(bytes.value())
                .map_err(|e| StoreError::Corrupt(format!("log entry {}: {e}", seq.value())))?;
            out.push((seq.value(), event));
        }
        Ok(out)
    }

    /// Append `events` and write `derived`, durably, in one transaction; the first event's
    /// sequence number.
    pub fn commit(&mut self, events: &[Event], derived: &Derived) -> Result<u64, StoreError> {
        let first = self.next_seq;
        if events.is_empty() && derived.is_empty() {
            return Ok(first);
        }
        let txn = self.db.begin_write()?;
        let mut seq = self.next_seq;
        {
            let mut wal = txn.open_table(WAL)?;
            let mut buffer = Vec::new();
            for event in events {
                buffer.clear();
                event.encode(&mut buffer);
                wal.insert(seq, buffer.as_slice())?;
                seq += 1;
            }
            let mut batches = txn.open_table(BATCHES)?;
            for stored in &derived.batches {
                batches.insert(stored.batch.epoch, stored.to_bytes().as_slice())?;
            }
            let mut meta = txn.open_table(META)?;
            if let Some(checkpoint) = &derived.checkpoint {
                meta.insert(KEY_CHECKPOINT, checkpoint.to_bytes().as_slice())?;
            }
            if let Some(join) = derived.join_epoch {
                meta.insert(KEY_JOIN, join.to_le_bytes().as_slice())?;
            }
            if let Some(first) = derived.first_epoch {
                meta.insert(KEY_FIRST_EPOCH, first.to_le_bytes().as_slice())?;
            }
            match &derived.backfill {
                Some(Some(backfill)) => {
                    meta.insert(KEY_BACKFILL, backfill.to_bytes().as_slice())?;
                }
                Some(None) => {
                    meta.remove(KEY_BACKFILL)?;
                }
                None => {}
            }
        }
        txn.commit()?;
        self.next_seq = seq;
        Ok(first)
    }

    /// Replace the log by `snapshot` (taken after every event logged so far: its `seq` is set
    /// here), writing `derived` first.
    pub fn compact(&mut self, mut snapshot: Snapshot, derived: &Derived) -> Result<(), StoreError> {
        snapshot.seq = self.next_seq;
        self.commit(&[], derived)?;
        let txn = self.db.begin_write()?;
        {
            txn.delete_table(WAL)?;
            txn.open_table(WAL)?;
            let mut meta = txn.open_table(META)?;
            meta.insert(KEY_SNAPSHOT, snapshot.to_bytes().as_slice())?;
            meta.remove(KEY_BASE)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// A handle that reads stored batches from another thread.
    pub fn reader(&self) -> BatchReader {
        BatchReader { db: std::sync::Arc::clone(&self.db) }
    }

    /// The stored batch of `epoch`.
    pub fn batch(&self, epoch: u64) -> Result<Option<StoredBatch>, StoreError> {
        self.reader().batch(epoch)
    }

    /// Up to `max` stored batches from `from` on, in epoch order.
    pub fn batches(&self, from: u64, max: usize) -> Result<Vec<StoredBatch>, StoreError> {
        self.reader().batches(from, max)
    }

    /// The first stored batch's epoch.
    pub fn first_batch_epoch(&self) -> Result<Option<u64>, StoreError> {
        let read = self.db.begin_read()?;
        let batches = read.open_table(BATCHES)?;
        let first = batches.first()?.map(|(k, _)| k.value());
        Ok(first)
    }

    /// Stored batches.
    pub fn batch_count(&self) -> Result<u64, StoreError> {
        let read = self.db.begin_read()?;
        Ok(read.open_table(BATCHES)?.len()?)
    }

    /// The latest stable checkpoint stored.
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        let read = self.db.begin_read()?;
        let meta = read.open_table(META)?;
        match meta.get(KEY_CHECKPOINT)? {
            None => Ok(None),
            Some(bytes) => Checkpoint::from_bytes(bytes.value())
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("checkpoint: {e}"))),
        }
    }
}

/// Reads stored batches; may be used from any thread while the store writes.
#[derive(Clone)]
pub struct BatchReader {
    db: std::sync::Arc<Database>,
}

impl BatchReader {
    /// The stored batch of `epoch`.
    pub fn batch(&self, epoch: u64) -> Result<Option<StoredBatch>, StoreError> {
        let read = self.db.begin_read()?;
        let batches = read.open_table(BATCHES)?;
        match batches.get(epoch)? {
            None => Ok(None),
            Some(bytes) => StoredBatch::from_bytes(bytes.value())
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("batch {epoch}: {e}"))),
        }
    }

    /// The batches still to fetch after a checkpoint jump (the driver's backfill), if any: the
    /// services' side fetches a snapshot instead when it needs them.
    pub fn backfill(&self) -> Result<Option<Backfill>, StoreError> {
        let read = self.db.begin_read()?;
        let meta = read.open_table(META)?;
        let value = meta.get(KEY_BACKFILL)?.map(|v| v.value().to_vec());
        value.map(|v| Backfill::from_bytes(&v).map_err(|e| StoreError::Corrupt(format!("backfill: {e}")))).transpose()
    }

    /// Up to `max` stored batches from `from` on, in epoch order.
    pub fn batches(&self, from: u64, max: usize) -> Result<Vec<StoredBatch>, StoreError> {
        let read = self.db.begin_read()?;
        let batches = read.open_table(BATCHES)?;
        let mut out = Vec::new();
        for entry in batches.range(from..)?.take(max) {
            let (epoch, bytes) = entry?;
            out.push(
                StoredBatch::from_bytes(bytes.value())
                    .map_err(|e| StoreError::Corrupt(format!("batch {}: {e}", epoch.value())))?,
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fides_agreement::Vote;
    use fides_atomic_broadcast::epoch::Request;
    use fides_atomic_broadcast::instances::InstanceId;

    fn request(id: u64) -> Request {
        Request { client: 7, id, payload: vec![id as u8; 3] }
    }

    #[test]
    fn events_are_replayed_in_order_after_reopening() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let events = vec![
            Event::Clock(5),
            Event::Submit(request(1)),
            Event::Frame { from: NodeIndex(2), bytes: vec![1, 2, 3] },
            Event::Recover,
            Event::Heard { from: NodeIndex(3), epoch: 77 },
            Event::Agree { instance: InstanceId { service: *b"TST2", key: [5; 32] }, vote: Vote::One(vec![1, 2]) },
            Event::Agree { instance: InstanceId { service: *b"TST3", key: [6; 32] }, vote: Vote::Zero },
            Event::InstanceFrame { from: NodeIndex(1), bytes: vec![9; 12] },
        ];
        {
            let (mut store, opened) = Store::open(dir.path(), [9; 32]).expect("open");
            assert!(opened.fresh);
            store.commit(&events[..2], &Derived::default()).expect("commit");
            let derived = Derived {
                batches: vec![StoredBatch {
                    batch: Batch { epoch: 0, time: 5, requests: vec![request(1)] },
                    log: [4; 32],
                }],
                checkpoint: None,
                join_epoch: Some(3),
                first_epoch: None,
                backfill: None,
            };
            store.commit(&events[2..], &derived).expect("commit");
        }
        let (store, opened) = Store::open(dir.path(), [1; 32]).expect("reopen");
        assert!(!opened.fresh);
        assert_eq!(opened.seed, [9; 32], "the seed of the first life is kept");
        assert_eq!(opened.join_epoch, Some(3));
        assert_eq!(store.wal_len(), 8);
        let replayed: Vec<Event> = store.events_from(0, 100).expect("replay").into_iter().map(|(_, e)| e).collect();
        assert_eq!(replayed, events);
        assert_eq!(store.batch(0).expect("read").map(|b| b.batch.requests.len()), Some(1));
        assert_eq!(store.batches(1, 10).expect("read"), vec![]);
    }

    #[test]
    fn an_event_decoder_refuses_every_truncation() {
        let events = [
            Event::Frame { from: NodeIndex(1), bytes: vec![7; 40] },
            Event::Agree { instance: InstanceId { service: *b"TST1", key: [3; 32] }, vote: Vote::One(vec![4; 9]) },
            Event::InstanceFrame { from: NodeIndex(2), bytes: vec![8; 20] },
        ];
        for event in events {
            let bytes = event.to_bytes();
            for len in 0..bytes.len() {
                assert!(Event::from_bytes(&bytes[..len]).is_err(), "{event:?} truncated to {len}");
            }
            assert_eq!(Event::from_bytes(&bytes).expect("whole"), event);
        }
    }

    #[test]
    fn a_snapshot_replaces_the_log_and_a_v1_store_is_read_and_marked_v2() {
        let dir = tempfile::tempdir().expect("temporary directory");
        {
            let (mut store, _) = Store::open(dir.path(), [9; 32]).expect("open");
            store.commit(&[Event::Clock(5), Event::Recover], &Derived::default()).expect("commit");
            let recent =
                vec![Outgoing { target: Target::Node(NodeIndex(1)), message: Message::CatchUpRequest { next: 3 } }];
            let snapshot =
                Snapshot { seq: 0, clock: 5, voted_max: Some(2), delivered_requests: 4, core: vec![1, 2, 3], recent };
            store.compact(snapshot, &Derived::default()).expect("compact");
            store.commit(&[Event::Clock(6)], &Derived::default()).expect("commit");
        }
        let (store, opened) = Store::open(dir.path(), [1; 32]).expect("reopen");
        let snapshot = opened.snapshot.expect("a snapshot");
        assert_eq!((snapshot.seq, snapshot.voted_max, snapshot.core.as_slice()), (2, Some(2), &[1u8, 2, 3][..]));
        assert_eq!(store.events_from(0, 10).expect("log"), vec![(2, Event::Clock(6))], "only what follows it");
        drop(store);
        // A store written by the previous version: its delivered-prefix base is read, and it is v2 now.
        {
            let db = Database::create(dir.path().join("replica.redb")).expect("db");
            let txn = db.begin_write().expect("txn");
            {
                let mut meta = txn.open_table(META).expect("meta");
                meta.insert(KEY_FORMAT, FORMAT_V1).expect("format");
                meta.remove(KEY_SNAPSHOT).expect("remove");
                let base = Base { seq: 2, clock: 5, snapshot: CatchUp { checkpoint: None, batches: Vec::new() } };
                meta.insert(KEY_BASE, base.to_bytes().as_slice()).expect("base");
            }
            txn.commit().expect("commit");
        }
        let (_, opened) = Store::open(dir.path(), [1; 32]).expect("a v1 store opens");
        assert!(opened.snapshot.is_none() && opened.base.is_some_and(|b| b.seq == 2));
        {
            let db = Database::create(dir.path().join("replica.redb")).expect("db");
            let read = db.begin_read().expect("txn");
            let meta = read.open_table(META).expect("meta");
            assert_eq!(meta.get(KEY_FORMAT).expect("get").map(|v| v.value().to_vec()), Some(FORMAT.to_vec()));
            drop(meta);
            drop(read);
            let txn = db.begin_write().expect("txn");
            txn.open_table(META)
                .expect("meta")
                .insert(KEY_FORMAT, b"fides-replica-store-v9".as_slice())
                .expect("format");
            txn.commit().expect("commit");
        }
        let error = Store::open(dir.path(), [1; 32]).err().expect("another format is refused");
        assert!(error.to_string().contains("fides-replica-store-v9"), "{error}");
    }
}
