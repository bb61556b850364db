//! The replica's deterministic, IO-free half, shared by the replica process and the simulator.
//!
//! - [`core`]: atomic broadcast and the agreement instances the services ask for, fed the events
//!   of the write-ahead log ([`event`]), one at a time; given the same keys, seed and events it
//!   does the same thing, which makes replaying the log a faithful restart;
//! - [`apply`]: what the service host does with each delivered batch — the services apply it, the
//!   agreement instances take their asks and decision notices ([`decisions`]), the answers are
//!   written and the epoch's leaves made, the state leaf last;
//! - [`epochs`]: what the host keeps per epoch and per ordered request.
//!
//! Nothing here touches a socket, a clock, a thread or a disk: the replica's driver (`node.rs`)
//! and worker (`host/worker.rs`) do that around these pieces, and the simulator (`simnet`'s whole
//! replicas) drives the same pieces under its Byzantine actors and schedulers.
//! `docs/replica.md` and `docs/service.md` describe them.

#![forbid(unsafe_code)]

pub mod apply;
pub mod asker;
pub mod core;
pub mod decisions;
pub mod epochs;
pub mod event;
