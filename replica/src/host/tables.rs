//! The services' state in redb (`DIR/bistro.redb`, its name of before): every registered
//! service's tables (a [`Tables`] over a write transaction, for the registry to apply batches
//! in; a read-only one for its views), and the host's own: outcomes by (epoch, index), each
//! epoch's leaves and signature, and where the host is.
//!
//! The **covered** tables — every service's, and the host's outcomes and the bistro's record
//! index — are what the state digest ([`StateDigest`]) hashes: a [`WriteTables`] over them keeps
//! the digest in step with each write (docs/service.md, "Service state in checkpoints").

use std::collections::BTreeMap;

use fides_service::tables::full_name;
use fides_service::{Entries, Service, StateDigest, StoreError, Tables};
use redb::{ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

/// Byte-keyed tables.
pub type BytesTable<'a> = TableDefinition<'a, &'static [u8], &'static [u8]>;

/// A table by its name in the store.
pub fn table(name: &str) -> BytesTable<'_> {
    TableDefinition::new(name)
}

/// (epoch ‖ index, big-endian) → the outcome's bytes.
pub const OUTCOMES: BytesTable<'static> = TableDefinition::new(fides_host::apply::OUTCOMES);
/// epoch (big-endian) → [`super::epochs::EpochRow`].
pub const EPOCHS: BytesTable<'static> = TableDefinition::new("replica_epochs");
/// This replica's votes in the agreement instances pending (instance → `decisions::vote_to_bytes`):
/// its own, so not covered by the state digest (docs/service.md, "Agreement instances").
pub const VOTES: BytesTable<'static> = TableDefinition::new("replica_votes");
/// name → value.
pub const META: BytesTable<'static> = TableDefinition::new("replica_meta");
/// The key in [`META`] of the state digest's lanes ([`StateDigest::to_bytes`]).
pub const META_STATE_DIGEST: &[u8] = b"state_digest";

fn store_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Store(error.to_string())
}

fn no_table(name: &str) -> StoreError {
    StoreError::Store(format!("no table {name} in this transaction"))
}

/// The covered tables in a write transaction, opened once, by their names in the store, with the
/// state digest kept in step: each write removes the old entry's lanes and adds the new one's.
pub struct WriteTables<'a> {
    tables: BTreeMap<String, redb::Table<'a, &'static [u8], &'static [u8]>>,
    digest: StateDigest,
}

impl<'a> WriteTables<'a> {
    /// Open tables `names` (the covered tables: the registry's
    /// [`fides_service::Registry::store_tables`] and the host's) in `txn`, with the digest stored
    /// in its [`META`].
    pub fn new(txn: &'a WriteTransaction, names: &[String]) -> Result<WriteTables<'a>, StoreError> {
        let digest = {
            let meta = txn.open_table(META).map_err(store_error)?;
            let stored = meta.get(META_STATE_DIGEST).map_err(store_error)?.map(|v| v.value().to_vec());
            match stored {
                Some(bytes) => StateDigest::from_bytes(&bytes).ok_or_else(|| {
                    StoreError::Store("the stored state digest is not of this version's length".into())
                })?,
                None => StateDigest::new(),
            }
        };
        let mut tables = BTreeMap::new();
        for name in names {
            tables.insert(name.clone(), txn.open_table(table(name)).map_err(store_error)?);
        }
        Ok(WriteTables { tables, digest })
    }

    /// The digest of the covered tables as written so far in this transaction.
    pub fn digest(&self) -> &StateDigest {
        &self.digest
    }

    /// Store the digest in `txn`'s [`META`] (call before the commit; the tables stay open).
    pub fn store_digest(&self, txn: &WriteTransaction) -> Result<(), StoreError> {
        let mut meta = txn.open_table(META).map_err(store_error)?;
        meta.insert(META_STATE_DIGEST, self.digest.to_bytes().as_slice()).map_err(store_error)?;
        Ok(())
    }
}

/// The state leaf of an epoch the worker applies commits to the digest kept in step.
impl fides_host::apply::StateTables for WriteTables<'_> {
    fn state_digest(&self) -> StateDigest {
        self.digest.clone()
    }
}

/// The digest of the covered tables `names` recomputed from every entry (a store of an older
/// format, and the check of a snapshot's).
pub fn recompute_digest(db: &redb::Database, names: &[String]) -> Result<StateDigest, StoreError> {
    let read = db.begin_read().map_err(store_error)?;
    let mut digest = StateDigest::new();
    for name in names {
        let opened = match read.open_table(table(name)) {
            Ok(opened) => opened,
            Err(redb::TableError::TableDoesNotExist(_)) => continue,
            Err(error) => return Err(store_error(error)),
        };
        for entry in opened.iter().map_err(store_error)? {
            let (key, value) = entry.map_err(store_error)?;
            digest.add(name, key.value(), value.value());
        }
    }
    Ok(digest)
}

fn collect_range<'t>(range: redb::Range<'t, &'static [u8], &'static [u8]>, max: usize) -> Result<Entries, StoreError> {
    let mut out = Vec::new();
    for entry in range.take(max) {
        let (k, v) = entry.map_err(store_error)?;
        out.push((k.value().to_vec(), v.value().to_vec()));
    }
    Ok(out)
}

impl Tables for WriteTables<'_> {
    fn get(&self, name: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let table = self.tables.get(name).ok_or_else(|| no_table(name))?;
        let value = table.get(key).map_err(store_error)?.map(|v| v.value().to_vec());
        Ok(value)
    }

    fn put(&mut self, name: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let table = self.tables.get_mut(name).ok_or_else(|| no_table(name))?;
        let old = table.insert(key, value).map_err(store_error)?.map(|v| v.value().to_vec());
        if old.as_deref() == Some(value) {
            return Ok(());
        }
        if let Some(old) = old {
            self.digest.remove(name, key, &old);
        }
        self.digest.add(name, key, value);
        Ok(())
    }

    fn delete(&mut self, name: &str, key: &[u8]) -> Result<(), StoreError> {
        let table = self.tables.get_mut(name).ok_or_else(|| no_table(name))?;
        let old = table.remove(key).map_err(store_error)?.map(|v| v.value().to_vec());
        if let Some(old) = old {
            self.digest.remove(name, key, &old);
        }
        Ok(())
    }

    fn range(&self, name: &str, from: &[u8], to: &[u8], max: usize) -> Result<Entries, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let table = self.tables.get(name).ok_or_else(|| no_table(name))?;
        collect_range(table.range(from..to).map_err(store_error)?, max)
    }
}

type ReadOnlyBytes = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

/// One service's tables in a read transaction (writes are refused): what its views read.
pub struct ReadTables {
    txn: ReadTransaction,
    service: &'static str,
    tables: &'static [&'static str],
}

impl ReadTables {
    /// Service `S`'s tables in `txn`.
    pub fn of<S: Service>(txn: ReadTransaction) -> ReadTables {
        ReadTables { txn, service: S::NAME, tables: S::TABLES }
    }

    /// The table `name` of the service, if it was ever written.
    fn open(&self, name: &str) -> Result<Option<ReadOnlyBytes>, StoreError> {
        let full = full_name(self.service, self.tables, name)?;
        match self.txn.open_table(table(&full)) {
            Ok(table) => Ok(Some(table)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(error) => Err(store_error(error)),
        }
    }
}

impl Tables for ReadTables {
    fn get(&self, name: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(table) = self.open(name)? else { return Ok(None) };
        let value = table.get(key).map_err(store_error)?.map(|v| v.value().to_vec());
        Ok(value)
    }

    fn put(&mut self, name: &str, _: &[u8], _: &[u8]) -> Result<(), StoreError> {
        Err(StoreError::Store(format!("a read transaction cannot write table {name}")))
    }

    fn delete(&mut self, name: &str, _: &[u8]) -> Result<(), StoreError> {
        Err(StoreError::Store(format!("a read transaction cannot write table {name}")))
    }

    fn range(&self, name: &str, from: &[u8], to: &[u8], max: usize) -> Result<Entries, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let Some(table) = self.open(name)? else { return Ok(Vec::new()) };
        collect_range(table.range(from..to).map_err(store_error)?, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Random writes, overwrites and deletes over several transactions: the digest kept write by
    /// write is the one recomputed from every entry.
    #[test]
    fn the_digest_kept_in_the_transaction_equals_the_one_recomputed_from_the_tables() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let db = redb::Database::create(dir.path().join("state.redb")).expect("a store");
        let names: Vec<String> = vec!["bistro_events".into(), "bistro_tickets".into(), "replica_outcomes".into()];
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
        for round in 0..20 {
            let txn = db.begin_write().expect("write");
            {
                let mut tables = WriteTables::new(&txn, &names).expect("open");
                for _ in 0..50 {
                    let name = &names[rng.gen_range(0..names.len())];
                    let key = [rng.gen_range(0..30u8)];
                    if rng.gen_bool(0.3) {
                        tables.delete(name, &key).expect("delete");
                    } else {
                        let value: Vec<u8> = (0..rng.gen_range(0..6)).map(|_| rng.gen_range(0..3u8)).collect();
                        tables.put(name, &key, &value).expect("put");
                    }
                }
                tables.store_digest(&txn).expect("store the digest");
            }
            txn.commit().expect("commit");
            let read = db.begin_read().expect("read");
            let meta = read.open_table(META).expect("meta");
            let stored = meta.get(META_STATE_DIGEST).expect("get").map(|v| v.value().to_vec()).expect("a digest");
            let recomputed = recompute_digest(&db, &names).expect("recompute");
            assert_eq!(StateDigest::from_bytes(&stored), Some(recomputed), "after round {round}");
        }
    }
}
