//! The worker's part in the agreement instances the services ask for: votes handed to the core
//! once durable, decision notices ordered, the leaves and stored answers of decisions, and the
//! waiters whose answer awaits a decision (`docs/agreement.md`, "The host's side"; the logic
//! itself is `crate::host::decisions`).

use fides_atomic_broadcast::epoch::Request as AbcRequest;
use fides_atomic_broadcast::instances::{Decided, InstanceId as CoreInstance};
use fides_service::certificate::Leaf;
use fides_types::codec::Wire;
use redb::{ReadableDatabase, ReadableTable, TableHandle};
use tokio::sync::oneshot;

use super::Worker;
use crate::host::decisions::{self, EpochAgreements, Notice};
use crate::host::epochs::{outcome_key, StoredAnswer};
use crate::host::tables;
use crate::node::Command;

/// The leaves of the decisions applied in an epoch, after its other leaves: each decision's
/// `Sign` records as service leaves of the service that asked, in the order the decisions were
/// applied. Returns, per decision, its outcomes with their leaf (0 for what is not signed).
pub(super) fn decision_leaves(
    leaves: &mut Vec<[u8; 32]>,
    agreed: &EpochAgreements,
) -> Vec<Vec<(fides_service::Outcome, u64)>> {
    let mut out = Vec::with_capacity(agreed.decided.len());
    for applied in &agreed.decided {
        let mut made = Vec::with_capacity(applied.outcomes.len());
        for outcome in &applied.outcomes {
            let leaf = match outcome {
                fides_service::Outcome::Sign(record) => {
                    leaves.push(Leaf::Service { service: applied.service, record: record.clone() }.hash());
                    leaves.len() as u64 - 1
                }
                _ => 0,
            };
            made.push((outcome.clone(), leaf));
        }
        out.push(made);
    }
    out
}

impl Worker {
    /// The stored answers of the requests that asked for an instance in epoch `epoch` (one more
    /// awaited) and of those whose instance was decided in it (one fewer, and its outcomes
    /// certified by `epoch`), in the epoch's transaction.
    pub(super) fn write_agreements(
        kv: &mut dyn fides_service::Tables,
        epoch: u64,
        agreed: &EpochAgreements,
        decided: Vec<Vec<(fides_service::Outcome, u64)>>,
    ) -> Result<(), anyhow::Error> {
        let outcomes = tables::OUTCOMES.name();
        let mut update = |asker: (u64, u32), change: &mut dyn FnMut(&mut StoredAnswer)| -> anyhow::Result<()> {
            let key = outcome_key(asker.0, asker.1);
            let Some(bytes) = kv.get(outcomes, key.as_slice())? else { return Ok(()) };
            let mut answer = StoredAnswer::from_bytes(&bytes)?;
            change(&mut answer);
            kv.put(outcomes, key.as_slice(), answer.to_bytes().as_slice())?;
            Ok(())
        };
        for asker in &agreed.asked {
            update(*asker, &mut |answer| answer.awaiting += 1)?;
        }
        for (applied, made) in agreed.decided.iter().zip(decided) {
            let Some(asker) = applied.asker else { continue };
            let mut made = Some(made);
            update(asker, &mut |answer| {
                answer.awaiting = answer.awaiting.saturating_sub(1);
                let made = made.take().unwrap_or_default();
                answer.decided.extend(made.into_iter().map(|(outcome, leaf)| (outcome, epoch, leaf)));
            })?;
        }
        Ok(())
    }

    /// After a restart: the votes of every instance still pending, for the core (it refuses a
    /// second start of an instance it runs or decided, harmlessly).
    pub(super) fn load_pending_votes(&mut self) -> anyhow::Result<()> {
        let read = self.db.begin_read()?;
        let table = read.open_table(tables::table(decisions::PENDING))?;
        for entry in table.iter()? {
            let (key, value) = entry?;
            let instance = CoreInstance::from_bytes(key.value())?;
            let pending = decisions::Pending::from_bytes(value.value())?;
            self.votes_unsent.push_back((instance, pending.vote));
        }
        Ok(())
    }

    /// Hand the core the votes durable here, in order, as long as its queue takes them.
    pub(super) fn send_votes(&mut self) {
        while let Some((instance, vote)) = self.votes_unsent.pop_front() {
            if let Err(command) = self.setup.node.try_send(Command::Agree { instance, vote }) {
                if let Command::Agree { instance, vote } = command {
                    self.votes_unsent.push_front((instance, vote));
                }
                return;
            }
        }
    }

    /// Order our notice of the core's decision `decided` (again after a restart: the same request,
    /// so ordered at most once while atomic broadcast remembers it; a second one would be ignored).
    pub(super) fn send_notice(&mut self, decided: &Decided) {
        let notice = Notice::sign(&self.setup.notices.identity, &self.setup.cluster, self.setup.our_index.0, decided);
        let (client, id) = notice.request_key();
        let request = AbcRequest { client, id, payload: notice.to_payload() };
        // Nobody waits for the answer: the host takes the notice when its epoch is applied.
        let (reply, _) = oneshot::channel::<Result<crate::node::Ordered, crate::node::SubmitError>>();
        if self.setup.node.try_send(Command::Submit { request, reply: Box::new(reply) }).is_err() {
            tracing::warn!(instance = ?decided.instance, "the driver's queue is full: a decision notice is not sent");
        }
    }

    /// Answer the waiters whose request awaited a decision, once it is applied and certified.
    pub(super) fn answer_deciding(&mut self) {
        if self.deciding.is_empty() {
            return;
        }
        let Ok(read) = self.db.begin_read() else { return };
        let Ok(outcomes) = read.open_table(tables::OUTCOMES) else { return };
        for reply in std::mem::take(&mut self.deciding) {
            if reply.is_closed() {
                continue;
            }
            let (epoch, index) = (reply.epoch(), reply.index());
            match Self::stored(&outcomes, epoch, index) {
                Ok(Some(stored)) if !self.settled(&stored) => self.deciding.push(reply),
                Ok(stored) => reply.send(self.answer(&read, epoch, index, stored)),
                Err(error) => reply.send(Err(error)),
            }
        }
    }

    /// Whether a stored answer is complete: no instance it asked for awaits its decision, and
    /// every epoch that certifies a decision's outcome is certified.
    pub(super) fn settled(&self, stored: &StoredAnswer) -> bool {
        let certified = |e: u64| e < self.next_epoch && !self.unsigned.contains_key(&e);
        stored.awaiting == 0 && stored.decided.iter().all(|(_, e, _)| certified(*e))
    }
}
