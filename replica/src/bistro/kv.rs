//! The bistro's own tables in the services' store, beside the host's (their names of before).

use fides_atomic_broadcast::epoch::Batch;
use fides_bistro::records::{Request, Signed};
use fides_bistro::service::{Outcome, Service};
use fides_service::Tables;
use redb::{TableDefinition, TableHandle, WriteTransaction};

use crate::host::epochs::{outcome_key, StoredAnswer};
use crate::host::tables::BytesTable;

/// event id → (epoch ‖ index) of the request that created it. Covered by the state digest (the
/// same at every replica), written through the host's [`Tables`].
pub const RECORD_AT: BytesTable<'static> = TableDefinition::new("replica_record_at");
/// upload key → nothing: uploads this replica has not stored yet. This replica's own (it takes
/// an upload off once it stored it), so not covered by the state digest: a replica that installs
/// a snapshot rebuilds it from the bistro's uploads ([`pending_from_uploads`]).
pub const PENDING: BytesTable<'static> = TableDefinition::new("replica_pending");

/// The upload key of the held report ordered at `index` of `batch`.
fn held_key(batch: &Batch, index: u32) -> Option<Vec<u8>> {
    let request = batch.requests.get(index as usize)?;
    match Request::from_payload(&request.payload) {
        Ok(Request::Held(report)) => {
            let r = report.receipt;
            Some([&r.event.0[..], &r.ticket.to_be_bytes(), &r.upload_hash].concat())
        }
        _ => None,
    }
}

/// The bistro's replica-side indexes of an applied batch, in the host's transaction: where each
/// event's record was signed (for `GetEvent`), and the uploads this replica has yet to fetch (a
/// new held report; `Fetched` takes them off). `covered` holds [`RECORD_AT`].
pub fn index(
    covered: &mut dyn Tables,
    txn: &WriteTransaction,
    batch: &Batch,
    answers: &[(u32, StoredAnswer)],
) -> anyhow::Result<()> {
    let bistro = <Service as fides_service::Service>::ID;
    let mut pending = txn.open_table(PENDING)?;
    for (index, answer) in answers.iter().filter(|(_, a)| a.service == bistro) {
        for (outcome, leaf) in &answer.outcomes {
            match fides_bistro::service::answer(outcome, *leaf)? {
                Outcome::Signed { record: Signed::Event(record), .. } => {
                    covered.put(RECORD_AT.name(), &record.event.0[..], &outcome_key(batch.epoch, *index))?;
                }
                Outcome::Held { first: true } => {
                    if let Some(key) = held_key(batch, *index) {
                        pending.insert(key.as_slice(), &[][..])?;
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// After a snapshot was installed: every upload the bistro records is one this replica has yet to
/// fetch (its blobs went with its state, as when it replayed the log from the start).
pub fn rebuild_pending(txn: &WriteTransaction) -> anyhow::Result<()> {
    type S = Service;
    let uploads = fides_service::tables::full_name(
        <S as fides_service::Service>::NAME,
        <S as fides_service::Service>::TABLES,
        "uploads",
    )?;
    txn.delete_table(PENDING)?;
    let uploads = txn.open_table(crate::host::tables::table(&uploads))?;
    let mut pending = txn.open_table(PENDING)?;
    for entry in redb::ReadableTable::iter(&uploads)? {
        let (key, _) = entry?;
        pending.insert(key.value(), &[][..])?;
    }
    Ok(())
}
