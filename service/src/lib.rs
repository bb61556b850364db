//! The service host's sans-IO half.
//!
//! Every service of Fides (the timestamping bistro, the certification authority, the fair-exchange
//! party, content sharing) is a deterministic state machine fed by the ordered requests. This crate
//! holds what they share and what the replica's host drives:
//! - [`certificate`]: the one Merkle tree of everything an epoch signs, its leaf kinds, and the
//!   `EpochSigner` protocol that threshold-signs its root once per epoch.

pub mod certificate;
