//! Asynchronous atomic broadcast (reliable broadcast, common subset, threshold-encrypted epochs,
//! agreed time), sans-IO.
//!
//! Built so far: [`rbc`], reliable broadcast with erasure coding and Merkle proofs. The common
//! subset, the epochs and the request layer are still to come (see `docs/atomic-broadcast.md`).

#![forbid(unsafe_code)]

pub mod merkle;
pub mod rbc;
