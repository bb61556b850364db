//! Messages of binary agreement and their wire encoding.

use fides_crypto::blsttc::SIG_SIZE;
use fides_types::codec::{put_bytes, DecodeError, Reader, Wire};
use fides_types::Round;

/// The longest justification the decoder accepts; the instance's own bound may be lower.
pub const JUSTIFICATION_WIRE_MAX: usize = 64 * 1024;

/// A subset of `{false, true}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BoolSet(pub(crate) u8);

impl BoolSet {
    /// `{false, true}`.
    pub const BOTH: BoolSet = BoolSet(0b11);

    /// The set `{value}`.
    pub fn single_of(value: bool) -> Self {
        BoolSet(1 << u8::from(value))
    }

    /// Add `value`.
    pub fn insert(&mut self, value: bool) {
        self.0 |= 1 << u8::from(value);
    }

    /// Add every value of `other`.
    pub fn extend(&mut self, other: BoolSet) {
        self.0 |= other.0;
    }

    /// Whether `value` is in the set.
    pub fn contains(self, value: bool) -> bool {
        self.0 & (1 << u8::from(value)) != 0
    }

    /// Whether every value of `self` is in `other`.
    pub fn is_subset(self, other: BoolSet) -> bool {
        self.0 & !other.0 == 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The value, if the set has exactly one.
    pub fn single(self) -> Option<bool> {
        match self.0 {
            0b01 => Some(false),
            0b10 => Some(true),
            _ => None,
        }
    }

    /// The bits, `0..=3`.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// The set with these bits, if they are `0..=3`.
    pub fn from_bits(bits: u8) -> Option<BoolSet> {
        (bits <= 0b11).then_some(BoolSet(bits))
    }
}

/// A message of binary agreement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A vote in the BV-broadcast of a round; a vote for 1 carries a justification in validated
    /// agreement.
    BVal {
        /// Round.
        round: Round,
        /// Value voted.
        value: bool,
        /// Justification (empty unless validated and `value`).
        justification: Vec<u8>,
    },
    /// The first value a replica added to `bin_values`.
    Aux {
        /// Round.
        round: Round,
        /// Value.
        value: bool,
    },
    /// The sender's `bin_values` when its AUX quorum was complete.
    Conf {
        /// Round.
        round: Round,
        /// The set, never empty.
        values: BoolSet,
    },
    /// A share of the round's threshold coin.
    Coin {
        /// Round.
        round: Round,
        /// Signature share on `(instance, round)`, compressed. It is decompressed (an expensive
        /// subgroup check) only when it is one of the `t + 1` shares being combined.
        share: [u8; SIG_SIZE],
    },
    /// The sender dropped messages of `round` as too far ahead, and now needs them.
    Resend {
        /// Round.
        round: Round,
    },
    /// The sender decided `value`.
    Term {
        /// Value decided.
        value: bool,
        /// Justification (empty unless validated and `value`).
        justification: Vec<u8>,
    },
}

const TAG_BVAL: u8 = 0;
const TAG_AUX: u8 = 1;
const TAG_CONF: u8 = 2;
const TAG_COIN: u8 = 3;
const TAG_TERM: u8 = 4;
const TAG_RESEND: u8 = 5;

impl Wire for Message {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Message::BVal { round, value, justification } => {
                out.push(TAG_BVAL);
                out.extend_from_slice(&round.0.to_le_bytes());
                out.push(u8::from(*value));
                put_bytes(out, justification);
            }
            Message::Aux { round, value } => {
                out.push(TAG_AUX);
                out.extend_from_slice(&round.0.to_le_bytes());
                out.push(u8::from(*value));
            }
            Message::Conf { round, values } => {
                out.push(TAG_CONF);
                out.extend_from_slice(&round.0.to_le_bytes());
                out.push(values.bits());
            }
            Message::Coin { round, share } => {
                out.push(TAG_COIN);
                out.extend_from_slice(&round.0.to_le_bytes());
                out.extend_from_slice(share);
            }
            Message::Resend { round } => {
                out.push(TAG_RESEND);
                out.extend_from_slice(&round.0.to_le_bytes());
            }
            Message::Term { value, justification } => {
                out.push(TAG_TERM);
                out.push(u8::from(*value));
                put_bytes(out, justification);
            }
        }
    }

    fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let tag = reader.u8()?;
        match tag {
            TAG_BVAL => Ok(Message::BVal {
                round: Round(reader.u32()?),
                value: reader.bool()?,
                justification: reader.bytes(JUSTIFICATION_WIRE_MAX)?.to_vec(),
            }),
            TAG_AUX => Ok(Message::Aux { round: Round(reader.u32()?), value: reader.bool()? }),
            TAG_CONF => {
                let round = Round(reader.u32()?);
                let bits = reader.u8()?;
                if bits == 0 || bits > BoolSet::BOTH.0 {
                    return Err(DecodeError::Invalid { what: "value set", value: u64::from(bits) });
                }
                Ok(Message::Conf { round, values: BoolSet(bits) })
            }
            TAG_COIN => {
                let round = Round(reader.u32()?);
                Ok(Message::Coin { round, share: reader.array::<SIG_SIZE>()? })
            }
            TAG_TERM => Ok(Message::Term {
                value: reader.bool()?,
                justification: reader.bytes(JUSTIFICATION_WIRE_MAX)?.to_vec(),
            }),
            TAG_RESEND => Ok(Message::Resend { round: Round(reader.u32()?) }),
            other => Err(DecodeError::Invalid { what: "message tag", value: u64::from(other) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fides_crypto::blsttc::SignatureShare;
    use rand::{Rng, RngCore, SeedableRng};

    #[test]
    fn every_message_round_trips() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let share = rng.gen::<SignatureShare>().to_bytes();
        let messages = [
            Message::BVal { round: Round(3), value: true, justification: vec![1, 2, 3] },
            Message::Aux { round: Round(u32::MAX), value: false },
            Message::Conf { round: Round(2), values: BoolSet::BOTH },
            Message::Coin { round: Round(5), share },
            Message::Term { value: false, justification: Vec::new() },
            Message::Resend { round: Round(9) },
        ];
        for message in messages {
            assert_eq!(Message::from_bytes(&message.to_bytes()), Ok(message));
        }
    }

    #[test]
    fn random_bytes_never_panic_the_decoder() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        for len in 0..2000 {
            let mut bytes = vec![0u8; len % 200];
            rng.fill_bytes(&mut bytes);
            if let Some(first) = bytes.first_mut() {
                *first %= 7;
            }
            let _ = Message::from_bytes(&bytes);
        }
        assert!(Message::from_bytes(&[TAG_CONF, 0, 0, 0, 0, 0]).is_err());
        assert!(Message::from_bytes(&[TAG_AUX, 0, 0, 0, 0, 2]).is_err());
    }

    /// Any bytes that decode re-encode to themselves: one message, one encoding. Checked on
    /// valid encodings with bytes flipped, cut off or appended.
    #[test]
    fn mutated_encodings_decode_to_the_same_bytes_or_not_at_all() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut decoded = 0;
        for _ in 0..20_000 {
            let round = Round(rng.gen_range(0..4));
            let message = match rng.gen_range(0..6) {
                0 => Message::BVal { round, value: rng.gen(), justification: vec![7; rng.gen_range(0..8)] },
                1 => Message::Aux { round, value: rng.gen() },
                2 => Message::Conf { round, values: BoolSet(rng.gen_range(1..4)) },
                3 => Message::Coin { round, share: [rng.gen(); SIG_SIZE] },
                4 => Message::Term { value: rng.gen(), justification: vec![1; rng.gen_range(0..8)] },
                _ => Message::Resend { round },
            };
            let mut bytes = message.to_bytes();
            match rng.gen_range(0..3) {
                0 => {
                    let at = rng.gen_range(0..bytes.len());
                    bytes[at] ^= 1 << rng.gen_range(0..8);
                }
                1 => bytes.truncate(rng.gen_range(0..bytes.len())),
                _ => bytes.push(rng.gen()),
            }
            if let Ok(again) = Message::from_bytes(&bytes) {
                decoded += 1;
                assert_eq!(again.to_bytes(), bytes, "{again:?} has two encodings");
            }
        }
        assert!(decoded > 1_000, "the mutations should often stay valid: {decoded}");
    }

    #[test]
    fn bool_set_operations() {
        let mut set = BoolSet::default();
        assert!(set.is_empty());
        set.insert(true);
        assert_eq!(set.single(), Some(true));
        assert!(set.is_subset(BoolSet::BOTH) && !BoolSet::BOTH.is_subset(set));
        set.extend(BoolSet::single_of(false));
        assert_eq!(set, BoolSet::BOTH);
    }
}
