//! The Fides replica process: drives the sans-IO protocol core with real I/O.
//!
//! One replica is one process (`replica run`). Its modules, by role:
//!
//! The driver:
//! - [`node`]: the driver loop around the deterministic [`core`] — receive, **log and fsync**,
//!   handle, then send (STYLE.md 2); [`admission`] bounds what a peer may have logged, [`backfill`]
//!   fetches the batches a checkpoint skipped, [`flood`] is a test-only fault injection;
//! - [`store`]: the redb file that holds the RNG seed and the write-ahead log of events; a restart
//!   replays it and comes back in the very state it left;
//! - [`transport`]: frames between replicas over libp2p (TCP, Noise, yamux), peers authenticated by
//!   the dealer's Ed25519 identities; behind a trait so tests can join replicas in memory.
//!
//! The service host:
//! - [`host`]: what the services share (delivered batches in, their tables and state digest, each
//!   epoch's row, snapshots of their state for a replica that lost it).
//!
//! The gRPC adapters (wire types from `fides-api`):
//! - [`grpc`]: the client API (`fides.v1.Ordering`), health and reflection;
//! - [`ca`]: `fides.v1.CertificationAuthorityService`, over the CA service of the host;
//! - [`bistro`] (its `mod.rs`): `fides.v1.Bistro`; the `fides.v1.Intermediary` service and blob
//!   store are `fides-relay`'s.
//!
//! Services and background tasks:
//! - [`bistro`]: the bistro's worker and store, and its transfer task (`bistro::transfer`), which
//!   pulls uploads after a deadline.
//!
//! The process:
//! - [`run`] wires the above into one process; [`command`] is its command line, shared with
//!   `fides-bench`, which runs its replicas as itself; [`metrics`]: Prometheus text over HTTP;
//! - [`launcher`]: `replica cluster`, a local cluster of processes on 127.0.0.1 (also used by the
//!   process tests and by the benchmarks of `fides-bench`).
//!
//! `docs/replica.md` describes the process, its files and its guarantees.

#![forbid(unsafe_code)]

pub mod admission;
pub mod backfill;
pub mod bistro;
pub mod ca;
pub mod command;
/// The deterministic core, shared with the simulator (`fides-host`).
pub use fides_host::core;
pub mod flood;
pub mod grpc;
pub mod host;
pub mod launcher;
pub mod metrics;
pub mod node;
pub mod run;
pub mod store;
pub mod transport;
