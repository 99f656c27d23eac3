//! [`BackendOp`]: the operations of a stream backend, named for counting calls (the local
//! backend) and for fault rules (the fault-injecting wrapper).

/// The operations of a stream backend, for counting calls and for fault rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum BackendOp {
    /// [`StreamBackend::list_shards`](super::StreamBackend::list_shards)
    ListShards,
    /// [`StreamBackend::get_shard_iterator`](super::StreamBackend::get_shard_iterator)
    GetShardIterator,
    /// [`StreamBackend::get_records`](super::StreamBackend::get_records)
    GetRecords,
    /// [`LocalBackend::put_record`](super::local::LocalBackend::put_record)
    PutRecord,
    /// [`LocalBackend::put_records`](super::local::LocalBackend::put_records)
    PutRecords,
    /// [`StreamBackend::register_consumer`](super::StreamBackend::register_consumer)
    RegisterConsumer,
    /// [`StreamBackend::describe_consumer`](super::StreamBackend::describe_consumer)
    DescribeConsumer,
    /// [`StreamBackend::subscribe_to_shard`](super::StreamBackend::subscribe_to_shard)
    SubscribeToShard,
    /// [`super::ShardSubscription::next_event`] (for fault rules; the local backend does not
    /// count events)
    SubscriptionEvent,
    /// [`StreamBackend::stream_identifier`](super::StreamBackend::stream_identifier)
    DescribeStream,
}

impl BackendOp {
    /// Every operation.
    pub const ALL: [BackendOp; 10] = [
        BackendOp::ListShards,
        BackendOp::GetShardIterator,
        BackendOp::GetRecords,
        BackendOp::PutRecord,
        BackendOp::PutRecords,
        BackendOp::RegisterConsumer,
        BackendOp::DescribeConsumer,
        BackendOp::SubscribeToShard,
        BackendOp::SubscriptionEvent,
        BackendOp::DescribeStream,
    ];

    /// A dense index, `0..ALL.len()`.
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}
