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

async fn running(what: &str) -> (aws_sdk_kinesis::Client, String, String, SchedulerHandle) {
    let (sdk, _) = sdk().await;
    let (stream, app) = (unique(what), unique(&format!("{what}-app")));
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    create_stream(&kinesis, &stream, 2).await;
    let (backend, store) = backends(&sdk, &app).await;
    let log = Log::default();
    let handle = fast_for(&app, &stream, "w", backend, store, &log, Duration::from_secs(3))
        .polling_interval(Duration::from_millis(100))
        .build()
        .expect("config")
        .spawn();
    let mut produced = BTreeMap::new();
    produce_aws(&kinesis, &stream, 4, 2, &mut produced).await;
    wait_until(LIMIT, "records processed", || log.wait_count() == 8).await;
    (kinesis, stream, app, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_table_deleted_under_a_running_worker_stops_it_with_the_cause() {
    init_tracing();
    let (_, _, app, handle) = running("fatal-table").await;
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
    let (kinesis, stream, _, handle) = running("fatal-stream").await;
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
