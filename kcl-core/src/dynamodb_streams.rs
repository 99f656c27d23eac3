//! DynamoDB Streams change records, typed: what a processor of a table's change stream reads.
//!
//! Why: a DynamoDB stream (read through `DynamoDbStreamsBackend`, feature `dynamodb-streams`, or
//! the local backend's tables, [`crate::LocalBackend::create_table`]) is consumed by the same
//! scheduler as a Kinesis stream, so each change reaches the processor as a plain
//! [`Record`]. Its `data` is the change as JSON in the DynamoDB Streams wire format (the `Record`
//! shape of `GetRecords`), so a processor that wants raw bytes has them, and
//! [`ChangeRecord::from_record`] parses it into typed values: the event name, the keys, the old
//! and new images as [`AttributeValue`]s (also convertible to plain JSON), the sequence number,
//! the approximate creation time, the stream view type and the user identity (TTL deletions).
//!
//! ```json
//! {"eventID":"0c5b2ad4a2f7e3a1d6b0f6a2c9e4d8b1","eventName":"MODIFY","eventVersion":"1.1",
//!  "eventSource":"aws:dynamodb","awsRegion":"us-east-1",
//!  "dynamodb":{"ApproximateCreationDateTime":1765028654,
//!              "Keys":{"pk":{"S":"order-1"}},
//!              "NewImage":{"pk":{"S":"order-1"},"qty":{"N":"2"}},
//!              "OldImage":{"pk":{"S":"order-1"},"qty":{"N":"1"}},
//!              "SequenceNumber":"4900000000000000000000000000000000000017",
//!              "SizeBytes":59,"StreamViewType":"NEW_AND_OLD_IMAGES"}}
//! ```
//!
//! A TTL deletion adds `"userIdentity":{"PrincipalId":"dynamodb.amazonaws.com","Type":"Service"}`
//! (Lambda's events spell these `principalId` and `type`; both are read).
//! Nothing here depends on the AWS SDK: the SDK's types stay inside the backend.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::record::{Record, SequenceNumber};

/// An item (or an item's key, or an image): attribute name → value, ordered by name.
pub type Item = BTreeMap<String, AttributeValue>;

/// The principal of a deletion made by DynamoDB's Time to Live.
pub const TTL_PRINCIPAL: &str = "dynamodb.amazonaws.com";

/// The `eventSource` of every DynamoDB change record.
pub const EVENT_SOURCE: &str = "aws:dynamodb";

/// The `eventVersion` DynamoDB Streams writes today.
pub const EVENT_VERSION: &str = "1.1";

/// A DynamoDB attribute value, as the service's JSON has it (`{"S": "x"}`, `{"N": "1"}`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttributeValue {
    /// A string.
    S(String),
    /// A number, as DynamoDB keeps it: decimal text (up to 38 digits of precision).
    N(String),
    /// Binary (base64 in JSON).
    B(Vec<u8>),
    /// A boolean.
    Bool(bool),
    /// `NULL`.
    Null,
    /// A string set.
    Ss(Vec<String>),
    /// A number set.
    Ns(Vec<String>),
    /// A binary set.
    Bs(Vec<Vec<u8>>),
    /// A list.
    L(Vec<AttributeValue>),
    /// A map.
    M(Item),
}

/// Why a record is not a DynamoDB Streams change record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChangeRecordError {
    /// The record's data is not JSON.
    #[error("the record is not JSON: {0}")]
    NotJson(String),
    /// A required field is missing.
    #[error("the change record has no {0}")]
    Missing(&'static str),
    /// A field has the wrong type or an unknown value.
    #[error("the change record's {field} is invalid: {reason}")]
    Invalid {
        /// The field (a JSON path such as `dynamodb.Keys.pk`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ChangeRecordError {
    ChangeRecordError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The kind of change (`eventName`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventName {
    /// A new item was added (`INSERT`).
    Insert,
    /// An item was changed (`MODIFY`).
    Modify,
    /// An item was deleted (`REMOVE`), by a request or by Time to Live.
    Remove,
}

impl EventName {
    /// The wire name: `INSERT`, `MODIFY` or `REMOVE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Insert => "INSERT",
            Self::Modify => "MODIFY",
            Self::Remove => "REMOVE",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "INSERT" => Some(Self::Insert),
            "MODIFY" => Some(Self::Modify),
            "REMOVE" => Some(Self::Remove),
            _ => None,
        }
    }
}

impl fmt::Display for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a stream captures of each change (`StreamViewType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamViewType {
    /// Only the key attributes (`KEYS_ONLY`).
    KeysOnly,
    /// The item after the change (`NEW_IMAGE`).
    NewImage,
    /// The item before the change (`OLD_IMAGE`).
    OldImage,
    /// Both (`NEW_AND_OLD_IMAGES`).
    NewAndOldImages,
}

impl StreamViewType {
    /// The wire name, e.g. `NEW_AND_OLD_IMAGES`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeysOnly => "KEYS_ONLY",
            Self::NewImage => "NEW_IMAGE",
            Self::OldImage => "OLD_IMAGE",
            Self::NewAndOldImages => "NEW_AND_OLD_IMAGES",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "KEYS_ONLY" => Some(Self::KeysOnly),
            "NEW_IMAGE" => Some(Self::NewImage),
            "OLD_IMAGE" => Some(Self::OldImage),
            "NEW_AND_OLD_IMAGES" => Some(Self::NewAndOldImages),
            _ => None,
        }
    }

    /// Whether records carry the new image.
    pub fn has_new_image(self) -> bool {
        matches!(self, Self::NewImage | Self::NewAndOldImages)
    }

    /// Whether records carry the old image.
    pub fn has_old_image(self) -> bool {
        matches!(self, Self::OldImage | Self::NewAndOldImages)
    }
}

impl fmt::Display for StreamViewType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who made a change (`userIdentity`): present only for deletions by Time to Live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserIdentity {
    /// `dynamodb.amazonaws.com` for TTL.
    pub principal_id: String,
    /// `Service` for TTL.
    pub kind: String,
}

impl UserIdentity {
    /// The identity DynamoDB gives its Time to Live deletions.
    pub fn ttl() -> Self {
        Self {
            principal_id: TTL_PRINCIPAL.to_owned(),
            kind: "Service".to_owned(),
        }
    }

    /// Whether this is DynamoDB's Time to Live service.
    pub fn is_ttl(&self) -> bool {
        self.principal_id == TTL_PRINCIPAL && self.kind == "Service"
    }
}

/// One change to one item of a DynamoDB table, as DynamoDB Streams reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeRecord {
    /// A unique identifier of the record (`eventID`).
    pub event_id: String,
    /// Insert, modify or remove.
    pub event_name: EventName,
    /// `eventVersion` (`1.1`).
    pub event_version: String,
    /// `eventSource` (`aws:dynamodb`).
    pub event_source: String,
    /// The table's region (`awsRegion`).
    pub aws_region: String,
    /// The item's key attributes (always present).
    pub keys: Item,
    /// The item after the change (with `NEW_IMAGE` or `NEW_AND_OLD_IMAGES`, not for removals).
    pub new_image: Option<Item>,
    /// The item before the change (with `OLD_IMAGE` or `NEW_AND_OLD_IMAGES`, not for inserts).
    pub old_image: Option<Item>,
    /// The record's sequence number in its shard.
    pub sequence_number: SequenceNumber,
    /// The record's size in bytes (`SizeBytes`).
    pub size_bytes: u64,
    /// When the change was made, rounded down to the second.
    pub approximate_creation_time: SystemTime,
    /// What the stream captures.
    pub stream_view_type: Option<StreamViewType>,
    /// Set for deletions by Time to Live.
    pub user_identity: Option<UserIdentity>,
}

impl ChangeRecord {
    /// Parses a record read from a DynamoDB stream: its data, the change in the wire format.
    pub fn from_record(record: &Record) -> Result<Self, ChangeRecordError> {
        Self::from_json_slice(&record.data)
    }

    /// Parses a change record from its JSON wire format.
    pub fn from_json_slice(data: &[u8]) -> Result<Self, ChangeRecordError> {
        let value: Value =
            serde_json::from_slice(data).map_err(|e| ChangeRecordError::NotJson(e.to_string()))?;
        Self::from_json(&value)
    }

    /// Parses a change record from a parsed JSON value in the wire format.
    pub fn from_json(value: &Value) -> Result<Self, ChangeRecordError> {
        let top = value
            .as_object()
            .ok_or_else(|| invalid("record", "not a JSON object"))?;
        let text = |name: &'static str| -> Result<Option<String>, ChangeRecordError> {
            match top.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(invalid(name, "not a string")),
            }
        };
        let event_name_text = text("eventName")?.ok_or(ChangeRecordError::Missing("eventName"))?;
        let event_name = EventName::parse(&event_name_text)
            .ok_or_else(|| invalid("eventName", format!("unknown event {event_name_text:?}")))?;
        let dynamodb = top
            .get("dynamodb")
            .ok_or(ChangeRecordError::Missing("dynamodb"))?
            .as_object()
            .ok_or_else(|| invalid("dynamodb", "not a JSON object"))?;
        let image = |name: &'static str| -> Result<Option<Item>, ChangeRecordError> {
            match dynamodb.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => item_from_dynamodb_json(v, &format!("dynamodb.{name}")).map(Some),
            }
        };
        let keys = image("Keys")?.ok_or(ChangeRecordError::Missing("dynamodb.Keys"))?;
        let sequence_number = match dynamodb.get("SequenceNumber") {
            Some(Value::String(s)) => {
                SequenceNumber::new(s).map_err(|e| invalid("dynamodb.SequenceNumber", e.to_string()))?
            }
            Some(_) => return Err(invalid("dynamodb.SequenceNumber", "not a string")),
            None => return Err(ChangeRecordError::Missing("dynamodb.SequenceNumber")),
        };
        let size_bytes = match dynamodb.get("SizeBytes") {
            None | Some(Value::Null) => 0,
            Some(v) => v
                .as_u64()
                .ok_or_else(|| invalid("dynamodb.SizeBytes", "not a non-negative integer"))?,
        };
        let approximate_creation_time = match dynamodb.get("ApproximateCreationDateTime") {
            None | Some(Value::Null) => UNIX_EPOCH,
            Some(v) => {
                let secs = v
                    .as_f64()
                    .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e12)
                    .ok_or_else(|| invalid("dynamodb.ApproximateCreationDateTime", "not epoch seconds"))?;
                UNIX_EPOCH + Duration::from_secs_f64(secs)
            }
        };
        let stream_view_type = match dynamodb.get("StreamViewType") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(
                StreamViewType::parse(s)
                    .ok_or_else(|| invalid("dynamodb.StreamViewType", format!("unknown {s:?}")))?,
            ),
            Some(_) => return Err(invalid("dynamodb.StreamViewType", "not a string")),
        };
        let user_identity = match top.get("userIdentity") {
            None | Some(Value::Null) => None,
            Some(Value::Object(o)) => {
                // `GetRecords` writes `PrincipalId` and `Type`; Lambda's events `principalId`
                // and `type`.
                let field = |name: &str, lambda: &str| {
                    o.get(name)
                        .or_else(|| o.get(lambda))
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .ok_or_else(|| invalid(format!("userIdentity.{name}"), "not a string"))
                };
                Some(UserIdentity {
                    principal_id: field("PrincipalId", "principalId")?,
                    kind: field("Type", "type")?,
                })
            }
            Some(_) => return Err(invalid("userIdentity", "not a JSON object")),
        };
        Ok(Self {
            event_id: text("eventID")?.unwrap_or_default(),
            event_name,
            event_version: text("eventVersion")?.unwrap_or_default(),
            event_source: text("eventSource")?.unwrap_or_default(),
            aws_region: text("awsRegion")?.unwrap_or_default(),
            keys,
            new_image: image("NewImage")?,
            old_image: image("OldImage")?,
            sequence_number,
            size_bytes,
            approximate_creation_time,
            stream_view_type,
            user_identity,
        })
    }

    /// The record in the wire format (`ApproximateCreationDateTime` in whole epoch seconds,
    /// absent images and identity left out).
    pub fn to_json(&self) -> Value {
        let mut dynamodb = Map::new();
        let secs = self
            .approximate_creation_time
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        dynamodb.insert("ApproximateCreationDateTime".into(), secs.into());
        dynamodb.insert("Keys".into(), item_to_dynamodb_json(&self.keys));
        if let Some(image) = &self.new_image {
            dynamodb.insert("NewImage".into(), item_to_dynamodb_json(image));
        }
        if let Some(image) = &self.old_image {
            dynamodb.insert("OldImage".into(), item_to_dynamodb_json(image));
        }
        dynamodb.insert("SequenceNumber".into(), self.sequence_number.as_str().into());
        dynamodb.insert("SizeBytes".into(), self.size_bytes.into());
        if let Some(view) = self.stream_view_type {
            dynamodb.insert("StreamViewType".into(), view.as_str().into());
        }
        let mut top = Map::new();
        top.insert("eventID".into(), self.event_id.clone().into());
        top.insert("eventName".into(), self.event_name.as_str().into());
        top.insert("eventVersion".into(), self.event_version.clone().into());
        top.insert("eventSource".into(), self.event_source.clone().into());
        top.insert("awsRegion".into(), self.aws_region.clone().into());
        top.insert("dynamodb".into(), Value::Object(dynamodb));
        if let Some(identity) = &self.user_identity {
            let mut o = Map::new();
            o.insert("PrincipalId".into(), identity.principal_id.clone().into());
            o.insert("Type".into(), identity.kind.clone().into());
            top.insert("userIdentity".into(), Value::Object(o));
        }
        Value::Object(top)
    }

    /// The record in the wire format, as bytes (what a [`Record`]'s `data` holds).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_json().to_string().into_bytes()
    }

    /// Whether DynamoDB's Time to Live deleted the item.
    pub fn is_ttl_deletion(&self) -> bool {
        self.event_name == EventName::Remove && self.user_identity.as_ref().is_some_and(UserIdentity::is_ttl)
    }

    /// The keys as plain JSON (`{"pk": "order-1"}`).
    pub fn keys_json(&self) -> Value {
        item_to_json(&self.keys)
    }

    /// The new image as plain JSON, if the record has one.
    pub fn new_image_json(&self) -> Option<Value> {
        self.new_image.as_ref().map(item_to_json)
    }

    /// The old image as plain JSON, if the record has one.
    pub fn old_image_json(&self) -> Option<Value> {
        self.old_image.as_ref().map(item_to_json)
    }
}

impl AttributeValue {
    /// A string value.
    pub fn s(s: impl Into<String>) -> Self {
        Self::S(s.into())
    }

    /// A number value from anything that prints as a number.
    pub fn n(n: impl fmt::Display) -> Self {
        Self::N(n.to_string())
    }

    /// The value in DynamoDB JSON (`{"S": "x"}`; binary in base64).
    pub fn to_dynamodb_json(&self) -> Value {
        let (tag, value) = match self {
            Self::S(s) => ("S", Value::String(s.clone())),
            Self::N(n) => ("N", Value::String(n.clone())),
            Self::B(b) => ("B", Value::String(base64_encode(b))),
            Self::Bool(b) => ("BOOL", Value::Bool(*b)),
            Self::Null => ("NULL", Value::Bool(true)),
            Self::Ss(v) => ("SS", v.iter().cloned().map(Value::String).collect()),
            Self::Ns(v) => ("NS", v.iter().cloned().map(Value::String).collect()),
            Self::Bs(v) => ("BS", v.iter().map(|b| Value::String(base64_encode(b))).collect()),
            Self::L(v) => ("L", v.iter().map(Self::to_dynamodb_json).collect()),
            Self::M(m) => ("M", item_to_dynamodb_json(m)),
        };
        let mut o = Map::new();
        o.insert(tag.into(), value);
        Value::Object(o)
    }

    /// Parses a value in DynamoDB JSON; `path` names it in errors.
    pub fn from_dynamodb_json(value: &Value, path: &str) -> Result<Self, ChangeRecordError> {
        let o = value
            .as_object()
            .filter(|o| o.len() == 1)
            .ok_or_else(|| invalid(path, "not an attribute value (an object with one type)"))?;
        let Some((tag, v)) = o.iter().next() else {
            return Err(invalid(path, "an empty attribute value"));
        };
        let string = |v: &Value| -> Result<String, ChangeRecordError> {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| invalid(format!("{path}.{tag}"), "not a string"))
        };
        let binary = |v: &Value| -> Result<Vec<u8>, ChangeRecordError> {
            base64_decode(&string(v)?).ok_or_else(|| invalid(format!("{path}.{tag}"), "not base64"))
        };
        let array = |v: &Value| -> Result<Vec<Value>, ChangeRecordError> {
            v.as_array()
                .cloned()
                .ok_or_else(|| invalid(format!("{path}.{tag}"), "not an array"))
        };
        Ok(match tag.as_str() {
            "S" => Self::S(string(v)?),
            "N" => Self::N(number(&string(v)?, &format!("{path}.N"))?),
            "B" => Self::B(binary(v)?),
            "BOOL" => Self::Bool(
                v.as_bool()
                    .ok_or_else(|| invalid(format!("{path}.BOOL"), "not a boolean"))?,
            ),
            "NULL" => Self::Null,
            "SS" => Self::Ss(array(v)?.iter().map(string).collect::<Result<_, _>>()?),
            "NS" => Self::Ns(
                array(v)?
                    .iter()
                    .map(|n| number(&string(n)?, &format!("{path}.NS")))
                    .collect::<Result<_, _>>()?,
            ),
            "BS" => Self::Bs(array(v)?.iter().map(binary).collect::<Result<_, _>>()?),
            "L" => Self::L(
                array(v)?
                    .iter()
                    .enumerate()
                    .map(|(i, e)| Self::from_dynamodb_json(e, &format!("{path}.L[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            "M" => Self::M(item_from_dynamodb_json(v, &format!("{path}.M"))?),
            other => return Err(invalid(path, format!("unknown attribute type {other:?}"))),
        })
    }

    /// The value as plain JSON: strings, numbers (integers exactly; other numbers as `f64`, or
    /// as a string when `f64` cannot hold them), booleans, `null`, arrays for lists and sets,
    /// objects for maps, base64 strings for binary.
    pub fn to_json(&self) -> Value {
        match self {
            Self::S(s) => Value::String(s.clone()),
            Self::N(n) => number_to_json(n),
            Self::B(b) => Value::String(base64_encode(b)),
            Self::Bool(b) => Value::Bool(*b),
            Self::Null => Value::Null,
            Self::Ss(v) => v.iter().cloned().map(Value::String).collect(),
            Self::Ns(v) => v.iter().map(|n| number_to_json(n)).collect(),
            Self::Bs(v) => v.iter().map(|b| Value::String(base64_encode(b))).collect(),
            Self::L(v) => v.iter().map(Self::to_json).collect(),
            Self::M(m) => item_to_json(m),
        }
    }
}

/// A DynamoDB number: optional sign, digits, optional fraction and exponent.
fn number(s: &str, path: &str) -> Result<String, ChangeRecordError> {
    let body = s.strip_prefix('-').unwrap_or(s);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let digits_ok = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => {
            ((int.is_empty() || digits_ok(int)) && digits_ok(frac)) || (digits_ok(int) && frac.is_empty())
        }
        None => digits_ok(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| digits_ok(e.strip_prefix(['+', '-']).unwrap_or(e)));
    if mantissa_ok && exponent_ok && s.len() <= 128 {
        Ok(s.to_owned())
    } else {
        Err(invalid(
            path,
            format!("{:?} is not a number", s.chars().take(40).collect::<String>()),
        ))
    }
}

fn number_to_json(n: &str) -> Value {
    if let Ok(i) = n.parse::<i64>() {
        return i.into();
    }
    if let Ok(u) = n.parse::<u64>() {
        return u.into();
    }
    match n.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
        // Only when f64 keeps the number as written (up to trailing zeros and exponent form).
        Some(f) if f64_exact(n) => Value::Number(f),
        _ => Value::String(n.to_owned()),
    }
}

/// Whether `n` has at most 15 significant digits (which `f64` always holds exactly).
fn f64_exact(n: &str) -> bool {
    let mantissa = n.split(['e', 'E']).next().unwrap_or(n);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    digits.trim_start_matches('0').trim_end_matches('0').len() <= 15
}

/// An item in DynamoDB JSON (`{"pk": {"S": "x"}}`).
pub fn item_to_dynamodb_json(item: &Item) -> Value {
    Value::Object(
        item.iter()
            .map(|(k, v)| (k.clone(), v.to_dynamodb_json()))
            .collect(),
    )
}

/// Parses an item in DynamoDB JSON; `path` names it in errors.
pub fn item_from_dynamodb_json(value: &Value, path: &str) -> Result<Item, ChangeRecordError> {
    value
        .as_object()
        .ok_or_else(|| invalid(path, "not a JSON object"))?
        .iter()
        .map(|(k, v)| {
            Ok((
                k.clone(),
                AttributeValue::from_dynamodb_json(v, &format!("{path}.{k}"))?,
            ))
        })
        .collect()
}

/// An item as plain JSON (`{"pk": "x", "qty": 2}`); see [`AttributeValue::to_json`].
pub fn item_to_json(item: &Item) -> Value {
    Value::Object(item.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
}

/// Why a string is not a DynamoDB stream ARN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DynamoDbStreamArnError {
    /// Not `arn:PARTITION:dynamodb:REGION:ACCOUNT:table/TABLE/stream/LABEL`.
    #[error(
        "not a DynamoDB stream ARN (expected arn:PARTITION:dynamodb:REGION:ACCOUNT:table/TABLE/stream/LABEL): {0:?}"
    )]
    NotAStreamArn(String),
    /// The account is not 12 digits.
    #[error("the ARN's account must be 12 digits, not {0:?}")]
    BadAccount(String),
    /// The table name is not 3 to 255 of `a-zA-Z0-9_.-`.
    #[error("the ARN's table name must be 3 to 255 of a-zA-Z0-9_.-, not {0:?}")]
    BadTable(String),
}

/// A parsed DynamoDB stream ARN (`arn:aws:dynamodb:us-east-1:123456789012:table/Orders/stream/2026-12-06T13:44:14.123`):
/// the stream of one table, named by its label (the stream's creation time). `Display` gives
/// the ARN back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DynamoDbStreamArn {
    /// The partition (`aws`, `aws-cn`, `aws-us-gov`, ...).
    pub partition: String,
    /// The region.
    pub region: String,
    /// The 12-digit account that owns the table.
    pub account: String,
    /// The table's name.
    pub table: String,
    /// The stream's label (`StreamLabel`, a timestamp).
    pub label: String,
}

impl std::str::FromStr for DynamoDbStreamArn {
    type Err = DynamoDbStreamArnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let not = || DynamoDbStreamArnError::NotAStreamArn(s.chars().take(300).collect());
        // The label (a timestamp) holds `:`, so the resource is everything after the fifth.
        let mut parts = s.splitn(6, ':');
        let (Some("arn"), Some(partition), Some("dynamodb"), Some(region), Some(account), Some(resource)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(not());
        };
        let (table, label) = resource
            .strip_prefix("table/")
            .and_then(|r| r.split_once("/stream/"))
            .ok_or_else(not)?;
        if partition.is_empty() || region.is_empty() || label.is_empty() || label.contains('/') {
            return Err(not());
        }
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(DynamoDbStreamArnError::BadAccount(account.to_owned()));
        }
        if !is_table_name(table) {
            return Err(DynamoDbStreamArnError::BadTable(
                table.chars().take(300).collect(),
            ));
        }
        Ok(Self {
            partition: partition.to_owned(),
            region: region.to_owned(),
            account: account.to_owned(),
            table: table.to_owned(),
            label: label.to_owned(),
        })
    }
}

impl fmt::Display for DynamoDbStreamArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "arn:{}:dynamodb:{}:{}:table/{}/stream/{}",
            self.partition, self.region, self.account, self.table, self.label
        )
    }
}

/// Whether `name` is a DynamoDB table name: 3 to 255 of `a-zA-Z0-9_.-`.
pub fn is_table_name(name: &str) -> bool {
    (3..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, as DynamoDB JSON carries binary.
pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding required, as DynamoDB writes it); `None` if malformed.
pub(crate) fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let value = |c: u8| BASE64.iter().position(|&b| b == c).map(|p| p as u32);
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (i, chunk) in s.chunks(4).enumerate() {
        let last = i == s.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A `MODIFY` record as `GetRecords` returns it (the API reference's example, with every
    /// attribute type in the images).
    const MODIFY: &str = r#"{
        "eventID": "e2fd9c34eff2d779b297b26f5fef4206",
        "eventName": "MODIFY",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-west-2",
        "dynamodb": {
            "ApproximateCreationDateTime": 1.46348488E9,
            "Keys": {"ForumName": {"S": "DynamoDB"}, "Subject": {"S": "DynamoDB Thread 1"}},
            "NewImage": {
                "ForumName": {"S": "DynamoDB"},
                "Subject": {"S": "DynamoDB Thread 1"},
                "Replies": {"N": "1"},
                "Price": {"N": "12.5"},
                "Big": {"N": "123456789012345678901234567890"},
                "Blob": {"B": "aGVsbG8="},
                "Open": {"BOOL": true},
                "Nothing": {"NULL": true},
                "Tags": {"SS": ["a", "b"]},
                "Scores": {"NS": ["1", "2.5"]},
                "Blobs": {"BS": ["AQ==", "AgM="]},
                "List": {"L": [{"S": "x"}, {"N": "3"}]},
                "Map": {"M": {"inner": {"S": "y"}}}
            },
            "OldImage": {
                "ForumName": {"S": "DynamoDB"},
                "Subject": {"S": "DynamoDB Thread 1"},
                "Replies": {"N": "0"}
            },
            "SequenceNumber": "400000000000000499660",
            "SizeBytes": 41,
            "StreamViewType": "NEW_AND_OLD_IMAGES"
        }
    }"#;

    fn record(data: &str) -> Record {
        Record {
            data: data.as_bytes().to_vec().into(),
            partition_key: Arc::from("k"),
            sequence_number: SequenceNumber::new("1").unwrap(),
            sub_sequence_number: 0,
            approximate_arrival_timestamp: UNIX_EPOCH,
            explicit_hash_key: None,
        }
    }

    #[test]
    fn a_modify_record_with_every_attribute_type() {
        let c = ChangeRecord::from_record(&record(MODIFY)).unwrap();
        assert_eq!(c.event_name, EventName::Modify);
        assert_eq!(c.event_id, "e2fd9c34eff2d779b297b26f5fef4206");
        assert_eq!(c.aws_region, "us-west-2");
        assert_eq!(c.event_source, EVENT_SOURCE);
        assert_eq!(c.sequence_number.as_str(), "400000000000000499660");
        assert_eq!(c.size_bytes, 41);
        assert_eq!(c.stream_view_type, Some(StreamViewType::NewAndOldImages));
        assert_eq!(
            c.approximate_creation_time,
            UNIX_EPOCH + Duration::from_secs(1_463_484_880)
        );
        assert_eq!(c.keys.len(), 2);
        assert_eq!(c.keys["ForumName"], AttributeValue::s("DynamoDB"));
        let new = c.new_image.as_ref().unwrap();
        assert_eq!(new["Blob"], AttributeValue::B(b"hello".to_vec()));
        assert_eq!(new["Blobs"], AttributeValue::Bs(vec![vec![1], vec![2, 3]]));
        assert_eq!(new["Nothing"], AttributeValue::Null);
        assert_eq!(
            new["Map"],
            AttributeValue::M([("inner".to_owned(), AttributeValue::s("y"))].into())
        );
        assert_eq!(c.old_image.as_ref().unwrap()["Replies"], AttributeValue::n(0));
        assert!(c.user_identity.is_none() && !c.is_ttl_deletion());
        // Plain JSON.
        let json = c.new_image_json().unwrap();
        assert_eq!(json["Replies"], serde_json::json!(1));
        assert_eq!(json["Price"], serde_json::json!(12.5));
        assert_eq!(json["Big"], serde_json::json!("123456789012345678901234567890"));
        assert_eq!(json["Blob"], serde_json::json!("aGVsbG8="));
        assert_eq!(json["Nothing"], Value::Null);
        assert_eq!(json["Tags"], serde_json::json!(["a", "b"]));
        assert_eq!(json["Scores"], serde_json::json!([1, 2.5]));
        assert_eq!(json["List"], serde_json::json!(["x", 3]));
        assert_eq!(json["Map"], serde_json::json!({"inner": "y"}));
        assert_eq!(
            c.keys_json(),
            serde_json::json!({"ForumName": "DynamoDB", "Subject": "DynamoDB Thread 1"})
        );
        // The wire format round-trips.
        let again = ChangeRecord::from_json_slice(&c.to_bytes()).unwrap();
        assert_eq!(again, c);
        let original: Value = serde_json::from_str(MODIFY).unwrap();
        assert_eq!(
            c.to_json()["dynamodb"]["NewImage"],
            original["dynamodb"]["NewImage"]
        );
    }

    #[test]
    fn a_ttl_deletion_and_an_insert_keys_only() {
        let ttl = r#"{"eventID":"1","eventName":"REMOVE","eventVersion":"1.1","eventSource":"aws:dynamodb",
            "awsRegion":"eu-west-1","dynamodb":{"ApproximateCreationDateTime":1700000000,
            "Keys":{"pk":{"S":"session-9"}},"OldImage":{"pk":{"S":"session-9"},"expires":{"N":"1699999999"}},
            "SequenceNumber":"000000000000000000001","SizeBytes":60,"StreamViewType":"OLD_IMAGE"},
            "userIdentity":{"PrincipalId":"dynamodb.amazonaws.com","Type":"Service"}}"#;
        let c = ChangeRecord::from_json_slice(ttl.as_bytes()).unwrap();
        assert_eq!(c.event_name, EventName::Remove);
        assert!(c.is_ttl_deletion());
        assert_eq!(c.user_identity, Some(UserIdentity::ttl()));
        // Lambda's spelling.
        let lambda = ttl
            .replace("PrincipalId", "principalId")
            .replace("\"Type\"", "\"type\"");
        let l = ChangeRecord::from_json_slice(lambda.as_bytes()).unwrap();
        assert!(l.is_ttl_deletion());
        assert!(c.new_image.is_none());
        let insert = r#"{"eventName":"INSERT","dynamodb":{"Keys":{"id":{"N":"7"},"sk":{"B":"AAE="}},
            "SequenceNumber":"111","StreamViewType":"KEYS_ONLY"}}"#;
        let c = ChangeRecord::from_json_slice(insert.as_bytes()).unwrap();
        assert_eq!(c.event_name, EventName::Insert);
        assert_eq!(c.keys["sk"], AttributeValue::B(vec![0, 1]));
        assert!(c.new_image.is_none() && c.old_image.is_none() && c.user_identity.is_none());
        assert_eq!(c.stream_view_type, Some(StreamViewType::KeysOnly));
    }

    #[test]
    fn malformed_records_are_typed_errors() {
        let cases: &[(&str, &str)] = &[
            ("not json", "not JSON"),
            ("[]", "not a JSON object"),
            (r#"{"dynamodb":{}}"#, "no eventName"),
            (r#"{"eventName":"UPSERT","dynamodb":{}}"#, "unknown event"),
            (r#"{"eventName":"INSERT"}"#, "no dynamodb"),
            (
                r#"{"eventName":"INSERT","dynamodb":{"SequenceNumber":"1"}}"#,
                "no dynamodb.Keys",
            ),
            (
                r#"{"eventName":"INSERT","dynamodb":{"Keys":{}}}"#,
                "no dynamodb.SequenceNumber",
            ),
            (
                r#"{"eventName":"INSERT","dynamodb":{"Keys":{"k":{"X":"1"}},"SequenceNumber":"1"}}"#,
                "unknown attribute type",
            ),
            (
                r#"{"eventName":"INSERT","dynamodb":{"Keys":{"k":{"S":"1","N":"1"}},"SequenceNumber":"1"}}"#,
                "dynamodb.Keys.k",
            ),
            (
                r#"{"eventName":"INSERT","dynamodb":{"Keys":{"k":{"N":"1x"}},"SequenceNumber":"1"}}"#,
                "not a number",
            ),
            (
                r#"{"eventName":"INSERT","dynamodb":{"Keys":{"k":{"B":"%%%%"}},"SequenceNumber":"1"}}"#,
                "not base64",
            ),
            (
                r#"{"eventName":"INSERT","dynamodb":{"Keys":{"k":{"S":"1"}},"SequenceNumber":"abc"}}"#,
                "SequenceNumber",
            ),
            (
                r#"{"eventName":"INSERT","dynamodb":{"Keys":{"k":{"S":"1"}},"SequenceNumber":"1","ApproximateCreationDateTime":"x"}}"#,
                "epoch seconds",
            ),
            (
                r#"{"eventName":"INSERT","dynamodb":{"Keys":{"k":{"S":"1"}},"SequenceNumber":"1"},"userIdentity":{"type":"Service"}}"#,
                "userIdentity.PrincipalId",
            ),
        ];
        for (data, expected) in cases {
            let err = ChangeRecord::from_json_slice(data.as_bytes()).unwrap_err();
            assert!(err.to_string().contains(expected), "{data}: {err}");
        }
    }

    #[test]
    fn base64_round_trips_and_rejects_garbage() {
        for len in 0..20 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = base64_encode(&bytes);
            assert_eq!(base64_decode(&text), Some(bytes));
        }
        assert_eq!(base64_encode(b"hello"), "aGVsbG8=");
        for bad in ["a", "abc", "a=bc", "ab==cdef", "ab=c", "a===", "ab!c"] {
            assert_eq!(base64_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn stream_arns_parse_and_print_back() {
        let text = "arn:aws:dynamodb:us-east-1:123456789012:table/Orders.v2/stream/2026-12-06T13:44:14.123";
        let arn: DynamoDbStreamArn = text.parse().unwrap();
        assert_eq!(arn.partition, "aws");
        assert_eq!(arn.region, "us-east-1");
        assert_eq!(arn.account, "123456789012");
        assert_eq!(arn.table, "Orders.v2");
        assert_eq!(arn.label, "2026-12-06T13:44:14.123");
        assert_eq!(arn.to_string(), text);
        let bad = [
            (
                "arn:aws:kinesis:us-east-1:123456789012:stream/s",
                "not a DynamoDB stream ARN",
            ),
            (
                "arn:aws:dynamodb:us-east-1:123456789012:table/Orders",
                "not a DynamoDB stream ARN",
            ),
            (
                "arn:aws:dynamodb:us-east-1:123456789012:table/Orders/stream/",
                "not a DynamoDB stream ARN",
            ),
            (
                "arn:aws:dynamodb::123456789012:table/Orders/stream/x",
                "not a DynamoDB stream ARN",
            ),
            (
                "arn:aws:dynamodb:us-east-1:1234:table/Orders/stream/x",
                "12 digits",
            ),
            (
                "arn:aws:dynamodb:us-east-1:123456789012:table/a b/stream/x",
                "table name",
            ),
            ("Orders", "not a DynamoDB stream ARN"),
        ];
        for (text, expected) in bad {
            let err = text.parse::<DynamoDbStreamArn>().unwrap_err();
            assert!(err.to_string().contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn numbers_are_checked() {
        for good in ["0", "-1", "1.5", ".5", "5.", "1e10", "1.2E-3", "-0.0001"] {
            assert!(number(good, "n").is_ok(), "{good}");
        }
        for bad in ["", "-", "1..2", "1e", "e5", "0x10", "1 ", "NaN"] {
            assert!(number(bad, "n").is_err(), "{bad}");
        }
    }
}
