//! The state of one reliable broadcast as bytes, for a replica's own snapshots (see
//! `epoch::state`): every flag and every echo and ready counted.

use fides_types::codec::{get_option, get_seq, put_option, put_seq, DecodeError, Reader};

use super::{decode_proof, encode_proof, ReliableBroadcast};
use crate::state_codec::{get_node, get_nodes, put_bool, put_node, put_nodes};

impl ReliableBroadcast {
    /// Append the instance's state (not its configuration).
    pub(crate) fn encode_state(&self, out: &mut Vec<u8>) {
        put_bool(out, self.proposed);
        put_option(out, self.value_root.as_ref(), |out, root| out.extend_from_slice(root));
        put_bool(out, self.echo_sent);
        put_bool(out, self.ready_sent);
        put_seq(out, self.echos.iter(), |out, (node, (proof, checked))| {
            put_node(out, *node);
            encode_proof(proof, out);
            put_bool(out, *checked);
        });
        put_nodes(out, self.bad_echoes.iter());
        put_seq(out, self.readys.iter(), |out, (node, root)| {
            put_node(out, *node);
            out.extend_from_slice(root);
        });
        put_bool(out, self.delivered);
    }

    /// Read a state written by [`ReliableBroadcast::encode_state`] into this fresh instance of
    /// the same configuration (shards are bounded as on the wire).
    pub(crate) fn decode_state(&mut self, reader: &mut Reader<'_>) -> Result<(), DecodeError> {
        let quorum = self.quorum;
        let n = quorum.n() as usize;
        let shard_len_max = self.shard_len_max();
        self.proposed = reader.bool()?;
        self.value_root = get_option(reader, |r| r.array())?;
        self.echo_sent = reader.bool()?;
        self.ready_sent = reader.bool()?;
        self.echos = get_seq(reader, n, |r| {
            let node = get_node(r, quorum)?;
            let proof = decode_proof(r, shard_len_max)?;
            Ok((node, (proof, r.bool()?)))
        })?
        .into_iter()
        .collect();
        self.bad_echoes = get_nodes(reader, quorum)?;
        self.readys = get_seq(reader, n, |r| Ok((get_node(r, quorum)?, r.array()?)))?.into_iter().collect();
        self.delivered = reader.bool()?;
        Ok(())
    }

    /// The longest value this broadcast accepts.
    pub(crate) fn value_len_max(&self) -> usize {
        self.config.value_len_max
    }
}
