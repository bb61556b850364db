//! The worker's part in the agreement instances the services ask for: votes handed to the core
//! once durable, decision notices ordered, and the waiters whose answer awaits a decision
//! (`docs/agreement.md`, "The host's side"; the logic itself is `crate::host::decisions`, and the
//! leaves and stored answers of decisions are made with the rest of the epoch by
//! `fides_host::apply`).

use fides_atomic_broadcast::epoch::Request as AbcRequest;
use fides_atomic_broadcast::instances::{Decided, InstanceId as CoreInstance};
use fides_types::codec::Wire;
use redb::{ReadableDatabase, ReadableTable};
use tokio::sync::oneshot;

use super::Worker;
use crate::host::decisions::{self, Notice};
use crate::host::epochs::StoredAnswer;
use crate::host::tables;
use crate::node::Command;

impl Worker {
    /// After a restart: our votes in every instance still pending, for the core (it refuses a
    /// second start of an instance it runs or decided, harmlessly).
    pub(super) fn load_pending_votes(&mut self) -> anyhow::Result<()> {
        let read = self.db.begin_read()?;
        let table = read.open_table(tables::VOTES)?;
        for entry in table.iter()? {
            let (key, value) = entry?;
            let instance = CoreInstance::from_bytes(key.value())?;
            self.votes_unsent.push_back((instance, decisions::vote_from_bytes(value.value())?));
        }
        Ok(())
    }

    /// Keep an epoch's votes (ours, not covered) and drop those of the instances it decided, in
    /// the epoch's transaction.
    pub(super) fn write_votes(txn: &redb::WriteTransaction, agreed: &decisions::EpochAgreements) -> anyhow::Result<()> {
        let mut votes = txn.open_table(tables::VOTES)?;
        for (instance, vote) in &agreed.votes {
            votes.insert(instance.to_bytes().as_slice(), decisions::vote_to_bytes(vote).as_slice())?;
        }
        for applied in &agreed.decided {
            votes.remove(applied.instance.to_bytes().as_slice())?;
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
