//! Threshold-encrypted envelopes: a payload of any length under a one-time ChaCha20-Poly1305 key,
//! and that key threshold-encrypted to the cluster in a *labeled* capsule
//! ([`crate::labeled`]).
//!
//! The label names the context (for atomic broadcast: session, epoch and proposer) and binds
//! both parts: it is the AEAD's associated data, so the payload opens nowhere else, and it is
//! hashed into the capsule's chosen-ciphertext check (`e(g1, W) = e(U, H(U, V, label))`), so the
//! capsule verifies nowhere else. Replicas release a decryption share only for a capsule that
//! verifies under the label they expect; a capsule copied out of an honest envelope into another
//! proposer's or another epoch's envelope does not verify there, and no share of it is given —
//! without this, a Byzantine replica could have the key of an honest contribution decrypted
//! before that contribution is ordered. Only the 32-byte key goes through the capsule, and the
//! check is done for many capsules at once ([`verify_capsules`]).

use blsttc::PublicKey;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;

use crate::labeled::{verify_batch, LabeledCapsule, HEADER_LEN};

/// Length of the symmetric key inside a capsule.
pub const KEY_LEN: usize = 32;
/// Length of a capsule: `U` (G1), `W` (G2), the length of the encrypted key and the key.
pub const CAPSULE_LEN: usize = HEADER_LEN + KEY_LEN;
/// Length of the AEAD tag.
pub const TAG_LEN: usize = 16;

/// Why bytes are no envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Too short to hold a capsule and a tag.
    #[error("envelope of {0} bytes is too short")]
    TooShort(usize),
    /// The capsule's points are not on the curve or not in the subgroup, or it holds no key.
    #[error("the capsule is malformed")]
    Capsule,
}

/// A threshold-encrypted payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    capsule: LabeledCapsule,
    sealed: Vec<u8>,
}

impl Envelope {
    /// Encrypt `plaintext` to the cluster key `public`, bound to `label`.
    pub fn seal(public: &PublicKey, label: &[u8], plaintext: &[u8], rng: &mut dyn RngCore) -> Envelope {
        let mut key = [0u8; KEY_LEN];
        rng.fill_bytes(&mut key);
        let capsule =
            LabeledCapsule::encrypt_with(public, label, &key, rng).expect("a 32-byte key is a message a capsule holds");
        let sealed = ChaCha20Poly1305::new(Key::from_slice(&key))
            .encrypt(&Nonce::default(), Payload { msg: plaintext, aad: label })
            .expect("ChaCha20-Poly1305 encrypts any payload below 256 GiB");
        Envelope { capsule, sealed }
    }

    /// Parse; the points of the capsule are checked, its validity is not ([`verify_capsules`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        if bytes.len() < CAPSULE_LEN + TAG_LEN {
            return Err(EnvelopeError::TooShort(bytes.len()));
        }
        let (capsule, sealed) = bytes.split_at(CAPSULE_LEN);
        // The length byte must announce a key: any other length leaves the rest misaligned.
        let capsule = LabeledCapsule::from_bytes(capsule).map_err(|_| EnvelopeError::Capsule)?;
        Ok(Envelope { capsule, sealed: sealed.to_vec() })
    }

    /// The envelope as bytes: capsule, then the sealed payload with its tag.
    pub fn to_bytes(&self) -> Vec<u8> {
        [self.capsule.to_bytes(), self.sealed.clone()].concat()
    }

    /// The capsule, to make, check and combine decryption shares of (under the envelope's label).
    pub fn capsule(&self) -> &LabeledCapsule {
        &self.capsule
    }

    /// Open with the key that threshold decryption of the capsule gave.
    pub fn open(&self, key: &[u8], label: &[u8]) -> Option<Vec<u8>> {
        if key.len() != KEY_LEN {
            return None;
        }
        ChaCha20Poly1305::new(Key::from_slice(key))
            .decrypt(&Nonce::default(), Payload { msg: &self.sealed, aad: label })
            .ok()
    }
}

/// Whether each envelope's capsule is valid under the label given with it, checked together
/// ([`verify_batch`]).
pub fn verify_capsules(envelopes: &[(&Envelope, &[u8])], rng: &mut dyn RngCore) -> Vec<bool> {
    let capsules: Vec<(&LabeledCapsule, &[u8])> = envelopes.iter().map(|(e, label)| (&e.capsule, *label)).collect();
    verify_batch(&capsules, rng)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ThresholdKeys;
    use blsttc::{SecretKeySet, PK_SIZE, SIG_SIZE};
    use fides_types::NodeIndex;
    use rand::SeedableRng;
    use std::collections::BTreeMap;

    fn cluster(seed: u64) -> (SecretKeySet, Vec<ThresholdKeys>, rand_chacha::ChaCha20Rng) {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let set = SecretKeySet::random(1, &mut rng);
        let keys = (0..4u32)
            .map(|i| ThresholdKeys::new(NodeIndex(i), 4, set.public_keys(), set.secret_key_share(i as usize)))
            .collect();
        (set, keys, rng)
    }

    fn key_of(set: &SecretKeySet, keys: &[ThresholdKeys], envelope: &Envelope) -> Vec<u8> {
        let shares: BTreeMap<NodeIndex, blsttc::DecryptionShare> =
            (0..2u32).map(|i| (NodeIndex(i), keys[i as usize].labeled_share(envelope.capsule()))).collect();
        envelope.capsule().combine(&set.public_keys(), &shares).expect("t + 1 shares")
    }

    #[test]
    fn envelopes_open_with_the_combined_key_and_only_in_their_context() {
        let (set, keys, mut rng) = cluster(3);
        let envelope = Envelope::seal(&set.public_keys().public_key(), b"epoch 1", b"hello", &mut rng);
        let envelope = Envelope::from_bytes(&envelope.to_bytes()).expect("round trip");
        assert_eq!(verify_capsules(&[(&envelope, b"epoch 1")], &mut rng), vec![true]);
        let key = key_of(&set, &keys, &envelope);
        assert_eq!(envelope.open(&key, b"epoch 1").as_deref(), Some(&b"hello"[..]));
        assert_eq!(envelope.open(&key, b"epoch 2"), None);
    }

    /// The copy attack: a Byzantine proposer puts an honest envelope's capsule (or the whole
    /// envelope) in its own proposal. Under its own context the capsule does not verify, so no
    /// honest replica gives a share of it and the honest key is never combined.
    #[test]
    fn a_capsule_copied_into_another_context_does_not_verify_there() {
        let (set, _, mut rng) = cluster(7);
        let public = set.public_keys().public_key();
        let honest = Envelope::seal(&public, b"session/epoch 3/proposer 0", b"requests", &mut rng);
        let own = Envelope::seal(&public, b"session/epoch 3/proposer 2", b"anything", &mut rng);
        let copied = [&honest.to_bytes()[..CAPSULE_LEN], &own.to_bytes()[CAPSULE_LEN..]].concat();
        let copied = Envelope::from_bytes(&copied).expect("the points are intact");
        for label in [&b"session/epoch 3/proposer 2"[..], b"session/epoch 4/proposer 2", b"session/epoch 4/proposer 0"]
        {
            assert_eq!(
                verify_capsules(&[(&copied, label), (&own, b"session/epoch 3/proposer 2")], &mut rng),
                vec![false, true]
            );
            assert_eq!(verify_capsules(&[(&honest, label)], &mut rng), vec![false]);
        }
        assert_eq!(verify_capsules(&[(&honest, b"session/epoch 3/proposer 0")], &mut rng), vec![true]);
    }

    #[test]
    fn batch_verification_agrees_with_one_by_one_and_names_the_bad_capsule() {
        let (set, _, mut rng) = cluster(4);
        let public = set.public_keys().public_key();
        let labels: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 3]).collect();
        let mut envelopes: Vec<Envelope> =
            labels.iter().map(|label| Envelope::seal(&public, label, &[label[0]; 100], &mut rng)).collect();
        let with = |envelopes: &[Envelope]| -> Vec<(Envelope, Vec<u8>)> {
            envelopes.iter().cloned().zip(labels.iter().cloned()).collect()
        };
        let verdicts = |pairs: &[(Envelope, Vec<u8>)], rng: &mut rand_chacha::ChaCha20Rng| {
            verify_capsules(&pairs.iter().map(|(e, l)| (e, l.as_slice())).collect::<Vec<_>>(), rng)
        };
        assert_eq!(verdicts(&with(&envelopes), &mut rng), vec![true; 5]);
        // Replace the encrypted key of capsule 2: the points stay valid, the check must fail.
        let mut bytes = envelopes[2].to_bytes();
        bytes[PK_SIZE + SIG_SIZE + 1] ^= 1;
        envelopes[2] = Envelope::from_bytes(&bytes).expect("points are intact");
        assert_eq!(verdicts(&with(&envelopes), &mut rng), vec![true, true, false, true, true]);
        // Swap W between two capsules: each fails.
        let (a, b) = (envelopes[0].to_bytes(), envelopes[1].to_bytes());
        let mut swapped = a.clone();
        swapped[PK_SIZE..PK_SIZE + SIG_SIZE].copy_from_slice(&b[PK_SIZE..PK_SIZE + SIG_SIZE]);
        let swapped = Envelope::from_bytes(&swapped).expect("points are intact");
        let pairs = [(&swapped, &labels[0][..]), (&envelopes[1], &labels[1][..]), (&envelopes[3], &labels[3][..])];
        assert_eq!(verify_capsules(&pairs, &mut rng), vec![false, true, true]);
    }

    #[test]
    fn malformed_envelopes_are_refused() {
        assert_eq!(Envelope::from_bytes(&[0; 10]), Err(EnvelopeError::TooShort(10)));
        assert_eq!(Envelope::from_bytes(&[0xff; CAPSULE_LEN + TAG_LEN]), Err(EnvelopeError::Capsule));
    }
}
