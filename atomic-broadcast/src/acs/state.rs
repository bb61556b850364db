//! The state of one common subset as bytes, for a replica's own snapshots (see
//! `epoch::state`): its broadcasts, its agreements, what they delivered and decided, and which
//! agreements it voted in.

use fides_types::codec::{get_seq, put_bytes, put_seq, DecodeError, Reader};

use super::CommonSubset;
use crate::rbc::Delivery;
use crate::state_codec::{get_node, put_bool, put_node};

impl CommonSubset {
    /// Append the instance's state (not its configuration).
    pub(crate) fn encode_state(&self, out: &mut Vec<u8>) {
        for broadcast in &self.broadcasts {
            broadcast.encode_state(out);
        }
        for agreement in &self.agreements {
            agreement.encode_state(out);
        }
        put_seq(out, self.delivered.iter(), |out, (node, delivery)| {
            put_node(out, *node);
            match delivery {
                Delivery::Invalid => out.push(0),
                Delivery::Value(value) => {
                    out.push(1);
                    put_bytes(out, value);
                }
            }
        });
        for voted in &self.voted {
            put_bool(out, *voted);
        }
        put_seq(out, self.decided.iter(), |out, (node, value)| {
            put_node(out, *node);
            put_bool(out, *value);
        });
        put_bool(out, self.output_done);
    }

    /// Read a state written by [`CommonSubset::encode_state`] into this fresh instance of the
    /// same configuration.
    pub(crate) fn decode_state(&mut self, reader: &mut Reader<'_>) -> Result<(), DecodeError> {
        let quorum = self.quorum;
        let n = quorum.n() as usize;
        for broadcast in &mut self.broadcasts {
            broadcast.decode_state(reader)?;
        }
        for agreement in &mut self.agreements {
            agreement.decode_state(reader)?;
        }
        let value_len_max = self.broadcasts.first().map_or(0, |b| b.value_len_max());
        self.delivered = get_seq(reader, n, |r| {
            let node = get_node(r, quorum)?;
            let delivery = match r.u8()? {
                0 => Delivery::Invalid,
                1 => Delivery::Value(r.bytes(value_len_max)?.to_vec()),
                other => return Err(DecodeError::Invalid { what: "delivery tag", value: u64::from(other) }),
            };
            Ok((node, delivery))
        })?
        .into_iter()
        .collect();
        for voted in &mut self.voted {
            *voted = reader.bool()?;
        }
        self.decided = get_seq(reader, n, |r| Ok((get_node(r, quorum)?, r.bool()?)))?.into_iter().collect();
        self.output_done = reader.bool()?;
        Ok(())
    }
}
