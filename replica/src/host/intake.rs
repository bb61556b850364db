//! The host's intake of delivered batches: the driver hands each batch over in memory once it is
//! durable; the store is read back only to catch up (at start, after a dropped hand-over, or when
//! a batch arrives ahead of a gap).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fides_atomic_broadcast::epoch::Batch;

use crate::store::{BatchReader, StoreError};

/// Delivered batches kept in memory ahead of the next epoch to apply (past that, the store has
/// them).
pub const DELIVERED_MAX: usize = 4096;

/// Set when a hand-over was dropped: the intake then reads the store. Shared with the sink.
#[derive(Clone, Debug, Default)]
pub struct Lag(Arc<AtomicBool>);

impl Lag {
    /// A batch was dropped on its way in.
    pub fn mark(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether a batch was dropped since the last call (and forget it).
    fn take(&self) -> bool {
        self.0.swap(false, Ordering::AcqRel)
    }
}

/// The batches handed over and not applied yet, and where to read the others.
pub struct Intake {
    delivered: BTreeMap<u64, Arc<Batch>>,
    lag: Lag,
    store: BatchReader,
}

impl Intake {
    /// An intake that first catches up from `store`.
    pub fn new(store: BatchReader) -> Intake {
        let lag = Lag::default();
        lag.mark();
        Intake { delivered: BTreeMap::new(), lag, store }
    }

    /// The flag the sink sets when it drops a batch.
    pub fn lag(&self) -> Lag {
        self.lag.clone()
    }

    /// Keep a batch handed over, unless it is applied already (`next_epoch` is the next to apply)
    /// or too many wait (then the store has it).
    pub fn on_batch(&mut self, next_epoch: u64, batch: Arc<Batch>) {
        if batch.epoch < next_epoch {
            return;
        }
        if self.delivered.len() >= DELIVERED_MAX && !self.delivered.contains_key(&batch.epoch) {
            self.lag.mark();
            return;
        }
        self.delivered.insert(batch.epoch, batch);
    }

    /// Up to `max` batches in epoch order from `next_epoch` with no gap: those handed over, or
    /// (catching up) those read back from the store.
    pub fn next_batches(&mut self, next_epoch: u64, max: usize) -> Result<Vec<Arc<Batch>>, StoreError> {
        let in_memory = run_from(&self.delivered, next_epoch, max);
        if !in_memory.is_empty() {
            return Ok(in_memory);
        }
        let gap = self.delivered.keys().next().is_some_and(|first| *first > next_epoch);
        if !self.lag.take() && !gap {
            return Ok(Vec::new());
        }
        let stored = self.store.batches(next_epoch, max)?;
        let read = stored.len();
        let batches: Vec<Arc<Batch>> = stored
            .into_iter()
            .enumerate()
            .take_while(|(k, b)| b.batch.epoch == next_epoch + *k as u64)
            .map(|(_, b)| Arc::new(b.batch))
            .collect();
        if read == max && batches.len() == read {
            // There may be more: read on next time.
            self.lag.mark();
        }
        Ok(batches)
    }

    /// Forget what is applied: everything before `next_epoch`.
    pub fn applied(&mut self, next_epoch: u64) {
        self.delivered = self.delivered.split_off(&next_epoch);
    }

    /// The agreed time of `epoch`'s batch, from memory or the store.
    pub fn time_of(&self, epoch: u64) -> Result<Option<u64>, StoreError> {
        if let Some(batch) = self.delivered.get(&epoch) {
            return Ok(Some(batch.time));
        }
        Ok(self.store.batch(epoch)?.map(|b| b.batch.time))
    }
}

/// The batches of `delivered` from `from` on with no gap, at most `max`.
fn run_from(delivered: &BTreeMap<u64, Arc<Batch>>, from: u64, max: usize) -> Vec<Arc<Batch>> {
    delivered
        .range(from..)
        .take(max)
        .enumerate()
        .take_while(|(k, (epoch, _))| **epoch == from + *k as u64)
        .map(|(_, (_, batch))| Arc::clone(batch))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Derived, Store, StoredBatch};

    fn batch(epoch: u64) -> Batch {
        Batch { epoch, time: 100 + epoch, requests: Vec::new() }
    }

    /// Write the batches of `epochs` to `store`, as the driver does.
    fn write(store: &mut Store, epochs: std::ops::Range<u64>) {
        let batches = epochs.map(|e| StoredBatch { batch: batch(e), log: [0; 32] }).collect();
        store.commit(&[], &Derived { batches, ..Derived::default() }).expect("commit");
    }

    fn epochs(batches: &[Arc<Batch>]) -> Vec<u64> {
        batches.iter().map(|b| b.epoch).collect()
    }

    #[test]
    fn the_intake_catches_up_from_the_store_then_takes_batches_from_memory() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (mut store, _) = Store::open(dir.path(), [3; 32]).expect("open a store");
        write(&mut store, 0..3);
        let mut intake = Intake::new(store.reader());
        assert_eq!(epochs(&intake.next_batches(0, 64).expect("read")), vec![0, 1, 2], "caught up at start");
        intake.applied(3);
        assert!(intake.next_batches(3, 64).expect("read").is_empty(), "caught up: nothing more");
        // Handed over in memory (not in this store): taken without reading the store.
        intake.on_batch(3, Arc::new(batch(3)));
        intake.on_batch(3, Arc::new(batch(4)));
        assert_eq!(epochs(&intake.next_batches(3, 64).expect("read")), vec![3, 4]);
    }

    #[test]
    fn a_dropped_hand_over_is_read_back_from_the_store() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (mut store, _) = Store::open(dir.path(), [3; 32]).expect("open a store");
        write(&mut store, 0..2);
        let mut intake = Intake::new(store.reader());
        assert_eq!(epochs(&intake.next_batches(0, 1).expect("read")), vec![0], "one at a time");
        intake.applied(1);
        assert_eq!(epochs(&intake.next_batches(1, 1).expect("read")), vec![1], "a full read reads on");
        intake.applied(2);
        assert!(intake.next_batches(2, 1).expect("read").is_empty());
        // Epoch 2 was dropped on its way in, epoch 3 came in memory: the gap is read back.
        write(&mut store, 2..4);
        intake.on_batch(2, Arc::new(batch(3)));
        assert_eq!(epochs(&intake.next_batches(2, 64).expect("read")), vec![2, 3], "the gap, from the store");
        intake.applied(4);
        // A dropped last batch: only the flag tells.
        write(&mut store, 4..5);
        assert!(intake.next_batches(4, 64).expect("read").is_empty(), "no flag, no read");
        intake.lag().mark();
        assert_eq!(epochs(&intake.next_batches(4, 64).expect("read")), vec![4], "the flag makes it read");
        intake.applied(5);
        intake.on_batch(5, Arc::new(batch(5)));
        assert_eq!(epochs(&intake.next_batches(5, 64).expect("read")), vec![5], "then memory again");
    }
}
