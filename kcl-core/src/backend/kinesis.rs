//! `KinesisBackend`: the [`StreamBackend`] for Amazon Kinesis Data Streams (and emulators),
//! through the official AWS SDK for Rust.
//!
//! Service errors are mapped in one place, [`map_error`], to the backend-neutral
//! [`BackendError`] variants the runtime acts on: throttling (`ProvisionedThroughputExceeded`,
//! `LimitExceeded`, KMS throttling) is retried by the runtime with backoff and jitter; an
//! expired iterator is renewed from the last record read; a missing stream, missing
//! permissions or a KMS failure is reported with a clear message. The SDK's own retries are
//! switched off by [`crate::aws::load_sdk_config`], so that throttling is visible and counted
//! ([`KinesisBackend::throttle_count`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use async_trait::async_trait;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use bytes::Bytes;
use tracing::debug;

use crate::backend::{
    service_sequence, BackendError, ConsumerStatus, ConsumerTags, GetRecordsOutput, IteratorPosition,
    ShardSubscription, StreamBackend, StreamConsumer, SubscribeEvent,
};
use crate::error::ErrorChain;
use crate::record::{ChildShard, HashKeyRange, Record, Shard};
use crate::stream_arn::StreamArn;
use kcl_lease::StreamIdentifier;

/// Reads a Kinesis data stream through the AWS SDK. Cheap to clone.
#[derive(Clone, Debug)]
pub struct KinesisBackend {
    client: aws_sdk_kinesis::Client,
    throttles: Arc<AtomicU64>,
    /// Streams named by ARN: every call on them is made with the ARN (stream name → ARN).
    /// Shared by clones; grows as the scheduler names streams by ARN.
    arns: Arc<RwLock<HashMap<String, StreamArn>>>,
    /// The endpoint URL of the SDK configuration (emulators, LocalStack), to name it when it
    /// cannot be reached.
    endpoint_url: Option<Arc<str>>,
}

impl KinesisBackend {
    /// A backend over an SDK client.
    pub fn new(client: aws_sdk_kinesis::Client) -> Self {
        Self {
            client,
            throttles: Arc::new(AtomicU64::new(0)),
            arns: Arc::new(RwLock::new(HashMap::new())),
            endpoint_url: None,
        }
    }

    /// Names streams by ARN: calls on the stream named in an ARN are made with `StreamARN`
    /// (as cross-account access through a resource policy requires), and its multi-stream lease
    /// key takes the account from the ARN. The scheduler still names the stream by its name.
    ///
    /// The same as giving the scheduler [`StreamConfig::from_arn`](crate::StreamConfig::from_arn)
    /// streams (or [`SchedulerBuilder::stream_arn`](crate::SchedulerBuilder::stream_arn)).
    #[must_use]
    pub fn with_stream_arns(self, arns: impl IntoIterator<Item = StreamArn>) -> Self {
        for arn in arns {
            StreamBackend::name_by_arn(&self, &arn);
        }
        self
    }

    /// The ARN a stream was named by, if any.
    pub fn arn_of(&self, stream: &str) -> Option<StreamArn> {
        self.arns
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(stream)
            .cloned()
    }

    /// A backend from shared SDK configuration (see [`crate::aws::load_sdk_config`]).
    pub fn from_conf(config: &aws_config::SdkConfig) -> Self {
        Self {
            endpoint_url: config.endpoint_url().map(Arc::from),
            ..Self::new(aws_sdk_kinesis::Client::new(config))
        }
    }

    /// Where the calls go, for errors: ` at URL` with an endpoint URL, ` in region R` without.
    fn location(&self) -> String {
        match (&self.endpoint_url, self.client.config().region()) {
            (Some(url), _) => format!(" at {url}"),
            (None, Some(region)) => format!(" in region {region}"),
            (None, None) => String::new(),
        }
    }

    /// The SDK client, for producing or managing streams.
    pub fn client(&self) -> &aws_sdk_kinesis::Client {
        &self.client
    }

    /// How many calls the service throttled so far.
    pub fn throttle_count(&self) -> u64 {
        self.throttles.load(Ordering::Relaxed)
    }

    fn map<E>(&self, err: aws_sdk_kinesis::error::SdkError<E>, what: Context<'_>) -> BackendError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        if let Some(failed) = connect_failure(&err, &self.location()) {
            return failed;
        }
        let mapped = map_error(err, what);
        if matches!(mapped, BackendError::Throttled(_)) {
            self.throttles.fetch_add(1, Ordering::Relaxed);
        }
        mapped
    }
}

/// What a call was about, to name the missing thing in errors.
#[derive(Clone, Copy, Debug)]
pub enum Context<'a> {
    /// A call on a stream.
    Stream(&'a str),
    /// A call on one shard of a stream.
    Shard(&'a str, &'a str),
    /// A `GetRecords` call (only the iterator is known).
    Iterator,
    /// A call about an enhanced fan-out consumer (its name or ARN).
    Consumer(&'a str),
}

/// A call that never reached Kinesis (connection refused or timed out, DNS failure): "cannot
/// connect to Kinesis" and `location`, then what the connection attempt said.
fn connect_failure<E, R>(err: &aws_sdk_kinesis::error::SdkError<E, R>, location: &str) -> Option<BackendError>
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug + 'static,
{
    let aws_sdk_kinesis::error::SdkError::DispatchFailure(dispatch) = err else {
        return None;
    };
    if !(dispatch.is_io() || dispatch.is_timeout()) {
        return None;
    }
    let cause = match dispatch.as_connector_error().and_then(std::error::Error::source) {
        Some(cause) => ErrorChain(cause).to_string(),
        None => ErrorChain(err).to_string(),
    };
    Some(BackendError::other(format!(
        "cannot connect to Kinesis{location}: {cause}"
    )))
}

/// Maps an SDK error to a [`BackendError`]: the one place where service error codes are read.
/// Errors are rendered with their causes ([`ErrorChain`]), without the SDK's `Debug` dumps.
pub fn map_error<E, R>(err: aws_sdk_kinesis::error::SdkError<E, R>, what: Context<'_>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let code = err.code().unwrap_or_default().to_owned();
    let message = err.message().unwrap_or_default().to_owned();
    let detail = if message.is_empty() {
        code.clone()
    } else {
        format!("{code}: {message}")
    };
    match code.as_str() {
        "ProvisionedThroughputExceededException"
        | "LimitExceededException"
        | "ThrottlingException"
        | "KMSThrottlingException" => BackendError::Throttled(detail),
        "ExpiredIteratorException" => BackendError::ExpiredIterator,
        "ResourceInUseException" => BackendError::ResourceInUse(detail),
        "ResourceNotFoundException" => match what {
            Context::Stream(stream) => BackendError::StreamNotFound(stream.to_owned()),
            Context::Shard(stream, shard) if message.contains(shard) || !message.contains(stream) => {
                BackendError::ShardNotFound(shard.to_owned())
            }
            Context::Shard(stream, _) => BackendError::StreamNotFound(stream.to_owned()),
            Context::Iterator => BackendError::ShardNotFound(detail),
            Context::Consumer(consumer) => BackendError::ConsumerNotFound(format!("{consumer} ({detail})")),
        },
        "InvalidArgumentException" | "ValidationException" => BackendError::InvalidArgument(detail),
        // Refused for good: retrying with the same credentials and policy cannot succeed.
        "AccessDeniedException" | "UnrecognizedClientException" | "MissingAuthenticationTokenException" => {
            BackendError::AccessDenied(detail)
        }
        // Possibly transient (clock skew the SDK corrects, credentials about to be refreshed).
        "InvalidSignatureException" | "ExpiredTokenException" => BackendError::other(format!(
            "credentials refused ({detail}); check the credentials and the clock"
        )),
        c if c.starts_with("KMS") => BackendError::Kms(detail),
        _ => match connect_failure(&err, "") {
            Some(failed) => failed,
            None => BackendError::other(ErrorChain(&err).to_string()),
        },
    }
}

/// Parses a hash key range, as Kinesis gives it (decimal strings).
fn hash_range(range: Option<&aws_sdk_kinesis::types::HashKeyRange>) -> Result<HashKeyRange, BackendError> {
    let range = range.ok_or_else(|| BackendError::other("shard without a hash key range"))?;
    let parse = |s: &str| {
        s.parse::<u128>()
            .map_err(|_| BackendError::other(format!("hash key {s:?} is not a 128-bit number")))
    };
    HashKeyRange::new(parse(range.starting_hash_key())?, parse(range.ending_hash_key())?)
        .ok_or_else(|| BackendError::other("hash key range with start after end"))
}

fn to_shard(s: &aws_sdk_kinesis::types::Shard) -> Result<Shard, BackendError> {
    let range = s
        .sequence_number_range()
        .ok_or_else(|| BackendError::other("shard without a sequence range"))?;
    Ok(Shard {
        shard_id: s.shard_id().to_owned(),
        parent_shard_id: s.parent_shard_id().map(str::to_owned),
        adjacent_parent_shard_id: s.adjacent_parent_shard_id().map(str::to_owned),
        hash_key_range: hash_range(s.hash_key_range())?,
        starting_sequence_number: service_sequence(range.starting_sequence_number())?,
        ending_sequence_number: range.ending_sequence_number().map(service_sequence).transpose()?,
    })
}

fn to_record(r: &aws_sdk_kinesis::types::Record) -> Result<Record, BackendError> {
    Ok(Record {
        data: Bytes::copy_from_slice(r.data().as_ref()),
        partition_key: r.partition_key().unwrap_or_default().into(),
        sequence_number: service_sequence(r.sequence_number())?,
        sub_sequence_number: 0,
        approximate_arrival_timestamp: r
            .approximate_arrival_timestamp()
            .and_then(|t| SystemTime::try_from(*t).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH),
        explicit_hash_key: None,
    })
}

fn to_children(children: &[aws_sdk_kinesis::types::ChildShard]) -> Result<Vec<ChildShard>, BackendError> {
    children
        .iter()
        .map(|c| {
            Ok(ChildShard {
                shard_id: c.shard_id().to_owned(),
                parent_shards: c.parent_shards().to_vec(),
                hash_key_range: hash_range(c.hash_key_range())?,
            })
        })
        .collect()
}

fn to_consumer(name: &str, arn: &str, status: &aws_sdk_kinesis::types::ConsumerStatus) -> StreamConsumer {
    use aws_sdk_kinesis::types::ConsumerStatus as S;
    StreamConsumer {
        name: name.to_owned(),
        arn: arn.to_owned(),
        status: match status {
            S::Active => ConsumerStatus::Active,
            S::Deleting => ConsumerStatus::Deleting,
            _ => ConsumerStatus::Creating,
        },
    }
}

impl KinesisBackend {
    /// `StreamName` of a request on `stream`: unset when the stream is named by ARN.
    fn name_param(&self, stream: &str) -> Option<String> {
        match self.arn_of(stream) {
            Some(_) => None,
            None => Some(stream.to_owned()),
        }
    }

    /// `StreamARN` of a request on `stream`, when it is named by ARN.
    fn arn_param(&self, stream: &str) -> Option<String> {
        self.arn_of(stream).map(|arn| arn.to_string())
    }

    /// The stream's ARN (fan-out consumers are registered on it).
    async fn stream_arn(&self, stream: &str) -> Result<String, BackendError> {
        if let Some(arn) = self.arn_of(stream) {
            return Ok(arn.to_string());
        }
        Ok(self.summary(stream).await?.stream_arn().to_owned())
    }

    /// What a `LimitExceededException` of `RegisterStreamConsumer` means: the consumer may be
    /// registered already (by another worker: it is used); else either a transient limit (5
    /// calls per second per account, 5 consumers `CREATING` at once: [`BackendError::Throttled`],
    /// retried) or the stream's limit of registered consumers, told apart by the stream's
    /// consumer count: 50 is every stream's most (On-demand Advantage), 20 a provisioned
    /// stream's ([`BackendError::ConsumerLimit`]). An on-demand stream with 20 to 49 consumers
    /// may be Standard (limit 20) or Advantage: retried, with the count in the error.
    async fn consumer_limit<E: std::fmt::Display>(
        &self,
        stream: &str,
        consumer_name: &str,
        err: &E,
    ) -> BackendError {
        if let Ok(consumer) = self.describe_consumer(stream, consumer_name).await {
            return BackendError::Throttled(format!(
                "consumer {consumer_name} registered meanwhile ({:?}): {err}",
                consumer.status
            ));
        }
        let Ok(summary) = self.summary(stream).await else {
            return BackendError::Throttled(format!("RegisterStreamConsumer: {err}"));
        };
        let count = summary.consumer_count().unwrap_or(0);
        let provisioned = summary
            .stream_mode_details()
            .is_some_and(|m| *m.stream_mode() == aws_sdk_kinesis::types::StreamMode::Provisioned);
        if count >= 50 || (provisioned && count >= 20) {
            return BackendError::ConsumerLimit(format!(
                "stream {stream} has {count} registered consumers ({err})"
            ));
        }
        if count >= 20 {
            return BackendError::Throttled(format!(
                "RegisterStreamConsumer: {err}; stream {stream} has {count} registered consumers (an On-demand Standard stream allows 20)"
            ));
        }
        BackendError::Throttled(format!("RegisterStreamConsumer: {err}"))
    }

    /// `DescribeStreamSummary` of the stream.
    async fn summary(
        &self,
        stream: &str,
    ) -> Result<aws_sdk_kinesis::types::StreamDescriptionSummary, BackendError> {
        let out = self
            .client
            .describe_stream_summary()
            .set_stream_name(self.name_param(stream))
            .set_stream_arn(self.arn_param(stream))
            .send()
            .await
            .map_err(|e| self.map(e, Context::Stream(stream)))?;
        out.stream_description_summary
            .ok_or_else(|| BackendError::other(format!("no description returned for stream {stream}")))
    }
}

/// A `SubscribeToShard` event stream read through the SDK (HTTP/2 on AWS; the SDK consumes the
/// service's initial-response event itself).
struct KinesisSubscription {
    events: aws_sdk_kinesis::primitives::event_stream::EventReceiver<
        aws_sdk_kinesis::types::SubscribeToShardEventStream,
        aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError,
    >,
    consumer_arn: String,
    throttles: Arc<AtomicU64>,
}

/// Maps an error of a subscription's event stream. The SDK decodes exception events into typed
/// variants without an error code, so they are matched by variant here.
fn map_event_error<R: std::fmt::Debug + Send + Sync + 'static>(
    err: aws_sdk_kinesis::error::SdkError<aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError, R>,
    consumer_arn: &str,
) -> BackendError {
    use aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError as E;
    if let Some(service) = err.as_service_error() {
        let message = service.message().unwrap_or_default().to_owned();
        match service {
            E::ResourceInUseException(_) => return BackendError::ResourceInUse(message),
            E::ResourceNotFoundException(_) => {
                return BackendError::ConsumerNotFound(format!("{consumer_arn} ({message})"))
            }
            E::KmsThrottlingException(_) => return BackendError::Throttled(message),
            E::InternalFailureException(_) => {
                return BackendError::other(format!("InternalFailureException: {message}"))
            }
            _ => {}
        }
    }
    map_error(err, Context::Consumer(consumer_arn))
}

#[async_trait]
impl ShardSubscription for KinesisSubscription {
    async fn next_event(&mut self) -> Result<Option<SubscribeEvent>, BackendError> {
        use aws_sdk_kinesis::types::SubscribeToShardEventStream as E;
        loop {
            let event = match self.events.recv().await {
                Ok(Some(E::SubscribeToShardEvent(event))) => event,
                Ok(Some(other)) => {
                    debug!(event = ?other, "ignoring an unknown subscription event");
                    continue;
                }
                Ok(None) => return Ok(None),
                Err(e) => {
                    let mapped = map_event_error(e, &self.consumer_arn);
                    if matches!(mapped, BackendError::Throttled(_)) {
                        self.throttles.fetch_add(1, Ordering::Relaxed);
                    }
                    return Err(mapped);
                }
            };
            let records = event
                .records()
                .iter()
                .map(to_record)
                .collect::<Result<Vec<_>, _>>()?;
            let continuation = event.continuation_sequence_number();
            return Ok(Some(SubscribeEvent {
                records,
                continuation_sequence_number: if continuation.is_empty() {
                    None
                } else {
                    Some(service_sequence(continuation)?)
                },
                millis_behind_latest: u64::try_from(event.millis_behind_latest()).unwrap_or(0),
                child_shards: to_children(event.child_shards())?,
            }));
        }
    }
}

#[async_trait]
impl StreamBackend for KinesisBackend {
    async fn list_shards(&self, stream: &str) -> Result<Vec<Shard>, BackendError> {
        let mut shards = Vec::new();
        let mut next: Option<String> = None;
        loop {
            // With a next token the stream name must not be sent.
            let request = match &next {
                Some(token) => self.client.list_shards().next_token(token),
                None => self
                    .client
                    .list_shards()
                    .set_stream_name(self.name_param(stream))
                    .set_stream_arn(self.arn_param(stream)),
            };
            let out = request
                .send()
                .await
                .map_err(|e| self.map(e, Context::Stream(stream)))?;
            for s in out.shards() {
                shards.push(to_shard(s)?);
            }
            match out.next_token() {
                Some(token) if !token.is_empty() => next = Some(token.to_owned()),
                _ => break,
            }
        }
        debug!(stream, shards = shards.len(), "listed shards");
        Ok(shards)
    }

    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: &IteratorPosition,
    ) -> Result<String, BackendError> {
        let request = self
            .client
            .get_shard_iterator()
            .set_stream_name(self.name_param(stream))
            .set_stream_arn(self.arn_param(stream))
            .shard_id(shard_id);
        let request = match position {
            IteratorPosition::TrimHorizon => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
            IteratorPosition::Latest => request.shard_iterator_type(ShardIteratorType::Latest),
            IteratorPosition::AtSequenceNumber(seq) => request
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .starting_sequence_number(seq.as_str()),
            IteratorPosition::AfterSequenceNumber(seq) => request
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq.as_str()),
            IteratorPosition::AtTimestamp(ts) => request
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from(*ts)),
        };
        let out = request
            .send()
            .await
            .map_err(|e| self.map(e, Context::Shard(stream, shard_id)))?;
        out.shard_iterator
            .ok_or_else(|| BackendError::other(format!("no shard iterator returned for {shard_id}")))
    }

    async fn get_records(
        &self,
        stream: &str,
        iterator: &str,
        limit: usize,
    ) -> Result<GetRecordsOutput, BackendError> {
        let limit = i32::try_from(limit.clamp(1, 10_000)).unwrap_or(10_000);
        let out = self
            .client
            .get_records()
            .set_stream_arn(self.arn_param(stream))
            .shard_iterator(iterator)
            .limit(limit)
            .send()
            .await
            .map_err(|e| self.map(e, Context::Iterator))?;
        let records = out
            .records()
            .iter()
            .map(to_record)
            .collect::<Result<Vec<_>, _>>()?;
        let child_shards = to_children(out.child_shards())?;
        Ok(GetRecordsOutput {
            records,
            next_iterator: out.next_shard_iterator().map(str::to_owned),
            millis_behind_latest: out
                .millis_behind_latest()
                .and_then(|m| u64::try_from(m).ok())
                .unwrap_or(0),
            child_shards,
        })
    }

    fn name_by_arn(&self, arn: &StreamArn) {
        self.arns
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(arn.stream_name.clone(), arn.clone());
    }

    async fn stream_identifier(&self, stream: &str) -> Result<StreamIdentifier, BackendError> {
        let d = self.summary(stream).await?;
        let epoch = u64::try_from(d.stream_creation_timestamp().secs()).unwrap_or(0);
        // The account of a stream named by ARN is the ARN's (a stream of another account).
        if let Some(arn) = self.arn_of(stream) {
            return Ok(arn.identifier(epoch));
        }
        let arn: StreamArn = d
            .stream_arn()
            .parse()
            .map_err(|e| BackendError::other(format!("DescribeStreamSummary of {stream}: {e}")))?;
        Ok(StreamIdentifier::new(&arn.account_id, stream, epoch))
    }

    async fn register_consumer(
        &self,
        stream: &str,
        consumer_name: &str,
        tags: &ConsumerTags,
    ) -> Result<StreamConsumer, BackendError> {
        let stream_arn = self.stream_arn(stream).await?;
        let tags = (!tags.is_empty()).then(|| tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        let registered = self
            .client
            .register_stream_consumer()
            .stream_arn(&stream_arn)
            .consumer_name(consumer_name)
            .set_tags(tags)
            .send()
            .await;
        match registered {
            Ok(out) => {
                let c = out
                    .consumer()
                    .ok_or_else(|| BackendError::other("RegisterStreamConsumer returned no consumer"))?;
                Ok(to_consumer(
                    c.consumer_name(),
                    c.consumer_arn(),
                    c.consumer_status(),
                ))
            }
            // Registered already (by us earlier, or another worker of the application); or the
            // stream is not ACTIVE (UPDATING: a record-size or warm-throughput change), which
            // refuses new consumers for a while: retried.
            Err(e) if e.code() == Some("ResourceInUseException") => {
                match self.describe_consumer(stream, consumer_name).await {
                    Err(BackendError::ConsumerNotFound(_)) => Err(BackendError::ResourceInUse(format!(
                        "stream {stream} refuses new consumers now (not ACTIVE: {})",
                        ErrorChain(&e)
                    ))),
                    other => {
                        debug!(consumer_name, "consumer registered already");
                        other
                    }
                }
            }
            Err(e) if e.code() == Some("LimitExceededException") => {
                Err(self.consumer_limit(stream, consumer_name, &e).await)
            }
            Err(e) => Err(self.map(e, Context::Consumer(consumer_name))),
        }
    }

    async fn describe_consumer(
        &self,
        stream: &str,
        consumer_name: &str,
    ) -> Result<StreamConsumer, BackendError> {
        let stream_arn = self.stream_arn(stream).await?;
        let out = self
            .client
            .describe_stream_consumer()
            .stream_arn(&stream_arn)
            .consumer_name(consumer_name)
            .send()
            .await
            .map_err(|e| self.map(e, Context::Consumer(consumer_name)))?;
        let c = out
            .consumer_description()
            .ok_or_else(|| BackendError::other("DescribeStreamConsumer returned no description"))?;
        Ok(to_consumer(
            c.consumer_name(),
            c.consumer_arn(),
            c.consumer_status(),
        ))
    }

    async fn subscribe_to_shard(
        &self,
        _stream: &str,
        consumer_arn: &str,
        shard_id: &str,
        position: &IteratorPosition,
    ) -> Result<Box<dyn ShardSubscription>, BackendError> {
        use aws_sdk_kinesis::types::StartingPosition;
        let start = match position {
            IteratorPosition::TrimHorizon => {
                StartingPosition::builder().r#type(ShardIteratorType::TrimHorizon)
            }
            IteratorPosition::Latest => StartingPosition::builder().r#type(ShardIteratorType::Latest),
            IteratorPosition::AtSequenceNumber(seq) => StartingPosition::builder()
                .r#type(ShardIteratorType::AtSequenceNumber)
                .sequence_number(seq.as_str()),
            IteratorPosition::AfterSequenceNumber(seq) => StartingPosition::builder()
                .r#type(ShardIteratorType::AfterSequenceNumber)
                .sequence_number(seq.as_str()),
            IteratorPosition::AtTimestamp(ts) => StartingPosition::builder()
                .r#type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from(*ts)),
        };
        let start = start
            .build()
            .map_err(|e| BackendError::InvalidArgument(e.to_string()))?;
        let out = self
            .client
            .subscribe_to_shard()
            .consumer_arn(consumer_arn)
            .shard_id(shard_id)
            .starting_position(start)
            .send()
            .await
            .map_err(|e| self.map(e, Context::Consumer(consumer_arn)))?;
        Ok(Box::new(KinesisSubscription {
            events: out.event_stream,
            consumer_arn: consumer_arn.to_owned(),
            throttles: self.throttles.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_kinesis::error::{ConnectorError, SdkError};
    use aws_sdk_kinesis::operation::list_shards::ListShardsError;

    use super::*;

    fn dispatch(connector: ConnectorError) -> SdkError<ListShardsError, ()> {
        SdkError::dispatch_failure(connector)
    }

    fn refused() -> ConnectorError {
        ConnectorError::io(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "tcp connect error: Connection refused (os error 111)",
        )))
    }

    /// No `Debug` dump of the SDK's error types in the message, only sentences.
    fn assert_sentences(text: &str) {
        for dump in ["DispatchFailure(", "ConnectorError {", "Some(", "source:"] {
            assert!(!text.contains(dump), "{dump} in {text}");
        }
    }

    #[test]
    fn a_refused_connection_says_so_with_the_endpoint() {
        let sdk = aws_config::SdkConfig::builder()
            .endpoint_url("http://127.0.0.1:9")
            .region(aws_config::Region::new("us-east-1"))
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let at = KinesisBackend::from_conf(&sdk).location();
        assert_eq!(at, " at http://127.0.0.1:9");
        let mapped = connect_failure(&dispatch(refused()), &at).expect("a connect failure");
        assert!(mapped.is_retryable());
        let text = mapped.to_string();
        assert_eq!(
            text,
            "backend error: cannot connect to Kinesis at http://127.0.0.1:9: tcp connect error: Connection refused (os error 111)"
        );
        // Without an endpoint URL the region is named.
        let sdk = aws_config::SdkConfig::builder()
            .region(aws_config::Region::new("eu-west-1"))
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        assert_eq!(KinesisBackend::from_conf(&sdk).location(), " in region eu-west-1");
    }

    #[test]
    fn other_sdk_errors_are_their_messages_without_debug_dumps() {
        let mapped = map_error(dispatch(refused()), Context::Stream("s"));
        assert_sentences(&mapped.to_string());
        assert!(
            mapped.to_string().contains("cannot connect to Kinesis"),
            "{mapped}"
        );
        let other = ConnectorError::other("an error occurred while loading credentials".into(), None);
        let mapped = map_error(dispatch(other), Context::Stream("s"));
        let text = ErrorChain(&mapped).to_string();
        assert_sentences(&text);
        assert!(
            text.contains("dispatch failure") && text.contains("loading credentials"),
            "{text}"
        );
        let timeout: SdkError<ListShardsError, ()> = SdkError::timeout_error("attempt timed out after 10s");
        let text = ErrorChain(&map_error(timeout, Context::Stream("s"))).to_string();
        assert_sentences(&text);
        assert!(text.contains("attempt timed out after 10s"), "{text}");
    }
}
