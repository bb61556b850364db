//! The bistro's own tables in the services' store, beside the host's (their names of before).

use redb::TableDefinition;

use crate::host::tables::BytesTable;

/// event id → (epoch ‖ index) of the request that created it.
pub const RECORD_AT: BytesTable<'static> = TableDefinition::new("replica_record_at");
/// upload key → nothing: uploads this replica has not stored yet.
pub const PENDING: BytesTable<'static> = TableDefinition::new("replica_pending");
