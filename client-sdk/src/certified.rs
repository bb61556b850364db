//! Checking an ordering answer from one replica alone: the answer names the request's ordering
//! leaf in its epoch's certificate (docs/certificate.md), signed by any `t + 1` replicas.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use fides_api::proto;
use fides_service::certificate::{verify_path, Certificate, Inclusion, Leaf};
use fides_types::codec::Wire;

/// Certificates remembered before the cache starts over.
const VERIFIED_MAX: usize = 4096;

/// Epoch certificates whose signature was checked already: a client orders many requests per
/// epoch, and each answer's path is always checked but its epoch's signature (a pairing check,
/// about a millisecond) only once — also when the answers of one epoch arrive together: the
/// first to check a certificate does it, the others wait for its result. Keyed by the SHA-256 of
/// the cluster id, the public key and the certificate's bytes (epoch, time, count, root,
/// signature), so an entry vouches only for exactly what was checked, under that key; a
/// certificate that failed is remembered as failed. Bounded: when full it starts over.
#[derive(Debug, Default)]
pub struct VerifiedCertificates {
    checked: Mutex<HashMap<[u8; 32], Arc<OnceLock<bool>>>>,
}

impl VerifiedCertificates {
    /// The cache every client of this process shares (so that many clients of one cluster check
    /// each epoch's certificate once between them).
    pub fn shared() -> Arc<VerifiedCertificates> {
        static SHARED: OnceLock<Arc<VerifiedCertificates>> = OnceLock::new();
        Arc::clone(SHARED.get_or_init(Arc::default))
    }

    /// Whether `certificate` verifies under the cluster's key (checked once per certificate).
    pub fn verifies(&self, cluster: &[u8; 32], public: &blsttc::PublicKey, certificate: &Certificate) -> bool {
        let key = fides_crypto::sha256(&[&cluster[..], &public.to_bytes(), &certificate.to_bytes()].concat());
        let cell = match self.checked.lock() {
            Ok(mut checked) => {
                if checked.len() >= VERIFIED_MAX && !checked.contains_key(&key) {
                    checked.clear();
                }
                Arc::clone(checked.entry(key).or_default())
            }
            // A poisoned lock only means another thread panicked: check without the cache.
            Err(_) => return certificate.verifies(cluster, public),
        };
        *cell.get_or_init(|| certificate.verifies(cluster, public))
    }
}

/// Check a replica's answer to `Submit` of `(client, id, SHA-256(payload))`: the certificate verifies under
/// the cluster's key, the path leads from the request's ordering leaf at the answer's index to the
/// certified root, and the answer's epoch and agreed time are the certificate's. Everything in
/// the answer but `log_digest` is then the cluster's word.
pub fn check_ordered(
    cluster: &[u8; 32],
    public: &blsttc::PublicKey,
    cache: &VerifiedCertificates,
    (client, id, digest): (u64, u64, [u8; 32]),
    reply: &proto::Ordered,
) -> Result<(), String> {
    if reply.certificate.is_empty() {
        return Err("the answer carries no certificate".into());
    }
    let certificate =
        Certificate::from_bytes(&reply.certificate).map_err(|e| format!("the certificate does not decode: {e}"))?;
    let inclusion =
        Inclusion::from_bytes(&reply.inclusion).map_err(|e| format!("the inclusion path does not decode: {e}"))?;
    if reply.client != client || reply.id != id || reply.payload_digest != digest {
        return Err("the answer is for another request".into());
    }
    if reply.epoch != certificate.root.epoch || reply.time_ms != certificate.root.time_ms {
        return Err(format!(
            "the answer names epoch {} at {} ms but its certificate epoch {} at {} ms",
            reply.epoch, reply.time_ms, certificate.root.epoch, certificate.root.time_ms
        ));
    }
    if inclusion.index != u64::from(reply.index) {
        return Err(format!("the answer names index {} but its path leaf {}", reply.index, inclusion.index));
    }
    let leaf = Leaf::Ordering { client, id, digest, index: reply.index };
    verify_path(leaf.hash(), &inclusion, &certificate).map_err(|e| format!("the request's ordering leaf: {e}"))?;
    if !cache.verifies(cluster, public, &certificate) {
        return Err("the cluster's signature on the epoch's certificate does not verify".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fides_service::certificate::Tree;
    use rand::SeedableRng;

    const CLUSTER: [u8; 32] = [4; 32];

    /// An epoch of three requests, certified by the cluster key; the answer for request 1.
    fn answer() -> (blsttc::PublicKey, proto::Ordered) {
        let keys = blsttc::SecretKeySet::random(1, &mut rand_chacha::ChaCha20Rng::seed_from_u64(3));
        let requests: Vec<(u64, u64, [u8; 32])> =
            (0..3u64).map(|k| (10 + k, k, fides_crypto::sha256(&k.to_le_bytes()))).collect();
        let mut leaves: Vec<[u8; 32]> = requests
            .iter()
            .enumerate()
            .map(|(index, (client, id, digest))| {
                Leaf::Ordering { client: *client, id: *id, digest: *digest, index: index as u32 }.hash()
            })
            .collect();
        // A service record after the ordering leaves, as the host puts them.
        leaves.push(Leaf::Service { service: fides_service::ServiceId(*b"BST1"), record: vec![1, 2, 3] }.hash());
        let tree = Tree::new(leaves);
        let root = tree.epoch_root(7, 1_700_000_000_000);
        let signature = keys.secret_key().sign(root.message(&CLUSTER)).to_bytes();
        let certificate = Certificate { root, signature };
        let (client, id, digest) = requests[1];
        let reply = proto::Ordered {
            client,
            id,
            epoch: 7,
            index: 1,
            time_ms: 1_700_000_000_000,
            log_digest: vec![0; 32],
            payload_digest: digest.to_vec(),
            inclusion: tree.inclusion(1).expect("leaf 1").to_bytes(),
            certificate: certificate.to_bytes(),
        };
        (keys.public_keys().public_key(), reply)
    }

    fn check(public: &blsttc::PublicKey, reply: &proto::Ordered) -> Result<(), String> {
        let asked = (11, 1, fides_crypto::sha256(&1u64.to_le_bytes()));
        check_ordered(&CLUSTER, public, &VerifiedCertificates::default(), asked, reply)
    }

    #[test]
    fn a_single_replicas_answer_verifies_alone() {
        let (public, reply) = answer();
        assert_eq!(check(&public, &reply), Ok(()));
        let cache = VerifiedCertificates::default();
        let asked = (11, 1, fides_crypto::sha256(&1u64.to_le_bytes()));
        // Verified once, then from the cache; the cache vouches for nothing else.
        assert_eq!(check_ordered(&CLUSTER, &public, &cache, asked, &reply), Ok(()));
        assert_eq!(check_ordered(&CLUSTER, &public, &cache, asked, &reply), Ok(()));
        let other = blsttc::SecretKeySet::random(1, &mut rand_chacha::ChaCha20Rng::seed_from_u64(4));
        assert!(check_ordered(&CLUSTER, &other.public_keys().public_key(), &cache, asked, &reply).is_err());
    }

    /// Whatever a replica changes in the answer — where, when, for whom, the path, the certificate —
    /// the client refuses it.
    #[test]
    fn a_tampered_answer_is_refused() {
        let (public, good) = answer();
        let mut changed: Vec<(&str, proto::Ordered)> = Vec::new();
        let mut with = |what, change: &dyn Fn(&mut proto::Ordered)| {
            let mut reply = good.clone();
            change(&mut reply);
            changed.push((what, reply));
        };
        with("epoch", &|r| r.epoch += 1);
        with("index", &|r| r.index = 2);
        with("time", &|r| r.time_ms += 1);
        with("client", &|r| r.client += 1);
        with("id", &|r| r.id += 1);
        with("payload digest", &|r| r.payload_digest[0] ^= 1);
        with("no certificate", &|r| r.certificate.clear());
        with("no path", &|r| r.inclusion.clear());
        with("path index", &|r| r.inclusion[0] = 2);
        with("path sibling", &|r| *r.inclusion.last_mut().expect("a sibling") ^= 1);
        with("certificate epoch", &|r| r.certificate[0] ^= 1);
        with("certificate count", &|r| r.certificate[16] = 5);
        with("certificate root", &|r| r.certificate[30] ^= 1);
        with("signature", &|r| *r.certificate.last_mut().expect("a signature") ^= 1);
        with("truncated certificate", &|r| {
            r.certificate.pop();
        });
        for (what, reply) in changed {
            assert!(check(&public, &reply).is_err(), "an answer with its {what} changed verifies");
        }
        // The same answer for the wrong request (another payload under the same name).
        let asked = (11, 1, fides_crypto::sha256(b"another payload"));
        assert!(check_ordered(&CLUSTER, &public, &VerifiedCertificates::default(), asked, &good).is_err());
    }
}
