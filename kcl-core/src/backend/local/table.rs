//! Local DynamoDB tables with a change stream: puts, updates and deletes of items become
//! DynamoDB Streams change records on a stream of the same backend.
//!
//! Why: so that a consumer of a table's changes (a replica, a search index, an audit log) can be
//! run and tested with the real scheduler, without AWS and without an emulator. The stream is an
//! ordinary stream of the [`LocalBackend`] named by the table's stream ARN
//! (`arn:aws:dynamodb:local:000000000000:table/NAME/stream/LABEL`) with DynamoDB-style shard
//! ids (`shardId-00000001700000000000-abcdef01`), so iterators, read limits, retention and
//! lineage are the local backend's own; [`LocalBackend::rotate_shards`] closes every open shard
//! and opens one child for each, as DynamoDB Streams does about every four hours.
//!
//! Each change is one record whose data is the change in the DynamoDB Streams wire format
//! ([`crate::dynamodb_streams::ChangeRecord`]), with the images the table's
//! [`StreamViewType`] asks for. A record is routed by the MD5 of the item's partition key
//! attribute (in DynamoDB JSON), so every change to one item goes to the same shard (or, after a
//! rotation, to its child) in order. As on DynamoDB, a write that changes nothing (a put of the
//! same item, a delete of a missing one) writes no record. The records' partition key is the
//! item's `Keys` in DynamoDB JSON.
//!
//! [`LocalBackend::disable_stream`] disables a table's stream as `UpdateTable` with
//! `StreamEnabled: false` does: its open shards close (their records stay readable), later
//! writes go to no stream, and the scheduler, once every shard is read to its end, stops with
//! [`BackendError::StreamDisabled`] ([`crate::StreamBackend::check_stream_ended`]);
//! [`LocalBackend::enable_stream`] gives the table a new stream, with a new ARN.
//!
//! Lock order: the tables, then the streams; the item changes only once its record is stored.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use md5::{Digest, Md5};
use tokio::time::Instant;

use super::stream::ShardIds;
use super::{invalid, partition_key_hash, trunc, LocalBackend, LOCAL_ACCOUNT};
use crate::backend::{BackendError, StreamDisabled, StreamEnd};
use crate::dynamodb_streams::{
    is_table_name, item_to_dynamodb_json, AttributeValue, ChangeRecord, EventName, Item, StreamViewType,
    UserIdentity, EVENT_SOURCE, EVENT_VERSION,
};
use crate::record::SequenceNumber;

/// The region the local tables report (in stream ARNs and `awsRegion`).
pub const LOCAL_REGION: &str = "local";

/// The largest item a local table accepts, in bytes of its DynamoDB JSON (DynamoDB's limit is
/// 400 KB of attribute names and values).
pub const MAX_ITEM_BYTES: usize = 400 * 1024;

/// The primary key of a table: a partition (hash) key attribute and an optional sort (range)
/// key attribute. Key attributes must be strings, numbers or binary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySchema {
    /// The partition key attribute's name.
    pub hash_key: String,
    /// The sort key attribute's name, if the table has one.
    pub range_key: Option<String>,
}

impl KeySchema {
    /// A partition key only.
    pub fn hash(name: impl Into<String>) -> Self {
        Self {
            hash_key: name.into(),
            range_key: None,
        }
    }

    /// A partition key and a sort key.
    pub fn hash_and_range(hash: impl Into<String>, range: impl Into<String>) -> Self {
        Self {
            hash_key: hash.into(),
            range_key: Some(range.into()),
        }
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.hash_key.as_str()).chain(self.range_key.as_deref())
    }
}

/// One local table: its items and the stream its changes go to.
pub(super) struct TableState {
    key_schema: KeySchema,
    view: StreamViewType,
    /// The latest stream (`LatestStreamArn`).
    stream_arn: String,
    /// Whether the latest stream is enabled (changes are written to it).
    stream_enabled: bool,
    /// The streams disabled before the latest one.
    former_streams: Vec<String>,
    /// Items by their key in DynamoDB JSON (compact, attributes in name order).
    items: BTreeMap<String, Item>,
}

impl LocalBackend {
    /// Creates a table with a change stream of `shard_count` shards capturing `view`; returns the
    /// stream's ARN, the stream name to consume (with any `Scheduler`) and to give
    /// [`LocalBackend::rotate_shards`]. Fails if the table exists or its name is not a DynamoDB
    /// table name (3 to 255 of `a-zA-Z0-9_.-`).
    ///
    /// ```
    /// use kcl_core::backend::local::KeySchema;
    /// use kcl_core::dynamodb_streams::{AttributeValue, ChangeRecord, EventName, StreamViewType};
    /// use kcl_core::{IteratorPosition, LocalBackend, StreamBackend};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let local = LocalBackend::new();
    /// let view = StreamViewType::NewAndOldImages;
    /// let stream = local.create_table("orders", KeySchema::hash("pk"), view, 1)?;
    /// let item = [
    ///     ("pk".to_owned(), AttributeValue::s("order-1")),
    ///     ("qty".to_owned(), AttributeValue::n(2)),
    /// ];
    /// local.put_item("orders", item.into())?;
    /// // The stream is read as any other (a Scheduler consumes it by this name).
    /// let shard = &local.list_shards(&stream).await?[0];
    /// let it = local
    ///     .get_shard_iterator(&stream, &shard.shard_id, &IteratorPosition::TrimHorizon)
    ///     .await?;
    /// let out = local.get_records(&stream, &it, 100).await?;
    /// let change = ChangeRecord::from_record(&out.records[0])?;
    /// assert_eq!(change.event_name, EventName::Insert);
    /// assert_eq!(change.keys_json(), serde_json::json!({"pk": "order-1"}));
    /// assert_eq!(change.new_image_json(), Some(serde_json::json!({"pk": "order-1", "qty": 2})));
    /// # Ok(())
    /// # }
    /// ```
    pub fn create_table(
        &self,
        table: &str,
        key_schema: KeySchema,
        view: StreamViewType,
        shard_count: usize,
    ) -> Result<String, BackendError> {
        if !is_table_name(table) {
            return Err(invalid(format!("invalid table name {:?}", trunc(table))));
        }
        if key_schema.hash_key.is_empty() || key_schema.range_key.as_deref() == Some("") {
            return Err(invalid("key attribute names must not be empty"));
        }
        let mut tables = self.lock_tables();
        if tables.contains_key(table) {
            return Err(invalid(format!("table {table} already exists")));
        }
        let stream_arn = self.new_table_stream(table, shard_count)?;
        tables.insert(
            table.to_owned(),
            TableState {
                key_schema,
                view,
                stream_arn: stream_arn.clone(),
                stream_enabled: true,
                former_streams: Vec::new(),
                items: BTreeMap::new(),
            },
        );
        Ok(stream_arn)
    }

    /// Creates a stream for `table`, labelled with the time (a millisecond later than any
    /// stream of the same name already there); returns its ARN.
    fn new_table_stream(&self, table: &str, shard_count: usize) -> Result<String, BackendError> {
        let mut at = SystemTime::now();
        let existing = self.stream_names();
        let stream_arn = loop {
            let arn = format!(
                "arn:aws:dynamodb:{LOCAL_REGION}:{LOCAL_ACCOUNT}:table/{table}/stream/{}",
                stream_label(at)
            );
            if !existing.contains(&arn) {
                break arn;
            }
            at += std::time::Duration::from_millis(1);
        };
        self.create_stream_with(&stream_arn, shard_count, ShardIds::DynamoDb { last_millis: 0 })?;
        Ok(stream_arn)
    }

    /// The ARN of the table's stream (`LatestStreamArn`; it stays the disabled stream's after
    /// [`LocalBackend::disable_stream`], until a new one is enabled).
    pub fn table_stream_arn(&self, table: &str) -> Result<String, BackendError> {
        self.with_table(table, |t| Ok(t.stream_arn.clone()))
    }

    /// Whether the table's latest stream is enabled (`StreamSpecification.StreamEnabled`).
    pub fn table_stream_enabled(&self, table: &str) -> Result<bool, BackendError> {
        self.with_table(table, |t| Ok(t.stream_enabled))
    }

    /// Disables the table's stream, as `UpdateTable` with `StreamEnabled: false` does: every
    /// open shard closes (what it holds stays readable, to its end), and later writes to the
    /// table go to no stream. Returns the disabled stream's ARN. Fails if the stream is
    /// disabled already.
    pub fn disable_stream(&self, table: &str) -> Result<String, BackendError> {
        let mut tables = self.lock_tables();
        let t = tables
            .get_mut(table)
            .ok_or_else(|| invalid(format!("table {} not found", trunc(table))))?;
        if !t.stream_enabled {
            return Err(invalid(format!(
                "the stream of table {table} is disabled already"
            )));
        }
        self.with_stream(&t.stream_arn, |s, now| {
            let open: Vec<String> = s
                .shards
                .values()
                .filter(|sh| sh.end.is_none())
                .map(|sh| sh.shard.shard_id.clone())
                .collect();
            let ids: Vec<&str> = open.iter().map(String::as_str).collect();
            s.close(&ids, now);
            Ok(())
        })?;
        t.stream_enabled = false;
        self.changed();
        Ok(t.stream_arn.clone())
    }

    /// Enables a new stream on a table whose stream is disabled (`UpdateTable` with
    /// `StreamEnabled: true`): a new stream with a new ARN (the table's `LatestStreamArn`) and
    /// `shard_count` new shards, capturing `view`; the old one stays readable. Returns the new
    /// ARN.
    pub fn enable_stream(
        &self,
        table: &str,
        view: StreamViewType,
        shard_count: usize,
    ) -> Result<String, BackendError> {
        let mut tables = self.lock_tables();
        let t = tables
            .get_mut(table)
            .ok_or_else(|| invalid(format!("table {} not found", trunc(table))))?;
        if t.stream_enabled {
            return Err(invalid(format!("table {table} has an enabled stream already")));
        }
        let arn = self.new_table_stream(table, shard_count)?;
        let former = std::mem::replace(&mut t.stream_arn, arn.clone());
        t.former_streams.push(former);
        t.stream_enabled = true;
        t.view = view;
        Ok(arn)
    }

    /// [`crate::StreamBackend::check_stream_ended`] for the local backend: a disabled table
    /// stream has ended ([`BackendError::StreamDisabled`], naming the table's newer stream if
    /// one is enabled); any other stream has not.
    pub(super) fn table_stream_ended(&self, stream: &str) -> Result<(), BackendError> {
        let tables = self.lock_tables();
        for t in tables.values() {
            let latest = t.stream_arn == stream;
            if !latest && !t.former_streams.iter().any(|f| f == stream) {
                continue;
            }
            if latest && t.stream_enabled {
                return Ok(());
            }
            return Err(BackendError::StreamDisabled(StreamDisabled {
                stream: stream.to_owned(),
                end: StreamEnd::Disabled,
                latest_stream_arn: (!latest && t.stream_enabled).then(|| t.stream_arn.clone()),
            }));
        }
        Ok(())
    }

    /// Writes an item (`PutItem`), replacing any item with the same key; returns the old item.
    /// An `INSERT` or `MODIFY` record, unless the item was there unchanged.
    pub fn put_item(&self, table: &str, item: Item) -> Result<Option<Item>, BackendError> {
        self.write(table, &item, None, |_| Some(item.clone()))
    }

    /// Updates an item (`UpdateItem` with `SET` and `REMOVE`): sets the attributes of `set` and
    /// removes those named in `remove`, creating the item if missing (as DynamoDB does); returns
    /// the new item. Key attributes cannot be set or removed.
    pub fn update_item(
        &self,
        table: &str,
        key: Item,
        set: Item,
        remove: &[&str],
    ) -> Result<Item, BackendError> {
        let changed = |old: Option<&Item>| {
            let mut new = old.cloned().unwrap_or_else(|| key.clone());
            new.extend(set.clone());
            for name in remove {
                new.remove(*name);
            }
            Some(new)
        };
        let schema = self.with_table(table, |t| Ok(t.key_schema.clone()))?;
        if schema.names().any(|k| set.contains_key(k) || remove.contains(&k)) {
            return Err(invalid("an update cannot set or remove a key attribute"));
        }
        self.write(table, &key, None, changed)?;
        self.get_item(table, &key)?
            .ok_or_else(|| BackendError::other("the updated item is gone"))
    }

    /// Deletes an item (`DeleteItem`); returns it. A `REMOVE` record, if there was an item.
    pub fn delete_item(&self, table: &str, key: Item) -> Result<Option<Item>, BackendError> {
        self.write(table, &key, None, |_| None)
    }

    /// Deletes an item as DynamoDB's Time to Live does: a `REMOVE` record with the user identity
    /// `dynamodb.amazonaws.com` / `Service`. Returns the item.
    pub fn expire_item(&self, table: &str, key: Item) -> Result<Option<Item>, BackendError> {
        self.write(table, &key, Some(UserIdentity::ttl()), |_| None)
    }

    /// The item with this key, if any.
    pub fn get_item(&self, table: &str, key: &Item) -> Result<Option<Item>, BackendError> {
        self.with_table(table, |t| {
            let (key_json, _) = t.key_of(key)?;
            Ok(t.items.get(&key_json).cloned())
        })
    }

    /// Every item of the table, in key order.
    pub fn scan(&self, table: &str) -> Result<Vec<Item>, BackendError> {
        self.with_table(table, |t| Ok(t.items.values().cloned().collect()))
    }

    fn lock_tables(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, TableState>> {
        // Poisoned only by a panic elsewhere; every write leaves the tables consistent first.
        self.inner.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_table<T>(
        &self,
        table: &str,
        f: impl FnOnce(&TableState) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let tables = self.lock_tables();
        let t = tables
            .get(table)
            .ok_or_else(|| invalid(format!("table {} not found", trunc(table))))?;
        f(t)
    }

    /// Changes the item whose key `of` holds to `change(old)` (`None`: deleted), storing the
    /// change record first; returns the old item.
    fn write(
        &self,
        table: &str,
        of: &Item,
        identity: Option<UserIdentity>,
        change: impl FnOnce(Option<&Item>) -> Option<Item>,
    ) -> Result<Option<Item>, BackendError> {
        let mut tables = self.lock_tables();
        let t = tables
            .get_mut(table)
            .ok_or_else(|| invalid(format!("table {} not found", trunc(table))))?;
        let (key_json, keys) = t.key_of(of)?;
        let old = t.items.get(&key_json).cloned();
        let new = change(old.as_ref());
        if let Some(new) = &new {
            if t.key_of(new)?.0 != key_json {
                return Err(invalid("the item's key attributes cannot change"));
            }
            let size = item_to_dynamodb_json(new).to_string().len();
            if size > MAX_ITEM_BYTES {
                return Err(invalid(format!("item of {size} bytes exceeds {MAX_ITEM_BYTES}")));
            }
        }
        let event_name = match (&old, &new) {
            (None, None) => return Ok(None),
            (Some(o), Some(n)) if o == n => return Ok(old),
            (None, Some(_)) => EventName::Insert,
            (Some(_), Some(_)) => EventName::Modify,
            (Some(_), None) => EventName::Remove,
        };
        let hash_attr = keys
            .get(&t.key_schema.hash_key)
            .map(|v| v.to_dynamodb_json().to_string())
            .unwrap_or_default();
        let view = t.view;
        let region = LOCAL_REGION.to_owned();
        let now = Instant::now();
        let created = SystemTime::now();
        let build = |sequence: &SequenceNumber| {
            let new_image = new.clone().filter(|_| view.has_new_image());
            let old_image = old.clone().filter(|_| view.has_old_image());
            let size_bytes = [Some(&keys), new_image.as_ref(), old_image.as_ref()]
                .into_iter()
                .flatten()
                .map(|i| item_to_dynamodb_json(i).to_string().len() as u64)
                .sum();
            let digest = Md5::digest(format!("{}/{}", t.stream_arn, sequence.as_str()).as_bytes());
            let record = ChangeRecord {
                event_id: digest.iter().map(|b| format!("{b:02x}")).collect(),
                event_name,
                event_version: EVENT_VERSION.to_owned(),
                event_source: EVENT_SOURCE.to_owned(),
                aws_region: region,
                keys: keys.clone(),
                new_image,
                old_image,
                sequence_number: sequence.clone(),
                size_bytes,
                approximate_creation_time: created,
                stream_view_type: Some(view),
                user_identity: identity,
            };
            Bytes::from(record.to_bytes())
        };
        if t.stream_enabled {
            let mut streams = self.lock();
            let stream = streams
                .get_mut(&t.stream_arn)
                .ok_or_else(|| BackendError::StreamNotFound(t.stream_arn.clone()))?;
            stream.put_with(
                &key_json,
                None,
                partition_key_hash(&hash_attr),
                now,
                created,
                build,
            )?;
        }
        match new {
            Some(new) => t.items.insert(key_json, new),
            None => t.items.remove(&key_json),
        };
        self.changed();
        Ok(old)
    }
}

impl TableState {
    /// The key of `item` (which may hold other attributes): its DynamoDB JSON and the key
    /// attributes. Fails if a key attribute is missing or not a string, number or binary.
    fn key_of(&self, item: &Item) -> Result<(String, Item), BackendError> {
        let mut keys = Item::new();
        for name in self.key_schema.names() {
            let value = item
                .get(name)
                .ok_or_else(|| invalid(format!("the item has no key attribute {name:?}")))?;
            if !matches!(
                value,
                AttributeValue::S(_) | AttributeValue::N(_) | AttributeValue::B(_)
            ) {
                return Err(invalid(format!(
                    "key attribute {name:?} must be a string, number or binary"
                )));
            }
            keys.insert(name.to_owned(), value.clone());
        }
        Ok((item_to_dynamodb_json(&keys).to_string(), keys))
    }
}

/// A stream label as DynamoDB makes them: the creation time in ISO 8601, UTC, milliseconds
/// (`2026-12-06T13:44:14.123`).
fn stream_label(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::backend::{IteratorPosition, StreamBackend};
    use crate::record::Record;

    fn s(v: &str) -> AttributeValue {
        AttributeValue::s(v)
    }

    fn item(pairs: &[(&str, AttributeValue)]) -> Item {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
    }

    async fn read_shard(b: &LocalBackend, stream: &str, shard: &str) -> Vec<Record> {
        let mut it = b
            .get_shard_iterator(stream, shard, &IteratorPosition::TrimHorizon)
            .await
            .unwrap();
        let mut out = Vec::new();
        loop {
            let got = b.get_records(stream, &it, 100).await.unwrap();
            let done = got.records.is_empty();
            out.extend(got.records);
            match got.next_iterator {
                Some(next) if !done => it = next,
                _ => return out,
            }
        }
    }

    async fn changes(b: &LocalBackend, stream: &str) -> Vec<ChangeRecord> {
        let mut all = Vec::new();
        for shard in b.list_shards(stream).await.unwrap() {
            for r in read_shard(b, stream, &shard.shard_id).await {
                let c = ChangeRecord::from_record(&r).unwrap();
                assert_eq!(c.sequence_number, r.sequence_number);
                all.push(c);
            }
        }
        all.sort_by(|a, b| a.sequence_number.cmp(&b.sequence_number));
        all
    }

    #[tokio::test]
    async fn writes_become_change_records_with_the_images_of_the_view() {
        let b = LocalBackend::new();
        let arn = b
            .create_table(
                "orders",
                KeySchema::hash_and_range("pk", "sk"),
                StreamViewType::NewAndOldImages,
                2,
            )
            .unwrap();
        assert!(arn.starts_with("arn:aws:dynamodb:local:000000000000:table/orders/stream/20"));
        assert_eq!(b.table_stream_arn("orders").unwrap(), arn);
        let key = item(&[("pk", s("a")), ("sk", AttributeValue::n(1))]);
        let v1 = item(&[
            ("pk", s("a")),
            ("sk", AttributeValue::n(1)),
            ("qty", AttributeValue::n(1)),
        ]);
        assert_eq!(b.put_item("orders", v1.clone()).unwrap(), None);
        // The same item again: no record.
        assert_eq!(b.put_item("orders", v1.clone()).unwrap(), Some(v1.clone()));
        let v2 = b
            .update_item("orders", key.clone(), item(&[("qty", AttributeValue::n(2))]), &[])
            .unwrap();
        assert_eq!(v2["qty"], AttributeValue::n(2));
        assert_eq!(b.delete_item("orders", key.clone()).unwrap(), Some(v2.clone()));
        assert_eq!(b.delete_item("orders", key.clone()).unwrap(), None);
        assert!(b.scan("orders").unwrap().is_empty());

        let got = changes(&b, &arn).await;
        let names: Vec<_> = got.iter().map(|c| c.event_name).collect();
        assert_eq!(names, [EventName::Insert, EventName::Modify, EventName::Remove]);
        assert_eq!(got[0].new_image.as_ref(), Some(&v1));
        assert_eq!(got[0].old_image, None);
        assert_eq!(got[1].old_image.as_ref(), Some(&v1));
        assert_eq!(got[1].new_image.as_ref(), Some(&v2));
        assert_eq!(got[2].old_image.as_ref(), Some(&v2));
        assert_eq!(got[2].new_image, None);
        for c in &got {
            assert_eq!(c.keys, key);
            assert_eq!(c.stream_view_type, Some(StreamViewType::NewAndOldImages));
            assert_eq!(c.event_source, "aws:dynamodb");
            assert_eq!(c.aws_region, LOCAL_REGION);
            assert_eq!(c.event_id.len(), 32);
            assert!(c.size_bytes > 0 && c.user_identity.is_none());
        }
        // DynamoDB-style shard ids.
        for shard in b.list_shards(&arn).await.unwrap() {
            let (millis, hex) = shard.shard_id["shardId-".len()..].split_once('-').unwrap();
            assert_eq!((millis.len(), hex.len()), (20, 8), "{}", shard.shard_id);
            assert!(millis.bytes().all(|c| c.is_ascii_digit()));
            assert!(hex.bytes().all(|c| c.is_ascii_hexdigit()));
        }
    }

    #[tokio::test]
    async fn the_view_type_decides_the_images_and_ttl_deletions_say_so() {
        for view in [
            StreamViewType::KeysOnly,
            StreamViewType::NewImage,
            StreamViewType::OldImage,
        ] {
            let b = LocalBackend::new();
            let arn = b.create_table("t-1", KeySchema::hash("id"), view, 1).unwrap();
            let key = item(&[("id", AttributeValue::n(7))]);
            let v = item(&[("id", AttributeValue::n(7)), ("x", AttributeValue::Bool(true))]);
            b.put_item("t-1", v.clone()).unwrap();
            b.expire_item("t-1", key.clone()).unwrap();
            let got = changes(&b, &arn).await;
            assert_eq!(got.len(), 2);
            assert_eq!(got[0].new_image.is_some(), view == StreamViewType::NewImage);
            assert_eq!(got[1].old_image.is_some(), view == StreamViewType::OldImage);
            assert!(got[0].old_image.is_none() && got[1].new_image.is_none());
            assert!(got[1].is_ttl_deletion() && !got[0].is_ttl_deletion());
            assert_eq!(got[1].keys, key);
        }
    }

    #[tokio::test]
    async fn rotation_closes_every_shard_and_keeps_each_key_on_one_lineage() {
        let b = LocalBackend::new();
        let arn = b
            .create_table("items", KeySchema::hash("k"), StreamViewType::NewImage, 3)
            .unwrap();
        let put = |i: u32, v: u32| {
            b.put_item(
                "items",
                item(&[("k", AttributeValue::n(i)), ("v", AttributeValue::n(v))]),
            )
            .unwrap();
        };
        for i in 0..30 {
            put(i, 0);
        }
        let pairs = b.rotate_shards(&arn).unwrap();
        assert_eq!(pairs.len(), 3);
        for i in 0..30 {
            put(i, 1);
        }
        let shards = b.list_shards(&arn).await.unwrap();
        assert_eq!(shards.len(), 6);
        for (parent, child) in &pairs {
            let p = shards.iter().find(|s| &s.shard_id == parent).unwrap();
            let c = shards.iter().find(|s| &s.shard_id == child).unwrap();
            assert!(!p.is_open() && c.is_open());
            assert_eq!(c.parent_shard_id.as_deref(), Some(parent.as_str()));
            assert_eq!(c.hash_key_range, p.hash_key_range);
            assert!(c.starting_sequence_number > *p.ending_sequence_number.as_ref().unwrap());
            // Every key of the parent is in the child and nowhere else.
            let keys = |shard: &str| {
                let b = b.clone();
                let arn = arn.clone();
                let shard = shard.to_owned();
                async move {
                    read_shard(&b, &arn, &shard)
                        .await
                        .iter()
                        .map(|r| ChangeRecord::from_record(r).unwrap().keys)
                        .collect::<Vec<_>>()
                }
            };
            assert_eq!(keys(parent).await, keys(child).await);
        }
    }

    #[test]
    fn bad_tables_keys_and_items_are_refused() {
        let b = LocalBackend::new();
        let view = StreamViewType::KeysOnly;
        assert!(b.create_table("ab", KeySchema::hash("k"), view, 1).is_err());
        assert!(b.create_table("a/bc", KeySchema::hash("k"), view, 1).is_err());
        b.create_table("tab", KeySchema::hash("k"), view, 1).unwrap();
        assert!(b.create_table("tab", KeySchema::hash("k"), view, 1).is_err());
        assert!(b.put_item("nope", item(&[("k", s("x"))])).is_err());
        assert!(b.put_item("tab", item(&[("j", s("x"))])).is_err());
        assert!(b
            .put_item("tab", item(&[("k", AttributeValue::Bool(true))]))
            .is_err());
        assert!(b
            .update_item("tab", item(&[("k", s("x"))]), item(&[("k", s("y"))]), &[])
            .is_err());
        let big = item(&[
            ("k", s("x")),
            ("blob", AttributeValue::B(vec![0; MAX_ITEM_BYTES])),
        ]);
        assert!(matches!(
            b.put_item("tab", big),
            Err(BackendError::InvalidArgument(_))
        ));
        assert!(b.scan("tab").unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_disabled_stream_closes_its_shards_keeps_its_records_and_names_the_newer_one() {
        let b = LocalBackend::new();
        let arn = b
            .create_table("orders", KeySchema::hash("pk"), StreamViewType::NewImage, 2)
            .unwrap();
        let put = |v: i64| {
            b.put_item("orders", item(&[("pk", s("a")), ("v", AttributeValue::n(v))]))
                .unwrap();
        };
        put(1);
        put(2);
        b.table_stream_ended(&arn).unwrap();
        assert_eq!(b.disable_stream("orders").unwrap(), arn);
        assert!(matches!(
            b.disable_stream("orders"),
            Err(BackendError::InvalidArgument(_))
        ));
        assert!(!b.table_stream_enabled("orders").unwrap());
        assert!(b.shards(&arn).unwrap().iter().all(|sh| !sh.is_open()));
        // The records stay readable, to each shard's end; a write now goes to no stream, but
        // the table changes.
        put(3);
        assert_eq!(changes(&b, &arn).await.len(), 2);
        assert_eq!(b.scan("orders").unwrap()[0]["v"], AttributeValue::n(3));
        let ended = |stream: &str| match b.table_stream_ended(stream) {
            Err(BackendError::StreamDisabled(d)) => d,
            other => panic!("{other:?}"),
        };
        let d = ended(&arn);
        assert_eq!(
            (d.stream.as_str(), d.end, d.latest_stream_arn),
            (arn.as_str(), StreamEnd::Disabled, None)
        );
        // A new stream: a new ARN, the latest; the old one names it.
        let newer = b
            .enable_stream("orders", StreamViewType::NewAndOldImages, 1)
            .unwrap();
        assert_ne!(newer, arn);
        assert_eq!(b.table_stream_arn("orders").unwrap(), newer);
        assert!(matches!(
            b.enable_stream("orders", StreamViewType::NewImage, 1),
            Err(BackendError::InvalidArgument(_))
        ));
        assert_eq!(ended(&arn).latest_stream_arn.as_deref(), Some(newer.as_str()));
        b.table_stream_ended(&newer).unwrap();
        put(4);
        let got = changes(&b, &newer).await;
        assert_eq!(got.len(), 1);
        assert!(got[0].old_image.is_some(), "the new stream's view type");
        // Streams of no table never end this way.
        b.table_stream_ended("a-kinesis-stream").unwrap();
    }

    #[test]
    fn stream_labels_are_iso_8601() {
        assert_eq!(stream_label(UNIX_EPOCH), "1970-01-01T00:00:00.000");
        let t = UNIX_EPOCH + Duration::from_millis(1_765_028_654_123);
        assert_eq!(stream_label(t), "2025-12-06T13:44:14.123");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(stream_label(leap), "2000-02-29T00:00:00.000");
    }
}
