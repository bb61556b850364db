//! Threshold key sets, signing domains and share combination, on blsttc (BLS12-381).
//!
//! Rules:
//! - every signed or hashed message kind has its own domain tag in [`domain`]; a message is
//!   `tag || parts`, each length-prefixed ([`tagged`]), so no two kinds can collide. Changing a tag
//!   breaks the wire.
//! - signatures are blsttc's: `BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_NUL_` (public keys in G1,
//!   signatures in G2, RFC 9380 hash to curve), so any standard BLS library verifies them.
//! - shares are combined optimistically ([`ThresholdKeys::combine`]): `t + 1` shares are
//!   interpolated and the result verified once; only when that fails is each share checked, and
//!   the bad ones are named so the caller can record them as faults.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use blsttc::{
    Ciphertext, DecryptionShare, G2Affine, PublicKeySet, PublicKeyShare, SecretKeyShare, Signature, SignatureShare,
};
use fides_types::NodeIndex;
use sha2::{Digest, Sha256};

pub use blsttc;
pub use x25519_dalek;

pub mod envelope;
pub mod labeled;
pub mod sealed;

/// Domain tags: one per kind of signed or hashed message.
pub mod domain {
    /// The common coin of binary agreement: a threshold signature on (instance, round).
    pub const COIN: &[u8] = b"fides/v1/aba-coin";
    /// A leaf of the Merkle tree over the erasure-coded shards of a reliable broadcast.
    pub const RBC_LEAF: &[u8] = b"fides/v1/rbc-leaf";
    /// An inner node of that tree.
    pub const RBC_NODE: &[u8] = b"fides/v1/rbc-node";
    /// The dealer's self-test of a threshold signature key set.
    pub const DEALER_CHECK: &[u8] = b"fides/v1/dealer-check";
    /// The cluster id: SHA-256 of a cluster's public key material, made by the dealer.
    pub const CLUSTER_ID: &[u8] = b"fides/v1/cluster-id";
    /// The associated data of an encrypted contribution to an epoch of atomic broadcast.
    pub const ABC_CONTRIBUTION: &[u8] = b"fides/v1/abc-contribution";
    /// The chained digest of the log of delivered batches.
    pub const ABC_LOG: &[u8] = b"fides/v1/abc-log";
    /// The digest of the at-most-once window (ids executed in the last epochs).
    pub const ABC_WINDOW: &[u8] = b"fides/v1/abc-window";
    /// A checkpoint of atomic broadcast: (session, epoch, time, application, log, window).
    pub const ABC_CHECKPOINT: &[u8] = b"fides/v1/abc-checkpoint";
    /// A leaf of an epoch certificate's Merkle tree (a record or an ordering answer).
    pub const CERT_LEAF: &[u8] = b"fides/v1/cert-leaf";
    /// An inner node of that tree.
    pub const CERT_NODE: &[u8] = b"fides/v1/cert-node";
    /// The message the cluster signs once per epoch: that tree's root and what it covers.
    pub const CERT_ROOT: &[u8] = b"fides/v1/cert-root";
    /// One entry `(table, key, value)` of the services' state, expanded to the lanes of the state
    /// digest (BLAKE3's key-derivation context, so the XOF output is bound to this use).
    pub const STATE_ENTRY: &[u8] = b"fides/v1/state-entry";
    /// The commitment to the services' state: SHA-256 of the state digest's lanes.
    pub const STATE_DIGEST: &[u8] = b"fides/v1/state-digest";
    /// The key stream of a labeled threshold capsule, derived from `S = pk·r`.
    pub const LABELED_KDF: &[u8] = b"fides/v1/labeled-kdf";
    /// The point `H(U, V, label)` of a labeled threshold capsule, hashed to G2.
    pub const LABELED_HASH: &[u8] = b"fides/v1/labeled-hash";
    /// The one-time key of bytes sealed to an X25519 public key.
    pub const SEALED_KEY: &[u8] = b"fides/v1/sealed-key";
    /// The associated data of bytes sealed to an X25519 public key.
    pub const SEALED_AAD: &[u8] = b"fides/v1/sealed-aad";
    /// The id of a message a service asks the replicas to threshold-sign under another scheme
    /// (threshold RSA): what its signature shares and the host's table of signatures are keyed by.
    pub const RSA_MESSAGE: &[u8] = b"fides/v1/rsa-message";
    /// A replica's decision notice, signed with its Ed25519 identity: "my core decided agreement
    /// instance (service, key) with this value" (ordered by the host).
    pub const DECISION_NOTICE: &[u8] = b"fides/v1/decision-notice";
}

/// `tag || len(part) || part || …`, the byte string that gets signed or hashed.
pub fn tagged(tag: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + tag.len() + parts.iter().map(|p| 4 + p.len()).sum::<usize>());
    for part in std::iter::once(&tag).chain(parts.iter()) {
        let len = u32::try_from(part.len()).expect("signed parts are bounded far below 4 GiB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// SHA-256 of `tagged(tag, parts)`, without building it.
pub fn sha256_tagged(tag: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in std::iter::once(&tag).chain(parts.iter()) {
        let len = u32::try_from(part.len()).expect("hashed parts are bounded far below 4 GiB");
        hasher.update(len.to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// Hash a tagged message to G2, the point that gets signed.
pub fn hash_to_g2(tag: &[u8], parts: &[&[u8]]) -> G2Affine {
    blsttc::hash_g2(tagged(tag, parts))
}

/// Why shares did not combine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CombineError {
    /// Fewer than `t + 1` shares.
    #[error("{have} shares, {need} needed")]
    NotEnough {
        /// Shares given.
        have: usize,
        /// `t + 1`.
        need: usize,
    },
    /// Some shares are invalid; they are named. Drop them and wait for more.
    #[error("invalid shares from {0:?}")]
    InvalidShares(Vec<NodeIndex>),
}

/// The public side of a threshold key set, with each replica's public key share computed on first
/// use and kept (it costs `t` scalar multiplications in G1, and is needed only to name a bad share).
/// One value can be shared by every replica in a process.
pub struct PublicShares {
    set: PublicKeySet,
    shares: Vec<OnceLock<PublicKeyShare>>,
}

impl PublicShares {
    /// The public key set of a cluster of `n` replicas.
    pub fn new(set: PublicKeySet, n: u32) -> Self {
        PublicShares { set, shares: (0..n).map(|_| OnceLock::new()).collect() }
    }

    /// The public key share of replica `index`, if it is one.
    pub fn share(&self, index: NodeIndex) -> Option<&PublicKeyShare> {
        let cell = self.shares.get(index.as_usize())?;
        Some(cell.get_or_init(|| self.set.public_key_share(index.as_usize())))
    }
}

/// One replica's view of a threshold key set: the public side and its own secret share.
#[derive(Clone)]
pub struct ThresholdKeys {
    index: NodeIndex,
    public: Arc<PublicShares>,
    secret: SecretKeyShare,
}

impl std::fmt::Debug for ThresholdKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThresholdKeys")
            .field("index", &self.index)
            .field("threshold", &self.public.set.threshold())
            .finish_non_exhaustive()
    }
}

impl ThresholdKeys {
    /// Keys of replica `index` in a cluster of `n`.
    pub fn new(index: NodeIndex, n: u32, public: PublicKeySet, secret: SecretKeyShare) -> Self {
        Self::with_shared(index, Arc::new(PublicShares::new(public, n)), secret)
    }

    /// Keys of replica `index`, sharing the public side with other replicas of the same process.
    pub fn with_shared(index: NodeIndex, public: Arc<PublicShares>, secret: SecretKeyShare) -> Self {
        ThresholdKeys { index, public, secret }
    }

    /// The public key set.
    pub fn public(&self) -> &PublicKeySet {
        &self.public.set
    }

    /// Shares needed to combine: `t + 1`.
    pub fn shares_needed(&self) -> usize {
        self.public.set.threshold() + 1
    }

    /// Whether our secret share matches the public key share at our index.
    pub fn is_consistent(&self) -> bool {
        self.public.share(self.index) == Some(&self.secret.public_key_share())
    }

    /// Our decryption share of `ciphertext` (the caller checked `ciphertext.verify()`).
    pub fn decrypt_share(&self, ciphertext: &Ciphertext) -> DecryptionShare {
        self.secret.decrypt_share_no_verify(ciphertext)
    }

    /// Whether `share` is `from`'s valid decryption share of `ciphertext`.
    pub fn verify_decryption_share(&self, from: NodeIndex, share: &DecryptionShare, ciphertext: &Ciphertext) -> bool {
        self.public.share(from).is_some_and(|key| key.verify_decryption_share(share, ciphertext))
    }

    /// Combine `t + 1` decryption shares (unchecked: the caller must check the plaintext, e.g.
    /// by a digest inside it, and fall back to [`ThresholdKeys::verify_decryption_share`]).
    pub fn decrypt(&self, shares: &BTreeMap<NodeIndex, DecryptionShare>, ciphertext: &Ciphertext) -> Option<Vec<u8>> {
        let chosen = shares.iter().take(self.shares_needed()).map(|(i, s)| (i.as_usize(), s));
        self.public.set.decrypt(chosen, ciphertext).ok()
    }

    /// Our signature share on a point of G2.
    pub fn sign_share(&self, point: G2Affine) -> SignatureShare {
        self.secret.sign_g2(point)
    }

    /// Whether `share` is `from`'s valid share on `point`.
    pub fn verify_share(&self, from: NodeIndex, share: &SignatureShare, point: G2Affine) -> bool {
        self.public.share(from).is_some_and(|key| key.verify_g2(share, point))
    }

    /// Combine shares on `point` into the cluster's signature.
    ///
    /// Takes the first `t + 1` shares, combines and verifies the result once. If that fails, each
    /// share is verified and the invalid ones are returned, to be dropped by the caller.
    pub fn combine(
        &self,
        shares: &BTreeMap<NodeIndex, SignatureShare>,
        point: G2Affine,
    ) -> Result<Signature, CombineError> {
        let need = self.shares_needed();
        if shares.len() < need {
            return Err(CombineError::NotEnough { have: shares.len(), need });
        }
        let chosen = shares.iter().take(need).map(|(i, s)| (i.as_usize(), s));
        if let Ok(signature) = self.public.set.combine_signatures(chosen) {
            if self.public.set.public_key().verify_g2(&signature, point) {
                return Ok(signature);
            }
        }
        let bad: Vec<NodeIndex> =
            shares.iter().filter(|(i, s)| !self.verify_share(**i, s, point)).map(|(i, _)| *i).collect();
        if bad.is_empty() {
            // Every share verifies, so interpolation of any t + 1 of them is the signature; this
            // is unreachable unless blsttc itself is broken.
            return Err(CombineError::InvalidShares(Vec::new()));
        }
        Err(CombineError::InvalidShares(bad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blsttc::SecretKeySet;
    use rand::SeedableRng;

    fn keys(n: u32, t: usize) -> Vec<ThresholdKeys> {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let set = SecretKeySet::random(t, &mut rng);
        (0..n)
            .map(|i| ThresholdKeys::new(NodeIndex(i), n, set.public_keys(), set.secret_key_share(i as usize)))
            .collect()
    }

    #[test]
    fn tagged_messages_of_different_domains_differ() {
        assert_eq!(sha256_tagged(b"a", &[b"bc", b""]), sha256(&tagged(b"a", &[b"bc", b""])));
        assert_ne!(tagged(b"a", &[b"bc"]), tagged(b"ab", &[b"c"]));
        assert_ne!(tagged(b"a", &[b"b", b"c"]), tagged(b"a", &[b"bc"]));
    }

    #[test]
    fn combine_names_the_invalid_share() {
        let keys = keys(4, 1);
        let point = hash_to_g2(b"test", &[b"m"]);
        let other = hash_to_g2(b"test", &[b"other"]);
        let mut shares = BTreeMap::new();
        shares.insert(NodeIndex(0), keys[0].sign_share(other));
        shares.insert(NodeIndex(1), keys[1].sign_share(point));
        assert_eq!(keys[2].combine(&shares, point), Err(CombineError::InvalidShares(vec![NodeIndex(0)])));
        shares.remove(&NodeIndex(0));
        assert!(matches!(keys[2].combine(&shares, point), Err(CombineError::NotEnough { have: 1, need: 2 })));
        shares.insert(NodeIndex(3), keys[3].sign_share(point));
        let signature = keys[2].combine(&shares, point).expect("two valid shares combine");
        assert!(keys[0].public().public_key().verify_g2(&signature, point));
        assert!(keys.iter().all(ThresholdKeys::is_consistent));
    }
}
