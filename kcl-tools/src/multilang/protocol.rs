//! The MultiLang protocol's messages, as the Java KCL's MultiLangDaemon writes and reads them:
//! one JSON object per line, tagged by `action`. Pure: no I/O.
//!
//! To the child ([`ToChild`]): `initialize`, `processRecords`, `leaseLost`, `shardEnded`,
//! `shutdownRequested`, and the `checkpoint` replies. From the child ([`parse_line`]): any
//! number of `checkpoint` requests, then the `status` that ends the call.

use kcl_core::error::LeaseError;
use kcl_core::{CheckpointError, ExtendedSequenceNumber, Record};
use serde::Serialize;
use serde_json::Value;

use super::properties::epoch_millis;

/// The action names of the calls, as `status.responseFor` repeats them.
pub mod action {
    /// `initialize`.
    pub const INITIALIZE: &str = "initialize";
    /// `processRecords`.
    pub const PROCESS_RECORDS: &str = "processRecords";
    /// `leaseLost`.
    pub const LEASE_LOST: &str = "leaseLost";
    /// `shardEnded`.
    pub const SHARD_ENDED: &str = "shardEnded";
    /// `shutdownRequested`.
    pub const SHUTDOWN_REQUESTED: &str = "shutdownRequested";
}

/// One record of a `processRecords` message.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JsonRecord<'a> {
    action: &'static str,
    /// The payload, base64.
    pub data: String,
    /// The partition key.
    pub partition_key: &'a str,
    /// The sequence number.
    pub sequence_number: &'a str,
    /// The position inside a KPL aggregate (0 otherwise).
    pub sub_sequence_number: u64,
    /// When Kinesis accepted the record, in milliseconds since the epoch.
    pub approximate_arrival_timestamp: u64,
}

impl<'a> JsonRecord<'a> {
    /// The JSON form of a (de-aggregated) record.
    pub fn new(r: &'a Record) -> Self {
        Self {
            action: "record",
            data: aws_smithy_types::base64::encode(&r.data),
            partition_key: &r.partition_key,
            sequence_number: r.sequence_number.as_str(),
            sub_sequence_number: r.sub_sequence_number,
            approximate_arrival_timestamp: epoch_millis(r.approximate_arrival_timestamp),
        }
    }
}

/// A message to the child.
#[derive(Debug, Serialize, PartialEq)]
#[serde(tag = "action", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum ToChild<'a> {
    /// The first call: the shard and where processing resumes. Both sequence fields are always
    /// present (kclpy indexes them).
    Initialize {
        /// The shard.
        shard_id: &'a str,
        /// The checkpoint: a sequence number or `TRIM_HORIZON`, `LATEST`, `AT_TIMESTAMP`,
        /// `SHARD_END`.
        sequence_number: &'a str,
        /// Its sub-sequence number.
        sub_sequence_number: u64,
    },
    /// A batch.
    ProcessRecords {
        /// How far behind the tip the batch is.
        millis_behind_latest: u64,
        /// The records, de-aggregated.
        records: Vec<JsonRecord<'a>>,
    },
    /// The lease was lost; no checkpoint possible.
    LeaseLost,
    /// The shard ended; checkpoint now (writes `SHARD_END`).
    ShardEnded,
    /// The worker stops or hands the lease over; checkpoint now.
    ShutdownRequested,
    /// The answer to a checkpoint request: the request's values and the error, if any.
    Checkpoint {
        /// As the child sent it (a string, or null).
        sequence_number: Value,
        /// As the child sent it (a number, or null).
        sub_sequence_number: Value,
        /// `null` on success, else the Java exception's simple name.
        error: Option<&'static str>,
    },
}

impl<'a> ToChild<'a> {
    /// `initialize` for a shard resuming at `checkpoint`.
    pub fn initialize(shard_id: &'a str, checkpoint: &'a ExtendedSequenceNumber) -> Self {
        Self::Initialize {
            shard_id,
            sequence_number: checkpoint.checkpoint_str(),
            sub_sequence_number: checkpoint.sub_sequence(),
        }
    }

    /// `processRecords` for a batch.
    pub fn process_records(records: &'a [Record], millis_behind_latest: u64) -> Self {
        Self::ProcessRecords {
            millis_behind_latest,
            records: records.iter().map(JsonRecord::new).collect(),
        }
    }

    /// The action name (what `status.responseFor` must repeat).
    pub fn action(&self) -> &'static str {
        match self {
            Self::Initialize { .. } => action::INITIALIZE,
            Self::ProcessRecords { .. } => action::PROCESS_RECORDS,
            Self::LeaseLost => action::LEASE_LOST,
            Self::ShardEnded => action::SHARD_ENDED,
            Self::ShutdownRequested => action::SHUTDOWN_REQUESTED,
            Self::Checkpoint { .. } => "checkpoint",
        }
    }

    /// The message as one line, with its `\n`.
    pub fn to_line(&self) -> String {
        // Serialising these types cannot fail: every key is a string, every value plain data.
        let mut line = serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"));
        line.push('\n');
        line
    }
}

/// Where a child asked to checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub enum CheckpointTarget {
    /// No sequence number: the last record delivered (or `SHARD_END` in `shardEnded`).
    LastDelivered,
    /// A sequence number with a sub-sequence number (0 when the child sent only the former, as
    /// the Java checkpointer's `checkpoint(String)` does).
    At {
        /// The sequence number.
        sequence_number: String,
        /// The sub-sequence number.
        sub_sequence_number: u64,
    },
    /// Values that are not a sequence number (a sub-sequence number without one, a negative
    /// or non-numeric sub-sequence number, an object): refused with `IllegalArgumentException`.
    Invalid,
}

/// A checkpoint request: what to do and the raw values to echo in the reply.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckpointRequest {
    /// What to checkpoint.
    pub target: CheckpointTarget,
    /// `sequenceNumber` as sent (`null` when absent).
    pub raw_sequence_number: Value,
    /// `subSequenceNumber` as sent (`null` when absent).
    pub raw_sub_sequence_number: Value,
}

impl CheckpointRequest {
    /// The reply: the request's values and `error`.
    pub fn reply(&self, error: Option<&'static str>) -> ToChild<'static> {
        ToChild::Checkpoint {
            sequence_number: self.raw_sequence_number.clone(),
            sub_sequence_number: self.raw_sub_sequence_number.clone(),
            error,
        }
    }
}

/// A message from the child.
#[derive(Clone, Debug, PartialEq)]
pub enum FromChild {
    /// The end of a call.
    Status {
        /// The action the child says it finished.
        response_for: String,
    },
    /// A checkpoint request.
    Checkpoint(CheckpointRequest),
    /// Any other action (the Java daemon ignores those too).
    Other(String),
}

/// Reads one line from the child's stdout: `None` for blank lines and lines that are not a JSON
/// object with a string `action` (the Java daemon skips those).
pub fn parse_line(line: &str) -> Option<FromChild> {
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(line) else {
        return None;
    };
    let Some(Value::String(action)) = obj.remove("action") else {
        return None;
    };
    Some(match action.as_str() {
        "status" => match obj.remove("responseFor") {
            Some(Value::String(response_for)) => FromChild::Status { response_for },
            // A status that answers nothing is a mismatch for every call.
            _ => FromChild::Status {
                response_for: String::new(),
            },
        },
        "checkpoint" => {
            let raw_seq = obj.remove("sequenceNumber").unwrap_or(Value::Null);
            let raw_sub = obj.remove("subSequenceNumber").unwrap_or(Value::Null);
            FromChild::Checkpoint(CheckpointRequest {
                target: checkpoint_target(&raw_seq, &raw_sub),
                raw_sequence_number: raw_seq,
                raw_sub_sequence_number: raw_sub,
            })
        }
        _ => FromChild::Other(action),
    })
}

fn checkpoint_target(seq: &Value, sub: &Value) -> CheckpointTarget {
    let sequence_number = match seq {
        Value::Null => {
            return if sub.is_null() {
                CheckpointTarget::LastDelivered
            } else {
                CheckpointTarget::Invalid
            }
        }
        Value::String(s) => s.clone(),
        // Some clients may send a big number unquoted; it is still a sequence number.
        Value::Number(n) if n.is_u64() => n.to_string(),
        _ => return CheckpointTarget::Invalid,
    };
    let sub_sequence_number = match sub {
        Value::Null => 0,
        Value::Number(n) => match n.as_u64() {
            Some(n) => n,
            None => return CheckpointTarget::Invalid,
        },
        Value::String(s) => match s.parse() {
            Ok(n) => n,
            Err(_) => return CheckpointTarget::Invalid,
        },
        _ => return CheckpointTarget::Invalid,
    };
    CheckpointTarget::At {
        sequence_number,
        sub_sequence_number,
    }
}

/// The Java exception name (what the clients branch on) for a failed checkpoint.
pub fn error_name(e: &CheckpointError) -> &'static str {
    match e {
        CheckpointError::LeaseLost { .. } => SHUTDOWN_EXCEPTION,
        CheckpointError::BeyondDelivered { .. }
        | CheckpointError::BehindCheckpoint { .. }
        | CheckpointError::InvalidSequenceNumber(_) => ILLEGAL_ARGUMENT_EXCEPTION,
        CheckpointError::Store(LeaseError::Throttled(_)) => THROTTLING_EXCEPTION,
        CheckpointError::Store(_) => DEPENDENCY_EXCEPTION,
        // A kind added to kcl-core later: the generic store failure is the safest answer
        // (clients retry or give up; they do not assume the lease is gone).
        _ => DEPENDENCY_EXCEPTION,
    }
}

/// The lease is lost: the child must stop.
pub const SHUTDOWN_EXCEPTION: &str = "ShutdownException";
/// Checkpointing is not possible now (outside `processRecords`, `shardEnded`,
/// `shutdownRequested`).
pub const INVALID_STATE_EXCEPTION: &str = "InvalidStateException";
/// The lease table throttled the write: retry.
pub const THROTTLING_EXCEPTION: &str = "ThrottlingException";
/// The lease table failed.
pub const DEPENDENCY_EXCEPTION: &str = "KinesisClientLibDependencyException";
/// The sequence number is beyond the last delivered record, behind the checkpoint, or no
/// sequence number at all.
pub const ILLEGAL_ARGUMENT_EXCEPTION: &str = "IllegalArgumentException";

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    use kcl_core::SequenceNumber;
    use serde_json::json;

    use super::*;

    fn value(msg: &ToChild<'_>) -> Value {
        let line = msg.to_line();
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        serde_json::from_str(&line).unwrap()
    }

    #[test]
    fn initialize_always_carries_both_sequence_fields() {
        let at = ExtendedSequenceNumber::at(SequenceNumber::new("4950").unwrap(), 3);
        assert_eq!(
            value(&ToChild::initialize("shardId-000000000001", &at)),
            json!({"action":"initialize","shardId":"shardId-000000000001","sequenceNumber":"4950","subSequenceNumber":3})
        );
        assert_eq!(
            value(&ToChild::initialize("s", &ExtendedSequenceNumber::TrimHorizon)),
            json!({"action":"initialize","shardId":"s","sequenceNumber":"TRIM_HORIZON","subSequenceNumber":0})
        );
        assert_eq!(
            value(&ToChild::initialize("s", &ExtendedSequenceNumber::ShardEnd))["sequenceNumber"],
            "SHARD_END"
        );
    }

    #[test]
    fn process_records_in_the_java_format() {
        let records = [Record {
            data: bytes::Bytes::from_static(b"hello"),
            partition_key: Arc::from("pk"),
            sequence_number: SequenceNumber::new("49590338271490256608559692538361571095921575989136588898")
                .unwrap(),
            sub_sequence_number: 2,
            approximate_arrival_timestamp: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            explicit_hash_key: Some("1".into()),
        }];
        let msg = ToChild::process_records(&records, 42);
        assert_eq!(msg.action(), "processRecords");
        assert_eq!(
            value(&msg),
            json!({"action":"processRecords","millisBehindLatest":42,"records":[{
                "action":"record","data":"aGVsbG8=","partitionKey":"pk",
                "sequenceNumber":"49590338271490256608559692538361571095921575989136588898",
                "subSequenceNumber":2,"approximateArrivalTimestamp":1_700_000_000_123u64}]})
        );
    }

    #[test]
    fn lifecycle_messages_have_only_the_action() {
        assert_eq!(value(&ToChild::LeaseLost), json!({"action":"leaseLost"}));
        assert_eq!(value(&ToChild::ShardEnded), json!({"action":"shardEnded"}));
        assert_eq!(
            value(&ToChild::ShutdownRequested),
            json!({"action":"shutdownRequested"})
        );
    }

    #[test]
    fn status_and_skipped_lines() {
        assert_eq!(
            parse_line("{\"action\":\"status\",\"responseFor\":\"initialize\"}\r\n"),
            Some(FromChild::Status {
                response_for: "initialize".into()
            })
        );
        assert_eq!(
            parse_line(r#"{"action":"status"}"#),
            Some(FromChild::Status {
                response_for: String::new()
            })
        );
        for skipped in [
            "",
            "   ",
            "hello",
            "[1,2]",
            "{\"no\":\"action\"}",
            "{\"action\":1}",
            "{bad json",
        ] {
            assert_eq!(parse_line(skipped), None, "{skipped:?}");
        }
        assert_eq!(
            parse_line(r#"{"action":"shutdown"}"#),
            Some(FromChild::Other("shutdown".into()))
        );
    }

    fn target(line: &str) -> CheckpointTarget {
        match parse_line(line) {
            Some(FromChild::Checkpoint(r)) => r.target,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn checkpoint_requests_of_every_client() {
        // kclpy: both keys, possibly null.
        assert_eq!(
            target(r#"{"action":"checkpoint","sequenceNumber":null,"subSequenceNumber":null}"#),
            CheckpointTarget::LastDelivered
        );
        assert_eq!(
            target(r#"{"action":"checkpoint","sequenceNumber":"123","subSequenceNumber":4}"#),
            CheckpointTarget::At {
                sequence_number: "123".into(),
                sub_sequence_number: 4
            }
        );
        // Node, Ruby: the sequence number only, or nothing.
        assert_eq!(
            target(r#"{"action":"checkpoint","sequenceNumber":"123"}"#),
            CheckpointTarget::At {
                sequence_number: "123".into(),
                sub_sequence_number: 0
            }
        );
        assert_eq!(
            target(r#"{"action":"checkpoint"}"#),
            CheckpointTarget::LastDelivered
        );
        for invalid in [
            r#"{"action":"checkpoint","subSequenceNumber":1}"#,
            r#"{"action":"checkpoint","sequenceNumber":"1","subSequenceNumber":-1}"#,
            r#"{"action":"checkpoint","sequenceNumber":"1","subSequenceNumber":"x"}"#,
            r#"{"action":"checkpoint","sequenceNumber":{}}"#,
        ] {
            assert_eq!(target(invalid), CheckpointTarget::Invalid, "{invalid}");
        }
    }

    #[test]
    fn checkpoint_replies_echo_the_request() {
        let Some(FromChild::Checkpoint(req)) = parse_line(r#"{"action":"checkpoint","sequenceNumber":"77"}"#)
        else {
            panic!("not a checkpoint")
        };
        assert_eq!(
            value(&req.reply(None)),
            json!({"action":"checkpoint","sequenceNumber":"77","subSequenceNumber":null,"error":null})
        );
        assert_eq!(
            value(&req.reply(Some(SHUTDOWN_EXCEPTION))),
            json!({"action":"checkpoint","sequenceNumber":"77","subSequenceNumber":null,"error":"ShutdownException"})
        );
    }

    #[test]
    fn error_names_are_the_java_ones() {
        let seq = ExtendedSequenceNumber::at(SequenceNumber::new("5").unwrap(), 0);
        let cases = [
            (
                CheckpointError::LeaseLost { shard_id: "s".into() },
                "ShutdownException",
            ),
            (
                CheckpointError::BeyondDelivered {
                    requested: seq.clone(),
                    last_delivered: None,
                },
                "IllegalArgumentException",
            ),
            (
                CheckpointError::BehindCheckpoint {
                    requested: seq.clone(),
                    current: seq.clone(),
                },
                "IllegalArgumentException",
            ),
            (
                CheckpointError::InvalidSequenceNumber(kcl_lease::ParseSequenceError("x".into())),
                "IllegalArgumentException",
            ),
            (
                CheckpointError::Store(LeaseError::Throttled("slow down".into())),
                "ThrottlingException",
            ),
            (
                CheckpointError::Store(LeaseError::backend("boom")),
                "KinesisClientLibDependencyException",
            ),
        ];
        for (e, name) in cases {
            assert_eq!(error_name(&e), name, "{e}");
        }
    }
}
