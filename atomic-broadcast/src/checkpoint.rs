//! Checkpoints of atomic broadcast and the catch-up of a replica that fell behind.
//!
//! Every `checkpoint_interval` epochs the replicas threshold-sign the statement
//! `(session, epoch, agreed time, application digest, log digest, window digest)`:
//!
//! - the **log digest** chains every delivered batch: `L(e) = H(L(e − 1), batch e)`, from
//!   `L(−1) = H(session)`;
//! - the **window digest** covers the ids executed in the epochs that the at-most-once rule still
//!   remembers, so a replica that installs the checkpoint drops exactly the duplicates the others
//!   drop;
//! - the **application digest** is the caller's, given after it applied the checkpoint's batch.
//!
//! A replica behind asks everyone; each answers with its latest stable checkpoint (if the asker is
//! behind it), that checkpoint's window and the batches it delivered after it. The asker verifies
//! the checkpoint's signature and window, and accepts a batch only once `t + 1` answers — so at
//! least one honest replica — vouch for the same log digest at that epoch, computed by the asker
//! itself from a base it trusts (its own log or a signed checkpoint). No single peer is trusted.

use std::collections::BTreeMap;

use fides_crypto::blsttc::{Signature, SIG_SIZE};
use fides_crypto::{domain, hash_to_g2, sha256_tagged};
use fides_types::codec::{DecodeError, Reader, Wire};
use fides_types::NodeIndex;

use crate::epoch::{get_requests, put_requests, Batch, RequestKey};

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// The most batches one catch-up answer holds.
pub const CATCH_UP_BATCHES_MAX: u32 = 4_096;
/// The most epochs (and ids in all) a window sent in a catch-up answer may hold.
pub const WINDOW_ENTRIES_MAX: u32 = 1 << 24;

/// A threshold-signed checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last epoch it covers.
    pub epoch: u64,
    /// The agreed time of that epoch.
    pub time: u64,
    /// The application's digest of its state after that epoch.
    pub application: Digest,
    /// The log digest after that epoch.
    pub log: Digest,
    /// The digest of the at-most-once window after that epoch.
    pub window: Digest,
    /// The cluster's signature on the statement, compressed.
    pub signature: [u8; SIG_SIZE],
}

/// What a checkpoint signs, without the signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    /// See [`Checkpoint`].
    pub epoch: u64,
    /// See [`Checkpoint`].
    pub time: u64,
    /// See [`Checkpoint`].
    pub application: Digest,
    /// See [`Checkpoint`].
    pub log: Digest,
    /// See [`Checkpoint`].
    pub window: Digest,
}

impl Statement {
    /// The point of G2 that replicas sign.
    pub fn point(&self, session: &[u8]) -> fides_crypto::blsttc::G2Affine {
        hash_to_g2(
            domain::ABC_CHECKPOINT,
            &[session, &self.epoch.to_le_bytes(), &self.time.to_le_bytes(), &self.application, &self.log, &self.window],
        )
    }
}

impl Checkpoint {
    /// The statement it signs.
    pub fn statement(&self) -> Statement {
        Statement {
            epoch: self.epoch,
            time: self.time,
            application: self.application,
            log: self.log,
            window: self.window,
        }
    }

    /// Whether the signature is the cluster's on this checkpoint of `session`.
    pub fn verifies(&self, session: &[u8], public: &fides_crypto::blsttc::PublicKey) -> bool {
        Signature::from_bytes(self.signature).is_ok_and(|s| public.verify_g2(&s, self.statement().point(session)))
    }
}

impl Wire for Checkpoint {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.time.to_le_bytes());
        out.extend_from_slice(&self.application);
        out.extend_from_slice(&self.log);
        out.extend_from_slice(&self.window);
        out.extend_from_slice(&self.signature);
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Checkpoint {
            epoch: reader.u64()?,
            time: reader.u64()?,
            application: reader.array()?,
            log: reader.array()?,
            window: reader.array()?,
            signature: reader.array()?,
        })
    }
}

/// The keys (client, id, payload digest) executed in one epoch, in delivery order.
pub type WindowEntry = (u64, Vec<RequestKey>);

/// The digest of a window.
pub fn window_digest<'a>(entries: impl IntoIterator<Item = &'a WindowEntry>) -> Digest {
    let mut bytes = Vec::new();
    for (epoch, keys) in entries {
        bytes.extend_from_slice(&epoch.to_le_bytes());
        bytes.extend_from_slice(&(keys.len() as u64).to_le_bytes());
        for (client, id, digest) in keys {
            bytes.extend_from_slice(&client.to_le_bytes());
            bytes.extend_from_slice(&id.to_le_bytes());
            bytes.extend_from_slice(digest);
        }
    }
    sha256_tagged(domain::ABC_WINDOW, &[&bytes])
}

/// The log digest before the first epoch.
pub fn log_genesis(session: &[u8]) -> Digest {
    sha256_tagged(domain::ABC_LOG, &[session])
}

/// The log digest after `batch`, from the digest before it.
pub fn log_next(previous: &Digest, batch: &Batch) -> Digest {
    sha256_tagged(domain::ABC_LOG, &[previous, &batch.to_bytes()])
}

impl Wire for Batch {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.time.to_le_bytes());
        put_requests(out, &self.requests);
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Batch { epoch: reader.u64()?, time: reader.u64()?, requests: get_requests(reader)? })
    }
}

/// A catch-up answer: the answerer's latest stable checkpoint with its window, if the asker is
/// behind it, and the batches after it (or after the asker's position) that the answerer holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatchUp {
    /// A checkpoint and its window.
    pub checkpoint: Option<(Checkpoint, Vec<WindowEntry>)>,
    /// Consecutive batches.
    pub batches: Vec<Batch>,
}

impl Wire for CatchUp {
    fn encode(&self, out: &mut Vec<u8>) {
        match &self.checkpoint {
            None => out.push(0),
            Some((checkpoint, window)) => {
                out.push(1);
                checkpoint.encode(out);
                out.extend_from_slice(&(window.len() as u32).to_le_bytes());
                for (epoch, keys) in window {
                    out.extend_from_slice(&epoch.to_le_bytes());
                    out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
                    for (client, id, digest) in keys {
                        out.extend_from_slice(&client.to_le_bytes());
                        out.extend_from_slice(&id.to_le_bytes());
                        out.extend_from_slice(digest);
                    }
                }
            }
        }
        out.extend_from_slice(&(self.batches.len() as u32).to_le_bytes());
        for batch in &self.batches {
            batch.encode(out);
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let too_long = |len: u32, max: u32| DecodeError::TooLong { len: u64::from(len), max: u64::from(max) };
        let checkpoint = match reader.u8()? {
            0 => None,
            1 => {
                let checkpoint = Checkpoint::decode(reader)?;
                let epochs = reader.u32()?;
                if epochs > WINDOW_ENTRIES_MAX {
                    return Err(too_long(epochs, WINDOW_ENTRIES_MAX));
                }
                let mut total = 0u32;
                let mut window = Vec::new();
                for _ in 0..epochs {
                    let epoch = reader.u64()?;
                    let count = reader.u32()?;
                    total = total.saturating_add(count);
                    if total > WINDOW_ENTRIES_MAX {
                        return Err(too_long(total, WINDOW_ENTRIES_MAX));
                    }
                    let keys = (0..count)
                        .map(|_| Ok((reader.u64()?, reader.u64()?, reader.array()?)))
                        .collect::<Result<_, _>>()?;
                    window.push((epoch, keys));
                }
                Some((checkpoint, window))
            }
            other => return Err(DecodeError::Invalid { what: "catch-up checkpoint flag", value: u64::from(other) }),
        };
        let count = reader.u32()?;
        if count > CATCH_UP_BATCHES_MAX {
            return Err(too_long(count, CATCH_UP_BATCHES_MAX));
        }
        let batches = (0..count).map(|_| Batch::decode(reader)).collect::<Result<_, _>>()?;
        Ok(CatchUp { checkpoint, batches })
    }
}

/// An answer whose checkpoint (if any) has been verified: the log digests it vouches for, by
/// epoch, computed here from a trusted base.
#[derive(Clone, Debug)]
pub(crate) struct Vouched {
    /// Log digest after each epoch of the answer's batches.
    pub digests: BTreeMap<u64, Digest>,
    /// The batches, by epoch.
    pub batches: BTreeMap<u64, Batch>,
}

/// Chain `batches` from `(epoch, digest)`: the digests they vouch for, or `None` if they are not
/// consecutive from `epoch + 1`.
pub(crate) fn vouch(base: (Option<u64>, Digest), batches: &[Batch]) -> Option<Vouched> {
    let (mut last, mut digest) = base;
    let mut vouched = Vouched { digests: BTreeMap::new(), batches: BTreeMap::new() };
    for batch in batches {
        let expected = last.map_or(0, |e| e + 1);
        if batch.epoch != expected {
            return None;
        }
        digest = log_next(&digest, batch);
        vouched.digests.insert(batch.epoch, digest);
        vouched.batches.insert(batch.epoch, batch.clone());
        last = Some(batch.epoch);
    }
    Some(vouched)
}

/// The batches after `base` that `t + 1` answers vouch for, in order: each one's log digest is
/// the same at `t + 1` answerers and follows from the accepted one before it.
pub(crate) fn agreed_batches(
    base: (Option<u64>, Digest),
    answers: &BTreeMap<NodeIndex, Vouched>,
    one_honest: usize,
) -> Vec<(Batch, Digest)> {
    let (mut last, mut digest) = base;
    let mut accepted = Vec::new();
    loop {
        let epoch = last.map_or(0, |e| e + 1);
        let mut votes: BTreeMap<Digest, usize> = BTreeMap::new();
        for answer in answers.values() {
            if let Some(d) = answer.digests.get(&epoch) {
                *votes.entry(*d).or_default() += 1;
            }
        }
        let Some(target) = votes.into_iter().find(|(_, count)| *count >= one_honest).map(|(d, _)| d) else {
            break;
        };
        let found = answers.values().filter_map(|a| a.batches.get(&epoch)).find(|b| log_next(&digest, b) == target);
        let Some(batch) = found else { break };
        digest = target;
        last = Some(epoch);
        accepted.push((batch.clone(), digest));
    }
    accepted
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::epoch::Request;

    fn batch(epoch: u64, ids: &[u64]) -> Batch {
        let requests = ids.iter().map(|id| Request { client: 1, id: *id, payload: vec![*id as u8; 3] }).collect();
        Batch { epoch, time: 10 + epoch, requests }
    }

    fn log(from: u64, to: u64, salt: u64) -> Vec<Batch> {
        (from..to).map(|e| batch(e, &[e * 10 + salt])).collect()
    }

    #[test]
    fn catch_up_answers_round_trip_and_truncations_are_errors() {
        let checkpoint = Checkpoint {
            epoch: 3,
            time: 7,
            application: [1; 32],
            log: [2; 32],
            window: [3; 32],
            signature: [4; SIG_SIZE],
        };
        let answer = CatchUp {
            checkpoint: Some((checkpoint, vec![(2, vec![(1, 2, [5; 32]), (3, 4, [6; 32])]), (3, Vec::new())])),
            batches: log(4, 7, 0),
        };
        let bytes = answer.to_bytes();
        assert_eq!(CatchUp::from_bytes(&bytes), Ok(answer));
        for cut in 0..bytes.len() {
            assert!(CatchUp::from_bytes(&bytes[..cut]).is_err(), "a cut at {cut} decoded");
        }
        let mut huge = vec![0u8];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(CatchUp::from_bytes(&huge), Err(DecodeError::TooLong { .. })));
    }

    #[test]
    fn only_batches_that_t_plus_1_answers_vouch_for_are_accepted() {
        let genesis = log_genesis(b"s");
        let honest = log(0, 6, 0);
        let forged = log(0, 6, 1);
        let base = (None, genesis);
        let answers = |honest_count: usize, forged_count: usize| {
            let mut answers = BTreeMap::new();
            for i in 0..honest_count {
                answers.insert(NodeIndex(i as u32), vouch(base, &honest).expect("consecutive"));
            }
            for i in 0..forged_count {
                answers.insert(NodeIndex(100 + i as u32), vouch(base, &forged).expect("consecutive"));
            }
            answers
        };
        // t = 2: two honest answers are not enough, three are, whatever two forgers say.
        assert!(agreed_batches(base, &answers(2, 2), 3).is_empty());
        let accepted = agreed_batches(base, &answers(3, 2), 3);
        assert_eq!(accepted.iter().map(|(b, _)| b.clone()).collect::<Vec<_>>(), honest);
        let mut digest = genesis;
        for (batch, vouched) in &accepted {
            digest = log_next(&digest, batch);
            assert_eq!(*vouched, digest);
        }
        // Three forgers agreeing on made-up batches from a different base are not accepted from ours.
        let other_base = (None, log_genesis(b"other"));
        let mut answers = BTreeMap::new();
        for i in 0..3 {
            answers.insert(NodeIndex(i), vouch(other_base, &forged).expect("consecutive"));
        }
        assert!(agreed_batches(base, &answers, 3).is_empty());
        // Batches that are not consecutive vouch for nothing.
        assert!(vouch(base, &[batch(0, &[1]), batch(2, &[2])]).is_none());
        assert!(vouch((Some(4), genesis), &[batch(4, &[1])]).is_none());
    }
}
