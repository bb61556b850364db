//! The CRL, made in `begin_epoch`: when one is due (a revocation or an update since the last),
//! at every epoch that is a multiple of the checkpoint interval, and at the first epoch.

use fides_service::{EpochStart, Outcome, SchemeId, StoreError, Tables};
use fides_types::codec::Wire;

use super::flow::revoked_entry;
use super::store::{crl_key, delete, get_row, put, CrlMeta, Table, CRL_META};
use super::{Service, CRL_VALIDITY_MS};
use crate::{crl_tbs, CrlParams, RevocationReason, Revoked, Serial, UnixTime, REVOKED_MAX};

impl Service {
    pub(crate) fn publish_crl(&self, tables: &mut dyn Tables, at: &EpochStart) -> Result<Vec<Outcome>, StoreError> {
        let meta: CrlMeta = get_row(tables, Table::Crl, CRL_META)?.unwrap_or_default();
        let interval = self.config.checkpoint_interval;
        let checkpoint = interval > 0 && at.epoch.is_multiple_of(interval);
        if !(meta.due || checkpoint || meta.number == 0) {
            return Ok(Vec::new());
        }
        let mut revoked = Vec::new();
        // Every serial: its magnitude has at most 20 bytes, so it sorts below 21 bytes of 0xff.
        for (serial, entry) in tables.range(Table::Revoked.name(), &[], &[0xff; 21], REVOKED_MAX)? {
            let (at_ms, reason) = revoked_entry(&entry)?;
            let Ok(serial) = Serial::from_be_bytes(&serial) else {
                return Err(StoreError::Corrupt {
                    table: Table::Revoked.name().to_owned(),
                    error: fides_types::codec::DecodeError::Invalid { what: "serial", value: 0 },
                });
            };
            revoked.push(Revoked {
                serial,
                revoked_at: UnixTime::from_millis(at_ms),
                // RFC 5280 prefers the extension left out to `unspecified`.
                reason: (reason != RevocationReason::Unspecified).then_some(reason),
            });
        }
        let this_update = UnixTime::from_millis(at.time_ms);
        let params = CrlParams {
            this_update,
            next_update: UnixTime::from_millis(at.time_ms.saturating_add(CRL_VALIDITY_MS)),
            number: meta.number + 1,
            revoked,
        };
        // The bounds are kept by the requests (at most REVOKED_MAX revoked serials, revocation
        // times not after the agreed time): a CRL that does not encode is not made, and the
        // next epoch tries again.
        let Ok(unsigned) = crl_tbs(&self.config.root, &params) else { return Ok(Vec::new()) };
        let tbs = unsigned.tbs_der().to_vec();
        put(tables, Table::Crl, &crl_key(params.number), &tbs)?;
        if params.number > 2 {
            delete(tables, Table::Crl, &crl_key(params.number - 2))?;
        }
        let meta = CrlMeta { number: params.number, last_ms: at.time_ms, due: false };
        put(tables, Table::Crl, CRL_META, &meta.to_bytes())?;
        Ok(vec![Outcome::ThresholdSign { scheme: SchemeId::ThresholdRsa, message: tbs }])
    }
}
