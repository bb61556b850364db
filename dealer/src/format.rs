//! The TOML files: encoding, and decoding that checks every field and never quotes a secret.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use blsttc::{PublicKeySet, SecretKeyShare, PK_SIZE, SK_SIZE};
use ed25519_dalek::{SigningKey, VerifyingKey};
use fides_threshold_rsa::{PublicKey as RsaPublicKey, SecretShare as RsaSecretShare};
use fides_types::{NodeIndex, Quorum};
use serde::{Deserialize, Serialize};

use crate::address::Address;
use crate::ca::{CaMode, CaPolicy, CaSettings};
use crate::cluster::{
    ClusterFile, ClusterFormat, ClusterId, ReplicaFile, ReplicaInfo, CLUSTER_FORMAT, CLUSTER_FORMAT_V1, REPLICA_FORMAT,
};
use crate::protocol::ProtocolParameters;
use crate::DealerError;

/// The largest file read: a cluster of 1024 replicas takes about 250 KiB.
const FILE_BYTES_MAX: u64 = 4 << 20;

/// The compressed point at infinity of G1.
const G1_IDENTITY: [u8; PK_SIZE] = {
    let mut bytes = [0u8; PK_SIZE];
    bytes[0] = 0xc0;
    bytes
};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterToml {
    format: String,
    cluster_id: String,
    n: u32,
    t: u32,
    /// Required in `fides-cluster-v2`, absent from `fides-cluster-v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    protocol: Option<ProtocolToml>,
    keys: KeySetsToml,
    /// The certification authority's settings; absent from files dealt before them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca: Option<CaToml>,
    replicas: Vec<ReplicaEntryToml>,
}

/// The `[ca]` table: every field is required but `admin`, which the token policy requires and
/// the open policy refuses.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaToml {
    mode: String,
    policy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    admin: Option<String>,
    validity_days: u32,
}

impl From<&CaSettings> for CaToml {
    fn from(ca: &CaSettings) -> Self {
        CaToml {
            mode: ca.mode.name().to_string(),
            policy: ca.policy.name().to_string(),
            admin: ca.policy.admin().map(|admin| hex::encode(admin.as_bytes())),
            validity_days: ca.validity_days,
        }
    }
}

impl TryFrom<CaToml> for CaSettings {
    type Error = String;

    fn try_from(ca: CaToml) -> Result<Self, String> {
        let mode = CaMode::parse(&ca.mode).map_err(|reason| format!("ca.mode: {reason}"))?;
        let policy =
            CaPolicy::parse(&ca.policy, ca.admin.as_deref(), "ca.admin").map_err(|reason| format!("ca: {reason}"))?;
        let settings = CaSettings { mode, policy, validity_days: ca.validity_days };
        settings.check().map_err(|reason| format!("ca: {reason}"))?;
        Ok(settings)
    }
}

/// The `[protocol]` table: every parameter is required, so that no reader fills one in with a
/// default of its own.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProtocolToml {
    batch_size: u32,
    checkpoint_interval: u64,
    epochs_in_flight: u64,
    epochs_future_max: u64,
    payload_len_max: u32,
    dedup_window_epochs: u64,
}

impl From<&ProtocolParameters> for ProtocolToml {
    fn from(p: &ProtocolParameters) -> Self {
        ProtocolToml {
            batch_size: p.batch_size,
            checkpoint_interval: p.checkpoint_interval,
            epochs_in_flight: p.epochs_in_flight,
            epochs_future_max: p.epochs_future_max,
            payload_len_max: p.payload_len_max,
            dedup_window_epochs: p.dedup_window_epochs,
        }
    }
}

impl From<ProtocolToml> for ProtocolParameters {
    fn from(p: ProtocolToml) -> Self {
        ProtocolParameters {
            batch_size: p.batch_size,
            checkpoint_interval: p.checkpoint_interval,
            epochs_in_flight: p.epochs_in_flight,
            epochs_future_max: p.epochs_future_max,
            payload_len_max: p.payload_len_max,
            dedup_window_epochs: p.dedup_window_epochs,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeySetsToml {
    signing: String,
    coin: String,
    encryption: String,
    /// The threshold RSA public key (hex of its encoding); absent from files dealt before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rsa: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplicaEntryToml {
    index: u32,
    address: String,
    /// Optional when reading, for files written before client addresses: derived from `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_address: Option<String>,
    identity: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplicaToml {
    format: String,
    cluster_id: String,
    index: u32,
    n: u32,
    t: u32,
    secrets: SecretsToml,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretsToml {
    signing_share: String,
    coin_share: String,
    encryption_share: String,
    identity: String,
    /// The threshold RSA secret share (hex of its encoding); absent from files dealt before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rsa_share: Option<String>,
}

/// What a file says it is.
// Made once per file read: the size of the cluster variant does not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Parsed {
    Cluster(ClusterFile),
    Replica(Box<ReplicaFile>),
}

impl ClusterFile {
    /// The file's text.
    pub fn to_toml(&self) -> String {
        let raw = ClusterToml {
            format: self.format().name().to_string(),
            cluster_id: self.id().to_string(),
            n: self.quorum().n(),
            t: self.quorum().t(),
            protocol: match self.format() {
                ClusterFormat::V1 => None,
                ClusterFormat::V2 => Some(self.protocol().into()),
            },
            keys: KeySetsToml {
                signing: hex::encode(self.signing().to_bytes()),
                coin: hex::encode(self.coin().to_bytes()),
                encryption: hex::encode(self.encryption().to_bytes()),
                rsa: self.rsa().map(|rsa| hex::encode(rsa.to_bytes())),
            },
            ca: self.ca().map(CaToml::from),
            replicas: self
                .replicas()
                .iter()
                .map(|r| ReplicaEntryToml {
                    index: r.index.0,
                    address: r.address.to_string(),
                    client_address: Some(r.client_address.to_string()),
                    identity: hex::encode(r.identity.to_bytes()),
                })
                .collect(),
        };
        let body = toml::to_string(&raw).expect("strings, integers and tables always encode as TOML");
        format!("# Fides cluster file, made by `dealer init`. Public: give it to every replica and client.\n{body}")
    }
}

impl ReplicaFile {
    /// The file's text. It holds secrets.
    pub fn to_toml(&self) -> String {
        let raw = ReplicaToml {
            format: REPLICA_FORMAT.to_string(),
            cluster_id: self.cluster_id.to_string(),
            index: self.index.0,
            n: self.quorum.n(),
            t: self.quorum.t(),
            secrets: SecretsToml {
                signing_share: hex::encode(self.signing.to_bytes()),
                coin_share: hex::encode(self.coin.to_bytes()),
                encryption_share: hex::encode(self.encryption.to_bytes()),
                identity: hex::encode(self.identity.to_bytes()),
                rsa_share: self.rsa.as_ref().map(|share| hex::encode(share.to_bytes())),
            },
        };
        let body = toml::to_string(&raw).expect("strings, integers and tables always encode as TOML");
        format!("# Fides replica file, made by `dealer init`. SECRET: for replica {} only.\n{body}", self.index.0)
    }
}

/// Read and check a cluster file.
pub fn read_cluster(path: &Path) -> Result<ClusterFile, DealerError> {
    match read_any(path)? {
        Parsed::Cluster(cluster) => Ok(cluster),
        Parsed::Replica(_) => Err(DealerError::malformed(path, format!("a replica file, not a {CLUSTER_FORMAT} file"))),
    }
}

/// Read and check a replica file (on its own: see [`ReplicaFile::mismatches`] to pair it with its
/// cluster file).
pub fn read_replica(path: &Path) -> Result<ReplicaFile, DealerError> {
    match read_any(path)? {
        Parsed::Replica(replica) => Ok(*replica),
        Parsed::Cluster(_) => Err(DealerError::malformed(path, format!("a cluster file, not a {REPLICA_FORMAT} file"))),
    }
}

/// Read a cluster or a replica file, whichever its `format` says it is.
pub(crate) fn read_any(path: &Path) -> Result<Parsed, DealerError> {
    let text = read_bounded(path)?;
    parse(&text).map_err(|reason| DealerError::malformed(path, reason))
}

fn read_bounded(path: &Path) -> Result<String, DealerError> {
    let file = File::open(path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => DealerError::Missing { path: path.into(), what: "no such file".into() },
        _ => DealerError::io(path, error),
    })?;
    let mut bytes = Vec::new();
    file.take(FILE_BYTES_MAX + 1).read_to_end(&mut bytes).map_err(|error| DealerError::io(path, error))?;
    if bytes.len() as u64 > FILE_BYTES_MAX {
        return Err(DealerError::malformed(path, format!("larger than {FILE_BYTES_MAX} bytes")));
    }
    String::from_utf8(bytes).map_err(|_| DealerError::malformed(path, "not UTF-8 text"))
}

fn parse(text: &str) -> Result<Parsed, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| toml_reason(text, &e))?;
    let format = match table.get("format") {
        Some(toml::Value::String(format)) => format.clone(),
        Some(_) => return Err("`format` is not a string".to_string()),
        None => return Err("no `format` field: not a Fides cluster or replica file".to_string()),
    };
    // Re-parse from the text, not the table, so that errors carry a line number.
    match format.as_str() {
        CLUSTER_FORMAT => {
            let raw: ClusterToml = toml::from_str(text).map_err(|e| toml_reason(text, &e))?;
            decode_cluster(ClusterFormat::V2, raw).map(Parsed::Cluster)
        }
        CLUSTER_FORMAT_V1 => {
            let raw: ClusterToml = toml::from_str(text).map_err(|e| toml_reason(text, &e))?;
            decode_cluster(ClusterFormat::V1, raw).map(Parsed::Cluster)
        }
        REPLICA_FORMAT => {
            let raw: ReplicaToml = toml::from_str(text).map_err(|e| toml_reason(text, &e))?;
            decode_replica(raw).map(|replica| Parsed::Replica(Box::new(replica)))
        }
        other => {
            Err(format!("format {other:?} is none of {CLUSTER_FORMAT:?}, {CLUSTER_FORMAT_V1:?} and {REPLICA_FORMAT:?}"))
        }
    }
}

/// The message and line of a TOML error, without the snippet of the file that toml's `Display`
/// shows: that line may hold a secret.
fn toml_reason(text: &str, error: &toml::de::Error) -> String {
    match error.span() {
        Some(span) => {
            let line = text.get(..span.start).map_or(0, |before| before.matches('\n').count()) + 1;
            format!("line {line}: {}", error.message().trim_end())
        }
        None => error.message().trim_end().to_string(),
    }
}

fn decode_cluster(format: ClusterFormat, raw: ClusterToml) -> Result<ClusterFile, String> {
    let quorum = Quorum::new(raw.n, raw.t).map_err(|e| e.to_string())?;
    let protocol = match (format, raw.protocol) {
        (ClusterFormat::V2, Some(protocol)) => ProtocolParameters::from(protocol),
        (ClusterFormat::V2, None) => return Err(format!("no [protocol] table, which a {CLUSTER_FORMAT} file has")),
        (ClusterFormat::V1, None) => ProtocolParameters::V1,
        (ClusterFormat::V1, Some(_)) => {
            return Err(format!(
                "a [protocol] table in a {CLUSTER_FORMAT_V1} file (its cluster id cannot cover it; deal a \
                 {CLUSTER_FORMAT} cluster to choose parameters)"
            ))
        }
    };
    let signing = decode_key_set("keys.signing", &raw.keys.signing, quorum)?;
    let coin = decode_key_set("keys.coin", &raw.keys.coin, quorum)?;
    let encryption = decode_key_set("keys.encryption", &raw.keys.encryption, quorum)?;
    let replicas = raw
        .replicas
        .into_iter()
        .enumerate()
        .map(|(position, entry)| decode_replica_entry(position, entry))
        .collect::<Result<Vec<_>, _>>()?;
    let rsa = raw.keys.rsa.as_deref().map(decode_rsa_public_key).transpose()?;
    let ca = raw.ca.map(CaSettings::try_from).transpose()?;
    let cluster = ClusterFile::new(format, quorum, protocol, signing, coin, encryption, replicas, rsa, ca)?;
    let stated = ClusterId(decode_hex::<32>("cluster_id", &raw.cluster_id)?);
    if stated != cluster.id() {
        return Err(format!(
            "cluster_id {stated} does not match the key material and protocol parameters in the file (they hash to {})",
            cluster.id()
        ));
    }
    Ok(cluster)
}

fn decode_replica_entry(position: usize, entry: ReplicaEntryToml) -> Result<ReplicaInfo, String> {
    let field = format!("replicas[{position}]");
    let address = Address::parse(&entry.address).map_err(|reason| format!("{field}.address: {reason}"))?;
    let client_address = match entry.client_address {
        Some(text) => Address::parse(&text).map_err(|reason| format!("{field}.client_address: {reason}"))?,
        None => address.derived_client_address().ok_or_else(|| {
            format!("{field}: no client_address, and the one derived from address would have a port above 65535")
        })?,
    };
    let bytes = decode_hex::<32>(&format!("{field}.identity"), &entry.identity)?;
    let identity =
        VerifyingKey::from_bytes(&bytes).map_err(|_| format!("{field}.identity: not an Ed25519 public key"))?;
    Ok(ReplicaInfo { index: NodeIndex(entry.index), address, client_address, identity })
}

fn decode_replica(raw: ReplicaToml) -> Result<ReplicaFile, String> {
    let quorum = Quorum::new(raw.n, raw.t).map_err(|e| e.to_string())?;
    let index = NodeIndex(raw.index);
    if !quorum.contains(index) {
        return Err(format!("index {} is not below n = {}", raw.index, raw.n));
    }
    let secrets = raw.secrets;
    Ok(ReplicaFile {
        cluster_id: ClusterId(decode_hex::<32>("cluster_id", &raw.cluster_id)?),
        quorum,
        index,
        signing: decode_secret_share("secrets.signing_share", &secrets.signing_share)?,
        coin: decode_secret_share("secrets.coin_share", &secrets.coin_share)?,
        encryption: decode_secret_share("secrets.encryption_share", &secrets.encryption_share)?,
        identity: SigningKey::from_bytes(&decode_hex::<32>("secrets.identity", &secrets.identity)?),
        rsa: secrets.rsa_share.as_deref().map(decode_rsa_share).transpose()?,
    })
}

/// `N` bytes from `2N` hex digits. The message never quotes the text (it may be secret).
fn decode_hex<const N: usize>(field: &str, text: &str) -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    hex::decode_to_slice(text, &mut bytes).map_err(|_| format!("{field}: not {} hex digits", 2 * N))?;
    Ok(bytes)
}

fn decode_rsa_public_key(text: &str) -> Result<RsaPublicKey, String> {
    let bytes = hex::decode(text).map_err(|_| "keys.rsa: not hex".to_string())?;
    RsaPublicKey::from_bytes(&bytes).map_err(|error| format!("keys.rsa: not a threshold RSA public key: {error}"))
}

/// The message never quotes the text (it is secret).
fn decode_rsa_share(text: &str) -> Result<RsaSecretShare, String> {
    let bytes = hex::decode(text).map_err(|_| "secrets.rsa_share: not hex".to_string())?;
    RsaSecretShare::from_bytes(&bytes).map_err(|error| format!("secrets.rsa_share: not a threshold RSA share: {error}"))
}

fn decode_secret_share(field: &str, text: &str) -> Result<SecretKeyShare, String> {
    let bytes = decode_hex::<SK_SIZE>(field, text)?;
    SecretKeyShare::from_bytes(bytes).map_err(|_| format!("{field}: not a scalar below the BLS12-381 group order"))
}

/// A public key set: the `t + 1` coefficients of its commitment, each a compressed G1 point.
fn decode_key_set(field: &str, text: &str, quorum: Quorum) -> Result<PublicKeySet, String> {
    let coefficients = quorum.t() as usize + 1;
    let expected = coefficients * PK_SIZE;
    let bytes = hex::decode(text).map_err(|_| format!("{field}: not hex"))?;
    if bytes.len() != expected {
        return Err(format!(
            "{field}: {} bytes, expected (t + 1) x {PK_SIZE} = {expected} for t = {}",
            bytes.len(),
            quorum.t()
        ));
    }
    for (k, chunk) in bytes.chunks(PK_SIZE).enumerate() {
        let point: [u8; PK_SIZE] = chunk.try_into().expect("chunks of a multiple of PK_SIZE bytes are PK_SIZE long");
        if point == G1_IDENTITY {
            return Err(format!("{field}: coefficient {k} is the point at infinity"));
        }
        blsttc::PublicKey::from_bytes(point).map_err(|_| format!("{field}: coefficient {k} is not a point of G1"))?;
    }
    PublicKeySet::from_bytes(bytes).map_err(|_| format!("{field}: not a public key set"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::default_addresses;
    use crate::generate;
    use rand::SeedableRng;

    #[test]
    fn files_round_trip_through_toml() {
        let quorum = Quorum::new(4, 1).expect("valid quorum");
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let cluster = generate(quorum, default_addresses(quorum), &mut rng).expect("default addresses fit");
        let Ok(Parsed::Cluster(public)) = parse(&cluster.public().to_toml()) else {
            panic!("the cluster file does not parse back");
        };
        assert_eq!(&public, cluster.public());
        for replica in cluster.replicas() {
            let Ok(Parsed::Replica(parsed)) = parse(&replica.to_toml()) else {
                panic!("replica {} does not parse back", replica.index().0);
            };
            assert_eq!(parsed.mismatches(&public), Vec::<String>::new());
            assert_eq!(parsed.to_toml(), replica.to_toml());
        }
    }

    /// The cluster file of a fresh deal, without its `client_address` lines.
    fn without_client_addresses(cluster: &ClusterFile) -> String {
        let text = cluster.to_toml();
        assert!(text.contains("client_address = \"127.0.0.1:7200\""), "{text}");
        text.lines().filter(|line| !line.starts_with("client_address = ")).map(|line| format!("{line}\n")).collect()
    }

    #[test]
    fn a_file_without_client_addresses_reads_with_derived_ones() {
        let quorum = Quorum::new(4, 1).expect("valid quorum");
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(4);
        let cluster = generate(quorum, default_addresses(quorum), &mut rng).expect("default addresses fit");
        let Ok(Parsed::Cluster(public)) = parse(&without_client_addresses(cluster.public())) else {
            panic!("a file without client addresses does not parse");
        };
        assert_eq!(&public, cluster.public(), "client addresses are not the derived ones, or the id changed");
        let clients: Vec<String> = public.replicas().iter().map(|r| r.client_address.to_string()).collect();
        assert_eq!(clients, ["127.0.0.1:7200", "127.0.0.1:7201", "127.0.0.1:7202", "127.0.0.1:7203"]);
    }

    #[test]
    fn bad_client_addresses_in_a_file_are_refused() {
        let quorum = Quorum::new(4, 1).expect("valid quorum");
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
        let cluster = generate(quorum, default_addresses(quorum), &mut rng).expect("default addresses fit");
        let text = cluster.public().to_toml();
        let cases = [
            ("\"127.0.0.1:7201\"", "\"127.0.0.1:7100\"", "replica-to-replica address of replica #0"),
            ("\"127.0.0.1:7201\"", "\"127.0.0.1:7202\"", "more than once"),
            ("\"127.0.0.1:7201\"", "\"127.0.0.1\"", "replicas[1].client_address"),
        ];
        for (old, new, needle) in cases {
            let tampered = text.replacen(old, new, 1);
            let Err(reason) = parse(&tampered) else { panic!("{new} as a client address parsed") };
            assert!(reason.contains(needle), "{reason}");
        }
        let high = without_client_addresses(cluster.public()).replacen("127.0.0.1:7103", "127.0.0.1:65500", 1);
        let Err(reason) = parse(&high) else { panic!("an underivable client address parsed") };
        assert!(reason.contains("replicas[3]: no client_address"), "{reason}");
    }

    /// A fresh deal's cluster file as a `fides-cluster-v1` file: no `[protocol]` table, and the id
    /// computed as documented for v1 (here, independently of `ClusterFile`).
    fn as_v1_file(cluster: &ClusterFile) -> (String, ClusterId) {
        let (n, t) = (cluster.quorum().n().to_le_bytes(), cluster.quorum().t().to_le_bytes());
        let sets = [cluster.signing().to_bytes(), cluster.coin().to_bytes(), cluster.encryption().to_bytes()];
        let identities: Vec<[u8; 32]> = cluster.replicas().iter().map(|r| r.identity.to_bytes()).collect();
        let mut parts: Vec<&[u8]> = vec![b"fides-cluster-v1", &n, &t, &sets[0], &sets[1], &sets[2]];
        parts.extend(identities.iter().map(|identity| identity.as_slice()));
        let v1_id = ClusterId(fides_crypto::sha256(&fides_crypto::tagged(fides_crypto::domain::CLUSTER_ID, &parts)));
        let text = cluster.to_toml();
        let (head, rest) = text.split_once("[protocol]").expect("a v2 file has a [protocol] table");
        let keys = rest.find("[keys]").expect("the keys follow the protocol table");
        let text = format!("{head}{}", &rest[keys..])
            .replace("fides-cluster-v2", "fides-cluster-v1")
            .replace(&cluster.id().to_string(), &v1_id.to_string());
        (text, v1_id)
    }

    #[test]
    fn a_v1_file_reads_with_the_frozen_v1_parameters_and_its_old_id() {
        let quorum = Quorum::new(4, 1).expect("valid quorum");
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(6);
        let cluster = generate(quorum, default_addresses(quorum), &mut rng).expect("default addresses fit");
        let (text, v1_id) = as_v1_file(cluster.public());
        assert!(!text.contains("batch_size"), "{text}");
        let parsed = match parse(&text) {
            Ok(Parsed::Cluster(parsed)) => parsed,
            Ok(Parsed::Replica(_)) => panic!("a cluster file parsed as a replica file"),
            Err(reason) => panic!("a v1 file does not parse: {reason}"),
        };
        assert_eq!(parsed.format(), ClusterFormat::V1);
        assert_eq!(parsed.id(), v1_id);
        assert_eq!(parsed.protocol(), &ProtocolParameters::V1);
        assert_eq!(parsed.to_toml(), text, "a v1 file is not written back as it was");
        // A v1 file cannot carry parameters: its id could not cover them.
        let with_table = cluster
            .public()
            .to_toml()
            .replace("fides-cluster-v2", "fides-cluster-v1")
            .replace(&cluster.public().id().to_string(), &v1_id.to_string());
        let Err(reason) = parse(&with_table) else { panic!("a v1 file with a [protocol] table parsed") };
        assert!(reason.contains("[protocol] table in a fides-cluster-v1 file"), "{reason}");
    }

    #[test]
    fn a_v2_file_without_its_protocol_table_or_with_a_changed_parameter_is_refused() {
        let quorum = Quorum::new(4, 1).expect("valid quorum");
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let cluster = generate(quorum, default_addresses(quorum), &mut rng).expect("default addresses fit");
        let text = cluster.public().to_toml();
        assert!(text.contains("\n[protocol]\nbatch_size = 1000\n"), "{text}");
        let changed = text.replacen("batch_size = 1000", "batch_size = 500", 1);
        let Err(reason) = parse(&changed) else { panic!("a changed batch_size parsed") };
        assert!(reason.contains("does not match"), "{reason}");
        let (without, _) = as_v1_file(cluster.public());
        let without = without.replace("fides-cluster-v1", "fides-cluster-v2");
        let Err(reason) = parse(&without) else { panic!("a v2 file without [protocol] parsed") };
        assert!(reason.contains("no [protocol] table"), "{reason}");
        let missing = text.replacen("dedup_window_epochs = 10000\n", "", 1);
        let Err(reason) = parse(&missing) else { panic!("a [protocol] table without a parameter parsed") };
        assert!(reason.contains("dedup_window_epochs"), "{reason}");
    }

    /// The same deal as `generate` with `seed`, with a 512-bit (test-only) RSA key or without.
    fn dealt_with_rsa(rsa: bool, seed: u64) -> crate::Cluster {
        let quorum = Quorum::new(4, 1).expect("valid quorum");
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let mut progress = |_| {};
        let not_before = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let options = rsa.then_some(crate::RsaOptions { modulus_bits: 512, not_before, progress: &mut progress });
        let (addresses, clients) = (default_addresses(quorum), crate::address::default_client_addresses(quorum));
        crate::generate_with_rsa(quorum, ProtocolParameters::DEFAULT, addresses, clients, options, &mut rng)
            .expect("valid arguments")
    }

    #[test]
    fn a_threshold_rsa_key_round_trips_and_is_in_the_id_and_files_without_one_keep_theirs() {
        let (with, without) = (dealt_with_rsa(true, 8), dealt_with_rsa(false, 8));
        let quorum = with.public().quorum();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(8);
        let plain = generate(quorum, default_addresses(quorum), &mut rng).expect("default addresses fit");
        assert_eq!(without.public().id(), plain.public().id(), "no RSA key, yet another id");
        assert_eq!(with.public().signing(), without.public().signing(), "not the same deal");
        assert_ne!(with.public().id(), without.public().id(), "the RSA key is not in the id");
        assert!(!without.public().to_toml().contains("rsa"));
        assert!(without.root_certificate().is_none());
        assert!(with.root_certificate().is_some_and(|pem| pem.starts_with("-----BEGIN CERTIFICATE-----")));
        let Ok(Parsed::Cluster(public)) = parse(&with.public().to_toml()) else {
            panic!("a cluster file with an RSA key does not parse back");
        };
        assert_eq!(&public, with.public());
        for replica in with.replicas() {
            let Ok(Parsed::Replica(parsed)) = parse(&replica.to_toml()) else { panic!("does not parse back") };
            assert_eq!(parsed.mismatches(&public), Vec::<String>::new());
            assert!(parsed.rsa_share().is_some());
        }
        // A replica file of this cluster without its RSA share does not belong to it.
        let text: String = with.replicas()[2]
            .to_toml()
            .lines()
            .filter(|line| !line.starts_with("rsa_share"))
            .map(|line| format!("{line}\n"))
            .collect();
        let Ok(Parsed::Replica(stripped)) = parse(&text) else { panic!("a replica file without RSA share") };
        assert_eq!(stripped.mismatches(&public), vec!["holds no threshold RSA share but the cluster has an RSA key"]);
        // Another key, or bytes that are not one, are refused.
        let other = dealt_with_rsa(true, 9);
        let text = with.public().to_toml();
        let (ours, theirs) = (value_of(&text, "rsa"), value_of(&other.public().to_toml(), "rsa"));
        let Err(reason) = parse(&text.replace(&ours, &theirs)) else { panic!("another RSA key parsed") };
        assert!(reason.contains("does not match"), "{reason}");
        let Err(reason) = parse(&text.replace(&ours, &ours[..ours.len() - 2])) else { panic!("a short key parsed") };
        assert!(reason.contains("keys.rsa: not a threshold RSA public key"), "{reason}");
    }

    /// A deal with a 512-bit RSA key and `ca` as its `[ca]` table.
    fn dealt_with_ca(ca: Option<CaSettings>, seed: u64) -> crate::Cluster {
        let quorum = Quorum::new(4, 1).expect("valid quorum");
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let mut progress = |_| {};
        let not_before = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let options = crate::RsaOptions { modulus_bits: 512, not_before, progress: &mut progress };
        let (addresses, clients) = (default_addresses(quorum), crate::address::default_client_addresses(quorum));
        crate::generate_with_ca(quorum, ProtocolParameters::DEFAULT, addresses, clients, Some(options), ca, &mut rng)
            .expect("valid arguments")
    }

    const ADMIN: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    fn token_settings() -> CaSettings {
        let policy = CaPolicy::parse("token", Some(ADMIN), "admin").expect("a valid administrator key");
        CaSettings { mode: CaMode::NameMajor, policy, validity_days: 30 }
    }

    #[test]
    fn a_ca_table_round_trips_and_is_in_the_id_and_files_without_one_keep_theirs() {
        let without = dealt_with_ca(None, 10);
        assert_eq!(without.public().id(), dealt_with_rsa(true, 10).public().id(), "no [ca] table, yet another id");
        assert!(!without.public().to_toml().contains("[ca]"));
        assert_eq!(without.public().ca(), None);
        assert_eq!(without.public().ca_settings(), CaSettings::DEFAULT);
        let mut ids = vec![without.public().id()];
        for settings in [CaSettings::DEFAULT, token_settings()] {
            let with = dealt_with_ca(Some(settings), 10);
            let text = with.public().to_toml();
            assert!(text.contains("[ca]"), "{text}");
            let Ok(Parsed::Cluster(public)) = parse(&text) else { panic!("a [ca] table does not parse back") };
            assert_eq!(&public, with.public());
            assert_eq!(public.ca(), Some(&settings));
            assert_eq!(with.replicas()[1].cluster_id(), public.id());
            ids.push(public.id());
        }
        assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2], "the [ca] table is not in the id");
        // A changed setting no longer matches the id.
        let text = dealt_with_ca(Some(token_settings()), 10).public().to_toml();
        let Err(reason) = parse(&text.replace("validity_days = 30", "validity_days = 31")) else {
            panic!("a changed validity parsed")
        };
        assert!(reason.contains("does not match"), "{reason}");
    }

    #[test]
    fn a_malformed_ca_table_is_refused_with_its_field() {
        let text = dealt_with_ca(Some(token_settings()), 11).public().to_toml();
        let open = dealt_with_ca(Some(CaSettings::DEFAULT), 11).public().to_toml();
        let cases = [
            (text.replace("mode = \"name-major\"", "mode = \"both\""), "ca.mode: \"both\" is not a binding mode"),
            (text.replace("policy = \"token\"", "policy = \"closed\""), "\"closed\" is not a policy"),
            (text.replace(&format!("admin = \"{ADMIN}\"\n"), ""), "the token policy needs the administrator"),
            (text.replace(ADMIN, &ADMIN[2..]), "ca.admin: not 64 hex digits"),
            (text.replace(ADMIN, &"00".repeat(32)), "ca.admin: a weak (small-order) Ed25519 key"),
            (text.replace("validity_days = 30", "validity_days = 0"), "validity_days = 0 is not in 1 ..= 3660"),
            (text.replace("validity_days = 30\n", ""), "missing field `validity_days`"),
            (text.replace("validity_days = 30", "validity_days = 30\nserial = 1"), "unknown field `serial`"),
            (open.replace("policy = \"open\"", &format!("policy = \"open\"\nadmin = \"{ADMIN}\"")), "policy is open"),
        ];
        for (bad, needle) in cases {
            let Err(reason) = parse(&bad) else { panic!("parsed with {needle}") };
            assert!(reason.contains(needle), "{needle}: {reason}");
        }
        // A [ca] table in a file without an RSA key.
        let plain = dealt_with_rsa(false, 11).public().to_toml();
        let ca_table = "[ca]\nmode = \"key-major\"\npolicy = \"open\"\nvalidity_days = 90\n\n";
        let bad = plain.replacen("[[replicas]]", &format!("{ca_table}[[replicas]]"), 1);
        let Err(reason) = parse(&bad) else { panic!("a [ca] table without RSA key parsed") };
        assert!(reason.contains("no threshold RSA key"), "{reason}");
    }

    fn value_of(text: &str, key: &str) -> String {
        let line = text.lines().find(|line| line.starts_with(&format!("{key} = "))).expect("the key is in the file");
        line.split('"').nth(1).expect("a quoted value").to_string()
    }

    #[test]
    fn toml_errors_do_not_quote_the_file() {
        let text = "format = \"fides-replica-v1\"\n[secrets]\nsigning_share = \"deadbeef\" junk\n";
        let Err(reason) = parse(text) else { panic!("garbage parsed") };
        assert!(reason.starts_with("line 3:"), "{reason}");
        assert!(!reason.contains("deadbeef"), "{reason}");
    }
}
