//! `kcl-tail --metrics otlp` against an OTLP/HTTP receiver that the test starts (a hyper server
//! on 127.0.0.1, port 0, decoding the requests with kcl-core's OTLP messages): kcl-tail runs the
//! runtime on the bundled local backend, and the Java KCL 3.5's OpenTelemetry names, attributes,
//! units, scope and resource arrive, with the records-processed sum equal to the records
//! printed. No emulator: this runs in the default tier.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use kcl_core::metrics::otlp::proto::{self, ExportMetricsServiceRequest, MetricData};
use prost::Message;

const TAIL: &str = env!("CARGO_BIN_EXE_kcl-tail");

type Received = Arc<Mutex<Vec<(String, ExportMetricsServiceRequest)>>>;

/// Starts the receiver: every `POST` is decoded and kept with its path; the answer is an empty
/// `ExportMetricsServiceResponse`.
async fn start_receiver() -> (SocketAddr, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the receiver");
    let addr = listener.local_addr().expect("local addr");
    let received: Received = Arc::default();
    let store = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let store = store.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let store = store.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let content_type = req
                                .headers()
                                .get(hyper::header::CONTENT_TYPE)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            let body = req.into_body().collect().await?.to_bytes();
                            assert_eq!(content_type, "application/x-protobuf");
                            let request =
                                ExportMetricsServiceRequest::decode(body).expect("an OTLP metrics request");
                            store.lock().unwrap().push((path, request));
                            let answer = proto::ExportMetricsServiceResponse::default().encode_to_vec();
                            Ok::<_, hyper::Error>(
                                hyper::Response::builder()
                                    .header(hyper::header::CONTENT_TYPE, "application/x-protobuf")
                                    .body(http_body_util::Full::new(bytes::Bytes::from(answer)))
                                    .expect("response"),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, received)
}

/// `kcl-tail --local` printing `lines` records of stdin, with `extra` flags; returns its exit
/// status and stderr.
fn tail_local(application: &str, lines: usize, extra: &[String]) -> (std::process::ExitStatus, String) {
    let mut command = Command::new(TAIL);
    command
        .args(["--local", "--stream", "logs", "--local-shards", "2"])
        .args(["--application-name", application, "-n", &lines.to_string()])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, _) in std::env::vars() {
        if name.starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    let mut child = command.spawn().expect("kcl-tail");
    let mut stdin = child.stdin.take().expect("stdin");
    for i in 0..lines {
        writeln!(stdin, "line {i}").expect("write stdin");
    }
    drop(stdin);
    let out = child.wait_with_output().expect("kcl-tail ends");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), lines);
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn attributes(list: &[proto::KeyValue]) -> BTreeMap<String, String> {
    list.iter()
        .map(|kv| (kv.key.clone(), kv.as_str().unwrap_or_default().to_owned()))
        .collect()
}

/// One data point as the test reads it: the metric's unit and kind, the attributes, the time,
/// and the value (a sum's or gauge's value; a histogram's sum, with its count).
#[derive(Debug, Clone)]
struct Seen {
    unit: String,
    kind: &'static str,
    attributes: BTreeMap<String, String>,
    time: u64,
    value: f64,
    count: u64,
}

fn points(received: &[(String, ExportMetricsServiceRequest)]) -> BTreeMap<String, Vec<Seen>> {
    let mut out: BTreeMap<String, Vec<Seen>> = BTreeMap::new();
    for (_, request) in received {
        for resource in &request.resource_metrics {
            for scope in &resource.scope_metrics {
                for metric in &scope.metrics {
                    let entry = out.entry(metric.name.clone()).or_default();
                    let seen = |kind, attrs: &[proto::KeyValue], time, value, count| Seen {
                        unit: metric.unit.clone(),
                        kind,
                        attributes: attributes(attrs),
                        time,
                        value,
                        count,
                    };
                    match &metric.data {
                        Some(MetricData::Sum(sum)) => {
                            assert!(sum.is_monotonic, "{} is a counter", metric.name);
                            assert_eq!(
                                sum.aggregation_temporality,
                                proto::AGGREGATION_TEMPORALITY_CUMULATIVE
                            );
                            for p in &sum.data_points {
                                entry.push(seen(
                                    "counter",
                                    &p.attributes,
                                    p.time_unix_nano,
                                    p.as_double.unwrap_or(f64::NAN),
                                    1,
                                ));
                            }
                        }
                        Some(MetricData::Gauge(gauge)) => {
                            for p in &gauge.data_points {
                                entry.push(seen(
                                    "gauge",
                                    &p.attributes,
                                    p.time_unix_nano,
                                    p.as_double.unwrap_or(f64::NAN),
                                    1,
                                ));
                            }
                        }
                        Some(MetricData::Histogram(histogram)) => {
                            for p in &histogram.data_points {
                                assert_eq!(p.bucket_counts, vec![p.count]);
                                assert!(p.min.unwrap_or(f64::NAN) <= p.max.unwrap_or(f64::NAN));
                                entry.push(seen(
                                    "histogram",
                                    &p.attributes,
                                    p.time_unix_nano,
                                    p.sum.unwrap_or(f64::NAN),
                                    p.count,
                                ));
                            }
                        }
                        None => panic!("{} has no data", metric.name),
                    }
                }
            }
        }
    }
    out
}

/// The latest point of each attribute set (cumulative: the totals).
fn latest(points: &[Seen]) -> Vec<Seen> {
    let mut by_attributes: BTreeMap<BTreeMap<String, String>, Seen> = BTreeMap::new();
    for p in points {
        let newer = by_attributes.get(&p.attributes).is_none_or(|q| q.time <= p.time);
        if newer {
            by_attributes.insert(p.attributes.clone(), p.clone());
        }
    }
    by_attributes.into_values().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcl_tail_exports_the_java_kcl_3_5_otel_metrics() {
    let (addr, received) = start_receiver().await;
    let application = format!("kcl-tail-otlp-{}", std::process::id());
    let lines = 20;
    let flags: Vec<String> = [
        "--metrics",
        "otlp",
        "--otlp-endpoint",
        &format!("http://{addr}"),
        "--metrics-buffer-ms",
        "300",
        "--metrics-dimensions",
        "ShardId,WorkerIdentifier",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let (status, stderr) = tokio::task::spawn_blocking({
        let application = application.clone();
        move || tail_local(&application, lines, &flags)
    })
    .await
    .unwrap();
    assert!(status.success(), "kcl-tail: {status:?}\n{stderr}");
    let received = received.lock().unwrap().clone();
    assert!(!received.is_empty(), "no OTLP request arrived\n{stderr}");
    for (path, request) in &received {
        assert_eq!(path, "/v1/metrics");
        let resource = &request.resource_metrics[0];
        let resource_attributes = attributes(&resource.resource.as_ref().expect("resource").attributes);
        assert_eq!(resource_attributes.get("service.name"), Some(&application));
        let scope = resource.scope_metrics[0].scope.as_ref().expect("scope");
        assert_eq!(scope.name, "software.amazon.kinesis");
    }
    let points = points(&received);
    let names: Vec<&String> = points.keys().collect();
    for expected in [
        "aws.kinesis.client.records_processed",
        "aws.kinesis.client.records.size",
        "aws.kinesis.client.consumer.lag.duration",
        "aws.kinesis.client.record_processor.process_records.duration",
        "aws.kinesis.client.current_leases",
        "aws.kinesis.client.taken_leases",
    ] {
        assert!(points.contains_key(expected), "{expected} in {names:?}\n{stderr}");
    }
    assert!(
        names.iter().all(|n| n.starts_with("aws.kinesis.client.")),
        "{names:?}"
    );

    // Records processed: a counter per shard, with the Java attributes; the cumulative totals
    // of the shards are the records printed.
    let processed = latest(&points["aws.kinesis.client.records_processed"]);
    let mut total = 0.0;
    for p in &processed {
        assert_eq!((p.kind, p.unit.as_str()), ("counter", "1"));
        let keys: Vec<&str> = p.attributes.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "aws.kinesis.consumer.name",
                "aws.kinesis.operation",
                "aws.kinesis.shard.id"
            ],
            "{p:?}"
        );
        assert_eq!(p.attributes["aws.kinesis.operation"], "ProcessTask");
        assert!(
            p.attributes["aws.kinesis.shard.id"].starts_with("shardId-"),
            "{p:?}"
        );
        assert!(!p.attributes["aws.kinesis.consumer.name"].is_empty());
        total += p.value;
    }
    assert_eq!(
        total, lines as f64,
        "records_processed sums to the records printed: {processed:?}"
    );

    // The lag (MillisBehindLatest): a histogram in milliseconds, one value per batch.
    for p in latest(&points["aws.kinesis.client.consumer.lag.duration"]) {
        assert_eq!((p.kind, p.unit.as_str()), ("histogram", "ms"));
        assert!(p.count >= 1 && p.value >= 0.0, "{p:?}");
        assert_eq!(p.attributes["aws.kinesis.operation"], "ProcessTask");
    }
    // The payload bytes (DataBytesProcessed): "line 0" .. "line 19".
    let bytes: f64 = latest(&points["aws.kinesis.client.records.size"])
        .iter()
        .inspect(|p| assert_eq!((p.kind, p.unit.as_str()), ("histogram", "By")))
        .map(|p| p.value)
        .sum();
    let expected_bytes: usize = (0..lines).map(|i| format!("line {i}").len()).sum();
    assert_eq!(bytes, expected_bytes as f64);
    // The leases held: a gauge of RenewAllLeases, per worker (no shard).
    for p in latest(&points["aws.kinesis.client.current_leases"]) {
        assert_eq!(p.kind, "gauge");
        assert_eq!(p.attributes["aws.kinesis.operation"], "RenewAllLeases");
        assert!(!p.attributes.contains_key("aws.kinesis.shard.id"));
        assert!(p.value >= 0.0 && p.value <= 2.0, "{p:?}");
    }
}

#[test]
fn otlp_endpoint_needs_metrics_otlp() {
    let out = Command::new(TAIL)
        .args([
            "--local",
            "--stream",
            "logs",
            "--otlp-endpoint",
            "http://127.0.0.1:4318",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("kcl-tail");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--metrics otlp"), "{stderr}");
}
