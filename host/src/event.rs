//! What the replica handled, in order: the events of its write-ahead log, and their encoding.
//!
//! The replica is a deterministic function of its keys, its RNG seed and these events; the
//! driver logs each one (fsynced) before the [`crate::core::Core`] handles it, and a restart
//! replays them. The encoding is the log's on disk: changing it is a change of the store's format.

use fides_agreement::Vote;
use fides_atomic_broadcast::epoch::Request;
use fides_atomic_broadcast::instances::{decode_vote, encode_vote, InstanceId};
use fides_types::codec::{put_bytes, DecodeError, Reader, Wire};
use fides_types::NodeIndex;

/// The longest frame the log accepts (a peer message as received), and the longest a replica's
/// transport sends or hands up.
pub const FRAME_LEN_MAX: usize = 64 * 1024 * 1024;

/// What the replica handled, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A client's request.
    Submit(Request),
    /// The local clock, milliseconds since the Unix epoch.
    Clock(u64),
    /// A message from a peer, as it arrived (decoded again on replay).
    Frame {
        /// The sender, as the transport authenticated it.
        from: NodeIndex,
        /// The encoded message.
        bytes: Vec<u8>,
    },
    /// The replica asked its peers for what it missed.
    Recover,
    /// A peer showed itself at `epoch` by a message too far ahead to keep; only that is logged
    /// (see `AtomicBroadcast::admissible`).
    Heard {
        /// The peer, as the transport authenticated it.
        from: NodeIndex,
        /// The epoch.
        epoch: u64,
    },
    /// The local service asked for agreement instance `instance` with our `vote` (logged before
    /// any of its messages is sent, so that a restart votes the same).
    Agree {
        /// The instance.
        instance: InstanceId,
        /// Our vote, with its justification for 1.
        vote: Vote,
    },
    /// A peer's message of an agreement instance, as it arrived (decoded again on replay).
    InstanceFrame {
        /// The sender, as the transport authenticated it.
        from: NodeIndex,
        /// The encoded message.
        bytes: Vec<u8>,
    },
}

impl Wire for Event {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Event::Submit(request) => {
                out.push(0);
                request.encode(out);
            }
            Event::Clock(now) => {
                out.push(1);
                out.extend_from_slice(&now.to_le_bytes());
            }
            Event::Frame { from, bytes } => {
                out.push(2);
                out.extend_from_slice(&from.0.to_le_bytes());
                put_bytes(out, bytes);
            }
            Event::Recover => out.push(3),
            Event::Heard { from, epoch } => {
                out.push(4);
                out.extend_from_slice(&from.0.to_le_bytes());
                out.extend_from_slice(&epoch.to_le_bytes());
            }
            Event::Agree { instance, vote } => {
                out.push(5);
                instance.encode(out);
                encode_vote(vote, out);
            }
            Event::InstanceFrame { from, bytes } => {
                out.push(6);
                out.extend_from_slice(&from.0.to_le_bytes());
                put_bytes(out, bytes);
            }
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match reader.u8()? {
            0 => Ok(Event::Submit(Request::decode(reader)?)),
            1 => Ok(Event::Clock(reader.u64()?)),
            2 => Ok(Event::Frame { from: NodeIndex(reader.u32()?), bytes: reader.bytes(FRAME_LEN_MAX)?.to_vec() }),
            3 => Ok(Event::Recover),
            4 => Ok(Event::Heard { from: NodeIndex(reader.u32()?), epoch: reader.u64()? }),
            5 => Ok(Event::Agree { instance: InstanceId::decode(reader)?, vote: decode_vote(reader)? }),
            6 => Ok(Event::InstanceFrame {
                from: NodeIndex(reader.u32()?),
                bytes: reader.bytes(FRAME_LEN_MAX)?.to_vec(),
            }),
            other => Err(DecodeError::Invalid { what: "event tag", value: u64::from(other) }),
        }
    }
}
