//! `RoutingBackend`: a [`StreamBackend`] that sends the calls on each stream to the backend
//! configured for it.
//!
//! Why: in one multi-stream worker, streams of other accounts are read with the credentials of
//! a role of that account (one `KinesisBackend` per role, each an SDK client with its own
//! credentials), and the rest with the worker's own. Every call of the trait names its stream
//! (`GetRecords` and `SubscribeToShard` included), so the route is chosen per call; the scheduler
//! keeps one backend and does not know about the routes.
//!
//! ```
//! use kcl_core::backend::routing::RoutingBackend;
//! use kcl_core::LocalBackend;
//!
//! let own = LocalBackend::new();
//! let partner = LocalBackend::new();
//! own.create_stream("orders", 1).unwrap();
//! partner.create_stream("payments", 1).unwrap();
//! // "payments" through its own backend (e.g. a KinesisBackend with an assumed role's
//! // credentials), every other stream through `own`.
//! let backend = RoutingBackend::new(own).route("payments", partner);
//! assert!(backend.routes_to("payments"));
//! assert!(!backend.routes_to("orders"));
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::{
    BackendError, ConsumerTags, GetRecordsOutput, IteratorPosition, ShardSubscription, StreamBackend,
    StreamConsumer,
};
use crate::record::Shard;
use crate::stream_arn::StreamArn;
use kcl_lease::StreamIdentifier;

/// Sends each stream's calls to the backend routed for it, the others to the default backend.
/// Cheap to clone.
#[derive(Clone)]
pub struct RoutingBackend {
    /// For streams without a route; `None`: such streams are not found.
    default: Option<Arc<dyn StreamBackend>>,
    /// Stream name → its backend.
    routes: Arc<HashMap<String, Arc<dyn StreamBackend>>>,
}

impl std::fmt::Debug for RoutingBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut routes: Vec<&String> = self.routes.keys().collect();
        routes.sort();
        f.debug_struct("RoutingBackend")
            .field("default", &self.default.is_some())
            .field("routes", &routes)
            .finish()
    }
}

impl RoutingBackend {
    /// Streams without a route go to `default`.
    pub fn new(default: impl StreamBackend) -> Self {
        Self {
            default: Some(Arc::new(default)),
            routes: Arc::new(HashMap::new()),
        }
    }

    /// Only routed streams exist: a call on any other stream fails with
    /// [`BackendError::StreamNotFound`].
    pub fn without_default() -> Self {
        Self {
            default: None,
            routes: Arc::new(HashMap::new()),
        }
    }

    /// Sends the calls on `stream` (its name, also for a stream named by ARN) to `backend`,
    /// replacing an earlier route of that stream.
    #[must_use]
    pub fn route(mut self, stream: impl Into<String>, backend: impl StreamBackend) -> Self {
        Arc::make_mut(&mut self.routes).insert(stream.into(), Arc::new(backend));
        self
    }

    /// Whether `stream` has a route of its own.
    pub fn routes_to(&self, stream: &str) -> bool {
        self.routes.contains_key(stream)
    }

    fn backend(&self, stream: &str) -> Result<&dyn StreamBackend, BackendError> {
        self.routes
            .get(stream)
            .or(self.default.as_ref())
            .map(|b| &**b)
            .ok_or_else(|| BackendError::StreamNotFound(stream.to_owned()))
    }
}

#[async_trait]
impl StreamBackend for RoutingBackend {
    async fn list_shards(&self, stream: &str) -> Result<Vec<Shard>, BackendError> {
        self.backend(stream)?.list_shards(stream).await
    }

    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: &IteratorPosition,
    ) -> Result<String, BackendError> {
        self.backend(stream)?
            .get_shard_iterator(stream, shard_id, position)
            .await
    }

    async fn get_records(
        &self,
        stream: &str,
        iterator: &str,
        limit: usize,
    ) -> Result<GetRecordsOutput, BackendError> {
        self.backend(stream)?.get_records(stream, iterator, limit).await
    }

    fn name_by_arn(&self, arn: &StreamArn) {
        if let Ok(backend) = self.backend(&arn.stream_name) {
            backend.name_by_arn(arn);
        }
    }

    async fn stream_identifier(&self, stream: &str) -> Result<StreamIdentifier, BackendError> {
        self.backend(stream)?.stream_identifier(stream).await
    }

    async fn check_stream_ended(&self, stream: &str) -> Result<(), BackendError> {
        self.backend(stream)?.check_stream_ended(stream).await
    }

    async fn register_consumer(
        &self,
        stream: &str,
        consumer_name: &str,
        tags: &ConsumerTags,
    ) -> Result<StreamConsumer, BackendError> {
        self.backend(stream)?
            .register_consumer(stream, consumer_name, tags)
            .await
    }

    async fn describe_consumer(
        &self,
        stream: &str,
        consumer_name: &str,
    ) -> Result<StreamConsumer, BackendError> {
        self.backend(stream)?
            .describe_consumer(stream, consumer_name)
            .await
    }

    async fn subscribe_to_shard(
        &self,
        stream: &str,
        consumer_arn: &str,
        shard_id: &str,
        position: &IteratorPosition,
    ) -> Result<Box<dyn ShardSubscription>, BackendError> {
        self.backend(stream)?
            .subscribe_to_shard(stream, consumer_arn, shard_id, position)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::local::LocalBackend;
    use bytes::Bytes;

    async fn read_one(b: &RoutingBackend, stream: &str) -> Result<Vec<Bytes>, BackendError> {
        let it = b
            .get_shard_iterator(stream, "shardId-000000000000", &IteratorPosition::TrimHorizon)
            .await?;
        let out = b.get_records(stream, &it, 10).await?;
        Ok(out.records.into_iter().map(|r| r.data).collect())
    }

    #[tokio::test]
    async fn every_call_goes_to_the_streams_backend() {
        let own = LocalBackend::new();
        let partner = LocalBackend::new();
        own.create_stream("orders", 1).unwrap();
        partner.create_stream("payments", 1).unwrap();
        own.put_record("orders", "k", Bytes::from_static(b"o"), None)
            .await
            .unwrap();
        partner
            .put_record("payments", "k", Bytes::from_static(b"p"), None)
            .await
            .unwrap();
        let b = RoutingBackend::new(own.clone()).route("payments", partner.clone());
        assert_eq!(read_one(&b, "orders").await.unwrap(), [&b"o"[..]]);
        assert_eq!(read_one(&b, "payments").await.unwrap(), [&b"p"[..]]);
        assert_eq!(b.list_shards("payments").await.unwrap().len(), 1);
        let consumer = b
            .register_consumer("payments", "app", &ConsumerTags::new())
            .await
            .unwrap();
        assert_eq!(
            b.describe_consumer("payments", "app").await.unwrap().arn,
            consumer.arn
        );
        // The consumer lives in the partner's backend, not the default one.
        assert!(own.describe_consumer("orders", "app").await.is_err());
        assert!(partner.describe_consumer("payments", "app").await.is_ok());
        assert!(b.stream_identifier("payments").await.is_ok());
    }

    #[tokio::test]
    async fn without_a_default_only_routed_streams_exist() {
        let partner = LocalBackend::new();
        partner.create_stream("payments", 1).unwrap();
        let b = RoutingBackend::without_default().route("payments", partner);
        assert!(read_one(&b, "payments").await.unwrap().is_empty());
        assert!(matches!(
            b.list_shards("orders").await,
            Err(BackendError::StreamNotFound(s)) if s == "orders"
        ));
        assert!(matches!(
            b.get_records("orders", "it", 1).await,
            Err(BackendError::StreamNotFound(_))
        ));
    }
}
