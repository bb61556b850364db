//! Small helpers for encoding a replica's own protocol state (see `epoch::state`).

use std::collections::BTreeSet;

use fides_types::codec::{get_seq, put_seq, DecodeError, Reader};
use fides_types::{NodeIndex, Quorum};

pub(crate) fn put_bool(out: &mut Vec<u8>, value: bool) {
    out.push(u8::from(value));
}

pub(crate) fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

pub(crate) fn put_node(out: &mut Vec<u8>, node: NodeIndex) {
    out.extend_from_slice(&node.0.to_le_bytes());
}

/// A replica index of `quorum`: any other is a corrupt state.
pub(crate) fn get_node(reader: &mut Reader<'_>, quorum: Quorum) -> Result<NodeIndex, DecodeError> {
    let node = NodeIndex(reader.u32()?);
    if !quorum.contains(node) {
        return Err(DecodeError::Invalid { what: "replica index", value: u64::from(node.0) });
    }
    Ok(node)
}

pub(crate) fn put_nodes<'a>(out: &mut Vec<u8>, nodes: impl ExactSizeIterator<Item = &'a NodeIndex>) {
    put_seq(out, nodes, |out, node| put_node(out, *node));
}

pub(crate) fn get_nodes(reader: &mut Reader<'_>, quorum: Quorum) -> Result<BTreeSet<NodeIndex>, DecodeError> {
    Ok(get_seq(reader, quorum.n() as usize, |r| get_node(r, quorum))?.into_iter().collect())
}
