//! Snapshots of the services' state, for a replica that lost its state or fell far behind: the
//! wire format of a fetch (asks and pages), and the checks a receiver runs on what a peer sends.
//!
//! A snapshot is the state after one epoch `S` that the peer applied and the cluster certified:
//! the first page carries a [`Header`] — the state digest's commitment and the state's size, the
//! path of the state leaf (the last leaf of `S`'s tree) and `S`'s certificate — and every page carries entries in
//! strictly increasing `(section, key)` order. Sections `0 .. k` are the covered tables (by their
//! sorted names, the same list at every replica); section `k` holds epoch rows (agreed time,
//! leaves, signature) that answers need, which the digest does not cover and which are checked
//! one by one against the cluster's key instead. The receiver recomputes the digest over the
//! covered entries it received and installs them only if its commitment is the certified one.
//!
//! The order makes duplicates impossible (a multiset with one entry twice has another digest than
//! the table it would make), and the bounds ([`PAGE_BYTES_MAX`], [`PAGE_ENTRIES_MAX`],
//! [`SNAPSHOT_BYTES_MAX`], and the certified size: covered entries past it are refused at once)
//! keep what a peer can make a receiver hold or stage — a Byzantine server can make it stage at
//! most as much as the honest state, not 4 GiB.

use std::ops::Bound;

use fides_service::certificate::{self, Certificate, EpochRoot, Inclusion, Leaf, Tree};
use fides_service::{StateDigest, StateSize, StoreError};
use fides_types::codec::{put_bytes, DecodeError, Reader, Wire};
use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::epochs::{outcome_key, EpochRow};
use super::tables::{table, BytesTable, EPOCHS, META, META_STATE_DIGEST, OUTCOMES};

/// Bytes of entries a page holds at most (one entry longer than this is refused).
pub const PAGE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// A server cuts a page once it holds this many bytes of entries.
pub const PAGE_BYTES_TARGET: usize = 1024 * 1024;
/// Entries a page holds at most.
pub const PAGE_ENTRIES_MAX: usize = 16_384;
/// Bytes of entries a whole snapshot may hold: a peer that sends more wastes the attempt.
pub const SNAPSHOT_BYTES_MAX: u64 = 4 * 1024 * 1024 * 1024;

/// Where a page starts: a section, and the key after which it goes on (`None`: its first key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// The section: a covered table's index, or the epoch rows' (the last).
    pub section: u32,
    /// The last key sent of that section.
    pub after: Option<Vec<u8>>,
}

impl Cursor {
    /// The start of a snapshot.
    pub fn start() -> Cursor {
        Cursor { section: 0, after: None }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.section.to_le_bytes());
        match &self.after {
            Some(key) => {
                out.push(1);
                put_bytes(out, key);
            }
            None => out.push(0),
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Cursor, DecodeError> {
        let section = reader.u32()?;
        let after = if reader.bool()? { Some(reader.bytes(PAGE_BYTES_MAX)?.to_vec()) } else { None };
        Ok(Cursor { section, after })
    }
}

/// A request for the page of session `session` that starts at `cursor`. A session is the
/// receiver's (a random number per attempt); a server answers a session's pages from one read
/// transaction, so every page is of the same state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ask {
    /// The receiver's session.
    pub session: u64,
    /// Where the page starts.
    pub cursor: Cursor,
}

impl Wire for Ask {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.session.to_le_bytes());
        self.cursor.encode(out);
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Ask { session: reader.u64()?, cursor: Cursor::decode(reader)? })
    }
}

/// What the first page proves: the state digest's commitment after the snapshot's epoch, the
/// state leaf's path and the epoch's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// [`StateDigest::commitment`] of the state sent.
    pub digest: [u8; 32],
    /// Its size ([`StateDigest::size`]): the covered entries the snapshot holds, and their bytes.
    pub size: StateSize,
    /// The path of the state leaf (the last leaf of the epoch's tree).
    pub inclusion: Inclusion,
    /// The epoch's certificate.
    pub certificate: Certificate,
}

/// One entry of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its section.
    pub section: u32,
    /// Its key.
    pub key: Vec<u8>,
    /// Its value.
    pub value: Vec<u8>,
}

/// A page of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// The session it answers.
    pub session: u64,
    /// The snapshot's epoch.
    pub epoch: u64,
    /// On the first page only.
    pub header: Option<Header>,
    /// Entries in strictly increasing `(section, key)` order.
    pub entries: Vec<Entry>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

impl Wire for Page {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.session.to_le_bytes());
        out.extend_from_slice(&self.epoch.to_le_bytes());
        match &self.header {
            Some(header) => {
                out.push(1);
                out.extend_from_slice(&header.digest);
                out.extend_from_slice(&header.size.entries.to_le_bytes());
                out.extend_from_slice(&header.size.bytes.to_le_bytes());
                header.inclusion.encode(out);
                header.certificate.encode(out);
            }
            None => out.push(0),
        }
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for entry in &self.entries {
            out.extend_from_slice(&entry.section.to_le_bytes());
            put_bytes(out, &entry.key);
            put_bytes(out, &entry.value);
        }
        match &self.next {
            Some(cursor) => {
                out.push(1);
                cursor.encode(out);
            }
            None => out.push(0),
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let session = reader.u64()?;
        let epoch = reader.u64()?;
        let header = if reader.bool()? {
            Some(Header {
                digest: reader.array()?,
                size: StateSize { entries: reader.u64()?, bytes: reader.u64()? },
                inclusion: Inclusion::decode(reader)?,
                certificate: Certificate::decode(reader)?,
            })
        } else {
            None
        };
        let count = reader.u32()? as usize;
        if count > PAGE_ENTRIES_MAX {
            return Err(DecodeError::TooLong { len: count as u64, max: PAGE_ENTRIES_MAX as u64 });
        }
        let mut entries = Vec::new();
        for _ in 0..count {
            let section = reader.u32()?;
            let key = reader.bytes(PAGE_BYTES_MAX)?.to_vec();
            let value = reader.bytes(PAGE_BYTES_MAX)?.to_vec();
            entries.push(Entry { section, key, value });
        }
        let next = if reader.bool()? { Some(Cursor::decode(reader)?) } else { None };
        Ok(Page { session, epoch, header, entries, next })
    }
}

/// Bytes of an entry, as counted against the bounds.
pub fn entry_len(key: &[u8], value: &[u8]) -> usize {
    4 + 4 + key.len() + 4 + value.len()
}

/// What the cluster's key and id are, for checking a snapshot.
pub struct Cluster<'a> {
    /// The cluster id.
    pub id: &'a [u8; 32],
    /// The cluster's signing key.
    pub public: &'a blsttc::PublicKey,
}

/// A snapshot being received: its epoch and claimed digest (certified), the digest of what came
/// so far, where it stands, and what it cost.
#[derive(Debug)]
pub struct Receiving {
    /// The snapshot's epoch.
    pub epoch: u64,
    /// The certified commitment.
    pub certified: [u8; 32],
    /// The certified size of the state.
    pub certified_size: StateSize,
    /// The certificate of the snapshot's epoch.
    pub certificate: Certificate,
    digest: StateDigest,
    last: Option<(u32, Vec<u8>)>,
    /// Bytes of entries received.
    pub bytes: u64,
    /// Entries received.
    pub entries: u64,
}

impl Receiving {
    /// Start from a first page: its header must carry a certified state leaf of its epoch.
    pub fn start(page: &Page, cluster: &Cluster<'_>) -> Result<Receiving, String> {
        let Some(header) = &page.header else { return Err("the first page has no header".into()) };
        certificate::verify_state(
            cluster.id,
            cluster.public,
            page.epoch,
            &header.digest,
            header.size,
            &header.inclusion,
            &header.certificate,
        )
        .map_err(|e| format!("the snapshot's state leaf does not verify: {e}"))?;
        Ok(Receiving {
            epoch: page.epoch,
            certified: header.digest,
            certified_size: header.size,
            certificate: header.certificate,
            digest: StateDigest::new(),
            last: None,
            bytes: 0,
            entries: 0,
        })
    }

    /// Check a page's entries (order, sections, bounds, epoch rows) and take them into the
    /// digest; the entries are the caller's to stage. `covered` are the covered tables' names
    /// (sections `0 .. covered.len()`; the next one holds epoch rows).
    pub fn take(&mut self, page: &Page, covered: &[String], cluster: &Cluster<'_>) -> Result<(), String> {
        if page.epoch != self.epoch {
            return Err(format!("a page of epoch {} in a snapshot of epoch {}", page.epoch, self.epoch));
        }
        let rows = covered.len() as u32;
        let mut page_bytes = 0usize;
        for entry in &page.entries {
            let place = (entry.section, entry.key.clone());
            if self.last.as_ref().is_some_and(|last| *last >= place) {
                return Err("entries are not in strictly increasing order".into());
            }
            page_bytes += entry_len(&entry.key, &entry.value);
            if page_bytes > PAGE_BYTES_MAX {
                return Err(format!("a page holds more than {PAGE_BYTES_MAX} bytes"));
            }
            match covered.get(entry.section as usize) {
                Some(table) => {
                    self.digest.add(table, &entry.key, &entry.value);
                    if !self.digest.size().within(&self.certified_size) {
                        return Err(format!(
                            "the snapshot holds more than the certified state of epoch {} ({} entries, {} bytes)",
                            self.epoch, self.certified_size.entries, self.certified_size.bytes
                        ));
                    }
                }
                None if entry.section == rows => self.check_row(&entry.key, &entry.value, cluster)?,
                None => return Err(format!("no section {}", entry.section)),
            }
            self.last = Some(place);
        }
        self.bytes += page_bytes as u64;
        self.entries += page.entries.len() as u64;
        if self.bytes > SNAPSHOT_BYTES_MAX {
            return Err(format!("the snapshot holds more than {SNAPSHOT_BYTES_MAX} bytes"));
        }
        if let Some(next) = &page.next {
            // A page that is not the last holds entries and goes on right after its last one:
            // a server cannot keep a receiver busy with empty pages.
            let after_last = page.entries.last().map(|e| Cursor { section: e.section, after: Some(e.key.clone()) });
            if after_last.as_ref() != Some(next) {
                return Err("a page that is not the last must go on right after its last entry".into());
            }
        }
        Ok(())
    }

    /// An epoch row must be of an epoch up to the snapshot's, and carry the cluster's signature on
    /// its own tree.
    fn check_row(&self, key: &[u8], value: &[u8], cluster: &Cluster<'_>) -> Result<(), String> {
        let epoch =
            <[u8; 8]>::try_from(key).map(u64::from_be_bytes).map_err(|_| "an epoch row's key is not 8 bytes")?;
        if epoch > self.epoch {
            return Err(format!("a row of epoch {epoch}, after the snapshot's"));
        }
        let row = EpochRow::from_bytes(value).map_err(|e| format!("an epoch row does not decode: {e}"))?;
        let Some(signature) = row.signature else { return Err(format!("the row of epoch {epoch} is not signed")) };
        let root = Tree::new(row.leaves).epoch_root(epoch, row.time_ms);
        if !(Certificate { root, signature }).verifies(cluster.id, cluster.public) {
            return Err(format!("the row of epoch {epoch} does not verify under the cluster's key"));
        }
        Ok(())
    }

    /// After the last page: the digest of what came must be the certified one.
    pub fn finish(&self) -> Result<StateDigest, String> {
        if self.digest.commitment() != self.certified || self.digest.size() != self.certified_size {
            return Err(format!(
                "the snapshot's entries do not hash to the certified state digest of epoch {}",
                self.epoch
            ));
        }
        Ok(self.digest.clone())
    }
}

fn store_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Store(error.to_string())
}

/// The entries of a snapshot being received, staged until it is complete and checked:
/// `section u32 big-endian ‖ key → value`.
pub const STAGE: BytesTable<'static> = TableDefinition::new("replica_snapshot_stage");

/// What a server answers one session from: the state after `epoch`, in one read transaction
/// (redb's MVCC: the services go on applying epochs meanwhile, nothing waits).
pub struct Served {
    /// The receiver's session.
    pub session: u64,
    /// The epoch whose state this is (the last applied when the session opened).
    pub epoch: u64,
    /// That epoch's root (its certificate must be on it).
    pub root: EpochRoot,
    /// The state leaf's path.
    pub inclusion: Inclusion,
    /// The state digest's commitment.
    pub digest: [u8; 32],
    /// The state's size.
    pub size: StateSize,
    txn: ReadTransaction,
}

fn meta_u64(meta: &redb::ReadOnlyTable<&'static [u8], &'static [u8]>, key: &[u8]) -> Result<Option<u64>, StoreError> {
    let value = meta.get(key).map_err(store_error)?.map(|v| v.value().to_vec());
    Ok(value.and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok()).map(u64::from_le_bytes))
}

impl Served {
    /// A session on the state of `db` now, if it has applied an epoch whose last leaf is the state
    /// leaf of its digest (not so for epochs applied before the state digest existed).
    pub fn open(db: &Database, session: u64) -> Result<Option<Served>, StoreError> {
        let txn = db.begin_read().map_err(store_error)?;
        let (epoch, digest, row) = {
            let meta = txn.open_table(META).map_err(store_error)?;
            let Some(epoch) = meta_u64(&meta, b"next_epoch")?.and_then(|next| next.checked_sub(1)) else {
                return Ok(None);
            };
            let lanes = meta.get(META_STATE_DIGEST).map_err(store_error)?.map(|v| v.value().to_vec());
            let Some(digest) = lanes.and_then(|l| StateDigest::from_bytes(&l)) else { return Ok(None) };
            let epochs = txn.open_table(EPOCHS).map_err(store_error)?;
            let row = epochs.get(&epoch.to_be_bytes()[..]).map_err(store_error)?.map(|v| v.value().to_vec());
            let Some(row) = row else { return Ok(None) };
            let row = EpochRow::from_bytes(&row).map_err(|e| StoreError::Store(format!("an epoch row: {e}")))?;
            (epoch, digest, row)
        };
        if row.leaves.last() != Some(&Leaf::state(epoch, &digest).hash()) {
            return Ok(None);
        }
        let (size, digest) = (digest.size(), digest.commitment());
        let tree = Tree::new(row.leaves);
        let root = tree.epoch_root(epoch, row.time_ms);
        let Some(inclusion) = tree.inclusion(tree.len() - 1) else { return Ok(None) };
        Ok(Some(Served { session, epoch, root, inclusion, digest, size, txn }))
    }

    /// The page from `cursor`: entries of the covered tables `covered` (sections in that order),
    /// then the signed epoch rows that stored answers refer to; `signature` is the snapshot
    /// epoch's (its row in this transaction may predate it).
    pub fn page(&self, covered: &[String], cursor: &Cursor, signature: [u8; 96]) -> Result<Page, StoreError> {
        let rows = covered.len() as u32;
        let (mut section, mut after) = (cursor.section, cursor.after.clone());
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        let full = |entries: &Vec<Entry>, bytes: usize| bytes >= PAGE_BYTES_TARGET || entries.len() >= PAGE_ENTRIES_MAX;
        while section <= rows && !full(&entries, bytes) {
            let name = covered.get(section as usize);
            let opened = match name {
                Some(name) => self.txn.open_table(table(name)),
                None => self.txn.open_table(EPOCHS),
            };
            let opened = match opened {
                Ok(opened) => opened,
                Err(redb::TableError::TableDoesNotExist(_)) => {
                    (section, after) = (section + 1, None);
                    continue;
                }
                Err(error) => return Err(store_error(error)),
            };
            let start = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            let mut exhausted = true;
            for entry in opened.range::<&[u8]>((start, Bound::Unbounded)).map_err(store_error)? {
                let (key, value) = entry.map_err(store_error)?;
                let (key, value) = (key.value().to_vec(), value.value().to_vec());
                after = Some(key.clone());
                let value = if name.is_some() { Some(value) } else { self.row(&key, &value, signature)? };
                if let Some(value) = value {
                    bytes += entry_len(&key, &value);
                    entries.push(Entry { section, key, value });
                }
                if full(&entries, bytes) {
                    exhausted = false;
                    break;
                }
            }
            if exhausted {
                (section, after) = (section + 1, None);
            }
        }
        let next = (section <= rows)
            .then(|| entries.last().map(|e| Cursor { section: e.section, after: Some(e.key.clone()) }));
        // A page cut on a row that was left out goes on after the last entry sent: the rows
        // between are looked at again, which costs the server, never the receiver.
        Ok(Page { session: self.session, epoch: self.epoch, header: None, entries, next: next.flatten() })
    }

    /// An epoch row as sent: only rows of epochs with stored answers (which need their proofs),
    /// signed (the snapshot epoch's with `signature`).
    fn row(&self, key: &[u8], value: &[u8], signature: [u8; 96]) -> Result<Option<Vec<u8>>, StoreError> {
        let Ok(epoch) = <[u8; 8]>::try_from(key).map(u64::from_be_bytes) else { return Ok(None) };
        let outcomes = self.txn.open_table(OUTCOMES).map_err(store_error)?;
        let from = outcome_key(epoch, 0);
        let to = outcome_key(epoch.saturating_add(1), 0);
        if outcomes.range::<&[u8]>(from.as_slice()..to.as_slice()).map_err(store_error)?.next().is_none() {
            return Ok(None);
        }
        let Ok(mut row) = EpochRow::from_bytes(value) else { return Ok(None) };
        if epoch == self.epoch {
            row.signature = Some(signature);
        }
        Ok(row.signature.is_some().then(|| row.to_bytes()))
    }
}

/// Empty the stage (a new attempt).
pub fn stage_clear(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(store_error)?;
    txn.delete_table(STAGE).map_err(store_error)?;
    txn.commit().map_err(store_error)
}

/// Stage a checked page's entries.
pub fn stage(db: &Database, page: &Page) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(store_error)?;
    {
        let mut stage = txn.open_table(STAGE).map_err(store_error)?;
        for entry in &page.entries {
            let key = [&entry.section.to_be_bytes()[..], &entry.key].concat();
            stage.insert(key.as_slice(), entry.value.as_slice()).map_err(store_error)?;
        }
    }
    txn.commit().map_err(store_error)
}

/// Install the staged snapshot of the state after `epoch` in `txn`: the covered tables are
/// replaced by its entries, its epoch rows added, the digest and the next epoch set, the stage
/// emptied. Returns the entries installed.
pub fn install(
    txn: &WriteTransaction,
    covered: &[String],
    epoch: u64,
    digest: &StateDigest,
) -> Result<u64, StoreError> {
    for name in covered {
        txn.delete_table(table(name)).map_err(store_error)?;
    }
    let mut installed = 0u64;
    {
        let mut targets = Vec::with_capacity(covered.len() + 1);
        for name in covered {
            targets.push(txn.open_table(table(name)).map_err(store_error)?);
        }
        targets.push(txn.open_table(EPOCHS).map_err(store_error)?);
        let stage = txn.open_table(STAGE).map_err(store_error)?;
        for entry in stage.iter().map_err(store_error)? {
            let (key, value) = entry.map_err(store_error)?;
            let key = key.value();
            let Some(section) = key.get(..4).and_then(|s| <[u8; 4]>::try_from(s).ok()).map(u32::from_be_bytes) else {
                continue;
            };
            let Some(target) = targets.get_mut(section as usize) else { continue };
            target.insert(&key[4..], value.value()).map_err(store_error)?;
            installed += 1;
        }
    }
    txn.delete_table(STAGE).map_err(store_error)?;
    let mut meta = txn.open_table(META).map_err(store_error)?;
    meta.insert(META_STATE_DIGEST, digest.to_bytes().as_slice()).map_err(store_error)?;
    meta.insert(&b"next_epoch"[..], &(epoch + 1).to_le_bytes()[..]).map_err(store_error)?;
    Ok(installed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fides_service::certificate::Leaf;

    const CLUSTER: [u8; 32] = [5; 32];

    fn tables() -> Vec<String> {
        vec!["bistro_events".into(), "replica_outcomes".into()]
    }

    fn entries() -> Vec<Entry> {
        (0..40u8)
            .map(|k| Entry { section: u32::from(k % 2), key: vec![k / 2, k], value: vec![k; usize::from(k)] })
            .collect::<Vec<_>>()
    }

    fn sorted(mut entries: Vec<Entry>) -> Vec<Entry> {
        entries.sort_by(|a, b| (a.section, &a.key).cmp(&(b.section, &b.key)));
        entries
    }

    /// A certified snapshot of `entries` at epoch 9, in pages of 7 entries.
    fn pages(secret: &blsttc::SecretKey, entries: &[Entry], certified: &[Entry]) -> Vec<Page> {
        let names = tables();
        let mut digest = StateDigest::new();
        for e in certified {
            digest.add(&names[e.section as usize], &e.key, &e.value);
        }
        let leaves = vec![[1; 32], [2; 32], Leaf::state(9, &digest).hash()];
        let tree = Tree::new(leaves);
        let root = tree.epoch_root(9, 1_000);
        let signature = secret.sign_g2(root.point(&CLUSTER)).to_bytes();
        let header = Header {
            digest: digest.commitment(),
            size: digest.size(),
            inclusion: tree.inclusion(2).expect("the last leaf"),
            certificate: Certificate { root, signature },
        };
        let chunks: Vec<&[Entry]> = entries.chunks(7).collect();
        chunks
            .iter()
            .enumerate()
            .map(|(i, chunk)| Page {
                session: 3,
                epoch: 9,
                header: (i == 0).then(|| header.clone()),
                entries: chunk.to_vec(),
                next: chunks.get(i + 1).map(|_| {
                    let last = chunk.last().expect("chunks are not empty");
                    Cursor { section: last.section, after: Some(last.key.clone()) }
                }),
            })
            .collect()
    }

    fn receive(pages: &[Page], public: &blsttc::PublicKey) -> Result<StateDigest, String> {
        let cluster = Cluster { id: &CLUSTER, public };
        let mut receiving = Receiving::start(&pages[0], &cluster)?;
        for page in pages {
            let bytes = page.to_bytes();
            assert_eq!(Page::from_bytes(&bytes).as_ref(), Ok(page), "a page round-trips");
            receiving.take(page, &tables(), &cluster)?;
        }
        receiving.finish()
    }

    #[test]
    fn a_snapshot_with_one_entry_altered_added_or_removed_is_refused() {
        let secret = blsttc::SecretKey::random();
        let public = secret.public_key();
        let good = sorted(entries());
        assert!(receive(&pages(&secret, &good, &good), &public).is_ok(), "the certified snapshot");

        let mut altered = good.clone();
        altered[11].value.push(0);
        let mut added = good.clone();
        added.push(Entry { section: 1, key: vec![99], value: vec![1] });
        let mut removed = good.clone();
        removed.remove(17);
        let mut moved = good.clone();
        moved[4].section = 1 - moved[4].section;
        for (what, forged) in [("altered", altered), ("added", added), ("removed", removed), ("moved", moved)] {
            let forged = sorted(forged);
            let refused = receive(&pages(&secret, &forged, &good), &public);
            assert!(refused.is_err(), "a snapshot with an entry {what} is refused");
        }
        let mut twice = good.clone();
        twice.insert(6, good[6].clone());
        assert!(receive(&pages(&secret, &twice, &good), &public).is_err(), "an entry sent twice is refused");
        let other = blsttc::SecretKey::random();
        assert!(receive(&pages(&other, &good, &good), &public).is_err(), "another key's certificate");
    }

    /// A Byzantine server's snapshot larger than the certified state is refused at the first
    /// covered entry past the certified size, not after staging up to the global bound; and a
    /// header that claims another size than the certified one does not verify.
    #[test]
    fn a_snapshot_past_the_certified_size_is_refused_at_once() {
        let secret = blsttc::SecretKey::random();
        let public = secret.public_key();
        let cluster = Cluster { id: &CLUSTER, public: &public };
        let good = sorted(entries());
        // The certified state is the first 20 entries; the server sends all 40.
        let certified = sorted(good[..20].to_vec());
        let forged = pages(&secret, &good, &certified);
        let mut receiving = Receiving::start(&forged[0], &cluster).expect("the header is the certified one");
        let mut refused_at = None;
        for (i, page) in forged.iter().enumerate() {
            if let Err(error) = receiving.take(page, &tables(), &cluster) {
                assert!(error.contains("more than the certified state"), "{error}");
                refused_at = Some(i);
                break;
            }
        }
        let refused_at = refused_at.expect("a snapshot past the certified size is refused");
        assert!(receiving.entries <= 20, "taken no more than the certified entries: {}", receiving.entries);
        assert!(refused_at < forged.len() - 1, "refused before the last page");
        // A header claiming a larger size to make room does not verify.
        let mut first = forged[0].clone();
        if let Some(header) = first.header.as_mut() {
            header.size.entries += 20;
            header.size.bytes *= 2;
        }
        assert!(Receiving::start(&first, &cluster).is_err(), "a size the certificate does not sign");
    }

    /// A store's state served page by page from one read transaction — while the server writes
    /// on — staged and installed elsewhere, gives the same digest; the epoch row its answers need
    /// comes signed.
    #[test]
    fn a_snapshot_served_page_by_page_installs_the_same_state() {
        use crate::host::tables::{recompute_digest, WriteTables};
        use fides_service::Tables;
        use redb::TableHandle;
        let dir = tempfile::tempdir().expect("temporary directory");
        let server = Database::create(dir.path().join("server.redb")).expect("a store");
        let covered: Vec<String> = vec!["bistro_events".into(), OUTCOMES.name().to_owned()];
        let write = |epoch: u64, values: u8| {
            let txn = server.begin_write().expect("write");
            {
                let mut tables = WriteTables::new(&txn, &covered).expect("open");
                for k in 0..300u16 {
                    tables.put("bistro_events", &k.to_be_bytes(), &vec![values; 10_000]).expect("put");
                }
                tables.put(OUTCOMES.name(), &outcome_key(epoch, 0), b"an answer").expect("put");
                tables.store_digest(&txn).expect("digest");
                let state = Leaf::state(epoch, tables.digest()).hash();
                let row = EpochRow { time_ms: 10, leaves: vec![[3; 32], state], signature: None };
                let mut epochs = txn.open_table(EPOCHS).expect("epochs");
                epochs.insert(&epoch.to_be_bytes()[..], row.to_bytes().as_slice()).expect("row");
                let mut meta = txn.open_table(META).expect("meta");
                meta.insert(&b"next_epoch"[..], &(epoch + 1).to_le_bytes()[..]).expect("next");
            }
            txn.commit().expect("commit");
        };
        write(4, 1);
        let served = Served::open(&server, 77).expect("open").expect("a state to serve");
        assert_eq!(served.epoch, 4);
        write(5, 2); // The server goes on; the session still serves epoch 4.
        let secret = blsttc::SecretKey::random();
        let public = secret.public_key();
        let cluster = Cluster { id: &CLUSTER, public: &public };
        let signature = secret.sign_g2(served.root.point(&CLUSTER)).to_bytes();
        let certificate = Certificate { root: served.root, signature };
        let receiver = Database::create(dir.path().join("receiver.redb")).expect("a store");
        stage_clear(&receiver).expect("clear");
        let (mut cursor, mut receiving, mut pages) = (Cursor::start(), None, 0);
        loop {
            let mut page = served.page(&covered, &cursor, signature).expect("a page");
            if pages == 0 {
                let (digest, size, inclusion) = (served.digest, served.size, served.inclusion.clone());
                page.header = Some(Header { digest, size, inclusion, certificate });
                receiving = Some(Receiving::start(&page, &cluster).expect("a certified state leaf"));
            }
            let page = Page::from_bytes(&page.to_bytes()).expect("decodes");
            let taking = receiving.as_mut().expect("started");
            taking.take(&page, &covered, &cluster).expect("a good page");
            stage(&receiver, &page).expect("staged");
            pages += 1;
            match page.next {
                Some(next) => cursor = next,
                None => break,
            }
        }
        assert!(pages >= 3, "3 MB of entries come in pages of about 1 MiB ({pages})");
        let digest = receiving.expect("started").finish().expect("the certified digest");
        let txn = receiver.begin_write().expect("write");
        let installed = install(&txn, &covered, 4, &digest).expect("install");
        txn.commit().expect("commit");
        assert_eq!(installed, 300 + 1 + 1, "entries, the answer and its epoch row");
        assert_eq!(recompute_digest(&receiver, &covered).expect("recompute").commitment(), served.digest);
        let read = receiver.begin_read().expect("read");
        let row = read
            .open_table(EPOCHS)
            .expect("epochs")
            .get(&4u64.to_be_bytes()[..])
            .expect("get")
            .map(|v| v.value().to_vec());
        let row = EpochRow::from_bytes(&row.expect("the row of epoch 4")).expect("decodes");
        assert_eq!(row.signature, Some(signature), "signed with the snapshot's certificate");
        let meta = read.open_table(META).expect("meta");
        assert_eq!(meta_u64(&meta, b"next_epoch").expect("read"), Some(5));
    }

    /// The decoders of a peer's asks and pages take any bytes without panicking, and what they
    /// accept encodes back to the same bytes.
    #[test]
    fn snapshot_decoders_take_any_bytes_without_panicking() {
        use rand::{Rng, RngCore, SeedableRng};
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(21);
        let secret = blsttc::SecretKey::random();
        let good = sorted(entries());
        let mut samples: Vec<Vec<u8>> = pages(&secret, &good, &good).iter().map(|p| p.to_bytes()).collect();
        samples.push(Ask { session: 4, cursor: Cursor { section: 1, after: Some(vec![5; 9]) } }.to_bytes());
        samples.push(EpochRow { time_ms: 1, leaves: vec![[2; 32]; 3], signature: Some([3; 96]) }.to_bytes());
        for _ in 0..5_000 {
            let mut bytes = if rng.gen_bool(0.7) {
                samples[rng.gen_range(0..samples.len())].clone()
            } else {
                let mut bytes = vec![0u8; rng.gen_range(0..300)];
                rng.fill_bytes(&mut bytes);
                bytes
            };
            if !bytes.is_empty() {
                for _ in 0..rng.gen_range(0..4) {
                    let at = rng.gen_range(0..bytes.len());
                    bytes[at] ^= 1 << rng.gen_range(0..8);
                }
                bytes.truncate(rng.gen_range(0..=bytes.len()));
            }
            if let Ok(page) = Page::from_bytes(&bytes) {
                assert_eq!(page.to_bytes(), bytes);
            }
            if let Ok(ask) = Ask::from_bytes(&bytes) {
                assert_eq!(ask.to_bytes(), bytes);
            }
            if let Ok(row) = EpochRow::from_bytes(&bytes) {
                assert_eq!(row.to_bytes(), bytes);
            }
        }
    }

    #[test]
    fn epoch_rows_are_checked_against_the_cluster_key_and_bounds_hold() {
        let secret = blsttc::SecretKey::random();
        let public = secret.public_key();
        let cluster = Cluster { id: &CLUSTER, public: &public };
        let good = sorted(entries());
        let first = pages(&secret, &good, &good).remove(0);
        let mut receiving = Receiving::start(&first, &cluster).expect("certified");
        let tree = Tree::new(vec![[4; 32], [6; 32]]);
        let signature = secret.sign_g2(tree.epoch_root(7, 50).point(&CLUSTER)).to_bytes();
        let row = EpochRow { time_ms: 50, leaves: vec![[4; 32], [6; 32]], signature: Some(signature) };
        let page = |key: u64, row: &EpochRow| Page {
            session: 3,
            epoch: 9,
            header: None,
            entries: vec![Entry { section: 2, key: key.to_be_bytes().to_vec(), value: row.to_bytes() }],
            next: None,
        };
        assert!(receiving.take(&page(7, &row), &tables(), &cluster).is_ok(), "a signed row");
        let mut unsigned = Receiving::start(&first, &cluster).expect("certified");
        assert!(unsigned.take(&page(7, &EpochRow { signature: None, ..row.clone() }), &tables(), &cluster).is_err());
        let mut moved = Receiving::start(&first, &cluster).expect("certified");
        assert!(moved.take(&page(8, &row), &tables(), &cluster).is_err(), "a row under another epoch");
        let mut late = Receiving::start(&first, &cluster).expect("certified");
        assert!(late.take(&page(10, &row), &tables(), &cluster).is_err(), "a row after the snapshot");
        let mut nowhere = Receiving::start(&first, &cluster).expect("certified");
        let mut bad = page(7, &row);
        bad.entries[0].section = 3;
        assert!(nowhere.take(&bad, &tables(), &cluster).is_err(), "no such section");
        let mut big = Receiving::start(&first, &cluster).expect("certified");
        let huge = Page {
            entries: (0..5u8).map(|k| Entry { section: 0, key: vec![k], value: vec![0; PAGE_BYTES_MAX / 4] }).collect(),
            ..page(7, &row)
        };
        assert!(big.take(&huge, &tables(), &cluster).is_err(), "a page over its byte bound");
        let mut count = huge.to_bytes();
        count[17..21].copy_from_slice(&(PAGE_ENTRIES_MAX as u32 + 1).to_le_bytes());
        assert!(Page::from_bytes(&count).is_err(), "a page over its entry bound does not decode");
        let bytes = first.to_bytes();
        for cut in 0..bytes.len() {
            assert!(Page::from_bytes(&bytes[..cut]).is_err());
        }
    }
}
