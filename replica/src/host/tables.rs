//! The services' state in redb (`DIR/bistro.redb`, its name of before): every registered
//! service's tables (a [`Tables`] over a write transaction, for the registry to apply batches
//! in; a read-only one for its views), and the host's own: outcomes by (epoch, index), each
//! epoch's leaves and signature, and where the host is.

use std::collections::BTreeMap;

use fides_service::tables::full_name;
use fides_service::{Entries, Service, StoreError, Tables};
use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

/// Byte-keyed tables.
pub type BytesTable<'a> = TableDefinition<'a, &'static [u8], &'static [u8]>;

/// A table by its name in the store.
pub fn table(name: &str) -> BytesTable<'_> {
    TableDefinition::new(name)
}

/// (epoch ‖ index, big-endian) → the outcome's bytes.
pub const OUTCOMES: BytesTable<'static> = TableDefinition::new("replica_outcomes");
/// epoch (big-endian) → [`super::epochs::EpochRow`].
pub const EPOCHS: BytesTable<'static> = TableDefinition::new("replica_epochs");
/// name → value.
pub const META: BytesTable<'static> = TableDefinition::new("replica_meta");

fn store_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Store(error.to_string())
}

fn no_table(name: &str) -> StoreError {
    StoreError::Store(format!("no table {name} in this transaction"))
}

/// The services' tables in a write transaction, opened once, by their names in the store.
pub struct WriteTables<'a> {
    tables: BTreeMap<String, redb::Table<'a, &'static [u8], &'static [u8]>>,
}

impl<'a> WriteTables<'a> {
    /// Open tables `names` (the registry's [`fides_service::Registry::store_tables`]) in `txn`.
    pub fn new(txn: &'a WriteTransaction, names: &[String]) -> Result<WriteTables<'a>, StoreError> {
        let mut tables = BTreeMap::new();
        for name in names {
            tables.insert(name.clone(), txn.open_table(table(name)).map_err(store_error)?);
        }
        Ok(WriteTables { tables })
    }
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
        table.insert(key, value).map_err(store_error)?;
        Ok(())
    }

    fn delete(&mut self, name: &str, key: &[u8]) -> Result<(), StoreError> {
        let table = self.tables.get_mut(name).ok_or_else(|| no_table(name))?;
        table.remove(key).map_err(store_error)?;
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
