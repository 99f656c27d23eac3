//! `DynamoDbStreamsBackend`: the [`StreamBackend`] for Amazon DynamoDB Streams (a table's change
//! stream), through the official AWS SDK for Rust, so that the same scheduler, leases and
//! checkpoints consume a table's changes as they consume a Kinesis stream.
//!
//! # Naming the source
//!
//! The stream name the scheduler passes to every call is the stream's ARN
//! (`arn:aws:dynamodb:REGION:ACCOUNT:table/TABLE/stream/LABEL`).
//! [`DynamoDbStreamsBackend::for_stream_arn`] takes one;
//! [`DynamoDbStreamsBackend::for_table`] looks up the table's `LatestStreamArn` with
//! `DescribeTable` (a table without a stream is [`DynamoDbSourceError::NoStream`], at once, not a
//! retry loop). Checkpoints are the stream's sequence numbers, in the same lease table format as
//! for Kinesis (leases keyed by shard id).
//!
//! With the `aws` feature too, `SchedulerBuilder::aws_sdk` gives the DynamoDB lease table named
//! after the application (as the Java adapter names it), and the backend replaces the Kinesis
//! one:
//!
//! ```no_run
//! # #[cfg(feature = "aws")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use kcl_core::dynamodb_streams::ChangeRecord;
//! use kcl_core::prelude::*;
//! use kcl_core::DynamoDbStreamsBackend;
//!
//! let sdk = kcl_core::aws::load_sdk_config(&Default::default()).await;
//! // Or DynamoDbStreamsBackend::for_stream_arn(&sdk, "arn:aws:dynamodb:...:table/orders/stream/...").
//! let (backend, arn) = DynamoDbStreamsBackend::for_table(&sdk, "orders").await?;
//! Scheduler::builder("orders-replicator", arn.to_string()) // the stream name is the ARN
//!     .aws_sdk(&sdk)? // the lease table `orders-replicator`
//!     .backend(backend)
//!     .handler(|batch: Batch| async move {
//!         for record in batch.records() {
//!             let change = ChangeRecord::from_record(record)?;
//!             println!("{} {} {:?}", change.event_name, change.keys_json(), change.new_image_json());
//!         }
//!         Ok(()) // checkpoints the batch
//!     })
//!     .build()?
//!     .run(shutdown_signal())
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! # The calls
//!
//! - `list_shards`: `DescribeStream`, paged by `ExclusiveStartShardId`; each shard's
//!   `ParentShardId` is its lineage, so a parent is finished before its child starts (shards
//!   close about every four hours). DynamoDB shards have no hash key range: each is given the
//!   whole range.
//! - `get_shard_iterator`: `TRIM_HORIZON`, `LATEST`, `AT_SEQUENCE_NUMBER`, `AFTER_SEQUENCE_NUMBER`;
//!   DynamoDB Streams has no `AT_TIMESTAMP` ([`BackendError::Unsupported`]).
//! - `get_records`: `GetRecords` with a limit of at most 1,000; each record is re-encoded into
//!   the JSON wire format of [`crate::dynamodb_streams`] (its `data`; parse it with
//!   [`ChangeRecord::from_record`]), its partition key is the item's `Keys` in DynamoDB JSON,
//!   its arrival time the change's approximate creation time. The service does not say how far
//!   behind a read is: `millis_behind_latest` is the age of the batch's last change. The end of
//!   a closed shard (no next iterator) reports no children: the shard sync, woken by the end,
//!   finds them with `DescribeStream`.
//!
//! # Errors
//!
//! Mapped in one place, [`map_error`]: `ExpiredIteratorException` →
//! [`BackendError::ExpiredIterator`] (a new iterator is taken after the last record read);
//! `LimitExceededException` → [`BackendError::Throttled`] (backed off and retried, counted in
//! [`DynamoDbStreamsBackend::throttle_count`]); `ResourceNotFoundException` →
//! [`BackendError::StreamNotFound`] (fatal for the stream) for `DescribeStream`, and
//! [`BackendError::ShardNotFound`] for a shard or an iterator (a shard gone from a stream that
//! still exists is treated as ended, so that its children start); `list_shards` turns a
//! missing stream into [`BackendError::StreamDisabled`] (below).
//!
//! A stream disabled on its table (`UpdateTable` with `StreamEnabled: false`) closes its shards
//! and keeps them readable for 24 hours: they are read to their end as usual, and then, once
//! every shard is closed and finished, the shard sync calls `check_stream_ended`, which reads
//! `DescribeStream`'s `StreamStatus`: `DISABLING` or `DISABLED` is
//! [`BackendError::StreamDisabled`], fatal, naming the stream's ARN and, from `DescribeTable`,
//! the table's newer stream if one was enabled since (a stream enabled again is a new stream).
//! A stream that is gone (`ResourceNotFoundException` on `DescribeStream`: disabled more than
//! 24 hours ago, or its table deleted) is the same error at once: nothing is left to read.
//!
//! `TrimmedDataAccessException` (records older than the stream's 24 hours of retention were
//! asked for) is treated as data that is gone, as the Java DynamoDB Streams adapter does by
//! default: on `GetRecords` it is [`BackendError::ExpiredIterator`], so the reader asks for a new
//! iterator after the last record it read; on `GetShardIterator` at or after a sequence number
//! that was trimmed, the iterator is taken at `TRIM_HORIZON` of the shard instead (a warning is
//! logged and [`DynamoDbStreamsBackend::trimmed_count`] counted: the trimmed changes were never
//! delivered), so reading resumes at the oldest change still there and a closed shard is read
//! to its end; a shard trimmed entirely is gone from `DescribeStream`
//! (`ResourceNotFoundException`: ended, as above).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_dynamodbstreams::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodbstreams::types::{ShardIteratorType, StreamStatus};
use bytes::Bytes;
use tracing::{debug, warn};

use crate::backend::{
    service_sequence, BackendError, GetRecordsOutput, IteratorPosition, StreamBackend, StreamDisabled,
    StreamEnd,
};
use crate::dynamodb_streams::{
    item_to_dynamodb_json, AttributeValue, ChangeRecord, DynamoDbStreamArn, DynamoDbStreamArnError,
    EventName, Item, StreamViewType, UserIdentity,
};
use crate::error::ErrorChain;
use crate::record::{HashKeyRange, Record, SequenceNumber, Shard};

/// The largest `limit` of one `GetRecords` call on DynamoDB Streams; larger ones are clamped.
pub const MAX_GET_RECORDS: usize = 1000;

/// The most `DescribeStream` pages one `list_shards` reads (100 shards a page): a guard against
/// a service that keeps answering with a next page.
const MAX_DESCRIBE_PAGES: usize = 10_000;

/// Why the stream of a table could not be named.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DynamoDbSourceError {
    /// The string is not a DynamoDB stream ARN.
    #[error(transparent)]
    Arn(#[from] DynamoDbStreamArnError),
    /// No such table.
    #[error("table {0} not found")]
    TableNotFound(String),
    /// The table has no stream (or its stream is disabled and none is enabled): enable one with
    /// `StreamSpecification` (e.g. `NEW_AND_OLD_IMAGES`).
    #[error(
        "table {0} has no stream; enable DynamoDB Streams on it (StreamSpecification, e.g. NEW_AND_OLD_IMAGES)"
    )]
    NoStream(String),
    /// `DescribeTable` failed.
    #[error("describing table {table} failed: {cause}")]
    Describe {
        /// The table.
        table: String,
        /// The failure, as a sentence.
        cause: String,
    },
}

/// Reads a DynamoDB table's change stream through the AWS SDK. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DynamoDbStreamsBackend {
    client: aws_sdk_dynamodbstreams::Client,
    /// DynamoDB's client, to find a table's newer stream when this one is disabled.
    tables: Option<aws_sdk_dynamodb::Client>,
    throttles: Arc<AtomicU64>,
    trimmed: Arc<AtomicU64>,
}

impl DynamoDbStreamsBackend {
    /// A backend over an SDK client; streams are named by their ARNs. Without a DynamoDB
    /// client ([`Self::with_table_client`]) a disabled stream's error cannot name the table's
    /// newer stream.
    pub fn new(client: aws_sdk_dynamodbstreams::Client) -> Self {
        Self {
            client,
            tables: None,
            throttles: Arc::new(AtomicU64::new(0)),
            trimmed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A backend from shared SDK configuration (see [`crate::aws::load_sdk_config`]), with a
    /// DynamoDB client from the same configuration.
    pub fn from_conf(config: &aws_config::SdkConfig) -> Self {
        Self::new(aws_sdk_dynamodbstreams::Client::new(config))
            .with_table_client(aws_sdk_dynamodb::Client::new(config))
    }

    /// Uses `client` (DynamoDB's) for `DescribeTable` when the stream is disabled or gone:
    /// the error then names the table's newer stream, if it has one.
    #[must_use]
    pub fn with_table_client(mut self, client: aws_sdk_dynamodb::Client) -> Self {
        self.tables = Some(client);
        self
    }

    /// A backend for the stream with this ARN, and the ARN (its `to_string()` is the stream name
    /// to give the scheduler).
    pub fn for_stream_arn(
        config: &aws_config::SdkConfig,
        arn: &str,
    ) -> Result<(Self, DynamoDbStreamArn), DynamoDbSourceError> {
        let arn: DynamoDbStreamArn = arn.parse()?;
        Ok((Self::from_conf(config), arn))
    }

    /// A backend for the latest stream of `table` (`DescribeTable`'s `LatestStreamArn`), and its
    /// ARN. A table without a stream is [`DynamoDbSourceError::NoStream`].
    pub async fn for_table(
        config: &aws_config::SdkConfig,
        table: &str,
    ) -> Result<(Self, DynamoDbStreamArn), DynamoDbSourceError> {
        let arn = latest_stream_arn(&aws_sdk_dynamodb::Client::new(config), table).await?;
        Ok((Self::from_conf(config), arn))
    }

    /// The SDK client.
    pub fn client(&self) -> &aws_sdk_dynamodbstreams::Client {
        &self.client
    }

    /// How many calls the service throttled so far.
    pub fn throttle_count(&self) -> u64 {
        self.throttles.load(Ordering::Relaxed)
    }

    /// How many times an iterator was asked for at a trimmed sequence number and taken at the
    /// shard's trim horizon instead (changes lost to retention).
    pub fn trimmed_count(&self) -> u64 {
        self.trimmed.load(Ordering::Relaxed)
    }

    fn map<E, R>(&self, err: SdkError<E, R>, op: Op<'_>) -> BackendError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let mapped = match err.code() {
            Some(code) => map_error(code, err.message().unwrap_or_default(), op),
            None => BackendError::other(format!("DynamoDB Streams: {}", ErrorChain(&err))),
        };
        if matches!(mapped, BackendError::Throttled(_)) {
            self.throttles.fetch_add(1, Ordering::Relaxed);
        }
        mapped
    }

    async fn iterator(
        &self,
        stream: &str,
        shard_id: &str,
        kind: ShardIteratorType,
        sequence: Option<&SequenceNumber>,
    ) -> Result<String, SdkError<aws_sdk_dynamodbstreams::operation::get_shard_iterator::GetShardIteratorError>>
    {
        let out = self
            .client
            .get_shard_iterator()
            .stream_arn(stream)
            .shard_id(shard_id)
            .shard_iterator_type(kind)
            .set_sequence_number(sequence.map(wire_sequence_number))
            .send()
            .await?;
        Ok(out.shard_iterator.unwrap_or_default())
    }
}

impl DynamoDbStreamsBackend {
    /// The table's newer stream, if it has one that is enabled (best effort: `None` without a
    /// DynamoDB client or when `DescribeTable` fails).
    async fn newer_stream(&self, stream: &str) -> Option<String> {
        let tables = self.tables.as_ref()?;
        let table = stream.parse::<DynamoDbStreamArn>().ok()?.table;
        match latest_stream_arn(tables, &table).await {
            Ok(latest) => Some(latest.to_string()).filter(|l| l != stream),
            Err(e) => {
                debug!(stream, error = %e, "looking for the table's newer stream failed");
                None
            }
        }
    }

    /// The error for a stream that ended (`end`), naming the table's newer stream.
    async fn ended(&self, stream: &str, end: StreamEnd) -> BackendError {
        BackendError::StreamDisabled(StreamDisabled {
            stream: stream.to_owned(),
            end,
            latest_stream_arn: self.newer_stream(stream).await,
        })
    }
}

/// `DescribeTable`'s `LatestStreamArn` of `table`, parsed.
pub async fn latest_stream_arn(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<DynamoDbStreamArn, DynamoDbSourceError> {
    let out = client
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(|e| match e.code() {
            Some("ResourceNotFoundException") => DynamoDbSourceError::TableNotFound(table.to_owned()),
            _ => DynamoDbSourceError::Describe {
                table: table.to_owned(),
                cause: ErrorChain(&e).to_string(),
            },
        })?;
    let description = out.table.as_ref();
    let enabled = description
        .and_then(|t| t.stream_specification())
        .is_some_and(|s| s.stream_enabled());
    match description.and_then(|t| t.latest_stream_arn()) {
        Some(arn) if enabled => Ok(arn.parse()?),
        _ => Err(DynamoDbSourceError::NoStream(table.to_owned())),
    }
}

/// What a call was about, to name the missing thing in errors.
#[derive(Clone, Copy, Debug)]
pub enum Op<'a> {
    /// `DescribeStream` of a stream.
    DescribeStream(&'a str),
    /// `GetShardIterator` of a shard.
    GetShardIterator(&'a str),
    /// `GetRecords` (only the iterator is known).
    GetRecords,
}

/// Maps a DynamoDB Streams error code (and message) to a [`BackendError`]: the one place where
/// service error codes are read. See the module documentation for `TrimmedDataAccessException`.
pub fn map_error(code: &str, message: &str, op: Op<'_>) -> BackendError {
    let detail = if message.is_empty() {
        code.to_owned()
    } else {
        format!("{code}: {message}")
    };
    match code {
        "LimitExceededException" | "ThrottlingException" | "ProvisionedThroughputExceededException" => {
            BackendError::Throttled(detail)
        }
        "ExpiredIteratorException" => BackendError::ExpiredIterator,
        // On GetRecords: take a new iterator after the last record read (which falls back to
        // the trim horizon); elsewhere the shard's data is gone.
        "TrimmedDataAccessException" => match op {
            Op::GetRecords => BackendError::ExpiredIterator,
            Op::GetShardIterator(shard) => BackendError::ShardNotFound(format!("{shard} ({detail})")),
            Op::DescribeStream(stream) => BackendError::StreamNotFound(format!("{stream} ({detail})")),
        },
        "ResourceNotFoundException" => match op {
            Op::DescribeStream(stream) => BackendError::StreamNotFound(stream.to_owned()),
            Op::GetShardIterator(shard) => BackendError::ShardNotFound(shard.to_owned()),
            Op::GetRecords => BackendError::ShardNotFound(detail),
        },
        "ValidationException" | "InvalidArgumentException" => BackendError::InvalidArgument(detail),
        "AccessDeniedException" | "UnrecognizedClientException" | "MissingAuthenticationTokenException" => {
            BackendError::AccessDenied(detail)
        }
        "InvalidSignatureException" | "ExpiredTokenException" => BackendError::other(format!(
            "credentials refused ({detail}); check the credentials and the clock"
        )),
        _ => BackendError::other(format!("DynamoDB Streams: {detail}")),
    }
}

/// A sequence number as the service takes it: at least 21 digits (ours drop leading zeros).
fn wire_sequence_number(s: &SequenceNumber) -> String {
    format!("{:0>21}", s.as_str())
}

fn to_shard(s: &aws_sdk_dynamodbstreams::types::Shard) -> Result<Shard, BackendError> {
    let shard_id = s
        .shard_id()
        .ok_or_else(|| BackendError::other("DescribeStream returned a shard without an id"))?;
    let range = s
        .sequence_number_range()
        .ok_or_else(|| BackendError::other(format!("shard {shard_id} without a sequence range")))?;
    Ok(Shard {
        shard_id: shard_id.to_owned(),
        parent_shard_id: s.parent_shard_id().map(str::to_owned),
        adjacent_parent_shard_id: None,
        hash_key_range: HashKeyRange::FULL,
        starting_sequence_number: service_sequence(range.starting_sequence_number().unwrap_or("0"))?,
        ending_sequence_number: range.ending_sequence_number().map(service_sequence).transpose()?,
    })
}

/// An SDK attribute value as ours.
pub fn to_attribute_value(
    v: &aws_sdk_dynamodbstreams::types::AttributeValue,
) -> Result<AttributeValue, BackendError> {
    use aws_sdk_dynamodbstreams::types::AttributeValue as A;
    Ok(match v {
        A::S(s) => AttributeValue::S(s.clone()),
        A::N(n) => AttributeValue::N(n.clone()),
        A::B(b) => AttributeValue::B(b.as_ref().to_vec()),
        A::Bool(b) => AttributeValue::Bool(*b),
        A::Null(_) => AttributeValue::Null,
        A::Ss(v) => AttributeValue::Ss(v.clone()),
        A::Ns(v) => AttributeValue::Ns(v.clone()),
        A::Bs(v) => AttributeValue::Bs(v.iter().map(|b| b.as_ref().to_vec()).collect()),
        A::L(v) => AttributeValue::L(v.iter().map(to_attribute_value).collect::<Result<_, _>>()?),
        A::M(m) => AttributeValue::M(to_item(m)?),
        _ => return Err(BackendError::other("an attribute value of an unknown type")),
    })
}

fn to_item(
    m: &std::collections::HashMap<String, aws_sdk_dynamodbstreams::types::AttributeValue>,
) -> Result<Item, BackendError> {
    m.iter()
        .map(|(k, v)| Ok((k.clone(), to_attribute_value(v)?)))
        .collect::<Result<BTreeMap<_, _>, _>>()
}

/// An SDK record as a [`ChangeRecord`].
pub fn to_change_record(r: &aws_sdk_dynamodbstreams::types::Record) -> Result<ChangeRecord, BackendError> {
    let name = r
        .event_name()
        .ok_or_else(|| BackendError::other("a change record without an event name"))?;
    let event_name = EventName::parse(name.as_str())
        .ok_or_else(|| BackendError::other(format!("unknown event name {}", name.as_str())))?;
    let d = r
        .dynamodb()
        .ok_or_else(|| BackendError::other("a change record without its dynamodb part"))?;
    let sequence_number = service_sequence(
        d.sequence_number()
            .ok_or_else(|| BackendError::other("a change record without a sequence number"))?,
    )?;
    let image = |m: Option<&std::collections::HashMap<_, _>>| m.map(to_item).transpose();
    Ok(ChangeRecord {
        event_id: r.event_id().unwrap_or_default().to_owned(),
        event_name,
        event_version: r.event_version().unwrap_or_default().to_owned(),
        event_source: r.event_source().unwrap_or_default().to_owned(),
        aws_region: r.aws_region().unwrap_or_default().to_owned(),
        keys: image(d.keys())?.unwrap_or_default(),
        new_image: image(d.new_image())?,
        old_image: image(d.old_image())?,
        sequence_number,
        size_bytes: d.size_bytes().and_then(|n| u64::try_from(n).ok()).unwrap_or(0),
        approximate_creation_time: d
            .approximate_creation_date_time()
            .and_then(|t| SystemTime::try_from(*t).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH),
        stream_view_type: d
            .stream_view_type()
            .and_then(|v| StreamViewType::parse(v.as_str())),
        user_identity: r.user_identity().map(|i| UserIdentity {
            principal_id: i.principal_id().unwrap_or_default().to_owned(),
            kind: i.r#type().unwrap_or_default().to_owned(),
        }),
    })
}

/// A change as the [`Record`] the processor gets: the wire-format JSON as data, the item's
/// `Keys` (DynamoDB JSON) as partition key, the creation time as arrival time.
pub fn change_to_record(change: &ChangeRecord) -> Record {
    Record {
        data: Bytes::from(change.to_bytes()),
        partition_key: item_to_dynamodb_json(&change.keys).to_string().into(),
        sequence_number: change.sequence_number.clone(),
        sub_sequence_number: 0,
        approximate_arrival_timestamp: change.approximate_creation_time,
        explicit_hash_key: None,
    }
}

#[async_trait]
impl StreamBackend for DynamoDbStreamsBackend {
    async fn list_shards(&self, stream: &str) -> Result<Vec<Shard>, BackendError> {
        let mut shards = Vec::new();
        let mut start: Option<String> = None;
        for _ in 0..MAX_DESCRIBE_PAGES {
            let out = match self
                .client
                .describe_stream()
                .stream_arn(stream)
                .set_exclusive_start_shard_id(start.take())
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) => {
                    return Err(match self.map(e, Op::DescribeStream(stream)) {
                        // Disabled more than 24 hours ago, or deleted with its table.
                        BackendError::StreamNotFound(_) => self.ended(stream, StreamEnd::Deleted).await,
                        other => other,
                    });
                }
            };
            let description = out
                .stream_description
                .ok_or_else(|| BackendError::other(format!("no description returned for {stream}")))?;
            for shard in description.shards() {
                shards.push(to_shard(shard)?);
            }
            match description.last_evaluated_shard_id {
                Some(last) => start = Some(last),
                None => return Ok(shards),
            }
        }
        Err(BackendError::other(format!(
            "DescribeStream of {stream} returned more than {MAX_DESCRIBE_PAGES} pages"
        )))
    }

    /// `DescribeStream`'s `StreamStatus`: `DISABLING` or `DISABLED` is
    /// [`BackendError::StreamDisabled`] (with the table's newer stream, from `DescribeTable`),
    /// and so is a stream that is gone.
    async fn check_stream_ended(&self, stream: &str) -> Result<(), BackendError> {
        let out = match self
            .client
            .describe_stream()
            .stream_arn(stream)
            .limit(1)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                return Err(match self.map(e, Op::DescribeStream(stream)) {
                    BackendError::StreamNotFound(_) => self.ended(stream, StreamEnd::Deleted).await,
                    other => other,
                })
            }
        };
        let status = out.stream_description().and_then(|d| d.stream_status());
        match status {
            Some(StreamStatus::Disabled) => Err(self.ended(stream, StreamEnd::Disabled).await),
            Some(StreamStatus::Disabling) => Err(self.ended(stream, StreamEnd::Disabling).await),
            _ => Ok(()),
        }
    }

    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: &IteratorPosition,
    ) -> Result<String, BackendError> {
        let (kind, sequence) = match position {
            IteratorPosition::TrimHorizon => (ShardIteratorType::TrimHorizon, None),
            IteratorPosition::Latest => (ShardIteratorType::Latest, None),
            IteratorPosition::AtSequenceNumber(s) => (ShardIteratorType::AtSequenceNumber, Some(s)),
            IteratorPosition::AfterSequenceNumber(s) => (ShardIteratorType::AfterSequenceNumber, Some(s)),
            IteratorPosition::AtTimestamp(_) => {
                return Err(BackendError::Unsupported(
                    "AT_TIMESTAMP: DynamoDB Streams iterators start at the trim horizon, the latest record or a sequence number".into(),
                ))
            }
        };
        match self.iterator(stream, shard_id, kind, sequence).await {
            Ok(it) => Ok(it),
            Err(e) if sequence.is_some() && e.code() == Some("TrimmedDataAccessException") => {
                self.trimmed.fetch_add(1, Ordering::Relaxed);
                warn!(
                    shard_id,
                    position = ?position,
                    "the position was trimmed (older than the stream's retention): reading from \
                     the oldest record still in the shard; the changes in between are lost"
                );
                self.iterator(stream, shard_id, ShardIteratorType::TrimHorizon, None)
                    .await
                    .map_err(|e| self.map(e, Op::GetShardIterator(shard_id)))
            }
            Err(e) => Err(self.map(e, Op::GetShardIterator(shard_id))),
        }
    }

    async fn get_records(
        &self,
        stream: &str,
        iterator: &str,
        limit: usize,
    ) -> Result<GetRecordsOutput, BackendError> {
        let _ = stream;
        let limit = limit.clamp(1, MAX_GET_RECORDS);
        let out = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(i32::try_from(limit).unwrap_or(1000))
            .send()
            .await
            .map_err(|e| self.map(e, Op::GetRecords))?;
        let records = out
            .records()
            .iter()
            .map(|r| to_change_record(r).map(|c| change_to_record(&c)))
            .collect::<Result<Vec<_>, _>>()?;
        let millis_behind_latest = records.last().map_or(0, |r| {
            SystemTime::now()
                .duration_since(r.approximate_arrival_timestamp)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        });
        Ok(GetRecordsOutput {
            records,
            next_iterator: out.next_shard_iterator,
            millis_behind_latest,
            child_shards: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use aws_sdk_dynamodbstreams::primitives::{Blob, DateTime};
    use aws_sdk_dynamodbstreams::types::{
        AttributeValue as A, Identity, OperationType, Record as SdkRecord, SequenceNumberRange,
        Shard as SdkShard, StreamRecord, StreamViewType as SdkView,
    };

    use super::*;

    #[test]
    fn errors_map_to_what_the_runtime_acts_on() {
        let shard = Op::GetShardIterator("shardId-1");
        assert!(matches!(
            map_error("ExpiredIteratorException", "", Op::GetRecords),
            BackendError::ExpiredIterator
        ));
        assert!(matches!(
            map_error("TrimmedDataAccessException", "trimmed", Op::GetRecords),
            BackendError::ExpiredIterator
        ));
        assert!(matches!(
            map_error("TrimmedDataAccessException", "trimmed", shard),
            BackendError::ShardNotFound(_)
        ));
        let throttled = map_error("LimitExceededException", "slow down", Op::GetRecords);
        assert!(matches!(&throttled, BackendError::Throttled(m) if m == "LimitExceededException: slow down"));
        assert!(throttled.is_retryable());
        let missing = map_error("ResourceNotFoundException", "", Op::DescribeStream("arn:x"));
        assert!(matches!(&missing, BackendError::StreamNotFound(s) if s == "arn:x"));
        assert!(missing.is_fatal());
        assert!(matches!(
            map_error("ResourceNotFoundException", "", shard),
            BackendError::ShardNotFound(s) if s == "shardId-1"
        ));
        assert!(map_error("AccessDeniedException", "no", Op::GetRecords).is_fatal());
        assert!(matches!(
            map_error("ValidationException", "bad", Op::GetRecords),
            BackendError::InvalidArgument(_)
        ));
        let other = map_error("InternalServerError", "oops", Op::GetRecords);
        assert!(other.is_retryable());
        assert_eq!(
            other.to_string(),
            "backend error: DynamoDB Streams: InternalServerError: oops"
        );
    }

    #[test]
    fn shards_keep_their_lineage_and_sequence_numbers_are_padded_for_the_service() {
        let shard = SdkShard::builder()
            .shard_id("shardId-00000001700000000000-abcdef01")
            .parent_shard_id("shardId-00000001690000000000-12345678")
            .sequence_number_range(
                SequenceNumberRange::builder()
                    .starting_sequence_number("000000000000000000100")
                    .ending_sequence_number("000000000000000000200")
                    .build(),
            )
            .build();
        let s = to_shard(&shard).unwrap();
        assert_eq!(
            s.parent_shard_id.as_deref(),
            Some("shardId-00000001690000000000-12345678")
        );
        assert_eq!(s.hash_key_range, HashKeyRange::FULL);
        assert!(!s.is_open());
        assert_eq!(
            wire_sequence_number(&s.starting_sequence_number),
            "000000000000000000100"
        );
        let long = SequenceNumber::new("4421584500000000017450439091").unwrap();
        assert_eq!(wire_sequence_number(&long), "4421584500000000017450439091");
        assert!(to_shard(&SdkShard::builder().build()).is_err());
    }

    #[test]
    fn sdk_records_are_re_encoded_in_the_wire_format() {
        let mut keys = HashMap::new();
        keys.insert("pk".to_owned(), A::S("order-1".into()));
        let mut new = keys.clone();
        new.insert("qty".into(), A::N("2".into()));
        new.insert("blob".into(), A::B(Blob::new(b"hi".to_vec())));
        new.insert("tags".into(), A::Ss(vec!["a".into()]));
        new.insert("gone".into(), A::Null(true));
        new.insert(
            "nested".into(),
            A::M(
                [(
                    "l".to_owned(),
                    A::L(vec![A::Bool(false), A::Ns(vec!["1".into()])]),
                )]
                .into(),
            ),
        );
        let sdk = SdkRecord::builder()
            .event_id("abc")
            .event_name(OperationType::Remove)
            .event_version("1.1")
            .event_source("aws:dynamodb")
            .aws_region("eu-west-1")
            .dynamodb(
                StreamRecord::builder()
                    .approximate_creation_date_time(DateTime::from_secs(1_765_028_654))
                    .set_keys(Some(keys))
                    .set_old_image(Some(new))
                    .sequence_number("300000000000000499659")
                    .size_bytes(64)
                    .stream_view_type(SdkView::NewAndOldImages)
                    .build(),
            )
            .user_identity(
                Identity::builder()
                    .principal_id("dynamodb.amazonaws.com")
                    .r#type("Service")
                    .build(),
            )
            .build();
        let change = to_change_record(&sdk).unwrap();
        let record = change_to_record(&change);
        assert_eq!(&*record.partition_key, r#"{"pk":{"S":"order-1"}}"#);
        assert_eq!(record.sequence_number.as_str(), "300000000000000499659");
        let parsed = ChangeRecord::from_record(&record).unwrap();
        assert_eq!(parsed, change);
        assert!(parsed.is_ttl_deletion());
        assert_eq!(parsed.event_name, EventName::Remove);
        let json: serde_json::Value = serde_json::from_slice(&record.data).unwrap();
        assert_eq!(json["dynamodb"]["ApproximateCreationDateTime"], 1_765_028_654);
        assert_eq!(
            json["dynamodb"]["OldImage"]["blob"],
            serde_json::json!({"B": "aGk="})
        );
        assert_eq!(
            json["dynamodb"]["OldImage"]["nested"],
            serde_json::json!({"M": {"l": {"L": [{"BOOL": false}, {"NS": ["1"]}]}}})
        );
        assert_eq!(json["userIdentity"]["Type"], "Service");
        assert_eq!(parsed.old_image_json().unwrap()["gone"], serde_json::Value::Null);
        // A record without its dynamodb part is an error, not a panic.
        let bare = SdkRecord::builder().event_name(OperationType::Insert).build();
        assert!(to_change_record(&bare).is_err());
    }
}
