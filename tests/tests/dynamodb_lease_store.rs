//! `DynamoDbLeaseStore` against a DynamoDB emulator (dynalite, started by
//! `kcl_tests::emulators::ensure_started`): table creation, the same conditional semantics as
//! `InMemoryLeaseStore`, paging, rows written by the Java KCL (unknown attributes survive every
//! write), corrupt rows (skipped, reported, untouched) and error mapping.

use std::collections::{BTreeSet, HashMap};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::config::Credentials;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;
use kcl_lease::dynamodb::{map_sdk_error, DynamoDbError};
use kcl_lease::{DynamoDbLeaseStore, ExtendedSequenceNumber, Lease, LeaseError, LeaseStore};
use kcl_tests::aws::unique;

type Item = HashMap<String, AttributeValue>;

const JAVA_SEQ: &str = "49590338271490256608559692538361571095921575989136588898";

/// A client for the emulator, with static test credentials.
async fn client() -> Client {
    let endpoints = kcl_tests::emulators::ensure_started();
    let conf = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(endpoints.region.clone()))
        .endpoint_url(&endpoints.dynamodb)
        .credentials_provider(Credentials::new("test", "test", None, None, "static"))
        .load()
        .await;
    Client::new(&conf)
}

/// A store on a fresh, created table.
async fn store(prefix: &str) -> (DynamoDbLeaseStore, Client) {
    let client = client().await;
    let store = DynamoDbLeaseStore::new(client.clone(), unique(prefix));
    assert!(store.ensure_table().await.expect("ensure_table"));
    (store, client)
}

fn lease(key: &str) -> Lease {
    Lease::new(key, ExtendedSequenceNumber::TrimHorizon)
}

fn cp(s: &str) -> ExtendedSequenceNumber {
    ExtendedSequenceNumber::from_parts(s, 0).unwrap()
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: &str) -> AttributeValue {
    AttributeValue::N(v.to_owned())
}

/// A row exactly as the Java KCL 3.1.3 writes it, including attributes this crate does not know.
fn java_row(key: &str) -> Item {
    HashMap::from([
        ("leaseKey".to_owned(), s(key)),
        ("leaseOwner".to_owned(), s("worker-a")),
        ("leaseCounter".to_owned(), n("42")),
        ("checkpoint".to_owned(), s(JAVA_SEQ)),
        ("checkpointSubSequenceNumber".to_owned(), n("0")),
        ("ownerSwitchesSinceCheckpoint".to_owned(), n("1")),
        ("startingHashKey".to_owned(), s("0")),
        (
            "endingHashKey".to_owned(),
            s("170141183460469231731687303715884105727"),
        ),
        (
            "parentShardId".to_owned(),
            AttributeValue::Ss(vec!["shardId-000000000000".to_owned()]),
        ),
        ("throughputKBps".to_owned(), n("1.5")),
        ("isMarkedForLeaseSteal".to_owned(), AttributeValue::Bool(false)),
    ])
}

async fn put_raw(client: &Client, table: &str, item: Item) {
    client
        .put_item()
        .table_name(table)
        .set_item(Some(item))
        .send()
        .await
        .expect("raw PutItem");
}

async fn get_raw(client: &Client, table: &str, key: &str) -> Option<Item> {
    client
        .get_item()
        .table_name(table)
        .key("leaseKey", s(key))
        .consistent_read(true)
        .send()
        .await
        .expect("raw GetItem")
        .item
}

fn conflict_row(result: Result<Lease, LeaseError>) -> Lease {
    match result {
        Err(LeaseError::Conflict {
            actual: Some(row), ..
        }) => *row,
        other => panic!("expected a conflict with the actual row, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_table_creates_once_and_is_idempotent() {
    let client = client().await;
    let table = unique("kcl-ensure");
    let store = DynamoDbLeaseStore::new(client.clone(), table.clone());
    assert_eq!(store.table_name(), table);

    // Before the table exists: a fatal error naming the table, not a panic or "not found".
    let err = store.list().await.unwrap_err();
    match &err {
        LeaseError::Fatal {
            kind: kcl_lease::FatalKind::TableNotFound,
            source,
        } => {
            let dynamo = source.downcast_ref::<DynamoDbError>().expect("a DynamoDbError");
            assert!(dynamo.is_table_missing(), "{err}");
        }
        other => panic!("expected a fatal table-not-found error, got {other:?}"),
    }
    assert!(err.to_string().contains(&table), "{err}");

    // Two concurrent creators: both succeed, at least one created it.
    let other = store.clone();
    let (a, b) = tokio::join!(store.ensure_table(), other.ensure_table());
    assert!(a.unwrap() || b.unwrap());
    assert!(
        !store.ensure_table().await.unwrap(),
        "second call creates nothing"
    );
    let described = client.describe_table().table_name(&table).send().await.unwrap();
    let keys = described.table().unwrap().key_schema();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].attribute_name(), "leaseKey");
    assert!(store.list().await.unwrap().is_empty());

    // A table with another key schema is refused.
    let foreign = DynamoDbLeaseStore::new(client.clone(), unique("kcl-foreign"));
    client
        .create_table()
        .table_name(foreign.table_name())
        .key_schema(
            aws_sdk_dynamodb::types::KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(aws_sdk_dynamodb::types::KeyType::Hash)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            aws_sdk_dynamodb::types::AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(aws_sdk_dynamodb::types::ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .billing_mode(aws_sdk_dynamodb::types::BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap();
    let err = foreign.ensure_table().await.unwrap_err();
    assert!(err.to_string().contains("not a lease table"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_table_adds_the_java_3x_index_and_accepts_a_2x_table_without_it() {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ProjectionType, ScalarAttributeType,
    };
    let (store, client) = store("kcl-index").await;
    let described = client
        .describe_table()
        .table_name(store.table_name())
        .send()
        .await
        .unwrap();
    let indexes = described.table().unwrap().global_secondary_indexes();
    assert_eq!(indexes.len(), 1, "{indexes:?}");
    let index = &indexes[0];
    assert_eq!(
        index.index_name(),
        Some(kcl_lease::dynamodb::schema::LEASE_OWNER_INDEX)
    );
    let keys: Vec<(&str, &KeyType)> = index
        .key_schema()
        .iter()
        .map(|k| (k.attribute_name(), k.key_type()))
        .collect();
    assert_eq!(
        keys,
        [("leaseOwner", &KeyType::Hash), ("leaseKey", &KeyType::Range)]
    );
    assert_eq!(
        index.projection().and_then(|p| p.projection_type()),
        Some(&ProjectionType::KeysOnly)
    );

    // A 2.x application's table (no index) is used as it is.
    let old = DynamoDbLeaseStore::new(client.clone(), unique("kcl-2x"));
    client
        .create_table()
        .table_name(old.table_name())
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("leaseKey")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("leaseKey")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap();
    assert!(
        !old.ensure_table().await.unwrap(),
        "an existing table is not re-created"
    );
    assert!(old.create_if_absent(&lease("a")).await.unwrap());
    let mut owned = old.get("a").await.unwrap().unwrap();
    owned = old.take(&owned, "w", false).await.unwrap();
    old.renew(&owned).await.unwrap();
    let described = client
        .describe_table()
        .table_name(old.table_name())
        .send()
        .await
        .unwrap();
    assert!(described.table().unwrap().global_secondary_indexes().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_is_idempotent_and_keeps_the_first_row() {
    let (store, _) = store("kcl-create").await;
    assert!(store.create_if_absent(&lease("a")).await.unwrap());
    let mut other = lease("a");
    other.checkpoint = ExtendedSequenceNumber::Latest;
    assert!(!store.create_if_absent(&other).await.unwrap());
    assert_eq!(
        store.get("a").await.unwrap().unwrap().checkpoint,
        ExtendedSequenceNumber::TrimHorizon
    );
    assert_eq!(store.get("missing").await.unwrap(), None);
    // A full row round-trips through the table.
    let mut full = lease("b")
        .with_parents(["p1", "p2"])
        .with_hash_key_range(kcl_lease::HashKeyRange::FULL);
    full.pending_checkpoint = Some(cp("77"));
    full.checkpoint = ExtendedSequenceNumber::from_parts(JAVA_SEQ, 3).unwrap();
    assert!(store.create_if_absent(&full).await.unwrap());
    assert_eq!(store.get("b").await.unwrap().unwrap(), full);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutation_is_conditional_on_owner_and_counter() {
    let (store, _) = store("kcl-cond").await;
    store.create_if_absent(&lease("a")).await.unwrap();
    let seen = store.get("a").await.unwrap().unwrap();
    let mine = store.take(&seen, "w1", false).await.unwrap();
    assert_eq!(mine.lease_counter, 1);
    assert_eq!(mine.owner_switches_since_checkpoint, 1);
    assert!(mine.is_owned_by("w1"));
    // A second taker with the stale view conflicts and learns the current row.
    let actual = conflict_row(store.take(&seen, "w2", false).await);
    assert!(actual.is_owned_by("w1"));
    assert_eq!(actual.lease_counter, 1);

    let renewed = store.renew(&mine).await.unwrap();
    assert_eq!(renewed.lease_counter, 2);
    assert_eq!(conflict_row(store.renew(&mine).await), renewed);
    assert_eq!(conflict_row(store.evict(&mine).await), renewed);
    assert_eq!(
        conflict_row(store.mark_children(&mine, &BTreeSet::new()).await),
        renewed
    );
    match store.delete(&mine).await {
        Err(LeaseError::Conflict {
            actual: Some(row), ..
        }) => assert_eq!(*row, renewed),
        other => panic!("expected conflict, got {other:?}"),
    }
    assert_eq!(
        conflict_row(store.update_checkpoint(&mine, "w1", &cp("5")).await),
        renewed
    );
    // Not the owner: conflict.
    assert!(store
        .update_checkpoint(&renewed, "w2", &cp("5"))
        .await
        .unwrap_err()
        .is_conflict());

    let after = store.update_checkpoint(&renewed, "w1", &cp("5")).await.unwrap();
    assert_eq!(after.checkpoint, cp("5"));
    assert_eq!(after.owner_switches_since_checkpoint, 0);
    assert_eq!(after.lease_counter, 3, "an owner's checkpoint moves the counter");

    // Re-taking by the same owner does not count as a switch.
    let again = store.take(&after, "w1", true).await.unwrap();
    assert_eq!(again.owner_switches_since_checkpoint, 0);
    assert_eq!(again.checkpoint_owner, None);

    let children: BTreeSet<String> = ["c1", "c2"].into_iter().map(String::from).collect();
    let marked = store.mark_children(&again, &children).await.unwrap();
    assert_eq!(marked.child_shard_ids, children);
    assert_eq!(marked.lease_counter, again.lease_counter + 1);
    let unmarked = store.mark_children(&marked, &BTreeSet::new()).await.unwrap();
    assert!(unmarked.child_shard_ids.is_empty());

    let released = store.evict(&unmarked).await.unwrap();
    assert_eq!(released.lease_owner, None);
    assert_eq!(released.lease_counter, unmarked.lease_counter + 1);
    // Unowned: takes conditioned on "no owner" work.
    let retaken = store.take(&released, "w3", false).await.unwrap();
    assert!(retaken.is_owned_by("w3"));
    assert_eq!(retaken.owner_switches_since_checkpoint, 1);

    // Missing rows: not found, and no row is created by the attempt.
    for result in [
        store.renew(&lease("zz")).await,
        store.take(&lease("zz"), "w", false).await,
        store.evict(&lease("zz")).await,
        store.update_checkpoint(&lease("zz"), "w", &cp("1")).await,
        store
            .complete_handoff(&Lease {
                lease_owner: Some("t".into()),
                checkpoint_owner: Some("w".into()),
                ..lease("zz")
            })
            .await,
        store.mark_children(&lease("zz"), &children).await,
    ] {
        assert!(matches!(result, Err(LeaseError::NotFound(_))), "{result:?}");
    }
    assert!(matches!(
        store.delete(&lease("zz")).await,
        Err(LeaseError::NotFound(_))
    ));
    assert_eq!(store.get("zz").await.unwrap(), None);

    store.delete(&retaken).await.unwrap();
    assert_eq!(store.get("a").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_lets_the_previous_owner_checkpoint_without_disturbing_the_new_one() {
    let (store, _) = store("kcl-handoff").await;
    store.create_if_absent(&lease("a")).await.unwrap();
    let seen = store.get("a").await.unwrap().unwrap();
    let old = store.take(&seen, "old", false).await.unwrap();
    let new = store.take(&old, "new", true).await.unwrap();
    assert_eq!(new.checkpoint_owner.as_deref(), Some("old"));
    assert!(new.is_owned_by("new"));
    assert_eq!(new.owner_switches_since_checkpoint, 2);
    let new = store.renew(&new).await.unwrap();
    // The old owner checkpoints with its stale view: allowed as checkpoint owner.
    let row = store.update_checkpoint(&old, "old", &cp("9")).await.unwrap();
    assert_eq!(row.checkpoint, cp("9"));
    assert_eq!(
        row.lease_counter, new.lease_counter,
        "hand-off checkpoint leaves the counter"
    );
    assert_eq!(row.checkpoint_owner.as_deref(), Some("old"));
    // The new owner cannot checkpoint until the hand-off is complete.
    let actual = conflict_row(store.update_checkpoint(&new, "new", &cp("10")).await);
    assert_eq!(actual.checkpoint_owner.as_deref(), Some("old"));
    let done = store.complete_handoff(&new).await.unwrap();
    assert_eq!(done.checkpoint_owner, None);
    assert_eq!(done.lease_counter, new.lease_counter);
    assert!(store.complete_handoff(&new).await.unwrap_err().is_conflict());
    // ... and its renewals still work, and now it can checkpoint.
    let new = store.renew(&new).await.unwrap();
    assert_eq!(new.checkpoint_owner, None);
    let after = store.update_checkpoint(&new, "new", &cp("10")).await.unwrap();
    assert_eq!(after.lease_counter, new.lease_counter + 1);
    // A hand-off take from an unowned lease records no checkpoint owner; evict clears it.
    let handing = store.take(&after, "third", true).await.unwrap();
    assert_eq!(handing.checkpoint_owner.as_deref(), Some("new"));
    let evicted = store.evict(&handing).await.unwrap();
    assert_eq!(evicted.checkpoint_owner, None);
    let free = store.take(&evicted, "fourth", true).await.unwrap();
    assert_eq!(free.checkpoint_owner, None);
}

/// F10 of the coordination review: the previous owner's hand-off checkpoint, as it learnt of the
/// hand-off (its thief as owner), lands only while that thief owns the lease. A Java KCL 2.x
/// take (owner and counter only) leaves `checkpointOwner` behind; the checkpoint must not land
/// on top of the Java worker's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_checkpoint_lands_only_while_its_thief_owns_the_lease() {
    let (store, client) = store("kcl-handoff-thief").await;
    store.create_if_absent(&lease("a")).await.unwrap();
    let seen = store.get("a").await.unwrap().unwrap();
    let old = store.take(&seen, "old", false).await.unwrap();
    let stolen = store.take(&old, "new", true).await.unwrap();
    let learnt = Lease {
        lease_owner: Some("new".into()),
        checkpoint_owner: Some("old".into()),
        ..old.clone()
    };
    let row = store.update_checkpoint(&learnt, "old", &cp("9")).await.unwrap();
    assert_eq!(row.checkpoint, cp("9"));
    assert_eq!(
        row.lease_counter, stolen.lease_counter,
        "the counter is the thief's"
    );
    // A Java 2.x worker takes it from the thief: owner and counter only.
    client
        .update_item()
        .table_name(store.table_name())
        .key("leaseKey", s("a"))
        .update_expression("SET leaseOwner = :j, leaseCounter = leaseCounter + :one, checkpoint = :cp")
        .expression_attribute_values(":j", s("java-2"))
        .expression_attribute_values(":one", n("1"))
        .expression_attribute_values(":cp", s("30"))
        .send()
        .await
        .expect("raw UpdateItem");
    let actual = conflict_row(store.update_checkpoint(&learnt, "old", &cp("20")).await);
    assert_eq!(actual.lease_owner.as_deref(), Some("java-2"));
    assert_eq!(store.get("a").await.unwrap().unwrap().checkpoint, cp("30"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_through_more_rows_than_a_page() {
    let (store, client) = store("kcl-paging").await;
    let store = store.with_scan_page_size(3);
    assert_eq!(store.scan_page_size(), Some(3));
    for i in 0..11 {
        assert!(store
            .create_if_absent(&lease(&format!("shardId-{i:012}")))
            .await
            .unwrap());
    }
    let mut keys: Vec<String> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.lease_key)
        .collect();
    keys.sort();
    let expected: Vec<String> = (0..11).map(|i| format!("shardId-{i:012}")).collect();
    assert_eq!(keys, expected);
    assert_eq!(store.corrupt_rows_seen(), 0);
    // The emulator really pages at that size, so `list` followed LastEvaluatedKey.
    let page = client
        .scan()
        .table_name(store.table_name())
        .consistent_read(true)
        .limit(3)
        .send()
        .await
        .unwrap();
    assert_eq!(page.items().len(), 3);
    assert!(page.last_evaluated_key().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_rows_are_read_and_their_unknown_attributes_survive_every_write() {
    let (store, client) = store("kcl-java").await;
    let table = store.table_name().to_owned();
    let key = "shardId-000000000001";
    put_raw(&client, &table, java_row(key)).await;

    let row = store.get(key).await.unwrap().unwrap();
    assert!(row.is_owned_by("worker-a"));
    assert_eq!(row.lease_counter, 42);
    assert_eq!(row.checkpoint.checkpoint_str(), JAVA_SEQ);
    assert_eq!(row.owner_switches_since_checkpoint, 1);
    assert_eq!(
        row.parent_shard_ids,
        BTreeSet::from(["shardId-000000000000".to_owned()])
    );
    assert_eq!(
        row.hash_key_range.map(|r| r.end),
        Some(170141183460469231731687303715884105727)
    );
    assert_eq!(store.list().await.unwrap(), vec![row.clone()]);

    let renewed = store.renew(&row).await.unwrap();
    assert_eq!(renewed.lease_counter, 43);
    let taken = store.take(&renewed, "rust-worker", false).await.unwrap();
    assert_eq!(taken.owner_switches_since_checkpoint, 2);
    let checkpointed = store
        .update_checkpoint(
            &taken,
            "rust-worker",
            &cp("49590338271490256608559692538361571095921575989136588999"),
        )
        .await
        .unwrap();
    assert_eq!(checkpointed.lease_counter, 45);
    let children: BTreeSet<String> = ["shardId-000000000002".to_owned()].into();
    let marked = store.mark_children(&checkpointed, &children).await.unwrap();

    let raw = get_raw(&client, &table, key).await.unwrap();
    assert_eq!(raw.get("throughputKBps"), Some(&n("1.5")), "{raw:?}");
    assert_eq!(
        raw.get("isMarkedForLeaseSteal"),
        Some(&AttributeValue::Bool(false))
    );
    assert_eq!(raw.get("leaseOwner"), Some(&s("rust-worker")));
    assert_eq!(raw.get("leaseCounter"), Some(&n("46")));
    assert_eq!(
        raw.get("checkpoint"),
        Some(&s("49590338271490256608559692538361571095921575989136588999"))
    );
    assert_eq!(raw.get("checkpointSubSequenceNumber"), Some(&n("0")));
    assert_eq!(raw.get("ownerSwitchesSinceCheckpoint"), Some(&n("0")));
    assert_eq!(
        raw.get("childShardIds"),
        Some(&AttributeValue::Ss(vec!["shardId-000000000002".to_owned()]))
    );
    assert_eq!(
        raw.get("parentShardId"),
        Some(&AttributeValue::Ss(vec!["shardId-000000000000".to_owned()]))
    );
    assert_eq!(raw.get("startingHashKey"), Some(&s("0")));

    let released = store.evict(&marked).await.unwrap();
    let raw = get_raw(&client, &table, key).await.unwrap();
    assert_eq!(raw.get("leaseOwner"), None);
    assert_eq!(raw.get("throughputKBps"), Some(&n("1.5")));
    assert_eq!(released.lease_counter, 47);

    // A prepared (two-phase) Java checkpoint is cleared by a checkpoint, state included.
    let mut pending = java_row("shardId-000000000009");
    pending.insert("pendingCheckpoint".into(), s("12345"));
    pending.insert("pendingCheckpointSubSequenceNumber".into(), n("2"));
    pending.insert(
        "pendingCheckpointState".into(),
        AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(vec![1, 2, 3])),
    );
    put_raw(&client, &table, pending).await;
    let row = store.get("shardId-000000000009").await.unwrap().unwrap();
    assert_eq!(
        row.pending_checkpoint,
        Some(ExtendedSequenceNumber::from_parts("12345", 2).unwrap())
    );
    let row = store
        .update_checkpoint(&row, "worker-a", &cp("12345"))
        .await
        .unwrap();
    assert_eq!(row.pending_checkpoint, None);
    let raw = get_raw(&client, &table, "shardId-000000000009").await.unwrap();
    for gone in [
        "pendingCheckpoint",
        "pendingCheckpointSubSequenceNumber",
        "pendingCheckpointState",
    ] {
        assert!(!raw.contains_key(gone), "{gone} left in {raw:?}");
    }
    assert_eq!(raw.get("throughputKBps"), Some(&n("1.5")));

    // A minimal row without leaseCounter reads as counter 0 and can be renewed.
    let minimal = HashMap::from([
        ("leaseKey".to_owned(), s("shardId-000000000010")),
        ("checkpoint".to_owned(), s("TRIM_HORIZON")),
    ]);
    put_raw(&client, &table, minimal).await;
    let row = store.get("shardId-000000000010").await.unwrap().unwrap();
    assert_eq!(row.lease_counter, 0);
    let taken = store.take(&row, "w", false).await.unwrap();
    assert_eq!(taken.lease_counter, 1);
    assert_eq!(taken.owner_switches_since_checkpoint, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_rows_are_skipped_by_list_reported_by_get_and_left_untouched() {
    let (store, client) = store("kcl-corrupt").await;
    let table = store.table_name().to_owned();
    store.create_if_absent(&lease("good")).await.unwrap();

    let mut bad_checkpoint = java_row("bad-checkpoint");
    bad_checkpoint.insert("checkpoint".into(), s("12x"));
    let mut parents_as_string = java_row("bad-parents");
    parents_as_string.insert("parentShardId".into(), s("shardId-000000000000"));
    // DynamoDB itself rejects N "abc", so a counter of the wrong type stands in for it.
    let mut counter_as_string = java_row("bad-counter");
    counter_as_string.insert("leaseCounter".into(), s("abc"));
    let mut no_checkpoint = java_row("no-checkpoint");
    no_checkpoint.remove("checkpoint");
    let bad = [
        ("bad-checkpoint", bad_checkpoint, "checkpoint"),
        ("bad-parents", parents_as_string, "parentShardId"),
        ("bad-counter", counter_as_string, "leaseCounter"),
        ("no-checkpoint", no_checkpoint, "checkpoint"),
    ];
    for (_, item, _) in &bad {
        put_raw(&client, &table, item.clone()).await;
    }

    let listed = store.list().await.unwrap();
    assert_eq!(
        listed.iter().map(|l| l.lease_key.as_str()).collect::<Vec<_>>(),
        ["good"]
    );
    assert_eq!(store.corrupt_rows_seen(), 4);

    for (key, item, attribute) in &bad {
        match store.get(key).await {
            Err(LeaseError::Corrupt { key: k, reason }) => {
                assert_eq!(&k, key);
                assert!(reason.contains(attribute), "{reason}");
            }
            other => panic!("expected corrupt for {key}, got {other:?}"),
        }
        // A write conditioned on what a Java reader would have seen fails without touching it.
        let mut guess = lease(key);
        guess.lease_owner = Some("worker-a".into());
        guess.lease_counter = 1;
        assert!(store.renew(&guess).await.unwrap_err().is_conflict());
        assert_eq!(get_raw(&client, &table, key).await.as_ref(), Some(item));
    }
    store.list().await.unwrap();
    assert_eq!(store.corrupt_rows_seen(), 8);
}

#[test]
fn throttling_errors_map_to_throttled() {
    use aws_sdk_dynamodb::config::http::HttpResponse;
    use aws_sdk_dynamodb::error::{ErrorMetadata, SdkError};
    use aws_sdk_dynamodb::operation::scan::ScanError;
    use aws_sdk_dynamodb::types::error::{ProvisionedThroughputExceededException, ThrottlingException};

    let raw = || HttpResponse::new(400u16.try_into().unwrap(), "".into());
    let meta = |code: &str| {
        ErrorMetadata::builder()
            .code(code)
            .message("Rate of requests exceeds the allowed throughput.")
            .build()
    };
    let throttled = ScanError::ProvisionedThroughputExceededException(
        ProvisionedThroughputExceededException::builder()
            .message("Rate of requests exceeds the allowed throughput.")
            .meta(meta("ProvisionedThroughputExceededException"))
            .build(),
    );
    let err = map_sdk_error("leases", "Scan", SdkError::service_error(throttled, raw()));
    assert!(
        matches!(&err, LeaseError::Throttled(m) if m.contains("Rate of requests")),
        "{err:?}"
    );
    assert!(err.is_retryable());

    let throttled = ScanError::ThrottlingException(
        ThrottlingException::builder()
            .message("Throughput exceeds the current capacity")
            .meta(meta("ThrottlingException"))
            .build(),
    );
    let err = map_sdk_error("leases", "Scan", SdkError::service_error(throttled, raw()));
    assert!(matches!(err, LeaseError::Throttled(_)), "{err:?}");

    // An unmodelled code the service may send is classified by its code.
    let limit = ScanError::generic(
        ErrorMetadata::builder()
            .code("RequestLimitExceeded")
            .message("Throughput exceeds the current throughput limit for your account.")
            .build(),
    );
    let err = map_sdk_error("leases", "Scan", SdkError::service_error(limit, raw()));
    assert!(matches!(err, LeaseError::Throttled(_)), "{err:?}");

    let other = ScanError::generic(ErrorMetadata::builder().code("InternalServerError").build());
    let err = map_sdk_error("leases", "Scan", SdkError::service_error(other, raw()));
    match &err {
        LeaseError::Backend(inner) => {
            let dynamo = inner.downcast_ref::<DynamoDbError>().unwrap();
            assert_eq!(dynamo.code(), Some("InternalServerError"));
            assert_eq!(dynamo.operation(), "Scan");
        }
        other => panic!("expected backend, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_live_in_a_side_table_that_ensure_table_creates() {
    use kcl_lease::{HeartbeatCondition, LeaseRenewal, WorkerHeartbeat};
    let (store, client) = store("kcl-heartbeats").await;
    let side = store.heartbeat_table_name().to_owned();
    assert_eq!(side, format!("{}-WorkerHeartbeats", store.table_name()));
    let described = client.describe_table().table_name(&side).send().await.unwrap();
    assert_eq!(
        described.table().unwrap().key_schema()[0].attribute_name(),
        "workerId"
    );
    assert!(store.list_heartbeats(true).await.unwrap().is_empty());
    let beat = |worker: &str, counter: u64| WorkerHeartbeat {
        worker_id: worker.into(),
        counter,
        renewal: LeaseRenewal::Worker,
        leases: 7,
        epoch: 3,
        incarnation: Some(11),
        lapsed: false,
        nudges: 0,
        view: 0,
        watched: None,
    };
    let mine = HeartbeatCondition::Incarnation(11);
    store.put_heartbeat(&beat("a", 1), mine).await.unwrap();
    store.put_heartbeat(&beat("a", 2), mine).await.unwrap();
    store.put_heartbeat(&beat("b", 1), mine).await.unwrap();
    let mut rows = store.list_heartbeats(false).await.unwrap();
    rows.sort_by(|x, y| x.worker_id.cmp(&y.worker_id));
    assert_eq!(rows, vec![beat("a", 2), beat("b", 1)]);
    // Another process with the same worker id (another incarnation) cannot write the row...
    let other = WorkerHeartbeat {
        incarnation: Some(12),
        ..beat("a", 1)
    };
    assert!(store
        .put_heartbeat(&other, HeartbeatCondition::Incarnation(12))
        .await
        .unwrap_err()
        .is_conflict());
    // ...until it takes over a row that stood still, conditional on its counter.
    assert!(store
        .put_heartbeat(&other, HeartbeatCondition::Counter(1))
        .await
        .unwrap_err()
        .is_conflict());
    store
        .put_heartbeat(&other, HeartbeatCondition::Counter(2))
        .await
        .unwrap();
    assert!(store
        .put_heartbeat(&beat("a", 3), mine)
        .await
        .unwrap_err()
        .is_conflict());
    store
        .put_heartbeat(&beat("a", 2), HeartbeatCondition::Counter(1))
        .await
        .unwrap();
    // The divided watch: one row read, nudged by others, the nudges kept by the row's own
    // heartbeats; a row judged dead marked only while unchanged, never created.
    assert_eq!(store.get_heartbeat("a", true).await.unwrap(), Some(beat("a", 2)));
    assert_eq!(store.get_heartbeat("nobody", false).await.unwrap(), None);
    store.nudge_heartbeat("b").await.unwrap();
    store.nudge_heartbeat("b").await.unwrap();
    store.nudge_heartbeat("nobody").await.unwrap();
    assert_eq!(
        store.get_heartbeat("nobody", true).await.unwrap(),
        None,
        "a nudge creates no row"
    );
    let viewed = WorkerHeartbeat {
        view: 42,
        watched: Some(kcl_lease::WatchedRow {
            worker_id: "a".into(),
            counter: 2,
            incarnation: Some(11),
        }),
        ..beat("b", 2)
    };
    store.put_heartbeat(&viewed, mine).await.unwrap();
    let b = store.get_heartbeat("b", true).await.unwrap().unwrap();
    assert_eq!(
        (b.counter, b.nudges, b.view),
        (2, 2, 42),
        "the heartbeat kept the nudges"
    );
    assert_eq!(b.watched, viewed.watched);
    let unchanged = |counter| HeartbeatCondition::Unchanged {
        incarnation: Some(11),
        counter,
    };
    let marked = WorkerHeartbeat {
        lapsed: true,
        ..b.clone()
    };
    assert!(store
        .put_heartbeat(&marked, unchanged(1))
        .await
        .unwrap_err()
        .is_conflict());
    store.put_heartbeat(&marked, unchanged(2)).await.unwrap();
    assert!(store.get_heartbeat("b", true).await.unwrap().unwrap().lapsed);
    let ghost = WorkerHeartbeat {
        lapsed: true,
        ..beat("ghost", 1)
    };
    assert!(store
        .put_heartbeat(&ghost, unchanged(1))
        .await
        .unwrap_err()
        .is_conflict());
    assert_eq!(store.get_heartbeat("ghost", true).await.unwrap(), None);
    // The row's own next heartbeat clears the mark (and still keeps the nudges).
    store.put_heartbeat(&beat("b", 3), mine).await.unwrap();
    let b = store.get_heartbeat("b", true).await.unwrap().unwrap();
    assert_eq!((b.counter, b.lapsed, b.nudges), (3, false, 2));
    assert_eq!(b.watched, None, "what it watched is removed by a beat without it");
    store
        .put_heartbeat(&beat("b", 1), HeartbeatCondition::Any)
        .await
        .unwrap();
    // The lease table holds no heartbeat rows (Java workers never see them).
    assert!(store.list().await.unwrap().is_empty());
    // Conditional clean-up: only if the counter did not move, or by its own process.
    assert!(store
        .delete_heartbeat("a", HeartbeatCondition::Counter(1))
        .await
        .unwrap_err()
        .is_conflict());
    assert!(store
        .delete_heartbeat("b", HeartbeatCondition::Incarnation(12))
        .await
        .unwrap_err()
        .is_conflict());
    store
        .delete_heartbeat("a", HeartbeatCondition::Counter(2))
        .await
        .unwrap();
    store.delete_heartbeat("b", mine).await.unwrap();
    store
        .delete_heartbeat("gone", HeartbeatCondition::Any)
        .await
        .unwrap();
    assert!(store.list_heartbeats(true).await.unwrap().is_empty());
    // A corrupt row is skipped.
    put_raw(
        &client,
        &side,
        HashMap::from([
            ("workerId".to_owned(), s("x")),
            ("heartbeatCounter".to_owned(), s("NaN")),
        ]),
    )
    .await;
    assert!(store.list_heartbeats(true).await.unwrap().is_empty());

    // A lease table whose heartbeat table is missing (created by another tool): heartbeats are
    // unsupported, which workers take as "coordinate through the lease table alone".
    let bare =
        DynamoDbLeaseStore::new(client.clone(), store.table_name()).with_heartbeat_table(unique("kcl-none"));
    assert!(matches!(
        bare.put_heartbeat(&beat("a", 1), mine).await,
        Err(LeaseError::Unsupported(_))
    ));
    assert!(matches!(
        bare.list_heartbeats(true).await,
        Err(LeaseError::Unsupported(_))
    ));
}

/// `ownerWithoutHeartbeat` on DynamoDB: the conformance check the in-memory store passes too,
/// and the attribute as it is in the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_without_heartbeat_follows_renewals_and_takes() {
    let (store, client) = store("kcl-no-heartbeat").await;
    kcl_lease::conformance::owner_without_heartbeat_follows_renewals_and_takes(&store, "a").await;
    let seen = store.get("a").await.unwrap().unwrap();
    let mut mine = store.take(&seen, "p", false).await.unwrap();
    mine.owner_without_heartbeat = Some("p".into());
    store.renew(&mine).await.unwrap();
    let raw = get_raw(&client, store.table_name(), "a").await.unwrap();
    assert_eq!(raw.get("ownerWithoutHeartbeat"), Some(&s("p")));
}

/// `SHARD_END` is final for checkpoints on DynamoDB: the conformance check the in-memory store
/// passes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_end_is_final_for_checkpoints() {
    let (store, _client) = store("kcl-shard-end-final").await;
    kcl_lease::conformance::shard_end_is_final_for_checkpoints(&store, "a").await;
}

/// `ownerRenewsByHeartbeat` on DynamoDB: the conformance check the in-memory store passes too,
/// and the attribute as it is in the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_renews_by_heartbeat_follows_takes() {
    let (store, client) = store("kcl-renews-by-heartbeat").await;
    kcl_lease::conformance::owner_renews_by_heartbeat_follows_takes(&store, "a").await;
    let seen = store.get("a").await.unwrap().unwrap();
    store.take_heartbeat_renewed(&seen, "w", false).await.unwrap();
    let raw = get_raw(&client, store.table_name(), "a").await.unwrap();
    assert_eq!(raw.get("ownerRenewsByHeartbeat"), Some(&s("w")));
}

/// `handoffFromCounter` on DynamoDB: the conformance check the in-memory store passes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_checkpoint_lands_only_for_the_holding_stolen_from() {
    let (store, _client) = store("kcl-handoff-from").await;
    kcl_lease::conformance::a_hand_off_checkpoint_lands_only_for_the_holding_stolen_from(&store, "a").await;
}

/// A completion of a hand-off on DynamoDB ends only the hand-off it names: the conformance check
/// the in-memory store passes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_completion_does_not_end_a_later_hand_off() {
    let (store, _client) = store("kcl-late-completion").await;
    kcl_lease::conformance::a_late_completion_does_not_end_a_later_hand_off(&store, "a").await;
}
