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
        // Take the bytes first: a count from a peer (a snapshot's rows) allocates nothing it
        // did not send.
        let bytes = reader
            .take(count.checked_mul(32).ok_or(DecodeError::Invalid { what: "leaf count", value: count as u64 })?)?;
        let leaves = bytes.chunks_exact(32).map(|c| <[u8; 32]>::try_from(c).expect("chunks of 32")).collect();
        let signature = if reader.bool()? { Some(reader.array()?) } else { None };
        Ok(EpochRow { time_ms, leaves, signature })
    }
}

/// The key of the outcome of the request at (epoch, index): both big-endian, so keys sort in
/// order.
pub fn outcome_key(epoch: u64, index: u32) -> Vec<u8> {
    [&epoch.to_be_bytes()[..], &index.to_be_bytes()].concat()
}

/// Most outcomes one request's answer may hold when decoded.
const OUTCOMES_MAX: usize = 1024;

/// What the host stores for an ordered request that went to a service: the service, and each
/// outcome that answers it with, for a signed record, its leaf index in the epoch's certificate
/// (0 for the others); then what the decisions of the agreement instances it asked for made.
///
/// Encoding: `service [4] ‖ count u32 ‖ (outcome ‖ leaf u64) × count`, then — only when the
/// request asked for an instance — `awaiting u32 ‖ count u32 ‖ (outcome ‖ epoch u64 ‖ leaf u64)
/// × count`. A stored answer written before agreement instances existed is the first part alone
/// and reads as asking for none, so the store's format did not change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredAnswer {
    /// The service.
    pub service: fides_service::ServiceId,
    /// Its outcomes and their leaves.
    pub outcomes: Vec<(fides_service::Outcome, u64)>,
    /// Instances it asked for whose decision is not applied yet: the answer is not complete.
    pub awaiting: u32,
    /// What the decisions of its instances made, each with the epoch that certifies it (the one
    /// whose notices decided the instance: later than the request's) and its leaf there.
    pub decided: Vec<(fides_service::Outcome, u64, u64)>,
}

impl StoredAnswer {
    /// An answer of `apply`'s outcomes alone.
    pub fn new(service: fides_service::ServiceId) -> StoredAnswer {
        StoredAnswer { service, outcomes: Vec::new(), awaiting: 0, decided: Vec::new() }
    }
}

impl Wire for StoredAnswer {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.service.0);
        out.extend_from_slice(&(self.outcomes.len() as u32).to_le_bytes());
        for (outcome, leaf) in &self.outcomes {
            outcome.encode(out);
            out.extend_from_slice(&leaf.to_le_bytes());
        }
        if self.awaiting == 0 && self.decided.is_empty() {
            return;
        }
        out.extend_from_slice(&self.awaiting.to_le_bytes());
        out.extend_from_slice(&(self.decided.len() as u32).to_le_bytes());
        for (outcome, epoch, leaf) in &self.decided {
            outcome.encode(out);
            out.extend_from_slice(&epoch.to_le_bytes());
            out.extend_from_slice(&leaf.to_le_bytes());
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let service = fides_service::ServiceId(reader.array()?);
        let count = reader.u32()? as usize;
        if count > OUTCOMES_MAX {
            return Err(DecodeError::TooLong { len: count as u64, max: OUTCOMES_MAX as u64 });
        }
        let outcomes = (0..count)
            .map(|_| Ok((fides_service::Outcome::decode(reader)?, reader.u64()?)))
            .collect::<Result<_, DecodeError>>()?;
        let mut answer = StoredAnswer { service, outcomes, awaiting: 0, decided: Vec::new() };
        if reader.remaining() == 0 {
            return Ok(answer);
        }
        answer.awaiting = reader.u32()?;
        let count = reader.u32()? as usize;
        if count > OUTCOMES_MAX {
            return Err(DecodeError::TooLong { len: count as u64, max: OUTCOMES_MAX as u64 });
        }
        answer.decided = (0..count)
            .map(|_| Ok((fides_service::Outcome::decode(reader)?, reader.u64()?, reader.u64()?)))
            .collect::<Result<_, DecodeError>>()?;
        Ok(answer)
    }
}

/// A stored answer with the proofs of its signed records: for each outcome, the record's inclusion
/// path and the epoch's certificate (signed records only). The outcomes are `apply`'s, then those
/// of the decisions of the instances the request asked for (whose certificate is a later
/// epoch's); `Agree`s are the host's work and are not in it.
#[derive(Clone, Debug)]
pub struct HostAnswer {
    /// The service.
    pub service: fides_service::ServiceId,
    /// Each outcome, with the proof of a signed record.
    pub outcomes: Vec<(fides_service::Outcome, Option<Certified>)>,
    /// For each `ThresholdSign` outcome, by its position in `outcomes`: the combined signature
    /// (threshold RSA: an RSASSA-PKCS1-v1_5 SHA-256 signature of the outcome's message, which
    /// verifies alone against the cluster's RSA public key). Not in the stored answer: the host
    /// keeps signatures in a table of their own (`host::threshold`), by message id.
    pub signatures: Vec<(usize, Vec<u8>)>,
}

impl HostAnswer {
    /// The signature of the `ThresholdSign` outcome at position `at`, once combined.
    pub fn signature(&self, at: usize) -> Option<&[u8]> {
        self.signatures.iter().find(|(position, _)| *position == at).map(|(_, signature)| signature.as_slice())
    }
}

/// A leaf's inclusion path and its epoch's certificate: with the cluster's key, what verifies a
/// leaf alone.
pub type Certified = (fides_service::certificate::Inclusion, fides_service::certificate::Certificate);

#[cfg(test)]
mod tests {
    use super::*;
    use fides_service::{Code, Outcome, ServiceId};

    #[test]
    fn stored_answers_round_trip_and_refuse_bad_bytes() {
        let answer = StoredAnswer {
            service: ServiceId(*b"BST1"),
            outcomes: vec![(Outcome::Sign(vec![2; 40]), 7), (Outcome::refuse(Code::NotFound, "no such event"), 0)],
            awaiting: 0,
            decided: Vec::new(),
        };
        let bytes = answer.to_bytes();
        assert_eq!(StoredAnswer::from_bytes(&bytes), Ok(answer.clone()));
        for cut in 0..bytes.len() {
            assert!(StoredAnswer::from_bytes(&bytes[..cut]).is_err());
        }
        // With the decisions of its instances, after the part of before (which still reads alone).
        let asked = StoredAnswer { awaiting: 1, decided: vec![(Outcome::Sign(vec![5; 9]), 12, 3)], ..answer.clone() };
        let longer = asked.to_bytes();
        assert_eq!(&longer[..bytes.len()], &bytes[..], "the first part is the answer of before");
        assert_eq!(StoredAnswer::from_bytes(&longer), Ok(asked));
        for cut in bytes.len() + 1..longer.len() {
            assert!(StoredAnswer::from_bytes(&longer[..cut]).is_err(), "{cut} bytes decode");
        }
        let mut many = b"BST1".to_vec();
        many.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(StoredAnswer::from_bytes(&many).is_err());
    }
}
