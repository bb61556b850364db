//! The whole state of atomic broadcast at one replica as bytes, for the replica's own snapshots.
//!
//! Everything that decides what the replica does next is in it: the queue, the epochs in flight
//! with their broadcasts, agreements and decryptions (every vote sent and every vote counted),
//! the messages kept for later epochs, the epochs heard of, a catch-up under way, the
//! at-most-once window, the retained batches, the checkpoints pending and stable, the clock. So
//! a fresh instance made with the same configuration and keys, given the state, behaves exactly
//! as the one encoded: the same messages and outputs for the same following inputs and
//! randomness. Keys and configuration are not in it (they come from the cluster file).
//!
//! Left out because they are functions of what is in: the set of queued keys (the keys of the
//! queue) and the set of executed keys (the keys of the window). Windows that are runs of the
//! same per-epoch entries (the current one, the stable checkpoint's, the pending checkpoints')
//! are written once, as ranges of one table.
//!
//! Decoding reads the replica's own storage but is bounded all the same: every count is checked
//! against its bound and against the bytes left, shards and payloads against the configuration's
//! bounds, replica indices against the quorum. A corrupt state is an error, never a panic.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use fides_crypto::envelope::Envelope;
use fides_types::codec::{get_option, get_seq, put_bytes, put_len, put_option, put_seq, DecodeError, Reader, Wire};

use super::{
    AtomicBroadcast, Batch, CatchingUp, Contribution, Decryption, EpochState, Message, Pending, Queued, Request,
    RequestKey,
};
use crate::checkpoint::{Checkpoint, Statement, Vouched, WindowEntry, CATCH_UP_BATCHES_MAX, WINDOW_ENTRIES_MAX};
use crate::state_codec::{get_node, get_nodes, put_bool, put_node, put_nodes, put_u64};

/// Tag of the encoding (a change of the encoding changes it).
const STATE_VERSION: u8 = 1;

/// Bound on the collections of the state whose bound is not a configuration value (every count
/// is also bounded by the bytes left).
const ITEMS_MAX: usize = 1 << 26;

impl AtomicBroadcast {
    /// The whole state (see the module's documentation), between two inputs.
    pub fn encode_state(&self, out: &mut Vec<u8>) {
        out.push(STATE_VERSION);
        put_u64(out, self.clock);
        put_seq(out, self.queue.iter(), |out, queued| queued.request.encode(out));
        put_key_map(out, &self.in_flight);
        put_key_map(out, &self.waiting);
        put_seq(out, self.epochs.iter(), |out, (epoch, state)| {
            put_u64(out, *epoch);
            encode_epoch(state, out);
        });
        put_u64(out, self.next_epoch);
        put_u64(out, self.time);
        let windows = Windows::new(self);
        windows.encode(out);
        windows.put(out, self.window.iter());
        put_nodes(out, self.share_suspects.iter());
        out.extend_from_slice(&self.log);
        put_seq(out, self.retained.iter(), |out, batch| batch.encode(out));
        put_option(out, self.stable.as_ref(), |out, (checkpoint, window)| {
            checkpoint.encode(out);
            windows.put(out, window.iter());
        });
        put_seq(out, self.pending.iter(), |out, (epoch, pending)| {
            put_u64(out, *epoch);
            put_option(out, pending.delivered.as_ref(), |out, (time, log, digest, window)| {
                put_u64(out, *time);
                out.extend_from_slice(log);
                out.extend_from_slice(digest);
                windows.put(out, window.iter());
            });
            put_option(out, pending.statement.as_ref(), |out, statement| encode_statement(statement, out));
            put_seq(out, pending.shares.iter(), |out, (node, share)| {
                put_node(out, *node);
                out.extend_from_slice(share);
            });
        });
        put_node_u64_map(out, &self.heard);
        put_option(out, self.catching_up.as_ref(), |out, catching_up| encode_catching_up(catching_up, out));
        put_node_u64_map(out, &self.answered);
        put_seq(out, self.buffered.iter(), |out, (epoch, messages)| {
            put_u64(out, *epoch);
            put_seq(out, messages.iter(), |out, (from, message)| {
                put_node(out, *from);
                message.encode(out);
            });
        });
        put_seq(out, self.buffered_bytes.iter(), |out, (node, bytes)| {
            put_node(out, *node);
            put_u64(out, *bytes as u64);
        });
    }

    /// The agreed time of the last epoch delivered (or installed).
    pub fn agreed_time(&self) -> u64 {
        self.time
    }

    /// The keys of the requests queued, in queue order.
    pub fn queued_keys(&self) -> impl Iterator<Item = RequestKey> + '_ {
        self.queue.iter().map(Queued::key)
    }

    /// [`AtomicBroadcast::encode_state`] into a new vector.
    pub fn encode_state_to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_state(&mut out);
        out
    }

    /// Read a state written by [`AtomicBroadcast::encode_state`] (all of `reader`'s bytes are not
    /// required to be read: the caller checks the end). `self` must be fresh: just made with the
    /// configuration and keys of the instance encoded. On error it is left in an unspecified
    /// state and must be dropped.
    pub fn decode_state(&mut self, reader: &mut Reader<'_>) -> Result<(), DecodeError> {
        let version = reader.u8()?;
        if version != STATE_VERSION {
            return Err(DecodeError::Invalid { what: "state version", value: u64::from(version) });
        }
        let quorum = self.quorum;
        let n = quorum.n() as usize;
        let payload_len_max = self.config.payload_len_max;
        self.clock = reader.u64()?;
        self.queue = get_seq(reader, self.config.queue_max, |r| {
            let request = Request::decode(r)?;
            if request.payload.len() > payload_len_max {
                return Err(DecodeError::TooLong { len: request.payload.len() as u64, max: payload_len_max as u64 });
            }
            Ok(Queued { key: request.key(), request })
        })?
        .into();
        self.queued = self.queue.iter().map(Queued::key).collect();
        self.in_flight = get_key_map(reader)?;
        self.waiting = get_key_map(reader)?;
        let epochs = get_seq(reader, ITEMS_MAX, |r| {
            let epoch = r.u64()?;
            Ok((epoch, self.decode_epoch(epoch, r)?))
        })?;
        self.epochs = epochs.into_iter().collect();
        self.next_epoch = reader.u64()?;
        self.time = reader.u64()?;
        let windows = Windows::decode(reader)?;
        self.window = windows.get(reader)?.into();
        self.executed = self.window.iter().flat_map(|(_, keys)| keys.iter().copied()).collect();
        self.share_suspects = get_nodes(reader, quorum)?;
        self.log = reader.array()?;
        self.retained = get_seq(reader, CATCH_UP_BATCHES_MAX as usize, Batch::decode)?.into();
        self.stable = get_option(reader, |r| Ok((Checkpoint::decode(r)?, Arc::new(windows.get(r)?))))?;
        self.pending = get_seq(reader, ITEMS_MAX, |r| {
            let epoch = r.u64()?;
            let delivered = get_option(r, |r| Ok((r.u64()?, r.array()?, r.array()?, Arc::new(windows.get(r)?))))?;
            let statement = get_option(r, decode_statement)?;
            let shares = get_seq(r, n, |r| Ok((get_node(r, quorum)?, r.array()?)))?.into_iter().collect();
            Ok((epoch, Pending { delivered, statement, shares }))
        })?
        .into_iter()
        .collect();
        self.heard = get_node_u64_map(reader, self)?;
        self.catching_up = get_option(reader, |r| decode_catching_up(r, self))?;
        self.answered = get_node_u64_map(reader, self)?;
        let shard_len_max = self.shard_len_max();
        self.buffered = get_seq(reader, ITEMS_MAX, |r| {
            let epoch = r.u64()?;
            let messages =
                get_seq(r, ITEMS_MAX, |r| Ok((get_node(r, quorum)?, Message::decode_bounded(r, shard_len_max)?)))?;
            Ok((epoch, messages))
        })?
        .into_iter()
        .collect();
        self.buffered_bytes = get_seq(reader, n, |r| {
            let node = get_node(r, quorum)?;
            let bytes = usize::try_from(r.u64()?).map_err(|_| DecodeError::Invalid { what: "kept bytes", value: 0 })?;
            Ok((node, bytes))
        })?
        .into_iter()
        .collect();
        Ok(())
    }

    fn decode_epoch(&self, epoch: u64, reader: &mut Reader<'_>) -> Result<EpochState, DecodeError> {
        let quorum = self.quorum;
        let n = quorum.n() as usize;
        // The common subset of this epoch (its session names the epoch: the coins depend on it).
        let EpochState { mut subset, .. } = self.new_epoch(epoch);
        subset.decode_state(reader)?;
        let proposed = reader.bool()?;
        let ciphertext_len_max = self.ciphertext_len_max();
        let requests_max = self.contribution_requests_max();
        let payload_len_max = self.config.payload_len_max;
        let agreed = get_option(reader, |r| {
            let decryptions = get_seq(r, n, |r| {
                let proposer = get_node(r, quorum)?;
                let ciphertext = get_option(r, |r| {
                    Envelope::from_bytes(r.bytes(ciphertext_len_max)?)
                        .map_err(|_| DecodeError::Invalid { what: "envelope", value: u64::from(proposer.0) })
                })?;
                let shares = get_seq(r, n, |r| Ok((get_node(r, quorum)?, r.array()?)))?.into_iter().collect();
                let contribution = get_option(r, |r| {
                    get_option(r, |r| {
                        Contribution::decode_bounded(r.bytes(ciphertext_len_max)?, requests_max, payload_len_max)
                    })
                })?;
                Ok((proposer, Decryption { ciphertext, shares, contribution }))
            })?;
            Ok(decryptions.into_iter().collect::<BTreeMap<_, _>>())
        })?;
        let early = get_seq(reader, n * n, |r| Ok(((get_node(r, quorum)?, get_node(r, quorum)?), r.array()?)))?
            .into_iter()
            .collect();
        let delivered = reader.bool()?;
        Ok(EpochState { subset, proposed, agreed, early, delivered })
    }
}

fn encode_epoch(state: &EpochState, out: &mut Vec<u8>) {
    state.subset.encode_state(out);
    put_bool(out, state.proposed);
    put_option(out, state.agreed.as_ref(), |out, decryptions| {
        put_seq(out, decryptions.iter(), |out, (proposer, decryption)| {
            put_node(out, *proposer);
            put_option(out, decryption.ciphertext.as_ref(), |out, envelope| put_bytes(out, &envelope.to_bytes()));
            put_seq(out, decryption.shares.iter(), |out, (node, share)| {
                put_node(out, *node);
                out.extend_from_slice(share);
            });
            put_option(out, decryption.contribution.as_ref(), |out, contribution| {
                put_option(out, contribution.as_ref(), |out, contribution| put_bytes(out, &contribution.to_bytes()));
            });
        });
    });
    put_seq(out, state.early.iter(), |out, ((proposer, sender), share)| {
        put_node(out, *proposer);
        put_node(out, *sender);
        out.extend_from_slice(share);
    });
    put_bool(out, state.delivered);
}

fn encode_statement(statement: &Statement, out: &mut Vec<u8>) {
    put_u64(out, statement.epoch);
    put_u64(out, statement.time);
    out.extend_from_slice(&statement.application);
    out.extend_from_slice(&statement.log);
    out.extend_from_slice(&statement.window);
}

fn decode_statement(reader: &mut Reader<'_>) -> Result<Statement, DecodeError> {
    Ok(Statement {
        epoch: reader.u64()?,
        time: reader.u64()?,
        application: reader.array()?,
        log: reader.array()?,
        window: reader.array()?,
    })
}

fn encode_catching_up(catching_up: &CatchingUp, out: &mut Vec<u8>) {
    put_u64(out, catching_up.heard);
    put_seq(out, catching_up.answers.iter(), |out, (node, (checkpoint, vouched))| {
        put_node(out, *node);
        put_option(out, checkpoint.as_ref(), |out, (checkpoint, window)| {
            checkpoint.encode(out);
            put_window(out, window.iter());
        });
        put_seq(out, vouched.digests.iter(), |out, (epoch, digest)| {
            put_u64(out, *epoch);
            out.extend_from_slice(digest);
        });
        put_seq(out, vouched.batches.values(), |out, batch| batch.encode(out));
    });
}

fn decode_catching_up(reader: &mut Reader<'_>, abc: &AtomicBroadcast) -> Result<CatchingUp, DecodeError> {
    let quorum = abc.quorum;
    let heard = reader.u64()?;
    let answers = get_seq(reader, quorum.n() as usize, |r| {
        let node = get_node(r, quorum)?;
        let checkpoint = get_option(r, |r| Ok((Checkpoint::decode(r)?, get_window(r)?)))?;
        let digests = get_seq(r, ITEMS_MAX, |r| Ok((r.u64()?, r.array()?)))?.into_iter().collect();
        let batches = get_seq(r, ITEMS_MAX, Batch::decode)?.into_iter().map(|b| (b.epoch, b)).collect();
        Ok((node, (checkpoint, Vouched { digests, batches })))
    })?;
    Ok(CatchingUp { heard, answers: answers.into_iter().collect() })
}

/// A map keyed by request key, in key order (one encoding for one map).
fn put_key_map(out: &mut Vec<u8>, map: &HashMap<RequestKey, u64>) {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_unstable();
    put_seq(out, entries.into_iter(), |out, (key, epoch)| {
        put_key(out, key);
        put_u64(out, *epoch);
    });
}

fn get_key_map(reader: &mut Reader<'_>) -> Result<HashMap<RequestKey, u64>, DecodeError> {
    Ok(get_seq(reader, ITEMS_MAX, |r| Ok((get_key(r)?, r.u64()?)))?.into_iter().collect())
}

fn put_node_u64_map(out: &mut Vec<u8>, map: &BTreeMap<fides_types::NodeIndex, u64>) {
    put_seq(out, map.iter(), |out, (node, value)| {
        put_node(out, *node);
        put_u64(out, *value);
    });
}

fn get_node_u64_map(
    reader: &mut Reader<'_>,
    abc: &AtomicBroadcast,
) -> Result<BTreeMap<fides_types::NodeIndex, u64>, DecodeError> {
    let quorum = abc.quorum;
    Ok(get_seq(reader, quorum.n() as usize, |r| Ok((get_node(r, quorum)?, r.u64()?)))?.into_iter().collect())
}

fn put_key(out: &mut Vec<u8>, (client, id, digest): &RequestKey) {
    put_u64(out, *client);
    put_u64(out, *id);
    out.extend_from_slice(digest);
}

fn get_key(reader: &mut Reader<'_>) -> Result<RequestKey, DecodeError> {
    Ok((reader.u64()?, reader.u64()?, reader.array()?))
}

fn put_entry(out: &mut Vec<u8>, (epoch, keys): &WindowEntry) {
    put_u64(out, *epoch);
    put_seq(out, keys.iter(), put_key);
}

fn get_entry(reader: &mut Reader<'_>) -> Result<WindowEntry, DecodeError> {
    Ok((reader.u64()?, get_seq(reader, WINDOW_ENTRIES_MAX as usize, get_key)?))
}

fn put_window<'a>(out: &mut Vec<u8>, entries: impl ExactSizeIterator<Item = &'a WindowEntry>) {
    put_seq(out, entries, put_entry);
}

fn get_window(reader: &mut Reader<'_>) -> Result<Vec<WindowEntry>, DecodeError> {
    get_seq(reader, WINDOW_ENTRIES_MAX as usize, get_entry)
}

/// The per-epoch window entries of every window of the state, each written once: a window is
/// then a range of this table (or, should it not be one, written out in full).
struct Windows<'a> {
    /// Entries by epoch, as the windows hold them.
    entries: Vec<&'a WindowEntry>,
    /// Index in `entries` of each epoch.
    index: HashMap<u64, usize>,
}

/// Tags of a window: a range of the table, or the entries themselves.
const WINDOW_RANGE: u8 = 0;
const WINDOW_FULL: u8 = 1;

impl<'a> Windows<'a> {
    fn new(abc: &'a AtomicBroadcast) -> Windows<'a> {
        let mut by_epoch: BTreeMap<u64, &'a WindowEntry> = BTreeMap::new();
        let stable = abc.stable.iter().flat_map(|(_, window)| window.iter());
        let pending = abc.pending.values().filter_map(|p| p.delivered.as_ref()).flat_map(|d| d.3.iter());
        for entry in abc.window.iter().chain(stable).chain(pending) {
            by_epoch.entry(entry.0).or_insert(entry);
        }
        let entries: Vec<&'a WindowEntry> = by_epoch.into_values().collect();
        let index = entries.iter().enumerate().map(|(i, (epoch, _))| (*epoch, i)).collect();
        Windows { entries, index }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_seq(out, self.entries.iter(), |out, entry| put_entry(out, entry));
    }

    /// Write `window` as a range of the table if it is one, in full otherwise.
    fn put<'b>(&self, out: &mut Vec<u8>, window: impl ExactSizeIterator<Item = &'b WindowEntry> + Clone) {
        let len = window.len();
        let first = window.clone().next().and_then(|(epoch, _)| self.index.get(epoch).copied());
        let is_range = match first {
            Some(first) => {
                first + len <= self.entries.len() && window.clone().zip(&self.entries[first..]).all(|(a, b)| a == *b)
            }
            None => len == 0,
        };
        if is_range {
            out.push(WINDOW_RANGE);
            put_len(out, first.unwrap_or(0));
            put_len(out, len);
        } else {
            out.push(WINDOW_FULL);
            put_window(out, window);
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<WindowTable, DecodeError> {
        Ok(WindowTable(get_window(reader)?))
    }
}

/// The table of windows, decoded.
struct WindowTable(Vec<WindowEntry>);

impl WindowTable {
    /// Read a window written by [`Windows::put`].
    fn get(&self, reader: &mut Reader<'_>) -> Result<Vec<WindowEntry>, DecodeError> {
        let table = &self.0;
        match reader.u8()? {
            WINDOW_RANGE => {
                let first = reader.u32()? as usize;
                let len = reader.u32()? as usize;
                let range = first.checked_add(len).filter(|end| *end <= table.len()).map(|end| &table[first..end]);
                range
                    .map(<[WindowEntry]>::to_vec)
                    .ok_or(DecodeError::TooLong { len: first as u64 + len as u64, max: table.len() as u64 })
            }
            WINDOW_FULL => get_window(reader),
            other => Err(DecodeError::Invalid { what: "window tag", value: u64::from(other) }),
        }
    }
}
