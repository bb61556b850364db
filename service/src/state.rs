//! The digest of the services' state: a lattice (LtHash-style) multiset hash over every entry
//! `(table, key, value)` of the tables it covers, kept up to date write by write.
//!
//! - An entry's **lanes** are 1,024 unsigned 16-bit integers: the first 2,048 bytes of BLAKE3's
//!   extendable output in key-derivation mode (context `fides/v1/state-entry`) over
//!   `len(table) ‖ table ‖ len(key) ‖ key ‖ len(value) ‖ value` (lengths u32 little-endian), read
//!   as little-endian `u16`s.
//! - The state's digest is the lane-wise sum, modulo 2¹⁶, of the lanes of all its entries (the
//!   empty state: all zero). Writing a key removes its old entry's lanes (lane-wise subtraction)
//!   and adds the new one's; deleting it removes the old one's. So the digest of a state does not
//!   depend on the order of the writes that made it, and the host keeps it in the same
//!   transaction as the writes, at the cost of one BLAKE3 XOF of 2 KiB per entry written or
//!   removed.
//! - The **commitment** the epoch certificate signs is
//!   `SHA-256(tagged("fides/v1/state-digest", [lanes as 2,048 bytes little-endian]))`.
//! - Beside the lanes the digest counts the state's **size** ([`StateSize`]): its entries and the
//!   bytes of their keys and values. The state leaf carries it next to the commitment, so that a
//!   replica fetching a snapshot knows from the certificate how much honest state there is, and
//!   stops a peer that sends more at the first entry past it.
//!
//! Why not a plain sum of 256-bit hashes modulo 2²⁵⁶: with the generalized birthday attack
//! (Wagner, 2002) a Byzantine peer could find a set of entries whose hashes sum to a given digest
//! in far fewer than 2¹²⁸ steps, and so offer a forged snapshot. Finding such a set for a sum of
//! lattice vectors is the short-integer-solution problem; 1,024 lanes of 16 bits is the parameter
//! set of LtHash16 (Bellare–Micciancio's lattice hash as deployed by Facebook, ~200 bits of
//! security by their analysis).

use fides_crypto::{domain, sha256_tagged};

/// Lanes of the state digest.
pub const LANES: usize = 1024;
/// Bytes of the state digest's lanes.
pub const LANES_BYTES: usize = 2 * LANES;
/// Bytes of a stored state digest: the lanes, then the size's entries and bytes (u64 LE each).
pub const DIGEST_BYTES: usize = LANES_BYTES + 16;

/// How much state there is: its entries, and the bytes of their keys and values (table names
/// not counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct StateSize {
    /// Entries.
    pub entries: u64,
    /// Bytes of keys and values.
    pub bytes: u64,
}

impl StateSize {
    /// What one entry adds.
    pub fn of_entry(key: &[u8], value: &[u8]) -> StateSize {
        StateSize { entries: 1, bytes: (key.len() + value.len()) as u64 }
    }

    /// Whether `self` fits within `bound` (each count at most the bound's).
    pub fn within(&self, bound: &StateSize) -> bool {
        self.entries <= bound.entries && self.bytes <= bound.bytes
    }

    fn add(&mut self, other: StateSize) {
        self.entries = self.entries.wrapping_add(other.entries);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }

    fn sub(&mut self, other: StateSize) {
        self.entries = self.entries.wrapping_sub(other.entries);
        self.bytes = self.bytes.wrapping_sub(other.bytes);
    }
}

/// The lattice hash of a multiset of entries, with its size.
#[derive(Clone, PartialEq, Eq)]
pub struct StateDigest {
    lanes: Box<[u16; LANES]>,
    size: StateSize,
}

impl std::fmt::Debug for StateDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateDigest({}, {:?})", hex_prefix(&self.commitment()), self.size)
    }
}

fn hex_prefix(bytes: &[u8; 32]) -> String {
    bytes[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl Default for StateDigest {
    fn default() -> Self {
        StateDigest { lanes: Box::new([0; LANES]), size: StateSize::default() }
    }
}

/// The lanes of one entry.
fn entry_lanes(table: &str, key: &[u8], value: &[u8]) -> Box<[u16; LANES]> {
    let context = std::str::from_utf8(domain::STATE_ENTRY).expect("domain tags are ASCII");
    let mut hasher = blake3::Hasher::new_derive_key(context);
    for part in [table.as_bytes(), key, value] {
        let len = u32::try_from(part.len()).expect("table entries are far below 4 GiB");
        hasher.update(&len.to_le_bytes());
        hasher.update(part);
    }
    let mut bytes = [0u8; LANES_BYTES];
    hasher.finalize_xof().fill(&mut bytes);
    let mut lanes = Box::new([0u16; LANES]);
    for (lane, pair) in lanes.iter_mut().zip(bytes.chunks_exact(2)) {
        *lane = u16::from_le_bytes([pair[0], pair[1]]);
    }
    lanes
}

impl StateDigest {
    /// The digest of the empty state.
    pub fn new() -> StateDigest {
        StateDigest::default()
    }

    /// Add the entry `(table, key, value)`.
    pub fn add(&mut self, table: &str, key: &[u8], value: &[u8]) {
        let entry = entry_lanes(table, key, value);
        for (lane, e) in self.lanes.iter_mut().zip(entry.iter()) {
            *lane = lane.wrapping_add(*e);
        }
        self.size.add(StateSize::of_entry(key, value));
    }

    /// Remove the entry `(table, key, value)` (which must have been added).
    pub fn remove(&mut self, table: &str, key: &[u8], value: &[u8]) {
        let entry = entry_lanes(table, key, value);
        for (lane, e) in self.lanes.iter_mut().zip(entry.iter()) {
            *lane = lane.wrapping_sub(*e);
        }
        self.size.sub(StateSize::of_entry(key, value));
    }

    /// The size of the state.
    pub fn size(&self) -> StateSize {
        self.size
    }

    /// The lanes as bytes, little-endian.
    fn lanes_bytes(&self) -> Vec<u8> {
        self.lanes.iter().flat_map(|lane| lane.to_le_bytes()).collect()
    }

    /// The lanes, then the size (what the store keeps: [`DIGEST_BYTES`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.lanes_bytes();
        out.extend_from_slice(&self.size.entries.to_le_bytes());
        out.extend_from_slice(&self.size.bytes.to_le_bytes());
        out
    }

    /// The digest from [`StateDigest::to_bytes`]; `None` unless exactly [`DIGEST_BYTES`] long.
    pub fn from_bytes(bytes: &[u8]) -> Option<StateDigest> {
        if bytes.len() != DIGEST_BYTES {
            return None;
        }
        let (lanes_bytes, size) = bytes.split_at(LANES_BYTES);
        let mut lanes = Box::new([0u16; LANES]);
        for (lane, pair) in lanes.iter_mut().zip(lanes_bytes.chunks_exact(2)) {
            *lane = u16::from_le_bytes([pair[0], pair[1]]);
        }
        let entries = u64::from_le_bytes(size[..8].try_into().ok()?);
        let bytes = u64::from_le_bytes(size[8..].try_into().ok()?);
        Some(StateDigest { lanes, size: StateSize { entries, bytes } })
    }

    /// What the epoch certificate signs of the lanes (the state leaf's digest).
    pub fn commitment(&self) -> [u8; 32] {
        sha256_tagged(domain::STATE_DIGEST, &[&self.lanes_bytes()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;

    fn from_scratch(state: &BTreeMap<(String, Vec<u8>), Vec<u8>>) -> StateDigest {
        let mut digest = StateDigest::new();
        for ((table, key), value) in state {
            digest.add(table, key, value);
        }
        digest
    }

    #[test]
    fn the_incremental_digest_equals_the_digest_recomputed_from_scratch() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(12);
        let mut state: BTreeMap<(String, Vec<u8>), Vec<u8>> = BTreeMap::new();
        let mut digest = StateDigest::new();
        for step in 0..2_000 {
            let table = ["a_events", "a_tickets", "replica_outcomes"][rng.gen_range(0..3)].to_owned();
            let key = vec![rng.gen_range(0..40u8)];
            let slot = (table.clone(), key.clone());
            if rng.gen_bool(0.3) {
                if let Some(old) = state.remove(&slot) {
                    digest.remove(&table, &key, &old);
                }
            } else {
                let value: Vec<u8> = (0..rng.gen_range(0..8)).map(|_| rng.gen()).collect();
                if let Some(old) = state.insert(slot, value.clone()) {
                    digest.remove(&table, &key, &old);
                }
                digest.add(&table, &key, &value);
            }
            if step % 97 == 0 {
                assert_eq!(digest, from_scratch(&state), "after step {step}");
                let bytes = state.iter().map(|((_, k), v)| (k.len() + v.len()) as u64).sum();
                assert_eq!(digest.size(), StateSize { entries: state.len() as u64, bytes }, "after step {step}");
            }
        }
        assert_eq!(digest.commitment(), from_scratch(&state).commitment());
        state.clear();
        assert_eq!(from_scratch(&state), StateDigest::new(), "the empty state's digest is zero");
    }

    #[test]
    fn an_entry_is_bound_to_its_table_key_and_value() {
        let base = {
            let mut d = StateDigest::new();
            d.add("t", b"ab", b"c");
            d
        };
        for (table, key, value) in
            [("t", &b"a"[..], &b"bc"[..]), ("u", b"ab", b"c"), ("t", b"ab", b"d"), ("t_", b"ab", b"c")]
        {
            let mut other = StateDigest::new();
            other.add(table, key, value);
            assert_ne!(other.commitment(), base.commitment(), "{table} {key:?} {value:?}");
        }
        let mut twice = base.clone();
        twice.add("t", b"ab", b"c");
        assert_ne!(twice, base, "an entry counted twice is another multiset");
    }

    #[test]
    fn the_lanes_round_trip_and_refuse_other_lengths() {
        let mut d = StateDigest::new();
        d.add("t", b"k", b"v");
        assert_eq!(StateDigest::from_bytes(&d.to_bytes()), Some(d.clone()));
        assert!(StateDigest::from_bytes(&d.to_bytes()[1..]).is_none());
        assert!(StateDigest::from_bytes(&[0; LANES_BYTES + 2]).is_none());
        assert!(StateDigest::from_bytes(&d.to_bytes()[..LANES_BYTES]).is_none(), "lanes without a size");
        assert_eq!(d.size(), StateSize { entries: 1, bytes: 2 });
    }
}
