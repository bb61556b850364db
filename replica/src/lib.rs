//! The Fides replica process: drives the sans-IO protocol core with real I/O.
//!
//! One replica is one process (`replica run`):
//! - [`node`]: the driver loop around the deterministic [`core`] — receive, **log and fsync**,
//!   handle, then send (STYLE.md 2);
//! - [`store`]: the redb file that holds the RNG seed and the write-ahead log of events; a restart
//!   replays it and comes back in the very state it left;
//! - [`transport`]: frames between replicas over libp2p (TCP, Noise, yamux), peers authenticated by
//!   the dealer's Ed25519 identities; behind a trait so tests can join replicas in memory;
//! - [`host`]: what the services share (batches in, their tables);
//! - [`grpc`]: the client API (`fides.v1.Ordering`), health and reflection;
//! - [`metrics`]: Prometheus text over HTTP;
//! - [`launcher`]: `replica cluster`, a local cluster of processes on 127.0.0.1.
//!
//! `docs/replica.md` describes the process, its files and its guarantees.

#![forbid(unsafe_code)]

pub mod admission;
pub mod backfill;
pub mod bistro;
pub mod core;
pub mod flood;
pub mod grpc;
pub mod host;
pub mod launcher;
pub mod metrics;
pub mod node;
pub mod run;
pub mod store;
pub mod transport;
