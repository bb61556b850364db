//! The owner's collection of an event: decryption shares from the replicas, the encrypted uploads
//! from the replicas that stored them, and the files, decrypted and checked against their tickets.
//!
//! 1. The owner makes a fresh X25519 key and orders a signed collect request (`Collect`); the
//!    cluster answers the collection's number.
//! 2. Every replica is asked for its decryption shares (`CollectShares`), in parallel; a replica
//!    that has not applied the collection yet is asked again, for a bounded time
//!    ([`CollectOptions::shares_wait`]). A reply must come from the replica asked and its shares
//!    must open with the owner's X25519 secret, bound to (cluster, event, collection, replica).
//!    An upload counts only if `t + 1` replicas list it with the same size, capsule and ticket
//!    record (so at least one honest replica vouches for it); only the shares of those replicas
//!    are used for it.
//! 3. Per upload, `t + 1` shares are combined optimistically; the plaintext must be
//!    `session key ‖ ticket`. If it is not, or the file does not decrypt later, every share is
//!    verified against its replica's public key share, the invalid ones are dropped and their
//!    senders named in the [`Manifest`]: a Byzantine replica cannot stop the owner.
//! 4. The upload is fetched (`Intermediary.Fetch`) from a replica that stored it, resuming from
//!    the offset reached when a stream breaks and going on to the next replica on failure; its
//!    SHA-256 and size must be the upload's. Its header must name the event, the ticket and the
//!    agreed capsule; the rest is decrypted and hashed with the ticket's hash, and the digest and
//!    size must be the ticket's. Only then is the file renamed to `out/<ticket>-<file name>`.
//! 5. The ticket record that `t + 1` replicas agree on must decode and name the event and the
//!    ticket. Its proof is not fetched again here: the cluster signed every ticket when it issued
//!    it, and the replicas' agreement on the record stands in for the signature.
//! 6. `out/manifest.txt` lists every upload: verified, or `NOT VERIFIED` and why. An upload that
//!    could not be fetched or decrypted does not stop the others.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use blsttc::DecryptionShare;
use ed25519_dalek::SigningKey;
use fides_bistro::commit::{open_commit, session_key, CommitError, CommitHeader};
use fides_bistro::records::{capsule_label, domain, EventId, Ticket, CAPSULE_MAX};
use fides_bistro::service::format_time;
use fides_bistro::stream::{digest_reader, HashAlg, StreamError};
use fides_crypto::labeled::{CheckedDecryption, LabeledCapsule};
use fides_crypto::sealed::open_sealed;
use fides_crypto::x25519_dalek::{PublicKey as RecipientKey, StaticSecret};
use fides_crypto::CombineError;
use fides_dealer::ClusterFile;
use fides_types::codec::Wire;
use fides_types::NodeIndex;
use futures::stream::{FuturesUnordered, StreamExt};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tonic::Code;

use crate::bistro::BistroClient;
use crate::{proto, ClientError};

/// Length of one decryption share (a compressed G1 point).
pub const SHARE_LEN: usize = 48;
/// The manifest's file name in the output directory.
pub const MANIFEST_NAME: &str = "manifest.txt";
/// Longest file name part kept from a ticket (bytes); the rest is cut.
const NAME_MAX: usize = 200;

/// Why a collection, or one upload of it, failed.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The cluster could not be asked, or refused.
    #[error("{0}")]
    Client(#[from] ClientError),
    /// The key given is not the event's owner key.
    #[error("the key {key} is not the owner of event {event}: its owner is {owner}")]
    NotOwner {
        /// The event.
        event: EventId,
        /// The key given (hex).
        key: String,
        /// The owner's key (hex).
        owner: String,
    },
    /// A local file or directory cannot be used.
    #[error("{}: {error}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// What failed.
        error: std::io::Error,
    },
    /// Fewer than `t + 1` replicas answered usable shares in time.
    #[error("only {usable} of {n} replicas answered usable decryption shares, {need} needed{detail}")]
    Replicas {
        /// Usable replies.
        usable: usize,
        /// `t + 1`.
        need: usize,
        /// Replicas.
        n: usize,
        /// What the others answered (starts with "; " when not empty).
        detail: String,
    },
    /// An upload's capsule cannot be used.
    #[error("ticket {ticket}: the key capsule is unusable: {reason}")]
    Capsule {
        /// The ticket.
        ticket: u64,
        /// Why.
        reason: String,
    },
    /// Not enough valid decryption shares for an upload.
    #[error("ticket {ticket}: {given} decryption shares{}, {need} valid ones needed", invalid_from(bad))]
    NotEnoughShares {
        /// The ticket.
        ticket: u64,
        /// Shares given.
        given: usize,
        /// `t + 1`.
        need: usize,
        /// Replicas whose shares did not verify.
        bad: Vec<NodeIndex>,
    },
    /// The capsule decrypts (with valid shares) to something other than a session key for its
    /// ticket: the submitter made it wrong.
    #[error("ticket {ticket}: the key capsule does not hold a session key for this ticket")]
    WrongPlaintext {
        /// The ticket.
        ticket: u64,
    },
}

fn invalid_from(bad: &[NodeIndex]) -> String {
    if bad.is_empty() {
        String::new()
    } else {
        format!(" (invalid ones from replicas {})", list(bad.iter().map(|i| i.0)))
    }
}

fn list(items: impl IntoIterator<Item = impl std::fmt::Display>) -> String {
    items.into_iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CollectError + '_ {
    move |error| CollectError::Io { path: path.to_path_buf(), error }
}

/// How a collection behaves.
#[derive(Clone, Debug)]
pub struct CollectOptions {
    /// How long replicas are asked again for their shares (one that has not applied the
    /// collection yet answers `NOT_FOUND` or `FAILED_PRECONDITION`).
    pub shares_wait: Duration,
    /// Pause between two asks of one replica.
    pub retry_pause: Duration,
    /// Fetch attempts at one replica that bring no new bytes before the next replica is tried.
    pub fetch_attempts: u32,
    /// Longest wait for the next chunk of a fetch.
    pub chunk_timeout: Duration,
}

impl Default for CollectOptions {
    fn default() -> Self {
        CollectOptions {
            shares_wait: Duration::from_secs(30),
            retry_pause: Duration::from_millis(500),
            fetch_attempts: 3,
            chunk_timeout: Duration::from_secs(30),
        }
    }
}

/// What a collection reports as it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The collection was ordered.
    Collected {
        /// Its number within the event.
        number: u64,
        /// Uploads it covers (as the answering replica says).
        uploads: u64,
    },
    /// A replica's shares: how many uploads it listed, or why they are not used.
    Replica {
        /// The replica.
        replica: u32,
        /// Uploads listed, or why not.
        result: Result<usize, String>,
    },
    /// Bytes of an upload fetched so far.
    Fetching {
        /// The ticket.
        ticket: u64,
        /// Bytes received.
        received: u64,
        /// The upload's size.
        size: u64,
    },
    /// An upload is done.
    Done {
        /// The ticket.
        ticket: u64,
        /// Whether its file was saved and verified.
        verified: bool,
    },
}

// ---------------------------------------------------------------------------------------------
// Shares
// ---------------------------------------------------------------------------------------------

/// A session key recovered from a capsule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveredKey {
    /// The session key.
    pub key: [u8; 32],
    /// Replicas whose shares were found invalid.
    pub bad: Vec<NodeIndex>,
    /// Whether every share used was verified (false: combined optimistically).
    pub checked: bool,
}

/// Recover the session key of `ticket` from `capsule` with `shares` (at least `t + 1`): first
/// optimistically, without checking the shares; if the plaintext is not `session key ‖ ticket`,
/// with [`recover_key_checked`].
pub fn recover_key(
    cluster: &ClusterFile,
    event: &EventId,
    ticket: u64,
    capsule: &[u8],
    shares: &BTreeMap<NodeIndex, DecryptionShare>,
) -> Result<RecoveredKey, CollectError> {
    let parsed = parse_capsule(ticket, capsule)?;
    match parsed.combine(cluster.encryption(), shares) {
        Ok(plaintext) => {
            if let Some(key) = session_key(&plaintext, ticket) {
                return Ok(RecoveredKey { key, bad: Vec::new(), checked: false });
            }
        }
        Err(CombineError::NotEnough { have, need }) => {
            return Err(CollectError::NotEnoughShares { ticket, given: have, need, bad: Vec::new() })
        }
        Err(CombineError::InvalidShares(_)) => {}
    }
    checked(cluster, event, ticket, &parsed, shares)
}

/// Recover the session key of `ticket` from `capsule` with `shares`, verifying every share
/// against its replica's public key share: the invalid ones are dropped and named, and `t + 1`
/// valid ones decrypt.
pub fn recover_key_checked(
    cluster: &ClusterFile,
    event: &EventId,
    ticket: u64,
    capsule: &[u8],
    shares: &BTreeMap<NodeIndex, DecryptionShare>,
) -> Result<RecoveredKey, CollectError> {
    let parsed = parse_capsule(ticket, capsule)?;
    checked(cluster, event, ticket, &parsed, shares)
}

fn parse_capsule(ticket: u64, capsule: &[u8]) -> Result<LabeledCapsule, CollectError> {
    LabeledCapsule::from_bytes(capsule).map_err(|e| CollectError::Capsule { ticket, reason: e.to_string() })
}

fn checked(
    cluster: &ClusterFile,
    event: &EventId,
    ticket: u64,
    capsule: &LabeledCapsule,
    shares: &BTreeMap<NodeIndex, DecryptionShare>,
) -> Result<RecoveredKey, CollectError> {
    let need = cluster.encryption().threshold() + 1;
    if shares.len() < need {
        return Err(CollectError::NotEnoughShares { ticket, given: shares.len(), need, bad: Vec::new() });
    }
    let label = capsule_label(&cluster.id().0, event, ticket);
    if !capsule.verify(&label) {
        return Err(CollectError::Capsule {
            ticket,
            reason: format!("it is not valid for event {event} ticket {ticket}"),
        });
    }
    match capsule.combine_checked(cluster.encryption(), &label, shares) {
        Ok(CheckedDecryption { plaintext, invalid }) => match session_key(&plaintext, ticket) {
            Some(key) => Ok(RecoveredKey { key, bad: invalid, checked: true }),
            None => Err(CollectError::WrongPlaintext { ticket }),
        },
        Err(CombineError::NotEnough { have, need }) => {
            Err(CollectError::NotEnoughShares { ticket, given: have, need, bad: Vec::new() })
        }
        Err(CombineError::InvalidShares(bad)) => {
            Err(CollectError::NotEnoughShares { ticket, given: shares.len(), need, bad })
        }
    }
}

/// An upload of a collection: (ticket, upload hash).
pub type UploadId = (u64, [u8; 32]);

/// One upload as one replica lists it, with that replica's decryption share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// The upload's size.
    pub upload_size: u64,
    /// Its key capsule.
    pub capsule: Vec<u8>,
    /// The replicas that stored it (as this replica knows).
    pub stored_by: Vec<u32>,
    /// The ticket's canonical bytes.
    pub ticket_record: Vec<u8>,
    /// This replica's decryption share; `None` if its bytes are not a point.
    pub share: Option<DecryptionShare>,
}

impl Listed {
    /// Whether two replicas list the same upload alike (`stored_by` may differ: they answer at
    /// different points of the log).
    fn same(&self, other: &Listed) -> bool {
        self.upload_size == other.upload_size
            && self.capsule == other.capsule
            && self.ticket_record == other.ticket_record
    }
}

/// The associated data replica `replica` seals its shares of collection `number` with.
pub fn shares_associated(cluster: &[u8; 32], event: &EventId, number: u64, replica: u32) -> Vec<u8> {
    fides_crypto::tagged(domain::SHARES_AD, &[cluster, &event.0, &number.to_le_bytes(), &replica.to_le_bytes()])
}

/// Check and open replica `asked`'s answer to `CollectShares(event, number)` with the owner's
/// X25519 `secret`: the uploads it lists, each with its share. An `Err` says why the reply is
/// unusable (the replica misbehaved).
pub fn open_reply(
    cluster: &[u8; 32],
    event: &EventId,
    number: u64,
    asked: u32,
    secret: &StaticSecret,
    reply: &proto::CollectSharesReply,
) -> Result<BTreeMap<UploadId, Listed>, String> {
    if reply.replica != asked {
        return Err(format!("answered as replica {}", reply.replica));
    }
    let associated = shares_associated(cluster, event, number, asked);
    let shares = open_sealed(secret, &associated, &reply.sealed_shares)
        .map_err(|e| format!("its sealed shares do not open: {e}"))?;
    if shares.len() != reply.uploads.len().saturating_mul(SHARE_LEN) {
        return Err(format!(
            "{} bytes of shares for {} uploads ({SHARE_LEN} bytes each expected)",
            shares.len(),
            reply.uploads.len()
        ));
    }
    let mut listed = BTreeMap::new();
    for (info, share) in reply.uploads.iter().zip(shares.chunks_exact(SHARE_LEN)) {
        let hash: [u8; 32] = info
            .upload_hash
            .as_slice()
            .try_into()
            .map_err(|_| format!("ticket {}: an upload hash of {} bytes", info.ticket, info.upload_hash.len()))?;
        if info.capsule.is_empty() || info.capsule.len() > CAPSULE_MAX {
            return Err(format!("ticket {}: a capsule of {} bytes", info.ticket, info.capsule.len()));
        }
        let share = <[u8; SHARE_LEN]>::try_from(share).ok().and_then(|bytes| DecryptionShare::from_bytes(bytes).ok());
        let entry = Listed {
            upload_size: info.upload_size,
            capsule: info.capsule.clone(),
            stored_by: info.stored_by.clone(),
            ticket_record: info.ticket_record.clone(),
            share,
        };
        if listed.insert((info.ticket, hash), entry).is_some() {
            return Err(format!("ticket {} upload {} is listed twice", info.ticket, hex::encode(hash)));
        }
    }
    Ok(listed)
}

/// An upload that `t + 1` replicas list alike, with the shares of those replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgreedUpload {
    /// The ticket.
    pub ticket: u64,
    /// The upload's hash (SHA-256 of the commit file).
    pub upload_hash: [u8; 32],
    /// Its size.
    pub upload_size: u64,
    /// Its key capsule.
    pub capsule: Vec<u8>,
    /// The ticket's canonical bytes.
    pub ticket_record: Vec<u8>,
    /// Replicas that stored it, as any of the agreeing replicas knows.
    pub stored_by: Vec<u32>,
    /// The agreeing replicas' shares that are points.
    pub shares: BTreeMap<NodeIndex, DecryptionShare>,
    /// Agreeing replicas whose share is not a point.
    pub malformed: Vec<NodeIndex>,
    /// Replicas that list this upload otherwise (another size, capsule or ticket record).
    pub conflicting: Vec<u32>,
}

impl AgreedUpload {
    /// Its id.
    pub fn id(&self) -> UploadId {
        (self.ticket, self.upload_hash)
    }
}

/// The replies of a collection's replicas and what they give: the agreed uploads and their keys.
/// Pure bookkeeping (no network), so that it can be tested without a cluster.
#[derive(Debug)]
pub struct ShareBook<'a> {
    cluster: &'a ClusterFile,
    event: EventId,
    number: u64,
    replies: BTreeMap<u32, BTreeMap<UploadId, Listed>>,
    unusable: BTreeMap<u32, String>,
    unanswered: BTreeMap<u32, String>,
    keys: BTreeMap<UploadId, RecoveredKey>,
    /// Why an upload has no key yet, and whether that is final (more shares will not help).
    failures: BTreeMap<UploadId, (String, bool)>,
    /// Replicas whose shares of an upload were found invalid.
    bad: BTreeMap<UploadId, BTreeSet<NodeIndex>>,
    /// The replicas whose shares the last attempt at an upload used.
    tried: BTreeMap<UploadId, BTreeSet<NodeIndex>>,
}

impl<'a> ShareBook<'a> {
    /// An empty book for collection `number` of `event`.
    pub fn new(cluster: &'a ClusterFile, event: EventId, number: u64) -> ShareBook<'a> {
        ShareBook {
            cluster,
            event,
            number,
            replies: BTreeMap::new(),
            unusable: BTreeMap::new(),
            unanswered: BTreeMap::new(),
            keys: BTreeMap::new(),
            failures: BTreeMap::new(),
            bad: BTreeMap::new(),
            tried: BTreeMap::new(),
        }
    }

    /// `t + 1`.
    pub fn need(&self) -> usize {
        self.cluster.quorum().t() as usize + 1
    }

    /// Add replica `replica`'s reply, opened with `secret`; the number of uploads it lists, or why
    /// it is unusable (then it is recorded as a fault).
    pub fn add_reply(
        &mut self,
        replica: u32,
        reply: &proto::CollectSharesReply,
        secret: &StaticSecret,
    ) -> Result<usize, String> {
        if self.cluster.replica(NodeIndex(replica)).is_none() {
            return Err(format!("there is no replica {replica}"));
        }
        match open_reply(&self.cluster.id().0, &self.event, self.number, replica, secret, reply) {
            Ok(listed) => {
                let count = listed.len();
                self.unanswered.remove(&replica);
                self.replies.insert(replica, listed);
                Ok(count)
            }
            Err(reason) => {
                self.unusable.insert(replica, reason.clone());
                Err(reason)
            }
        }
    }

    /// Record that replica `replica` gave no reply (it is not counted as a fault).
    pub fn add_silence(&mut self, replica: u32, reason: String) {
        self.unanswered.insert(replica, reason);
    }

    /// Replicas whose replies are usable.
    pub fn usable(&self) -> usize {
        self.replies.len()
    }

    /// The uploads that `t + 1` replicas list alike, in (ticket, hash) order.
    pub fn agreed(&self) -> Vec<AgreedUpload> {
        let mut variants: BTreeMap<UploadId, Vec<(&Listed, Vec<u32>)>> = BTreeMap::new();
        for (replica, listed) in &self.replies {
            for (id, entry) in listed {
                let known = variants.entry(*id).or_default();
                match known.iter_mut().find(|(first, _)| first.same(entry)) {
                    Some((_, replicas)) => replicas.push(*replica),
                    None => known.push((entry, vec![*replica])),
                }
            }
        }
        let mut agreed = Vec::new();
        for ((ticket, upload_hash), known) in variants {
            let Some(best) = known.iter().max_by_key(|(_, replicas)| replicas.len()) else { continue };
            if best.1.len() < self.need() {
                continue;
            }
            let (first, supporters) = best;
            let mut shares = BTreeMap::new();
            let mut malformed = Vec::new();
            let mut stored_by = BTreeSet::new();
            for replica in supporters {
                let Some(entry) = self.replies.get(replica).and_then(|l| l.get(&(ticket, upload_hash))) else {
                    continue;
                };
                stored_by.extend(entry.stored_by.iter().copied().filter(|r| *r < self.cluster.quorum().n()));
                match &entry.share {
                    Some(share) => {
                        shares.insert(NodeIndex(*replica), share.clone());
                    }
                    None => malformed.push(NodeIndex(*replica)),
                }
            }
            let conflicting = known
                .iter()
                .filter(|(entry, _)| !entry.same(first))
                .flat_map(|(_, replicas)| replicas.iter().copied())
                .collect();
            agreed.push(AgreedUpload {
                ticket,
                upload_hash,
                upload_size: first.upload_size,
                capsule: first.capsule.clone(),
                ticket_record: first.ticket_record.clone(),
                stored_by: stored_by.into_iter().collect(),
                shares,
                malformed,
                conflicting,
            });
        }
        agreed
    }

    /// Try to recover the key of every agreed upload that has none yet and has shares that the
    /// last attempt did not have; invalid shares found are remembered and left out of later
    /// attempts.
    pub fn recover(&mut self) {
        for upload in self.agreed() {
            let id = upload.id();
            if self.keys.contains_key(&id) || self.failures.get(&id).is_some_and(|(_, last)| *last) {
                continue;
            }
            let known_bad = self.bad.get(&id).cloned().unwrap_or_default();
            let shares: BTreeMap<NodeIndex, DecryptionShare> =
                upload.shares.into_iter().filter(|(index, _)| !known_bad.contains(index)).collect();
            let nothing_new = self.tried.get(&id).is_some_and(|tried| shares.keys().all(|i| tried.contains(i)));
            if shares.len() < self.need() || nothing_new {
                if shares.len() < self.need() && !self.failures.contains_key(&id) {
                    let error = CollectError::NotEnoughShares {
                        ticket: upload.ticket,
                        given: shares.len(),
                        need: self.need(),
                        bad: known_bad.iter().copied().collect(),
                    };
                    self.failures.insert(id, (error.to_string(), false));
                }
                continue;
            }
            self.tried.insert(id, shares.keys().copied().collect());
            match recover_key(self.cluster, &self.event, upload.ticket, &upload.capsule, &shares) {
                Ok(key) => {
                    self.bad.entry(id).or_default().extend(key.bad.iter().copied());
                    self.failures.remove(&id);
                    self.keys.insert(id, key);
                }
                Err(error) => {
                    let last = matches!(error, CollectError::Capsule { .. } | CollectError::WrongPlaintext { .. });
                    if let CollectError::NotEnoughShares { bad, .. } = &error {
                        self.bad.entry(id).or_default().extend(bad.iter().copied());
                    }
                    self.failures.insert(id, (error.to_string(), last));
                }
            }
        }
    }

    /// Recover the key of `upload` again, verifying every share (after its file did not decrypt
    /// with the optimistic key).
    pub fn recheck(&mut self, upload: &AgreedUpload) -> Result<RecoveredKey, CollectError> {
        let id = upload.id();
        let recovered = recover_key_checked(self.cluster, &self.event, upload.ticket, &upload.capsule, &upload.shares)?;
        self.bad.entry(id).or_default().extend(recovered.bad.iter().copied());
        self.keys.insert(id, recovered.clone());
        Ok(recovered)
    }

    /// The session key of an upload, if recovered.
    pub fn key(&self, id: &UploadId) -> Option<&RecoveredKey> {
        self.keys.get(id)
    }

    /// Why an upload has no key.
    pub fn failure(&self, id: &UploadId) -> Option<&str> {
        self.failures.get(id).map(|(reason, _)| reason.as_str())
    }

    /// Replicas whose shares of an upload were invalid or not points.
    pub fn bad_shares(&self, upload: &AgreedUpload) -> Vec<NodeIndex> {
        let mut bad: BTreeSet<NodeIndex> = self.bad.get(&upload.id()).cloned().unwrap_or_default();
        bad.extend(upload.malformed.iter().copied());
        bad.into_iter().collect()
    }

    /// Whether waiting for more replies can change nothing: `t + 1` usable replies, every upload
    /// any of them lists has a key (or failed for good), and at least `expected` uploads do.
    pub fn complete(&self, expected: u64) -> bool {
        if self.usable() < self.need() {
            return false;
        }
        let listed: BTreeSet<&UploadId> = self.replies.values().flat_map(|l| l.keys()).collect();
        let settled =
            |id: &UploadId| self.keys.contains_key(id) || self.failures.get(id).is_some_and(|(_, last)| *last);
        listed.iter().all(|id| settled(id)) && self.keys.len() as u64 >= expected
    }

    /// Uploads listed by fewer than `t + 1` replicas (ignored), with the replicas listing them.
    pub fn ignored(&self) -> Vec<(UploadId, Vec<u32>)> {
        let agreed: BTreeSet<UploadId> = self.agreed().iter().map(AgreedUpload::id).collect();
        let mut ignored: BTreeMap<UploadId, Vec<u32>> = BTreeMap::new();
        for (replica, listed) in &self.replies {
            for id in listed.keys().filter(|id| !agreed.contains(id)) {
                ignored.entry(*id).or_default().push(*replica);
            }
        }
        ignored.into_iter().collect()
    }

    /// What each misbehaving replica did: unusable replies, invalid shares, conflicting listings.
    pub fn faults(&self) -> BTreeMap<u32, Vec<String>> {
        let mut faults: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for (replica, reason) in &self.unusable {
            faults.entry(*replica).or_default().push(format!("unusable reply: {reason}"));
        }
        for upload in self.agreed() {
            for index in self.bad_shares(&upload) {
                faults
                    .entry(index.0)
                    .or_default()
                    .push(format!("invalid decryption share for ticket {}", upload.ticket));
            }
            for replica in &upload.conflicting {
                faults.entry(*replica).or_default().push(format!(
                    "listed ticket {} upload {} otherwise than t + 1 replicas",
                    upload.ticket,
                    hex::encode(upload.upload_hash)
                ));
            }
        }
        faults
    }

    /// Replicas that gave no reply, and why.
    pub fn unanswered(&self) -> &BTreeMap<u32, String> {
        &self.unanswered
    }
}

// ---------------------------------------------------------------------------------------------
// The manifest
// ---------------------------------------------------------------------------------------------

/// Whether an upload's file was saved and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UploadStatus {
    /// Decrypted, and its digest and size are the ticket's.
    Verified,
    /// Not saved, or not matching its ticket: why.
    NotVerified(String),
}

/// One upload of a collection and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadOutcome {
    /// The ticket number.
    pub ticket: u64,
    /// The upload's hash.
    pub upload_hash: [u8; 32],
    /// The upload's size.
    pub upload_size: u64,
    /// The ticket, if its record decoded.
    pub record: Option<Ticket>,
    /// Where the file was saved.
    pub saved: Option<PathBuf>,
    /// Replicas whose shares for it were invalid.
    pub bad_shares: Vec<NodeIndex>,
    /// Verified or not.
    pub status: UploadStatus,
}

impl UploadOutcome {
    /// Whether the file was saved and verified.
    pub fn verified(&self) -> bool {
        self.status == UploadStatus::Verified
    }
}

/// The result of a collection (also written to `out/manifest.txt`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The event.
    pub event: EventId,
    /// The collection's number.
    pub number: u64,
    /// Where the manifest was written.
    pub path: PathBuf,
    /// Every upload that `t + 1` replicas agree on, in (ticket, hash) order.
    pub uploads: Vec<UploadOutcome>,
    /// Replicas that misbehaved, and how.
    pub faults: BTreeMap<u32, Vec<String>>,
    /// Replicas whose shares were not used because they did not answer, and why.
    pub unanswered: BTreeMap<u32, String>,
    /// Uploads listed by fewer than `t + 1` replicas (ignored): ticket, hash, listing replicas.
    pub ignored: Vec<(u64, [u8; 32], Vec<u32>)>,
}

impl Manifest {
    /// Whether every upload was verified.
    pub fn all_verified(&self) -> bool {
        self.uploads.iter().all(UploadOutcome::verified)
    }

    /// How many uploads were verified.
    pub fn verified(&self) -> usize {
        self.uploads.iter().filter(|u| u.verified()).count()
    }

    /// The manifest as people read it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |key: &str, value: &dyn std::fmt::Display| out.push_str(&format!("{key}: {value}\n"));
        line("event", &self.event);
        line("collection", &self.number);
        line("uploads", &self.uploads.len());
        line("verified", &self.verified());
        for (replica, what) in &self.faults {
            line(&format!("replica {replica} misbehaved"), &what.join("; "));
        }
        for (replica, why) in &self.unanswered {
            line(&format!("replica {replica} not heard"), why);
        }
        for (ticket, hash, replicas) in &self.ignored {
            line(
                "ignored",
                &format!(
                    "ticket {ticket} upload {} listed only by replicas {} (fewer than t + 1)",
                    hex::encode(hash),
                    list(replicas)
                ),
            );
        }
        for upload in &self.uploads {
            out.push('\n');
            out.push_str(&render_upload(upload));
        }
        out
    }
}

fn render_upload(upload: &UploadOutcome) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: &dyn std::fmt::Display| out.push_str(&format!("{key}: {value}\n"));
    line("ticket", &upload.ticket);
    match &upload.record {
        Some(ticket) => {
            line("contact", &escape(&ticket.contact));
            line("file name", &escape(&ticket.file_name));
            line("size", &ticket.size);
            line("agreed time", &format_time(ticket.time_ms));
            line(&format!("digest ({})", hash_label(ticket.hash)), &hex::encode(ticket.digest));
        }
        None => line("ticket record", &"unusable"),
    }
    line("upload hash", &hex::encode(upload.upload_hash));
    line("upload size", &upload.upload_size);
    if let Some(saved) = &upload.saved {
        line("saved as", &saved.display());
    }
    if !upload.bad_shares.is_empty() {
        line("invalid shares from replicas", &list(upload.bad_shares.iter().map(|i| i.0)));
    }
    match &upload.status {
        UploadStatus::Verified => line("status", &"verified"),
        UploadStatus::NotVerified(why) => line("status", &format!("NOT VERIFIED: {why}")),
    }
    out
}

fn hash_label(hash: HashAlg) -> &'static str {
    hash.name()
}

/// Control characters and line ends escaped, so that one field stays on one line.
fn escape(text: &str) -> String {
    text.chars().flat_map(char::escape_default).collect::<String>().replace("\\'", "'").replace("\\\"", "\"")
}

/// A file name from a ticket that is safe to create in the output directory: no path separators
/// or control characters, no leading dots, at most [`NAME_MAX`] bytes; `"file"` if nothing is left.
pub fn sanitize_file_name(name: &str) -> String {
    let cleaned: String = name.chars().map(|c| if c == '/' || c == '\\' || c.is_control() { '_' } else { c }).collect();
    let trimmed = cleaned.trim_start_matches('.').trim();
    let mut end = trimmed.len().min(NAME_MAX);
    while !trimmed.is_char_boundary(end) {
        end -= 1;
    }
    let cut = &trimmed[..end];
    if cut.is_empty() {
        "file".to_string()
    } else {
        cut.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// The collection
// ---------------------------------------------------------------------------------------------

/// Collect `event` as its owner into the directory `out` (created if missing), with default
/// options: see the module documentation. Fails only if the collection cannot be ordered, fewer
/// than `t + 1` replicas answer usable shares, or `out` cannot be written; an upload that cannot
/// be fetched, decrypted or verified is listed in the manifest with the reason.
pub async fn collect(
    client: &BistroClient,
    cluster: &ClusterFile,
    event: EventId,
    owner: &SigningKey,
    out: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Manifest, CollectError> {
    collect_with(client, cluster, event, owner, out, &CollectOptions::default(), progress).await
}

/// [`collect`] with `options`.
pub async fn collect_with(
    client: &BistroClient,
    cluster: &ClusterFile,
    event: EventId,
    owner: &SigningKey,
    out: &Path,
    options: &CollectOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Manifest, CollectError> {
    let (record, _) = client.get_event(event).await?;
    let key = owner.verifying_key().to_bytes();
    if record.terms.owner != key {
        return Err(CollectError::NotOwner { event, key: hex::encode(key), owner: hex::encode(record.terms.owner) });
    }
    tokio::fs::create_dir_all(out).await.map_err(io_error(out))?;

    let secret = StaticSecret::random_from_rng(OsRng);
    let recipient = RecipientKey::from(&secret).to_bytes();
    let (number, expected) = client.collect(event, owner, recipient, OsRng.next_u64()).await?;
    progress(Progress::Collected { number, uploads: expected });

    let mut book = ShareBook::new(cluster, event, number);
    gather_shares(client, &mut book, &secret, expected, options, progress).await;
    if book.usable() < book.need() {
        let detail: String = book
            .faults()
            .iter()
            .map(|(replica, what)| format!("; replica {replica}: {}", what.join(", ")))
            .chain(book.unanswered().iter().map(|(replica, why)| format!("; replica {replica}: {why}")))
            .collect();
        return Err(CollectError::Replicas {
            usable: book.usable(),
            need: book.need(),
            n: cluster.replicas().len(),
            detail,
        });
    }

    let mut uploads = Vec::new();
    for upload in book.agreed() {
        let mut outcome = deliver(client, cluster, &mut book, &upload, event, out, options, progress).await;
        outcome.bad_shares = book.bad_shares(&upload);
        progress(Progress::Done { ticket: upload.ticket, verified: outcome.verified() });
        uploads.push(outcome);
    }
    let manifest = Manifest {
        event,
        number,
        path: out.join(MANIFEST_NAME),
        uploads,
        faults: book.faults(),
        unanswered: book.unanswered().clone(),
        ignored: book.ignored().into_iter().map(|((ticket, hash), replicas)| (ticket, hash, replicas)).collect(),
    };
    write_atomically(&manifest.path, manifest.render().as_bytes()).await?;
    Ok(manifest)
}

/// Whether asking a replica for its shares again may help.
fn worth_retrying(error: &ClientError) -> bool {
    match error {
        ClientError::Replica { status, .. } => {
            !matches!(status.code(), Code::InvalidArgument | Code::PermissionDenied | Code::Unimplemented)
        }
        _ => true,
    }
}

/// Ask every replica for its shares until the book is complete or every replica answered or the
/// wait is over.
async fn gather_shares(
    client: &BistroClient,
    book: &mut ShareBook<'_>,
    secret: &StaticSecret,
    expected: u64,
    options: &CollectOptions,
    progress: &mut dyn FnMut(Progress),
) {
    let deadline = tokio::time::Instant::now() + options.shares_wait;
    let (event, number) = (book.event, book.number);
    let mut calls: FuturesUnordered<_> = (0..client.n())
        .map(|replica| async move {
            loop {
                let result = client.collect_shares(replica, event, number).await;
                match result {
                    Ok(reply) => return (replica, Ok(reply)),
                    Err(error) if worth_retrying(&error) && tokio::time::Instant::now() < deadline => {
                        tracing::debug!(replica, %error, "no shares yet; asking again");
                        tokio::time::sleep_until((tokio::time::Instant::now() + options.retry_pause).min(deadline))
                            .await;
                    }
                    Err(error) => return (replica, Err(error.to_string())),
                }
            }
        })
        .collect();
    let timeout = tokio::time::sleep_until(deadline + options.retry_pause);
    tokio::pin!(timeout);
    let mut heard = BTreeSet::new();
    loop {
        let next = tokio::select! {
            next = calls.next() => next,
            _ = &mut timeout => {
                for replica in (0..client.n()).filter(|r| !heard.contains(r)) {
                    let reason = format!("no answer within {:?}", options.shares_wait);
                    book.add_silence(replica, reason.clone());
                    progress(Progress::Replica { replica, result: Err(reason) });
                }
                None
            }
        };
        let Some((replica, result)) = next else { break };
        heard.insert(replica);
        let result = match result {
            Ok(reply) => book.add_reply(replica, &reply, secret),
            Err(reason) => {
                book.add_silence(replica, reason.clone());
                Err(reason)
            }
        };
        progress(Progress::Replica { replica, result });
        book.recover();
        if book.complete(expected) {
            break;
        }
    }
}

/// Fetch, decrypt and verify one upload.
#[allow(clippy::too_many_arguments)]
async fn deliver(
    client: &BistroClient,
    cluster: &ClusterFile,
    book: &mut ShareBook<'_>,
    upload: &AgreedUpload,
    event: EventId,
    out: &Path,
    options: &CollectOptions,
    progress: &mut dyn FnMut(Progress),
) -> UploadOutcome {
    let mut outcome = UploadOutcome {
        ticket: upload.ticket,
        upload_hash: upload.upload_hash,
        upload_size: upload.upload_size,
        record: None,
        saved: None,
        bad_shares: Vec::new(),
        status: UploadStatus::NotVerified(String::new()),
    };
    let record = match Ticket::from_bytes(&upload.ticket_record) {
        Ok(record) if record.event == event && record.ticket == upload.ticket => record,
        Ok(record) => {
            outcome.status = UploadStatus::NotVerified(format!(
                "the ticket record names event {} ticket {}",
                record.event, record.ticket
            ));
            return outcome;
        }
        Err(error) => {
            outcome.status = UploadStatus::NotVerified(format!("the ticket record does not decode: {error}"));
            return outcome;
        }
    };
    outcome.record = Some(record.clone());
    let Some(key) = book.key(&upload.id()).cloned() else {
        let why = book.failure(&upload.id()).unwrap_or("no decryption shares").to_string();
        outcome.status = UploadStatus::NotVerified(format!("no session key: {why}"));
        return outcome;
    };
    let stem = format!(".ticket-{}-{}", upload.ticket, hex::encode(&upload.upload_hash[..8]));
    let commit_path = out.join(format!("{stem}.commit.part"));
    let plain_path = out.join(format!("{stem}.plain.part"));
    let result =
        fetch_and_open(client, cluster, book, upload, &record, key, &commit_path, &plain_path, options, progress).await;
    let _ = tokio::fs::remove_file(&commit_path).await;
    if let Err(why) = result {
        let _ = tokio::fs::remove_file(&plain_path).await;
        outcome.status = UploadStatus::NotVerified(why);
        return outcome;
    }
    let target = out.join(format!("{}-{}", upload.ticket, sanitize_file_name(&record.file_name)));
    match tokio::fs::rename(&plain_path, &target).await {
        Ok(()) => {
            outcome.saved = Some(target);
            outcome.status = UploadStatus::Verified;
        }
        Err(error) => {
            let _ = tokio::fs::remove_file(&plain_path).await;
            outcome.status = UploadStatus::NotVerified(format!("cannot save it as {}: {error}", target.display()));
        }
    }
    outcome
}

/// Fetch the upload to `commit_path`, decrypt it to `plain_path` and check it against `record`.
#[allow(clippy::too_many_arguments)]
async fn fetch_and_open(
    client: &BistroClient,
    cluster: &ClusterFile,
    book: &mut ShareBook<'_>,
    upload: &AgreedUpload,
    record: &Ticket,
    key: RecoveredKey,
    commit_path: &Path,
    plain_path: &Path,
    options: &CollectOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), String> {
    let mut holders = upload.stored_by.clone();
    holders.extend((0..client.n()).filter(|r| !upload.stored_by.contains(r)));
    fetch(client, record.event, upload, &holders, commit_path, options, progress)
        .await
        .map_err(|e| format!("not fetched: {e}"))?;
    let opened = open_blocking(cluster, upload, record, key.key, commit_path, plain_path).await;
    let (digest, size) = match opened {
        Err(OpenError::Decrypt(first)) if !key.checked => {
            // The key was combined without checking the shares: check them and try again with
            // the key of valid shares, if it differs.
            let rechecked = book.recheck(upload).map_err(|e| format!("{first}; checking the shares: {e}"))?;
            if rechecked.key == key.key {
                return Err(first);
            }
            open_blocking(cluster, upload, record, rechecked.key, commit_path, plain_path)
                .await
                .map_err(|e| e.to_string())?
        }
        other => other.map_err(|e| e.to_string())?,
    };
    if size != record.size {
        return Err(format!("the decrypted file has {size} bytes, the ticket says {}", record.size));
    }
    if digest != record.digest {
        return Err(format!(
            "the decrypted file's {} digest {} is not the ticket's {}",
            hash_label(record.hash),
            hex::encode(digest),
            hex::encode(record.digest)
        ));
    }
    Ok(())
}

/// Why a fetched upload does not open.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    /// Its header is not the agreed one, or it is no encrypted file.
    #[error("{0}")]
    Invalid(String),
    /// A chunk does not authenticate with the key.
    #[error("{0}")]
    Decrypt(String),
    /// Local files failed.
    #[error("{0}")]
    Io(String),
}

async fn open_blocking(
    cluster: &ClusterFile,
    upload: &AgreedUpload,
    record: &Ticket,
    key: [u8; 32],
    commit_path: &Path,
    plain_path: &Path,
) -> Result<([u8; 32], u64), OpenError> {
    let cluster_id = cluster.id().0;
    let expected = CommitHeader { event: record.event, ticket: upload.ticket, capsule: upload.capsule.clone() };
    let hash = record.hash;
    let (commit_path, plain_path) = (commit_path.to_path_buf(), plain_path.to_path_buf());
    tokio::task::spawn_blocking(move || open_file(&cluster_id, &expected, hash, &key, &commit_path, &plain_path))
        .await
        .map_err(|e| OpenError::Io(format!("the decrypting task failed: {e}")))?
}

/// Check the commit file's header, decrypt the rest, and hash the plaintext: (digest, size).
fn open_file(
    cluster: &[u8; 32],
    expected: &CommitHeader,
    hash: HashAlg,
    key: &[u8; 32],
    commit_path: &Path,
    plain_path: &Path,
) -> Result<([u8; 32], u64), OpenError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |e: std::io::Error| OpenError::Io(format!("{path}: {e}"))
    };
    let mut input = BufReader::new(std::fs::File::open(commit_path).map_err(io(commit_path))?);
    let header = CommitHeader::read(&mut input).map_err(|e| OpenError::Invalid(e.to_string()))?;
    if header.event != expected.event || header.ticket != expected.ticket {
        return Err(OpenError::Invalid(format!(
            "the commit file names event {} ticket {}",
            header.event, header.ticket
        )));
    }
    if header.capsule != expected.capsule {
        return Err(OpenError::Invalid("the commit file's capsule is not the one the replicas list".into()));
    }
    let mut output = BufWriter::new(std::fs::File::create(plain_path).map_err(io(plain_path))?);
    match open_commit(cluster, &header, key, &mut input, &mut output) {
        Ok(_) => {}
        Err(CommitError::Io(error) | CommitError::Stream(StreamError::Io(error))) => {
            return Err(OpenError::Io(format!("decrypting: {error}")))
        }
        Err(error @ CommitError::Stream(StreamError::Chunk { .. })) => {
            return Err(OpenError::Decrypt(error.to_string()))
        }
        Err(error) => return Err(OpenError::Invalid(error.to_string())),
    }
    output.flush().map_err(io(plain_path))?;
    output.into_inner().map_err(|e| io(plain_path)(e.into_error()))?.sync_all().map_err(io(plain_path))?;
    let plain = std::fs::File::open(plain_path).map_err(io(plain_path))?;
    digest_reader(hash, BufReader::new(plain)).map_err(io(plain_path))
}

/// Fetch an upload into `path` from the first of `holders` that has it, resuming a broken stream
/// at the offset reached; its SHA-256 and size must be the upload's.
async fn fetch(
    client: &BistroClient,
    event: EventId,
    upload: &AgreedUpload,
    holders: &[u32],
    path: &Path,
    options: &CollectOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), String> {
    let mut file = Download::create(path).await?;
    let mut last = String::from("no replica holds it");
    for &holder in holders {
        let Some(mut grpc) = client.replica_intermediary(holder) else { continue };
        let mut barren = 0;
        while barren < options.fetch_attempts {
            let before = file.received;
            let request = proto::FetchRequest {
                event: event.0.to_vec(),
                ticket: upload.ticket,
                upload_hash: upload.upload_hash.to_vec(),
                offset: file.received,
            };
            let mut stream = match tokio::time::timeout(options.chunk_timeout, grpc.fetch(request)).await {
                Ok(Ok(response)) => response.into_inner(),
                Ok(Err(status)) => {
                    last = format!("replica {holder}: {}", status.message());
                    if matches!(status.code(), Code::NotFound | Code::InvalidArgument | Code::OutOfRange) {
                        break;
                    }
                    barren += 1;
                    tokio::time::sleep(options.retry_pause).await;
                    continue;
                }
                Err(_) => {
                    last = format!("replica {holder}: no answer within {:?}", options.chunk_timeout);
                    barren += 1;
                    continue;
                }
            };
            loop {
                match tokio::time::timeout(options.chunk_timeout, stream.message()).await {
                    Ok(Ok(Some(chunk))) => {
                        if file.received.saturating_add(chunk.data.len() as u64) > upload.upload_size {
                            last = format!("replica {holder} sent more than the upload's {} bytes", upload.upload_size);
                            file.restart().await?;
                            barren = options.fetch_attempts;
                            break;
                        }
                        file.write(&chunk.data).await?;
                        progress(Progress::Fetching {
                            ticket: upload.ticket,
                            received: file.received,
                            size: upload.upload_size,
                        });
                    }
                    Ok(Ok(None)) => break,
                    Ok(Err(status)) => {
                        last = format!("replica {holder}: {}", status.message());
                        break;
                    }
                    Err(_) => {
                        last = format!("replica {holder}: no data within {:?}", options.chunk_timeout);
                        break;
                    }
                }
            }
            if file.received == upload.upload_size {
                if file.finish().await? == upload.upload_hash {
                    return Ok(());
                }
                last = format!("replica {holder} sent bytes whose SHA-256 is not the upload's");
                file.restart().await?;
                break;
            }
            if file.received == before {
                barren += 1;
            } else {
                barren = 0;
            }
        }
    }
    Err(last)
}

/// A download in progress: the file, the bytes so far, and their hash.
struct Download {
    path: PathBuf,
    file: tokio::fs::File,
    hasher: Sha256,
    received: u64,
}

impl Download {
    async fn create(path: &Path) -> Result<Download, String> {
        let file = tokio::fs::File::create(path).await.map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Download { path: path.to_path_buf(), file, hasher: Sha256::new(), received: 0 })
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), String> {
        self.file.write_all(data).await.map_err(|e| format!("{}: {e}", self.path.display()))?;
        self.hasher.update(data);
        self.received += data.len() as u64;
        Ok(())
    }

    /// Flush, and the SHA-256 of everything written.
    async fn finish(&mut self) -> Result<[u8; 32], String> {
        self.file.flush().await.map_err(|e| format!("{}: {e}", self.path.display()))?;
        Ok(self.hasher.clone().finalize().into())
    }

    /// Start again from nothing.
    async fn restart(&mut self) -> Result<(), String> {
        *self = Download::create(&self.path).await?;
        Ok(())
    }
}

/// Write `bytes` to `path` through a temporary file in the same directory.
async fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CollectError> {
    let tmp = path.with_extension("txt.part");
    tokio::fs::write(&tmp, bytes).await.map_err(io_error(&tmp))?;
    tokio::fs::rename(&tmp, path).await.map_err(io_error(path))
}
