//! Fetching the batches a replica skipped when it installed a checkpoint, verified by the log
//! digest chain.
//!
//! After a catch-up jump to checkpoint `C`, a replica has the cluster's signature on `C.log`, the
//! log digest after `C.epoch`, but not the batches before it that it never delivered. It asks its
//! peers for them, newest first, in pages: a page is the batches `a ..= b` and the digest before
//! `a`. The page is right if chaining the batches from that digest gives, after each batch, the
//! digest the page states and, after `b`, the digest already trusted (`C.log` for the first page,
//! then the digest before the page above). The digest before `a` is then trusted in turn, down to
//! the first missing epoch (or to the genesis digest). A peer can only waste a request: it cannot
//! make a replica store a batch that is not the cluster's.
//!
//! The first missing epoch may be raised while it runs: the services' side, once it installed a
//! snapshot of the services' state after epoch `S`, needs no batch before `S + 1`, and the driver
//! then stops the backfill there (`low = S + 1`; done at once if that is past `high`).

use fides_atomic_broadcast::checkpoint::{log_next, Digest};
use fides_types::codec::{DecodeError, Reader, Wire};

use crate::store::StoredBatch;

/// Batches asked for at once.
pub const PAGE_BATCHES_MAX: u64 = 256;
/// Bytes of batches answered at once (a page is cut from the front to fit).
pub const PAGE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// What is still missing: epochs `low ..= high`, and the digest after `high`, trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backfill {
    /// The first missing epoch.
    pub low: u64,
    /// The last missing epoch.
    pub high: u64,
    /// The log digest after `high`.
    pub trusted: Digest,
}

impl Wire for Backfill {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.low.to_le_bytes());
        out.extend_from_slice(&self.high.to_le_bytes());
        out.extend_from_slice(&self.trusted);
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Backfill { low: reader.u64()?, high: reader.u64()?, trusted: reader.array()? })
    }
}

/// A request for epochs `from ..= to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRequest {
    /// First epoch.
    pub from: u64,
    /// Last epoch.
    pub to: u64,
}

impl Wire for PageRequest {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.from.to_le_bytes());
        out.extend_from_slice(&self.to.to_le_bytes());
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(PageRequest { from: reader.u64()?, to: reader.u64()? })
    }
}

/// An answer: the digest before the first batch, and consecutive batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// The log digest before the first batch.
    pub before: Digest,
    /// The batches with the digest after each.
    pub batches: Vec<StoredBatch>,
}

impl Wire for Page {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.before);
        out.extend_from_slice(&(self.batches.len() as u32).to_le_bytes());
        for batch in &self.batches {
            batch.encode(out);
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let before = reader.array()?;
        let count = reader.u32()?;
        if u64::from(count) > PAGE_BATCHES_MAX {
            return Err(DecodeError::TooLong { len: u64::from(count), max: PAGE_BATCHES_MAX });
        }
        let batches = (0..count).map(|_| StoredBatch::decode(reader)).collect::<Result<_, _>>()?;
        Ok(Page { before, batches })
    }
}

impl Backfill {
    /// The next page to ask for.
    pub fn next_request(&self) -> PageRequest {
        let from = self.high.saturating_sub(PAGE_BATCHES_MAX - 1).max(self.low);
        PageRequest { from, to: self.high }
    }

    /// Check `page` against what is trusted. On success, return its batches (to store) and move
    /// down: `Ok(true)` when nothing is missing any more. `genesis` is the digest before epoch 0.
    pub fn accept(&mut self, page: &Page, genesis: &Digest) -> Result<(Vec<StoredBatch>, bool), &'static str> {
        let (Some(first), Some(last)) = (page.batches.first(), page.batches.last()) else {
            return Err("empty page");
        };
        if last.batch.epoch != self.high || first.batch.epoch < self.low {
            return Err("page is not the one asked for");
        }
        let mut digest = page.before;
        for (k, stored) in page.batches.iter().enumerate() {
            if stored.batch.epoch != first.batch.epoch + k as u64 {
                return Err("page is not consecutive");
            }
            digest = log_next(&digest, &stored.batch);
            if digest != stored.log {
                return Err("a batch does not chain to its stated digest");
            }
        }
        if digest != self.trusted {
            return Err("page does not chain to the trusted digest");
        }
        if first.batch.epoch == 0 && page.before != *genesis {
            return Err("page does not start at the genesis digest");
        }
        let done = first.batch.epoch == self.low;
        if !done {
            self.high = first.batch.epoch - 1;
            self.trusted = page.before;
        }
        Ok((page.batches.clone(), done))
    }
}

/// Cut `batches` (epochs `from ..= to`, all held) from the front to fit [`PAGE_BYTES_MAX`]; the
/// digest before the first one kept is `before_from` for the first, else the previous one's.
pub fn fit_page(before_from: Digest, batches: Vec<StoredBatch>) -> Page {
    let sizes: Vec<usize> = batches.iter().map(|b| b.to_bytes().len()).collect();
    let mut total = 0usize;
    let mut keep_from = batches.len();
    while keep_from > 0 && (keep_from == batches.len() || total + sizes[keep_from - 1] <= PAGE_BYTES_MAX) {
        total += sizes[keep_from - 1];
        keep_from -= 1;
    }
    let before = if keep_from == 0 { before_from } else { batches[keep_from - 1].log };
    Page { before, batches: batches[keep_from..].to_vec() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fides_atomic_broadcast::checkpoint::log_genesis;
    use fides_atomic_broadcast::epoch::{Batch, Request};

    fn chain(n: u64) -> (Digest, Vec<StoredBatch>) {
        let genesis = log_genesis(b"test");
        let mut digest = genesis;
        let batches = (0..n)
            .map(|epoch| {
                let batch =
                    Batch { epoch, time: epoch, requests: vec![Request { client: 1, id: epoch, payload: vec![7] }] };
                digest = log_next(&digest, &batch);
                StoredBatch { batch, log: digest }
            })
            .collect();
        (genesis, batches)
    }

    #[test]
    fn pages_are_accepted_down_to_the_genesis_and_forgeries_are_not() {
        let (genesis, batches) = chain(600);
        let mut backfill = Backfill { low: 0, high: 599, trusted: batches[599].log };
        let mut stored = 0;
        loop {
            let request = backfill.next_request();
            let before = if request.from == 0 { genesis } else { batches[request.from as usize - 1].log };
            let page = fit_page(before, batches[request.from as usize..=request.to as usize].to_vec());

            let mut forged = page.clone();
            forged.batches[0].batch.requests[0].payload = vec![8];
            assert!(backfill.clone().accept(&forged, &genesis).is_err(), "a changed batch is refused");
            let mut restated = forged.clone();
            let mut digest = restated.before;
            for b in &mut restated.batches {
                digest = log_next(&digest, &b.batch);
                b.log = digest;
            }
            assert!(backfill.clone().accept(&restated, &genesis).is_err(), "a re-chained forgery is refused");

            let (got, done) = backfill.accept(&page, &genesis).expect("the right page");
            stored += got.len();
            if done {
                break;
            }
        }
        assert_eq!(stored, 600);
    }

    #[test]
    fn a_page_decoder_refuses_truncations() {
        let (genesis, batches) = chain(3);
        let bytes = Page { before: genesis, batches }.to_bytes();
        for len in 0..bytes.len() {
            assert!(Page::from_bytes(&bytes[..len]).is_err());
        }
    }
}
