//! The cluster in memory: the public cluster file, the private replica files, and dealing them.

use std::collections::HashSet;
use std::fmt;

use blsttc::{PublicKeySet, SecretKeySet, SecretKeyShare};
use ed25519_dalek::{SigningKey, VerifyingKey};
use fides_crypto::{domain, sha256, tagged, ThresholdKeys};
use fides_threshold_rsa::{PublicKey as RsaPublicKey, SecretShare as RsaSecretShare};
use fides_types::{NodeIndex, Quorum};
use rand::{CryptoRng, Rng};

use crate::address::{check_addresses, check_client_addresses, derive_client_addresses, Address, ADDRESS_LIST};
use crate::ca::CaSettings;
use crate::protocol::ProtocolParameters;
use crate::rsa_key::{deal_rsa, root_certificate, RsaOptions};
use crate::shares::bad_shares;
use crate::DealerError;

/// The `format` of a cluster file, as written: with a `[protocol]` table.
pub const CLUSTER_FORMAT: &str = "fides-cluster-v2";
/// The `format` of a cluster file written before the `[protocol]` table: still read, with
/// [`ProtocolParameters::V1`].
pub const CLUSTER_FORMAT_V1: &str = "fides-cluster-v1";
/// The `format` of a replica file.
pub const REPLICA_FORMAT: &str = "fides-replica-v1";

/// One of the three threshold key sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeySet {
    Signing,
    Coin,
    Encryption,
}

impl KeySet {
    pub(crate) const ALL: [KeySet; 3] = [KeySet::Signing, KeySet::Coin, KeySet::Encryption];

    pub(crate) fn name(self) -> &'static str {
        match self {
            KeySet::Signing => "signing",
            KeySet::Coin => "coin",
            KeySet::Encryption => "encryption",
        }
    }
}

/// The version of a cluster file, which decides how its id is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterFormat {
    /// `fides-cluster-v1`: no `[protocol]` table; the parameters are [`ProtocolParameters::V1`]
    /// and the id does not cover them (it was computed before they existed).
    V1,
    /// `fides-cluster-v2`: a `[protocol]` table, covered by the id.
    V2,
}

impl ClusterFormat {
    /// The `format` field.
    pub fn name(self) -> &'static str {
        match self {
            ClusterFormat::V1 => CLUSTER_FORMAT_V1,
            ClusterFormat::V2 => CLUSTER_FORMAT,
        }
    }
}

/// SHA-256 of a cluster's public key material (see [`ClusterFile::id`]); names the cluster.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClusterId(pub [u8; 32]);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterId({self})")
    }
}

/// The public part of one replica: where it listens and who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaInfo {
    /// Its index, `0..n`.
    pub index: NodeIndex,
    /// Where it listens for its peers (replica-to-replica).
    pub address: Address,
    /// Where it serves clients over gRPC; never equal to any replica's `address`.
    pub client_address: Address,
    /// Its Ed25519 identity, which authenticates it to its peers.
    pub identity: VerifyingKey,
}

/// The public cluster file: sizes, the three public key sets and every replica's addresses and
/// identity. Not secret; every replica and client gets it. Consistent by construction: only
/// [`generate`] and [`crate::read_cluster`] make one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterFile {
    id: ClusterId,
    format: ClusterFormat,
    quorum: Quorum,
    protocol: ProtocolParameters,
    signing: PublicKeySet,
    coin: PublicKeySet,
    encryption: PublicKeySet,
    replicas: Vec<ReplicaInfo>,
    rsa: Option<RsaPublicKey>,
    ca: Option<CaSettings>,
}

impl ClusterFile {
    /// Check that the parts make a cluster, and compute its id.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        format: ClusterFormat,
        quorum: Quorum,
        protocol: ProtocolParameters,
        signing: PublicKeySet,
        coin: PublicKeySet,
        encryption: PublicKeySet,
        replicas: Vec<ReplicaInfo>,
        rsa: Option<RsaPublicKey>,
        ca: Option<CaSettings>,
    ) -> Result<ClusterFile, String> {
        if format == ClusterFormat::V1 && protocol != ProtocolParameters::V1 {
            return Err(format!("a {} file has the parameters {}", CLUSTER_FORMAT_V1, ProtocolParameters::V1));
        }
        protocol.check(quorum).map_err(|reason| format!("protocol: {reason}"))?;
        for (name, set) in [("signing", &signing), ("coin", &coin), ("encryption", &encryption)] {
            if set.threshold() != quorum.t() as usize {
                return Err(format!("the {name} key set has threshold {}, not t = {}", set.threshold(), quorum.t()));
            }
        }
        let keys = [signing.public_key(), coin.public_key(), encryption.public_key()];
        if keys[0] == keys[1] || keys[0] == keys[2] || keys[1] == keys[2] {
            return Err("the signing, coin and encryption key sets are not independent".to_string());
        }
        if replicas.len() != quorum.n() as usize {
            return Err(format!("{} replicas listed, n = {}", replicas.len(), quorum.n()));
        }
        if let Some((position, replica)) = replicas.iter().enumerate().find(|(i, r)| r.index.as_usize() != *i) {
            return Err(format!("replica entry {} has index {}, expected {position}", position + 1, replica.index.0));
        }
        let addresses: Vec<Address> = replicas.iter().map(|r| r.address.clone()).collect();
        check_addresses(&addresses, quorum, ADDRESS_LIST).map_err(|e| e.to_string())?;
        let client_addresses: Vec<Address> = replicas.iter().map(|r| r.client_address.clone()).collect();
        check_client_addresses(&client_addresses, &addresses, quorum).map_err(|e| e.to_string())?;
        let mut identities = HashSet::new();
        for replica in &replicas {
            if replica.identity.is_weak() {
                return Err(format!("the identity of replica {} is a weak (small-order) key", replica.index.0));
            }
            if !identities.insert(replica.identity.to_bytes()) {
                return Err(format!("replica {} has the identity of another replica", replica.index.0));
            }
        }
        if let Some(rsa) = &rsa {
            if (rsa.parties(), rsa.threshold()) != (quorum.n(), quorum.t()) {
                return Err(format!(
                    "the threshold RSA key is for n = {}, t = {}, not n = {}, t = {}",
                    rsa.parties(),
                    rsa.threshold(),
                    quorum.n(),
                    quorum.t()
                ));
            }
        }
        if let Some(ca) = &ca {
            if rsa.is_none() {
                return Err("a [ca] table, but no threshold RSA key (keys.rsa) for the certification authority".into());
            }
            ca.check().map_err(|reason| format!("ca: {reason}"))?;
        }
        let id =
            cluster_id(format, quorum, &protocol, &signing, &coin, &encryption, &replicas, rsa.as_ref(), ca.as_ref());
        Ok(ClusterFile { id, format, quorum, protocol, signing, coin, encryption, replicas, rsa, ca })
    }

    /// The cluster id: SHA-256 of `tagged(domain::CLUSTER_ID, [format, n, t, protocol, signing,
    /// coin, encryption, identity 0, …, identity n-1])`, `n` and `t` as 4 little-endian bytes,
    /// `protocol` as each parameter in 8 little-endian bytes (absent from a `fides-cluster-v1`
    /// file's id), key sets as their commitments, then the threshold RSA public key's encoding
    /// as one more part if the cluster has one (so the id of a file without it is unchanged),
    /// then the certification authority's settings as one more part if the file has a `[ca]`
    /// table (`CaSettings::id_bytes`; only with an RSA key, so the parts cannot be confused).
    /// Addresses (replica-to-replica and client) are not in it: they can change without a new
    /// deal.
    pub fn id(&self) -> ClusterId {
        self.id
    }

    /// The version of the file it was read from (or will be written as).
    pub fn format(&self) -> ClusterFormat {
        self.format
    }

    /// The protocol parameters every replica of the cluster runs with.
    pub fn protocol(&self) -> &ProtocolParameters {
        &self.protocol
    }

    /// `n` and `t`.
    pub fn quorum(&self) -> Quorum {
        self.quorum
    }

    /// The key set for everything the cluster signs.
    pub fn signing(&self) -> &PublicKeySet {
        &self.signing
    }

    /// The key set of the common coin.
    pub fn coin(&self) -> &PublicKeySet {
        &self.coin
    }

    /// The threshold encryption key set.
    pub fn encryption(&self) -> &PublicKeySet {
        &self.encryption
    }

    /// The threshold RSA key of the certification authority, if it was dealt (files written
    /// before it have none).
    pub fn rsa(&self) -> Option<&RsaPublicKey> {
        self.rsa.as_ref()
    }

    /// The certification authority's settings as written in the file's `[ca]` table, if it has
    /// one (files dealt before it have none).
    pub fn ca(&self) -> Option<&CaSettings> {
        self.ca.as_ref()
    }

    /// The settings the certification authority runs with: the file's, or
    /// [`CaSettings::DEFAULT`] for a file without a `[ca]` table.
    pub fn ca_settings(&self) -> CaSettings {
        self.ca.unwrap_or(CaSettings::DEFAULT)
    }

    /// The public key set `key_set`.
    pub(crate) fn key_set(&self, key_set: KeySet) -> &PublicKeySet {
        match key_set {
            KeySet::Signing => &self.signing,
            KeySet::Coin => &self.coin,
            KeySet::Encryption => &self.encryption,
        }
    }

    /// Every replica, in index order.
    pub fn replicas(&self) -> &[ReplicaInfo] {
        &self.replicas
    }

    /// One replica, if `index` is in range.
    pub fn replica(&self, index: NodeIndex) -> Option<&ReplicaInfo> {
        self.replicas.get(index.as_usize())
    }
}

#[allow(clippy::too_many_arguments)]
fn cluster_id(
    format: ClusterFormat,
    quorum: Quorum,
    protocol: &ProtocolParameters,
    signing: &PublicKeySet,
    coin: &PublicKeySet,
    encryption: &PublicKeySet,
    replicas: &[ReplicaInfo],
    rsa: Option<&RsaPublicKey>,
    ca: Option<&CaSettings>,
) -> ClusterId {
    let n = quorum.n().to_le_bytes();
    let t = quorum.t().to_le_bytes();
    let sets = [signing.to_bytes(), coin.to_bytes(), encryption.to_bytes()];
    let identities: Vec<[u8; 32]> = replicas.iter().map(|r| r.identity.to_bytes()).collect();
    let protocol = protocol.id_bytes();
    let mut parts: Vec<&[u8]> = vec![format.name().as_bytes(), &n, &t];
    if format == ClusterFormat::V2 {
        parts.push(&protocol);
    }
    parts.extend([sets[0].as_slice(), &sets[1], &sets[2]]);
    parts.extend(identities.iter().map(|identity| identity.as_slice()));
    let rsa = rsa.map(RsaPublicKey::to_bytes);
    parts.extend(rsa.as_deref());
    let ca = ca.map(CaSettings::id_bytes);
    parts.extend(ca.as_deref());
    ClusterId(sha256(&tagged(domain::CLUSTER_ID, &parts)))
}

/// One replica's private file: its secret shares of the three key sets and its identity key.
/// Only that replica may ever see it.
#[derive(Clone)]
pub struct ReplicaFile {
    pub(crate) cluster_id: ClusterId,
    pub(crate) quorum: Quorum,
    pub(crate) index: NodeIndex,
    pub(crate) signing: SecretKeyShare,
    pub(crate) coin: SecretKeyShare,
    pub(crate) encryption: SecretKeyShare,
    pub(crate) identity: SigningKey,
    pub(crate) rsa: Option<RsaSecretShare>,
}

impl fmt::Debug for ReplicaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaFile")
            .field("cluster_id", &self.cluster_id)
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl ReplicaFile {
    /// The cluster this replica was dealt for.
    pub fn cluster_id(&self) -> ClusterId {
        self.cluster_id
    }

    /// `n` and `t` of that cluster.
    pub fn quorum(&self) -> Quorum {
        self.quorum
    }

    /// This replica's index.
    pub fn index(&self) -> NodeIndex {
        self.index
    }

    /// Secret share of the signing key set.
    pub fn signing_share(&self) -> &SecretKeyShare {
        &self.signing
    }

    /// Secret share of the coin key set.
    pub fn coin_share(&self) -> &SecretKeyShare {
        &self.coin
    }

    /// Secret share of the encryption key set (it makes decryption shares).
    pub fn encryption_share(&self) -> &SecretKeyShare {
        &self.encryption
    }

    /// The Ed25519 identity key.
    pub fn identity(&self) -> &SigningKey {
        &self.identity
    }

    /// Secret share of the threshold RSA key, if the cluster has one.
    pub fn rsa_share(&self) -> Option<&RsaSecretShare> {
        self.rsa.as_ref()
    }

    /// This replica's keys of the signing set, after checking it belongs to `cluster`.
    pub fn signing_keys(&self, cluster: &ClusterFile) -> Result<ThresholdKeys, DealerError> {
        self.check(cluster)?;
        Ok(ThresholdKeys::new(self.index, cluster.quorum.n(), cluster.signing.clone(), self.signing.clone()))
    }

    /// This replica's keys of the common coin, after checking it belongs to `cluster`.
    pub fn coin_keys(&self, cluster: &ClusterFile) -> Result<ThresholdKeys, DealerError> {
        self.check(cluster)?;
        Ok(ThresholdKeys::new(self.index, cluster.quorum.n(), cluster.coin.clone(), self.coin.clone()))
    }

    fn check(&self, cluster: &ClusterFile) -> Result<(), DealerError> {
        let mismatches = self.mismatches(cluster);
        if mismatches.is_empty() {
            return Ok(());
        }
        Err(DealerError::WrongCluster { index: self.index, reason: mismatches.join("; ") })
    }

    /// Every way in which this replica does not belong to `cluster`; empty if it does: same
    /// cluster id, `n` and `t`, index in range, each secret share matching the public key share at
    /// its index (the RSA share its verification key), and the identity key matching the public
    /// identity.
    pub fn mismatches(&self, cluster: &ClusterFile) -> Vec<String> {
        let mut found = self.mismatches_except_shares(cluster);
        if found.is_empty() {
            for key_set in KeySet::ALL {
                let own = [(self.index, self.share(key_set))];
                if !bad_shares(cluster.key_set(key_set), &own, &mut rand::thread_rng()).is_empty() {
                    found.push(share_mismatch(key_set, self.index));
                }
            }
            found.extend(self.rsa_mismatch(cluster));
        }
        found
    }

    /// Why this replica's threshold RSA share does not fit `cluster`'s key, if it does not.
    pub(crate) fn rsa_mismatch(&self, cluster: &ClusterFile) -> Option<String> {
        match (cluster.rsa(), &self.rsa) {
            (None, None) => None,
            (None, Some(_)) => Some("holds a threshold RSA share but the cluster has no RSA key".to_string()),
            (Some(_), None) => Some("holds no threshold RSA share but the cluster has an RSA key".to_string()),
            (Some(public), Some(share)) if share.index() != self.index.0 || !public.matches(share) => {
                Some(format!("its RSA share does not match the RSA verification key of replica {}", self.index.0))
            }
            (Some(_), Some(_)) => None,
        }
    }

    /// [`Self::mismatches`] but for the secret shares, which `verify_dir` checks in a batch.
    pub(crate) fn mismatches_except_shares(&self, cluster: &ClusterFile) -> Vec<String> {
        if self.cluster_id != cluster.id {
            return vec![format!("belongs to cluster {}, not to cluster {}", self.cluster_id, cluster.id)];
        }
        let mut found = Vec::new();
        if self.quorum != cluster.quorum {
            found.push(format!(
                "says n = {}, t = {} but the cluster has n = {}, t = {}",
                self.quorum.n(),
                self.quorum.t(),
                cluster.quorum.n(),
                cluster.quorum.t()
            ));
        }
        match cluster.replica(self.index) {
            None => found.push(format!("index {} is not below n = {}", self.index.0, cluster.quorum.n())),
            Some(public) if self.identity.verifying_key() != public.identity => {
                found.push(format!("its identity key does not match the public identity of replica {}", self.index.0))
            }
            Some(_) => {}
        }
        found
    }

    /// The secret share of `key_set`.
    pub(crate) fn share(&self, key_set: KeySet) -> &SecretKeyShare {
        match key_set {
            KeySet::Signing => &self.signing,
            KeySet::Coin => &self.coin,
            KeySet::Encryption => &self.encryption,
        }
    }
}

/// Why a share is refused.
pub(crate) fn share_mismatch(key_set: KeySet, index: NodeIndex) -> String {
    let name = key_set.name();
    format!("its {name} share does not match the {name} public key share of replica {}", index.0)
}

/// A dealt cluster: the public file and every replica's private file, in index order.
#[derive(Clone, Debug)]
pub struct Cluster {
    public: ClusterFile,
    replicas: Vec<ReplicaFile>,
    root_certificate: Option<String>,
}

impl Cluster {
    /// The public cluster file.
    pub fn public(&self) -> &ClusterFile {
        &self.public
    }

    /// The private replica files, in index order.
    pub fn replicas(&self) -> &[ReplicaFile] {
        &self.replicas
    }

    /// The certification authority's self-signed root certificate (PEM), if an RSA key was
    /// dealt.
    pub fn root_certificate(&self) -> Option<&str> {
        self.root_certificate.as_deref()
    }

    /// Both parts.
    pub fn into_parts(self) -> (ClusterFile, Vec<ReplicaFile>) {
        (self.public, self.replicas)
    }
}

/// Deal a cluster of `quorum.n()` replicas at `addresses` (one per replica, in index order):
/// three independent threshold key sets of threshold `t` and an Ed25519 identity per replica.
/// Each replica's client address is derived from its address (same host, port + 100; see
/// [`Address::derived_client_address`]), which is refused if a port would be above 65535 or a
/// derived client address is another replica's address.
///
/// `rng` must be a CSPRNG (the binary uses the operating system's); a seeded one gives a
/// reproducible cluster for tests and simulations, never for production.
pub fn generate<R: Rng + CryptoRng>(
    quorum: Quorum,
    addresses: Vec<Address>,
    rng: &mut R,
) -> Result<Cluster, DealerError> {
    check_addresses(&addresses, quorum, ADDRESS_LIST)?;
    let client_addresses = derive_client_addresses(&addresses)?;
    generate_with_client_addresses(quorum, addresses, client_addresses, rng)
}

/// [`generate`], with each replica's client address given: `client_addresses` has one per
/// replica, in index order, no duplicates, and none equal to any of `addresses`.
pub fn generate_with_client_addresses<R: Rng + CryptoRng>(
    quorum: Quorum,
    addresses: Vec<Address>,
    client_addresses: Vec<Address>,
    rng: &mut R,
) -> Result<Cluster, DealerError> {
    generate_with_protocol(quorum, ProtocolParameters::DEFAULT, addresses, client_addresses, rng)
}

/// [`generate_with_client_addresses`], with the protocol parameters given instead of
/// [`ProtocolParameters::DEFAULT`]; refused if they cannot run a cluster of `quorum` (see
/// [`ProtocolParameters::check`]).
pub fn generate_with_protocol<R: Rng + CryptoRng>(
    quorum: Quorum,
    protocol: ProtocolParameters,
    addresses: Vec<Address>,
    client_addresses: Vec<Address>,
    rng: &mut R,
) -> Result<Cluster, DealerError> {
    generate_with_rsa(quorum, protocol, addresses, client_addresses, None, rng)
}

/// [`generate_with_protocol`], and with `rsa` also a threshold RSA key of threshold `t` (Shoup's;
/// for the certification authority) and its self-signed root certificate (see
/// [`Cluster::root_certificate`]). The RSA key is dealt last, after every check, so that a bad
/// argument is refused before the slow search for safe primes. The cluster file has no `[ca]`
/// table (see [`generate_with_ca`]).
pub fn generate_with_rsa<R: Rng + CryptoRng>(
    quorum: Quorum,
    protocol: ProtocolParameters,
    addresses: Vec<Address>,
    client_addresses: Vec<Address>,
    rsa: Option<RsaOptions<'_>>,
    rng: &mut R,
) -> Result<Cluster, DealerError> {
    generate_with_ca(quorum, protocol, addresses, client_addresses, rsa, None, rng)
}

/// [`generate_with_rsa`], and with `ca` the certification authority's settings in the cluster
/// file (its `[ca]` table, covered by the id; what `dealer init` writes). `ca` needs `rsa`.
pub fn generate_with_ca<R: Rng + CryptoRng>(
    quorum: Quorum,
    protocol: ProtocolParameters,
    addresses: Vec<Address>,
    client_addresses: Vec<Address>,
    rsa: Option<RsaOptions<'_>>,
    ca: Option<CaSettings>,
    rng: &mut R,
) -> Result<Cluster, DealerError> {
    check_addresses(&addresses, quorum, ADDRESS_LIST)?;
    check_client_addresses(&client_addresses, &addresses, quorum)?;
    protocol.check(quorum).map_err(DealerError::Protocol)?;
    if let Some(ca) = &ca {
        if rsa.is_none() {
            return Err(DealerError::Ca("the certification authority's settings need a threshold RSA key".into()));
        }
        ca.check().map_err(DealerError::Ca)?;
    }
    let t = quorum.t() as usize;
    let signing = SecretKeySet::random(t, rng);
    let coin = SecretKeySet::random(t, rng);
    let encryption = SecretKeySet::random(t, rng);
    let identities: Vec<SigningKey> = quorum.nodes().map(|_| SigningKey::generate(rng)).collect();
    let replicas_public = quorum
        .nodes()
        .zip(addresses.into_iter().zip(client_addresses))
        .zip(&identities)
        .map(|((index, (address, client_address)), identity)| ReplicaInfo {
            index,
            address,
            client_address,
            identity: identity.verifying_key(),
        })
        .collect();
    let (rsa, not_before) = match rsa {
        Some(mut options) => (Some(deal_rsa(quorum, &mut options, rng)?), Some(options.not_before)),
        None => (None, None),
    };
    let public = ClusterFile::new(
        ClusterFormat::V2,
        quorum,
        protocol,
        signing.public_keys(),
        coin.public_keys(),
        encryption.public_keys(),
        replicas_public,
        rsa.as_ref().map(|dealt| dealt.public.clone()),
        ca,
    )
    .expect("freshly dealt key sets and identities are consistent, and the addresses and settings were checked");
    let root_certificate = match (&rsa, not_before) {
        (Some(dealt), Some(not_before)) => Some(root_certificate(public.id, dealt, quorum, not_before)?),
        _ => None,
    };
    let mut rsa_shares = rsa.map(|dealt| dealt.shares.into_iter());
    let replicas = quorum
        .nodes()
        .zip(identities)
        .map(|(index, identity)| ReplicaFile {
            cluster_id: public.id,
            quorum,
            index,
            signing: signing.secret_key_share(index.as_usize()),
            coin: coin.secret_key_share(index.as_usize()),
            encryption: encryption.secret_key_share(index.as_usize()),
            identity,
            rsa: rsa_shares.as_mut().and_then(Iterator::next),
        })
        .collect();
    Ok(Cluster { public, replicas, root_certificate })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::default_addresses;
    use rand::SeedableRng;

    fn dealt(n: u32, t: u32) -> Cluster {
        let quorum = Quorum::new(n, t).expect("valid quorum");
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        generate(quorum, default_addresses(quorum), &mut rng).expect("default addresses fit")
    }

    #[test]
    fn dealt_replicas_belong_to_their_cluster() {
        let cluster = dealt(4, 1);
        for replica in cluster.replicas() {
            assert_eq!(replica.mismatches(cluster.public()), Vec::<String>::new());
            assert!(replica.coin_keys(cluster.public()).expect("belongs").is_consistent());
            assert!(replica.signing_keys(cluster.public()).expect("belongs").is_consistent());
        }
    }

    #[test]
    fn a_replica_of_another_cluster_is_refused() {
        let ours = dealt(4, 1);
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(2);
        let quorum = ours.public().quorum();
        let other = generate(quorum, default_addresses(quorum), &mut rng).expect("default addresses fit");
        assert_ne!(ours.public().id(), other.public().id());
        let replica = &other.replicas()[0];
        assert!(matches!(replica.coin_keys(ours.public()), Err(DealerError::WrongCluster { .. })));
    }

    #[test]
    fn client_addresses_default_to_port_plus_100_and_are_not_in_the_id() {
        let quorum = Quorum::new(4, 1).expect("valid quorum");
        let derived = dealt(4, 1);
        let clients: Vec<Address> = derived.public().replicas().iter().map(|r| r.client_address.clone()).collect();
        assert_eq!(clients, crate::address::default_client_addresses(quorum));
        let given: Vec<Address> =
            (0..4).map(|i| Address::parse(&format!("c{i}.example.org:443"))).collect::<Result<_, _>>().expect("valid");
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let explicit = generate_with_client_addresses(quorum, default_addresses(quorum), given.clone(), &mut rng)
            .expect("distinct client addresses");
        assert_eq!(explicit.public().replica(NodeIndex(3)).map(|r| &r.client_address), Some(&given[3]));
        assert_eq!(explicit.public().id(), derived.public().id(), "client addresses changed the cluster id");
    }

    #[test]
    fn client_addresses_that_are_replica_addresses_are_refused() {
        let quorum = Quorum::new(4, 1).expect("valid quorum");
        let mut clients = crate::address::default_client_addresses(quorum);
        clients[2] = default_addresses(quorum)[0].clone();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let refused = generate_with_client_addresses(quorum, default_addresses(quorum), clients, &mut rng);
        assert!(matches!(
            refused,
            Err(DealerError::ClientAddressCollision { client: NodeIndex(2), replica: NodeIndex(0), .. })
        ));
        // Derived: replica 0's client address 7200 is replica 1's address.
        let addresses = crate::parse_addresses("a:7100,a:7200,a:7300,a:7400", quorum).expect("valid");
        let refused = generate(quorum, addresses, &mut rng);
        assert!(matches!(refused, Err(DealerError::ClientAddressCollision { client: NodeIndex(0), .. })));
        let addresses = crate::parse_addresses("a:7100,a:7101,a:65500,a:7103", quorum).expect("valid");
        assert!(matches!(generate(quorum, addresses, &mut rng), Err(DealerError::ClientAddressOverflow { .. })));
    }

    #[test]
    fn every_protocol_parameter_is_in_the_cluster_id() {
        let quorum = Quorum::new(4, 1).expect("valid quorum");
        let deal = |protocol: ProtocolParameters| {
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
            let (addresses, clients) = (default_addresses(quorum), crate::address::default_client_addresses(quorum));
            generate_with_protocol(quorum, protocol, addresses, clients, &mut rng).expect("valid parameters")
        };
        let base = ProtocolParameters::DEFAULT;
        let reference = deal(base);
        assert_eq!(reference.public().id(), dealt(4, 1).public().id(), "the same deal gave another id");
        let changed = [
            ProtocolParameters { batch_size: 999, ..base },
            ProtocolParameters { checkpoint_interval: 65, ..base },
            ProtocolParameters { epochs_in_flight: 4, ..base },
            ProtocolParameters { epochs_future_max: 17, ..base },
            ProtocolParameters { payload_len_max: 65_535, ..base },
            ProtocolParameters { dedup_window_epochs: 9_999, ..base },
        ];
        for protocol in changed {
            let other = deal(protocol);
            assert_eq!(other.public().signing(), reference.public().signing(), "not the same keys");
            assert_ne!(other.public().id(), reference.public().id(), "{protocol} gave the same cluster id");
            assert_eq!(other.replicas()[0].cluster_id(), other.public().id());
        }
    }

    #[test]
    fn parameters_that_cannot_run_the_cluster_are_not_dealt() {
        let quorum = Quorum::new(4, 1).expect("valid quorum");
        let protocol = ProtocolParameters { checkpoint_interval: 0, ..ProtocolParameters::DEFAULT };
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let (addresses, clients) = (default_addresses(quorum), crate::address::default_client_addresses(quorum));
        let refused = generate_with_protocol(quorum, protocol, addresses, clients, &mut rng);
        assert!(matches!(refused, Err(DealerError::Protocol(ref reason)) if reason.contains("checkpoint_interval")));
    }

    #[test]
    fn t_zero_clusters_are_dealt() {
        let cluster = dealt(1, 0);
        assert_eq!(cluster.replicas()[0].mismatches(cluster.public()), Vec::<String>::new());
    }
}
