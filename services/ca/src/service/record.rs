//! The records the CA signs: leaves of the epoch's certificate (the transparency log), each the
//! service's canonical bytes, which a client checks with its inclusion proof.
//!
//! | record | bytes |
//! | --- | --- |
//! | issued | `0x01 ‖ serial ‖ TBSCertificate DER` |
//! | revoked | `0x02 ‖ serial ‖ revocation time ms u64 LE ‖ reason u8` |
//! | status | `0x03 ‖ serial ‖ status u8 (0 good, 1 revoked, 2 unknown) ‖ agreed time ms u64 LE ‖ [revocation time ms u64 LE ‖ reason u8, if revoked]` |
//!
//! A serial is its length (u8, 1 to 20) then its big-endian magnitude without leading zeros; a
//! reason is RFC 5280's `CRLReason` number. The TBS is the exact bytes the replicas
//! threshold-sign: with the signature it makes the certificate.

use fides_types::codec::{DecodeError, Reader, Wire};

use super::request::{get_serial, put_serial, RequestError};
use crate::{RevocationReason, Serial};

/// At most this many bytes of TBSCertificate in an issued record (names and alternative names
/// are bounded far below).
pub const TBS_BYTES_MAX: usize = 32 * 1024;

/// A certificate the CA issued: its serial and the TBSCertificate it signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedRecord {
    /// The serial.
    pub serial: Serial,
    /// The TBSCertificate's DER.
    pub tbs: Vec<u8>,
}

/// A certificate the CA revoked (by a revocation or replaced by an update).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedRecord {
    /// The serial.
    pub serial: Serial,
    /// The agreed time of the revocation, ms since 1970.
    pub revoked_at_ms: u64,
    /// Why.
    pub reason: RevocationReason,
}

/// What the CA says of a serial at an agreed time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateStatus {
    /// Issued and neither revoked nor replaced.
    Good,
    /// Revoked (or replaced by an update: reason `superseded`).
    Revoked {
        /// The agreed time of the revocation, ms since 1970.
        at_ms: u64,
        /// Why.
        reason: RevocationReason,
    },
    /// Never issued by this CA.
    Unknown,
}

/// A signed status of a serial.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusRecord {
    /// The serial.
    pub serial: Serial,
    /// Its status.
    pub status: CertificateStatus,
    /// The agreed time at which the status holds, ms since 1970.
    pub time_ms: u64,
}

/// Any record of the CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// `0x01`.
    Issued(IssuedRecord),
    /// `0x02`.
    Revoked(RevokedRecord),
    /// `0x03`.
    Status(StatusRecord),
}

impl Record {
    /// The serial it is about.
    pub fn serial(&self) -> &Serial {
        match self {
            Record::Issued(record) => &record.serial,
            Record::Revoked(record) => &record.serial,
            Record::Status(record) => &record.serial,
        }
    }
}

fn serial(reader: &mut Reader<'_>) -> Result<Serial, DecodeError> {
    get_serial(reader).map_err(|error| match error {
        RequestError::Decode(error) => error,
        _ => DecodeError::Invalid { what: "serial", value: 0 },
    })
}

fn reason(reader: &mut Reader<'_>) -> Result<RevocationReason, DecodeError> {
    let code = reader.u8()?;
    RevocationReason::from_code(code).ok_or(DecodeError::Invalid { what: "revocation reason", value: code.into() })
}

impl Wire for Record {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Record::Issued(record) => {
                out.push(1);
                put_serial(out, &record.serial);
                out.extend_from_slice(&record.tbs);
            }
            Record::Revoked(record) => {
                out.push(2);
                put_serial(out, &record.serial);
                out.extend_from_slice(&record.revoked_at_ms.to_le_bytes());
                out.push(record.reason.code());
            }
            Record::Status(record) => {
                out.push(3);
                put_serial(out, &record.serial);
                let status = match record.status {
                    CertificateStatus::Good => 0,
                    CertificateStatus::Revoked { .. } => 1,
                    CertificateStatus::Unknown => 2,
                };
                out.push(status);
                out.extend_from_slice(&record.time_ms.to_le_bytes());
                if let CertificateStatus::Revoked { at_ms, reason } = record.status {
                    out.extend_from_slice(&at_ms.to_le_bytes());
                    out.push(reason.code());
                }
            }
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match reader.u8()? {
            1 => {
                let serial = serial(reader)?;
                let len = reader.remaining();
                if len > TBS_BYTES_MAX {
                    return Err(DecodeError::TooLong { len: len as u64, max: TBS_BYTES_MAX as u64 });
                }
                let tbs = reader.take(len)?;
                // One whole TBSCertificate in strict DER, so a cut record is refused.
                <x509_cert::TbsCertificate as der::Decode>::from_der(tbs)
                    .map_err(|_| DecodeError::Invalid { what: "TBSCertificate DER", value: len as u64 })?;
                Record::Issued(IssuedRecord { serial, tbs: tbs.to_vec() })
            }
            2 => Record::Revoked(RevokedRecord {
                serial: serial(reader)?,
                revoked_at_ms: reader.u64()?,
                reason: reason(reader)?,
            }),
            3 => {
                let serial = serial(reader)?;
                let code = reader.u8()?;
                let time_ms = reader.u64()?;
                let status = match code {
                    0 => CertificateStatus::Good,
                    1 => CertificateStatus::Revoked { at_ms: reader.u64()?, reason: reason(reader)? },
                    2 => CertificateStatus::Unknown,
                    other => return Err(DecodeError::Invalid { what: "certificate status", value: other.into() }),
                };
                Record::Status(StatusRecord { serial, status, time_ms })
            }
            other => return Err(DecodeError::Invalid { what: "CA record", value: other.into() }),
        })
    }
}
