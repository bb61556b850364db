//! Asynchronous atomic broadcast (reliable broadcast, common subset, threshold-encrypted epochs,
//! agreed time), sans-IO.
//!
//! Built so far: [`rbc`], reliable broadcast with erasure coding and Merkle proofs, and [`acs`],
//! the asynchronous common subset on top of it and binary agreement. The encrypted epochs, agreed
//! time, the request layer and checkpoints are still to come (see `docs/atomic-broadcast.md`).

#![forbid(unsafe_code)]

pub mod acs;
pub mod epoch;
pub mod merkle;
pub mod rbc;
