//! Asynchronous atomic broadcast (reliable broadcast, common subset, threshold-encrypted epochs,
//! agreed time), sans-IO.
//!
//! - [`rbc`]: reliable broadcast with erasure coding and Merkle proofs;
//! - [`acs`]: the asynchronous common subset, on reliable broadcast and binary agreement;
//! - [`epoch`]: threshold-encrypted epochs, agreed time, the request layer (at most once);
//! - [`checkpoint`]: threshold-signed checkpoints and the catch-up of a replica behind.
//! - [`instances`]: validated binary agreements that the services start, one per instance id.
//!
//! `docs/atomic-broadcast.md` describes the protocol as built.

#![forbid(unsafe_code)]

pub mod acs;
pub mod checkpoint;
pub mod epoch;
pub mod instances;
pub mod merkle;
pub mod rbc;
mod state_codec;
