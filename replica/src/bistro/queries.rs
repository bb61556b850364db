//! The bistro's questions to the host's worker, run on its thread against the services' store
//! (the host's [`View`]): an event's signed record, the events, the relays, this replica's
//! decryption shares of a collection, and the uploads it still has to fetch.

use std::collections::HashMap;

use fides_bistro::proof::EpochProof;
use fides_bistro::records::{domain, EventId};
use fides_bistro::service::{view, Code, Outcome, Service};
use fides_service::StoreError;
use fides_types::codec::Wire;
use redb::{ReadableDatabase, ReadableTable};

use super::{kv, CollectShares, UploadInfo};
use crate::host::epochs::HostAnswer;
use crate::host::worker::View;

/// The bistro's answer for an ordered request.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The outcome.
    pub outcome: Outcome,
    /// The proof, for a signed record.
    pub proof: Option<EpochProof>,
}

impl Answer {
    /// The bistro's answer in a host's answer (its first outcome: the bistro makes one per
    /// request); `None` if the request went to another service.
    pub fn of(host: &HostAnswer) -> Result<Answer, String> {
        if host.service != <Service as fides_service::Service>::ID {
            return Err(format!("the request ordered there is for service {}, not the bistro", host.service));
        }
        let Some((outcome, certified)) = host.outcomes.first() else {
            return Err("the bistro made nothing of the request ordered there".into());
        };
        let leaf = certified.as_ref().map_or(0, |(inclusion, _)| inclusion.index);
        let outcome = fides_bistro::service::answer(outcome, leaf).map_err(|e| e.to_string())?;
        let proof =
            certified.as_ref().map(|(inclusion, certificate)| EpochProof::certified(inclusion.clone(), certificate));
        Ok(Answer { outcome, proof })
    }
}

/// An upload this replica has yet to fetch.
#[derive(Clone, Debug)]
pub struct PendingUpload {
    /// The event.
    pub event: EventId,
    /// The ticket.
    pub ticket: u64,
    /// The upload's hash.
    pub hash: [u8; 32],
    /// Its size.
    pub size: u64,
    /// Its capsule.
    pub capsule: Vec<u8>,
    /// Intermediaries holding it: their keys and, for relays, their addresses.
    pub intermediaries: Vec<([u8; 32], Option<String>)>,
    /// Replicas that stored it.
    pub stored_by: Vec<u32>,
}

/// An answer with where its request was ordered: (answer, epoch, index).
pub type Located = (Answer, u64, u32);

/// A relay's key and state.
pub type Relay = ([u8; 32], fides_bistro::service::RelayState);

/// Small types of answers.
pub mod view_types {
    /// An event in a listing.
    #[derive(Clone, Debug)]
    pub struct EventSummary {
        /// Id.
        pub event: [u8; 16],
        /// Description.
        pub description: String,
        /// Deadline.
        pub deadline_ms: u64,
        /// Created.
        pub created_ms: u64,
        /// Tickets issued.
        pub tickets: u64,
        /// Collections.
        pub collections: u64,
    }
}

/// The signed record of `event`'s creation, with where it was ordered.
pub fn event(view: &mut View<'_>, event: EventId) -> anyhow::Result<Option<Located>> {
    let at = {
        let read = view.db().begin_read()?;
        let table = read.open_table(kv::RECORD_AT)?;
        let at = table.get(&event.0[..])?.map(|v| v.value().to_vec());
        at
    };
    let Some(at) = at else { return Ok(None) };
    let epoch = u64::from_be_bytes(at.get(..8).and_then(|b| b.try_into().ok()).unwrap_or([0; 8]));
    let index = u32::from_be_bytes(at.get(8..12).and_then(|b| b.try_into().ok()).unwrap_or([0; 4]));
    let answer = view.answer_at(epoch, index).map_err(anyhow::Error::msg)?;
    Ok(Some((Answer::of(&answer).map_err(anyhow::Error::msg)?, epoch, index)))
}

/// Events after `after`, at most `max`.
pub fn events(
    view: &View<'_>,
    after: Option<EventId>,
    max: usize,
) -> Result<Vec<view_types::EventSummary>, StoreError> {
    let kv = view.read_tables::<Service>()?;
    Ok(view::events(&kv, after.as_ref(), max)?
        .into_iter()
        .map(|e| view_types::EventSummary {
            event: e.record.event.0,
            description: e.record.terms.description.clone(),
            deadline_ms: e.record.terms.deadline_ms,
            created_ms: e.record.created_ms,
            tickets: e.tickets,
            collections: e.collections,
        })
        .collect())
}

/// The registered relays.
pub fn relays(view: &View<'_>) -> Result<Vec<Relay>, StoreError> {
    view::relays(&view.read_tables::<Service>()?)
}

/// An upload is stored here now: it is no longer to fetch.
pub fn fetched(view: &View<'_>, event: EventId, ticket: u64, hash: [u8; 32]) -> anyhow::Result<()> {
    let txn = view.db().begin_write()?;
    {
        let mut pending = txn.open_table(kv::PENDING)?;
        let key = [&event.0[..], &ticket.to_be_bytes(), &hash].concat();
        pending.remove(key.as_slice())?;
    }
    txn.commit()?;
    Ok(())
}

/// This replica's decryption shares of collection `number` of `event`, sealed to the collection's
/// recipient, with what it knows of each upload.
pub fn collect_shares(view: &View<'_>, event: EventId, number: u64) -> Result<CollectShares, (Code, String)> {
    let internal = |e: StoreError| (Code::FailedPrecondition, format!("store: {e}"));
    let kv = view.read_tables::<Service>().map_err(internal)?;
    let Some(collection) = view::collection(&kv, &event, number).map_err(internal)? else {
        return Err((
            Code::NotFound,
            format!("no collection {number} of event {event} here (yet): it may not be applied here"),
        ));
    };
    let cluster = view.setup().cluster;
    let mut uploads = Vec::with_capacity(collection.uploads.len());
    let mut shares = Vec::with_capacity(collection.uploads.len() * 48);
    for (ticket, hash) in &collection.uploads {
        let Some(upload) = view::upload(&kv, &event, *ticket, hash).map_err(internal)? else { continue };
        let record = view::ticket(&kv, &event, *ticket).map_err(internal)?;
        let capsule = fides_crypto::labeled::LabeledCapsule::from_bytes(&upload.capsule)
            .map_err(|e| (Code::FailedPrecondition, format!("a recorded capsule does not parse: {e}")))?;
        let share = if view.setup().wrong_shares {
            // Fault injection: a valid point that is not our share of this capsule.
            let other = fides_crypto::labeled::LabeledCapsule::encrypt(
                &view.setup().encryption.public().public_key(),
                b"wrong",
                &[0; 40],
                &mut rand::thread_rng(),
            )
            .map_err(|e| (Code::FailedPrecondition, e.to_string()))?;
            view.setup().encryption.labeled_share(&other).to_bytes()
        } else {
            view.setup().encryption.labeled_share(&capsule).to_bytes()
        };
        shares.extend_from_slice(&share);
        uploads.push(UploadInfo {
            ticket: *ticket,
            hash: *hash,
            size: upload.size,
            capsule: upload.capsule.clone(),
            stored_by: upload.stored_by.clone(),
            ticket_record: record.map(|t| t.to_bytes()).unwrap_or_default(),
        });
    }
    let replica = view.setup().our_index.0;
    let associated =
        fides_crypto::tagged(domain::SHARES_AD, &[&cluster, &event.0, &number.to_le_bytes(), &replica.to_le_bytes()]);
    let sealed = fides_crypto::sealed::seal_to(&collection.recipient, &associated, &shares, &mut rand::rngs::OsRng)
        .map_err(|e| (Code::InvalidArgument, format!("cannot seal to the recipient key: {e}")))?;
    Ok(CollectShares { replica, uploads, sealed })
}

/// Uploads still to fetch here whose event's deadline passed, at most `max`.
pub fn pending(view: &View<'_>, max: usize) -> anyhow::Result<Vec<PendingUpload>> {
    let kv = view.read_tables::<Service>()?;
    let read = view.db().begin_read()?;
    let table = read.open_table(kv::PENDING)?;
    let mut out = Vec::new();
    let mut deadlines: HashMap<EventId, u64> = HashMap::new();
    let now = view.last_time()?;
    for entry in table.iter()? {
        if out.len() >= max {
            break;
        }
        let (key, _) = entry?;
        let key = key.value();
        let (Some(event), Some(ticket), Some(hash)) = (
            key.get(..16).and_then(|b| <[u8; 16]>::try_from(b).ok()),
            key.get(16..24).and_then(|b| <[u8; 8]>::try_from(b).ok()),
            key.get(24..56).and_then(|b| <[u8; 32]>::try_from(b).ok()),
        ) else {
            continue;
        };
        let event = EventId(event);
        let ticket = u64::from_be_bytes(ticket);
        let deadline = match deadlines.get(&event) {
            Some(d) => *d,
            None => {
                let d = view::event(&kv, &event)?.map_or(u64::MAX, |e| e.record.terms.deadline_ms);
                deadlines.insert(event, d);
                d
            }
        };
        if now <= deadline {
            continue;
        }
        let Some(upload) = view::upload(&kv, &event, ticket, &hash)? else { continue };
        let mut intermediaries = Vec::new();
        for (key, _) in &upload.intermediaries {
            let address = view::relay(&kv, key)?.map(|r| r.address);
            intermediaries.push((*key, address));
        }
        out.push(PendingUpload {
            event,
            ticket,
            hash,
            size: upload.size,
            capsule: upload.capsule,
            intermediaries,
            stored_by: upload.stored_by,
        });
    }
    Ok(out)
}
