//! The scalar inputs: serial numbers and times. Both are parameters, never read from a clock or
//! drawn at random, so that every replica encodes the same bytes.

use std::time::Duration;

use der::asn1::{GeneralizedTime, UtcTime};
use der::DateTime;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Time;

use crate::InputError;

/// A certificate serial number: a positive integer whose DER value is at most 20 octets
/// (RFC 5280 §4.1.2.2), so at most 159 bits. Ordered numerically.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Serial {
    /// Big-endian magnitude without leading zeros; never empty, never zero.
    magnitude: Vec<u8>,
}

impl Ord for Serial {
    fn cmp(&self, other: &Serial) -> std::cmp::Ordering {
        // Without leading zeros, the longer magnitude is the larger number.
        (self.magnitude.len(), &self.magnitude).cmp(&(other.magnitude.len(), &other.magnitude))
    }
}

impl PartialOrd for Serial {
    fn partial_cmp(&self, other: &Serial) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Serial {
    /// The serial whose big-endian magnitude is `bytes` (leading zeros are ignored).
    pub fn from_be_bytes(bytes: &[u8]) -> Result<Serial, InputError> {
        let first = bytes.iter().position(|byte| *byte != 0).ok_or(InputError::SerialZero)?;
        let magnitude = &bytes[first..];
        // A set top bit takes a leading zero octet in DER, which counts towards the 20.
        let octets = magnitude.len() + usize::from(magnitude[0] & 0x80 != 0);
        if octets > SERIAL_OCTETS_MAX {
            return Err(InputError::SerialTooLong { octets });
        }
        Ok(Serial { magnitude: magnitude.to_vec() })
    }

    /// The serial `value` (must not be zero).
    pub fn from_u64(value: u64) -> Result<Serial, InputError> {
        Serial::from_be_bytes(&value.to_be_bytes())
    }

    /// The big-endian magnitude, without leading zeros.
    pub fn as_be_bytes(&self) -> &[u8] {
        &self.magnitude
    }

    pub(crate) fn to_x509(&self) -> Result<SerialNumber, InputError> {
        Ok(SerialNumber::new(&self.magnitude)?)
    }
}

/// RFC 5280 §4.1.2.2: "Conforming CAs MUST NOT use serialNumber values longer than 20 octets."
pub const SERIAL_OCTETS_MAX: usize = 20;

/// A time in whole seconds since 1970-01-01T00:00:00Z (UTC, no leap seconds). The service passes
/// its agreed time; X.509 times have a resolution of one second.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixTime(pub u64);

impl UnixTime {
    /// The whole second that contains `ms` milliseconds since 1970 (rounded down), as the agreed
    /// time of an epoch is kept in milliseconds.
    pub fn from_millis(ms: u64) -> UnixTime {
        UnixTime(ms / 1000)
    }

    /// Seconds since 1970.
    pub fn seconds(self) -> u64 {
        self.0
    }

    /// The X.509 `Time`: `UTCTime` through 2049, `GeneralizedTime` from 2050 (RFC 5280
    /// §4.1.2.5), both in UTC with seconds and no fraction.
    pub(crate) fn to_x509(self) -> Result<Time, InputError> {
        let out_of_range = |_| InputError::TimeOutOfRange { seconds: self.0 };
        let date = DateTime::from_unix_duration(Duration::from_secs(self.0)).map_err(out_of_range)?;
        if date.year() <= UtcTime::MAX_YEAR {
            Ok(Time::UtcTime(UtcTime::from_date_time(date).map_err(out_of_range)?))
        } else {
            Ok(Time::GeneralTime(GeneralizedTime::from_date_time(date)))
        }
    }
}

/// Refuse `end <= start`.
pub(crate) fn check_order(field: &'static str, start: UnixTime, end: UnixTime) -> Result<(), InputError> {
    if end <= start {
        return Err(InputError::TimeOrder { field, start: start.0, end: end.0 });
    }
    Ok(())
}
