//! What the host keeps per epoch and per ordered request: the epoch's row (agreed time, leaves,
//! and the cluster's signature once combined) and the key of each request's outcome.

use fides_types::codec::{DecodeError, Reader, Wire};

/// An epoch's row: its agreed time, leaves and (once combined) signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochRow {
    /// Agreed time.
    pub time_ms: u64,
    /// Leaves.
    pub leaves: Vec<[u8; 32]>,
    /// The cluster's signature on the root.
    pub signature: Option<[u8; 96]>,
}

impl Wire for EpochRow {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.time_ms.to_le_bytes());
        out.extend_from_slice(&(self.leaves.len() as u32).to_le_bytes());
        for leaf in &self.leaves {
            out.extend_from_slice(leaf);
        }
        match &self.signature {
            Some(signature) => {
                out.push(1);
                out.extend_from_slice(signature);
            }
            None => out.push(0),
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let time_ms = reader.u64()?;
        let count = reader.u32()? as usize;
        let leaves = (0..count).map(|_| reader.array()).collect::<Result<_, _>>()?;
        let signature = if reader.bool()? { Some(reader.array()?) } else { None };
        Ok(EpochRow { time_ms, leaves, signature })
    }
}

/// The key of the outcome of the request at (epoch, index): both big-endian, so keys sort in
/// order.
pub fn outcome_key(epoch: u64, index: u32) -> Vec<u8> {
    [&epoch.to_be_bytes()[..], &index.to_be_bytes()].concat()
}
