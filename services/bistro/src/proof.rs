//! One threshold signature per epoch: the records an epoch produced are the leaves of a Merkle
//! tree, the cluster signs the root, and each record carries its inclusion path.
//!
//! Two formats, named by [`EpochProof::format`] (a ticket file's `format_version`):
//! - **2** ([`FORMAT_CERTIFICATE`]), what replicas sign since the service host: the record is the
//!   service leaf `(BST1, record bytes)` of the epoch's certificate, beside the ordering leaves and
//!   other services' records; tree, tags and signed message as docs/certificate.md gives them
//!   ([`fides_service::certificate`]).
//! - **1** ([`FORMAT_BISTRO_TREE`]), the bistro's own tree before the host, kept so that tickets
//!   issued then keep verifying:
//! - leaf `i` = [`Signed::leaf`] of the epoch's `i`-th signed record;
//! - an inner node = `SHA-256(tagged(NODE, [left, right]))`; on a level of odd length the last node
//!   moves up unchanged;
//! - the signed message is [`root_message`]: `tagged(ROOT, [cluster id, epoch, agreed time,
//!   leaf count, root])`, integers as 8 little-endian bytes; the signature is a BLS signature
//!   (`BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_NUL_`) by the cluster's signing key.

use blsttc::{PublicKey, Signature};
use fides_crypto::{sha256_tagged, tagged};
use fides_types::codec::{DecodeError, Reader, Wire};

use fides_service::certificate::{Certificate, EpochRoot, Inclusion};

use crate::records::{domain, Signed};

/// Most leaves an epoch may have (its path is then at most 32 long).
pub const LEAVES_MAX: u64 = 1 << 32;

fn node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    sha256_tagged(domain::NODE, &[left, right])
}

/// The root of `leaves` (all zero for none).
pub fn root(leaves: &[[u8; 32]]) -> [u8; 32] {
    if leaves.is_empty() {
        return [0; 32];
    }
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = level.chunks(2).map(|pair| if let [l, r] = pair { node(l, r) } else { pair[0] }).collect();
    }
    level[0]
}

/// A Merkle tree with every level kept, for answering many paths of one epoch.
#[derive(Clone, Debug)]
pub struct Tree {
    levels: Vec<Vec<[u8; 32]>>,
}

impl Tree {
    /// The tree over `leaves`.
    pub fn new(leaves: Vec<[u8; 32]>) -> Tree {
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let next = levels
                .last()
                .map(|level| level.chunks(2).map(|pair| if let [l, r] = pair { node(l, r) } else { pair[0] }).collect())
                .unwrap_or_default();
            levels.push(next);
        }
        Tree { levels }
    }

    /// The number of leaves.
    pub fn len(&self) -> usize {
        self.levels.first().map_or(0, Vec::len)
    }

    /// Whether it has no leaves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The root (all zero for no leaves).
    pub fn root(&self) -> [u8; 32] {
        self.levels.last().and_then(|l| l.first()).copied().unwrap_or([0; 32])
    }

    /// The path of leaf `index`, as [`path`] gives it.
    pub fn path(&self, index: usize) -> Vec<[u8; 32]> {
        let mut out = Vec::new();
        let mut at = index;
        for level in &self.levels[..self.levels.len().saturating_sub(1)] {
            if let Some(sibling) = level.get(at ^ 1) {
                out.push(*sibling);
            }
            at /= 2;
        }
        out
    }
}

/// The path of leaf `index`: its siblings, bottom up (a level where it has none adds nothing).
pub fn path(leaves: &[[u8; 32]], index: usize) -> Vec<[u8; 32]> {
    let mut out = Vec::new();
    let mut level = leaves.to_vec();
    let mut at = index;
    while level.len() > 1 {
        let sibling = at ^ 1;
        if sibling < level.len() {
            out.push(level[sibling]);
        }
        level = level.chunks(2).map(|pair| if let [l, r] = pair { node(l, r) } else { pair[0] }).collect();
        at /= 2;
    }
    out
}

/// The root that `leaf` at `index` of `count` leaves and its `path` lead to, if the path has the
/// right length.
pub fn root_from_path(leaf: [u8; 32], index: u64, count: u64, path: &[[u8; 32]]) -> Option<[u8; 32]> {
    if index >= count || count > LEAVES_MAX {
        return None;
    }
    let mut hash = leaf;
    let (mut at, mut len) = (index, count);
    let mut siblings = path.iter();
    while len > 1 {
        let sibling = at ^ 1;
        if sibling < len {
            let other = siblings.next()?;
            hash = if at % 2 == 0 { node(&hash, other) } else { node(other, &hash) };
        }
        at /= 2;
        len = len.div_ceil(2);
    }
    siblings.next().is_none().then_some(hash)
}

/// The message the cluster signs for an epoch.
pub fn root_message(cluster: &[u8; 32], epoch: u64, time_ms: u64, count: u64, root: &[u8; 32]) -> Vec<u8> {
    tagged(domain::ROOT, &[cluster, &epoch.to_le_bytes(), &time_ms.to_le_bytes(), &count.to_le_bytes(), root])
}

/// The point of G2 that replicas sign shares of for an epoch.
pub fn root_point(cluster: &[u8; 32], epoch: u64, time_ms: u64, count: u64, root: &[u8; 32]) -> blsttc::G2Affine {
    blsttc::hash_g2(root_message(cluster, epoch, time_ms, count, root))
}

/// Format 1: the bistro's own tree per epoch (tickets issued before the service host).
pub const FORMAT_BISTRO_TREE: u8 = 1;
/// Format 2: the record is a service leaf of the epoch's certificate.
pub const FORMAT_CERTIFICATE: u8 = 2;

/// Where a signed record sits: its epoch's signed root and its path to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochProof {
    /// The rules it follows: [`FORMAT_CERTIFICATE`] or [`FORMAT_BISTRO_TREE`].
    pub format: u8,
    /// The epoch.
    pub epoch: u64,
    /// Its agreed time.
    pub time_ms: u64,
    /// The record's leaf index.
    pub index: u64,
    /// The epoch's leaf count.
    pub count: u64,
    /// The siblings, bottom up.
    pub path: Vec<[u8; 32]>,
    /// The cluster's signature on [`root_message`] (96 bytes, compressed G2).
    pub signature: [u8; 96],
}

impl Wire for EpochProof {
    /// `format u8 ‖ epoch u64 ‖ agreed time u64 ‖ leaf index u64 ‖ leaf count u64 ‖
    /// siblings u8 ‖ sibling [32] × siblings ‖ signature [96]`.
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.format);
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.time_ms.to_le_bytes());
        out.extend_from_slice(&self.index.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.push(self.path.len() as u8);
        for sibling in &self.path {
            out.extend_from_slice(sibling);
        }
        out.extend_from_slice(&self.signature);
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let format = reader.u8()?;
        if format != FORMAT_BISTRO_TREE && format != FORMAT_CERTIFICATE {
            return Err(DecodeError::Invalid { what: "proof format", value: u64::from(format) });
        }
        let epoch = reader.u64()?;
        let time_ms = reader.u64()?;
        let index = reader.u64()?;
        let count = reader.u64()?;
        let len = reader.u8()?;
        if len > 32 {
            return Err(DecodeError::TooLong { len: u64::from(len), max: 32 });
        }
        let path = (0..len).map(|_| reader.array()).collect::<Result<_, _>>()?;
        Ok(EpochProof { format, epoch, time_ms, index, count, path, signature: reader.array()? })
    }
}

/// Why a signed record does not verify.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The path does not lead to a root (wrong length or index).
    #[error("the inclusion path does not fit leaf {index} of {count}")]
    Path {
        /// The leaf index.
        index: u64,
        /// The leaf count.
        count: u64,
    },
    /// The signature bytes are no point of G2.
    #[error("the signature is malformed")]
    Malformed,
    /// The signature does not verify on the root: the record, the path or the signature changed.
    #[error("the cluster's signature does not verify on this record")]
    Signature,
    /// The record's time is not its epoch's agreed time.
    #[error("the record's time differs from its epoch's agreed time")]
    Time,
    /// A format this version does not know.
    #[error("unknown proof format {0}")]
    Format(u8),
}

impl EpochProof {
    /// The root message this proof claims is signed for `record`, under the proof's format.
    pub fn message(&self, cluster: &[u8; 32], record: &Signed) -> Result<Vec<u8>, ProofError> {
        let wrong_path = ProofError::Path { index: self.index, count: self.count };
        match self.format {
            FORMAT_BISTRO_TREE => {
                let root =
                    root_from_path(record.leaf(cluster), self.index, self.count, &self.path).ok_or(wrong_path)?;
                Ok(root_message(cluster, self.epoch, self.time_ms, self.count, &root))
            }
            FORMAT_CERTIFICATE => {
                let leaf = crate::service::record_leaf(&record.to_bytes());
                let inclusion = Inclusion { index: self.index, path: self.path.clone() };
                let root = inclusion.root(leaf, self.count).ok_or(wrong_path)?;
                Ok(EpochRoot { epoch: self.epoch, time_ms: self.time_ms, count: self.count, root }.message(cluster))
            }
            other => Err(ProofError::Format(other)),
        }
    }

    /// The proof of the record at `inclusion` under `certificate` (format 2).
    pub fn certified(inclusion: Inclusion, certificate: &Certificate) -> EpochProof {
        EpochProof {
            format: FORMAT_CERTIFICATE,
            epoch: certificate.root.epoch,
            time_ms: certificate.root.time_ms,
            index: inclusion.index,
            count: certificate.root.count,
            path: inclusion.path,
            signature: certificate.signature,
        }
    }

    /// Verify `record` against the cluster's signing public key.
    pub fn verify(&self, cluster: &[u8; 32], public: &PublicKey, record: &Signed) -> Result<(), ProofError> {
        if let Signed::Ticket(ticket) = record {
            if ticket.time_ms != self.time_ms {
                return Err(ProofError::Time);
            }
        }
        let message = self.message(cluster, record)?;
        let signature = Signature::from_bytes(self.signature).map_err(|_| ProofError::Malformed)?;
        if public.verify(&signature, &message) {
            Ok(())
        } else {
            Err(ProofError::Signature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{EventId, Ticket};
    use crate::stream::HashAlg;
    use rand::SeedableRng;

    /// A ticket signed the way the cluster signs verifies with blst's own BLS API (not blsttc),
    /// given only the bytes docs/bistro.md describes: the ciphersuite claim holds.
    #[test]
    fn a_ticket_verifies_with_an_independent_bls_implementation() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
        let secret = blsttc::SecretKeySet::random(1, &mut rng);
        let cluster = [3u8; 32];
        let tickets: Vec<Signed> = (1..=5u64)
            .map(|n| {
                Signed::Ticket(Ticket {
                    event: EventId([1; 16]),
                    ticket: n,
                    hash: HashAlg::Sha256,
                    digest: [n as u8; 32],
                    size: n * 10,
                    contact: "a@b".into(),
                    file_name: String::new(),
                    time_ms: 1_700_000_000_000,
                })
            })
            .collect();
        let leaves: Vec<[u8; 32]> = tickets.iter().map(|t| t.leaf(&cluster)).collect();
        let tree = Tree::new(leaves);
        let (epoch, time) = (9, 1_700_000_000_000);
        let message = root_message(&cluster, epoch, time, 5, &tree.root());
        let signature = secret.secret_key().sign(&message).to_bytes();
        let public = secret.public_keys().public_key().to_bytes();
        // What a third party does: recompute the root from the record and its path, then verify.
        let proof = EpochProof {
            format: FORMAT_BISTRO_TREE,
            epoch,
            time_ms: time,
            index: 3,
            count: 5,
            path: tree.path(3),
            signature,
        };
        let rebuilt = proof.message(&cluster, &tickets[3]).expect("the path fits");
        let pk = blst::min_pk::PublicKey::from_bytes(&public).expect("a G1 point");
        let sig = blst::min_pk::Signature::from_bytes(&signature).expect("a G2 point");
        let dst = b"BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_NUL_";
        assert_eq!(sig.verify(true, &rebuilt, dst, &[], &pk, true), blst::BLST_ERROR::BLST_SUCCESS);
        let other = proof.message(&cluster, &tickets[2]).expect("the path fits");
        assert_ne!(sig.verify(true, &other, dst, &[], &pk, true), blst::BLST_ERROR::BLST_SUCCESS);
    }

    fn leaves(n: usize) -> Vec<[u8; 32]> {
        (0..n).map(|i| fides_crypto::sha256(&(i as u64).to_le_bytes())).collect()
    }

    #[test]
    fn every_leaf_path_leads_to_the_root_and_no_other_does() {
        for n in 1..=17 {
            let leaves = leaves(n);
            let top = root(&leaves);
            for (i, leaf) in leaves.iter().enumerate() {
                let p = path(&leaves, i);
                assert_eq!(root_from_path(*leaf, i as u64, n as u64, &p), Some(top), "n {n} leaf {i}");
                // Another index, count or leaf gives another root or none.
                assert_ne!(root_from_path([0xaa; 32], i as u64, n as u64, &p), Some(top));
                if n > 1 {
                    assert_ne!(root_from_path(*leaf, ((i + 1) % n) as u64, n as u64, &p), Some(top));
                }
                // Another count may lead to the same root (a promoted node looks like its parent),
                // which is why the count is part of the signed message.
            }
        }
        assert_eq!(root_from_path([0; 32], 3, 3, &[]), None);
        for n in 1..=17 {
            let tree = Tree::new(leaves(n));
            assert_eq!(tree.root(), root(&leaves(n)));
            for i in 0..n {
                assert_eq!(tree.path(i), path(&leaves(n), i));
            }
        }
    }
}
