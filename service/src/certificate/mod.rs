//! The epoch certificate: every record an epoch signs is a leaf of one Merkle tree whose root the
//! replicas threshold-sign once.
//!
//! What an epoch signs, of every service and of the ordering service itself, is one list of
//! [`Leaf`]s in the host's order (the same at every replica: it follows the batch). The rules, all
//! of them restated byte for byte in `docs/certificate.md`:
//!
//! - a leaf's bytes are [`Leaf::to_bytes`]: `kind u8 ‖ fields`, integers little-endian of fixed
//!   width; an ordering leaf (kind 1) is `client u64 ‖ id u64 ‖ payload digest [32] ‖ index u32`,
//!   a service leaf (kind 2) is `service id [4] ‖ record length u32 ‖ record`, the state leaf
//!   (kind 3, the last leaf of every epoch's tree) is `epoch u64 ‖ state digest [32]`;
//! - a leaf's hash is `SHA-256(tagged("fides/v1/cert-leaf", [leaf bytes]))`, an inner node's
//!   `SHA-256(tagged("fides/v1/cert-node", [left, right]))`: a node can never pass for a leaf nor
//!   a leaf for a node (second preimages), since the two are hashed under different tags;
//! - on a level of odd length the last node moves up unchanged; the root of no leaves is 32 zero
//!   bytes (such an epoch is never signed);
//! - the signed message is [`EpochRoot::message`]: `tagged("fides/v1/cert-root", [cluster id,
//!   epoch u64, agreed time u64, leaf count u64, root])`. The count is signed because a promoted
//!   node makes trees of different sizes share a root; with it, a path fits exactly one index of
//!   exactly one tree;
//! - the signature is BLS (`BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_NUL_`, public key in G1,
//!   signature in G2, 96 bytes compressed) by the cluster's threshold signing key.
//!
//! A leaf names no epoch: the signed message does. The ordering answer "(client, id, digest) was
//! ordered at (epoch, index)" is an ordering leaf under a certificate of that epoch.
//!
//! [`EpochSigner`] is the protocol by which the replicas make one [`Certificate`] per epoch.

mod signer;

pub use signer::{EpochSigner, Error, Input, Message, Output, SignerConfig};

use blsttc::{PublicKey, Signature, SIG_SIZE};
use fides_crypto::{domain, sha256_tagged, tagged};
use fides_types::codec::{DecodeError, Reader, Wire};

use crate::interface::{Outcome, ServiceId};
use crate::registry::{BatchOutcomes, Ordered};
use crate::state::StateSize;

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// Most leaves one epoch's tree may have: a path is then at most [`PATH_LEN_MAX`] long.
pub const LEAVES_MAX: u64 = 1 << 32;
/// Longest inclusion path: `log2(LEAVES_MAX)`.
pub const PATH_LEN_MAX: usize = 32;
/// Longest record a service leaf may hold when decoded from bytes.
pub const RECORD_LEN_MAX: usize = 1 << 20;

/// The kind byte of an ordering leaf.
pub const KIND_ORDERING: u8 = 1;
/// The kind byte of a service leaf.
pub const KIND_SERVICE: u8 = 2;
/// The kind byte of the state leaf.
pub const KIND_STATE: u8 = 3;

/// One thing an epoch signs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leaf {
    /// The ordering service's answer: the request `(client, id, payload digest)` was ordered at
    /// `index` of this epoch's batch.
    Ordering {
        /// The client.
        client: u64,
        /// The client's id for the request.
        id: u64,
        /// `SHA-256(payload)`, plain (as atomic broadcast keys requests).
        digest: Digest,
        /// Its place in the epoch's batch.
        index: u32,
    },
    /// A record a service signs.
    Service {
        /// The service's id (the first four bytes of its payloads, e.g. `BST1`).
        service: ServiceId,
        /// The service's canonical record bytes, at most [`RECORD_LEN_MAX`].
        record: Vec<u8>,
    },
    /// The services' state after the epoch: the commitment of its [`crate::StateDigest`]. The last
    /// leaf of every epoch's tree.
    State {
        /// The epoch (the certificate's: repeated so that the leaf names what it covers).
        epoch: u64,
        /// [`crate::StateDigest::commitment`] of the state after the epoch.
        digest: Digest,
        /// The state's size after the epoch ([`crate::StateDigest::size`]).
        size: StateSize,
    },
}

impl Wire for Leaf {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Leaf::Ordering { client, id, digest, index } => {
                out.push(KIND_ORDERING);
                out.extend_from_slice(&client.to_le_bytes());
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(digest);
                out.extend_from_slice(&index.to_le_bytes());
            }
            Leaf::Service { service, record } => {
                out.push(KIND_SERVICE);
                out.extend_from_slice(&service.0);
                fides_types::codec::put_bytes(out, record);
            }
            Leaf::State { epoch, digest, size } => {
                out.push(KIND_STATE);
                out.extend_from_slice(&epoch.to_le_bytes());
                out.extend_from_slice(digest);
                out.extend_from_slice(&size.entries.to_le_bytes());
                out.extend_from_slice(&size.bytes.to_le_bytes());
            }
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match reader.u8()? {
            KIND_ORDERING => Ok(Leaf::Ordering {
                client: reader.u64()?,
                id: reader.u64()?,
                digest: reader.array()?,
                index: reader.u32()?,
            }),
            KIND_SERVICE => {
                let service = ServiceId(reader.array()?);
                let record = reader.bytes(RECORD_LEN_MAX)?.to_vec();
                Ok(Leaf::Service { service, record })
            }
            KIND_STATE => Ok(Leaf::State {
                epoch: reader.u64()?,
                digest: reader.array()?,
                size: StateSize { entries: reader.u64()?, bytes: reader.u64()? },
            }),
            other => Err(DecodeError::Invalid { what: "leaf kind", value: u64::from(other) }),
        }
    }
}

impl Leaf {
    /// The state leaf of `epoch` for the state whose digest is `digest`.
    pub fn state(epoch: u64, digest: &crate::StateDigest) -> Leaf {
        Leaf::State { epoch, digest: digest.commitment(), size: digest.size() }
    }

    /// The leaf's hash in the tree.
    pub fn hash(&self) -> Digest {
        leaf_hash(&self.to_bytes())
    }
}

/// The hash of a leaf given as its bytes ([`Leaf::to_bytes`]).
pub fn leaf_hash(leaf: &[u8]) -> Digest {
    sha256_tagged(domain::CERT_LEAF, &[leaf])
}

fn node(left: &Digest, right: &Digest) -> Digest {
    sha256_tagged(domain::CERT_NODE, &[left, right])
}

fn parent_level(level: &[Digest]) -> Vec<Digest> {
    level.chunks(2).map(|pair| if let [left, right] = pair { node(left, right) } else { pair[0] }).collect()
}

/// A Merkle tree with every level kept, for answering the paths of one epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    /// Level 0 holds the leaf hashes; the last level holds the root alone (none when empty).
    levels: Vec<Vec<Digest>>,
}

impl Tree {
    /// The tree over leaf hashes, in the epoch's order.
    pub fn new(leaves: Vec<Digest>) -> Tree {
        let mut levels = vec![leaves];
        while let Some(level) = levels.last().filter(|level| level.len() > 1) {
            let next = parent_level(level);
            levels.push(next);
        }
        Tree { levels }
    }

    /// The number of leaves.
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |level| level.len() as u64)
    }

    /// Whether it has no leaves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The root (32 zero bytes for no leaves).
    pub fn root(&self) -> Digest {
        self.levels.last().and_then(|level| level.first()).copied().unwrap_or([0; 32])
    }

    /// The index of the first leaf whose hash is `leaf`, if any (a linear scan).
    pub fn position(&self, leaf: &Digest) -> Option<u64> {
        self.levels.first()?.iter().position(|l| l == leaf).map(|i| i as u64)
    }

    /// The inclusion path of leaf `index`, `None` past the last leaf.
    pub fn inclusion(&self, index: u64) -> Option<Inclusion> {
        if index >= self.len() {
            return None;
        }
        let mut path = Vec::new();
        let mut at = index;
        for level in &self.levels[..self.levels.len() - 1] {
            if let Some(sibling) = usize::try_from(at ^ 1).ok().and_then(|s| level.get(s)) {
                path.push(*sibling);
            }
            at /= 2;
        }
        Some(Inclusion { index, path })
    }

    /// The root this tree gives epoch `epoch` at agreed time `time_ms`.
    pub fn epoch_root(&self, epoch: u64, time_ms: u64) -> EpochRoot {
        EpochRoot { epoch, time_ms, count: self.len(), root: self.root() }
    }
}

/// Where a leaf sits in its epoch's tree: its index and its siblings, bottom up. A level where the
/// leaf's ancestor has no sibling (it was promoted) adds nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inclusion {
    /// The leaf's index.
    pub index: u64,
    /// The siblings, bottom up; at most [`PATH_LEN_MAX`].
    pub path: Vec<Digest>,
}

impl Wire for Inclusion {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.index.to_le_bytes());
        let len = u8::try_from(self.path.len()).expect("a path is at most PATH_LEN_MAX long");
        out.push(len);
        for sibling in &self.path {
            out.extend_from_slice(sibling);
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let index = reader.u64()?;
        let len = reader.u8()?;
        if usize::from(len) > PATH_LEN_MAX {
            return Err(DecodeError::TooLong { len: u64::from(len), max: PATH_LEN_MAX as u64 });
        }
        let path = (0..len).map(|_| reader.array()).collect::<Result<_, _>>()?;
        Ok(Inclusion { index, path })
    }
}

impl Inclusion {
    /// The root that the leaf hash `leaf` leads to through this path in a tree of `count`
    /// leaves; `None` if the index is not below the count, the count is above [`LEAVES_MAX`], or
    /// the path is not exactly as long as that place needs.
    pub fn root(&self, leaf: Digest, count: u64) -> Option<Digest> {
        if self.index >= count || count > LEAVES_MAX || self.path.len() > PATH_LEN_MAX {
            return None;
        }
        let mut hash = leaf;
        let (mut at, mut len) = (self.index, count);
        let mut siblings = self.path.iter();
        while len > 1 {
            if at ^ 1 < len {
                let sibling = siblings.next()?;
                hash = if at % 2 == 0 { node(&hash, sibling) } else { node(sibling, &hash) };
            }
            at /= 2;
            len = len.div_ceil(2);
        }
        siblings.next().is_none().then_some(hash)
    }
}

/// What the cluster signs for an epoch, besides its id: the epoch, its agreed time, and its tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EpochRoot {
    /// The epoch of atomic broadcast.
    pub epoch: u64,
    /// Its agreed time, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The number of leaves, at most [`LEAVES_MAX`].
    pub count: u64,
    /// The tree's root.
    pub root: Digest,
}

/// Bytes of an encoded [`EpochRoot`].
pub const EPOCH_ROOT_LEN: usize = 8 + 8 + 8 + 32;

impl Wire for EpochRoot {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.time_ms.to_le_bytes());
        out.extend_from_slice(&self.count.to_le_bytes());
        out.extend_from_slice(&self.root);
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let epoch = reader.u64()?;
        let time_ms = reader.u64()?;
        let count = reader.u64()?;
        if count > LEAVES_MAX {
            return Err(DecodeError::TooLong { len: count, max: LEAVES_MAX });
        }
        Ok(EpochRoot { epoch, time_ms, count, root: reader.array()? })
    }
}

impl EpochRoot {
    /// The message the cluster signs: `tagged("fides/v1/cert-root", [cluster id, epoch u64,
    /// agreed time u64, leaf count u64, root])`.
    pub fn message(&self, cluster: &Digest) -> Vec<u8> {
        tagged(
            domain::CERT_ROOT,
            &[cluster, &self.epoch.to_le_bytes(), &self.time_ms.to_le_bytes(), &self.count.to_le_bytes(), &self.root],
        )
    }

    /// The point of G2 that replicas sign shares of: the message hashed to the curve.
    pub fn point(&self, cluster: &Digest) -> blsttc::G2Affine {
        blsttc::hash_g2(self.message(cluster))
    }
}

/// One epoch's certificate: its root and the cluster's signature on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Certificate {
    /// What is signed.
    pub root: EpochRoot,
    /// The cluster's BLS signature on [`EpochRoot::message`], compressed G2.
    pub signature: [u8; SIG_SIZE],
}

/// Bytes of an encoded [`Certificate`].
pub const CERTIFICATE_LEN: usize = EPOCH_ROOT_LEN + SIG_SIZE;

impl Wire for Certificate {
    fn encode(&self, out: &mut Vec<u8>) {
        self.root.encode(out);
        out.extend_from_slice(&self.signature);
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Certificate { root: EpochRoot::decode(reader)?, signature: reader.array()? })
    }
}

impl Certificate {
    /// Whether the signature is the cluster's on this root.
    pub fn verifies(&self, cluster: &Digest, public: &PublicKey) -> bool {
        Signature::from_bytes(self.signature).is_ok_and(|s| public.verify_g2(&s, self.root.point(cluster)))
    }
}

/// Why an answer does not verify.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The path does not fit the leaf's index in a tree of the certificate's size.
    #[error("the inclusion path does not fit leaf {index} of {count}")]
    Path {
        /// The claimed leaf index.
        index: u64,
        /// The certificate's leaf count.
        count: u64,
    },
    /// The path leads to another root than the certified one: the leaf or the path changed.
    #[error("the leaf and its path lead to another root than the certified one")]
    Root,
    /// The signature bytes are no point of G2.
    #[error("the certificate's signature is malformed")]
    Malformed,
    /// The signature does not verify on the certified root under the cluster's key.
    #[error("the cluster's signature does not verify on the certified root")]
    Signature,
    /// A state leaf offered at another place than the last leaf, or under another epoch's
    /// certificate.
    #[error("a state leaf of epoch {epoch} must be the last leaf of that epoch's certificate")]
    NotTheStateLeaf {
        /// The state leaf's epoch.
        epoch: u64,
    },
}

/// Verify that `digest` and `size` are the services' state's after `epoch`: the state leaf of that
/// epoch is the last leaf of the tree `certificate` signs, at `inclusion`.
pub fn verify_state(
    cluster: &Digest,
    public: &PublicKey,
    epoch: u64,
    digest: &Digest,
    size: StateSize,
    inclusion: &Inclusion,
    certificate: &Certificate,
) -> Result<(), VerifyError> {
    if certificate.root.epoch != epoch || inclusion.index.checked_add(1) != Some(certificate.root.count) {
        return Err(VerifyError::NotTheStateLeaf { epoch });
    }
    let leaf = Leaf::State { epoch, digest: *digest, size }.to_bytes();
    verify(cluster, public, &leaf, inclusion, certificate)
}

/// The half of [`verify`] that needs no pairing: the leaf whose hash is `leaf` is at `inclusion`
/// in the tree whose root `certificate` names (for a verifier that checks the signature once per
/// certificate, apart).
pub fn verify_path(leaf: Digest, inclusion: &Inclusion, certificate: &Certificate) -> Result<(), VerifyError> {
    let count = certificate.root.count;
    let root = inclusion.root(leaf, count).ok_or(VerifyError::Path { index: inclusion.index, count })?;
    if root == certificate.root.root {
        Ok(())
    } else {
        Err(VerifyError::Root)
    }
}

/// Verify one answer from its bytes alone: `leaf` ([`Leaf::to_bytes`]) is at `inclusion` in the
/// tree that `certificate` signs, under the cluster `cluster` with signing key `public`. The
/// epoch, agreed time and leaf count are the certificate's.
pub fn verify(
    cluster: &Digest,
    public: &PublicKey,
    leaf: &[u8],
    inclusion: &Inclusion,
    certificate: &Certificate,
) -> Result<(), VerifyError> {
    verify_path(leaf_hash(leaf), inclusion, certificate)?;
    let signature = Signature::from_bytes(certificate.signature).map_err(|_| VerifyError::Malformed)?;
    if public.verify_g2(&signature, certificate.root.point(cluster)) {
        Ok(())
    } else {
        Err(VerifyError::Signature)
    }
}

/// The leaves of one epoch's tree and where each request's signed records sit in it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochLeaves {
    /// The leaf hashes, in order.
    pub leaves: Vec<Digest>,
    /// Each request a service took, by its index in the batch: the service and its outcomes,
    /// each with the leaf index of its record (a `Sign`) or 0.
    pub answers: Vec<RequestAnswer>,
}

/// A request's answer in an epoch: its index in the batch, the service that took it, and its
/// outcomes, each with the leaf index of its record (a `Sign`) or 0.
pub type RequestAnswer = (u32, ServiceId, Vec<(Outcome, u64)>);

/// The leaves of an epoch's certificate (docs/certificate.md): one ordering leaf per request —
/// leaf `i` is request `i`, of whatever service or none — then the records the services sign,
/// in the order they were made (every service's epoch start, then the requests in order).
/// `requests` are the batch's requests as ordered, `outcomes` what the registry made of them.
pub fn epoch_leaves<'p>(requests: impl IntoIterator<Item = Ordered<'p>>, outcomes: &BatchOutcomes) -> EpochLeaves {
    let mut leaves: Vec<Digest> = requests
        .into_iter()
        .enumerate()
        .map(|(index, r)| {
            let digest = fides_crypto::sha256(r.payload);
            Leaf::Ordering { client: r.client, id: r.request, digest, index: index as u32 }.hash()
        })
        .collect();
    let mut record = |service, bytes: &Vec<u8>| {
        leaves.push(Leaf::Service { service, record: bytes.clone() }.hash());
        leaves.len() as u64 - 1
    };
    for (service, made) in &outcomes.epoch {
        for outcome in made {
            if let Outcome::Sign(bytes) = outcome {
                record(*service, bytes);
            }
        }
    }
    let mut answers = Vec::new();
    for (index, service, made) in &outcomes.requests {
        let Some(service) = service else { continue };
        let outcomes = made
            .iter()
            .map(|outcome| {
                let leaf = match outcome {
                    Outcome::Sign(bytes) => record(*service, bytes),
                    _ => 0,
                };
                (outcome.clone(), leaf)
            })
            .collect();
        answers.push((*index, *service, outcomes));
    }
    EpochLeaves { leaves, answers }
}

#[cfg(test)]
mod tests;
