//! Multi-stream applications: which streams to consume ([`StreamTracker`]), and what happens
//! to the leases of a stream that is no longer tracked ([`FormerStreamsCleanup`]).
//!
//! One application consumes several streams with one lease table and one fleet of workers.
//! Lease keys are the Java KCL's multi-stream keys, `account:stream:creationEpoch:shardId`, so
//! the table is shared with (or migrated from) a Java multi-stream application. The tracker is
//! asked at every shard sync; a stream that appears gets leases, a stream that disappears is
//! stopped on every worker (processors get `shutdown_requested` and may checkpoint, the leases
//! are released and no longer taken) and, after the clean-up delay, its leases are deleted.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use kcl_lease::StreamIdentifier;

use crate::config::InitialPosition;
use crate::stream_arn::StreamArn;

/// One stream of a multi-stream application.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamConfig {
    /// The stream's name.
    pub name: String,
    /// Its identifier (`account:stream:creationEpoch`); `None` to look it up
    /// (`DescribeStreamSummary`) the first time it is needed.
    pub identifier: Option<StreamIdentifier>,
    /// Where its new shards start; `None` for the scheduler's initial position.
    pub initial_position: Option<InitialPosition>,
    /// The stream's ARN, when it is named by one (a stream of another account): every call on
    /// it is made with the ARN, and its lease keys carry the ARN's account.
    pub arn: Option<StreamArn>,
}

impl StreamConfig {
    /// A stream by name; its account and creation time are looked up.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            identifier: None,
            initial_position: None,
            arn: None,
        }
    }

    /// A stream by ARN (`arn:aws:kinesis:REGION:ACCOUNT:stream/NAME`): a stream in another
    /// account, read through its resource policy or with the credentials of a role of that
    /// account (see [`crate::backend::routing::RoutingBackend`]). Its creation time is looked up.
    pub fn from_arn(arn: StreamArn) -> Self {
        Self {
            name: arn.stream_name.clone(),
            identifier: None,
            initial_position: None,
            arn: Some(arn),
        }
    }

    /// A stream by identifier (as found in a Java multi-stream lease table).
    pub fn identified(identifier: StreamIdentifier) -> Self {
        Self {
            name: identifier.stream_name.clone(),
            identifier: Some(identifier),
            initial_position: None,
            arn: None,
        }
    }

    /// Sets where this stream's new shards start (builder style).
    #[must_use]
    pub fn initial_position(mut self, position: InitialPosition) -> Self {
        self.initial_position = Some(position);
        self
    }
}

/// Tells a multi-stream scheduler which streams to consume. Asked at start and at every shard
/// sync (`shard_sync_interval`), so the answer may change at run time.
#[async_trait]
pub trait StreamTracker: Send + Sync + 'static {
    /// The streams to consume now.
    async fn streams(&self) -> Vec<StreamConfig>;
}

/// A fixed list of streams.
#[async_trait]
impl StreamTracker for Vec<StreamConfig> {
    async fn streams(&self) -> Vec<StreamConfig> {
        self.clone()
    }
}

/// A list of streams that can change while the scheduler runs: give one clone to the
/// scheduler and change another.
#[derive(Clone, Debug, Default)]
pub struct StreamList {
    streams: Arc<RwLock<Vec<StreamConfig>>>,
}

impl StreamList {
    /// A list holding `streams`.
    pub fn new(streams: impl IntoIterator<Item = StreamConfig>) -> Self {
        Self {
            streams: Arc::new(RwLock::new(streams.into_iter().collect())),
        }
    }

    /// Adds a stream (replacing one of the same name).
    pub fn add(&self, stream: StreamConfig) {
        let mut streams = self.write();
        streams.retain(|s| s.name != stream.name);
        streams.push(stream);
    }

    /// Removes the stream of that name; returns whether it was there.
    pub fn remove(&self, name: &str) -> bool {
        let mut streams = self.write();
        let before = streams.len();
        streams.retain(|s| s.name != name);
        streams.len() != before
    }

    /// The streams now.
    pub fn get(&self) -> Vec<StreamConfig> {
        self.streams
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<StreamConfig>> {
        self.streams
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl StreamTracker for StreamList {
    async fn streams(&self) -> Vec<StreamConfig> {
        self.get()
    }
}

/// What happens to the leases of a stream the tracker no longer lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormerStreamsCleanup {
    /// Keep them (and their checkpoints) forever: a stream added again resumes where it was.
    Never,
    /// Delete them once the stream has been missing for this long (on the worker that notices
    /// it). A stream added again before then resumes from its checkpoints.
    After(Duration),
}

impl Default for FormerStreamsCleanup {
    /// One hour: long enough to undo a mistaken removal without losing checkpoints.
    fn default() -> Self {
        Self::After(Duration::from_secs(60 * 60))
    }
}
