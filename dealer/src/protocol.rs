//! The protocol parameters of a cluster: every setting that decides what a replica accepts as
//! valid or what it sends. They live in the cluster file and in the cluster id, so that every
//! replica of a cluster runs with the same ones, and a replica restarted from its log replays it
//! with the values it ran with.

use std::fmt;

use fides_types::Quorum;

/// The longest request payload an honest replica may be asked to order: the atomic-broadcast
/// decoder refuses longer ones (`fides_atomic_broadcast::epoch::PAYLOAD_WIRE_MAX`).
pub const PAYLOAD_LEN_LIMIT: u32 = 1024 * 1024;
/// The most requests one proposal may hold: the decoder refuses more
/// (`fides_atomic_broadcast::epoch::CONTRIBUTION_REQUESTS_MAX`).
pub const PROPOSAL_REQUESTS_LIMIT: u32 = 1 << 20;
/// The most executed ids a checkpoint's at-most-once window may hold: the catch-up decoder
/// refuses more (`fides_atomic_broadcast::checkpoint::WINDOW_ENTRIES_MAX`).
pub const WINDOW_IDS_LIMIT: u64 = 1 << 24;
/// The longest proposal (its requests at the longest payload, with their framing): it travels
/// whole in one frame when n - 2t = 1, and frames and shards are bounded by 64 MiB. 1 MiB is left
/// for the envelope, the Merkle proof and the framing.
pub const PROPOSAL_BYTES_LIMIT: u64 = 63 * 1024 * 1024;
/// The bytes one request adds to a proposal besides its payload: client, id, payload length.
const REQUEST_FRAMING_BYTES: u64 = 8 + 8 + 4;
/// The longest checkpoint interval: the replica keeps about four intervals of batches.
pub const CHECKPOINT_INTERVAL_LIMIT: u64 = 1 << 20;
/// The most epochs ahead whose messages a replica keeps.
pub const EPOCHS_FUTURE_LIMIT: u64 = 1024;

/// The protocol parameters of a cluster (the `[protocol]` table of `fides-cluster-v2`).
///
/// Local settings (ports, timeouts, queue and connection bounds, upload size) are not here:
/// they change nothing that another replica sees as valid. See `docs/dealer.md` for the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtocolParameters {
    /// Requests considered per epoch, over all proposers: each replica proposes
    /// `⌈batch_size / n⌉`. With `payload_len_max` it bounds the proposals a replica accepts
    /// (the reliable broadcast's longest value).
    pub batch_size: u32,
    /// Epochs between checkpoints: one after every epoch `e` with `(e + 1) % interval == 0`. The
    /// replicas sign checkpoint statements for those epochs only, so they must agree on them.
    pub checkpoint_interval: u64,
    /// Epochs a replica starts ahead of the next one to deliver: which epochs it proposes in, and
    /// which requests it takes as late.
    pub epochs_in_flight: u64,
    /// Epochs ahead whose messages a replica keeps; later ones are dropped. At least
    /// `epochs_in_flight`.
    pub epochs_future_max: u64,
    /// Longest request payload, in bytes: a client's longer request is refused, and it bounds the
    /// proposals a replica accepts.
    pub payload_len_max: u32,
    /// Epochs for which executed request ids are remembered: an id seen again within them is
    /// dropped from a batch, so replicas with different windows would deliver different batches.
    pub dedup_window_epochs: u64,
}

impl ProtocolParameters {
    /// What `dealer init` writes unless told otherwise.
    pub const DEFAULT: ProtocolParameters = ProtocolParameters {
        batch_size: 1_000,
        checkpoint_interval: 64,
        epochs_in_flight: 3,
        epochs_future_max: 16,
        payload_len_max: 64 * 1024,
        dedup_window_epochs: 10_000,
    };

    /// The parameters of a `fides-cluster-v1` file, which has no `[protocol]` table: the values
    /// replicas used before the table existed. Frozen: they never follow [`Self::DEFAULT`], so
    /// that replicas of different versions read the same old file the same way.
    pub const V1: ProtocolParameters = ProtocolParameters {
        batch_size: 1_000,
        checkpoint_interval: 64,
        epochs_in_flight: 3,
        epochs_future_max: 16,
        payload_len_max: 64 * 1024,
        dedup_window_epochs: 10_000,
    };

    /// Why these parameters cannot run a cluster of `quorum`, if they cannot: a bound of the wire
    /// format that an honest replica's messages would break, or a value that stops progress.
    pub fn check(&self, quorum: Quorum) -> Result<(), String> {
        let requests = self.proposal_requests(quorum);
        if self.batch_size == 0 {
            return Err("batch_size is 0".to_string());
        }
        if self.payload_len_max == 0 || self.payload_len_max > PAYLOAD_LEN_LIMIT {
            return Err(format!("payload_len_max = {} is not in 1 ..= {PAYLOAD_LEN_LIMIT}", self.payload_len_max));
        }
        if requests > u64::from(PROPOSAL_REQUESTS_LIMIT) {
            return Err(format!(
                "batch_size = {} makes proposals of {requests} requests for n = {}, above {PROPOSAL_REQUESTS_LIMIT}",
                self.batch_size,
                quorum.n()
            ));
        }
        let proposal = requests * (REQUEST_FRAMING_BYTES + u64::from(self.payload_len_max));
        if proposal > PROPOSAL_BYTES_LIMIT {
            return Err(format!(
                "batch_size = {} and payload_len_max = {} make proposals of up to {proposal} bytes for n = {}, \
                 above {PROPOSAL_BYTES_LIMIT}",
                self.batch_size,
                self.payload_len_max,
                quorum.n()
            ));
        }
        if self.checkpoint_interval == 0 || self.checkpoint_interval > CHECKPOINT_INTERVAL_LIMIT {
            return Err(format!(
                "checkpoint_interval = {} is not in 1 ..= {CHECKPOINT_INTERVAL_LIMIT}",
                self.checkpoint_interval
            ));
        }
        if self.epochs_in_flight == 0 || self.epochs_in_flight > self.epochs_future_max {
            return Err(format!(
                "epochs_in_flight = {} is not in 1 ..= epochs_future_max = {}",
                self.epochs_in_flight, self.epochs_future_max
            ));
        }
        if self.epochs_future_max > EPOCHS_FUTURE_LIMIT {
            return Err(format!("epochs_future_max = {} is above {EPOCHS_FUTURE_LIMIT}", self.epochs_future_max));
        }
        let window = self.dedup_window_epochs.saturating_mul(requests * u64::from(quorum.n()));
        if self.dedup_window_epochs == 0 || window > WINDOW_IDS_LIMIT {
            return Err(format!(
                "dedup_window_epochs = {} is not in 1 ..= {} (the window of ids it keeps, {} per epoch, must stay \
                 within {WINDOW_IDS_LIMIT})",
                self.dedup_window_epochs,
                WINDOW_IDS_LIMIT / (requests * u64::from(quorum.n())),
                requests * u64::from(quorum.n())
            ));
        }
        Ok(())
    }

    /// The requests one replica proposes per epoch: `⌈batch_size / n⌉`, at least 1.
    fn proposal_requests(&self, quorum: Quorum) -> u64 {
        u64::from(self.batch_size).div_ceil(u64::from(quorum.n())).max(1)
    }

    /// The bytes the cluster id covers: every parameter, as 8 little-endian bytes, in the order
    /// of the fields.
    pub(crate) fn id_bytes(&self) -> Vec<u8> {
        [
            u64::from(self.batch_size),
            self.checkpoint_interval,
            self.epochs_in_flight,
            self.epochs_future_max,
            u64::from(self.payload_len_max),
            self.dedup_window_epochs,
        ]
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect()
    }

    /// Each parameter with its name (as in the cluster file), in the order of the fields.
    pub fn named(&self) -> [(&'static str, u64); 6] {
        [
            ("batch_size", u64::from(self.batch_size)),
            ("checkpoint_interval", self.checkpoint_interval),
            ("epochs_in_flight", self.epochs_in_flight),
            ("epochs_future_max", self.epochs_future_max),
            ("payload_len_max", u64::from(self.payload_len_max)),
            ("dedup_window_epochs", self.dedup_window_epochs),
        ]
    }
}

impl Default for ProtocolParameters {
    fn default() -> Self {
        ProtocolParameters::DEFAULT
    }
}

impl fmt::Display for ProtocolParameters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.named().iter().map(|(name, value)| format!("{name} = {value}")).collect();
        f.write_str(&parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quorum(n: u32, t: u32) -> Quorum {
        Quorum::new(n, t).expect("valid quorum")
    }

    #[test]
    fn the_defaults_fit_every_cluster_size() {
        for (n, t) in [(1, 0), (4, 1), (7, 2), (100, 33), (1024, 341)] {
            assert_eq!(ProtocolParameters::DEFAULT.check(quorum(n, t)), Ok(()), "n = {n}");
            assert_eq!(ProtocolParameters::V1.check(quorum(n, t)), Ok(()), "n = {n}");
        }
    }

    #[test]
    fn parameters_that_break_a_wire_bound_or_progress_are_refused() {
        let base = ProtocolParameters::DEFAULT;
        let cases = [
            (ProtocolParameters { batch_size: 0, ..base }, "batch_size is 0"),
            (ProtocolParameters { payload_len_max: 0, ..base }, "payload_len_max = 0"),
            (ProtocolParameters { payload_len_max: PAYLOAD_LEN_LIMIT + 1, ..base }, "payload_len_max = 1048577"),
            (ProtocolParameters { batch_size: 4_000, ..base }, "make proposals of up to"),
            (ProtocolParameters { batch_size: u32::MAX, payload_len_max: 1, ..base }, "above 1048576"),
            (ProtocolParameters { checkpoint_interval: 0, ..base }, "checkpoint_interval = 0"),
            (ProtocolParameters { epochs_in_flight: 0, ..base }, "epochs_in_flight = 0"),
            (ProtocolParameters { epochs_in_flight: 17, ..base }, "epochs_in_flight = 17"),
            (ProtocolParameters { epochs_future_max: 2_000, ..base }, "epochs_future_max = 2000"),
            (ProtocolParameters { dedup_window_epochs: 0, ..base }, "dedup_window_epochs = 0"),
            (ProtocolParameters { dedup_window_epochs: 20_000, ..base }, "dedup_window_epochs = 20000"),
        ];
        for (parameters, needle) in cases {
            let Err(reason) = parameters.check(quorum(1, 0)) else { panic!("{parameters} passed") };
            assert!(reason.contains(needle), "{reason}");
        }
    }
}
