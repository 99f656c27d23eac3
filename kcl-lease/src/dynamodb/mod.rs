//! `DynamoDbLeaseStore`: the lease table in Amazon DynamoDB, row for row the Java KCL's, so Java
//! and Rust workers can share a table (or an application can move from one to the other).
//!
//! Every mutation is a single conditional write (`PutItem`, `UpdateItem` or `DeleteItem`) with
//! the same condition and the same effect as [`crate::InMemoryLeaseStore`], which is the
//! reference semantics. Only `create_if_absent` writes a whole item (and only when none exists);
//! every other write is an `UpdateItem` naming the attributes it changes, so attributes written
//! by other KCL versions (the Java KCL 3.x adds `throughputKBps`, `isMarkedForLeaseSteal`, ...)
//! are never removed.
//!
//! # Table schema (the migration reference)
//!
//! Hash key `leaseKey` (S), no range key, no index is required. Tables created by
//! [`DynamoDbLeaseStore::ensure_table`] are on demand (`PAY_PER_REQUEST`) and have the Java KCL
//! 3.x's global secondary index [`schema::LEASE_OWNER_INDEX`] (`LeaseOwnerToLeaseKeyIndex`: hash
//! key `leaseOwner` S, range key `leaseKey` S, `KEYS_ONLY`), as a 3.x application's table does,
//! so that Java KCL 3.x workers can run on a table this crate created (they wait for that index,
//! and add it with `UpdateTable` only where they are allowed to). This crate never queries it.
//!
//! | Attribute | Type | [`Lease`] field | Absent means |
//! |---|---|---|---|
//! | `leaseKey` | S | `lease_key` | row is corrupt |
//! | `leaseOwner` | S | `lease_owner` | unowned |
//! | `leaseCounter` | N | `lease_counter` | 0 |
//! | `checkpoint` | S | `checkpoint`: decimal sequence number, `TRIM_HORIZON`, `LATEST`, `AT_TIMESTAMP` or `SHARD_END` | row is corrupt |
//! | `checkpointSubSequenceNumber` | N | `checkpoint` (sub-sequence) | 0 |
//! | `pendingCheckpoint` | S | `pending_checkpoint` | no pending checkpoint |
//! | `pendingCheckpointSubSequenceNumber` | N | `pending_checkpoint` (sub-sequence) | 0 |
//! | `ownerSwitchesSinceCheckpoint` | N | `owner_switches_since_checkpoint` | 0 |
//! | `parentShardId` | SS | `parent_shard_ids` | no parents (never written empty) |
//! | `childShardIds` | SS | `child_shard_ids` | no children (never written empty) |
//! | `checkpointOwner` | S | `checkpoint_owner` | no hand-off in progress |
//! | `startingHashKey` | S | `hash_key_range.start` (decimal u128) | range unknown |
//! | `endingHashKey` | S | `hash_key_range.end` (decimal u128) | range unknown |
//! | `streamName` | S | `stream_identifier`: multi-stream only, `account:stream:creationEpoch` | single-stream lease |
//! | `shardId` | S | `shard_id`: multi-stream only | single-stream lease |
//!
//! Any other attribute is ignored on read and left alone on write, with one exception:
//! `pendingCheckpointState` (B, the Java KCL's application state of a prepared checkpoint) is
//! removed together with `pendingCheckpoint` when a checkpoint is written, as the Java KCL does.
//! A row that cannot be decoded (see [`schema::decode`]) is skipped by
//! [`LeaseStore::list`] with a warning, reported by [`LeaseStore::get`] as
//! [`LeaseError::Corrupt`], and never modified or deleted.
//!
//! # Conditions
//!
//! `counter(e)` is `#c = :c` (`leaseCounter` as in `expected`; when that is 0, a row without
//! `leaseCounter` also matches), `owner(e)` is `#o = :o`, or `attribute_not_exists(#o)` when
//! `expected` is unowned. Every `UpdateItem` condition also requires `attribute_exists(#k)` so
//! that an update never creates a row. The new counter is written as `:next` (`expected + 1`),
//! which the condition makes equal to `leaseCounter + 1`.
//!
//! | Operation | Condition | Update |
//! |---|---|---|
//! | `create_if_absent` | `attribute_not_exists(#k)` | `PutItem` of the whole row |
//! | `renew` | `counter AND owner` | `SET #c = :next` |
//! | `take` | `counter AND owner` | `SET #o, #c = :next`, `#osc = #osc + 1` if the owner changes, `SET #co = :prev` on hand-off else `REMOVE #co` |
//! | `evict` | `counter AND owner` | `SET #c = :next REMOVE #o, #co` |
//! | `update_checkpoint` (owner) | `#o = :w AND counter AND attribute_not_exists(#co)` | `SET #cp, #cps, #osc = 0, #c = :next REMOVE #pcp, #pcps, #pcst` |
//! | `update_checkpoint` (hand-off), tried when the owner form fails | `#co = :w` | as above without `#c` |
//! | `update_checkpoint` (hand-off as learnt: `expected` names the thief as owner and `:w` as `checkpointOwner`) | `#co = :w AND #o = :thief` | as above without `#c` |
//! | `complete_handoff` | `#co = :w AND owner(h) AND #hfc = :hfc` (`attribute_not_exists(#hfc)` when `h` has none): the hand-off `h` as the caller read it | `REMOVE #co, #hfc` |
//! | `mark_children` | `counter AND owner` | `SET #c = :next, #ch = :ch` (or `REMOVE #ch` when empty) |
//! | `delete` | `counter` (`DeleteItem`) | |
//!
//! A failed condition becomes [`LeaseError::Conflict`] carrying the current row (from
//! `ReturnValuesOnConditionCheckFailure=ALL_OLD` where the service supports it, otherwise a
//! strongly consistent `GetItem`), or [`LeaseError::NotFound`] when the row does not exist.
//! Throttling (`ProvisionedThroughputExceededException`, `ThrottlingException`,
//! `RequestLimitExceeded`) becomes [`LeaseError::Throttled`]; everything else
//! [`LeaseError::Backend`] with a [`DynamoDbError`] inside.

pub mod schema;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType,
    Projection, ProjectionType, ReturnValue, ReturnValuesOnConditionCheckFailure, ScalarAttributeType,
    TableDescription, TableStatus,
};
use aws_sdk_dynamodb::Client;

use crate::error::{FatalKind, LeaseError, Result};
use crate::heartbeat::{HeartbeatCondition, WorkerHeartbeat};
use crate::lease::Lease;
use crate::sequence::ExtendedSequenceNumber;
use crate::store::LeaseStore;
use schema::Item;

/// How often [`DynamoDbLeaseStore::ensure_table`] polls while the table is being created.
pub const TABLE_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long [`DynamoDbLeaseStore::ensure_table`] waits for the table to become active.
pub const TABLE_WAIT_LIMIT: Duration = Duration::from_secs(300);

/// A lease table in DynamoDB. Cloning gives another handle to the same table (and the same
/// corrupt-row count).
#[derive(Clone, Debug)]
pub struct DynamoDbLeaseStore {
    client: Client,
    table: String,
    heartbeat_table: String,
    scan_page_size: Option<u32>,
    corrupt_rows_seen: Arc<AtomicU64>,
    /// Corrupt rows already reported at warning level (each is reported once, then at debug
    /// level at every scan). Bounded by [`MAX_REPORTED_CORRUPT_ROWS`].
    reported_corrupt: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// At most this many corrupt rows are remembered as reported.
const MAX_REPORTED_CORRUPT_ROWS: usize = 10_000;

impl DynamoDbLeaseStore {
    /// A store on `table`. Nothing is called until the first operation; see
    /// [`DynamoDbLeaseStore::ensure_table`] to create the table.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        let table = table.into();
        Self {
            client,
            heartbeat_table: schema::heartbeat_table_name(&table),
            table,
            scan_page_size: None,
            corrupt_rows_seen: Arc::new(AtomicU64::new(0)),
            reported_corrupt: Arc::default(),
        }
    }

    /// Sets the `Limit` of each `Scan` page of [`LeaseStore::list`] (builder style; default: no
    /// limit, DynamoDB's 1 MB pages). `list` always reads every page.
    #[must_use]
    pub fn with_scan_page_size(mut self, rows: u32) -> Self {
        self.set_scan_page_size(Some(rows));
        self
    }

    /// Sets or clears the `Limit` of each `Scan` page of [`LeaseStore::list`]. 0 means no limit.
    pub fn set_scan_page_size(&mut self, rows: Option<u32>) {
        self.scan_page_size = rows.filter(|r| *r > 0);
    }

    /// The `Limit` of each `Scan` page, if set.
    pub fn scan_page_size(&self) -> Option<u32> {
        self.scan_page_size
    }

    /// The table name.
    pub fn table_name(&self) -> &str {
        &self.table
    }

    /// The heartbeat table's name (default `<lease table>-WorkerHeartbeats`).
    pub fn heartbeat_table_name(&self) -> &str {
        &self.heartbeat_table
    }

    /// Uses another table for worker heartbeats (builder style).
    #[must_use]
    pub fn with_heartbeat_table(mut self, table: impl Into<String>) -> Self {
        self.heartbeat_table = table.into();
        self
    }

    /// The DynamoDB client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// How many corrupt rows [`LeaseStore::list`] skipped so far (each list counts each bad row
    /// it sees again).
    pub fn corrupt_rows_seen(&self) -> u64 {
        self.corrupt_rows_seen.load(Ordering::Relaxed)
    }

    /// Creates the table unless it exists (hash key `leaseKey` S, on-demand billing, the index
    /// [`schema::LEASE_OWNER_INDEX`]; an existing table is used as it is), then waits
    /// until it is `ACTIVE`, polling every [`TABLE_POLL_INTERVAL`] for at most
    /// [`TABLE_WAIT_LIMIT`]. Returns whether this call created it; a concurrent creator
    /// (`ResourceInUseException`) is not an error. An existing table with another key schema is
    /// a [`LeaseError::Backend`] error.
    ///
    /// It also creates the small heartbeat table ([`DynamoDbLeaseStore::heartbeat_table_name`],
    /// hash key `workerId` S, on demand) unless it exists. If that fails (no permission), the
    /// lease table is still usable: workers then coordinate through the lease table alone,
    /// as before heartbeats existed, with a warning.
    pub async fn ensure_table(&self) -> Result<bool> {
        let created = self.ensure(&self.table, schema::LEASE_KEY, true).await?;
        if let Err(e) = self.ensure(&self.heartbeat_table, schema::WORKER_ID, false).await {
            tracing::warn!(table = %self.heartbeat_table, error = %e,
                "the worker heartbeat table is not available: coordinating through the lease table alone");
        }
        Ok(created)
    }

    /// Deletes the lease table and the heartbeat table (`kcl-admin delete-application`).
    /// Returns whether each existed (lease table, heartbeat table); a missing table is not an
    /// error. DynamoDB deletes in the background: the names may stay taken for a short while.
    pub async fn delete_tables(&self) -> Result<(bool, bool)> {
        let lease = self.delete_table(&self.table).await?;
        let heartbeat = self.delete_table(&self.heartbeat_table).await?;
        Ok((lease, heartbeat))
    }

    async fn delete_table(&self, table: &str) -> Result<bool> {
        match self.client.delete_table().table_name(table).send().await {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(false),
            Err(e) => Err(map_sdk_error(table, "DeleteTable", e)),
        }
    }

    /// Whether the lease table exists (a `DescribeTable`).
    pub async fn table_exists(&self) -> Result<bool> {
        Ok(self.describe_table(&self.table).await?.is_some())
    }

    /// Creates `table` (hash key `key` S, the owner index if `lease_index`) unless it exists,
    /// and waits until it is active.
    async fn ensure(&self, table: &str, key: &'static str, lease_index: bool) -> Result<bool> {
        let created = match self.describe_table(table).await? {
            Some(t) => {
                check_key_schema(table, key, &t)?;
                false
            }
            None => self.create_table(table, key, lease_index).await?,
        };
        let deadline = tokio::time::Instant::now() + TABLE_WAIT_LIMIT;
        loop {
            match self.describe_table(table).await? {
                Some(t) if t.table_status() == Some(&TableStatus::Active) => {
                    check_key_schema(table, key, &t)?;
                    tracing::debug!(table, created, "table is active");
                    return Ok(created);
                }
                status => {
                    let status = status.and_then(|t| t.table_status().cloned());
                    if tokio::time::Instant::now() >= deadline {
                        return Err(LeaseError::backend(format!(
                            "table {table:?} did not become ACTIVE within {TABLE_WAIT_LIMIT:?} (status {status:?})"
                        )));
                    }
                    tracing::debug!(table, ?status, "waiting for the table");
                }
            }
            tokio::time::sleep(TABLE_POLL_INTERVAL).await;
        }
    }

    async fn describe_table(&self, table: &str) -> Result<Option<TableDescription>> {
        match self.client.describe_table().table_name(table).send().await {
            Ok(out) => Ok(out.table),
            Err(e) if e.code() == Some("ResourceNotFoundException") => Ok(None),
            Err(e) => Err(map_sdk_error(table, "DescribeTable", e)),
        }
    }

    async fn create_table(&self, table: &str, key_name: &'static str, lease_index: bool) -> Result<bool> {
        let build = |e: aws_sdk_dynamodb::error::BuildError| LeaseError::Backend(Box::new(e));
        let key = KeySchemaElement::builder()
            .attribute_name(key_name)
            .key_type(KeyType::Hash)
            .build()
            .map_err(build)?;
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(build)
        };
        let index_key = |name: &str, key_type: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(key_type)
                .build()
                .map_err(build)
        };
        let owner_index = GlobalSecondaryIndex::builder()
            .index_name(schema::LEASE_OWNER_INDEX)
            .key_schema(index_key(schema::LEASE_OWNER, KeyType::Hash)?)
            .key_schema(index_key(schema::LEASE_KEY, KeyType::Range)?)
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::KeysOnly)
                    .build(),
            )
            .build()
            .map_err(build)?;
        tracing::info!(table, "creating the table");
        let mut request = self
            .client
            .create_table()
            .table_name(table)
            .key_schema(key)
            .attribute_definitions(attr(key_name)?)
            .billing_mode(BillingMode::PayPerRequest);
        if lease_index {
            request = request
                .attribute_definitions(attr(schema::LEASE_OWNER)?)
                .global_secondary_indexes(owner_index);
        }
        match request.send().await {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("ResourceInUseException") => {
                tracing::debug!(table, "table created concurrently");
                Ok(false)
            }
            Err(e) => Err(map_sdk_error(table, "CreateTable", e)),
        }
    }

    /// A strongly consistent read of one raw item.
    async fn get_item(&self, key: &str) -> Result<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(schema::LEASE_KEY, schema::s(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| map_sdk_error(&self.table, "GetItem", e))?;
        Ok(out.item)
    }

    /// The error for a failed condition on `key`: [`LeaseError::NotFound`] if the row is gone,
    /// else [`LeaseError::Conflict`] with the current row (`old`, if the service returned it,
    /// else read again).
    async fn conflict(&self, op: &'static str, key: &str, old: Option<Item>) -> LeaseError {
        let row = match old {
            Some(item) => Some(item),
            None => match self.get_item(key).await {
                Ok(None) => {
                    tracing::debug!(table = %self.table, key, op, "condition failed: row is gone");
                    return LeaseError::NotFound(key.to_owned());
                }
                Ok(Some(item)) => Some(item),
                Err(e) => {
                    tracing::debug!(table = %self.table, key, op, error = %e,
                        "condition failed; re-reading the row failed");
                    None
                }
            },
        };
        let actual = row.and_then(|item| match schema::decode(&item) {
            Ok(lease) => Some(Box::new(lease)),
            Err(e) => {
                tracing::warn!(table = %self.table, key, op, error = %e,
                    "condition failed on a corrupt lease row");
                None
            }
        });
        tracing::debug!(table = %self.table, key, op,
            actual_owner = ?actual.as_ref().and_then(|l| l.lease_owner.as_deref()),
            actual_counter = ?actual.as_ref().map(|l| l.lease_counter),
            "conditional write failed");
        LeaseError::Conflict {
            key: key.to_owned(),
            actual,
        }
    }

    /// Runs one conditional `UpdateItem`. `Ok(Ok(row))`: applied, the row as it is now;
    /// `Ok(Err(old))`: the condition failed (`old` is the row if the service returned it).
    async fn update(
        &self,
        op: &'static str,
        key: &str,
        expr: Expr,
    ) -> Result<std::result::Result<Lease, Option<Item>>> {
        let update = expr.update_expression();
        let expected = expr.expected.clone();
        tracing::debug!(table = %self.table, key, op, update = %update, condition = %expr.condition,
            "UpdateItem");
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(schema::LEASE_KEY, schema::s(key))
            .update_expression(update)
            .condition_expression(expr.condition)
            .set_expression_attribute_names(Some(expr.names))
            .set_expression_attribute_values((!expr.values.is_empty()).then_some(expr.values))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => {
                let item = out.attributes.ok_or_else(|| {
                    LeaseError::backend(format!(
                        "UpdateItem on lease {key:?} in table {:?} returned no attributes",
                        self.table
                    ))
                })?;
                match (schema::decode(&item), expected) {
                    (Ok(lease), _) => Ok(Ok(lease)),
                    // The write was applied (its condition held: the row is the one this
                    // worker knows), but another attribute of the row is corrupt (a hand edit,
                    // another tool). Failing here would give up a lease that is ours and leave
                    // its shard stuck (no worker can take a row it cannot read): keep this
                    // worker's values for the corrupt attributes and go on; its next write of
                    // them (a checkpoint) repairs the row.
                    (Err(e), Some(expected)) => {
                        let (lease, patched) = schema::decode_patched(&item, &expected).map_err(|_| e)?;
                        self.corrupt_rows_seen.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(table = %self.table, key, op, ?patched,
                            "the lease row has corrupt attributes; the write succeeded, keeping this worker's values");
                        Ok(Ok(lease))
                    }
                    (Err(e), None) => Err(e),
                }
            }
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => {
                let old = e.as_service_error().and_then(|se| match se {
                    aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(
                        c,
                    ) => c.item.clone(),
                    _ => None,
                });
                Ok(Err(old))
            }
            Err(e) => Err(map_sdk_error(&self.table, "UpdateItem", e)),
        }
    }

    /// An `UpdateItem` whose condition failure is a conflict.
    /// A take, with `ownerRenewsByHeartbeat` set to the new owner when `by_heartbeat`.
    async fn take_row(
        &self,
        expected: &Lease,
        new_owner: &str,
        handoff: bool,
        by_heartbeat: bool,
    ) -> Result<Lease> {
        let mut e = Expr::default();
        e.require_owner_and_counter(expected);
        e.set(schema::LEASE_OWNER, ":new", schema::s(new_owner));
        e.increment_counter(expected);
        // The condition pins the current owner to the expected one.
        let previous = expected.lease_owner.as_deref();
        if previous != Some(new_owner) {
            let osc = e.name(schema::OWNER_SWITCHES);
            let zero = e.value(":zero", schema::n(0));
            let one = e.value(":one", schema::n(1));
            e.set
                .push(format!("{osc} = if_not_exists({osc}, {zero}) + {one}"));
        }
        match previous {
            Some(prev) if handoff && prev != new_owner => {
                e.set(schema::CHECKPOINT_OWNER, ":prev", schema::s(prev));
                e.set(
                    schema::HANDOFF_FROM_COUNTER,
                    ":hfc",
                    schema::n(expected.lease_counter),
                );
            }
            // Kept through a hand-off: it says how the previous owner renews.
            _ => {
                e.remove(schema::CHECKPOINT_OWNER);
                e.remove(schema::OWNER_WITHOUT_HEARTBEAT);
                e.remove(schema::HANDOFF_FROM_COUNTER);
            }
        }
        if by_heartbeat {
            e.set(schema::OWNER_RENEWS_BY_HEARTBEAT, ":hbr", schema::s(new_owner));
        } else {
            e.remove(schema::OWNER_RENEWS_BY_HEARTBEAT);
        }
        self.update_or_conflict("take", &expected.lease_key, e).await
    }

    async fn update_or_conflict(&self, op: &'static str, key: &str, expr: Expr) -> Result<Lease> {
        match self.update(op, key, expr).await? {
            Ok(lease) => Ok(lease),
            Err(old) => Err(self.conflict(op, key, old).await),
        }
    }
}

fn check_key_schema(table: &str, key: &str, description: &TableDescription) -> Result<()> {
    let keys = description.key_schema();
    let ok = keys.len() == 1 && keys[0].attribute_name() == key && keys[0].key_type() == &KeyType::Hash;
    if ok {
        Ok(())
    } else {
        Err(LeaseError::backend(format!(
            "table {table:?} is not a lease table: its key schema is {keys:?}, expected {key} (S) as the \
             only (HASH) key"
        )))
    }
}

/// An update expression under construction: `SET` and `REMOVE` clauses, a condition, and the
/// placeholders they use (DynamoDB rejects unused placeholders, so only used ones are added).
#[derive(Default)]
struct Expr {
    set: Vec<String>,
    remove: Vec<String>,
    condition: String,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
    /// The row the write is conditional on (its counter): what this worker knows of the row,
    /// for attributes that turn out corrupt in the row the write returns.
    expected: Option<Lease>,
}

/// The placeholder of each attribute name (`#k` for `leaseKey`, ...).
fn placeholder(attribute: &'static str) -> &'static str {
    match attribute {
        schema::LEASE_KEY => "#k",
        schema::LEASE_OWNER => "#o",
        schema::LEASE_COUNTER => "#c",
        schema::CHECKPOINT => "#cp",
        schema::CHECKPOINT_SUB_SEQUENCE => "#cps",
        schema::PENDING_CHECKPOINT => "#pcp",
        schema::PENDING_CHECKPOINT_SUB_SEQUENCE => "#pcps",
        schema::PENDING_CHECKPOINT_STATE => "#pcst",
        schema::OWNER_SWITCHES => "#osc",
        schema::PARENT_SHARD_IDS => "#par",
        schema::CHILD_SHARD_IDS => "#ch",
        schema::CHECKPOINT_OWNER => "#co",
        schema::STARTING_HASH_KEY => "#shk",
        schema::ENDING_HASH_KEY => "#ehk",
        schema::THROUGHPUT_KBPS => "#tp",
        schema::OWNER_WITHOUT_HEARTBEAT => "#nohb",
        schema::OWNER_RENEWS_BY_HEARTBEAT => "#hbr",
        schema::HANDOFF_FROM_COUNTER => "#hfc",
        _ => "#x",
    }
}

impl Expr {
    /// The placeholder of `attribute`, registered.
    fn name(&mut self, attribute: &'static str) -> &'static str {
        let p = placeholder(attribute);
        self.names.insert(p.to_owned(), attribute.to_owned());
        p
    }

    /// Registers `:placeholder` = `value`, returning the placeholder.
    fn value(&mut self, placeholder: &'static str, value: AttributeValue) -> &'static str {
        self.values.insert(placeholder.to_owned(), value);
        placeholder
    }

    fn set(&mut self, attribute: &'static str, placeholder: &'static str, value: AttributeValue) {
        let n = self.name(attribute);
        let v = self.value(placeholder, value);
        self.set.push(format!("{n} = {v}"));
    }

    fn remove(&mut self, attribute: &'static str) {
        let n = self.name(attribute);
        self.remove.push(n.to_owned());
    }

    /// Adds `clause` to the condition with `AND`.
    fn require(&mut self, clause: String) {
        if self.condition.is_empty() {
            self.condition = clause;
        } else {
            self.condition = format!("{} AND {clause}", self.condition);
        }
    }

    /// The row exists (an `UpdateItem` would otherwise create it).
    fn require_exists(&mut self) {
        let k = self.name(schema::LEASE_KEY);
        self.require(format!("attribute_exists({k})"));
    }

    /// `leaseCounter` as in `expected` (a row without it counts as 0, as in the Java KCL).
    fn require_counter(&mut self, expected: &Lease) {
        self.expected = Some(expected.clone());
        let c = self.name(schema::LEASE_COUNTER);
        let v = self.value(":c", schema::n(expected.lease_counter));
        if expected.lease_counter == 0 {
            self.require(format!("(attribute_not_exists({c}) OR {c} = {v})"));
        } else {
            self.require(format!("{c} = {v}"));
        }
    }

    /// `leaseOwner` as in `expected` (absent when unowned).
    fn require_owner(&mut self, expected: &Lease) {
        let o = self.name(schema::LEASE_OWNER);
        match &expected.lease_owner {
            Some(owner) => {
                let v = self.value(":o", schema::s(owner));
                self.require(format!("{o} = {v}"));
            }
            None => self.require(format!("attribute_not_exists({o})")),
        }
    }

    /// A hand-off stolen from the holding that wrote `expected` (`handoffFromCounter` is its
    /// counter), or one made without the attribute (by the Java KCL).
    fn require_handoff_from(&mut self, expected: &Lease) {
        let h = self.name(schema::HANDOFF_FROM_COUNTER);
        let v = self.value(":hfc", schema::n(expected.lease_counter));
        self.require(format!("(attribute_not_exists({h}) OR {h} = {v})"));
    }

    /// The row exists with owner and counter as in `expected`.
    fn require_owner_and_counter(&mut self, expected: &Lease) {
        self.require_exists();
        self.require_counter(expected);
        self.require_owner(expected);
    }

    /// `SET leaseCounter = expected + 1` (equal to `leaseCounter + 1` under the counter
    /// condition).
    fn increment_counter(&mut self, expected: &Lease) {
        self.set(
            schema::LEASE_COUNTER,
            ":next",
            schema::n(expected.lease_counter.saturating_add(1)),
        );
    }

    fn update_expression(&self) -> String {
        let mut parts = Vec::new();
        if !self.set.is_empty() {
            parts.push(format!("SET {}", self.set.join(", ")));
        }
        if !self.remove.is_empty() {
            parts.push(format!("REMOVE {}", self.remove.join(", ")));
        }
        parts.join(" ")
    }
}

/// The checkpoint write of `update_checkpoint`: checkpoint, sub-sequence number, no pending
/// checkpoint, no owner switches.
fn checkpoint_expr(checkpoint: &ExtendedSequenceNumber) -> Expr {
    let mut e = Expr::default();
    e.set(schema::CHECKPOINT, ":cp", schema::s(checkpoint.checkpoint_str()));
    e.set(
        schema::CHECKPOINT_SUB_SEQUENCE,
        ":cps",
        schema::n(checkpoint.sub_sequence()),
    );
    e.set(schema::OWNER_SWITCHES, ":zero", schema::n(0));
    e.remove(schema::PENDING_CHECKPOINT);
    e.remove(schema::PENDING_CHECKPOINT_SUB_SEQUENCE);
    e.remove(schema::PENDING_CHECKPOINT_STATE);
    e
}

/// A checkpoint write as owner or `checkpointOwner` ([`LeaseStore::update_checkpoint`]):
/// [`checkpoint_expr`], refused on a row already at `SHARD_END` unless `checkpoint` is
/// `SHARD_END` too. The end of a shard is final outside an admin reset.
fn update_checkpoint_expr(checkpoint: &ExtendedSequenceNumber) -> Expr {
    let mut e = checkpoint_expr(checkpoint);
    if !checkpoint.is_shard_end() {
        let cp = e.name(schema::CHECKPOINT);
        let end = e.value(":shard_end", schema::s(ExtendedSequenceNumber::SHARD_END));
        e.require(format!("(attribute_not_exists({cp}) OR {cp} <> {end})"));
    }
    e
}

/// A failed DynamoDB call, as the source of [`LeaseError::Backend`]. Its [`std::error::Error`]
/// source is the SDK error itself.
#[derive(Debug)]
pub struct DynamoDbError {
    operation: &'static str,
    table: String,
    code: Option<String>,
    message: String,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl DynamoDbError {
    /// The DynamoDB operation (`UpdateItem`, `Scan`, ...).
    pub fn operation(&self) -> &str {
        self.operation
    }

    /// The table.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The service's error code (`ResourceNotFoundException`, ...), if the service answered.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// Whether the table does not exist.
    pub fn is_table_missing(&self) -> bool {
        self.code() == Some("ResourceNotFoundException")
    }
}

impl fmt::Display for DynamoDbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_table_missing() {
            write!(
                f,
                "lease table {:?} does not exist (create it, e.g. with DynamoDbLeaseStore::ensure_table): ",
                self.table
            )?;
        } else {
            write!(
                f,
                "DynamoDB {} on table {:?} failed: ",
                self.operation, self.table
            )?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for DynamoDbError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// The error codes that mean "slow down".
const THROTTLING_CODES: [&str; 3] = [
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
];

/// The DynamoDB error codes that retrying cannot fix. `ResourceNotFoundException` is a missing
/// table here (a missing *item* is not an error in DynamoDB).
fn fatal_kind(code: &str) -> Option<FatalKind> {
    match code {
        "ResourceNotFoundException" => Some(FatalKind::TableNotFound),
        "AccessDeniedException" | "UnrecognizedClientException" | "MissingAuthenticationTokenException" => {
            Some(FatalKind::AccessDenied)
        }
        // An encrypted table whose customer managed key is disabled or not accessible.
        c if c.starts_with("KMS") && c != "KMSThrottlingException" => Some(FatalKind::AccessDenied),
        _ => None,
    }
}

/// Maps a failed SDK call of `operation` on `table` to a [`LeaseError`]: throttling codes become
/// [`LeaseError::Throttled`]; anything else (a missing table, network and service errors)
/// [`LeaseError::Backend`] with a [`DynamoDbError`] whose source is `err`. Conditional-check
/// failures are handled by the store before this is called.
pub fn map_sdk_error<E, R>(table: &str, operation: &'static str, err: SdkError<E, R>) -> LeaseError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: fmt::Debug + Send + Sync + 'static,
{
    let code = err.code().map(str::to_owned);
    // The messages of the error and its causes (no `Debug` dump of the SDK's internals).
    let message = crate::error::ErrorChain(&err).to_string();
    if let Some(c) = code.as_deref().filter(|c| THROTTLING_CODES.contains(c)) {
        tracing::debug!(table, operation, code = c, "DynamoDB throttled the call");
        return LeaseError::Throttled(format!(
            "DynamoDB {operation} on table {table:?}: {c}: {}",
            err.message().unwrap_or("throttled")
        ));
    }
    tracing::debug!(table, operation, code = ?code, error = %message, "DynamoDB call failed");
    let fatal = code.as_deref().and_then(fatal_kind);
    let error = Box::new(DynamoDbError {
        operation,
        table: table.to_owned(),
        code,
        message,
        source: Box::new(err),
    });
    match fatal {
        Some(kind) => LeaseError::Fatal { kind, source: error },
        None => LeaseError::Backend(error),
    }
}

impl DynamoDbLeaseStore {
    /// Reads every lease with a paginated `Scan`, skipping corrupt rows.
    async fn scan_leases(&self, consistent: bool) -> Result<Vec<Lease>> {
        let mut leases = Vec::new();
        let mut start: Option<Item> = None;
        let mut pages = 0u32;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(consistent)
                .set_limit(self.scan_page_size.map(|n| i32::try_from(n).unwrap_or(i32::MAX)))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| map_sdk_error(&self.table, "Scan", e))?;
            pages += 1;
            for item in out.items.unwrap_or_default() {
                if !schema::is_lease_row(&item) {
                    // Another kind of row of a Java KCL 3.5 table (worker metrics, leader lock).
                    tracing::trace!(table = %self.table, key = ?schema::key_of(&item), "skipping a row that is not a lease");
                    continue;
                }
                match schema::decode(&item) {
                    Ok(lease) => leases.push(lease),
                    Err(e) => {
                        self.corrupt_rows_seen.fetch_add(1, Ordering::Relaxed);
                        let key = schema::key_of(&item).unwrap_or("<no leaseKey>").to_owned();
                        let first = {
                            let mut reported = self
                                .reported_corrupt
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner);
                            reported.len() < MAX_REPORTED_CORRUPT_ROWS && reported.insert(key.clone())
                        };
                        if first {
                            tracing::warn!(table = %self.table, %key, error = %e,
                                "skipping a corrupt lease row (left untouched; its shard is not processed until the row is repaired, e.g. with kcl-admin)");
                        } else {
                            tracing::debug!(table = %self.table, %key, error = %e, "skipping a corrupt lease row");
                        }
                    }
                }
            }
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        tracing::debug!(table = %self.table, leases = leases.len(), pages, "listed leases");
        Ok(leases)
    }

    /// The outcome of a conditional write of `worker`'s heartbeat row: a failed condition is
    /// a [`LeaseError::Conflict`] keyed by the worker id.
    fn heartbeat_written<O, E, R>(
        &self,
        result: std::result::Result<O, SdkError<E, R>>,
        worker: &str,
        operation: &'static str,
    ) -> Result<()>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: fmt::Debug + Send + Sync + 'static,
    {
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Err(LeaseError::Conflict {
                key: worker.to_owned(),
                actual: None,
            }),
            Err(e) => Err(self.heartbeat_error(operation, e)),
        }
    }

    fn heartbeat_error<E, R>(&self, operation: &'static str, err: SdkError<E, R>) -> LeaseError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: fmt::Debug + Send + Sync + 'static,
    {
        if err.code() == Some("ResourceNotFoundException") {
            return LeaseError::Unsupported(format!(
                "the worker heartbeat table {:?} does not exist (DynamoDbLeaseStore::ensure_table creates it)",
                self.heartbeat_table
            ));
        }
        match map_sdk_error(&self.heartbeat_table, operation, err) {
            // The heartbeat table is optional: without permission for it, workers coordinate
            // through the lease table alone (as the module docs say), rather than stopping.
            LeaseError::Fatal { source, .. } => LeaseError::Unsupported(format!(
                "no access to the worker heartbeat table {:?} ({source})",
                self.heartbeat_table
            )),
            other => other,
        }
    }
}

/// A heartbeat condition as a request's condition expression, attribute names and values
/// (all `None` for no condition). Every condition but `Unchanged` holds on a row that does not
/// exist.
struct HeartbeatConditionParts {
    expression: Option<String>,
    names: Option<HashMap<String, String>>,
    values: Option<HashMap<String, AttributeValue>>,
}

impl HeartbeatConditionParts {
    fn of(condition: HeartbeatCondition) -> Self {
        type Parts<'a> = (&'a str, &'a [(&'a str, &'a str)], Vec<(&'a str, AttributeValue)>);
        let (expression, names, values): Parts<'_> = match condition {
            HeartbeatCondition::Incarnation(i) => (
                "attribute_not_exists(#w) OR #i = :i",
                &[("#w", schema::WORKER_ID), ("#i", schema::INCARNATION)],
                vec![(":i", schema::n(i))],
            ),
            HeartbeatCondition::Newer { incarnation, counter } => (
                "attribute_not_exists(#w) OR (#i = :i AND #c < :c)",
                &[
                    ("#w", schema::WORKER_ID),
                    ("#i", schema::INCARNATION),
                    ("#c", schema::HEARTBEAT_COUNTER),
                ],
                vec![(":i", schema::n(incarnation)), (":c", schema::n(counter))],
            ),
            HeartbeatCondition::Counter(c) => (
                "attribute_not_exists(#w) OR #c = :c",
                &[("#w", schema::WORKER_ID), ("#c", schema::HEARTBEAT_COUNTER)],
                vec![(":c", schema::n(c))],
            ),
            HeartbeatCondition::Unchanged {
                incarnation: Some(i),
                counter,
            } => (
                "#c = :c AND #i = :i",
                &[("#c", schema::HEARTBEAT_COUNTER), ("#i", schema::INCARNATION)],
                vec![(":c", schema::n(counter)), (":i", schema::n(i))],
            ),
            HeartbeatCondition::Unchanged {
                incarnation: None,
                counter,
            } => (
                "#c = :c AND attribute_not_exists(#i)",
                &[("#c", schema::HEARTBEAT_COUNTER), ("#i", schema::INCARNATION)],
                vec![(":c", schema::n(counter))],
            ),
            _ => {
                return Self {
                    expression: None,
                    names: None,
                    values: None,
                }
            }
        };
        Self {
            expression: Some(expression.to_owned()),
            names: Some(
                names
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            values: Some(values.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()),
        }
    }
}

#[async_trait]
impl LeaseStore for DynamoDbLeaseStore {
    async fn list(&self) -> Result<Vec<Lease>> {
        self.scan_leases(true).await
    }

    async fn list_eventually_consistent(&self) -> Result<Vec<Lease>> {
        self.scan_leases(false).await
    }

    async fn put_heartbeat(&self, heartbeat: &WorkerHeartbeat, condition: HeartbeatCondition) -> Result<()> {
        // An update, not a put: the row's `nudges` (written by other workers) stay.
        let c = HeartbeatConditionParts::of(condition);
        let mut names = c.names.unwrap_or_default();
        let mut values = c.values.unwrap_or_default();
        let (mut set, mut remove) = (Vec::new(), Vec::new());
        let item = schema::encode_heartbeat(heartbeat);
        for (i, name) in [
            schema::HEARTBEAT_COUNTER,
            schema::LEASE_RENEWAL,
            schema::LEASE_COUNT,
            schema::EPOCH,
            schema::INCARNATION,
            schema::LAPSED,
            schema::FLEET_VIEW,
            schema::WATCHED_WORKER,
            schema::WATCHED_COUNTER,
            schema::WATCHED_INCARNATION,
        ]
        .into_iter()
        .enumerate()
        {
            names.insert(format!("#h{i}"), name.to_owned());
            match item.get(name) {
                Some(value) => {
                    values.insert(format!(":h{i}"), value.clone());
                    set.push(format!("#h{i} = :h{i}"));
                }
                None => remove.push(format!("#h{i}")),
            }
        }
        let mut update = format!("SET {}", set.join(", "));
        if !remove.is_empty() {
            update.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        let request = self
            .client
            .update_item()
            .table_name(&self.heartbeat_table)
            .key(schema::WORKER_ID, schema::s(&heartbeat.worker_id))
            .update_expression(update)
            .set_condition_expression(c.expression)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values));
        self.heartbeat_written(request.send().await, &heartbeat.worker_id, "UpdateItem")
    }

    async fn get_heartbeat(&self, worker_id: &str, consistent: bool) -> Result<Option<WorkerHeartbeat>> {
        let out = self
            .client
            .get_item()
            .table_name(&self.heartbeat_table)
            .key(schema::WORKER_ID, schema::s(worker_id))
            .consistent_read(consistent)
            .send()
            .await
            .map_err(|e| self.heartbeat_error("GetItem", e))?;
        match out.item {
            None => Ok(None),
            Some(item) => match schema::decode_heartbeat(&item) {
                Ok(row) => Ok(Some(row)),
                Err(e) => {
                    tracing::warn!(table = %self.heartbeat_table, error = %e,
                        "skipping a corrupt heartbeat row (left untouched)");
                    Ok(None)
                }
            },
        }
    }

    async fn nudge_heartbeat(&self, worker_id: &str) -> Result<()> {
        let request = self
            .client
            .update_item()
            .table_name(&self.heartbeat_table)
            .key(schema::WORKER_ID, schema::s(worker_id))
            .update_expression("ADD #n :one")
            .condition_expression("attribute_exists(#w)")
            .expression_attribute_names("#n", schema::NUDGES)
            .expression_attribute_names("#w", schema::WORKER_ID)
            .expression_attribute_values(":one", schema::n(1));
        match self.heartbeat_written(request.send().await, worker_id, "UpdateItem") {
            // The row is gone: nobody to nudge.
            Err(LeaseError::Conflict { .. }) => Ok(()),
            other => other,
        }
    }

    async fn list_heartbeats(&self, consistent: bool) -> Result<Vec<WorkerHeartbeat>> {
        let mut rows = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.heartbeat_table)
                .consistent_read(consistent)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| self.heartbeat_error("Scan", e))?;
            for item in out.items.unwrap_or_default() {
                match schema::decode_heartbeat(&item) {
                    Ok(row) => rows.push(row),
                    Err(e) => tracing::warn!(table = %self.heartbeat_table, error = %e,
                        "skipping a corrupt heartbeat row (left untouched)"),
                }
            }
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(rows),
            }
        }
    }

    async fn delete_heartbeat(&self, worker_id: &str, condition: HeartbeatCondition) -> Result<()> {
        let c = HeartbeatConditionParts::of(condition);
        let request = self
            .client
            .delete_item()
            .table_name(&self.heartbeat_table)
            .key(schema::WORKER_ID, schema::s(worker_id))
            .set_condition_expression(c.expression)
            .set_expression_attribute_names(c.names)
            .set_expression_attribute_values(c.values);
        self.heartbeat_written(request.send().await, worker_id, "DeleteItem")
    }

    async fn get(&self, key: &str) -> Result<Option<Lease>> {
        match self.get_item(key).await? {
            None => Ok(None),
            Some(item) if !schema::is_lease_row(&item) => Ok(None),
            Some(item) => schema::decode(&item).map(Some),
        }
    }

    async fn create_if_absent(&self, lease: &Lease) -> Result<bool> {
        let key = &lease.lease_key;
        tracing::debug!(table = %self.table, key, "PutItem if absent");
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(schema::encode(lease)))
            .condition_expression("attribute_not_exists(#k)")
            .expression_attribute_names("#k", schema::LEASE_KEY)
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(false),
            Err(e) => Err(map_sdk_error(&self.table, "PutItem", e)),
        }
    }

    async fn renew(&self, expected: &Lease) -> Result<Lease> {
        let mut e = Expr::default();
        e.require_owner_and_counter(expected);
        e.increment_counter(expected);
        if let Some(kbps) = expected.throughput_kbps {
            e.set(schema::THROUGHPUT_KBPS, ":tput", schema::kbps(kbps));
        }
        match &expected.owner_without_heartbeat {
            Some(owner) => e.set(schema::OWNER_WITHOUT_HEARTBEAT, ":nohb", schema::s(owner)),
            None => e.remove(schema::OWNER_WITHOUT_HEARTBEAT),
        }
        e.remove(schema::OWNER_RENEWS_BY_HEARTBEAT);
        self.update_or_conflict("renew", &expected.lease_key, e).await
    }

    async fn take(&self, expected: &Lease, new_owner: &str, handoff: bool) -> Result<Lease> {
        self.take_row(expected, new_owner, handoff, false).await
    }

    async fn take_heartbeat_renewed(
        &self,
        expected: &Lease,
        new_owner: &str,
        handoff: bool,
    ) -> Result<Lease> {
        self.take_row(expected, new_owner, handoff, true).await
    }

    async fn evict(&self, expected: &Lease) -> Result<Lease> {
        let mut e = Expr::default();
        e.require_owner_and_counter(expected);
        e.increment_counter(expected);
        e.remove(schema::LEASE_OWNER);
        e.remove(schema::CHECKPOINT_OWNER);
        e.remove(schema::OWNER_WITHOUT_HEARTBEAT);
        e.remove(schema::OWNER_RENEWS_BY_HEARTBEAT);
        e.remove(schema::HANDOFF_FROM_COUNTER);
        self.update_or_conflict("evict", &expected.lease_key, e).await
    }

    async fn update_checkpoint(
        &self,
        expected: &Lease,
        worker: &str,
        checkpoint: &ExtendedSequenceNumber,
    ) -> Result<Lease> {
        let key = &expected.lease_key;
        // The hand-off as this worker learnt of it: only as checkpoint owner, and only while
        // its thief still owns the lease (see `LeaseStore::update_checkpoint`).
        let thief = crate::store::handoff_thief(expected, worker);
        if let Some(thief) = thief {
            let mut as_handoff = update_checkpoint_expr(checkpoint);
            let co = as_handoff.name(schema::CHECKPOINT_OWNER);
            let w = as_handoff.value(":w", schema::s(worker));
            as_handoff.require(format!("{co} = {w}"));
            let o = as_handoff.name(schema::LEASE_OWNER);
            let t = as_handoff.value(":thief", schema::s(thief));
            as_handoff.require(format!("{o} = {t}"));
            as_handoff.require_handoff_from(expected);
            return self
                .update_or_conflict("checkpoint (hand-off)", key, as_handoff)
                .await;
        }
        // As the owner, with no hand-off in progress: the counter moves.
        let mut as_owner = update_checkpoint_expr(checkpoint);
        as_owner.require_exists();
        let o = as_owner.name(schema::LEASE_OWNER);
        let w = as_owner.value(":w", schema::s(worker));
        as_owner.require(format!("{o} = {w}"));
        as_owner.require_counter(expected);
        let co = as_owner.name(schema::CHECKPOINT_OWNER);
        as_owner.require(format!("attribute_not_exists({co})"));
        as_owner.increment_counter(expected);
        if let Some(kbps) = expected.throughput_kbps {
            as_owner.set(schema::THROUGHPUT_KBPS, ":tput", schema::kbps(kbps));
        }
        if let Ok(lease) = self.update("checkpoint", key, as_owner).await? {
            return Ok(lease);
        }
        // As the previous owner of a hand-off in progress: the counter is left alone.
        let mut as_handoff = update_checkpoint_expr(checkpoint);
        let co = as_handoff.name(schema::CHECKPOINT_OWNER);
        let w = as_handoff.value(":w", schema::s(worker));
        as_handoff.require(format!("{co} = {w}"));
        as_handoff.require_handoff_from(expected);
        self.update_or_conflict("checkpoint (hand-off)", key, as_handoff)
            .await
    }

    async fn complete_handoff(&self, handoff: &Lease) -> Result<Lease> {
        let Some(previous) = handoff.checkpoint_owner.as_deref() else {
            // No hand-off to end: as a failed condition would say.
            let key = handoff.lease_key.clone();
            return Err(match self.get(&key).await? {
                Some(row) => LeaseError::Conflict {
                    key,
                    actual: Some(Box::new(row)),
                },
                None => LeaseError::NotFound(key),
            });
        };
        let mut e = Expr::default();
        let co = e.name(schema::CHECKPOINT_OWNER);
        let w = e.value(":w", schema::s(previous));
        e.require(format!("{co} = {w}"));
        e.require_owner(handoff);
        let h = e.name(schema::HANDOFF_FROM_COUNTER);
        match handoff.handoff_from_counter {
            Some(counter) => {
                let v = e.value(":hfc", schema::n(counter));
                e.require(format!("{h} = {v}"));
            }
            None => e.require(format!("attribute_not_exists({h})")),
        }
        e.remove(schema::CHECKPOINT_OWNER);
        e.remove(schema::HANDOFF_FROM_COUNTER);
        self.update_or_conflict("complete_handoff", &handoff.lease_key, e)
            .await
    }

    async fn mark_children(&self, expected: &Lease, children: &BTreeSet<String>) -> Result<Lease> {
        let mut e = Expr::default();
        e.require_owner_and_counter(expected);
        e.increment_counter(expected);
        match schema::ss(children) {
            Some(set) => e.set(schema::CHILD_SHARD_IDS, ":ch", set),
            None => e.remove(schema::CHILD_SHARD_IDS),
        }
        self.update_or_conflict("mark_children", &expected.lease_key, e)
            .await
    }

    async fn reset_checkpoint(&self, expected: &Lease, checkpoint: &ExtendedSequenceNumber) -> Result<Lease> {
        let mut e = checkpoint_expr(checkpoint);
        e.require_owner_and_counter(expected);
        e.increment_counter(expected);
        e.remove(schema::LEASE_OWNER);
        e.remove(schema::CHECKPOINT_OWNER);
        e.remove(schema::OWNER_WITHOUT_HEARTBEAT);
        e.remove(schema::OWNER_RENEWS_BY_HEARTBEAT);
        e.remove(schema::HANDOFF_FROM_COUNTER);
        self.update_or_conflict("reset_checkpoint", &expected.lease_key, e)
            .await
    }

    async fn delete(&self, expected: &Lease) -> Result<()> {
        let key = &expected.lease_key;
        let mut e = Expr::default();
        e.require_exists();
        e.require_counter(expected);
        tracing::debug!(table = %self.table, key, condition = %e.condition, "DeleteItem");
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(schema::LEASE_KEY, schema::s(key))
            .condition_expression(e.condition)
            .set_expression_attribute_names(Some(e.names))
            .set_expression_attribute_values(Some(e.values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) if err.code() == Some("ConditionalCheckFailedException") => {
                let old = err.as_service_error().and_then(|se| match se {
                    aws_sdk_dynamodb::operation::delete_item::DeleteItemError::ConditionalCheckFailedException(
                        c,
                    ) => c.item.clone(),
                    _ => None,
                });
                Err(self.conflict("delete", key, old).await)
            }
            Err(err) => Err(map_sdk_error(&self.table, "DeleteItem", err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::config::http::HttpResponse;
    use aws_sdk_dynamodb::error::ErrorMetadata;
    use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
    use aws_sdk_dynamodb::types::error::{
        ProvisionedThroughputExceededException, RequestLimitExceeded, ResourceNotFoundException,
        ThrottlingException,
    };

    fn service_error(err: UpdateItemError) -> SdkError<UpdateItemError, HttpResponse> {
        let status = 400u16.try_into().expect("valid status");
        SdkError::service_error(err, HttpResponse::new(status, "".into()))
    }

    /// Error metadata as the SDK's deserializer sets it from the response.
    fn meta(code: &str) -> ErrorMetadata {
        ErrorMetadata::builder().code(code).message("slow down").build()
    }

    #[test]
    fn throttling_codes_map_to_throttled() {
        for err in [
            UpdateItemError::ThrottlingException(
                ThrottlingException::builder()
                    .message("slow down")
                    .meta(meta("ThrottlingException"))
                    .build(),
            ),
            UpdateItemError::ProvisionedThroughputExceededException(
                ProvisionedThroughputExceededException::builder()
                    .message("slow down")
                    .meta(meta("ProvisionedThroughputExceededException"))
                    .build(),
            ),
            UpdateItemError::RequestLimitExceeded(
                RequestLimitExceeded::builder()
                    .message("slow down")
                    .meta(meta("RequestLimitExceeded"))
                    .build(),
            ),
        ] {
            let mapped = map_sdk_error("t", "UpdateItem", service_error(err));
            match &mapped {
                LeaseError::Throttled(msg) => {
                    assert!(msg.contains("slow down") && msg.contains("UpdateItem"), "{msg}")
                }
                other => panic!("expected throttled, got {other:?}"),
            }
            assert!(mapped.is_retryable());
        }
    }

    #[test]
    fn a_missing_table_is_a_fatal_error_naming_the_table() {
        let err = UpdateItemError::ResourceNotFoundException(
            ResourceNotFoundException::builder()
                .message("Requested resource not found")
                .meta(meta("ResourceNotFoundException"))
                .build(),
        );
        let mapped = map_sdk_error("leases-of-app", "UpdateItem", service_error(err));
        let LeaseError::Fatal {
            kind: FatalKind::TableNotFound,
            source: inner,
        } = &mapped
        else {
            panic!("expected a fatal table-not-found, got {mapped:?}");
        };
        assert!(mapped.is_fatal() && !mapped.is_retryable());
        let text = mapped.to_string();
        assert!(
            text.contains("leases-of-app") && text.contains("does not exist"),
            "{text}"
        );
        let dynamo = inner.downcast_ref::<DynamoDbError>().expect("a DynamoDbError");
        assert!(dynamo.is_table_missing());
        assert_eq!(dynamo.table(), "leases-of-app");
    }

    #[test]
    fn access_denied_and_kms_failures_are_fatal_kms_throttling_is_not() {
        for (code, fatal) in [
            ("AccessDeniedException", true),
            ("UnrecognizedClientException", true),
            ("KMSDisabledException", true),
            ("KMSAccessDeniedException", true),
            ("KMSThrottlingException", false),
            ("InternalServerError", false),
        ] {
            let err = UpdateItemError::generic(meta(code));
            let mapped = map_sdk_error("t", "UpdateItem", service_error(err));
            assert_eq!(mapped.is_fatal(), fatal, "{code}: {mapped:?}");
            if fatal {
                assert!(matches!(
                    mapped,
                    LeaseError::Fatal {
                        kind: FatalKind::AccessDenied,
                        ..
                    }
                ));
                assert!(mapped.to_string().contains(code), "{mapped}");
            }
        }
    }

    #[test]
    fn other_errors_keep_the_sdk_error_as_source() {
        let err: SdkError<UpdateItemError, HttpResponse> = SdkError::timeout_error("took too long");
        let mapped = map_sdk_error("t", "UpdateItem", err);
        let LeaseError::Backend(inner) = &mapped else {
            panic!("expected backend, got {mapped:?}");
        };
        let source = std::error::Error::source(&**inner).expect("source");
        assert!(source
            .downcast_ref::<SdkError<UpdateItemError, HttpResponse>>()
            .is_some());
    }

    #[test]
    fn a_refused_connection_is_one_line_of_messages_without_debug_dumps() {
        let refused = aws_sdk_dynamodb::error::ConnectorError::io(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "tcp connect error: Connection refused (os error 111)",
        )));
        let err: SdkError<UpdateItemError, HttpResponse> = SdkError::dispatch_failure(refused);
        let mapped = map_sdk_error("leases", "Scan", err);
        assert!(mapped.is_retryable());
        for text in [mapped.to_string(), crate::error::ErrorChain(&mapped).to_string()] {
            assert_eq!(
                text,
                "lease store error: DynamoDB Scan on table \"leases\" failed: dispatch failure: io error: \
                 tcp connect error: Connection refused (os error 111)"
            );
        }
    }

    #[test]
    fn expressions_use_placeholders_and_only_used_ones() {
        let mut expected = Lease::new("k", ExtendedSequenceNumber::TrimHorizon);
        expected.lease_owner = Some("w".into());
        expected.lease_counter = 4;
        let mut e = Expr::default();
        e.require_owner_and_counter(&expected);
        e.increment_counter(&expected);
        e.remove(schema::CHECKPOINT_OWNER);
        assert_eq!(e.condition, "attribute_exists(#k) AND #c = :c AND #o = :o");
        assert_eq!(e.update_expression(), "SET #c = :next REMOVE #co");
        let mut names: Vec<_> = e.names.keys().cloned().collect();
        names.sort();
        assert_eq!(names, ["#c", "#co", "#k", "#o"]);
        assert_eq!(e.values.get(":next"), Some(&schema::n(5)));

        expected.lease_owner = None;
        expected.lease_counter = 0;
        let mut e = Expr::default();
        e.require_owner_and_counter(&expected);
        assert_eq!(
            e.condition,
            "attribute_exists(#k) AND (attribute_not_exists(#c) OR #c = :c) AND attribute_not_exists(#o)"
        );
        assert!(!e.values.contains_key(":o"));
    }
}
