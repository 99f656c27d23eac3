//! `kcl-tail --metrics cloudwatch` against moto's server (started by the project's
//! `localstack/start-moto.sh` through `kcl_tests::moto`; the test fails, never skips, when it
//! cannot): the Java KCL's names, namespace (the application name) and dimensions arrive, and the
//! sums match the records printed. And the flags that contradict each other are refused.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatch::types::{Dimension, Statistic};

const TAIL: &str = env!("CARGO_BIN_EXE_kcl-tail");

fn unique(what: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("kcl-tail-cw-{what}-{}-{nanos}", std::process::id())
}

/// `kcl-tail --local` printing `lines` records of stdin, with `extra` flags and CloudWatch at
/// moto; returns its exit status and stderr.
fn tail_local(application: &str, lines: usize, extra: &[&str]) -> (std::process::ExitStatus, String) {
    let endpoint = kcl_tests::moto::ensure_started();
    let mut child = Command::new(TAIL)
        .args(["--local", "--stream", "logs", "--local-shards", "2"])
        .args(["--application-name", application, "-n", &lines.to_string()])
        .args(extra)
        .env("AWS_ENDPOINT_URL_CLOUDWATCH", endpoint)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env_remove("AWS_PROFILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcl-tail");
    let mut stdin = child.stdin.take().expect("stdin");
    for i in 0..lines {
        writeln!(stdin, "line {i}").expect("write stdin");
    }
    drop(stdin);
    let out = child.wait_with_output().expect("kcl-tail ends");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), lines);
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcl_tail_publishes_the_java_kcl_metrics_to_cloudwatch() {
    let application = unique("detailed");
    let (status, stderr) = tokio::task::spawn_blocking({
        let application = application.clone();
        move || {
            tail_local(
                &application,
                20,
                &[
                    "--metrics",
                    "cloudwatch",
                    "--metrics-buffer-ms",
                    "500",
                    "--metrics-dimensions",
                    "ShardId,WorkerIdentifier",
                ],
            )
        }
    })
    .await
    .unwrap();
    assert!(status.success(), "kcl-tail: {status:?}\n{stderr}");
    let client = kcl_tests::moto::cloudwatch_client();
    let metrics = client
        .list_metrics()
        .namespace(&application)
        .send()
        .await
        .expect("ListMetrics")
        .metrics
        .unwrap_or_default();
    let names: std::collections::BTreeSet<String> =
        metrics.iter().filter_map(|m| m.metric_name.clone()).collect();
    for expected in [
        "RecordsProcessed",
        "DataBytesProcessed",
        "TakenLeases",
        "CurrentLeases",
    ] {
        assert!(names.contains(expected), "{expected} in {names:?}\n{stderr}");
    }
    // RecordsProcessed per shard, with the Java dimensions; the sums are the records printed.
    let per_shard: Vec<Vec<Dimension>> = metrics
        .iter()
        .filter(|m| m.metric_name.as_deref() == Some("RecordsProcessed"))
        .map(|m| m.dimensions.clone().unwrap_or_default())
        .collect();
    assert!(!per_shard.is_empty());
    let mut total = 0.0;
    for dims in per_shard {
        let mut keys: Vec<&str> = dims.iter().filter_map(|d| d.name.as_deref()).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["Operation", "ShardId", "WorkerIdentifier"]);
        assert!(dims
            .iter()
            .any(|d| d.name.as_deref() == Some("Operation") && d.value.as_deref() == Some("ProcessTask")));
        let now = aws_smithy_types::DateTime::from(SystemTime::now() + Duration::from_secs(3600));
        let start = aws_smithy_types::DateTime::from(SystemTime::now() - Duration::from_secs(3600));
        let stats = client
            .get_metric_statistics()
            .namespace(&application)
            .metric_name("RecordsProcessed")
            .set_dimensions(Some(dims.clone()))
            .start_time(start)
            .end_time(now)
            .period(60)
            .statistics(Statistic::Sum)
            .send()
            .await
            .expect("GetMetricStatistics");
        total += stats
            .datapoints
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p.sum)
            .sum::<f64>();
    }
    assert_eq!(total, 20.0, "RecordsProcessed sums to the records printed");
}

#[test]
fn metrics_flags_that_contradict_each_other_are_refused() {
    let out = Command::new(TAIL)
        .args([
            "--local",
            "--stream",
            "s",
            "--metrics",
            "none",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("kcl-tail");
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--metrics-addr"));
    let out = Command::new(TAIL)
        .args(["--local", "--stream", "s", "--metrics-level", "LOUD"])
        .stdin(Stdio::null())
        .output()
        .expect("kcl-tail");
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("NONE, SUMMARY or DETAILED"));
}
