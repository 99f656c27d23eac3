//! The short AWS consumer (`SchedulerBuilder::aws` and a batch handler) against the emulators,
//! configured the standard way (`AWS_ENDPOINT_URL_*`, `AWS_REGION` from the environment, as
//! the start script exports them): the lease table and the heartbeat table are created when
//! missing, or not with `create_lease_table(false)`; and kcl-core's `aws_consumer` example
//! (the README's), built as it is, stopped with SIGTERM mid-stream and started again, delivers
//! every record once: the graceful hand-off repeats none.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kcl_core::prelude::*;
use kcl_core::{FatalError, KclError};
use kcl_lease::{DynamoDbLeaseStore, LeaseStore};
use kcl_tests::aws::{create_stream, put, sdk, unique};
use kcl_tests::process::sigterm;
use kcl_tests::{init_tracing, wait_until};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const LIMIT: Duration = Duration::from_secs(90);

/// The data of every record a handler was given, in order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    fn get(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    fn handler(&self) -> impl BatchHandler {
        let seen = self.clone();
        move |batch: Batch| {
            let seen = seen.clone();
            async move {
                let mut seen = seen.0.lock().unwrap();
                for record in &batch {
                    seen.push(String::from_utf8_lossy(&record.data).into_owned());
                }
                Ok(())
            }
        }
    }
}

async fn table_exists(sdk: &aws_config::SdkConfig, table: &str) -> bool {
    match aws_sdk_dynamodb::Client::new(sdk)
        .describe_table()
        .table_name(table)
        .send()
        .await
    {
        Ok(_) => true,
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception()) =>
        {
            false
        }
        Err(e) => panic!("DescribeTable {table}: {e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_creates_a_missing_lease_table_and_heartbeat_table_and_checkpoints_into_them() {
    init_tracing();
    let (sdk, _) = sdk().await;
    let (stream, app) = (unique("aws-create"), unique("aws-create-app"));
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    create_stream(&kinesis, &stream, 1).await;
    let heartbeats = format!("{app}-WorkerHeartbeats");
    assert!(!table_exists(&sdk, &app).await && !table_exists(&sdk, &heartbeats).await);

    let seen = Seen::default();
    let worker = Scheduler::builder(&app, &stream)
        .aws()
        .await
        .expect("the region from AWS_REGION")
        .initial_position(InitialPosition::TrimHorizon)
        .failover_time(Duration::from_secs(3))
        .polling_interval(Duration::from_millis(100))
        .handler(seen.handler())
        .build()
        .expect("a complete builder")
        .spawn();
    let mut last = String::new();
    for i in 0..5 {
        last = put(&kinesis, &stream, "k", &format!("record {i}")).await.1;
    }
    wait_until(LIMIT, "5 records handled", || seen.get().len() == 5).await;
    assert_eq!(
        seen.get(),
        (0..5).map(|i| format!("record {i}")).collect::<Vec<_>>()
    );
    assert!(table_exists(&sdk, &app).await, "the lease table was created");
    assert!(
        table_exists(&sdk, &heartbeats).await,
        "the heartbeat table was created"
    );

    // Ok checkpointed the batch into the new table.
    let store = DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::new(&sdk), &app);
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let leases = store.list().await.expect("list");
        let checkpoints: Vec<String> = leases
            .iter()
            .map(|l| l.checkpoint.checkpoint_str().to_owned())
            .collect();
        if checkpoints == [last.clone()] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "checkpoints {checkpoints:?}, expected [{last}]"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.shutdown().await.expect("graceful shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_create_lease_table_a_missing_table_stops_the_worker_with_the_cause() {
    init_tracing();
    let (sdk, _) = sdk().await;
    let (stream, app) = (unique("aws-nocreate"), unique("aws-nocreate-app"));
    create_stream(&aws_sdk_kinesis::Client::new(&sdk), &stream, 1).await;
    let worker = Scheduler::builder(&app, &stream)
        .aws()
        .await
        .expect("the region from AWS_REGION")
        .create_lease_table(false)
        .handler(Seen::default().handler())
        .build()
        .expect("a complete builder")
        .spawn();
    wait_until(LIMIT, "the worker stops by itself", || !worker.is_running()).await;
    match worker.shutdown().await {
        Err(KclError::Fatal(FatalError::LeaseStore(message))) => {
            assert!(
                message.contains(&app) && message.contains("does not exist"),
                "{message}"
            )
        }
        other => panic!("expected a fatal lease-store error, got {other:?}"),
    }
    assert!(!table_exists(&sdk, &app).await, "no table was created");
}

/// The example's names (it is the README's program, unchanged).
const EXAMPLE_APP: &str = "my-app";
const EXAMPLE_STREAM: &str = "my-stream";

/// The example started as a child process, its stdout lines collected as they come.
struct Example {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Example {
    fn start() -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_aws-consumer-example"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the example");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let into = lines.clone();
        let reader = tokio::spawn(async move {
            let mut stdout = BufReader::new(stdout).lines();
            while let Some(line) = stdout.next_line().await.expect("read the example's stdout") {
                into.lock().unwrap().push(line);
            }
        });
        Self { child, lines, reader }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// SIGTERM; the example must exit 0. Returns everything it printed.
    async fn stop(mut self) -> Vec<String> {
        sigterm(&mut self.child).await;
        self.reader.await.expect("the reader");
        let lines = self.lines.lock().unwrap().clone();
        lines
    }
}

/// A fresh `my-stream` of two shards and no `my-app` tables (an earlier run's are deleted).
async fn fresh_example_resources(sdk: &aws_config::SdkConfig) {
    let kinesis = aws_sdk_kinesis::Client::new(sdk);
    let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
    if kinesis
        .delete_stream()
        .stream_name(EXAMPLE_STREAM)
        .enforce_consumer_deletion(true)
        .send()
        .await
        .is_ok()
    {
        wait_until_async("my-stream deleted", || async {
            kinesis
                .describe_stream_summary()
                .stream_name(EXAMPLE_STREAM)
                .send()
                .await
                .is_err()
        })
        .await;
    }
    for table in [EXAMPLE_APP.to_owned(), format!("{EXAMPLE_APP}-WorkerHeartbeats")] {
        if dynamodb.delete_table().table_name(&table).send().await.is_ok() {
            wait_until_async("table deleted", || async { !table_exists(sdk, &table).await }).await;
        }
    }
    // kinesis-local deletes a stream some time after `DeleteStream` answered, and can delete
    // the new stream of the same name that way (seen in CI: created, then "not found"): create
    // it again until it stays.
    for _ in 0..5 {
        match kinesis
            .create_stream()
            .stream_name(EXAMPLE_STREAM)
            .shard_count(2)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_in_use_exception()) => {}
            Err(e) => panic!("CreateStream: {}", kcl_core::ErrorChain(&e)),
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < deadline {
            let status = kinesis
                .describe_stream_summary()
                .stream_name(EXAMPLE_STREAM)
                .send()
                .await
                .map(|o| o.stream_description_summary().map(|s| s.stream_status().clone()));
            match status {
                Ok(Some(aws_sdk_kinesis::types::StreamStatus::Active)) => {
                    // Still there a moment later: the late delete, if any, has happened.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if kinesis
                        .describe_stream_summary()
                        .stream_name(EXAMPLE_STREAM)
                        .send()
                        .await
                        .is_ok()
                    {
                        return;
                    }
                    break;
                }
                Err(_) => break, // gone: create it again
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    panic!("{EXAMPLE_STREAM} did not stay ACTIVE after five creations");
}

async fn wait_until_async<F: std::future::Future<Output = bool>>(what: &str, mut cond: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_example_stopped_with_sigterm_mid_stream_and_restarted_repeats_no_record() {
    init_tracing();
    let (sdk, _) = sdk().await;
    fresh_example_resources(&sdk).await;
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);

    // A producer putting `record-N` all along, remembering each record's shard.
    let produced: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let (stop_producing, mut stopped) = tokio::sync::watch::channel(false);
    let producer = {
        let (kinesis, produced) = (kinesis.clone(), produced.clone());
        tokio::spawn(async move {
            for n in 0u64.. {
                let data = format!("record-{n}");
                let (shard, _) = put(&kinesis, EXAMPLE_STREAM, &format!("key-{n}"), &data).await;
                produced.lock().unwrap().push((data, shard));
                tokio::select! {
                    _ = stopped.changed() => break,
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        })
    };
    // (A record may be handled before the producer has noted it.)
    let shard_of = |data: &str| -> Option<String> {
        let produced = produced.lock().unwrap();
        produced.iter().find(|(d, _)| d == data).map(|(_, s)| s.clone())
    };

    // First run (initial position LATEST): stopped once it read both shards for a while.
    let first = Example::start();
    wait_until(LIMIT, "the first run handled 60 records from both shards", || {
        let lines = first.lines();
        lines.len() >= 60
            && lines
                .iter()
                .filter_map(|l| shard_of(l))
                .collect::<BTreeSet<_>>()
                .len()
                == 2
    })
    .await;
    let first = first.stop().await;

    // Second run: records keep coming meanwhile; it resumes after the first run's checkpoints.
    let second = Example::start();
    wait_until(LIMIT, "the second run handled 40 records", || {
        second.lines().len() >= 40
    })
    .await;
    stop_producing.send(true).expect("the producer runs");
    producer.await.expect("the producer");
    let produced = produced.lock().unwrap().clone();
    let last = produced.last().expect("records").0.clone();
    wait_until(LIMIT, "the second run handled the last record", || {
        second.lines().contains(&last)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = second.stop().await;

    // Each record once, in order per shard, from the first one the first run saw on each shard
    // (before it, the LATEST iterator had not been taken yet).
    let position = |data: &String| produced.iter().position(|(d, _)| d == data).expect("produced");
    let mut repeated: Vec<&String> = Vec::new();
    let mut once = BTreeSet::new();
    let mut by_shard: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for line in first.iter().chain(&second) {
        if !once.insert(line) {
            repeated.push(line);
        }
        let index = position(line);
        by_shard.entry(&produced[index].1).or_default().push(index);
    }
    assert!(repeated.is_empty(), "records handled twice: {repeated:?}");
    for (shard, indexes) in &by_shard {
        assert!(
            indexes.windows(2).all(|w| w[0] < w[1]),
            "{shard} out of order: {indexes:?}"
        );
    }
    let start: BTreeMap<&str, usize> = by_shard.iter().map(|(shard, i)| (*shard, i[0])).collect();
    let missing: Vec<&String> = produced
        .iter()
        .enumerate()
        .filter(|(i, (data, shard))| {
            start.get(shard.as_str()).is_some_and(|s| i >= s) && !once.contains(data)
        })
        .map(|(_, (data, _))| data)
        .collect();
    assert!(missing.is_empty(), "records never handled: {missing:?}");
    assert!(
        first.len() >= 60 && second.len() >= 40,
        "{} then {}",
        first.len(),
        second.len()
    );
}
