//! `kcl-tail` as users run it: against the emulators (started by the project's script), with
//! records put through the SDK; stopped with SIGTERM; restarted, it continues after its
//! checkpoint. And `--local`, with stdin. The kcat-like flags: `-n` (exactly N lines, a restart
//! continues after them), `--raw`, `--from-timestamp`, `--no-checkpoint` (no lease table),
//! `--profile`.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use kcl_tests::aws::{create_stream, put, sdk, unique};
use kcl_tests::process::{read_lines, sigterm};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

const TAIL: &str = env!("CARGO_BIN_EXE_kcl-tail");

/// The `data` field of a kcl-tail JSON line, base64-decoded by hand (no JSON crate needed).
fn data_of(line: &str) -> String {
    let start = line.find("\"data\":\"").expect("data field") + 8;
    let end = start + line[start..].find('"').expect("end of data");
    let b64 = &line[start..end];
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in b64.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 in {line}"),
        };
        bits = (bits << 6) | u32::from(v);
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    String::from_utf8(out).expect("utf-8 payload")
}

fn spawn(args: &[&str]) -> Child {
    Command::new(TAIL)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start kcl-tail")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcl_tail_prints_every_record_and_a_restart_continues_after_the_checkpoint() {
    let (sdk, endpoints) = sdk().await;
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    let (stream, app) = (unique("tail"), unique("tail-app"));
    create_stream(&kinesis, &stream, 2).await;
    let put = |range: std::ops::Range<u32>| {
        let kinesis = kinesis.clone();
        let stream = stream.clone();
        async move {
            for i in range {
                kinesis
                    .put_record()
                    .stream_name(&stream)
                    .partition_key(format!("pk-{i}"))
                    .data(Blob::new(format!("record-{i}")))
                    .send()
                    .await
                    .expect("PutRecord");
            }
        }
    };
    put(0..12).await;
    let args = [
        "--stream",
        &stream,
        "--application-name",
        &app,
        "--initial-position",
        "trim-horizon",
        "--failover-ms",
        "3000",
        "--region",
        &endpoints.region,
    ];
    let mut tail = spawn(&args);
    let first: BTreeSet<String> = read_lines(&mut tail, 12, Duration::from_millis(500))
        .await
        .iter()
        .map(|l| data_of(l))
        .collect();
    assert_eq!(first, (0..12).map(|i| format!("record-{i}")).collect());
    sigterm(&mut tail).await;

    put(12..17).await;
    let mut tail = spawn(&args);
    let second: BTreeSet<String> = read_lines(&mut tail, 5, Duration::from_secs(2))
        .await
        .iter()
        .map(|l| data_of(l))
        .collect();
    assert_eq!(
        second,
        (12..17).map(|i| format!("record-{i}")).collect(),
        "continues after the checkpoint"
    );
    sigterm(&mut tail).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcl_tail_with_one_endpoint_url_reads_through_the_edge_port() {
    let (sdk, endpoints) = sdk().await;
    let edge = endpoints
        .edge
        .clone()
        .expect("the start script prints AWS_ENDPOINT_URL (the edge port)");
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    let stream = unique("tail-edge");
    create_stream(&kinesis, &stream, 1).await;
    for i in 0..3 {
        kinesis
            .put_record()
            .stream_name(&stream)
            .partition_key("k")
            .data(Blob::new(format!("edge-{i}")))
            .send()
            .await
            .expect("PutRecord");
    }
    // Only --endpoint-url: the service-specific variables are removed for the child.
    let mut tail = Command::new(TAIL)
        .args([
            "--stream",
            &stream,
            "--initial-position",
            "trim-horizon",
            "--endpoint-url",
            &edge,
        ])
        .args(["--region", &endpoints.region])
        .env_remove("AWS_ENDPOINT_URL_KINESIS")
        .env_remove("AWS_ENDPOINT_URL_DYNAMODB")
        .env_remove("AWS_ENDPOINT_URL")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start kcl-tail");
    let lines = read_lines(&mut tail, 3, Duration::from_millis(300)).await;
    let got: Vec<String> = lines.iter().map(|l| data_of(l)).collect();
    assert_eq!(got, ["edge-0", "edge-1", "edge-2"]);
    sigterm(&mut tail).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcl_tail_local_prints_stdin_lines_as_records() {
    let mut tail = spawn(&["--local", "--stream", "local-tail"]);
    let mut stdin = tail.stdin.take().expect("stdin");
    stdin.write_all(b"alpha\nbeta\n").await.unwrap();
    drop(stdin);
    let lines = read_lines(&mut tail, 2, Duration::from_millis(200)).await;
    let got: BTreeSet<String> = lines.iter().map(|l| data_of(l)).collect();
    assert_eq!(got, BTreeSet::from(["alpha".to_owned(), "beta".to_owned()]));
    assert!(
        lines[0].starts_with("{\"stream\":\"local-tail\",\"shard_id\":\"shardId-"),
        "{}",
        lines[0]
    );
    let exit = tokio::time::timeout(Duration::from_secs(30), tail.wait())
        .await
        .expect("exits at EOF")
        .unwrap();
    assert!(exit.success());
}

/// A field of a kcl-tail JSON line (string values only).
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let tag = format!("\"{name}\":\"");
    let start = line.find(&tag).unwrap_or_else(|| panic!("no {name} in {line}")) + tag.len();
    let end = start + line[start..].find('"').expect("end of field");
    &line[start..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcl_tail_reads_several_streams_with_fan_out() {
    let (sdk, endpoints) = sdk().await;
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    let (one, two) = (unique("tail-fan-a"), unique("tail-fan-b"));
    create_stream(&kinesis, &one, 2).await;
    create_stream(&kinesis, &two, 1).await;
    for (stream, n) in [(&one, 4), (&two, 3)] {
        for i in 0..n {
            kinesis
                .put_record()
                .stream_name(stream)
                .partition_key(format!("k{i}"))
                .data(Blob::new(format!("{stream}-{i}")))
                .send()
                .await
                .expect("PutRecord");
        }
    }
    let app = unique("tail-fan-app");
    let mut tail = spawn(&[
        "--stream",
        &one,
        "--stream",
        &two,
        "--fan-out",
        "--application-name",
        &app,
        "--initial-position",
        "trim-horizon",
        "--region",
        &endpoints.region,
    ]);
    // kinesis-local pushes subscription events once a second.
    let lines = read_lines(&mut tail, 7, Duration::from_millis(1500)).await;
    let mut got: Vec<(String, String)> = lines
        .iter()
        .map(|l| (field(l, "stream").to_owned(), data_of(l)))
        .collect();
    got.sort();
    let mut expected: Vec<(String, String)> = (0..4)
        .map(|i| (one.clone(), format!("{one}-{i}")))
        .chain((0..3).map(|i| (two.clone(), format!("{two}-{i}"))))
        .collect();
    expected.sort();
    assert_eq!(got, expected);
    assert!(
        field(&lines[0], "shard_id").starts_with("shardId-"),
        "{}",
        lines[0]
    );
    sigterm(&mut tail).await;
    // One consumer per stream, named after the application.
    for stream in [&one, &two] {
        let arn = kinesis
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .expect("describe")
            .stream_description_summary()
            .expect("summary")
            .stream_arn()
            .to_owned();
        let consumers = kinesis
            .list_stream_consumers()
            .stream_arn(arn)
            .send()
            .await
            .expect("list consumers");
        let names: Vec<&str> = consumers.consumers().iter().map(|c| c.consumer_name()).collect();
        assert_eq!(names, [app.as_str()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcl_tail_local_reads_several_streams() {
    let mut tail = spawn(&["--local", "--stream", "left", "--stream", "right"]);
    let mut stdin = tail.stdin.take().expect("stdin");
    stdin.write_all(b"a\nb\nc\nd\n").await.unwrap();
    drop(stdin);
    let lines = read_lines(&mut tail, 4, Duration::from_millis(200)).await;
    let got: BTreeSet<(String, String)> = lines
        .iter()
        .map(|l| (field(l, "stream").to_owned(), data_of(l)))
        .collect();
    let expected: BTreeSet<(String, String)> = [("left", "a"), ("right", "b"), ("left", "c"), ("right", "d")]
        .into_iter()
        .map(|(s, d)| (s.to_owned(), d.to_owned()))
        .collect();
    assert_eq!(got, expected);
    let exit = tokio::time::timeout(Duration::from_secs(30), tail.wait())
        .await
        .expect("exits at EOF")
        .unwrap();
    assert!(exit.success());
}

/// The aggregates `tests/python/kpl_aggregates.py` builds with the real `aws_kinesis_agg`
/// package: (partition key, explicit hash key, data). Fails loudly if python3 or the package is
/// missing (`.ci/run` installs it).
fn python_aggregates(
    aggregates: usize,
    per_aggregate: usize,
    keys: usize,
) -> Vec<(String, Option<String>, Vec<u8>)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/kpl_aggregates.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args([aggregates, per_aggregate, keys].map(|n| n.to_string()))
        .output()
        .expect("python3 must be installed (.ci/run installs aws_kinesis_agg with pip)");
    assert!(
        out.status.success(),
        "kpl_aggregates.py failed (is `aws_kinesis_agg` installed? .ci/run installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8 output");
    text.lines()
        .map(|line| {
            let mut parts = line.split('\t');
            let (pk, ehk, data) = (parts.next(), parts.next(), parts.next());
            let (Some(pk), Some(ehk), Some(data)) = (pk, ehk, data) else {
                panic!("bad line from kpl_aggregates.py: {line}")
            };
            let data = aws_smithy_types::base64::decode(data).expect("base64 aggregate");
            (pk.to_owned(), (ehk != "-").then(|| ehk.to_owned()), data)
        })
        .collect()
}

/// The `sub_sequence_number` field of a kcl-tail JSON line.
fn sub_sequence_of(line: &str) -> u64 {
    let tag = "\"sub_sequence_number\":";
    let start = line
        .find(tag)
        .unwrap_or_else(|| panic!("no sub-sequence in {line}"))
        + tag.len();
    let end = start + line[start..].find(',').expect("end of sub-sequence");
    line[start..end].parse().expect("sub-sequence number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcl_tail_delivers_every_user_record_of_aws_kinesis_agg_aggregates_across_shards() {
    const AGGREGATES: usize = 50;
    const PER_AGGREGATE: usize = 20;
    let aggregates = python_aggregates(AGGREGATES, PER_AGGREGATE, 37);
    assert_eq!(aggregates.len(), AGGREGATES);
    let (sdk, endpoints) = sdk().await;
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    let (stream, app) = (unique("tail-kpl"), unique("tail-kpl-app"));
    create_stream(&kinesis, &stream, 2).await;
    let mut shards = BTreeSet::new();
    for (pk, ehk, data) in aggregates {
        let put = kinesis
            .put_record()
            .stream_name(&stream)
            .partition_key(pk)
            .set_explicit_hash_key(ehk)
            .data(Blob::new(data))
            .send()
            .await
            .expect("PutRecord");
        shards.insert(put.shard_id().to_owned());
    }
    assert_eq!(shards.len(), 2, "the aggregates land on both shards");
    let mut tail = spawn(&[
        "--stream",
        &stream,
        "--application-name",
        &app,
        "--initial-position",
        "trim-horizon",
        "--region",
        &endpoints.region,
    ]);
    let lines = read_lines(&mut tail, AGGREGATES * PER_AGGREGATE, Duration::from_secs(2)).await;
    sigterm(&mut tail).await;
    // Each user record exactly once...
    let data: BTreeSet<String> = lines.iter().map(|l| data_of(l)).collect();
    let expected: BTreeSet<String> = (0..AGGREGATES)
        .flat_map(|a| (0..PER_AGGREGATE).map(move |i| format!("user-{a}-{i}")))
        .collect();
    assert_eq!(data, expected);
    // ... with sub-sequence numbers 0..19 under each aggregate's sequence number, and the
    // user record's own partition key (37 of them, hashing to both shards).
    let mut per_aggregate: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
    for line in &lines {
        per_aggregate
            .entry(field(line, "sequence_number"))
            .or_default()
            .push(sub_sequence_of(line));
    }
    assert_eq!(per_aggregate.len(), AGGREGATES);
    for (sequence, mut subs) in per_aggregate {
        subs.sort_unstable();
        assert_eq!(
            subs,
            (0..PER_AGGREGATE as u64).collect::<Vec<_>>(),
            "aggregate {sequence}"
        );
    }
    let keys: BTreeSet<&str> = lines.iter().map(|l| field(l, "partition_key")).collect();
    assert_eq!(keys.len(), 37);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcl_tail_reads_streams_named_by_arn_beside_streams_named_by_name() {
    let (sdk, endpoints) = sdk().await;
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    let (by_arn, by_name, app) = (unique("tail-arn"), unique("tail-name"), unique("tail-arn-app"));
    create_stream(&kinesis, &by_arn, 2).await;
    create_stream(&kinesis, &by_name, 1).await;
    let arn = kcl_tests::aws::stream_arn(&kinesis, &by_arn).await;
    for (stream, n) in [(&by_arn, 6), (&by_name, 3)] {
        for i in 0..n {
            put(&kinesis, stream, &format!("pk-{i}"), &format!("{stream}-{i}")).await;
        }
    }
    let mut tail = spawn(&[
        "--stream-arn",
        &arn,
        "--stream",
        &by_name,
        "--application-name",
        &app,
        "--initial-position",
        "trim-horizon",
        "--region",
        &endpoints.region,
    ]);
    let lines = read_lines(&mut tail, 9, Duration::from_millis(500)).await;
    let got: BTreeSet<String> = lines.iter().map(|l| data_of(l)).collect();
    let want: BTreeSet<String> = (0..6)
        .map(|i| format!("{by_arn}-{i}"))
        .chain((0..3).map(|i| format!("{by_name}-{i}")))
        .collect();
    assert_eq!(got, want);
    sigterm(&mut tail).await;

    // The multi-stream lease keys of the ARN's stream carry the ARN's account.
    let account = arn.split(':').nth(4).expect("account in the ARN").to_owned();
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let rows = dynamo.scan().table_name(&app).send().await.expect("Scan");
    let keys: Vec<String> = rows
        .items()
        .iter()
        .filter_map(|r| r.get("leaseKey").and_then(|v| v.as_s().ok()).cloned())
        .collect();
    let of_arn: Vec<&String> = keys
        .iter()
        .filter(|k| k.contains(&format!(":{by_arn}:")))
        .collect();
    assert_eq!(of_arn.len(), 2, "{keys:?}");
    assert!(
        of_arn.iter().all(|k| k.starts_with(&format!("{account}:"))),
        "{keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcl_tail_refuses_a_malformed_stream_arn_with_a_usage_error() {
    let out = Command::new(TAIL)
        .args(["--stream-arn", "arn:aws:s3:::bucket"])
        .output()
        .await
        .expect("run kcl-tail");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--stream-arn"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcl_tail_reads_a_stream_with_its_own_assumed_role_beside_one_with_the_default_credentials() {
    let (sdk, endpoints) = sdk().await;
    let edge = endpoints.edge.clone().expect("the edge proxy's URL");
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    let (partner, own, app) = (unique("tail-role"), unique("tail-own"), unique("tail-role-app"));
    create_stream(&kinesis, &partner, 2).await;
    create_stream(&kinesis, &own, 1).await;
    let arn = kcl_tests::aws::stream_arn(&kinesis, &partner).await;
    for (stream, n) in [(&partner, 4), (&own, 3)] {
        for i in 0..n {
            put(&kinesis, stream, &format!("pk-{i}"), &format!("{stream}-{i}")).await;
        }
    }
    let role = format!("arn:aws:iam::111122223333:role/{}", unique("reader"));
    // Everything through the edge proxy, which serves STS AssumeRole and records the signing
    // key of every call.
    let mut tail = Command::new(TAIL)
        .args(["--stream-arn", &arn, "--stream", &own])
        .args([
            "--stream-role",
            &format!("{arn}={role}"),
            "--external-id",
            "ext-7",
        ])
        .args(["--application-name", &app, "--initial-position", "trim-horizon"])
        .args(["--endpoint-url", &edge, "--region", &endpoints.region])
        .env_remove("AWS_ENDPOINT_URL_KINESIS")
        .env_remove("AWS_ENDPOINT_URL_DYNAMODB")
        .env_remove("AWS_ENDPOINT_URL")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start kcl-tail");
    let lines = read_lines(&mut tail, 7, Duration::from_millis(500)).await;
    let got: BTreeSet<String> = lines.iter().map(|l| data_of(l)).collect();
    let want: BTreeSet<String> = (0..4)
        .map(|i| format!("{partner}-{i}"))
        .chain((0..3).map(|i| format!("{own}-{i}")))
        .collect();
    assert_eq!(got, want);
    sigterm(&mut tail).await;

    let requests = kcl_tests::aws::edge_requests(&edge).await;
    let assumed: Vec<&serde_json::Value> = requests
        .iter()
        .filter(|r| r["service"] == "sts" && r["roleArn"].as_str() == Some(role.as_str()))
        .collect();
    assert!(!assumed.is_empty(), "the role was never assumed");
    for r in &assumed {
        assert_eq!(r["action"], "AssumeRole", "{r}");
        assert_eq!(r["sessionName"], "kcl-tail", "{r}");
        assert_eq!(r["externalId"], "ext-7", "{r}");
    }
    let keys = |stream: &str| -> BTreeSet<String> {
        kcl_tests::aws::kinesis_requests_on(&requests, stream)
            .iter()
            .map(|r| r["accessKeyId"].as_str().unwrap_or("unsigned").to_owned())
            .collect()
    };
    let (partner_keys, own_keys) = (keys(&partner), keys(&own));
    // Every call on the partner stream was signed with the role's temporary key (ASIA...), and
    // every call on the own stream with the default credentials.
    assert_eq!(partner_keys.len(), 1, "{partner_keys:?}");
    assert!(
        partner_keys.iter().all(|k| k.starts_with("ASIA")),
        "{partner_keys:?}"
    );
    assert!(!own_keys.is_empty());
    assert!(
        own_keys.is_disjoint(&partner_keys),
        "{own_keys:?} {partner_keys:?}"
    );
    assert!(own_keys.iter().all(|k| !k.starts_with("ASIA")), "{own_keys:?}");
    // The partner stream named by ARN: its GetRecords calls carry it too.
    assert!(kcl_tests::aws::kinesis_requests_on(&requests, &partner)
        .iter()
        .any(|r| r["action"] == "GetRecords" && r["streamArn"].as_str() == Some(arn.as_str())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcl_tail_refuses_a_stream_role_for_a_stream_it_does_not_read() {
    let out = Command::new(TAIL)
        .args([
            "--stream",
            "a",
            "--stream-role",
            "b=arn:aws:iam::111122223333:role/r",
        ])
        .output()
        .await
        .expect("run kcl-tail");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--stream-role"), "{stderr}");
    let out = Command::new(TAIL)
        .args(["--stream", "a", "--stream-role", "a"])
        .output()
        .await
        .expect("run kcl-tail");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// Waits (at most 30 s) for the child to exit by itself and asserts it succeeded.
async fn exits_successfully(child: &mut Child) {
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits by itself")
        .expect("wait");
    assert!(exit.success(), "exited with {exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcl_tail_local_max_records_prints_exactly_n_of_a_bigger_batch_and_exits() {
    // One shard, stdin left open: the ten lines come in batches bigger than three, and the
    // program stops by itself after three.
    let mut tail = spawn(&["--local", "--local-shards", "1", "--stream", "n", "-n", "3"]);
    let mut stdin = tail.stdin.take().expect("stdin");
    let lines: String = (0..10).map(|i| format!("line-{i}\n")).collect();
    stdin.write_all(lines.as_bytes()).await.expect("write stdin");
    stdin.flush().await.expect("flush stdin");
    let got: Vec<String> = read_lines(&mut tail, 3, Duration::from_millis(500))
        .await
        .iter()
        .map(|l| data_of(l))
        .collect();
    assert_eq!(got, ["line-0", "line-1", "line-2"]);
    exits_successfully(&mut tail).await;
    drop(stdin);

    // Several shards, the long form, stdin closed early: still exactly N lines.
    let mut tail = spawn(&["--local", "--stream", "n4", "--max-records", "5"]);
    let mut stdin = tail.stdin.take().expect("stdin");
    stdin.write_all(lines.as_bytes()).await.expect("write stdin");
    drop(stdin);
    let got: BTreeSet<String> = read_lines(&mut tail, 5, Duration::from_millis(500))
        .await
        .iter()
        .map(|l| data_of(l))
        .collect();
    assert_eq!(got.len(), 5);
    assert!(got.iter().all(|d| d.starts_with("line-")), "{got:?}");
    exits_successfully(&mut tail).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcl_tail_local_raw_prints_only_the_data() {
    let mut tail = spawn(&["--local", "--stream", "raw", "--raw"]);
    let mut stdin = tail.stdin.take().expect("stdin");
    let input = ["{\"json\": \"as is\"}", "tab\there", "snow \u{2603} \\ \"q\""];
    for line in input {
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("write stdin");
    }
    drop(stdin);
    let got: BTreeSet<String> = read_lines(&mut tail, 3, Duration::from_millis(300))
        .await
        .into_iter()
        .collect();
    assert_eq!(got, input.iter().map(|s| (*s).to_owned()).collect());
    exits_successfully(&mut tail).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcl_tail_json_lines_are_json_with_the_fields_in_order() {
    let mut tail = spawn(&["--local", "--local-shards", "1", "--stream", "json"]);
    let mut stdin = tail.stdin.take().expect("stdin");
    let payload = "say \"hi\" \\ \u{2603} \u{1}";
    stdin
        .write_all(format!("{payload}\n").as_bytes())
        .await
        .expect("write stdin");
    drop(stdin);
    let lines = read_lines(&mut tail, 1, Duration::from_millis(300)).await;
    exits_successfully(&mut tail).await;
    let line = &lines[0];
    let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
    let keys = [
        "stream",
        "shard_id",
        "sequence_number",
        "sub_sequence_number",
        "partition_key",
        "data",
        "approximate_arrival_timestamp",
    ];
    let positions: Vec<usize> = keys
        .iter()
        .map(|k| {
            line.find(&format!("\"{k}\":"))
                .unwrap_or_else(|| panic!("no {k} in {line}"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "field order: {line}");
    assert_eq!(v.as_object().map(|o| o.len()), Some(keys.len()), "{line}");
    assert_eq!(v["stream"], "json");
    assert_eq!(v["shard_id"], "shardId-000000000000");
    assert_eq!(v["sub_sequence_number"], 0);
    assert_eq!(v["partition_key"], "0");
    assert!(v["sequence_number"]
        .as_str()
        .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit())));
    assert_eq!(data_of(line), payload);
    let ts = v["approximate_arrival_timestamp"].as_str().expect("timestamp");
    // 2026-11-25T06:40:00.123Z (milliseconds, UTC).
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && &ts[10..11] == "T" && &ts[19..20] == ".",
        "{ts}"
    );
    aws_smithy_types::DateTime::from_str(ts, aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_else(|e| panic!("{ts}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcl_tail_from_timestamp_is_checked_and_conflicts_with_initial_position() {
    for args in [
        &[
            "--stream",
            "a",
            "--from-timestamp",
            "2026-11-25T06:40:00Z",
            "--initial-position",
            "trim-horizon",
        ][..],
        &["--stream", "a", "--from-timestamp", "yesterday"][..],
        &["--stream", "a", "-n", "0"][..],
    ] {
        let out = Command::new(TAIL)
            .args(args)
            .output()
            .await
            .expect("run kcl-tail");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcl_tail_max_records_checkpoints_only_what_it_printed_and_a_restart_continues() {
    let (sdk, endpoints) = sdk().await;
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    let (stream, app) = (unique("tail-n"), unique("tail-n-app"));
    create_stream(&kinesis, &stream, 2).await;
    for i in 0..12 {
        put(&kinesis, &stream, &format!("pk-{i}"), &format!("n-{i}")).await;
    }
    let args = |n: &'static str| {
        vec![
            "--stream".to_owned(),
            stream.clone(),
            "--application-name".to_owned(),
            app.clone(),
            "--initial-position".to_owned(),
            "trim-horizon".to_owned(),
            "--failover-ms".to_owned(),
            "3000".to_owned(),
            "--region".to_owned(),
            endpoints.region.clone(),
            "-n".to_owned(),
            n.to_owned(),
        ]
    };
    let run = |n: &'static str, count: usize| {
        let args = args(n);
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut tail = spawn(&args);
            let lines = read_lines(&mut tail, count, Duration::from_millis(300)).await;
            exits_successfully(&mut tail).await;
            lines.iter().map(|l| data_of(l)).collect::<Vec<String>>()
        }
    };
    let first = run("5", 5).await;
    let second = run("7", 7).await;
    let all: BTreeSet<String> = first.iter().chain(&second).cloned().collect();
    assert_eq!(
        all,
        (0..12).map(|i| format!("n-{i}")).collect(),
        "the restart continues after the 5 printed, none twice: {first:?} {second:?}"
    );
    // Nothing left: a third run prints nothing more.
    put(&kinesis, &stream, "pk-last", "n-last").await;
    assert_eq!(run("1", 1).await, ["n-last"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcl_tail_no_checkpoint_reads_every_shard_and_the_children_with_no_lease_table() {
    let (sdk, endpoints) = sdk().await;
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    let (stream, app) = (unique("tail-ro"), unique("tail-ro-app"));
    create_stream(&kinesis, &stream, 1).await;
    for i in 0..4 {
        put(&kinesis, &stream, &format!("pk-{i}"), &format!("parent-{i}")).await;
    }
    let args = [
        "--stream",
        &stream,
        "--application-name",
        &app,
        "--initial-position",
        "trim-horizon",
        "--no-checkpoint",
        "--region",
        &endpoints.region,
    ];
    // Two read-only tails of the same application: each reads everything.
    let mut tails = [spawn(&args), spawn(&args)];
    for tail in &mut tails {
        let got: Vec<String> = read_lines(tail, 4, Duration::from_millis(100))
            .await
            .iter()
            .map(|l| data_of(l))
            .collect();
        assert_eq!(got, (0..4).map(|i| format!("parent-{i}")).collect::<Vec<_>>());
    }
    kinesis
        .split_shard()
        .stream_name(&stream)
        .shard_to_split("shardId-000000000000")
        .new_starting_hash_key((1u128 << 127).to_string())
        .send()
        .await
        .expect("SplitShard");
    kcl_tests::aws::wait_active(&kinesis, &stream).await;
    for i in 0..6 {
        put(&kinesis, &stream, &format!("child-pk-{i}"), &format!("child-{i}")).await;
    }
    for tail in &mut tails {
        let lines = read_lines(tail, 6, Duration::from_millis(300)).await;
        let got: BTreeSet<String> = lines.iter().map(|l| data_of(l)).collect();
        assert_eq!(got, (0..6).map(|i| format!("child-{i}")).collect());
        assert!(
            lines
                .iter()
                .all(|l| field(l, "shard_id") != "shardId-000000000000"),
            "{lines:?}"
        );
    }
    for tail in &mut tails {
        sigterm(tail).await;
    }
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let mut tables = Vec::new();
    let mut start: Option<String> = None;
    loop {
        let page = dynamo
            .list_tables()
            .set_exclusive_start_table_name(start.take())
            .send()
            .await
            .expect("ListTables");
        tables.extend(page.table_names().iter().cloned());
        match page.last_evaluated_table_name() {
            Some(last) => start = Some(last.to_owned()),
            None => break,
        }
    }
    assert!(!tables.contains(&app), "{app} was created: {tables:?}");
    assert!(!tables.iter().any(|t| t.contains(&stream)), "{tables:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcl_tail_profile_gives_the_region_and_credentials() {
    let (sdk, endpoints) = sdk().await;
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    let stream = unique("tail-profile");
    create_stream(&kinesis, &stream, 1).await;
    put(&kinesis, &stream, "k", "profiled").await;
    let dir = std::env::temp_dir().join(unique("kcl-tail-profile"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (config, credentials) = (dir.join("config"), dir.join("credentials"));
    std::fs::write(
        &config,
        format!("[profile tail-test]\nregion = {}\n", endpoints.region),
    )
    .expect("write config");
    std::fs::write(
        &credentials,
        "[tail-test]\naws_access_key_id = test\naws_secret_access_key = test\n",
    )
    .expect("write credentials");
    // No --region and no credentials in the environment: both come from the profile.
    let mut tail = Command::new(TAIL)
        .args(["--stream", &stream, "--profile", "tail-test", "--no-checkpoint"])
        .args(["--initial-position", "trim-horizon", "--raw", "-n", "1"])
        .env("AWS_CONFIG_FILE", &config)
        .env("AWS_SHARED_CREDENTIALS_FILE", &credentials)
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start kcl-tail");
    assert_eq!(
        read_lines(&mut tail, 1, Duration::from_millis(100)).await,
        ["profiled"]
    );
    exits_successfully(&mut tail).await;
    // An unknown profile: no region, an error.
    let out = Command::new(TAIL)
        .args([
            "--stream",
            &stream,
            "--profile",
            "no-such-profile",
            "--no-checkpoint",
        ])
        .env("AWS_CONFIG_FILE", &config)
        .env("AWS_SHARED_CREDENTIALS_FILE", &credentials)
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .output()
        .await
        .expect("run kcl-tail");
    assert!(!out.status.success(), "{out:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcl_tail_from_timestamp_starts_at_that_time() {
    let (sdk, endpoints) = sdk().await;
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    let stream = unique("tail-ts");
    create_stream(&kinesis, &stream, 1).await;
    for i in 0..3 {
        put(&kinesis, &stream, "k", &format!("before-{i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let from = aws_smithy_types::DateTime::from(std::time::SystemTime::now())
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .expect("RFC 3339");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for i in 0..3 {
        put(&kinesis, &stream, "k", &format!("after-{i}")).await;
    }
    let mut tail = spawn(&[
        "--stream",
        &stream,
        "--from-timestamp",
        &from,
        "--no-checkpoint",
        "--raw",
        "--region",
        &endpoints.region,
    ]);
    let got = read_lines(&mut tail, 3, Duration::from_millis(500)).await;
    assert_eq!(got, ["after-0", "after-1", "after-2"], "from {from}");
    sigterm(&mut tail).await;
}
