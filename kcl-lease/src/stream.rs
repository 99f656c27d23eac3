//! Stream identifiers and multi-stream lease keys, in the Java KCL's format.
//!
//! One application may consume several streams with one lease table. Its lease keys then name
//! the stream as well as the shard: `account:stream:creationEpoch:shardId` (for example
//! `123456789012:orders:1700000000:shardId-000000000001`), and each row also carries the stream
//! identifier (`account:stream:creationEpoch`, in the attribute `streamName`) and the shard id
//! (`shardId`). The creation epoch (seconds) tells a stream apart from an earlier stream of the
//! same name that was deleted. Parent and child shard ids stay plain shard ids.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// A stream, as a multi-stream application names it: `account:stream:creationEpoch`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamIdentifier {
    /// The AWS account that owns the stream (12 digits on AWS).
    pub account_id: String,
    /// The stream's name.
    pub stream_name: String,
    /// When the stream was created, in seconds since the Unix epoch.
    pub creation_epoch: u64,
}

/// A string that is not a stream identifier or a multi-stream lease key.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{input:?} is not {expected}")]
pub struct ParseStreamIdError {
    input: String,
    expected: &'static str,
}

impl StreamIdentifier {
    /// An identifier from its parts.
    pub fn new(account_id: impl Into<String>, stream_name: impl Into<String>, creation_epoch: u64) -> Self {
        Self {
            account_id: account_id.into(),
            stream_name: stream_name.into(),
            creation_epoch,
        }
    }

    /// The lease key of one of the stream's shards: `account:stream:creationEpoch:shardId`.
    pub fn lease_key(&self, shard_id: &str) -> String {
        format!("{self}:{shard_id}")
    }

    /// Splits a multi-stream lease key into the stream and the shard id; `None` for a plain
    /// (single-stream) key such as `shardId-000000000000`.
    pub fn split_lease_key(key: &str) -> Option<(StreamIdentifier, &str)> {
        let (stream, shard) = key.rsplit_once(':')?;
        let id = stream.parse().ok()?;
        (!shard.is_empty()).then_some((id, shard))
    }
}

impl fmt::Display for StreamIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.account_id, self.stream_name, self.creation_epoch
        )
    }
}

impl FromStr for StreamIdentifier {
    type Err = ParseStreamIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseStreamIdError {
            input: s.chars().take(200).collect(),
            expected: "a stream identifier account:stream:creationEpoch",
        };
        let mut parts = s.split(':');
        let (Some(account), Some(stream), Some(epoch), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(err());
        };
        let account_ok = !account.is_empty() && account.bytes().all(|b| b.is_ascii_digit());
        if !account_ok || stream.is_empty() {
            return Err(err());
        }
        let creation_epoch = epoch.parse().map_err(|_| err())?;
        Ok(Self::new(account, stream, creation_epoch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_format_round_trips() {
        let id: StreamIdentifier = "123456789012:orders:1700000000".parse().unwrap();
        assert_eq!(id, StreamIdentifier::new("123456789012", "orders", 1_700_000_000));
        assert_eq!(id.to_string(), "123456789012:orders:1700000000");
        let key = id.lease_key("shardId-000000000001");
        assert_eq!(key, "123456789012:orders:1700000000:shardId-000000000001");
        assert_eq!(
            StreamIdentifier::split_lease_key(&key),
            Some((id, "shardId-000000000001"))
        );
    }

    #[test]
    fn plain_and_malformed_keys_are_not_multi_stream() {
        for key in [
            "shardId-000000000001",
            "orders:1700000000:shardId-000000000001",
            "12x:orders:1:shardId-1",
            "1:orders:notanumber:shardId-1",
            "1::1:shardId-1",
            "1:orders:1:",
            "",
        ] {
            assert_eq!(StreamIdentifier::split_lease_key(key), None, "{key}");
        }
        assert!("1:a:b:c".parse::<StreamIdentifier>().is_err());
    }
}
