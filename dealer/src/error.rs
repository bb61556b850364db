//! What can go wrong while dealing, writing, reading or verifying cluster files.

use std::path::PathBuf;

use fides_types::{NodeIndex, QuorumError};

/// An error of the dealer. Every error about a file names the file; none quotes a secret.
#[derive(Debug, thiserror::Error)]
pub enum DealerError {
    /// `(n, t)` is not a valid cluster size.
    #[error(transparent)]
    Quorum(#[from] QuorumError),
    /// Protocol parameters that cannot run the cluster (a wire bound, or no progress).
    #[error("protocol parameters: {0}")]
    Protocol(String),
    /// Certification authority settings that cannot run it.
    #[error("certification authority: {0}")]
    Ca(String),
    /// An entry of an address list is not `HOST:PORT`.
    #[error("{list} entry {position} ({entry:?}): {reason}")]
    AddressMalformed {
        /// Which list: `address list` (replica-to-replica) or `client address list`.
        list: &'static str,
        /// Position of the entry in the list, from 1.
        position: usize,
        /// The entry as given.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The same address twice in an address list.
    #[error("{list}: {address} appears more than once")]
    AddressDuplicate {
        /// Which list: `address list` (replica-to-replica) or `client address list`.
        list: &'static str,
        /// The repeated address.
        address: String,
    },
    /// An address list does not have one entry per replica.
    #[error("{list} has {given} entries but n = {n}: give exactly one HOST:PORT per replica")]
    AddressCount {
        /// Which list: `address list` (replica-to-replica) or `client address list`.
        list: &'static str,
        /// Entries given.
        given: usize,
        /// Replicas.
        n: u32,
    },
    /// A client address is also a replica-to-replica address.
    #[error(
        "client address {address} of replica {client} is also the replica-to-replica address of replica {replica} \
         (a client address not given is the replica's address with port + 100)"
    )]
    ClientAddressCollision {
        /// The address.
        address: String,
        /// The replica whose client address it is.
        client: NodeIndex,
        /// The replica whose replica-to-replica address it is.
        replica: NodeIndex,
    },
    /// A client address was not given and cannot be derived: the port of the replica's address
    /// plus 100 is above 65535.
    #[error("no client address for the replica at {address}: port + 100 is above 65535; give --client-addresses")]
    ClientAddressOverflow {
        /// The replica-to-replica address.
        address: String,
    },
    /// The output directory already has files in it.
    #[error("{}: directory is not empty; pass --force to replace the cluster files in it", .path.display())]
    DirNotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// A file the cluster needs is not there.
    #[error("{}: missing ({what})", .path.display())]
    Missing {
        /// The file.
        path: PathBuf,
        /// What it should have held.
        what: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: {error}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        error: std::io::Error,
    },
    /// A file is not a well-formed cluster or replica file.
    #[error("{}: malformed: {reason}", .path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong, without quoting any secret.
        reason: String,
    },
    /// A well-formed replica file does not belong with the cluster file.
    #[error("{}: {reason}", .path.display())]
    Mismatch {
        /// The replica file.
        path: PathBuf,
        /// Every mismatch found, joined.
        reason: String,
    },
    /// An in-memory replica does not belong with the cluster it was paired with.
    #[error("replica {index} does not belong to this cluster: {reason}")]
    WrongCluster {
        /// The replica's index.
        index: NodeIndex,
        /// Every mismatch found, joined.
        reason: String,
    },
    /// Combining `t + 1` shares did not give a valid signature or plaintext.
    #[error("self-test of the {key_set} key set failed: {reason}")]
    SelfTest {
        /// `signing`, `coin` or `encryption`.
        key_set: &'static str,
        /// What failed.
        reason: String,
    },
    /// The threshold RSA key could not be dealt, or its root certificate made.
    #[error("threshold RSA: {0}")]
    Rsa(String),
    /// `verify` found problems, one per file (at least one).
    #[error("{} problem(s) found:\n{}", .0.len(), list(.0))]
    Verify(Vec<DealerError>),
}

fn list(problems: &[DealerError]) -> String {
    problems.iter().map(|problem| format!("  - {problem}")).collect::<Vec<_>>().join("\n")
}

impl DealerError {
    pub(crate) fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        DealerError::Io { path: path.into(), error }
    }

    pub(crate) fn malformed(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        DealerError::Malformed { path: path.into(), reason: reason.into() }
    }
}
