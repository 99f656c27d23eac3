//! The CloudWatch metrics publisher (`kcl_core::metrics::cloudwatch`) against moto's server,
//! which this test starts itself (`localstack/start-moto.sh`; it fails, never skips, when it
//! cannot): a real scheduler on the local backend with the recorder installed processes
//! records, the publisher flushes, and CloudWatch's `ListMetrics` and `GetMetricStatistics`
//! show the Java KCL's names, namespace and dimensions (DETAILED), and no DETAILED metric at
//! SUMMARY. Then the number of `PutMetricData` calls for 200 shards' series in one window.
//!
//! Each scenario records through its own recorder on a current-thread runtime
//! (`metrics::with_local_recorder`), so no global recorder is needed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_cloudwatch::types::{Metric, Statistic};
use kcl_core::metrics::cloudwatch::{
    CloudWatchConfig, CloudWatchHandle, CloudWatchRecorder, MetricsLevel, SHARD_ID, WORKER_IDENTIFIER,
};
use kcl_core::{InMemoryLeaseStore, LocalBackend};
use kcl_tests::*;

const LIMIT: Duration = Duration::from_secs(60);

fn namespace(what: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("kcl-test-{what}-{}-{nanos}", std::process::id())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Runs one worker over a 2-shard stream of 40 records with the recorder of `config` as the
/// metrics recorder of its runtime, then flushes; returns the publisher's handle.
fn run_worker(rt: &tokio::runtime::Runtime, config: CloudWatchConfig) -> CloudWatchHandle {
    let (recorder, handle) = rt
        .block_on(async { CloudWatchRecorder::new(config) })
        .expect("recorder");
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let backend = LocalBackend::new();
            backend.create_stream(STREAM, 2).unwrap();
            let store = InMemoryLeaseStore::new();
            let log = Log::default();
            let mut produced = BTreeMap::new();
            produce(&backend, 4, 10, &mut produced).await;
            let worker = start("w1", &backend, &store, &log, Duration::from_secs(3));
            wait_until(LIMIT, "all processed", || log.wait_count() == 40).await;
            // A few lease rounds (renewals every failover/3).
            tokio::time::sleep(Duration::from_millis(2_500)).await;
            // A throttled read, as a shard consumer counts one (a DETAILED, shard-level metric;
            // the local backend never throttles).
            metrics::counter!(
                kcl_core::metrics::GET_RECORDS_THROTTLED,
                "worker_id" => "w1",
                "shard_id" => "shardId-000000000000"
            )
            .increment(1);
            worker.shutdown().await.unwrap();
            handle.flush().await.expect("flush");
        })
    });
    handle
}

async fn list_metrics(client: &aws_sdk_cloudwatch::Client, namespace: &str) -> Vec<Metric> {
    client
        .list_metrics()
        .namespace(namespace)
        .into_paginator()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .expect("ListMetrics")
        .into_iter()
        .flat_map(|page| page.metrics.unwrap_or_default())
        .collect()
}

/// Metric name -> the sets of dimension names it was published with.
fn by_name(metrics: &[Metric]) -> BTreeMap<String, BTreeSet<Vec<String>>> {
    let mut out: BTreeMap<String, BTreeSet<Vec<String>>> = BTreeMap::new();
    for m in metrics {
        let mut dims: Vec<String> = m
            .dimensions()
            .iter()
            .filter_map(|d| d.name().map(str::to_owned))
            .collect();
        dims.sort();
        out.entry(m.metric_name().unwrap_or_default().to_owned())
            .or_default()
            .insert(dims);
    }
    out
}

fn dims_of(metric: &Metric) -> BTreeMap<String, String> {
    metric
        .dimensions()
        .iter()
        .map(|d| {
            (
                d.name().unwrap_or_default().to_owned(),
                d.value().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Sum and sample count of a metric over the last ten minutes.
async fn statistics(client: &aws_sdk_cloudwatch::Client, namespace: &str, metric: &Metric) -> (f64, f64) {
    let now = SystemTime::now();
    let out = client
        .get_metric_statistics()
        .namespace(namespace)
        .metric_name(metric.metric_name().unwrap_or_default())
        .set_dimensions(Some(metric.dimensions().to_vec()))
        .start_time((now - Duration::from_secs(600)).into())
        .end_time((now + Duration::from_secs(600)).into())
        .period(60)
        .statistics(Statistic::Sum)
        .statistics(Statistic::SampleCount)
        .send()
        .await
        .expect("GetMetricStatistics");
    out.datapoints().iter().fold((0.0, 0.0), |(s, c), d| {
        (s + d.sum().unwrap_or(0.0), c + d.sample_count().unwrap_or(0.0))
    })
}

#[test]
fn detailed_publishes_the_java_kcl_names_namespace_and_dimensions() {
    init_tracing();
    let client = moto::cloudwatch_client();
    let ns = namespace("detailed");
    let rt = runtime();
    let config = CloudWatchConfig::new(ns.clone(), client.clone())
        .level(MetricsLevel::Detailed)
        .enabled_dimensions([SHARD_ID, WORKER_IDENTIFIER])
        .buffer_time(Duration::from_secs(3600));
    let handle = run_worker(&rt, config);
    assert_eq!((handle.failed_datums(), handle.dropped_datums()), (0, 0));
    assert!(handle.published_datums() > 0);

    rt.block_on(async {
        let metrics = list_metrics(&client, &ns).await;
        let names = by_name(&metrics);
        eprintln!("DETAILED: {} metrics in {ns}:", metrics.len());
        for (name, dims) in &names {
            eprintln!("  {name}: {dims:?}");
        }
        let shard_level: BTreeSet<Vec<String>> = [vec![
            "Operation".to_owned(),
            "ShardId".to_owned(),
            "WorkerIdentifier".to_owned(),
        ]]
        .into();
        let worker_level: BTreeSet<Vec<String>> =
            [vec!["Operation".to_owned(), "WorkerIdentifier".to_owned()]].into();
        for name in [
            "RecordsProcessed",
            "DataBytesProcessed",
            "MillisBehindLatest",
            "RecordProcessor.processRecords.Time",
            "GetRecords.Throttled",
        ] {
            assert_eq!(names.get(name), Some(&shard_level), "{name}");
        }
        for name in [
            "CurrentLeases",
            "TakenLeases",
            "NumWorkers",
            "TotalLeases",
            "LeaseTable.Scans",
            "LeaseStore.Calls",
        ] {
            assert_eq!(names.get(name), Some(&worker_level), "{name}");
        }
        // Our names never appear where the Java KCL's differ.
        for ours in ["BytesProcessed", "ProcessTask.Time", "LiveWorkers"] {
            assert!(!names.contains_key(ours), "{ours} published under our name");
        }

        // Operations and values: the records of both shards, under ProcessTask.
        let mut records = 0.0;
        let mut shards = BTreeSet::new();
        for m in metrics
            .iter()
            .filter(|m| m.metric_name() == Some("RecordsProcessed"))
        {
            let dims = dims_of(m);
            assert_eq!(dims["Operation"], "ProcessTask");
            assert_eq!(dims["WorkerIdentifier"], "w1");
            shards.insert(dims["ShardId"].clone());
            records += statistics(&client, &ns, m).await.0;
        }
        assert_eq!(shards.len(), 2, "{shards:?}");
        assert_eq!(records, 40.0);
        for (name, operation) in [
            ("CurrentLeases", "RenewAllLeases"),
            ("TakenLeases", "TakeLeases"),
            ("TotalLeases", "TakeLeases"),
            ("NumWorkers", "TakeLeases"),
        ] {
            for m in metrics.iter().filter(|m| m.metric_name() == Some(name)) {
                assert_eq!(dims_of(m)["Operation"], operation, "{name}");
            }
        }
        let taken = metrics
            .iter()
            .find(|m| m.metric_name() == Some("TakenLeases"))
            .unwrap();
        assert_eq!(statistics(&client, &ns, taken).await.0, 2.0);
    });
    rt.block_on(handle.shutdown()).expect("shutdown");
}

#[test]
fn summary_omits_the_detailed_metrics_and_default_dimensions_omit_the_worker() {
    init_tracing();
    let client = moto::cloudwatch_client();
    let ns = namespace("summary");
    let rt = runtime();
    // Java's defaults: Operation and ShardId, no WorkerIdentifier.
    let config = CloudWatchConfig::new(ns.clone(), client.clone())
        .level(MetricsLevel::Summary)
        .buffer_time(Duration::from_secs(3600));
    let handle = run_worker(&rt, config);
    assert_eq!(handle.failed_datums(), 0);

    rt.block_on(async {
        let metrics = list_metrics(&client, &ns).await;
        let names = by_name(&metrics);
        eprintln!("SUMMARY: {} metrics in {ns}:", metrics.len());
        for (name, dims) in &names {
            eprintln!("  {name}: {dims:?}");
        }
        let published: BTreeSet<&str> = names.keys().map(String::as_str).collect();
        for name in [
            "RecordsProcessed",
            "DataBytesProcessed",
            "MillisBehindLatest",
            "CurrentLeases",
            "TakenLeases",
        ] {
            assert!(
                published.contains(name),
                "{name} missing at SUMMARY: {published:?}"
            );
        }
        for name in [
            "GetRecords.Throttled",
            "ExpiredIterator",
            "KplMisplacedRecords",
            "SkippedRecords",
            "TotalLeases",
            "LeaseTable.Scans",
            "LeaseStore.Calls",
        ] {
            assert!(!published.contains(name), "{name} published at SUMMARY");
        }
        for m in &metrics {
            assert!(!dims_of(m).contains_key("WorkerIdentifier"), "{m:?}");
        }
        let processed: BTreeSet<Vec<String>> = [vec!["Operation".to_owned(), "ShardId".to_owned()]].into();
        assert_eq!(names["RecordsProcessed"], processed);
    });
    rt.block_on(handle.shutdown()).expect("shutdown");
}

/// The series a shard consumer touches (its nine per-shard metrics).
fn emit_shard_series(shards: usize) {
    use kcl_core::metrics as names;
    for i in 0..shards {
        let labels = [
            ("worker_id", "w1".to_owned()),
            ("shard_id", format!("shardId-{i:012}")),
        ];
        metrics::counter!(names::RECORDS_PROCESSED, &labels).increment(10);
        metrics::counter!(names::BYTES_PROCESSED, &labels).increment(10_000);
        metrics::gauge!(names::MILLIS_BEHIND_LATEST, &labels).set(250.0);
        metrics::histogram!(names::PROCESS_TIME, &labels).record(0.003);
        for name in [
            names::PROCESSOR_ERRORS,
            names::GET_RECORDS_THROTTLED,
            names::EXPIRED_ITERATOR,
            names::KPL_MISPLACED_RECORDS,
            names::SKIPPED_RECORDS,
        ] {
            metrics::counter!(name, &labels).increment(0);
        }
    }
}

#[test]
fn two_hundred_shards_in_one_window_take_two_put_metric_data_calls() {
    init_tracing();
    let client = moto::cloudwatch_client();
    let ns = namespace("calls");
    let rt = runtime();
    let config = CloudWatchConfig::new(ns.clone(), client.clone())
        .enabled_dimensions([SHARD_ID, WORKER_IDENTIFIER])
        .buffer_time(Duration::from_secs(3600));
    let (recorder, handle) = rt
        .block_on(async { CloudWatchRecorder::new(config) })
        .expect("recorder");
    metrics::with_local_recorder(&recorder, || emit_shard_series(200));
    let started = Instant::now();
    rt.block_on(handle.flush()).expect("flush");
    let took = started.elapsed();
    let (calls, datums) = (handle.put_calls(), handle.published_datums());
    println!(
        "200 shards, one window: {datums} datums in {calls} PutMetricData calls ({:.0} datums per call, {took:?} to publish to moto); the Java KCL 2.x's 20 per call would take {} calls",
        datums as f64 / calls as f64,
        datums.div_ceil(20)
    );
    assert_eq!(datums, 1_800);
    assert_eq!(calls, 2);
    let metrics = rt.block_on(list_metrics(&client, &ns));
    assert_eq!(metrics.len(), 1_800);
    rt.block_on(handle.shutdown()).expect("shutdown");
}

#[test]
fn moto_answers_with_dimension_filters() {
    // ListMetrics with a dimension filter, as a dashboard query would.
    let client = moto::cloudwatch_client();
    let ns = namespace("filter");
    let rt = runtime();
    let config = CloudWatchConfig::new(ns.clone(), client.clone()).buffer_time(Duration::from_secs(3600));
    let (recorder, handle) = rt
        .block_on(async { CloudWatchRecorder::new(config) })
        .expect("recorder");
    metrics::with_local_recorder(&recorder, || emit_shard_series(3));
    rt.block_on(handle.flush()).expect("flush");
    let found = rt
        .block_on(
            client
                .list_metrics()
                .namespace(&ns)
                .dimensions(
                    aws_sdk_cloudwatch::types::DimensionFilter::builder()
                        .name("ShardId")
                        .value("shardId-000000000001")
                        .build(),
                )
                .send(),
        )
        .expect("ListMetrics");
    assert_eq!(found.metrics().len(), 9);
    rt.block_on(handle.shutdown()).expect("shutdown");
}
