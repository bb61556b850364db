//! The CA's configuration: equal at every replica (it is part of the cluster's identity), plus
//! each replica's own identity key, which is not state.

use ed25519_dalek::SigningKey;

use crate::Root;

/// Ninety days, the default validity of a certificate (as Let's Encrypt's).
pub const DEFAULT_VALIDITY_SECS: u64 = 90 * 24 * 3600;

/// What a binding is keyed by (MAFTIA D5 §3.3): which certificates an update replaces and which
/// requests wait for each other ("in transition").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// A key has at most one certificate; its name may change by an update.
    KeyMajor,
    /// A name has at most one certificate; its key may change by an update.
    NameMajor,
}

/// Who may bind which name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    /// A name bound to no other key may be bound by anyone.
    Open,
    /// A name may be bound only with a [`super::Token`] for it, signed by the administrator.
    Token {
        /// The administrator's Ed25519 public key.
        admin: [u8; 32],
    },
}

/// The configuration every replica has alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaConfig {
    /// The cluster's id (every challenge, token and serial binds it).
    pub cluster: [u8; 32],
    /// The replicas' Ed25519 identity keys, by index: what a vote for 1 is checked against.
    pub identities: Vec<[u8; 32]>,
    /// The root certificate: the issuer of every certificate and CRL.
    pub root: Root,
    /// The binding mode.
    pub mode: Mode,
    /// The policy.
    pub policy: Policy,
    /// A certificate's validity from its agreed issue time, in seconds (at least one).
    pub validity_secs: u64,
    /// The cluster's checkpoint interval in epochs: a CRL is made at least at every epoch that is
    /// a multiple of it (0: only when one is due).
    pub checkpoint_interval: u64,
}

/// This replica's part, which differs between replicas and is not state: its index and identity
/// key (what its challenges are derived from and its votes signed with).
#[derive(Clone)]
pub struct Own {
    /// Its index among [`CaConfig::identities`].
    pub index: u32,
    /// Its Ed25519 identity key.
    pub identity: SigningKey,
}

impl std::fmt::Debug for Own {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Own").field("index", &self.index).finish_non_exhaustive()
    }
}
