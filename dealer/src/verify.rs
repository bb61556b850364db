//! Checking a cluster directory: every private file against the public one, then the key sets
//! end to end.

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use blsttc::{PublicKeySet, SecretKeyShare};
use fides_crypto::{domain, hash_to_g2, sha256, tagged};
use fides_types::{NodeIndex, Quorum};
use rand::SeedableRng;

use crate::cluster::{share_mismatch, KeySet};
use crate::protocol::ProtocolParameters;
use crate::rsa_key::{check_message, threshold_sign};
use crate::shares::bad_shares;
use crate::write::{entry_names, is_temporary, replica_file_index, replica_file_name, CLUSTER_FILE_NAME};
use crate::{read_cluster, read_replica, ClusterFile, ClusterId, DealerError, ReplicaFile};
use fides_threshold_rsa::{PublicKey as RsaPublicKey, SecretShare as RsaSecretShare};

/// What a successful [`verify_dir`] checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// The cluster.
    pub cluster_id: ClusterId,
    /// Its `n` and `t`.
    pub quorum: Quorum,
    /// Its protocol parameters.
    pub protocol: ProtocolParameters,
    /// The replica files checked, in index order.
    pub replica_files: Vec<PathBuf>,
    /// The size of the threshold RSA modulus, if the cluster has one.
    pub rsa_bits: Option<u64>,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "OK: cluster {}: n = {}, t = {}; {} replica files match {CLUSTER_FILE_NAME}; \
             t + 1 = {} shares combine for the signing, coin and encryption key sets{}; protocol: {}",
            self.cluster_id,
            self.quorum.n(),
            self.quorum.t(),
            self.replica_files.len(),
            self.quorum.one_honest(),
            match self.rsa_bits {
                Some(bits) => format!(" and the {bits}-bit threshold RSA key"),
                None => String::new(),
            },
            self.protocol
        )
    }
}

/// Check the cluster directory `dir` (as [`crate::write`] makes it).
///
/// 1. `cluster.toml` parses and is consistent (see [`crate::read_cluster`]).
/// 2. For each index `i < n`, `replica-<i>.toml` exists, parses, holds index `i` (so indices are
///    in range and unique), is not readable by group or others, and matches the cluster file (see
///    [`ReplicaFile::mismatches`]; the shares are checked in a batch with random weights, then
///    bisected to name the bad ones). No other `replica-*.toml` and no leftover temporary file is
///    in `dir`.
/// 3. Two sets of `t + 1` replicas (the first and the last) each sign a test message with the
///    signing and with the coin set, and the combined signature verifies under the set's public
///    key; they each decrypt a test ciphertext of the encryption set; if the cluster has a
///    threshold RSA key, each set's RSA shares sign a test message and the signature verifies.
///    (Each RSA share is also checked against its verification key in step 2.)
///
/// Every problem of step 2 is reported, each naming its file.
pub fn verify_dir(dir: &Path) -> Result<VerifyReport, DealerError> {
    let cluster = read_cluster(&dir.join(CLUSTER_FILE_NAME))?;
    let mut problems: BTreeMap<NodeIndex, DealerError> = BTreeMap::new();
    let mut replicas = Vec::new();
    let mut reasons: BTreeMap<NodeIndex, Vec<String>> = BTreeMap::new();
    let replica_files: Vec<PathBuf> = cluster.quorum().nodes().map(|i| dir.join(replica_file_name(i))).collect();
    for (index, path) in cluster.quorum().nodes().zip(&replica_files) {
        match read_replica(path) {
            Ok(replica) => {
                reasons.insert(index, file_mismatches(path, &replica, &cluster)?);
                replicas.push((index, replica));
            }
            Err(problem) => {
                problems.insert(index, problem);
            }
        }
    }
    for (index, reason) in share_mismatches(&cluster, &replicas) {
        reasons.entry(index).or_default().push(reason);
    }
    for (index, reasons) in reasons.into_iter().filter(|(_, reasons)| !reasons.is_empty()) {
        let path = replica_files[index.as_usize()].clone();
        problems.insert(index, DealerError::Mismatch { path, reason: reasons.join("; ") });
    }
    let mut problems: Vec<DealerError> = problems.into_values().collect();
    problems.extend(stray_files(dir, cluster.quorum())?);
    if !problems.is_empty() {
        return Err(DealerError::Verify(problems));
    }
    let replicas: Vec<ReplicaFile> = replicas.into_iter().map(|(_, replica)| replica).collect();
    self_test(&cluster, &replicas)?;
    Ok(VerifyReport {
        cluster_id: cluster.id(),
        quorum: cluster.quorum(),
        protocol: *cluster.protocol(),
        replica_files,
        rsa_bits: cluster.rsa().map(|rsa| 8 * rsa.modulus_len() as u64),
    })
}

/// What is wrong with the replica file at `path` that is named `replica-<i>.toml`, but its shares.
fn file_mismatches(path: &Path, replica: &ReplicaFile, cluster: &ClusterFile) -> Result<Vec<String>, DealerError> {
    let mut reasons = Vec::new();
    let expected = replica_file_name(replica.index());
    if path.file_name().is_none_or(|name| name.to_string_lossy() != expected) {
        reasons.push(format!("holds the secrets of replica {}, which belong in {expected}", replica.index().0));
    }
    let mode = std::fs::metadata(path).map_err(|error| DealerError::io(path, error))?.permissions().mode();
    if mode & 0o077 != 0 {
        reasons.push(format!("mode {:o} lets group or others read or write its secrets: chmod 600", mode & 0o777));
    }
    reasons.extend(replica.mismatches_except_shares(cluster));
    Ok(reasons)
}

/// The shares that do not match their public key share, of the replica files that hold the
/// index they are named for and belong to the cluster (the others are reported already, and a
/// replica of another cluster has nothing to check its shares against).
fn share_mismatches(cluster: &ClusterFile, replicas: &[(NodeIndex, ReplicaFile)]) -> Vec<(NodeIndex, String)> {
    let comparable: Vec<&ReplicaFile> = replicas
        .iter()
        .filter(|(position, r)| r.index() == *position && r.cluster_id() == cluster.id())
        .map(|(_, replica)| replica)
        .collect();
    let mut found = Vec::new();
    let mut rng = rand::thread_rng();
    for key_set in KeySet::ALL {
        let shares: Vec<(NodeIndex, &SecretKeyShare)> =
            comparable.iter().map(|r| (r.index(), r.share(key_set))).collect();
        for index in bad_shares(cluster.key_set(key_set), &shares, &mut rng) {
            found.push((index, share_mismatch(key_set, index)));
        }
    }
    for replica in comparable {
        found.extend(replica.rsa_mismatch(cluster).map(|reason| (replica.index(), reason)));
    }
    found
}

fn stray_files(dir: &Path, quorum: Quorum) -> Result<Vec<DealerError>, DealerError> {
    let mut problems = Vec::new();
    for name in entry_names(dir)? {
        let path = dir.join(&name);
        if is_temporary(&name) {
            let reason = "temporary file of an interrupted `dealer init`: deal again".to_string();
            problems.push(DealerError::Mismatch { path, reason });
            continue;
        }
        match replica_file_index(&name) {
            Some(Some(index)) if index < quorum.n() && name == replica_file_name(NodeIndex(index)) => {}
            Some(_) => {
                let reason = format!("not a replica file of this cluster of n = {}", quorum.n());
                problems.push(DealerError::Mismatch { path, reason });
            }
            None => {}
        }
    }
    Ok(problems)
}

/// Combine shares of the first and the last `t + 1` replicas in each key set.
fn self_test(cluster: &ClusterFile, replicas: &[ReplicaFile]) -> Result<(), DealerError> {
    let needed = cluster.quorum().one_honest() as usize;
    let subsets = [&replicas[..needed], &replicas[replicas.len() - needed..]];
    let id = cluster.id().0;
    for subset in subsets {
        for key_set in [KeySet::Signing, KeySet::Coin] {
            test_signing(cluster.key_set(key_set), subset, key_set, &id)?;
        }
        test_decryption(cluster.encryption(), subset, &id)?;
        if let Some(public) = cluster.rsa() {
            test_rsa(public, subset, cluster.id())?;
        }
    }
    Ok(())
}

/// `t + 1` threshold RSA shares sign a test message, and the signature verifies.
fn test_rsa(public: &RsaPublicKey, subset: &[ReplicaFile], id: ClusterId) -> Result<(), DealerError> {
    let failed = |reason: &str| DealerError::SelfTest { key_set: "threshold RSA", reason: reason.to_string() };
    let shares: Vec<RsaSecretShare> = subset.iter().filter_map(|r| r.rsa_share().cloned()).collect();
    if shares.len() != subset.len() {
        return Err(failed("a replica file has no RSA share"));
    }
    threshold_sign(public, &shares, &check_message(id))
        .map(|_| ())
        .ok_or_else(|| failed("t + 1 signature shares do not combine to a signature that verifies"))
}

fn test_signing(public: &PublicKeySet, subset: &[ReplicaFile], key_set: KeySet, id: &[u8]) -> Result<(), DealerError> {
    let failed = |reason: &str| DealerError::SelfTest { key_set: key_set.name(), reason: reason.to_string() };
    let point = hash_to_g2(domain::DEALER_CHECK, &[id, key_set.name().as_bytes()]);
    let shares: BTreeMap<usize, _> =
        subset.iter().map(|r| (r.index().as_usize(), r.share(key_set).sign_g2(point))).collect();
    let signature = public.combine_signatures(&shares).map_err(|_| failed("the signature shares did not combine"))?;
    if !public.public_key().verify_g2(&signature, point) {
        return Err(failed("the combined signature does not verify"));
    }
    Ok(())
}

fn test_decryption(public: &PublicKeySet, subset: &[ReplicaFile], id: &[u8]) -> Result<(), DealerError> {
    let failed = |reason: &str| DealerError::SelfTest { key_set: "encryption", reason: reason.to_string() };
    let plaintext = tagged(domain::DEALER_CHECK, &[id, b"encryption"]);
    // Seeded from the cluster id: the test ciphertext needs no secrecy.
    let seed = sha256(&tagged(domain::DEALER_CHECK, &[id, b"encryption-rng"]));
    let mut rng = rand_chacha::ChaCha20Rng::from_seed(seed);
    let ciphertext = public.public_key().encrypt_with_rng(&mut rng, &plaintext);
    if !ciphertext.verify() {
        return Err(failed("the test ciphertext does not verify"));
    }
    let shares: BTreeMap<usize, _> = subset
        .iter()
        .map(|r| (r.index().as_usize(), r.encryption_share().decrypt_share_no_verify(&ciphertext)))
        .collect();
    let decrypted =
        public.decrypt(&shares, &ciphertext).map_err(|_| failed("the decryption shares did not combine"))?;
    if decrypted != plaintext {
        return Err(failed("t + 1 decryption shares do not decrypt the test ciphertext"));
    }
    Ok(())
}
