//! The wire codec: a small canonical binary encoding with bounded decoding.
//!
//! Integers are little-endian with fixed widths; byte strings are a `u32` length then the bytes.
//! The decoder refuses any length above the caller's bound before it allocates, and refuses
//! trailing bytes, so one message has exactly one encoding.

/// Why bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended early.
    #[error("input ends after {at} bytes, {needed} more needed")]
    Truncated {
        /// Offset where the read started.
        at: usize,
        /// Bytes missing.
        needed: usize,
    },
    /// A length above its bound.
    #[error("length {len} is above the bound {max}")]
    TooLong {
        /// Length announced.
        len: u64,
        /// Bound.
        max: u64,
    },
    /// A tag or value outside its range.
    #[error("invalid {what}: {value}")]
    Invalid {
        /// What was read.
        what: &'static str,
        /// The value found.
        value: u64,
    },
    /// Bytes left after the message.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

/// A type with one canonical encoding on the wire.
pub trait Wire: Sized {
    /// Append the encoding to `out`.
    fn encode(&self, out: &mut Vec<u8>);

    /// Decode from a reader, consuming exactly this value's bytes.
    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError>;

    /// The encoding as a new vector.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decode a whole buffer; trailing bytes are an error.
    fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(bytes);
        let value = Self::decode(&mut reader)?;
        reader.finish()?;
        Ok(value)
    }
}

/// Reads a byte slice front to back.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    /// Take the next `len` bytes.
    pub fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let rest = &self.bytes[self.at..];
        if rest.len() < len {
            return Err(DecodeError::Truncated { at: self.at, needed: len - rest.len() });
        }
        self.at += len;
        Ok(&rest[..len])
    }

    /// Take a fixed-size array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Read one byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    /// Read a little-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// Read a little-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Read a boolean, encoded as 0 or 1.
    pub fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(DecodeError::Invalid { what: "bool", value: u64::from(other) }),
        }
    }

    /// Read a length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()?;
        if len as usize > max {
            return Err(DecodeError::TooLong { len: u64::from(len), max: max as u64 });
        }
        self.take(len as usize)
    }

    /// Succeed only if every byte was read.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.bytes.len() - self.at {
            0 => Ok(()),
            left => Err(DecodeError::Trailing(left)),
        }
    }
}

/// Append a length-prefixed byte string.
///
/// Panics if `bytes` is longer than `u32::MAX`: callers bound their lengths far below that.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("wire byte strings are bounded far below 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Append a count or length as a `u32`.
///
/// Panics above `u32::MAX`: callers bound their collections far below that.
pub fn put_len(out: &mut Vec<u8>, len: usize) {
    let len = u32::try_from(len).expect("encoded collections are bounded far below 4 Gi items");
    out.extend_from_slice(&len.to_le_bytes());
}

/// Append a sequence: its count, then each item as `put` writes it.
pub fn put_seq<T>(out: &mut Vec<u8>, items: impl ExactSizeIterator<Item = T>, mut put: impl FnMut(&mut Vec<u8>, T)) {
    put_len(out, items.len());
    for item in items {
        put(out, item);
    }
}

/// Read a sequence written by [`put_seq`] of at most `max` items. The count is also checked
/// against the bytes left (every item takes at least one), so a corrupt count cannot make the
/// reader allocate more than the input's length.
pub fn get_seq<T>(
    reader: &mut Reader<'_>,
    max: usize,
    mut get: impl FnMut(&mut Reader<'_>) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    let count = reader.count(max)?;
    (0..count).map(|_| get(reader)).collect()
}

/// Append an option: `0`, or `1` then the value.
pub fn put_option<T>(out: &mut Vec<u8>, value: Option<T>, put: impl FnOnce(&mut Vec<u8>, T)) {
    match value {
        None => out.push(0),
        Some(value) => {
            out.push(1);
            put(out, value);
        }
    }
}

/// Read an option written by [`put_option`].
pub fn get_option<T>(
    reader: &mut Reader<'_>,
    get: impl FnOnce(&mut Reader<'_>) -> Result<T, DecodeError>,
) -> Result<Option<T>, DecodeError> {
    match reader.bool()? {
        false => Ok(None),
        true => get(reader).map(Some),
    }
}

impl Reader<'_> {
    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    /// Read a `u32` count of items that take at least one byte each: at most `max`, and at most
    /// the bytes left.
    pub fn count(&mut self, max: usize) -> Result<usize, DecodeError> {
        let count = self.u32()? as usize;
        let bound = max.min(self.remaining());
        if count > bound {
            return Err(DecodeError::TooLong { len: count as u64, max: bound as u64 });
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_refuses_long_lengths_before_allocating() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = Reader::new(&buf).bytes(64).expect_err("length above bound");
        assert_eq!(err, DecodeError::TooLong { len: u64::from(u32::MAX), max: 64 });
    }

    #[test]
    fn reader_reports_truncation_and_trailing_bytes() {
        let mut reader = Reader::new(&[1, 2, 3]);
        assert!(matches!(reader.u32(), Err(DecodeError::Truncated { at: 0, needed: 1 })));
        let mut reader = Reader::new(&[1, 2]);
        assert_eq!(reader.bool(), Ok(true));
        assert_eq!(reader.finish(), Err(DecodeError::Trailing(1)));
    }
}
