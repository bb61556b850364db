//! The bistro's state in redb (`DIR/bistro.redb`): the service's tables ([`Table`]) and the
//! replica's own: outcomes by (epoch, index), each epoch's leaves and signature, where each event
//! record sits, and the uploads still to transfer here.

use fides_bistro::service::{Entries, Kv, KvError, Table};
use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

/// Byte-keyed tables.
pub type BytesTable = TableDefinition<'static, &'static [u8], &'static [u8]>;

/// The service's tables, by [`Table`].
pub fn table(table: Table) -> BytesTable {
    TableDefinition::new(table.name())
}

/// (epoch ‖ index, big-endian) → the outcome's bytes.
pub const OUTCOMES: BytesTable = TableDefinition::new("replica_outcomes");
/// epoch (big-endian) → [`super::worker::EpochRow`].
pub const EPOCHS: BytesTable = TableDefinition::new("replica_epochs");
/// event id → (epoch ‖ index) of the request that created it.
pub const RECORD_AT: BytesTable = TableDefinition::new("replica_record_at");
/// upload key → nothing: uploads this replica has not stored yet.
pub const PENDING: BytesTable = TableDefinition::new("replica_pending");
/// name → value.
pub const META: BytesTable = TableDefinition::new("replica_meta");

fn store_error(error: impl std::fmt::Display) -> KvError {
    KvError::Store(error.to_string())
}

/// The service's view of a write transaction: its tables, opened once.
pub struct WriteKv<'a> {
    tables: Vec<redb::Table<'a, &'static [u8], &'static [u8]>>,
}

impl<'a> WriteKv<'a> {
    /// Open the service's tables in `txn`.
    pub fn new(txn: &'a WriteTransaction) -> Result<WriteKv<'a>, KvError> {
        let tables =
            Table::ALL.iter().map(|t| txn.open_table(table(*t)).map_err(store_error)).collect::<Result<_, _>>()?;
        Ok(WriteKv { tables })
    }

    fn table(&self, t: Table) -> &redb::Table<'a, &'static [u8], &'static [u8]> {
        &self.tables[Table::ALL.iter().position(|x| *x == t).unwrap_or(0)]
    }

    fn table_mut(&mut self, t: Table) -> &mut redb::Table<'a, &'static [u8], &'static [u8]> {
        let at = Table::ALL.iter().position(|x| *x == t).unwrap_or(0);
        &mut self.tables[at]
    }
}

impl Kv for WriteKv<'_> {
    fn get(&self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        let value = self.table(t).get(key).map_err(store_error)?.map(|v| v.value().to_vec());
        Ok(value)
    }

    fn put(&mut self, t: Table, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        self.table_mut(t).insert(key, value).map_err(store_error)?;
        Ok(())
    }

    fn delete(&mut self, t: Table, key: &[u8]) -> Result<(), KvError> {
        self.table_mut(t).remove(key).map_err(store_error)?;
        Ok(())
    }

    fn range(&self, t: Table, from: &[u8], to: &[u8], max: usize) -> Result<Entries, KvError> {
        let mut out = Vec::new();
        for entry in self.table(t).range(from..to).map_err(store_error)?.take(max) {
            let (k, v) = entry.map_err(store_error)?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }
}

/// The service's view of a read transaction (writes are refused).
pub struct ReadKv {
    /// The transaction.
    pub txn: ReadTransaction,
}

impl Kv for ReadKv {
    fn get(&self, t: Table, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        let table = match self.txn.open_table(table(t)) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(error) => return Err(store_error(error)),
        };
        let value = table.get(key).map_err(store_error)?.map(|v| v.value().to_vec());
        Ok(value)
    }

    fn put(&mut self, _: Table, _: &[u8], _: &[u8]) -> Result<(), KvError> {
        Err(KvError::Store("a read transaction cannot write".into()))
    }

    fn delete(&mut self, _: Table, _: &[u8]) -> Result<(), KvError> {
        Err(KvError::Store("a read transaction cannot write".into()))
    }

    fn range(&self, t: Table, from: &[u8], to: &[u8], max: usize) -> Result<Entries, KvError> {
        let table = match self.txn.open_table(table(t)) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(error) => return Err(store_error(error)),
        };
        let mut out = Vec::new();
        for entry in table.range(from..to).map_err(store_error)?.take(max) {
            let (k, v) = entry.map_err(store_error)?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }
}
