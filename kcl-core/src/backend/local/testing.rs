//! Helpers shared by the local backend's unit tests: a backend with one stream `S` of a given
//! number of shards, putting and reading everything back, shard ids by index.

use bytes::Bytes;

use super::{LocalBackend, PutResult};
use crate::backend::{GetRecordsOutput, IteratorPosition, StreamBackend};

pub(super) const S: &str = "test";

pub(super) fn backend(shards: usize) -> LocalBackend {
    let b = LocalBackend::new();
    b.create_stream(S, shards).unwrap();
    b
}

pub(super) async fn put(b: &LocalBackend, key: &str, data: &str) -> PutResult {
    b.put_record(S, key, Bytes::from(data.to_owned()), None)
        .await
        .unwrap()
}

pub(super) async fn read_all(b: &LocalBackend, shard: &str, pos: IteratorPosition) -> GetRecordsOutput {
    let it = b.get_shard_iterator(S, shard, &pos).await.unwrap();
    b.get_records(S, &it, 10_000).await.unwrap()
}

pub(super) fn datas(out: &GetRecordsOutput) -> Vec<String> {
    out.records
        .iter()
        .map(|r| String::from_utf8(r.data.to_vec()).unwrap())
        .collect()
}

pub(super) fn shard_id(i: u64) -> String {
    format!("shardId-{i:012}")
}
