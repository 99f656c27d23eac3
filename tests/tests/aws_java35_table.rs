//! A lease table shared with Java KCL 3.5 workers holds rows that are not leases (worker metrics
//! keyed by worker id, the leader lock), marked by `entityType`, and lease rows marked `LEASE`.
//! Workers of this crate take and process the leases, leave the other rows alone, and do not
//! report them as corrupt leases. The rows are built by hand from the 3.5 sources.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use kcl_lease::LeaseStore;
use kcl_tests::aws::{backends, create_stream, produce_aws, sdk, unique};
use kcl_tests::*;

const LIMIT: Duration = Duration::from_secs(90);

type Item = HashMap<String, AttributeValue>;

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: &str) -> AttributeValue {
    AttributeValue::N(v.to_owned())
}

/// Worker metrics and the leader lock, as a Java KCL 3.5 worker writes them.
fn java_35_rows() -> Vec<Item> {
    let metrics: Item = HashMap::from([
        ("leaseKey".to_owned(), s("java-worker-1")),
        ("entityType".to_owned(), s("WORKER_METRIC_STATS")),
        ("lut".to_owned(), n("1796270000")),
        (
            "sts".to_owned(),
            AttributeValue::M(HashMap::from([(
                "CPU".to_owned(),
                AttributeValue::L(vec![n("12.5"), n("40")]),
            )])),
        ),
        (
            "opr".to_owned(),
            AttributeValue::M(HashMap::from([(
                "CPU".to_owned(),
                AttributeValue::L(vec![n("100")]),
            )])),
        ),
    ]);
    let leader: Item = HashMap::from([
        ("leaseKey".to_owned(), s("Leader")),
        ("entityType".to_owned(), s("LEADER")),
        ("leaseOwner".to_owned(), s("java-worker-1")),
    ]);
    vec![metrics, leader]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_a_java_35_table_that_are_not_leases_are_left_alone() {
    init_tracing();
    let (sdk, _) = sdk().await;
    let (stream, app) = (unique("java35"), unique("java35-app"));
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    create_stream(&kinesis, &stream, 1).await;
    let (backend, store) = backends(&sdk, &app).await;
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    let others = java_35_rows();
    for row in others.iter().cloned().chain([HashMap::from([
        ("leaseKey".to_owned(), s("shardId-000000000000")),
        ("entityType".to_owned(), s("LEASE")),
        ("checkpoint".to_owned(), s("TRIM_HORIZON")),
        ("checkpointSubSequenceNumber".to_owned(), n("0")),
        ("leaseCounter".to_owned(), n("0")),
        ("ownerSwitchesSinceCheckpoint".to_owned(), n("0")),
    ])]) {
        dynamo
            .put_item()
            .table_name(&app)
            .set_item(Some(row))
            .send()
            .await
            .expect("PutItem");
    }
    let leases = store.list().await.expect("list");
    assert_eq!(leases.len(), 1, "only the lease row is a lease: {leases:?}");
    assert!(
        store.get("Leader").await.expect("get").is_none(),
        "the leader lock is no lease"
    );

    let log = Log::default();
    let handle = fast_for(
        &app,
        &stream,
        "rust",
        backend,
        store.clone(),
        &log,
        Duration::from_secs(2),
    )
    .polling_interval(Duration::from_millis(100))
    .build()
    .expect("config")
    .spawn();
    let mut produced = BTreeMap::new();
    produce_aws(&kinesis, &stream, 4, 3, &mut produced).await;
    wait_until(LIMIT, "records processed", || log.wait_count() == 12).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    log.assert_complete_and_ordered(&produced);
    assert_eq!(handle.held_leases(), ["shardId-000000000000"]);
    assert_eq!(
        store.corrupt_rows_seen(),
        0,
        "the other rows are not corrupt leases"
    );
    handle.shutdown().await.expect("graceful shutdown");
    for row in others {
        let key = row["leaseKey"].clone();
        let now = dynamo
            .get_item()
            .table_name(&app)
            .key("leaseKey", key)
            .consistent_read(true)
            .send()
            .await
            .expect("GetItem")
            .item;
        assert_eq!(now, Some(row), "left as the Java worker wrote it");
    }
    let lease = dynamo
        .get_item()
        .table_name(&app)
        .key("leaseKey", s("shardId-000000000000"))
        .consistent_read(true)
        .send()
        .await
        .expect("GetItem")
        .item
        .expect("the lease row");
    assert_eq!(
        lease.get("entityType"),
        Some(&s("LEASE")),
        "its entityType survives our writes"
    );
}
