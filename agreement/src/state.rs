//! An instance's whole state as data, for snapshots: [`AgreementState`] has a canonical wire
//! encoding, and an instance restored from it goes on exactly as the one it was taken from.
//!
//! Only what is derived is left out: the coin's hash-to-curve points (recomputed on demand) and
//! the decompressed coin shares (decompressed again from the bytes kept, a pure function).
//! Decoding is bounded by the input (no collection is preallocated from a count) and never
//! panics; [`BinaryAgreement::from_state`] also refuses replica indices outside the cluster.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use fides_crypto::blsttc::{SignatureShare, SIG_SIZE};
use fides_crypto::ThresholdKeys;
use fides_types::codec::{put_bytes, DecodeError, Reader, Wire};
use fides_types::{NodeIndex, Quorum, Round};

use crate::{BinaryAgreement, BoolSet, Config, Decision, RoundState, Validator, JUSTIFICATION_WIRE_MAX};

/// The state of one agreement instance at one replica (see the module documentation).
#[derive(Clone, Debug)]
pub struct AgreementState {
    round: Round,
    estimate: Option<bool>,
    rounds: BTreeMap<Round, RoundState>,
    justifications_valid: Vec<Vec<u8>>,
    justifications_invalid: BTreeSet<[u8; 32]>,
    decision: Option<Decision>,
    decided_by_coin: Option<Round>,
    proposed: bool,
    term_received: BTreeMap<NodeIndex, bool>,
    term_sent: bool,
    terminated: bool,
    coin_suspects: BTreeSet<NodeIndex>,
    dropped: BTreeMap<NodeIndex, (Round, Round)>,
}

/// Why a state does not fit the instance it is restored into.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the agreement state names replica {0}, outside the cluster")]
pub struct StateError(pub NodeIndex);

impl<V: Validator> BinaryAgreement<V> {
    /// This instance's state, to be restored with [`BinaryAgreement::from_state`].
    pub fn state(&self) -> AgreementState {
        AgreementState {
            round: self.round,
            estimate: self.estimate,
            rounds: self.rounds.clone(),
            justifications_valid: self.justifications_valid.clone(),
            justifications_invalid: self.justifications_invalid.clone(),
            decision: self.decision.clone(),
            decided_by_coin: self.decided_by_coin,
            proposed: self.proposed,
            term_received: self.term_received.clone(),
            term_sent: self.term_sent,
            terminated: self.terminated,
            coin_suspects: self.coin_suspects.clone(),
            dropped: self.dropped.clone(),
        }
    }

    /// An instance in the state `state`, with the same configuration as the one it was taken
    /// from (the configuration and the validator are not part of the state).
    pub fn from_state(
        quorum: Quorum,
        our_index: NodeIndex,
        coin_keys: Arc<ThresholdKeys>,
        config: Config,
        validator: V,
        state: AgreementState,
    ) -> Result<Self, StateError> {
        if let Some(node) = state.nodes().find(|node| !quorum.contains(*node)) {
            return Err(StateError(node));
        }
        let mut agreement = BinaryAgreement::new(quorum, our_index, coin_keys, config, validator);
        agreement.round = state.round;
        agreement.estimate = state.estimate;
        agreement.rounds = state.rounds;
        agreement.justifications_valid = state.justifications_valid;
        agreement.justifications_invalid = state.justifications_invalid;
        agreement.decision = state.decision;
        agreement.decided_by_coin = state.decided_by_coin;
        agreement.proposed = state.proposed;
        agreement.term_received = state.term_received;
        agreement.term_sent = state.term_sent;
        agreement.terminated = state.terminated;
        agreement.coin_suspects = state.coin_suspects;
        agreement.dropped = state.dropped;
        Ok(agreement)
    }
}

impl AgreementState {
    /// Every replica index the state names.
    fn nodes(&self) -> impl Iterator<Item = NodeIndex> + '_ {
        let rounds = self.rounds.values().flat_map(|state| {
            state.bval_received[0]
                .iter()
                .chain(&state.bval_received[1])
                .chain(state.aux_received.keys())
                .chain(state.conf_received.keys())
                .chain(state.coin_shares.keys())
                .chain(&state.coin_shares_pending)
                .chain(state.coin_shares_decoded.keys())
                .chain(&state.resent_to)
        });
        rounds.chain(self.term_received.keys()).chain(&self.coin_suspects).chain(self.dropped.keys()).copied()
    }
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    put_u32(out, u32::try_from(len).expect("state collections are bounded far below 2^32"));
}

fn put_option_bool(out: &mut Vec<u8>, value: Option<bool>) {
    out.push(match value {
        None => 2,
        Some(b) => u8::from(b),
    });
}

fn option_bool(reader: &mut Reader<'_>) -> Result<Option<bool>, DecodeError> {
    match reader.u8()? {
        0 => Ok(Some(false)),
        1 => Ok(Some(true)),
        2 => Ok(None),
        other => Err(DecodeError::Invalid { what: "optional bool", value: u64::from(other) }),
    }
}

fn put_option_set(out: &mut Vec<u8>, value: Option<BoolSet>) {
    out.push(value.map_or(0xff, BoolSet::bits));
}

fn bool_set(reader: &mut Reader<'_>) -> Result<BoolSet, DecodeError> {
    let bits = reader.u8()?;
    if bits > BoolSet::BOTH.bits() {
        return Err(DecodeError::Invalid { what: "value set", value: u64::from(bits) });
    }
    Ok(BoolSet(bits))
}

fn put_option_round(out: &mut Vec<u8>, value: Option<Round>) {
    out.push(u8::from(value.is_some()));
    put_u32(out, value.map_or(0, |r| r.0));
}

fn option_round(reader: &mut Reader<'_>) -> Result<Option<Round>, DecodeError> {
    let present = reader.bool()?;
    let round = Round(reader.u32()?);
    if !present && round.0 != 0 {
        return Err(DecodeError::Invalid { what: "absent round", value: u64::from(round.0) });
    }
    Ok(present.then_some(round))
}

/// Nodes in strictly increasing order: one set, one encoding.
fn put_nodes<'a>(out: &mut Vec<u8>, nodes: impl ExactSizeIterator<Item = &'a NodeIndex>) {
    put_len(out, nodes.len());
    for node in nodes {
        put_u32(out, node.0);
    }
}

fn node_set(reader: &mut Reader<'_>) -> Result<BTreeSet<NodeIndex>, DecodeError> {
    let mut set = BTreeSet::new();
    for node in ordered_nodes(reader)? {
        set.insert(node);
    }
    Ok(set)
}

/// A count, then that many node indices in strictly increasing order.
fn ordered_nodes(reader: &mut Reader<'_>) -> Result<Vec<NodeIndex>, DecodeError> {
    let count = reader.u32()?;
    let mut nodes: Vec<NodeIndex> = Vec::new();
    for _ in 0..count {
        let node = NodeIndex(reader.u32()?);
        if nodes.last().is_some_and(|last| *last >= node) {
            return Err(DecodeError::Invalid { what: "node order", value: u64::from(node.0) });
        }
        nodes.push(node);
    }
    Ok(nodes)
}

/// A node map: the keys in order, then each value.
fn node_map<T>(
    reader: &mut Reader<'_>,
    value: impl Fn(&mut Reader<'_>) -> Result<T, DecodeError>,
) -> Result<BTreeMap<NodeIndex, T>, DecodeError> {
    let mut map = BTreeMap::new();
    for node in ordered_nodes(reader)? {
        map.insert(node, value(reader)?);
    }
    Ok(map)
}

fn put_node_map<T>(out: &mut Vec<u8>, map: &BTreeMap<NodeIndex, T>, value: impl Fn(&mut Vec<u8>, &T)) {
    put_nodes(out, map.keys());
    for v in map.values() {
        value(out, v);
    }
}

impl RoundState {
    fn encode(&self, out: &mut Vec<u8>) {
        put_nodes(out, self.bval_received[0].iter());
        put_nodes(out, self.bval_received[1].iter());
        out.push(u8::from(self.bval_sent[0]) | (u8::from(self.bval_sent[1]) << 1));
        out.push(self.bin_values.bits());
        put_node_map(out, &self.aux_received, |out, v| out.push(u8::from(*v)));
        put_option_bool(out, self.aux_own);
        put_node_map(out, &self.conf_received, |out, v| out.push(v.bits()));
        put_option_set(out, self.conf_own);
        put_option_set(out, self.vals);
        put_node_map(out, &self.coin_shares, |out, v| out.extend_from_slice(v));
        put_len(out, self.coin_shares_pending.len());
        for node in &self.coin_shares_pending {
            put_u32(out, node.0);
        }
        put_nodes(out, self.coin_shares_decoded.keys());
        out.push(u8::from(self.coin_share_own.is_some()));
        if let Some(share) = &self.coin_share_own {
            out.extend_from_slice(share);
        }
        put_option_bool(out, self.coin);
        put_nodes(out, self.resent_to.iter());
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let bval_received = [node_set(reader)?, node_set(reader)?];
        let sent = reader.u8()?;
        if sent > 0b11 {
            return Err(DecodeError::Invalid { what: "votes sent", value: u64::from(sent) });
        }
        let bin_values = bool_set(reader)?;
        let aux_received = node_map(reader, |r| r.bool())?;
        let aux_own = option_bool(reader)?;
        let conf_received = node_map(reader, bool_set)?;
        let conf_own = decode_option_set(reader)?;
        let vals = decode_option_set(reader)?;
        let coin_shares = node_map(reader, |r| r.array::<SIG_SIZE>())?;
        let mut coin_shares_pending = VecDeque::new();
        for _ in 0..reader.u32()? {
            coin_shares_pending.push_back(NodeIndex(reader.u32()?));
        }
        let mut coin_shares_decoded = BTreeMap::new();
        for node in ordered_nodes(reader)? {
            // Shares are decoded only once they decompressed: a share that does not is not ours.
            let share = coin_shares
                .get(&node)
                .and_then(|bytes| SignatureShare::from_bytes(*bytes).ok())
                .ok_or(DecodeError::Invalid { what: "decoded coin share", value: u64::from(node.0) })?;
            coin_shares_decoded.insert(node, share);
        }
        let coin_share_own = if reader.bool()? { Some(reader.array::<SIG_SIZE>()?) } else { None };
        let coin = option_bool(reader)?;
        let resent_to = node_set(reader)?;
        Ok(RoundState {
            bval_received,
            bval_sent: [sent & 1 != 0, sent & 2 != 0],
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
}

fn decode_option_set(reader: &mut Reader<'_>) -> Result<Option<BoolSet>, DecodeError> {
    match reader.u8()? {
        0xff => Ok(None),
        bits if bits <= BoolSet::BOTH.bits() => Ok(Some(BoolSet(bits))),
        other => Err(DecodeError::Invalid { what: "optional value set", value: u64::from(other) }),
    }
}

impl Wire for Decision {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(self.value));
        out.push(u8::from(self.justification.is_some()));
        if let Some(justification) = &self.justification {
            put_bytes(out, justification);
        }
        put_u32(out, self.round.0);
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let value = reader.bool()?;
        let justification = if reader.bool()? { Some(reader.bytes(JUSTIFICATION_WIRE_MAX)?.to_vec()) } else { None };
        Ok(Decision { value, justification, round: Round(reader.u32()?) })
    }
}

impl Wire for AgreementState {
    fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.round.0);
        put_option_bool(out, self.estimate);
        put_len(out, self.rounds.len());
        for (round, state) in &self.rounds {
            put_u32(out, round.0);
            state.encode(out);
        }
        put_len(out, self.justifications_valid.len());
        for justification in &self.justifications_valid {
            put_bytes(out, justification);
        }
        put_len(out, self.justifications_invalid.len());
        for digest in &self.justifications_invalid {
            out.extend_from_slice(digest);
        }
        out.push(u8::from(self.decision.is_some()));
        if let Some(decision) = &self.decision {
            decision.encode(out);
        }
        put_option_round(out, self.decided_by_coin);
        out.push(u8::from(self.proposed) | (u8::from(self.term_sent) << 1) | (u8::from(self.terminated) << 2));
        put_node_map(out, &self.term_received, |out, v| out.push(u8::from(*v)));
        put_nodes(out, self.coin_suspects.iter());
        put_node_map(out, &self.dropped, |out, (low, high)| {
            put_u32(out, low.0);
            put_u32(out, high.0);
        });
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let round = Round(reader.u32()?);
        let estimate = option_bool(reader)?;
        let mut rounds = BTreeMap::new();
        let mut previous: Option<Round> = None;
        for _ in 0..reader.u32()? {
            let at = Round(reader.u32()?);
            if previous.is_some_and(|p| p >= at) {
                return Err(DecodeError::Invalid { what: "round order", value: u64::from(at.0) });
            }
            previous = Some(at);
            rounds.insert(at, RoundState::decode(reader)?);
        }
        let mut justifications_valid = Vec::new();
        for _ in 0..reader.u32()? {
            justifications_valid.push(reader.bytes(JUSTIFICATION_WIRE_MAX)?.to_vec());
        }
        let mut justifications_invalid = BTreeSet::new();
        for _ in 0..reader.u32()? {
            let digest = reader.array::<32>()?;
            if justifications_invalid.last().is_some_and(|last| *last >= digest) {
                return Err(DecodeError::Invalid { what: "digest order", value: 0 });
            }
            justifications_invalid.insert(digest);
        }
        let decision = if reader.bool()? { Some(Decision::decode(reader)?) } else { None };
        let decided_by_coin = option_round(reader)?;
        let flags = reader.u8()?;
        if flags > 0b111 {
            return Err(DecodeError::Invalid { what: "agreement flags", value: u64::from(flags) });
        }
        let term_received = node_map(reader, |r| r.bool())?;
        let coin_suspects = node_set(reader)?;
        let dropped = node_map(reader, |r| Ok((Round(r.u32()?), Round(r.u32()?))))?;
        Ok(AgreementState {
            round,
            estimate,
            rounds,
            justifications_valid,
            justifications_invalid,
            decision,
            decided_by_coin,
            proposed: flags & 1 != 0,
            term_received,
            term_sent: flags & 2 != 0,
            terminated: flags & 4 != 0,
            coin_suspects,
            dropped,
        })
    }
}
