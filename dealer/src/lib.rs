//! The trusted dealer: key material and configuration files of a Fides cluster.
//!
//! What it deals, for a [`Quorum`] of `n` replicas tolerating `t` Byzantine ones, from a CSPRNG:
//! - three independent BLS12-381 threshold key sets of threshold `t` (any `t + 1` shares combine,
//!   `t` shares reveal nothing), on blsttc: *signing*, for everything the cluster signs; *coin*,
//!   for the common coin of binary agreement, separate so that a coin value can never be
//!   replayed as a signature; *encryption*, for threshold decryption. Share `i` is the secret
//!   polynomial evaluated at `i + 1`, as blsttc does.
//! - one Ed25519 identity per replica, which authenticates it to its peers.
//! - with [`generate_with_rsa`] (the binary's path): a Shoup threshold RSA key of threshold `t`
//!   for the certification authority (`fides-threshold-rsa`; modulus from safe primes, 2048 bits
//!   by default) and the cluster's self-signed root certificate, signed by `t + 1` of its shares.
//!   The other `generate*` functions deal none, so that simulations and tests stay fast.
//! - with [`generate_with_ca`], the certification authority's [`CaSettings`] (binding mode,
//!   policy, validity): the `[ca]` table, covered by the cluster id.
//! - the cluster's [`ProtocolParameters`]: every setting that decides what a replica accepts or
//!   sends (batch size, checkpoint interval, …). They are in the cluster file and in the cluster
//!   id, so replicas of one cluster cannot run with different ones.
//!
//! Rules:
//! - [`generate`] deals a [`Cluster`] in memory: a public [`ClusterFile`] and one private
//!   [`ReplicaFile`] per replica. Each replica has two addresses: its `address`, where its peers
//!   reach it, and its `client_address`, where it serves clients (given to
//!   [`generate_with_client_addresses`], or derived as the same host with port + 100).
//! - [`write()`] puts them in a directory as `cluster.toml`, `replica-<i>.toml` (created with
//!   mode 0600) and, with an RSA key, `ca-root.pem`, each through a temporary file and a rename,
//!   replica files first and the cluster file last: an interrupted run leaves no cluster file.
//! - [`read_cluster`] and [`read_replica`] refuse any file whose keys do not decode, whose sizes
//!   are not a valid quorum, or whose `cluster_id` is not the hash of its key material; a replica
//!   file from another cluster is caught by [`ReplicaFile::mismatches`].
//! - [`verify_dir`] checks every private file against the public one and combines `t + 1` shares
//!   of each key set; [`inspect`] summarises a file without showing a secret.
//! - every error about a file names the file and never quotes a secret.
//!
//! Trust: the dealer knows every secret. It must run on a machine the operators trust, and its
//! output directory must be deleted once each replica file has reached its replica. A
//! distributed key generation would remove this assumption; Fides does not have one yet.
//!
//! Deviations from the papers (Cachin, Kursawe and Shoup's coin; HoneyBadgerBFT's threshold
//! encryption): none in the key material; the trusted dealer is the setup they assume.

#![forbid(unsafe_code)]

mod address;
mod ca;
mod cluster;
mod error;
mod format;
mod inspect;
mod protocol;
mod rsa_key;
mod shares;
mod verify;
mod write;

pub use address::{
    default_addresses, default_client_addresses, derive_client_addresses, parse_addresses, parse_client_addresses,
    Address, CLIENT_PORT_OFFSET, DEFAULT_CLIENT_PORT_FIRST, DEFAULT_PORT_FIRST,
};
pub use ca::{CaMode, CaPolicy, CaSettings, CA_VALIDITY_DAYS_DEFAULT, CA_VALIDITY_DAYS_LIMIT};
pub use cluster::{
    generate, generate_with_ca, generate_with_client_addresses, generate_with_protocol, generate_with_rsa, Cluster,
    ClusterFile, ClusterFormat, ClusterId, ReplicaFile, ReplicaInfo, CLUSTER_FORMAT, CLUSTER_FORMAT_V1, REPLICA_FORMAT,
};
pub use error::DealerError;
pub use fides_types::Quorum;
pub use format::{read_cluster, read_replica};
pub use inspect::inspect;
pub use protocol::{
    ProtocolParameters, CHECKPOINT_INTERVAL_LIMIT, EPOCHS_FUTURE_LIMIT, PAYLOAD_LEN_LIMIT, PROPOSAL_BYTES_LIMIT,
    PROPOSAL_REQUESTS_LIMIT, WINDOW_IDS_LIMIT,
};
pub use rsa_key::{RsaOptions, ROOT_CERTIFICATE_FILE_NAME, RSA_BITS_DEFAULT};
pub use verify::{verify_dir, VerifyReport};
pub use write::{check_writable, replica_file_name, write, CLUSTER_FILE_NAME};
