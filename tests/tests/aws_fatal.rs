//! Through the real AWS SDK path, against the emulators: a lease table or a stream deleted
//! under a running worker stops it with a typed error naming the cause, instead of a warning
//! in a loop. (Access denied and KMS failures cannot be produced by the emulators; they are
//! mapped from the services' error codes in unit tests and injected in `fatal.rs`.)

use std::collections::BTreeMap;
use std::time::Duration;

use kcl_core::{FatalError, KclError, SchedulerHandle};
use kcl_tests::aws::{backends, create_stream, produce_aws, sdk, unique};
use kcl_tests::*;

const LIMIT: Duration = Duration::from_secs(90);

async fn stops_by_itself(handle: SchedulerHandle) -> Result<(), KclError> {
    wait_until(LIMIT, "the worker stops by itself", || !handle.is_running()).await;
    handle.shutdown().await
}

/// A worker on a new stream of `shards` shards and its lease table, with 8 records processed.
struct Running {
    kinesis: aws_sdk_kinesis::Client,
    stream: String,
    app: String,
    store: kcl_lease::DynamoDbLeaseStore,
    log: Log,
    produced: BTreeMap<String, u64>,
    handle: SchedulerHandle,
}

async fn running(what: &str, shards: i32, failover: Duration) -> Running {
    let (sdk, _) = sdk().await;
    let (stream, app) = (unique(what), unique(&format!("{what}-app")));
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    create_stream(&kinesis, &stream, shards).await;
    let (backend, store) = backends(&sdk, &app).await;
    let log = Log::default();
    let handle = fast_for(&app, &stream, "w", backend, store.clone(), &log, failover)
        .polling_interval(Duration::from_millis(100))
        .build()
        .expect("config")
        .spawn();
    let mut produced = BTreeMap::new();
    produce_aws(&kinesis, &stream, 4, 2, &mut produced).await;
    wait_until(LIMIT, "records processed", || log.wait_count() == 8).await;
    Running {
        kinesis,
        stream,
        app,
        store,
        log,
        produced,
        handle,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_table_deleted_under_a_running_worker_stops_it_with_the_cause() {
    init_tracing();
    let Running { app, handle, .. } = running("fatal-table", 2, Duration::from_secs(3)).await;
    let (sdk, _) = sdk().await;
    aws_sdk_dynamodb::Client::new(&sdk)
        .delete_table()
        .table_name(&app)
        .send()
        .await
        .expect("DeleteTable");
    match stops_by_itself(handle).await {
        Err(KclError::Fatal(FatalError::LeaseStore(message))) => {
            assert!(
                message.contains(&app) && message.contains("does not exist"),
                "{message}"
            )
        }
        other => panic!("expected a fatal lease-store error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_deleted_under_a_running_worker_stops_it_with_the_cause() {
    init_tracing();
    let Running {
        kinesis,
        stream,
        handle,
        ..
    } = running("fatal-stream", 2, Duration::from_secs(3)).await;
    kinesis
        .delete_stream()
        .stream_name(&stream)
        .send()
        .await
        .expect("DeleteStream");
    match stops_by_itself(handle).await {
        Err(KclError::Fatal(FatalError::Stream { stream: name, reason })) => {
            assert_eq!(name, stream);
            assert!(reason.contains("not found"), "{reason}");
        }
        other => panic!("expected a fatal stream error, got {other:?}"),
    }
}

/// Rows of the lease table corrupted in the middle of a run (by hand, or by a tool that wrote the
/// wrong type): a held lease whose row gained a corrupt attribute stays held and processed (its
/// renewals succeed; the worker keeps its own values); a row nobody holds is left as it is and
/// reported; the worker stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_corrupted_mid_run_neither_stop_the_worker_nor_strand_a_held_shard() {
    use aws_sdk_dynamodb::types::AttributeValue;
    init_tracing();
    let failover = Duration::from_secs(2);
    let Running {
        kinesis,
        stream,
        app,
        store,
        log,
        mut produced,
        handle,
    } = running("corrupt", 1, failover).await;
    let (sdk, _) = sdk().await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let victim = "shardId-000000000000";
    dynamo
        .update_item()
        .table_name(&app)
        .key("leaseKey", AttributeValue::S(victim.into()))
        .update_expression("SET #p = :bad")
        .expression_attribute_names("#p", "parentShardId")
        .expression_attribute_values(":bad", AttributeValue::N("7".into()))
        .send()
        .await
        .expect("corrupt the held row");
    let mut bogus = std::collections::HashMap::new();
    bogus.insert(
        "leaseKey".to_owned(),
        AttributeValue::S("shardId-000000000999".into()),
    );
    bogus.insert("checkpoint".to_owned(), AttributeValue::N("12".into()));
    dynamo
        .put_item()
        .table_name(&app)
        .set_item(Some(bogus.clone()))
        .send()
        .await
        .expect("put a corrupt row");
    // Several failover times with renewals returning the corrupt row: the lease stays held.
    tokio::time::sleep(failover * 4).await;
    assert!(handle.is_running(), "corrupt rows are not fatal");
    assert_eq!(handle.held_leases(), [victim], "the held lease was not given up");
    produce_aws(&kinesis, &stream, 4, 2, &mut produced).await;
    wait_until(LIMIT, "the shard still processed", || log.wait_count() == 16).await;
    log.assert_complete_and_ordered(&produced);
    let raw = dynamo
        .get_item()
        .table_name(&app)
        .key("leaseKey", AttributeValue::S("shardId-000000000999".into()))
        .consistent_read(true)
        .send()
        .await
        .expect("GetItem");
    assert_eq!(raw.item, Some(bogus), "the row nobody holds is left as it is");
    assert!(store.corrupt_rows_seen() > 0, "reported");
    handle.shutdown().await.expect("graceful shutdown");
}
