//! The daemon's properties file: Java `Properties` syntax, read into a [`MultiLangConfig`].
//!
//! [`parse_properties`] follows `java.util.Properties.load`: natural lines end at `\n`, `\r` or
//! `\r\n`; leading whitespace is skipped; a line whose first non-blank character is `#` or `!`
//! is a comment; a line ending in an odd number of backslashes continues on the next one (whose
//! leading whitespace is skipped); the key ends at the first unescaped `=`, `:` or whitespace,
//! and one `=`/`:` after it, with whitespace around, is the separator; `\t`, `\n`, `\r`, `\f`,
//! `\uXXXX` are escapes and any other escaped character stands for itself. A later key wins.
//!
//! [`MultiLangConfig::from_properties`] reads the keys of the Java MultiLangDaemon. Keys this
//! daemon accepts but has no use for (thread pools, credentials providers: the SDK's
//! default chain is used) are listed in the result's `ignored`; keys it does not know at all in
//! `unknown` (the binary warns about both). A missing required key or a bad value is an error.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kcl_core::{FanOutConfig, InitialPosition, RetrievalMode};
use thiserror::Error;

/// What is wrong with a properties file.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PropertiesError {
    /// A `\u` escape without four hex digits.
    #[error("line {line}: malformed \\uXXXX escape")]
    BadUnicodeEscape {
        /// The (first natural) line of the logical line.
        line: usize,
    },
    /// A required key is absent or empty.
    #[error("the required property {0} is missing")]
    Missing(&'static str),
    /// `streamArn` contradicts another property: it names another region than `regionName`
    /// or another stream than `streamName`. Refused before any AWS call (the service would
    /// answer with an error that does not say which setting is wrong).
    #[error("streamArn names {what} {in_arn} but {key} is {value}: remove streamArn or make the two agree")]
    ArnMismatch {
        /// What differs: `region` or `stream`.
        what: &'static str,
        /// The region or stream name in the ARN.
        in_arn: String,
        /// The other property: `regionName` or `streamName`.
        key: &'static str,
        /// Its value.
        value: String,
    },
    /// A value cannot be used.
    #[error("property {key} = {value:?}: {reason}")]
    BadValue {
        /// The key.
        key: String,
        /// The value as written.
        value: String,
        /// What is expected.
        reason: String,
    },
}

/// Parses Java `Properties` text into its key/value pairs (a later key replaces an earlier one).
pub fn parse_properties(text: &str) -> Result<BTreeMap<String, String>, PropertiesError> {
    let mut out = BTreeMap::new();
    let natural: Vec<&str> = split_natural_lines(text);
    let mut i = 0;
    while i < natural.len() {
        let first_line = i + 1;
        let line = trim_leading(natural[i]);
        i += 1;
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        // Join continuation lines: an odd number of trailing backslashes continues.
        let mut logical = String::new();
        let mut current = line;
        loop {
            if ends_with_odd_backslashes(current) {
                logical.push_str(&current[..current.len() - 1]);
                if i == natural.len() {
                    break;
                }
                current = trim_leading(natural[i]);
                i += 1;
            } else {
                logical.push_str(current);
                break;
            }
        }
        let (key, value) = split_key_value(&logical);
        let key = unescape(key, first_line)?;
        let value = unescape(value, first_line)?;
        out.insert(key, value);
    }
    Ok(out)
}

fn split_natural_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                lines.push(&text[start..i]);
                start = i + 1;
            }
            b'\r' => {
                lines.push(&text[start..i]);
                if bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < text.len() {
        lines.push(&text[start..]);
    }
    lines
}

fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\x0c')
}

fn trim_leading(s: &str) -> &str {
    s.trim_start_matches(is_blank)
}

fn ends_with_odd_backslashes(s: &str) -> bool {
    s.bytes().rev().take_while(|b| *b == b'\\').count() % 2 == 1
}

/// Splits a logical line (leading whitespace removed) into raw key and raw value.
fn split_key_value(line: &str) -> (&str, &str) {
    let mut escaped = false;
    let mut key_end = line.len();
    let mut separator = None;
    for (i, c) in line.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '=' | ':' => {
                key_end = i;
                separator = Some(i + 1);
                break;
            }
            c if is_blank(c) => {
                key_end = i;
                separator = Some(i + c.len_utf8());
                break;
            }
            _ => {}
        }
    }
    let key = &line[..key_end];
    let Some(after) = separator else {
        return (key, "");
    };
    let mut rest = trim_leading(&line[after..]);
    // After whitespace, one '=' or ':' may still come.
    if line[key_end..].starts_with(is_blank) {
        if let Some(r) = rest.strip_prefix(['=', ':']) {
            rest = trim_leading(r);
        }
    }
    (key, rest)
}

fn unescape(s: &str, line: usize) -> Result<String, PropertiesError> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\x0c'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                let code = (hex.len() == 4)
                    .then(|| u32::from_str_radix(&hex, 16).ok())
                    .flatten()
                    .ok_or(PropertiesError::BadUnicodeEscape { line })?;
                // Lone surrogates (Java strings allow them) become U+FFFD.
                out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    Ok(out)
}

/// The daemon's settings, read from the properties file.
#[derive(Clone, Debug, PartialEq)]
pub struct MultiLangConfig {
    /// `executableName` split on whitespace: the program and its arguments.
    pub executable: Vec<String>,
    /// `streamName`, or the stream name of `streamArn`.
    pub stream_name: String,
    /// `streamArn`: the stream is then named by its ARN in every Kinesis call (a stream of
    /// another account), and the region defaults to the ARN's.
    pub stream_arn: Option<kcl_core::stream_arn::StreamArn>,
    /// `applicationName`: also the lease table's name.
    pub application_name: String,
    /// `workerId`; `None` makes one up (host name, pid, time).
    pub worker_id: Option<String>,
    /// `initialPositionInStream` (with `initialPositionInStreamExtended` for `AT_TIMESTAMP`).
    pub initial_position: InitialPosition,
    /// `regionName`; otherwise the region of `streamArn`, or the SDK's chain (`AWS_REGION`,
    /// profile). Never another region than `streamArn`'s (refused when parsed).
    pub region: Option<String>,
    /// `kinesisEndpoint`, as a URL.
    pub kinesis_endpoint: Option<String>,
    /// `dynamoDBEndpoint`, as a URL.
    pub dynamodb_endpoint: Option<String>,
    /// `failoverTimeMillis`.
    pub failover_time: Option<Duration>,
    /// `maxRecords`.
    pub max_records: Option<usize>,
    /// `idleTimeBetweenReadsInMillis`.
    pub idle_time_between_reads: Option<Duration>,
    /// `shardSyncIntervalMillis`.
    pub shard_sync_interval: Option<Duration>,
    /// `parentShardPollIntervalMillis`.
    pub parent_shard_poll_interval: Option<Duration>,
    /// `maxLeasesForWorker`.
    pub max_leases_for_worker: Option<usize>,
    /// `maxLeasesToStealAtOneTime`.
    pub max_leases_to_steal: Option<usize>,
    /// `cleanupLeasesUponShardCompletion`.
    pub cleanup_leases_upon_shard_completion: Option<bool>,
    /// `retrievalMode` (`POLLING`, `FANOUT`, or `DEFAULT`: fan-out unless a polling key is set,
    /// as the Java daemon decides).
    pub retrieval: RetrievalMode,
    /// `shutdownGraceMillis`, when greater than zero.
    pub shutdown_grace: Option<Duration>,
    /// `timeoutInSeconds`: how long the child may take to answer one message.
    pub timeout: Option<Duration>,
    /// `metricsLevel`, `metricsEnabledDimensions`, `metricsBufferTimeMillis`,
    /// `metricsMaxQueueSize`: the CloudWatch metrics (published unless the level is NONE, as
    /// the Java daemon does).
    pub metrics: crate::metrics::CloudWatchSettings,
    /// `cloudWatchEndpoint`, as a URL.
    pub cloudwatch_endpoint: Option<String>,
    /// Keys of the Java daemon accepted without effect here.
    pub ignored: Vec<String>,
    /// Keys of the Java KCL 3.5 accepted (their values checked) with a word on what each does
    /// here ([`JAVA_35_NOTES`]), for the daemon to log.
    pub notes: Vec<(String, &'static str)>,
    /// Keys nobody knows.
    pub unknown: Vec<String>,
}

/// The Java KCL 3.5's coordinator properties: accepted and checked, with what each does here.
pub const JAVA_35_NOTES: &[(&str, &str)] = &[
    (
        "leaseTableScanTotalSegments",
        "no effect here: the lease table is scanned only when the coordination needs it (the workers watch each other's heartbeat rows instead), in one paginated scan",
    ),
    (
        "migrateAllEntitiesToLeaseTable",
        "nothing to migrate here: this daemon keeps its worker heartbeats in its own table and reads only the lease rows of the lease table; a Java 3.5 worker's other rows (worker metrics, leader, migration state) are left alone",
    ),
    (
        "tableMigrationCompleteBakeTimeSeconds",
        "no table migration runs here (see migrateAllEntitiesToLeaseTable)",
    ),
];

/// Keys the Java daemon knows that have no effect here.
const IGNORED: &[&str] = &[
    "AwsCredentialsProvider",
    "AWSCredentialsProvider",
    "AwsCredentialsProviderDynamoDB",
    "AWSCredentialsProviderDynamoDB",
    "AwsCredentialsProviderCloudWatch",
    "AWSCredentialsProviderCloudWatch",
    "processingLanguage",
    "maxActiveThreads",
    "callProcessRecordsEvenForEmptyRecordList",
    "validateSequenceNumberBeforeCheckpointing",
    "taskBackoffTimeMillis",
    "listShardsBackoffTimeInMillis",
    "maxListShardsRetryAttempts",
    "billingMode",
    "userAgent",
    "logbackConfiguration",
    "skipShardSyncAtWorkerInitializationIfLeasesExist",
    "initialLeaseTableReadCapacity",
    "initialLeaseTableWriteCapacity",
    "ignoreUnexpectedChildShards",
    "maxGetRecordsThreadPool",
    "retryGetRecordsInSeconds",
    "maxLeaseRenewalThreads",
    "consumerArn",
    "consumerName",
];

/// Keys read by [`MultiLangConfig::from_properties`].
const KNOWN: &[&str] = &[
    "executableName",
    "streamName",
    "streamArn",
    "applicationName",
    "workerId",
    "initialPositionInStream",
    "initialPositionInStreamExtended",
    "regionName",
    "kinesisEndpoint",
    "dynamoDBEndpoint",
    "failoverTimeMillis",
    "maxRecords",
    "idleTimeBetweenReadsInMillis",
    "shardSyncIntervalMillis",
    "parentShardPollIntervalMillis",
    "maxLeasesForWorker",
    "maxLeasesToStealAtOneTime",
    "cleanupLeasesUponShardCompletion",
    "retrievalMode",
    "shutdownGraceMillis",
    "timeoutInSeconds",
    "metricsLevel",
    "metricsEnabledDimensions",
    "metricsBufferTimeMillis",
    "metricsMaxQueueSize",
    "cloudWatchEndpoint",
];

fn bad(key: &str, value: &str, reason: impl Into<String>) -> PropertiesError {
    PropertiesError::BadValue {
        key: key.to_owned(),
        value: value.to_owned(),
        reason: reason.into(),
    }
}

struct Reader<'a>(&'a BTreeMap<String, String>);

impl Reader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    fn number(&self, key: &str, min: u64, max: u64) -> Result<Option<u64>, PropertiesError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        let n: u64 = v.parse().map_err(|_| bad(key, v, "expected a whole number"))?;
        if !(min..=max).contains(&n) {
            return Err(bad(key, v, format!("expected a number from {min} to {max}")));
        }
        Ok(Some(n))
    }

    fn millis(&self, key: &str, min: u64) -> Result<Option<Duration>, PropertiesError> {
        Ok(self.number(key, min, u64::MAX)?.map(Duration::from_millis))
    }

    fn count(&self, key: &str) -> Result<Option<usize>, PropertiesError> {
        Ok(self
            .number(key, 1, u64::MAX)?
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)))
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, PropertiesError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        match v.to_ascii_lowercase().as_str() {
            "true" => Ok(Some(true)),
            "false" => Ok(Some(false)),
            _ => Err(bad(key, v, "expected true or false")),
        }
    }

    fn endpoint(&self, key: &str) -> Result<Option<String>, PropertiesError> {
        let Some(v) = self.get(key) else { return Ok(None) };
        if v.contains(char::is_whitespace) {
            return Err(bad(key, v, "expected a URL or host name"));
        }
        Ok(Some(if v.contains("://") {
            v.to_owned()
        } else {
            format!("https://{v}")
        }))
    }
}

impl MultiLangConfig {
    /// Reads the settings from parsed properties.
    pub fn from_properties(props: &BTreeMap<String, String>) -> Result<Self, PropertiesError> {
        let r = Reader(props);
        let executable: Vec<String> = r
            .get("executableName")
            .ok_or(PropertiesError::Missing("executableName"))?
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let stream_arn = match r.get("streamArn") {
            None => None,
            Some(arn) => Some(arn.parse::<kcl_core::stream_arn::StreamArn>().map_err(|_| {
                bad(
                    "streamArn",
                    arn,
                    "expected arn:aws:kinesis:<region>:<account>:stream/<name>",
                )
            })?),
        };
        let region = r.get("regionName").map(str::to_owned);
        if let (Some(arn), Some(region)) = (&stream_arn, &region) {
            if arn.region != *region {
                return Err(PropertiesError::ArnMismatch {
                    what: "region",
                    in_arn: arn.region.clone(),
                    key: "regionName",
                    value: region.clone(),
                });
            }
        }
        let stream_name = match (r.get("streamName"), &stream_arn) {
            (Some(name), Some(arn)) if *name != arn.stream_name => {
                return Err(PropertiesError::ArnMismatch {
                    what: "stream",
                    in_arn: arn.stream_name.clone(),
                    key: "streamName",
                    value: name.to_owned(),
                })
            }
            (Some(name), _) => name.to_owned(),
            (None, Some(arn)) => arn.stream_name.clone(),
            (None, None) => return Err(PropertiesError::Missing("streamName")),
        };
        let application_name = r
            .get("applicationName")
            .ok_or(PropertiesError::Missing("applicationName"))?
            .to_owned();
        if application_name.len() > 255 {
            return Err(bad(
                "applicationName",
                &application_name,
                "a DynamoDB table name has at most 255 characters",
            ));
        }
        let initial_position = match r.get("initialPositionInStream").map(str::to_ascii_uppercase) {
            None => InitialPosition::Latest,
            Some(p) if p == "LATEST" => InitialPosition::Latest,
            Some(p) if p == "TRIM_HORIZON" => InitialPosition::TrimHorizon,
            Some(p) if p == "AT_TIMESTAMP" => {
                let millis = r
                    .number("initialPositionInStreamExtended", 0, u64::MAX)?
                    .ok_or(PropertiesError::Missing("initialPositionInStreamExtended"))?;
                InitialPosition::AtTimestamp(UNIX_EPOCH + Duration::from_millis(millis))
            }
            Some(_) => {
                let v = r.get("initialPositionInStream").unwrap_or_default();
                return Err(bad(
                    "initialPositionInStream",
                    v,
                    "expected TRIM_HORIZON, LATEST or AT_TIMESTAMP",
                ));
            }
        };
        let max_records = r.number("maxRecords", 1, 10_000)?.map(|n| n as usize);
        let idle_time_between_reads = r.millis("idleTimeBetweenReadsInMillis", 1)?;
        let polling_set = max_records.is_some() || idle_time_between_reads.is_some();
        let retrieval = match r.get("retrievalMode").map(str::to_ascii_uppercase).as_deref() {
            Some("POLLING") => RetrievalMode::Polling,
            Some("FANOUT") => RetrievalMode::FanOut(FanOutConfig::default()),
            None | Some("DEFAULT") if polling_set => RetrievalMode::Polling,
            None | Some("DEFAULT") => RetrievalMode::FanOut(FanOutConfig::default()),
            Some(_) => {
                let v = r.get("retrievalMode").unwrap_or_default();
                return Err(bad("retrievalMode", v, "expected POLLING, FANOUT or DEFAULT"));
            }
        };
        let failover_time = r.millis("failoverTimeMillis", 1)?;
        if failover_time.is_some_and(|f| f < Duration::from_millis(300)) {
            let v = r.get("failoverTimeMillis").unwrap_or_default();
            return Err(bad("failoverTimeMillis", v, "expected at least 300"));
        }
        let shutdown_grace = r.millis("shutdownGraceMillis", 0)?.filter(|d| !d.is_zero());
        let timeout = r
            .number("timeoutInSeconds", 1, u64::MAX)?
            .map(Duration::from_secs);
        let metrics = Self::metrics(&r)?;
        // The Java 3.5 keys: bad values are refused as the Java KCL refuses them.
        r.number("leaseTableScanTotalSegments", 1, i32::MAX as u64)?;
        r.boolean("migrateAllEntitiesToLeaseTable")?;
        r.number("tableMigrationCompleteBakeTimeSeconds", 0, i64::MAX as u64)?;
        let notes = JAVA_35_NOTES
            .iter()
            .filter(|(key, _)| props.contains_key(*key))
            .map(|(key, note)| ((*key).to_owned(), *note))
            .collect();
        let mut ignored = Vec::new();
        let mut unknown = Vec::new();
        for key in props.keys() {
            if IGNORED.contains(&key.as_str()) {
                ignored.push(key.clone());
            } else if !KNOWN.contains(&key.as_str()) && !JAVA_35_NOTES.iter().any(|(k, _)| k == key) {
                unknown.push(key.clone());
            }
        }
        Ok(Self {
            executable,
            stream_name,
            stream_arn,
            application_name,
            worker_id: r.get("workerId").map(str::to_owned),
            initial_position,
            region,
            kinesis_endpoint: r.endpoint("kinesisEndpoint")?,
            dynamodb_endpoint: r.endpoint("dynamoDBEndpoint")?,
            failover_time,
            max_records,
            idle_time_between_reads,
            shard_sync_interval: r.millis("shardSyncIntervalMillis", 1)?,
            parent_shard_poll_interval: r.millis("parentShardPollIntervalMillis", 1)?,
            max_leases_for_worker: r.count("maxLeasesForWorker")?,
            max_leases_to_steal: r.count("maxLeasesToStealAtOneTime")?,
            cleanup_leases_upon_shard_completion: r.boolean("cleanupLeasesUponShardCompletion")?,
            retrieval,
            shutdown_grace,
            timeout,
            metrics,
            cloudwatch_endpoint: r.endpoint("cloudWatchEndpoint")?,
            ignored,
            notes,
            unknown,
        })
    }

    /// The CloudWatch settings of the `metrics*` keys (Java's defaults for the others).
    fn metrics(r: &Reader<'_>) -> Result<crate::metrics::CloudWatchSettings, PropertiesError> {
        use kcl_core::metrics::cloudwatch::{SHARD_ID, STREAM_ID, WORKER_IDENTIFIER};
        let mut settings = crate::metrics::CloudWatchSettings::default();
        if let Some(v) = r.get("metricsLevel") {
            settings.level = crate::metrics::parse_level(v)
                .map_err(|_| bad("metricsLevel", v, "expected NONE, SUMMARY or DETAILED"))?;
        }
        if let Some(v) = r.get("metricsEnabledDimensions") {
            let known = ["Operation", SHARD_ID, WORKER_IDENTIFIER, STREAM_ID];
            let mut dimensions = Vec::new();
            for d in v.split([',', '|']).map(str::trim).filter(|d| !d.is_empty()) {
                if !known.contains(&d) {
                    return Err(bad(
                        "metricsEnabledDimensions",
                        v,
                        format!("unknown dimension {d:?}; expected some of {}", known.join(", ")),
                    ));
                }
                dimensions.push(d.to_owned());
            }
            settings.dimensions = Some(dimensions);
        }
        if let Some(d) = r.millis("metricsBufferTimeMillis", 1)? {
            settings.buffer_time = d;
        }
        if let Some(n) = r.count("metricsMaxQueueSize")? {
            settings.max_queue_size = n;
        }
        Ok(settings)
    }

    /// Parses a properties file's text and reads the settings.
    pub fn parse(text: &str) -> Result<Self, PropertiesError> {
        Self::from_properties(&parse_properties(text)?)
    }
}

/// Milliseconds since the Unix epoch (0 before it), as the protocol and the properties use.
pub fn epoch_millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(text: &str) -> BTreeMap<String, String> {
        parse_properties(text).expect("parses")
    }

    #[test]
    fn separators_comments_and_blank_lines() {
        let p = props(
            "# comment\n! also a comment\n\n  a = 1\nb:2\nc 3\nd=\ne\n\tf  =  spaced value  \ng = x = y\n",
        );
        assert_eq!(p["a"], "1");
        assert_eq!(p["b"], "2");
        assert_eq!(p["c"], "3");
        assert_eq!(p["d"], "");
        assert_eq!(p["e"], "");
        assert_eq!(p["f"], "spaced value  ");
        assert_eq!(p["g"], "x = y");
        assert_eq!(p.len(), 7);
    }

    #[test]
    fn whitespace_then_separator_is_one_separator() {
        let p = props("key   :   value\nother\t= =v\n");
        assert_eq!(p["key"], "value");
        assert_eq!(p["other"], "=v");
    }

    #[test]
    fn continuation_lines_join_and_skip_leading_whitespace() {
        let p = props("executableName = python3 \\\n    app.py \\\n    --verbose\nnext = 1\n");
        assert_eq!(p["executableName"], "python3 app.py --verbose");
        assert_eq!(p["next"], "1");
        // An even number of backslashes is an escaped backslash, not a continuation.
        let p = props("path = C:\\\\\nx = 2\n");
        assert_eq!(p["path"], "C:\\");
        assert_eq!(p["x"], "2");
        // A continuation at the end of the file ends the value.
        assert_eq!(props("a = b\\")["a"], "b");
    }

    #[test]
    fn a_comment_does_not_continue_and_crlf_works() {
        let p = props("# comment \\\nkey = v\r\nk2 = w\rk3 = z");
        assert_eq!(p["key"], "v");
        assert_eq!(p["k2"], "w");
        assert_eq!(p["k3"], "z");
    }

    #[test]
    fn escapes_in_keys_and_values() {
        let p = props("my\\ key\\=x = a\\tb\\n\\u0041\\\\\\q\n");
        assert_eq!(p["my key=x"], "a\tb\nA\\q");
        assert_eq!(
            parse_properties("k = \\u00zz\n"),
            Err(PropertiesError::BadUnicodeEscape { line: 1 })
        );
    }

    #[test]
    fn later_keys_win() {
        assert_eq!(props("a=1\na=2\n")["a"], "2");
    }

    const MINIMAL: &str = "executableName = python3 app.py\nstreamName = s\napplicationName = app\n";

    #[test]
    fn minimal_config_has_java_defaults() {
        let c = MultiLangConfig::parse(MINIMAL).unwrap();
        assert_eq!(c.executable, ["python3", "app.py"]);
        assert_eq!(c.stream_name, "s");
        assert_eq!(c.application_name, "app");
        assert_eq!(c.initial_position, InitialPosition::Latest);
        // DEFAULT retrieval without polling keys is fan-out, as in the Java daemon.
        assert!(matches!(c.retrieval, RetrievalMode::FanOut(_)));
        assert!(c.ignored.is_empty() && c.unknown.is_empty());
    }

    /// The Java KCL 3.5's coordinator keys are accepted with a note each (not "unknown"), and
    /// their values are checked as the Java KCL checks them.
    #[test]
    fn java_35_properties_are_accepted_with_a_note_and_checked() {
        let text = format!(
            "{MINIMAL}leaseTableScanTotalSegments = 4\nmigrateAllEntitiesToLeaseTable = true\n\
             tableMigrationCompleteBakeTimeSeconds = 3600\n"
        );
        let c = MultiLangConfig::parse(&text).unwrap();
        assert!(c.unknown.is_empty(), "{:?}", c.unknown);
        let keys: Vec<&str> = c.notes.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "leaseTableScanTotalSegments",
                "migrateAllEntitiesToLeaseTable",
                "tableMigrationCompleteBakeTimeSeconds"
            ]
        );
        assert!(c.notes.iter().all(|(_, note)| !note.is_empty()));
        for bad in [
            "leaseTableScanTotalSegments = 0",
            "migrateAllEntitiesToLeaseTable = maybe",
            "tableMigrationCompleteBakeTimeSeconds = -1",
        ] {
            let text = format!("{MINIMAL}{bad}\n");
            assert!(
                matches!(
                    MultiLangConfig::parse(&text),
                    Err(PropertiesError::BadValue { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn full_config() {
        let text = format!(
            "{MINIMAL}workerId = w1\ninitialPositionInStream = AT_TIMESTAMP\n\
             initialPositionInStreamExtended = 1700000000123\nregionName = eu-west-1\n\
             kinesisEndpoint = http://127.0.0.1:4567\ndynamoDBEndpoint = dynamodb.eu-west-1.amazonaws.com\n\
             failoverTimeMillis = 3000\nmaxRecords = 500\nidleTimeBetweenReadsInMillis = 250\n\
             shardSyncIntervalMillis = 5000\nmaxLeasesForWorker = 7\nshutdownGraceMillis = 20000\n\
             timeoutInSeconds = 9\nAwsCredentialsProvider = DefaultCredentialsProvider\n\
             processingLanguage = python/3\nsomethingElse = 1\ncleanupLeasesUponShardCompletion = false\n"
        );
        let c = MultiLangConfig::parse(&text).unwrap();
        assert_eq!(c.worker_id.as_deref(), Some("w1"));
        assert_eq!(
            c.initial_position,
            InitialPosition::AtTimestamp(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
        );
        assert_eq!(c.region.as_deref(), Some("eu-west-1"));
        assert_eq!(c.kinesis_endpoint.as_deref(), Some("http://127.0.0.1:4567"));
        assert_eq!(
            c.dynamodb_endpoint.as_deref(),
            Some("https://dynamodb.eu-west-1.amazonaws.com")
        );
        assert_eq!(c.failover_time, Some(Duration::from_secs(3)));
        assert_eq!(c.max_records, Some(500));
        assert_eq!(c.idle_time_between_reads, Some(Duration::from_millis(250)));
        assert_eq!(c.shard_sync_interval, Some(Duration::from_secs(5)));
        assert_eq!(c.max_leases_for_worker, Some(7));
        assert_eq!(c.shutdown_grace, Some(Duration::from_secs(20)));
        assert_eq!(c.timeout, Some(Duration::from_secs(9)));
        assert_eq!(c.cleanup_leases_upon_shard_completion, Some(false));
        // A polling key makes DEFAULT retrieval polling.
        assert_eq!(c.retrieval, RetrievalMode::Polling);
        assert_eq!(c.ignored, ["AwsCredentialsProvider", "processingLanguage"]);
        assert_eq!(c.unknown, ["somethingElse"]);
    }

    #[test]
    fn retrieval_mode_and_stream_arn() {
        let c = MultiLangConfig::parse(&format!("{MINIMAL}retrievalMode = polling\n")).unwrap();
        assert_eq!(c.retrieval, RetrievalMode::Polling);
        let c =
            MultiLangConfig::parse(&format!("{MINIMAL}maxRecords = 10\nretrievalMode = FANOUT\n")).unwrap();
        assert!(matches!(c.retrieval, RetrievalMode::FanOut(_)));
        let c = MultiLangConfig::parse(
            "executableName = x\napplicationName = a\nstreamArn = arn:aws:kinesis:us-east-1:123456789012:stream/orders\n",
        )
        .unwrap();
        assert_eq!(c.stream_name, "orders");
        let arn = c.stream_arn.expect("the ARN is kept");
        assert_eq!(
            (arn.account_id.as_str(), arn.region.as_str()),
            ("123456789012", "us-east-1")
        );
    }

    /// kclpy's own sample (`samples/sample.properties`): the stream by name and by an ARN of
    /// another region.
    #[test]
    fn metrics_properties_set_up_cloudwatch_as_the_java_daemon_does() {
        use kcl_core::metrics::cloudwatch::MetricsLevel;
        let c = MultiLangConfig::parse(MINIMAL).unwrap();
        assert_eq!(c.metrics, crate::metrics::CloudWatchSettings::default());
        assert_eq!(
            c.metrics.level,
            MetricsLevel::Detailed,
            "published by default, as in Java"
        );
        let c = MultiLangConfig::parse(&format!(
            "{MINIMAL}metricsLevel = summary\nmetricsEnabledDimensions = Operation, ShardId,WorkerIdentifier\n\
             metricsBufferTimeMillis = 2500\nmetricsMaxQueueSize = 500\ncloudWatchEndpoint = http://127.0.0.1:4569\n"
        ))
        .unwrap();
        assert_eq!(c.metrics.level, MetricsLevel::Summary);
        assert_eq!(
            c.metrics.dimensions.as_deref(),
            Some(
                &[
                    "Operation".to_owned(),
                    "ShardId".to_owned(),
                    "WorkerIdentifier".to_owned()
                ][..]
            )
        );
        assert_eq!(c.metrics.buffer_time, Duration::from_millis(2500));
        assert_eq!(c.metrics.max_queue_size, 500);
        assert_eq!(c.cloudwatch_endpoint.as_deref(), Some("http://127.0.0.1:4569"));
        assert!(c.ignored.is_empty(), "{:?}", c.ignored);
        let none = MultiLangConfig::parse(&format!("{MINIMAL}metricsLevel = NONE\n")).unwrap();
        assert_eq!(none.metrics.level, MetricsLevel::None);
        for bad in [
            "metricsLevel = LOUD",
            "metricsEnabledDimensions = Region",
            "metricsBufferTimeMillis = 0",
        ] {
            let e = MultiLangConfig::parse(&format!("{MINIMAL}{bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(bad.split(' ').next().unwrap()), "{bad}: {e}");
        }
    }

    const KCLPY_SAMPLE: &str = "executableName = sample_kclpy_app.py\nstreamName = kclpysample\n\
        streamArn = arn:aws:kinesis:us-east-5:000000000000:stream/kclpysample\n\
        applicationName = PythonKCLSample\nregionName = us-east-1\n";

    #[test]
    fn a_stream_arn_of_another_region_is_refused_with_both_values() {
        let err = MultiLangConfig::parse(KCLPY_SAMPLE).unwrap_err();
        assert_eq!(
            err.to_string(),
            "streamArn names region us-east-5 but regionName is us-east-1: remove streamArn or make the two agree"
        );
        // Without the ARN line the sample is fine; so it is with the ARN's region.
        let without = KCLPY_SAMPLE
            .lines()
            .filter(|l| !l.starts_with("streamArn"))
            .collect::<Vec<_>>()
            .join("\n");
        let c = MultiLangConfig::parse(&without).unwrap();
        assert_eq!(
            (c.stream_name.as_str(), c.region.as_deref()),
            ("kclpysample", Some("us-east-1"))
        );
        let c = MultiLangConfig::parse(&KCLPY_SAMPLE.replace("us-east-1", "us-east-5")).unwrap();
        assert_eq!(c.region.as_deref(), Some("us-east-5"));
        assert!(c.stream_arn.is_some());
        // No regionName: the ARN's region is the one used.
        let c = MultiLangConfig::parse(&KCLPY_SAMPLE.replace("regionName = us-east-1\n", "")).unwrap();
        assert_eq!(c.region, None);
        assert_eq!(c.stream_arn.map(|a| a.region).as_deref(), Some("us-east-5"));
    }

    #[test]
    fn a_stream_arn_of_another_stream_is_refused_with_both_values() {
        let err = MultiLangConfig::parse(
            "executableName = x\napplicationName = a\nstreamName = other\nstreamArn = arn:aws:kinesis:us-east-1:123456789012:stream/orders\n",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "streamArn names stream orders but streamName is other: remove streamArn or make the two agree"
        );
        // The region is checked first: both are wrong in the sample with another stream name.
        let err = MultiLangConfig::parse(&KCLPY_SAMPLE.replace("streamName = kclpysample", "streamName = x"))
            .unwrap_err();
        assert!(
            matches!(err, PropertiesError::ArnMismatch { what: "region", .. }),
            "{err}"
        );
    }

    #[test]
    fn missing_and_bad_values_are_errors() {
        let missing = |text: &str| MultiLangConfig::parse(text).unwrap_err();
        assert_eq!(
            missing("streamName = s\napplicationName = a\n"),
            PropertiesError::Missing("executableName")
        );
        assert_eq!(
            missing("executableName = x\napplicationName = a\n"),
            PropertiesError::Missing("streamName")
        );
        assert_eq!(
            missing("executableName = x\nstreamName = s\napplicationName =   \n"),
            PropertiesError::Missing("applicationName")
        );
        assert_eq!(
            missing(&format!("{MINIMAL}initialPositionInStream = AT_TIMESTAMP\n")),
            PropertiesError::Missing("initialPositionInStreamExtended")
        );
        for bad_line in [
            "initialPositionInStream = OLDEST",
            "failoverTimeMillis = ten",
            "failoverTimeMillis = 10",
            "maxRecords = 0",
            "maxRecords = 10001",
            "retrievalMode = PUSH",
            "maxLeasesForWorker = -1",
            "cleanupLeasesUponShardCompletion = maybe",
            "streamArn = arn:aws:s3:::bucket",
            "kinesisEndpoint = http://a b",
        ] {
            let text = if bad_line.starts_with("streamArn") {
                format!("executableName = x\napplicationName = a\n{bad_line}\n")
            } else {
                format!("{MINIMAL}{bad_line}\n")
            };
            let err = MultiLangConfig::parse(&text).unwrap_err();
            assert!(
                matches!(err, PropertiesError::BadValue { .. }),
                "{bad_line}: {err:?}"
            );
            // One line, naming the key.
            let msg = err.to_string();
            assert!(
                !msg.contains('\n') && msg.contains(bad_line.split(' ').next().unwrap()),
                "{msg}"
            );
        }
    }

    #[test]
    fn epoch_millis_of_times() {
        assert_eq!(epoch_millis(UNIX_EPOCH + Duration::from_millis(1234)), 1234);
        assert_eq!(epoch_millis(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
