//! Kinesis stream ARNs (`arn:PARTITION:kinesis:REGION:ACCOUNT:stream/NAME`), parsed with a typed
//! error.
//!
//! Why: a stream in another account is named by its ARN; the ARN's account (not the worker's) is
//! what multi-stream lease keys carry (`account:stream:creationEpoch:shardId`).

use std::fmt;
use std::str::FromStr;

use kcl_lease::StreamIdentifier;

/// Why a string is not a Kinesis stream ARN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamArnError {
    /// Not six `:`-separated fields starting with `arn`.
    #[error("not an ARN (expected arn:PARTITION:kinesis:REGION:ACCOUNT:stream/NAME): {0:?}")]
    NotAnArn(String),
    /// An ARN of another service.
    #[error("not a Kinesis ARN (service {0:?})")]
    NotKinesis(String),
    /// The partition or region is empty.
    #[error("the ARN's partition and region must not be empty")]
    MissingPartitionOrRegion,
    /// The account is not 12 digits.
    #[error("the ARN's account must be 12 digits, not {0:?}")]
    BadAccount(String),
    /// The resource is not `stream/NAME` with a valid stream name (1 to 128 of `a-zA-Z0-9_.-`).
    #[error("the ARN's resource must be stream/NAME with a valid stream name, not {0:?}")]
    BadStream(String),
}

/// A parsed Kinesis stream ARN.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamArn {
    /// The partition (`aws`, `aws-cn`, `aws-us-gov`, ...).
    pub partition: String,
    /// The region (`us-east-1`, ...).
    pub region: String,
    /// The 12-digit account that owns the stream.
    pub account_id: String,
    /// The stream's name.
    pub stream_name: String,
}

impl StreamArn {
    /// The multi-stream identifier of this stream (the ARN's account, the name, `creation_epoch`).
    pub fn identifier(&self, creation_epoch: u64) -> StreamIdentifier {
        StreamIdentifier::new(&self.account_id, &self.stream_name, creation_epoch)
    }
}

fn valid_stream_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

impl FromStr for StreamArn {
    type Err = StreamArnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fields: Vec<&str> = s.splitn(6, ':').collect();
        let [arn, partition, service, region, account, resource] = fields[..] else {
            return Err(StreamArnError::NotAnArn(s.to_owned()));
        };
        if arn != "arn" {
            return Err(StreamArnError::NotAnArn(s.to_owned()));
        }
        if service != "kinesis" {
            return Err(StreamArnError::NotKinesis(service.to_owned()));
        }
        if partition.is_empty() || region.is_empty() {
            return Err(StreamArnError::MissingPartitionOrRegion);
        }
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(StreamArnError::BadAccount(account.to_owned()));
        }
        let name = resource
            .strip_prefix("stream/")
            .filter(|name| valid_stream_name(name))
            .ok_or_else(|| StreamArnError::BadStream(resource.to_owned()))?;
        Ok(Self {
            partition: partition.to_owned(),
            region: region.to_owned(),
            account_id: account.to_owned(),
            stream_name: name.to_owned(),
        })
    }
}

impl fmt::Display for StreamArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "arn:{}:kinesis:{}:{}:stream/{}",
            self.partition, self.region, self.account_id, self.stream_name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_arn_round_trips_and_gives_the_lease_key_of_its_account() {
        let text = "arn:aws:kinesis:eu-west-1:123456789012:stream/orders.v2";
        let arn: StreamArn = text.parse().unwrap();
        assert_eq!(arn.account_id, "123456789012");
        assert_eq!(arn.stream_name, "orders.v2");
        assert_eq!(arn.region, "eu-west-1");
        assert_eq!(arn.to_string(), text);
        assert_eq!(
            arn.identifier(1_700_000_000).lease_key("shardId-000000000001"),
            "123456789012:orders.v2:1700000000:shardId-000000000001"
        );
    }

    #[test]
    fn bad_arns_say_what_is_wrong() {
        let cases = [
            ("orders", StreamArnError::NotAnArn("orders".into())),
            (
                "arn:aws:sqs:us-east-1:123456789012:stream/q",
                StreamArnError::NotKinesis("sqs".into()),
            ),
            (
                "arn:aws:kinesis::123456789012:stream/s",
                StreamArnError::MissingPartitionOrRegion,
            ),
            (
                "arn:aws:kinesis:us-east-1:1234:stream/s",
                StreamArnError::BadAccount("1234".into()),
            ),
            (
                "arn:aws:kinesis:us-east-1:123456789012:stream/a/consumer/c:1",
                StreamArnError::BadStream("stream/a/consumer/c:1".into()),
            ),
            (
                "arn:aws:kinesis:us-east-1:123456789012:table/s",
                StreamArnError::BadStream("table/s".into()),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<StreamArn>().unwrap_err(), expected, "{text}");
        }
    }
}
