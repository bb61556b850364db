//! The service host: what every service of the replica shares, whatever the service.
//!
//! - [`intake`]: the delivered batches, handed over by the driver in memory once durable (the
//!   driver's store is read back only to catch up);
//! - [`epochs`]: each epoch's row (time, leaves, signature) and the outcome keys;
//! - [`tables`]: the services' tables in redb, and the host's own (outcomes, epochs, meta);
//! - [`threshold`]: signatures under other schemes (threshold RSA) that services ask for, their
//!   exchange with the other replicas and their table;
//! - [`snapshot`]: the services' state sent to a replica that lost it, checked against the state
//!   leaf of a certified epoch;
//! - [`decisions`]: the agreement instances the services ask for — who asked, the votes for the
//!   core, the replicas' ordered decision notices, and the ordered point where a decision is
//!   applied;
//! - [`worker`]: the thread that applies delivered batches to every service in one transaction,
//!   certifies each epoch and answers waiting handlers;
//! - [`orderer`]: ordering a request for a service and waiting for its answer, for the services'
//!   gRPC adapters.
//!
//! `docs/service.md` ("The host") describes it.

pub mod intake;
pub mod orderer;
pub mod snapshot;
pub mod tables;
pub mod threshold;
#[cfg(test)]
mod threshold_worker_tests;
pub mod worker;

/// The decision notices and what an epoch holds are sans-IO, shared with the simulator
/// (`fides-host`), as is the per-epoch application the worker runs (`fides_host::apply`).
pub use fides_host::{decisions, epochs};
pub use intake::{Intake, Lag};
pub use orderer::Orderer;
