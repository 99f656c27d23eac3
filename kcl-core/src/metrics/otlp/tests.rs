//! Pure tests of the OTLP exporter: the Java KCL 3.5's names, instruments, units and attributes,
//! windows into cumulative or delta points, levels, the queue, the configuration from the
//! environment; and the HTTP transport against a small hyper receiver on 127.0.0.1 (retries on
//! 503).

use super::*;
use crate::metrics as names;
use metrics::Key;
use std::collections::BTreeMap;
use std::sync::Mutex;

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<metrics::Label> = labels
        .iter()
        .map(|(k, v)| metrics::Label::new(*k, v.to_string()))
        .collect();
    Key::from_parts(name, labels)
}

#[test]
fn names_are_the_java_kcl_3_5_otel_names() {
    // The Java KCL's own cases (OtelMetricNameTransformer's rules).
    for (java, otel) in [
        ("MillisBehindLatest", "consumer.lag.duration"),
        ("DataBytesProcessed", "records.size"),
        ("NumWorkers", "workers"),
        ("ActiveStreams.Count", "streams.active"),
        ("RecordsProcessed", "records_processed"),
        (
            "RecordProcessor.processRecords.Time",
            "record_processor.process_records.duration",
        ),
        ("RenewLease.Time", "renew_lease.duration"),
        ("SomeOp:Time", "some_op.duration"),
        ("Items.Count", "items"),
        ("GSIReadyStatus", "gsi_ready_status"),
        ("DDBTableName", "ddb_table_name"),
        ("ABC", "abc"),
        ("Success", "success"),
        ("processRecords", "process_records"),
        ("alreadyLower", "already_lower"),
        ("Retry3Count", "retry3_count"),
        ("CurrentState:3xWorker", "current_state.3x_worker"),
        ("GetRecords.Throttled", "get_records.throttled"),
        ("LeaseStore.ReadUnits", "lease_store.read_units"),
    ] {
        assert_eq!(otel_name(java), format!("aws.kinesis.client.{otel}"), "{java}");
    }
    assert_eq!(otel_name("odd name!"), "aws.kinesis.client.odd_name_");
    assert_eq!(otel_name(&"x".repeat(300)).len(), 255);
}

#[test]
fn our_metrics_map_to_the_java_instruments_and_units() {
    use Instrument::*;
    for (ours, kind, otel, instrument, unit, operation, level) in [
        (
            names::RECORDS_PROCESSED,
            Counter,
            "records_processed",
            Counter,
            "1",
            "ProcessTask",
            MetricsLevel::Summary,
        ),
        (
            names::BYTES_PROCESSED,
            Counter,
            "records.size",
            Histogram,
            "By",
            "ProcessTask",
            MetricsLevel::Summary,
        ),
        (
            names::MILLIS_BEHIND_LATEST,
            Gauge,
            "consumer.lag.duration",
            Histogram,
            "ms",
            "ProcessTask",
            MetricsLevel::Summary,
        ),
        (
            names::PROCESS_TIME,
            Histogram,
            "record_processor.process_records.duration",
            Histogram,
            "ms",
            "ProcessTask",
            MetricsLevel::Summary,
        ),
        (
            names::PROCESSOR_ERRORS,
            Counter,
            "processor_errors",
            Counter,
            "1",
            "ProcessTask",
            MetricsLevel::Summary,
        ),
        (
            names::GET_RECORDS_THROTTLED,
            Counter,
            "get_records.throttled",
            Counter,
            "1",
            "ProcessTask",
            MetricsLevel::Detailed,
        ),
        (
            names::CURRENT_LEASES,
            Gauge,
            "current_leases",
            Gauge,
            "1",
            "RenewAllLeases",
            MetricsLevel::Summary,
        ),
        (
            names::LOST_LEASES,
            Counter,
            "lost_leases",
            Counter,
            "1",
            "RenewAllLeases",
            MetricsLevel::Summary,
        ),
        (
            names::TAKEN_LEASES,
            Counter,
            "taken_leases",
            Counter,
            "1",
            "TakeLeases",
            MetricsLevel::Summary,
        ),
        (
            names::TOTAL_LEASES,
            Gauge,
            "total_leases",
            Gauge,
            "1",
            "TakeLeases",
            MetricsLevel::Detailed,
        ),
        (
            names::LIVE_WORKERS,
            Gauge,
            "workers",
            Gauge,
            "1",
            "TakeLeases",
            MetricsLevel::Summary,
        ),
        (
            "LeaseStore.ReadUnits",
            Gauge,
            "lease_store.read_units",
            Gauge,
            "1",
            "LeaseStore.renew",
            MetricsLevel::Detailed,
        ),
        (
            "LeaseStore.Calls",
            Counter,
            "lease_store.calls",
            Counter,
            "1",
            "LeaseStore.renew",
            MetricsLevel::Detailed,
        ),
        (
            "MyOwnLatency",
            Histogram,
            "my_own_latency",
            Histogram,
            "1",
            "Application",
            MetricsLevel::Detailed,
        ),
        (
            "MyOwnCount",
            Counter,
            "my_own_count",
            Counter,
            "1",
            "Application",
            MetricsLevel::Detailed,
        ),
    ] {
        let m = otel_mapping(ours, &[("op", "renew")], kind);
        assert_eq!(m.name, format!("aws.kinesis.client.{otel}"), "{ours}");
        assert_eq!((m.instrument, m.unit), (instrument, unit), "{ours}");
        assert_eq!((m.operation.as_str(), m.level), (operation, level), "{ours}");
    }
}

fn all_dimensions() -> BTreeSet<String> {
    [SHARD_ID, WORKER_IDENTIFIER, STREAM_ID]
        .into_iter()
        .map(String::from)
        .collect()
}

#[test]
fn attributes_are_the_java_kcl_3_5_ones() {
    assert_eq!(attribute_of_dimension("Operation"), "aws.kinesis.operation");
    assert_eq!(attribute_of_dimension("ShardId"), "aws.kinesis.shard.id");
    assert_eq!(attribute_of_dimension("StreamId"), "aws.kinesis.stream_name");
    assert_eq!(
        attribute_of_dimension("WorkerIdentifier"),
        "aws.kinesis.consumer.name"
    );
    let r = Registry::with_keys(MetricsLevel::Detailed, &all_dimensions(), point_key);
    // A multi-stream application's shard: its lease key gives the stream and the shard.
    let s = r
        .register_kind(
            &key(
                names::RECORDS_PROCESSED,
                &[
                    ("worker_id", "w1"),
                    ("shard_id", "123456789012:orders:1700000000:shardId-000000000001"),
                ],
            ),
            FacadeKind::Counter,
        )
        .unwrap();
    let attributes: Vec<(&str, &str)> = s
        .key
        .attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        attributes,
        [
            ("aws.kinesis.consumer.name", "w1"),
            ("aws.kinesis.operation", "ProcessTask"),
            ("aws.kinesis.shard.id", "shardId-000000000001"),
            ("aws.kinesis.stream_name", "123456789012:orders:1700000000"),
        ]
    );
    // The default dimensions (Java's): Operation and ShardId.
    let r = Registry::with_keys(MetricsLevel::Detailed, &[SHARD_ID.to_owned()].into(), point_key);
    let s = r
        .register_kind(
            &key(
                names::RECORDS_PROCESSED,
                &[("worker_id", "w1"), ("shard_id", "shardId-1")],
            ),
            FacadeKind::Counter,
        )
        .unwrap();
    let keys: Vec<&str> = s.key.attributes.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["aws.kinesis.operation", "aws.kinesis.shard.id"]);
}

#[test]
fn levels_filter_as_java_does() {
    let summary = Registry::with_keys(MetricsLevel::Summary, &all_dimensions(), point_key);
    assert!(summary
        .register_kind(&key(names::RECORDS_PROCESSED, &[]), FacadeKind::Counter)
        .is_some());
    assert!(summary
        .register_kind(&key(names::TOTAL_LEASES, &[]), FacadeKind::Gauge)
        .is_none());
    let none = Registry::with_keys(MetricsLevel::None, &all_dimensions(), point_key);
    assert!(none
        .register_kind(&key(names::RECORDS_PROCESSED, &[]), FacadeKind::Counter)
        .is_none());
}

/// A fake receiver: keeps the requests; answers the first `unavailable` ones with a retryable
/// error.
#[derive(Default)]
struct FakeSink {
    requests: Mutex<Vec<proto::ExportMetricsServiceRequest>>,
    unavailable: AtomicU64,
}

impl PostMetrics for FakeSink {
    fn post(&self, request: proto::ExportMetricsServiceRequest) -> PostFuture<'_> {
        Box::pin(async move {
            self.requests.lock().unwrap().push(request);
            if self
                .unavailable
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(PostError {
                    retryable: true,
                    message: "HTTP 503".into(),
                });
            }
            Ok(())
        })
    }
}

fn test_config() -> OtlpConfig {
    OtlpConfig::new("my-app")
        .export_interval(Duration::from_secs(3600))
        .enabled_dimensions([SHARD_ID])
}

/// Every data point of the requests: (name, shard attribute) → (kind, value, count, start).
type Points = BTreeMap<(String, String), (&'static str, f64, u64, u64)>;

fn points_of(request: &proto::ExportMetricsServiceRequest) -> Points {
    let mut out = Points::new();
    let shard = |attributes: &[proto::KeyValue]| {
        attributes
            .iter()
            .find(|kv| kv.key == ATTRIBUTE_SHARD_ID)
            .and_then(|kv| kv.as_str())
            .unwrap_or("")
            .to_owned()
    };
    for rm in &request.resource_metrics {
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                match &m.data {
                    Some(proto::MetricData::Sum(s)) => {
                        for p in &s.data_points {
                            let value = p.as_double.unwrap_or(f64::NAN);
                            let start = p.start_time_unix_nano;
                            out.insert((m.name.clone(), shard(&p.attributes)), ("sum", value, 0, start));
                        }
                    }
                    Some(proto::MetricData::Gauge(g)) => {
                        for p in &g.data_points {
                            let value = p.as_double.unwrap_or(f64::NAN);
                            out.insert((m.name.clone(), shard(&p.attributes)), ("gauge", value, 0, 0));
                        }
                    }
                    Some(proto::MetricData::Histogram(h)) => {
                        for p in &h.data_points {
                            let value = p.sum.unwrap_or(f64::NAN);
                            let start = p.start_time_unix_nano;
                            out.insert(
                                (m.name.clone(), shard(&p.attributes)),
                                ("histogram", value, p.count, start),
                            );
                        }
                    }
                    None => {}
                }
            }
        }
    }
    out
}

fn emit(recorder: &OtlpRecorder, shard: &str, records: u64, lag: f64) {
    metrics::with_local_recorder(recorder, || {
        let labels = [("worker_id", "w1".to_owned()), ("shard_id", shard.to_owned())];
        metrics::counter!(names::RECORDS_PROCESSED, &labels).increment(records);
        metrics::gauge!(names::MILLIS_BEHIND_LATEST, &labels).set(lag);
        metrics::histogram!(names::PROCESS_TIME, &labels).record(0.002);
        metrics::gauge!(names::CURRENT_LEASES, "worker_id" => "w1").set(2.0);
    });
}

fn p(name: &str, shard: &str) -> (String, String) {
    (format!("aws.kinesis.client.{name}"), shard.to_owned())
}

#[tokio::test]
async fn windows_become_cumulative_counters_histograms_and_last_value_gauges() {
    let sink = Arc::new(FakeSink::default());
    let (recorder, handle) = OtlpRecorder::with_sink(test_config(), sink.clone()).unwrap();
    emit(&recorder, "shardId-a", 10, 500.0);
    emit(&recorder, "shardId-a", 5, 100.0);
    handle.flush().await.unwrap();
    emit(&recorder, "shardId-a", 7, 40.0);
    handle.flush().await.unwrap();
    let requests = sink.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 2);
    let resource = requests[0].resource_metrics[0].resource.as_ref().unwrap();
    assert_eq!(
        resource.attributes[0],
        proto::KeyValue::string("service.name", "my-app")
    );
    let first = points_of(&requests[0]);
    let second = points_of(&requests[1]);
    let (kind, value, _, start) = first[&p("records_processed", "shardId-a")];
    assert_eq!((kind, value), ("sum", 15.0));
    // Cumulative: the second window adds to the first, from the same start.
    let (_, value, _, second_start) = second[&p("records_processed", "shardId-a")];
    assert_eq!((value, second_start), (22.0, start));
    let (kind, sum, count, _) = first[&p("consumer.lag.duration", "shardId-a")];
    assert_eq!((kind, sum, count), ("histogram", 600.0, 2));
    let (_, sum, count, _) = second[&p("consumer.lag.duration", "shardId-a")];
    assert_eq!((sum, count), (640.0, 3));
    // Seconds to milliseconds, as the Java KCL's processRecords time.
    let (_, sum, _, _) = first[&p("record_processor.process_records.duration", "shardId-a")];
    assert!((sum - 4.0).abs() < 1e-9, "{sum}");
    assert_eq!(first[&p("current_leases", "")].0, "gauge");
    assert_eq!(first[&p("current_leases", "")].1, 2.0);
    assert_eq!(handle.exported_points(), (first.len() + second.len()) as u64);
    handle.shutdown().await.unwrap();
    assert!(matches!(handle.flush().await, Err(OtlpError::Stopped)));
}

#[tokio::test]
async fn delta_temporality_exports_each_window_alone() {
    let sink = Arc::new(FakeSink::default());
    let config = test_config().temporality(Temporality::Delta);
    let (recorder, handle) = OtlpRecorder::with_sink(config, sink.clone()).unwrap();
    emit(&recorder, "shardId-a", 10, 5.0);
    handle.flush().await.unwrap();
    emit(&recorder, "shardId-a", 7, 5.0);
    handle.flush().await.unwrap();
    let requests = sink.requests.lock().unwrap().clone();
    let second = points_of(&requests[1]);
    assert_eq!(second[&p("records_processed", "shardId-a")].1, 7.0);
    let Some(proto::MetricData::Sum(sum)) = &requests[1].resource_metrics[0].scope_metrics[0]
        .metrics
        .iter()
        .find(|m| m.name.ends_with("records_processed"))
        .unwrap()
        .data
    else {
        panic!("a sum")
    };
    assert_eq!(sum.aggregation_temporality, proto::AGGREGATION_TEMPORALITY_DELTA);
}

#[tokio::test]
async fn unavailable_receivers_are_retried_and_a_full_queue_drops() {
    let sink = Arc::new(FakeSink::default());
    sink.unavailable.store(2, Ordering::SeqCst);
    let (recorder, handle) = OtlpRecorder::with_sink(test_config(), sink.clone()).unwrap();
    emit(&recorder, "shardId-a", 1, 1.0);
    handle.flush().await.unwrap();
    assert_eq!(handle.requests(), 3);
    assert_eq!(handle.failed_points(), 0);

    let sink = Arc::new(FakeSink::default());
    let config = test_config().max_queue_size(2).max_points_per_request(1);
    let (recorder, handle) = OtlpRecorder::with_sink(config, sink.clone()).unwrap();
    emit(&recorder, "shardId-a", 1, 1.0); // four series
    handle.flush().await.unwrap();
    assert_eq!((handle.dropped_points(), handle.exported_points()), (2, 2));
    assert_eq!(sink.requests.lock().unwrap().len(), 2);
}

#[test]
fn configuration_from_the_environment() {
    let env: HashMap<&str, &str> = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s%3Dcret, x-team = kinesis"),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=prod,service.name=ignored",
        ),
        ("OTEL_SERVICE_NAME", "orders-consumer"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "15000"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "bad"),
        ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "Delta"),
    ]
    .into();
    let config = OtlpConfig::new("app").with_env(|name| env.get(name).map(|v| v.to_string()));
    assert_eq!(config.endpoint, "http://collector:4318/v1/metrics");
    assert_eq!(
        config.headers,
        [
            ("api-key".into(), "s=cret".into()),
            ("x-team".into(), "kinesis".into())
        ]
    );
    assert_eq!(
        config.resource_attributes,
        [("deployment.environment".into(), "prod".into())]
    );
    assert_eq!(config.service_name, "orders-consumer");
    assert_eq!(config.export_interval, Duration::from_secs(15));
    assert_eq!(config.timeout, Duration::from_secs(10));
    assert_eq!(config.temporality, Temporality::Delta);

    let full = OtlpConfig::new("app").with_env(|name| {
        (name == "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT").then(|| "http://h:1/custom".to_owned())
    });
    assert_eq!(full.endpoint, "http://h:1/custom");
    let defaults = OtlpConfig::new("app").with_env(|_| None);
    assert_eq!(defaults.endpoint, "http://localhost:4318/v1/metrics");
    assert_eq!(defaults.export_interval, Duration::from_secs(60));
    assert_eq!(
        OtlpConfig::new("a").endpoint("http://h:4318/v1/metrics").endpoint,
        "http://h:4318/v1/metrics"
    );
    #[cfg(not(feature = "otlp-https"))]
    assert!(HttpSink::new(&OtlpConfig::new("a").endpoint("https://collector:4318")).is_err());
    for bad in ["collector:4318", "http://", "ftp://collector/"] {
        let err = HttpSink::new(&OtlpConfig::new("a").endpoint(bad)).err();
        assert!(matches!(err, Some(OtlpError::Endpoint { .. })), "{bad}: {err:?}");
    }
}

#[test]
fn needs_a_runtime() {
    let err = OtlpRecorder::with_sink(test_config(), Arc::new(FakeSink::default())).unwrap_err();
    assert!(matches!(err, OtlpError::NoRuntime));
}

/// A receiver on 127.0.0.1 that answers 503 to the first `unavailable` requests, then 200, and
/// keeps the decoded bodies.
async fn receiver(
    unavailable: u64,
) -> (
    std::net::SocketAddr,
    Arc<Mutex<Vec<(String, String, proto::ExportMetricsServiceRequest)>>>,
) {
    receiver_with(unavailable, None).await
}

/// The TLS side of a test receiver: `testdata/cert.pem` (self-signed for 127.0.0.1 and
/// localhost) and its key.
#[cfg(feature = "otlp-https")]
fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/metrics/otlp/testdata");
    let certs = vec![CertificateDer::from_pem_file(format!("{dir}/cert.pem")).unwrap()];
    let key = PrivateKeyDer::from_pem_file(format!("{dir}/key.pem")).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Without `otlp-https`, no receiver is TLS.
#[cfg(not(feature = "otlp-https"))]
#[derive(Clone)]
enum Acceptor {}
#[cfg(feature = "otlp-https")]
type Acceptor = tokio_rustls::TlsAcceptor;

async fn receiver_with(
    unavailable: u64,
    tls: Option<Acceptor>,
) -> (
    std::net::SocketAddr,
    Arc<Mutex<Vec<(String, String, proto::ExportMetricsServiceRequest)>>>,
) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let left = Arc::new(AtomicU64::new(unavailable));
    let store = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let store = store.clone();
            let left = left.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let store = store.clone();
                        let left = left.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let api_key = req
                                .headers()
                                .get("api-key")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            let body = req.into_body().collect().await?.to_bytes();
                            let request =
                                <proto::ExportMetricsServiceRequest as prost::Message>::decode(body).unwrap();
                            store.lock().unwrap().push((path, api_key, request));
                            let status = if left
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                                .is_ok()
                            {
                                503
                            } else {
                                200
                            };
                            Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .status(status)
                                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    });
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => {
                        let _ = http
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    }
                    #[cfg(feature = "otlp-https")]
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(stream).await else {
                            return;
                        };
                        let _ = http
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                    }
                    #[cfg(not(feature = "otlp-https"))]
                    Some(never) => match never {},
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn posts_protobuf_over_http_and_retries_503() {
    let (addr, seen) = receiver(1).await;
    let config = test_config()
        .endpoint(&format!("http://{addr}"))
        .header("api-key", "secret");
    let (recorder, handle) = OtlpRecorder::new(config).unwrap();
    emit(&recorder, "shardId-a", 3, 1.0);
    handle.shutdown().await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "one 503, then the retry");
    let (path, api_key, request) = &seen[1];
    assert_eq!((path.as_str(), api_key.as_str()), ("/v1/metrics", "secret"));
    let scope = request.resource_metrics[0].scope_metrics[0]
        .scope
        .as_ref()
        .unwrap();
    assert_eq!(scope.name, "software.amazon.kinesis");
    assert_eq!(points_of(request)[&p("records_processed", "shardId-a")].1, 3.0);
    assert_eq!(handle.requests(), 2);
}

#[tokio::test]
async fn an_unreachable_receiver_fails_the_flush_without_blocking_recording() {
    // A port nothing listens on: bound, then closed.
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let config = test_config().endpoint(&format!("http://{addr}")).max_retries(0);
    let (recorder, handle) = OtlpRecorder::new(config).unwrap();
    emit(&recorder, "shardId-a", 3, 1.0);
    let err = handle.flush().await.unwrap_err();
    assert!(matches!(err, OtlpError::Export { points: 4, .. }), "{err}");
    assert_eq!(handle.failed_points(), 4);
}

#[cfg(feature = "otlp-https")]
#[tokio::test]
async fn posts_over_https_to_a_receiver_it_trusts() {
    let (addr, seen) = receiver_with(0, Some(tls_acceptor())).await;
    let port = addr.port();
    let cert = concat!(env!("CARGO_MANIFEST_DIR"), "/src/metrics/otlp/testdata/cert.pem");
    let config = test_config()
        .endpoint(&format!("https://127.0.0.1:{port}"))
        .certificate(cert);
    let (recorder, handle) = OtlpRecorder::new(config).unwrap();
    emit(&recorder, "shardId-a", 3, 1.0);
    handle.shutdown().await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(points_of(&seen[0].2)[&p("records_processed", "shardId-a")].1, 3.0);

    // Without the receiver's certificate among the roots, the TLS handshake fails.
    let config = test_config()
        .endpoint(&format!("https://localhost:{port}"))
        .max_retries(0);
    match OtlpRecorder::new(config) {
        Ok((recorder, handle)) => {
            emit(&recorder, "shardId-a", 3, 1.0);
            let err = handle.flush().await.unwrap_err();
            assert!(err.to_string().contains("TLS"), "{err}");
        }
        // A machine without a system root store: refused before any request.
        Err(err) => assert!(err.to_string().contains("no root certificate"), "{err}"),
    }
}
