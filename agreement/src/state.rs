//! The state of one agreement instance as bytes, for a replica's own snapshots: everything that
//! decides what the instance does next (every vote it sent or counted), so that an instance
//! decoded into a fresh one of the same configuration behaves exactly as the original. The keys
//! and the configuration are not in it. Left out: the hash-to-curve points of the coin, a cache
//! recomputed when needed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use fides_crypto::blsttc::SignatureShare;
use fides_types::codec::{get_option, get_seq, put_bytes, put_option, put_seq, DecodeError, Reader};
use fides_types::{NodeIndex, Quorum, Round};

use crate::{BinaryAgreement, BoolSet, Decision, RoundState, Validator, JUSTIFICATIONS_CACHED_MAX};

/// The most rounds an encoded instance may hold (far above what is ever kept: old rounds are
/// pruned to a few numbers, and an instance runs a few rounds).
const ROUNDS_MAX: usize = 1 << 20;

impl<V: Validator> BinaryAgreement<V> {
    /// Append the instance's state (see the module's documentation).
    pub fn encode_state(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.round.0.to_le_bytes());
        put_option(out, self.estimate, put_bool);
        put_seq(out, self.rounds.iter(), |out, (round, state)| {
            out.extend_from_slice(&round.0.to_le_bytes());
            encode_round(state, out);
        });
        put_seq(out, self.justifications_valid.iter(), |out, j| put_bytes(out, j));
        put_seq(out, self.justifications_invalid.iter(), |out, d| out.extend_from_slice(d));
        put_option(out, self.decision.as_ref(), |out, d| {
            put_bool(out, d.value);
            put_option(out, d.justification.as_ref(), |out, j| put_bytes(out, j));
            out.extend_from_slice(&d.round.0.to_le_bytes());
        });
        put_option(out, self.decided_by_coin, |out, r| out.extend_from_slice(&r.0.to_le_bytes()));
        put_bool(out, self.proposed);
        put_seq(out, self.term_received.iter(), |out, (node, value)| {
            put_node(out, *node);
            put_bool(out, *value);
        });
        put_bool(out, self.term_sent);
        put_bool(out, self.terminated);
        put_seq(out, self.coin_suspects.iter(), |out, node| put_node(out, *node));
        put_seq(out, self.dropped.iter(), |out, (node, (low, high))| {
            put_node(out, *node);
            out.extend_from_slice(&low.0.to_le_bytes());
            out.extend_from_slice(&high.0.to_le_bytes());
        });
    }

    /// Read a state written by [`BinaryAgreement::encode_state`] into this instance, which must be
    /// fresh (just made with the configuration of the one encoded). A corrupt state is an error,
    /// never a panic; on error the instance is left in an unspecified state.
    pub fn decode_state(&mut self, reader: &mut Reader<'_>) -> Result<(), DecodeError> {
        let quorum = self.quorum;
        let n = quorum.n() as usize;
        let justification_max = self.config.justification_len_max;
        self.round = Round(reader.u32()?);
        self.estimate = get_option(reader, |r| r.bool())?;
        self.rounds =
            get_seq(reader, ROUNDS_MAX, |r| Ok((Round(r.u32()?), decode_round(r, quorum)?)))?.into_iter().collect();
        self.justifications_valid =
            get_seq(reader, JUSTIFICATIONS_CACHED_MAX, |r| Ok(r.bytes(justification_max)?.to_vec()))?;
        self.justifications_invalid = get_seq(reader, usize::MAX, |r| r.array())?.into_iter().collect();
        self.decision = get_option(reader, |r| {
            Ok(Decision {
                value: r.bool()?,
                justification: get_option(r, |r| Ok(r.bytes(justification_max)?.to_vec()))?,
                round: Round(r.u32()?),
            })
        })?;
        self.decided_by_coin = get_option(reader, |r| Ok(Round(r.u32()?)))?;
        self.proposed = reader.bool()?;
        self.term_received = get_seq(reader, n, |r| Ok((get_node(r, quorum)?, r.bool()?)))?.into_iter().collect();
        self.term_sent = reader.bool()?;
        self.terminated = reader.bool()?;
        self.coin_suspects = get_nodes(reader, quorum)?;
        self.dropped = get_seq(reader, n, |r| Ok((get_node(r, quorum)?, (Round(r.u32()?), Round(r.u32()?)))))?
            .into_iter()
            .collect();
        self.coin_points = BTreeMap::new();
        if (self.terminated || self.term_sent) && self.decision.is_none() {
            // The live instance sends TERM and terminates only after deciding; callers rely on it.
            return Err(DecodeError::Invalid { what: "terminated agreement without a decision", value: 0 });
        }
        Ok(())
    }
}

fn encode_round(state: &RoundState, out: &mut Vec<u8>) {
    for received in &state.bval_received {
        put_seq(out, received.iter(), |out, node| put_node(out, *node));
    }
    put_bool(out, state.bval_sent[0]);
    put_bool(out, state.bval_sent[1]);
    out.push(state.bin_values.bits());
    put_seq(out, state.aux_received.iter(), |out, (node, value)| {
        put_node(out, *node);
        put_bool(out, *value);
    });
    put_option(out, state.aux_own, put_bool);
    put_seq(out, state.conf_received.iter(), |out, (node, values)| {
        put_node(out, *node);
        out.push(values.bits());
    });
    put_option(out, state.conf_own, |out, values| out.push(values.bits()));
    put_option(out, state.vals, |out, values| out.push(values.bits()));
    put_seq(out, state.coin_shares.iter(), |out, (node, share)| {
        put_node(out, *node);
        out.extend_from_slice(share);
    });
    put_seq(out, state.coin_shares_pending.iter(), |out, node| put_node(out, *node));
    put_seq(out, state.coin_shares_decoded.iter(), |out, (node, share)| {
        put_node(out, *node);
        out.extend_from_slice(&share.to_bytes());
    });
    put_option(out, state.coin_share_own.as_ref(), |out, share| out.extend_from_slice(share));
    put_option(out, state.coin, put_bool);
    put_seq(out, state.resent_to.iter(), |out, node| put_node(out, *node));
}

fn decode_round(reader: &mut Reader<'_>, quorum: Quorum) -> Result<RoundState, DecodeError> {
    let n = quorum.n() as usize;
    let bval_received = [get_nodes(reader, quorum)?, get_nodes(reader, quorum)?];
    let bval_sent = [reader.bool()?, reader.bool()?];
    let bin_values = get_bool_set(reader)?;
    let aux_received = get_seq(reader, n, |r| Ok((get_node(r, quorum)?, r.bool()?)))?.into_iter().collect();
    let aux_own = get_option(reader, |r| r.bool())?;
    let conf_received = get_seq(reader, n, |r| Ok((get_node(r, quorum)?, get_bool_set(r)?)))?.into_iter().collect();
    let conf_own = get_option(reader, get_bool_set)?;
    let vals = get_option(reader, get_bool_set)?;
    let coin_shares = get_seq(reader, n, |r| Ok((get_node(r, quorum)?, r.array()?)))?.into_iter().collect();
    let coin_shares_pending: VecDeque<NodeIndex> = get_seq(reader, n, |r| get_node(r, quorum))?.into();
    let coin_shares_decoded = get_seq(reader, n, |r| {
        let node = get_node(r, quorum)?;
        let share = SignatureShare::from_bytes(r.array()?)
            .map_err(|_| DecodeError::Invalid { what: "decoded coin share", value: u64::from(node.0) })?;
        Ok((node, share))
    })?
    .into_iter()
    .collect();
    let coin_share_own = get_option(reader, |r| r.array())?;
    let coin = get_option(reader, |r| r.bool())?;
    let resent_to = get_nodes(reader, quorum)?;
    Ok(RoundState {
        bval_received,
        bval_sent,
        bin_values,
        aux_received,
        aux_own,
        conf_received,
        conf_own,
        vals,
        coin_shares,
        coin_shares_pending,
        coin_shares_decoded,
        coin_share_own,
        coin,
        resent_to,
    })
}

fn put_bool(out: &mut Vec<u8>, value: bool) {
    out.push(u8::from(value));
}

fn put_node(out: &mut Vec<u8>, node: NodeIndex) {
    out.extend_from_slice(&node.0.to_le_bytes());
}

fn get_node(reader: &mut Reader<'_>, quorum: Quorum) -> Result<NodeIndex, DecodeError> {
    let node = NodeIndex(reader.u32()?);
    if !quorum.contains(node) {
        return Err(DecodeError::Invalid { what: "replica index", value: u64::from(node.0) });
    }
    Ok(node)
}

fn get_nodes(reader: &mut Reader<'_>, quorum: Quorum) -> Result<BTreeSet<NodeIndex>, DecodeError> {
    Ok(get_seq(reader, quorum.n() as usize, |r| get_node(r, quorum))?.into_iter().collect())
}

fn get_bool_set(reader: &mut Reader<'_>) -> Result<BoolSet, DecodeError> {
    let bits = reader.u8()?;
    BoolSet::from_bits(bits).ok_or(DecodeError::Invalid { what: "set of booleans", value: u64::from(bits) })
}
