//! The timestamping bistro: what the cluster signs for uploads with a deadline, how files are
//! encrypted for the event owner, and the deterministic service that the replicas run over the
//! ordered requests. See `docs/bistro.md`.

#![forbid(unsafe_code)]

pub mod commit;
pub mod proof;
pub mod records;
pub mod service;
pub mod stream;
pub mod text;
