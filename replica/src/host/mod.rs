//! The service host: what every service of the replica shares, whatever the service.
//!
//! - [`intake`]: the delivered batches, handed over by the driver in memory once durable (the
//!   driver's store is read back only to catch up);
//! - [`epochs`]: each epoch's row (time, leaves, signature) and the outcome keys;
//! - [`tables`]: the services' tables in redb, and the host's own (outcomes, epochs, meta);
//! - [`decisions`]: the agreement instances the services ask for — who asked, the votes for the
//!   core, the replicas' ordered decision notices, and the ordered point where a decision is
//!   applied;
//! - [`orderer`]: ordering a request for a service and waiting for its answer, for the services'
//!   gRPC adapters.
//!
//! `docs/service.md` ("The host") describes it.

pub mod decisions;
pub mod epochs;
pub mod intake;
pub mod orderer;
pub mod tables;

pub use intake::{Intake, Lag};
pub use orderer::Orderer;
