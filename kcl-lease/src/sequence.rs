//! Extended sequence numbers: a Kinesis sequence number plus a KPL sub-sequence number, or one of
//! the sentinel values the Java KCL stores in the `checkpoint` column.
//!
//! Kinesis sequence numbers are decimal strings of up to 129 digits (real ones are about 56
//! digits, more than a `u128` holds), so they are kept as normalised digit strings and compared
//! numerically: a longer number (without leading zeros) is larger, equal lengths compare
//! lexicographically.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::ParseSequenceError;

/// A Kinesis sequence number: a non-empty decimal string without leading zeros.
///
/// Ordering is numeric, whatever the length. Cloning is cheap (the digits are shared).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SequenceNumber(Arc<str>);

impl SequenceNumber {
    /// Parses a decimal sequence number. Leading zeros are removed (`"007"` is `7`).
    pub fn new(s: &str) -> Result<Self, ParseSequenceError> {
        if s.is_empty() || s.len() > 256 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseSequenceError(s.chars().take(80).collect()));
        }
        let trimmed = s.trim_start_matches('0');
        Ok(Self(if trimmed.is_empty() {
            Arc::from("0")
        } else {
            Arc::from(trimmed)
        }))
    }

    /// The decimal digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0
            .len()
            .cmp(&other.0.len())
            .then_with(|| self.0.cmp(&other.0))
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SequenceNumber({})", self.0)
    }
}

impl FromStr for SequenceNumber {
    type Err = ParseSequenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A position in a shard as the lease table records it: a sentinel, or a sequence number with a
/// sub-sequence number (non-zero only inside KPL-aggregated records).
///
/// Ordering follows the Java KCL: `AT_TIMESTAMP` < `TRIM_HORIZON` < `LATEST` < every real
/// sequence number < `SHARD_END`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ExtendedSequenceNumber {
    /// Start from the oldest record still in the shard (`TRIM_HORIZON`).
    TrimHorizon,
    /// Start after the newest record at the time the shard is first read (`LATEST`).
    Latest,
    /// Start at the first record at or after the application's configured timestamp
    /// (`AT_TIMESTAMP`; the timestamp itself is configuration, not stored in the lease).
    AtTimestamp,
    /// The shard is closed and every record in it was processed (`SHARD_END`).
    ShardEnd,
    /// A record: its sequence number, and its sub-sequence number inside an aggregate (0 if not
    /// aggregated).
    Sequence {
        /// The Kinesis sequence number.
        sequence: SequenceNumber,
        /// The KPL sub-sequence number.
        sub_sequence: u64,
    },
}

impl ExtendedSequenceNumber {
    /// The string stored in the lease table's `checkpoint` attribute.
    pub const TRIM_HORIZON: &'static str = "TRIM_HORIZON";
    /// See [`ExtendedSequenceNumber::TRIM_HORIZON`].
    pub const LATEST: &'static str = "LATEST";
    /// See [`ExtendedSequenceNumber::TRIM_HORIZON`].
    pub const AT_TIMESTAMP: &'static str = "AT_TIMESTAMP";
    /// See [`ExtendedSequenceNumber::TRIM_HORIZON`].
    pub const SHARD_END: &'static str = "SHARD_END";

    /// A real record position.
    pub fn at(sequence: SequenceNumber, sub_sequence: u64) -> Self {
        Self::Sequence {
            sequence,
            sub_sequence,
        }
    }

    /// Parses the pair of lease-table attributes (`checkpoint`, `checkpointSubSequenceNumber`).
    pub fn from_parts(checkpoint: &str, sub_sequence: u64) -> Result<Self, ParseSequenceError> {
        Ok(match checkpoint {
            Self::TRIM_HORIZON => Self::TrimHorizon,
            Self::LATEST => Self::Latest,
            Self::AT_TIMESTAMP => Self::AtTimestamp,
            Self::SHARD_END => Self::ShardEnd,
            other => Self::Sequence {
                sequence: SequenceNumber::new(other)?,
                sub_sequence,
            },
        })
    }

    /// The `checkpoint` attribute's string.
    pub fn checkpoint_str(&self) -> &str {
        match self {
            Self::TrimHorizon => Self::TRIM_HORIZON,
            Self::Latest => Self::LATEST,
            Self::AtTimestamp => Self::AT_TIMESTAMP,
            Self::ShardEnd => Self::SHARD_END,
            Self::Sequence { sequence, .. } => sequence.as_str(),
        }
    }

    /// The `checkpointSubSequenceNumber` attribute (0 for sentinels).
    pub fn sub_sequence(&self) -> u64 {
        match self {
            Self::Sequence { sub_sequence, .. } => *sub_sequence,
            _ => 0,
        }
    }

    /// The sequence number, if this is a real record position.
    pub fn sequence(&self) -> Option<&SequenceNumber> {
        match self {
            Self::Sequence { sequence, .. } => Some(sequence),
            _ => None,
        }
    }

    /// Whether this is the `SHARD_END` sentinel.
    pub fn is_shard_end(&self) -> bool {
        matches!(self, Self::ShardEnd)
    }

    /// Whether this is a sentinel (not a record position).
    pub fn is_sentinel(&self) -> bool {
        !matches!(self, Self::Sequence { .. })
    }

    fn rank(&self) -> u8 {
        match self {
            Self::AtTimestamp => 0,
            Self::TrimHorizon => 1,
            Self::Latest => 2,
            Self::Sequence { .. } => 3,
            Self::ShardEnd => 4,
        }
    }
}

impl Ord for ExtendedSequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (
                Self::Sequence {
                    sequence: a,
                    sub_sequence: sa,
                },
                Self::Sequence {
                    sequence: b,
                    sub_sequence: sb,
                },
            ) => a.cmp(b).then(sa.cmp(sb)),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for ExtendedSequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for ExtendedSequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sequence {
                sequence,
                sub_sequence,
            } => write!(f, "{sequence}/{sub_sequence}"),
            other => f.write_str(other.checkpoint_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(s: &str, sub: u64) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::at(SequenceNumber::new(s).unwrap(), sub)
    }

    #[test]
    fn sequence_numbers_compare_numerically_beyond_u128() {
        let small = SequenceNumber::new("9").unwrap();
        let big = SequenceNumber::new("10").unwrap();
        assert!(small < big);
        let a = SequenceNumber::new("49590338271490256608559692538361571095921575989136588898").unwrap();
        let b = SequenceNumber::new("49590338271490256608559692538361571095921575989136588899").unwrap();
        assert!(a < b);
        assert_eq!(
            SequenceNumber::new("0007").unwrap(),
            SequenceNumber::new("7").unwrap()
        );
        assert_eq!(SequenceNumber::new("000").unwrap().as_str(), "0");
    }

    #[test]
    fn malformed_sequence_numbers_are_rejected() {
        assert!(SequenceNumber::new("").is_err());
        assert!(SequenceNumber::new("12a").is_err());
        assert!(SequenceNumber::new("-1").is_err());
        assert!(ExtendedSequenceNumber::from_parts("TRIM", 0).is_err());
    }

    #[test]
    fn sentinels_order_like_the_java_kcl() {
        let order = [
            ExtendedSequenceNumber::AtTimestamp,
            ExtendedSequenceNumber::TrimHorizon,
            ExtendedSequenceNumber::Latest,
            seq("1", 0),
            seq("1", 5),
            seq("2", 0),
            ExtendedSequenceNumber::ShardEnd,
        ];
        for w in order.windows(2) {
            assert!(w[0] < w[1], "{} < {}", w[0], w[1]);
        }
    }

    #[test]
    fn round_trips_through_lease_attributes() {
        for (s, sub) in [
            ("TRIM_HORIZON", 0),
            ("LATEST", 0),
            ("AT_TIMESTAMP", 0),
            ("SHARD_END", 0),
            ("123", 4),
        ] {
            let e = ExtendedSequenceNumber::from_parts(s, sub).unwrap();
            assert_eq!(e.checkpoint_str(), s);
            assert_eq!(e.sub_sequence(), sub);
        }
    }
}
