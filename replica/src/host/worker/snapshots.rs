//! The worker's half of snapshots of the services' state (docs/service.md, "Service state in
//! checkpoints"): serving the state at our last applied epoch to a peer, and fetching one when
//! the batches we need next were skipped by a checkpoint jump (the driver's backfill holds them).
//!
//! A server answers each session from one read transaction (MVCC: the services keep applying
//! epochs meanwhile); its first page waits until the session's epoch is certified here. A
//! receiver asks one peer at a time, checks every page as it comes ([`Receiving`]), stages the
//! entries, and installs them in one transaction once the digest of all of them is the certified
//! one. Only a worker with no state (wiped, or new) or at least [`FAR_BEHIND_EPOCHS`] behind
//! fetches one; a shorter gap is replayed from the backfilled batches, as before. A peer that sends a bad page wastes one attempt: the fault is counted, the next peer is
//! asked. After [`ROUNDS`] rounds of the peers without a snapshot, the worker gives up and replays
//! the skipped batches as before.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fides_service::certificate::EpochSigner;
use fides_service::certificate::SignerConfig;
use fides_types::codec::Wire;
use fides_types::{FaultKind, NodeIndex};
use rand::Rng;

use super::Worker;
use crate::bistro::kv;
use crate::host::snapshot::{self, Ask, Cluster, Cursor, Header, Page, Receiving, Served};
use crate::node::Command;

/// The kind of a service frame asking for a page of a snapshot.
pub(super) const SNAPSHOT_ASK: u8 = 5;
/// The kind of a service frame carrying a page of a snapshot.
pub(super) const SNAPSHOT_PAGE: u8 = 6;
/// A page not in after this long: the next peer is asked (the first page may wait for the
/// snapshot epoch's certificate at the server).
const PAGE_WAIT: Duration = Duration::from_secs(10);
/// A served session idle this long is closed (its read transaction released).
const SERVED_IDLE: Duration = Duration::from_secs(60);
/// A served session is closed after this long in any case: its read transaction keeps the pages
/// of that state from being reused, so a peer must not hold one open forever.
const SERVED_MAX: Duration = Duration::from_secs(600);
/// How often the driver's store is looked at for a backfill the services wait on.
const POLL_EVERY: Duration = Duration::from_millis(500);
/// A worker with state that lacks at least this many skipped epochs fetches a snapshot; with
/// fewer it replays them (a wiped one, with no state, always fetches one).
const FAR_BEHIND_EPOCHS: u64 = 1024;
/// Rounds of all the peers before giving up on a snapshot.
const ROUNDS: u32 = 2;

/// What the worker keeps for snapshots.
#[derive(Default)]
pub(super) struct Snapshots {
    fetch: Option<Fetch>,
    served: BTreeMap<NodeIndex, Serving>,
    attempts: u32,
    turn: u32,
    /// The floor we last gave the driver: no new fetch while it is our next epoch.
    floor_sent: Option<u64>,
    polled: Option<Instant>,
}

impl Snapshots {
    /// Whether a snapshot is being fetched (the worker then applies no batch).
    pub(super) fn fetching(&self) -> bool {
        self.fetch.is_some()
    }
}

struct Fetch {
    peer: NodeIndex,
    session: u64,
    asked: Instant,
    receiving: Option<Receiving>,
}

struct Serving {
    served: Served,
    /// A first page waiting for the epoch's certificate.
    waiting: bool,
    used: Instant,
    opened: Instant,
}

impl Worker {
    /// Serve what waits for a certificate, close idle sessions, time out a fetch, and start one
    /// when the batches we need next are being backfilled.
    pub(super) fn poll_snapshots(&mut self) {
        let waiting: Vec<NodeIndex> =
            self.snapshots.served.iter().filter(|(_, s)| s.waiting).map(|(peer, _)| *peer).collect();
        for peer in waiting {
            self.serve(peer, &Cursor::start());
        }
        self.snapshots.served.retain(|_, s| s.used.elapsed() < SERVED_IDLE && s.opened.elapsed() < SERVED_MAX);
        if let Some(fetch) = &self.snapshots.fetch {
            if fetch.asked.elapsed() > PAGE_WAIT {
                tracing::info!(peer = fetch.peer.0, "no snapshot page within {PAGE_WAIT:?}: asking the next peer");
                self.next_attempt();
            }
            return;
        }
        if self.snapshots.polled.is_some_and(|at| at.elapsed() < POLL_EVERY) {
            return;
        }
        self.snapshots.polled = Some(Instant::now());
        let backfill = match self.setup.batches.backfill() {
            Ok(backfill) => backfill,
            Err(error) => {
                tracing::error!(%error, "cannot read the driver's store");
                return;
            }
        };
        let Some(backfill) = backfill else { return };
        if self.snapshots.floor_sent == Some(self.next_epoch) {
            return;
        }
        let wiped = self.next_epoch == 0;
        let far_behind = backfill.high.saturating_sub(self.next_epoch) >= FAR_BEHIND_EPOCHS;
        if self.next_epoch <= backfill.high && (wiped || far_behind) {
            tracing::info!(
                next_epoch = self.next_epoch,
                skipped_to = backfill.high,
                "the batches the services need next were skipped: fetching a snapshot of their state"
            );
            self.snapshots.attempts = 0;
            self.next_attempt();
        } else {
            // A short gap: the skipped batches are cheaper to replay (or, past them already, we
            // need none of them). The driver need not wait.
            self.give_floor(self.next_epoch);
        }
    }

    fn send_kind(&self, to: NodeIndex, kind: u8, body: &[u8]) {
        let mut frame = Vec::with_capacity(2 + body.len());
        frame.push(crate::node::FRAME_SERVICE);
        frame.push(kind);
        frame.extend_from_slice(body);
        let _ = self.setup.node.try_send(Command::Send { to: Some(to), frame });
    }

    fn peer_fault(&self, peer: NodeIndex, kind: FaultKind, reason: &str) {
        tracing::warn!(peer = peer.0, reason, "a snapshot of the services' state from this replica is refused");
        let _ = self.setup.node.try_send(Command::Fault { peer, kind });
    }

    /// Ask the next peer in turn, or give up after [`ROUNDS`] rounds: then the driver fetches the
    /// skipped batches and the worker replays them.
    fn next_attempt(&mut self) {
        self.snapshots.fetch = None;
        let peers: Vec<NodeIndex> = self.setup.quorum.nodes().filter(|p| *p != self.setup.our_index).collect();
        if self.snapshots.attempts >= ROUNDS * peers.len() as u32 || peers.is_empty() {
            tracing::warn!(
                next_epoch = self.next_epoch,
                "no peer sent a snapshot of the services' state: replaying the skipped batches instead"
            );
            self.give_floor(self.next_epoch);
            return;
        }
        if let Err(error) = snapshot::stage_clear(&self.db) {
            tracing::error!(%error, "cannot clear the snapshot stage");
            return;
        }
        let peer = peers[self.snapshots.turn as usize % peers.len()];
        self.snapshots.turn = self.snapshots.turn.wrapping_add(1);
        self.snapshots.attempts += 1;
        let session = rand::thread_rng().gen();
        self.snapshots.fetch = Some(Fetch { peer, session, asked: Instant::now(), receiving: None });
        self.send_kind(peer, SNAPSHOT_ASK, &Ask { session, cursor: Cursor::start() }.to_bytes());
    }

    fn give_floor(&mut self, epoch: u64) {
        self.snapshots.floor_sent = Some(epoch);
        let _ = self.setup.node.try_send(Command::BackfillFloor { epoch });
    }

    /// A peer asks for a page: a new session opens on our state now (its first page waits for the
    /// certificate); one peer has one session at a time.
    pub(super) fn on_snapshot_ask(&mut self, from: NodeIndex, body: &[u8]) {
        let Ok(ask) = Ask::from_bytes(body) else {
            self.peer_fault(from, FaultKind::Undecodable, "an ask for a snapshot page does not decode");
            return;
        };
        let known = self.snapshots.served.get(&from).is_some_and(|s| s.served.session == ask.session);
        if !known {
            if ask.cursor != Cursor::start() {
                return; // A session we no longer hold (closed, or before a restart): it starts again.
            }
            match Served::open(&self.db, ask.session) {
                Ok(Some(served)) => {
                    let serving = Serving { served, waiting: false, used: Instant::now(), opened: Instant::now() };
                    self.snapshots.served.insert(from, serving);
                }
                Ok(None) => return, // Nothing to serve yet.
                Err(error) => {
                    tracing::error!(%error, "cannot open a snapshot of the services' state");
                    return;
                }
            }
        }
        self.serve(from, &ask.cursor);
    }

    /// Send `peer` the page of its session at `cursor` (the first once its epoch is certified).
    fn serve(&mut self, peer: NodeIndex, cursor: &Cursor) {
        let Some(epoch) = self.snapshots.served.get(&peer).map(|s| s.served.epoch) else { return };
        let certificate = match self.certificate_of(epoch) {
            Ok(Some(certificate)) => certificate,
            Ok(None) => {
                if let Some(serving) = self.snapshots.served.get_mut(&peer) {
                    serving.waiting = *cursor == Cursor::start();
                }
                return;
            }
            Err(error) => {
                tracing::error!(%error, epoch, "cannot read an epoch's certificate");
                return;
            }
        };
        let Some(serving) = self.snapshots.served.get_mut(&peer) else { return };
        serving.waiting = false;
        serving.used = Instant::now();
        if certificate.root != serving.served.root {
            tracing::error!(epoch, "our certificate of an epoch is not on our root");
            return;
        }
        let page = match serving.served.page(&self.store_tables, cursor, certificate.signature) {
            Ok(page) => page,
            Err(error) => {
                tracing::error!(%error, "cannot read a snapshot page");
                return;
            }
        };
        let header = (*cursor == Cursor::start()).then(|| Header {
            digest: serving.served.digest,
            size: serving.served.size,
            inclusion: serving.served.inclusion.clone(),
            certificate,
        });
        self.send_kind(peer, SNAPSHOT_PAGE, &Page { header, ..page }.to_bytes());
    }

    /// A page of the snapshot we fetch: checked, staged, and installed after the last one.
    pub(super) fn on_snapshot_page(&mut self, from: NodeIndex, body: &[u8]) {
        let Some(fetch) = &self.snapshots.fetch else { return };
        if fetch.peer != from {
            return;
        }
        let page = match Page::from_bytes(body) {
            Ok(page) => page,
            Err(error) => {
                self.peer_fault(from, FaultKind::Undecodable, &format!("a snapshot page does not decode: {error}"));
                return self.next_attempt();
            }
        };
        if page.session != fetch.session {
            return; // An earlier attempt's.
        }
        match self.take_page(&page) {
            Ok(true) => {}
            Ok(false) => return self.next_attempt(),
            Err((kind, reason)) => {
                self.peer_fault(from, kind, &reason);
                return self.next_attempt();
            }
        }
        match page.next {
            Some(cursor) => {
                let Some(fetch) = &mut self.snapshots.fetch else { return };
                fetch.asked = Instant::now();
                let ask = Ask { session: fetch.session, cursor };
                self.send_kind(from, SNAPSHOT_ASK, &ask.to_bytes());
            }
            None => self.finish_snapshot(from),
        }
    }

    /// Check a page and stage its entries; `Ok(false)` if the snapshot is of no use (older than
    /// our state: an honest peer behind us, not a fault) or could not be staged.
    fn take_page(&mut self, page: &Page) -> Result<bool, (FaultKind, String)> {
        let public = self.setup.signing.public().public_key();
        let cluster = Cluster { id: &self.setup.cluster, public: &public };
        let next_epoch = self.next_epoch;
        let Some(fetch) = &mut self.snapshots.fetch else { return Ok(false) };
        if fetch.receiving.is_none() {
            let receiving = Receiving::start(page, &cluster).map_err(|r| (FaultKind::InvalidCheckpoint, r))?;
            if receiving.epoch < next_epoch {
                tracing::info!(peer = fetch.peer.0, epoch = receiving.epoch, "a snapshot older than our state");
                return Ok(false);
            }
            fetch.receiving = Some(receiving);
        }
        let Some(receiving) = fetch.receiving.as_mut() else { return Ok(false) };
        receiving.take(page, &self.store_tables, &cluster).map_err(|r| (FaultKind::InvalidProof, r))?;
        fetch.asked = Instant::now();
        if let Err(error) = snapshot::stage(&self.db, page) {
            tracing::error!(%error, "cannot stage a snapshot page");
            return Ok(false);
        }
        Ok(true)
    }

    /// After the last page: the digest of all entries must be the certified one; then install.
    fn finish_snapshot(&mut self, from: NodeIndex) {
        let Some(fetch) = self.snapshots.fetch.take() else { return };
        let Some(receiving) = fetch.receiving else { return };
        let digest = match receiving.finish() {
            Ok(digest) => digest,
            Err(reason) => {
                self.peer_fault(from, FaultKind::InvalidProof, &reason);
                return self.next_attempt();
            }
        };
        let epoch = receiving.epoch;
        let installed = (|| -> anyhow::Result<u64> {
            let txn = self.db.begin_write()?;
            let installed = snapshot::install(&txn, &self.store_tables, epoch, &digest)?;
            kv::rebuild_pending(&txn)?;
            txn.commit()?;
            Ok(installed)
        })();
        let installed = match installed {
            Ok(installed) => installed,
            Err(error) => {
                tracing::error!(%error, "cannot install a snapshot of the services' state");
                return;
            }
        };
        self.after_install(epoch);
        tracing::info!(
            peer = from.0,
            entries = installed,
            bytes = receiving.bytes,
            "installed the services' state from a snapshot of epoch {epoch}"
        );
    }

    /// The worker goes on from the epoch after the snapshot's; the driver fetches no skipped
    /// batch before it.
    fn after_install(&mut self, epoch: u64) {
        self.next_epoch = epoch + 1;
        self.intake.applied(self.next_epoch);
        self.intake.lag().mark();
        self.unsigned.clear();
        self.trees.clear();
        self.tree_order.clear();
        self.signer = EpochSigner::new(
            std::sync::Arc::clone(&self.setup.signing),
            self.setup.cluster,
            self.setup.quorum,
            self.setup.our_index,
            SignerConfig::default(),
            self.next_epoch,
        );
        self.give_floor(self.next_epoch);
    }
}
