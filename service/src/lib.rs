//! The service host's sans-IO half.
//!
//! Every service of Fides (the timestamping bistro, the certification authority, the fair-exchange
//! party, content sharing) is a deterministic state machine fed by the ordered requests. This crate
//! holds what they share and what the replica's host drives:
//! - [`interface`]: the [`Service`] trait (deterministic `apply` of one ordered request in its
//!   [`Applied`] context, `begin_epoch`, `decided`, `query`) and its [`Outcome`]s as data;
//! - [`tables`]: the key-value view a service has of its own named tables, namespaced per
//!   service, with an in-memory store and the overlay that makes each request all or nothing;
//! - [`registry`]: every service by [`ServiceId`] (the payload's first four bytes), each payload
//!   decoded once, behind an object-safe face the host holds;
//! - [`certificate`]: the one Merkle tree of everything an epoch signs, its leaf kinds, and the
//!   `EpochSigner` protocol that threshold-signs its root once per epoch;
//! - [`rsa_signer`]: the `RsaSigner` protocol that threshold-signs, with Shoup's threshold RSA,
//!   the messages services ask for (`Outcome::ThresholdSign`).
//! - [`state`]: the digest of the services' state (a lattice multiset hash kept write by write),
//!   which every epoch's certificate covers in its state leaf.

pub mod certificate;
pub mod interface;
pub mod registry;
pub mod rsa_signer;
pub mod state;
pub mod tables;

pub use interface::{
    Applied, Code, Decision, EpochStart, InstanceId, Outcome, QueryError, Refusal, SchemeId, Service, ServiceId,
    HOST_DECISION_NOTICE, RESERVED_IDS,
};
pub use registry::{BatchOutcomes, Decoded, ErasedService, Ordered, Registry, RegistryError, Route};
pub use state::{StateDigest, StateSize};
pub use tables::{prefix_end, Entries, MemoryTables, Namespaced, Overlay, ReadOnly, StoreError, Tables};
