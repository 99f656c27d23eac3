//! Pure tests: mapping, aggregation, levels, dimension filtering, batching, the queue and
//! retries, through a fake `PutMetricData` (no SDK call, no network).

use super::*;
use crate::metrics as names;
use metrics::Key;
use metrics::{CounterFn, GaugeFn, HistogramFn};
use std::sync::Mutex;

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<metrics::Label> = labels
        .iter()
        .map(|(k, v)| metrics::Label::new(*k, v.to_string()))
        .collect();
    Key::from_parts(name, labels)
}

fn registry(level: MetricsLevel, dimensions: &[&str]) -> Registry {
    Registry::new(level, &dimensions.iter().map(|d| d.to_string()).collect())
}

fn shard_labels(shard: &str) -> Vec<(&'static str, String)> {
    vec![("worker_id", "w1".to_owned()), ("shard_id", shard.to_owned())]
}

fn shard_key(name: &'static str, shard: &str) -> Key {
    let labels = shard_labels(shard);
    key(
        name,
        &labels.iter().map(|(k, v)| (*k, v.as_str())).collect::<Vec<_>>(),
    )
}

fn dims(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn maps_our_names_to_the_java_kcl_ones() {
    let m = mapping(names::BYTES_PROCESSED, &[]);
    assert_eq!(
        (m.name.as_str(), m.operation.as_str()),
        ("DataBytesProcessed", "ProcessTask")
    );
    assert_eq!((m.unit, m.level), (MetricUnit::Bytes, MetricsLevel::Summary));
    let m = mapping(names::PROCESS_TIME, &[]);
    assert_eq!(m.name, "RecordProcessor.processRecords.Time");
    assert_eq!((m.unit, m.scale), (MetricUnit::Milliseconds, 1000.0));
    let m = mapping(names::LIVE_WORKERS, &[]);
    assert_eq!(
        (m.name.as_str(), m.operation.as_str()),
        ("NumWorkers", "TakeLeases")
    );
    let m = mapping(names::LOST_LEASES, &[]);
    assert_eq!(
        (m.operation.as_str(), m.level),
        ("RenewAllLeases", MetricsLevel::Summary)
    );
    let m = mapping(names::TOTAL_LEASES, &[]);
    assert_eq!(
        (m.operation.as_str(), m.level),
        ("TakeLeases", MetricsLevel::Detailed)
    );
    let m = mapping("LeaseStore.Calls", &[("op", "Scan")]);
    assert_eq!(m.operation, "LeaseStore.Scan");
    let m = mapping("MyOwn", &[]);
    assert_eq!((m.operation.as_str(), m.unit), ("Application", MetricUnit::None));
}

#[test]
fn aggregates_values_into_statistic_sets_per_window() {
    let r = registry(MetricsLevel::Detailed, &[SHARD_ID]);
    let records = r
        .register(&shard_key(names::RECORDS_PROCESSED, "shard-0"))
        .unwrap();
    CounterFn::increment(&*records, 10);
    CounterFn::increment(&*records, 2);
    CounterFn::increment(&*records, 6);
    let time = r.register(&shard_key(names::PROCESS_TIME, "shard-0")).unwrap();
    HistogramFn::record(&*time, 0.25);
    HistogramFn::record(&*time, f64::NAN); // dropped: CloudWatch rejects it
    let datums = r.close_window(SystemTime::UNIX_EPOCH);
    assert_eq!(datums.len(), 2);
    let rp = datums.iter().find(|d| d.name == "RecordsProcessed").unwrap();
    assert_eq!(
        rp.statistics,
        StatisticSet {
            sample_count: 3.0,
            sum: 18.0,
            minimum: 2.0,
            maximum: 10.0
        }
    );
    assert_eq!(
        rp.dimensions,
        dims(&[("Operation", "ProcessTask"), ("ShardId", "shard-0")])
    );
    assert_eq!(rp.unit, MetricUnit::Count);
    let t = datums
        .iter()
        .find(|d| d.name == "RecordProcessor.processRecords.Time")
        .unwrap();
    assert_eq!((t.statistics.sum, t.unit), (250.0, MetricUnit::Milliseconds));
    // The next window starts empty.
    assert!(r.close_window(SystemTime::UNIX_EPOCH).is_empty());
    CounterFn::increment(&*records, 1);
    assert_eq!(
        r.close_window(SystemTime::UNIX_EPOCH)[0].statistics.sample_count,
        1.0
    );
}

#[test]
fn gauges_sample_their_value() {
    let r = registry(MetricsLevel::Detailed, &[]);
    let g = r
        .register(&key(names::CURRENT_LEASES, &[("worker_id", "w1")]))
        .unwrap();
    GaugeFn::set(&*g, 4.0);
    GaugeFn::increment(&*g, 2.0);
    GaugeFn::decrement(&*g, 1.0);
    let d = &r.close_window(SystemTime::UNIX_EPOCH)[0];
    assert_eq!(
        (d.statistics.minimum, d.statistics.maximum, d.statistics.sum),
        (4.0, 6.0, 15.0)
    );
    assert_eq!(d.dimensions, dims(&[("Operation", "RenewAllLeases")]));
}

#[test]
fn disabled_dimensions_merge_series() {
    // Default dimensions (Java's): Operation and ShardId; WorkerIdentifier off.
    let r = registry(MetricsLevel::Detailed, &[SHARD_ID]);
    for worker in ["w1", "w2"] {
        let c = r
            .register(&key(names::TAKEN_LEASES, &[("worker_id", worker)]))
            .unwrap();
        CounterFn::increment(&*c, 3);
    }
    let datums = r.close_window(SystemTime::UNIX_EPOCH);
    assert_eq!(datums.len(), 1);
    assert_eq!(datums[0].dimensions, dims(&[("Operation", "TakeLeases")]));
    assert_eq!(
        (datums[0].statistics.sample_count, datums[0].statistics.sum),
        (2.0, 6.0)
    );

    // With WorkerIdentifier enabled they stay apart.
    let r = registry(MetricsLevel::Detailed, &[SHARD_ID, WORKER_IDENTIFIER]);
    for worker in ["w1", "w2"] {
        let c = r
            .register(&key(names::TAKEN_LEASES, &[("worker_id", worker)]))
            .unwrap();
        CounterFn::increment(&*c, 3);
    }
    let datums = r.close_window(SystemTime::UNIX_EPOCH);
    assert_eq!(datums.len(), 2);
    assert_eq!(
        datums[0].dimensions,
        dims(&[("Operation", "TakeLeases"), ("WorkerIdentifier", "w1")])
    );

    // Without ShardId, every shard's records are one series per operation.
    let r = registry(MetricsLevel::Detailed, &[]);
    for shard in ["shard-0", "shard-1", "shard-2"] {
        let c = r.register(&shard_key(names::RECORDS_PROCESSED, shard)).unwrap();
        CounterFn::increment(&*c, 5);
    }
    let datums = r.close_window(SystemTime::UNIX_EPOCH);
    assert_eq!(datums.len(), 1);
    assert_eq!(datums[0].statistics.sum, 15.0);
}

#[test]
fn multi_stream_lease_keys_give_stream_id_and_shard_id() {
    let r = registry(MetricsLevel::Detailed, &[SHARD_ID, STREAM_ID]);
    let c = r
        .register(&shard_key(
            names::RECORDS_PROCESSED,
            "123456789012:orders:1700000000:shardId-000000000003",
        ))
        .unwrap();
    CounterFn::increment(&*c, 1);
    let d = &r.close_window(SystemTime::UNIX_EPOCH)[0];
    assert_eq!(
        d.dimensions,
        dims(&[
            ("Operation", "ProcessTask"),
            ("ShardId", "shardId-000000000003"),
            ("StreamId", "123456789012:orders:1700000000")
        ])
    );
}

#[test]
fn levels_filter_metrics_as_java_does() {
    let r = registry(MetricsLevel::Summary, &[SHARD_ID]);
    assert!(r.register(&shard_key(names::RECORDS_PROCESSED, "s")).is_some());
    assert!(r.register(&shard_key(names::MILLIS_BEHIND_LATEST, "s")).is_some());
    assert!(r
        .register(&key(names::LIVE_WORKERS, &[("worker_id", "w")]))
        .is_some());
    assert!(r
        .register(&key(names::TOTAL_LEASES, &[("worker_id", "w")]))
        .is_none());
    assert!(r
        .register(&shard_key(names::GET_RECORDS_THROTTLED, "s"))
        .is_none());
    assert!(r.register(&key("LeaseStore.Calls", &[("op", "Scan")])).is_none());

    let r = registry(MetricsLevel::None, &[SHARD_ID]);
    assert!(r.register(&shard_key(names::RECORDS_PROCESSED, "s")).is_none());

    let r = registry(MetricsLevel::Detailed, &[SHARD_ID]);
    assert!(r
        .register(&key(names::TOTAL_LEASES, &[("worker_id", "w")]))
        .is_some());
}

#[test]
fn forgets_idle_series_nobody_holds() {
    let r = registry(MetricsLevel::Detailed, &[SHARD_ID]);
    let held = r.register(&shard_key(names::RECORDS_PROCESSED, "a")).unwrap();
    let dropped = r.register(&shard_key(names::RECORDS_PROCESSED, "b")).unwrap();
    CounterFn::increment(&*dropped, 1);
    drop(dropped);
    assert_eq!(r.close_window(SystemTime::UNIX_EPOCH).len(), 1); // b's last values
    r.close_window(SystemTime::UNIX_EPOCH); // b idle and unheld: forgotten
    assert_eq!(r.series.lock().unwrap().len(), 1);
    drop(held);
}

fn datum(i: usize) -> Datum {
    Datum {
        name: "RecordsProcessed".into(),
        dimensions: dims(&[
            ("Operation", "ProcessTask"),
            ("ShardId", &format!("shardId-{i:012}")),
        ]),
        unit: MetricUnit::Count,
        statistics: StatisticSet::of(1.0),
        timestamp: SystemTime::UNIX_EPOCH,
    }
}

#[test]
fn batches_respect_count_and_size_limits() {
    let datums: Vec<Datum> = (0..2_500).map(datum).collect();
    let calls = batches(datums.clone(), MAX_DATUMS_PER_CALL, MAX_REQUEST_BYTES);
    assert_eq!(
        calls.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![1000, 1000, 500]
    );
    for call in &calls {
        assert!(call.iter().map(Datum::estimated_size).sum::<usize>() <= MAX_REQUEST_BYTES);
    }
    // A byte limit smaller than 1,000 datums' worth splits by size.
    let size = datums[0].estimated_size();
    let calls = batches(datums[..100].to_vec(), 1000, size * 30 + 1);
    assert_eq!(calls.len(), 4);
    assert!(calls.iter().all(|c| c.len() <= 30));
    // Order is kept; nothing lost.
    let flat: Vec<Datum> = calls.into_iter().flatten().collect();
    assert_eq!(flat, datums[..100].to_vec());
    assert!(batches(Vec::new(), 1000, MAX_REQUEST_BYTES).is_empty());
}

/// A fake `PutMetricData`: records the calls; answers the first `throttle` calls with a
/// throttling error, and all calls with a permanent error when `reject`.
#[derive(Default)]
struct FakeSink {
    calls: Mutex<Vec<(String, Vec<Datum>)>>,
    throttle: AtomicU64,
    reject: bool,
}

impl PutMetrics for FakeSink {
    fn put<'a>(&'a self, namespace: &'a str, batch: &'a [Datum]) -> PutFuture<'a> {
        Box::pin(async move {
            self.calls
                .lock()
                .unwrap()
                .push((namespace.to_owned(), batch.to_vec()));
            if self.reject {
                return Err(PutError {
                    retryable: false,
                    message: "InvalidParameterValue".into(),
                });
            }
            if self
                .throttle
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(PutError {
                    retryable: true,
                    message: "Throttling: Rate exceeded".into(),
                });
            }
            Ok(())
        })
    }
}

fn test_config() -> CloudWatchConfig {
    let sdk = aws_sdk_cloudwatch::Config::builder()
        .behavior_version(aws_sdk_cloudwatch::config::BehaviorVersion::latest())
        .region(aws_sdk_cloudwatch::config::Region::new("us-east-1"))
        .build();
    CloudWatchConfig::new("my-app", aws_sdk_cloudwatch::Client::from_conf(sdk))
        .buffer_time(Duration::from_secs(3600))
}

fn emit_shards(recorder: &CloudWatchRecorder, shards: usize) {
    metrics::with_local_recorder(recorder, || {
        for i in 0..shards {
            let labels = shard_labels(&format!("shardId-{i:012}"));
            metrics::counter!(names::RECORDS_PROCESSED, &labels).increment(10);
            metrics::counter!(names::BYTES_PROCESSED, &labels).increment(1000);
            metrics::gauge!(names::MILLIS_BEHIND_LATEST, &labels).set(5.0);
            metrics::histogram!(names::PROCESS_TIME, &labels).record(0.002);
            metrics::counter!(names::PROCESSOR_ERRORS, &labels).increment(0);
        }
    });
}

#[tokio::test]
async fn flush_publishes_a_window_in_large_calls() {
    let sink = Arc::new(FakeSink::default());
    let (recorder, handle) = CloudWatchRecorder::with_sink(test_config(), sink.clone()).unwrap();
    emit_shards(&recorder, 300); // 1,500 series
    handle.flush().await.unwrap();
    let calls = sink.calls.lock().unwrap().clone();
    assert_eq!(
        calls.iter().map(|c| c.1.len()).collect::<Vec<_>>(),
        vec![1000, 500]
    );
    assert!(calls.iter().all(|c| c.0 == "my-app"));
    assert_eq!(handle.published_datums(), 1500);
    assert_eq!(handle.put_calls(), 2);
    // Nothing new: a flush sends nothing.
    handle.flush().await.unwrap();
    assert_eq!(handle.put_calls(), 2);
    handle.shutdown().await.unwrap();
    assert!(matches!(handle.flush().await, Err(CloudWatchError::Stopped)));
}

#[tokio::test(start_paused = true)]
async fn throttled_calls_are_retried_with_backoff() {
    let sink = Arc::new(FakeSink {
        throttle: AtomicU64::new(2),
        ..FakeSink::default()
    });
    let (recorder, handle) = CloudWatchRecorder::with_sink(test_config(), sink.clone()).unwrap();
    emit_shards(&recorder, 1);
    handle.flush().await.unwrap();
    assert_eq!(handle.put_calls(), 3);
    assert_eq!(handle.published_datums(), 5);
    assert_eq!(handle.failed_datums(), 0);
}

#[tokio::test(start_paused = true)]
async fn failed_calls_drop_their_datums_and_report() {
    let sink = Arc::new(FakeSink {
        reject: true,
        ..FakeSink::default()
    });
    let (recorder, handle) = CloudWatchRecorder::with_sink(test_config(), sink.clone()).unwrap();
    emit_shards(&recorder, 1);
    let err = handle.flush().await.unwrap_err();
    assert!(matches!(err, CloudWatchError::Publish { datums: 5, .. }), "{err}");
    assert_eq!((handle.put_calls(), handle.failed_datums()), (1, 5));
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_the_overflow() {
    let sink = Arc::new(FakeSink::default());
    let config = test_config().max_queue_size(7);
    let (recorder, handle) = CloudWatchRecorder::with_sink(config, sink.clone()).unwrap();
    emit_shards(&recorder, 2); // 10 datums
    handle.flush().await.unwrap();
    assert_eq!((handle.published_datums(), handle.dropped_datums()), (7, 3));
}

#[tokio::test(start_paused = true)]
async fn windows_are_published_every_buffer_time() {
    let sink = Arc::new(FakeSink::default());
    let config = test_config().buffer_time(Duration::from_secs(10));
    let (recorder, handle) = CloudWatchRecorder::with_sink(config, sink.clone()).unwrap();
    emit_shards(&recorder, 1);
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    assert_eq!(handle.published_datums(), 5);
    emit_shards(&recorder, 1);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(handle.published_datums(), 10);
    assert_eq!(handle.put_calls(), 2);
}

#[tokio::test]
async fn summary_level_publishes_only_summary_metrics() {
    let sink = Arc::new(FakeSink::default());
    let config = test_config().level(MetricsLevel::Summary);
    let (recorder, handle) = CloudWatchRecorder::with_sink(config, sink.clone()).unwrap();
    metrics::with_local_recorder(&recorder, || {
        let labels = shard_labels("shardId-000000000000");
        metrics::counter!(names::RECORDS_PROCESSED, &labels).increment(3);
        metrics::counter!(names::GET_RECORDS_THROTTLED, &labels).increment(1);
        metrics::gauge!(names::TOTAL_LEASES, "worker_id" => "w1").set(4.0);
        metrics::gauge!(names::LIVE_WORKERS, "worker_id" => "w1").set(2.0);
    });
    handle.flush().await.unwrap();
    let calls = sink.calls.lock().unwrap().clone();
    let mut published: Vec<&str> = calls[0].1.iter().map(|d| d.name.as_str()).collect();
    published.sort();
    assert_eq!(published, vec!["NumWorkers", "RecordsProcessed"]);
}

#[test]
fn needs_a_runtime() {
    let err = CloudWatchRecorder::with_sink(test_config(), Arc::new(FakeSink::default())).unwrap_err();
    assert!(matches!(err, CloudWatchError::NoRuntime));
}
