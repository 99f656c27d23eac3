//! Interoperability with the real Java KCL 3.1.3, both ways, on one lease table, against the
//! emulators. The Java KCL runs as its MultiLangDaemon with the recording processor of
//! `tests/java-kcl/` (installed from PyPI on first use by `tests/java-kcl/java-kcl.sh`).
//!
//! The tests share one application (they run one at a time), because the Java KCL needs
//! minutes before its first record on a new application and seconds on an existing one: the
//! first test to run creates it and has the Java KCL run once on it (the warm-up); each test's
//! Java starts are then restarts. Each test puts its own records (data prefixed with the test's
//! tag) and checks them against the lease table's checkpoints as it finds them.
//!
//! 1. Java → Rust: the Java KCL consumes the stream and checkpoints (in one shard inside a KPL
//!    aggregate, in another before records it processed); it is stopped; our worker takes every
//!    lease and processes exactly the records after the Java checkpoints.
//! 2. Rust → Java: our worker checkpoints (inside an aggregate in one shard) and shuts down
//!    gracefully; the Java KCL continues from our checkpoints, nothing lost or replayed.
//! 3. Mixed fleet: a Java worker and one of ours on the table for a minute while records flow:
//!    nothing is lost; duplicates only in shards whose lease moved; our worker keeps running
//!    and leaves the Java KCL 3.x's extras (index, tables, attributes) alone.
//! 4. Rolling migration: ours joins with stealing off, the Java worker is stopped while records
//!    flow: nothing lost, nothing processed twice.
//!
//! Figures are printed (`cargo test -p kcl-tests --test java_interop -- --nocapture`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_kinesis::primitives::Blob;
use kcl_core::aggregation::{aggregate, effective_hash_key};
use kcl_core::{
    ExtendedSequenceNumber, InitialPosition, InitializeInput, KinesisBackend, LeaseLostInput,
    ProcessRecordsInput, ProcessorError, RecordProcessor, Scheduler, SchedulerHandle, Shard,
    ShutdownRequestedInput, StreamBackend,
};
use kcl_lease::dynamodb::schema::LEASE_OWNER_INDEX;
use kcl_lease::{DynamoDbLeaseStore, LeaseStore};
use kcl_tests::aws::{backends, create_stream, sdk, unique};
use kcl_tests::emulators::Endpoints;
use kcl_tests::init_tracing;
use kcl_tests::java_kcl::{self, JavaConfig, JavaDaemon, JavaEvent};
use tokio::sync::{Mutex, MutexGuard, OnceCell};
use tokio::time::Instant;

const SHARDS: usize = 4;
/// The Java KCL's failover time (`failoverTimeMillis`).
const JAVA_FAILOVER: Duration = Duration::from_secs(5);
/// Ours.
const RUST_FAILOVER: Duration = Duration::from_secs(5);
/// First start of the Java KCL on a new application: minutes.
const JAVA_FIRST_START: Duration = Duration::from_secs(480);
const LIMIT: Duration = Duration::from_secs(120);
const MIXED_FOR: Duration = Duration::from_secs(60);
/// When our worker joins the Java worker in the mixed fleet.
const JOIN_AFTER: Duration = Duration::from_secs(10);
/// How long records flow in the rolling migration.
const ROLLING_FOR: Duration = Duration::from_secs(30);
/// The data suffix that makes either processor checkpoint AT that record and no further.
const HOLD: &str = "#hold";
/// An attribute neither KCL knows, put on every lease row: it must survive everything.
const CANARY: &str = "interopCanary";

/// One record put on the stream (one user record of an aggregate counts as one).
#[derive(Clone, Debug)]
struct Put {
    shard: String,
    seq: String,
    sub: u64,
    data: String,
}

impl Put {
    fn position(&self) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::from_parts(&self.seq, self.sub).expect("sequence number")
    }
}

/// One record processed by our worker.
#[derive(Clone, Debug)]
struct Got {
    worker: String,
    shard: String,
    data: String,
}

/// What our processors saw.
#[derive(Clone, Default)]
struct RustLog {
    records: Arc<std::sync::Mutex<Vec<Got>>>,
    /// (worker, shard, checkpoint it started from), per processor start.
    initialized: Arc<std::sync::Mutex<Vec<(String, String, ExtendedSequenceNumber)>>>,
    lease_lost: Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl RustLog {
    fn records(&self) -> Vec<Got> {
        self.records.lock().unwrap().clone()
    }
}

/// Records what it processes and checkpoints after every batch at its last record, at shard end
/// and at shutdown, except in a shard that delivered a record whose data ends with [`HOLD`]:
/// there it checkpoints AT that record (inside an aggregate if it is in one) and never again.
/// The same rule as the Java side's `tests/java-kcl/processor.py`.
struct InteropProcessor {
    worker: String,
    shard: String,
    log: RustLog,
    held: bool,
}

#[async_trait]
impl RecordProcessor for InteropProcessor {
    async fn initialize(&mut self, input: InitializeInput) -> Result<(), ProcessorError> {
        self.log.initialized.lock().unwrap().push((
            self.worker.clone(),
            self.shard.clone(),
            input.checkpoint,
        ));
        Ok(())
    }

    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
        let mut hold = None;
        {
            let mut records = self.log.records.lock().unwrap();
            for r in input.records {
                let data = std::str::from_utf8(&r.data)?.to_owned();
                if !self.held && hold.is_none() && data.ends_with(HOLD) {
                    hold = Some((r.sequence_number.to_string(), r.sub_sequence_number));
                }
                records.push(Got {
                    worker: self.worker.clone(),
                    shard: self.shard.clone(),
                    data,
                });
            }
        }
        if self.held {
            return Ok(());
        }
        match hold {
            Some((seq, sub)) => {
                self.held = true;
                input.checkpointer.checkpoint_at(&seq, sub).await?;
            }
            None => input.checkpointer.checkpoint().await?,
        }
        Ok(())
    }

    async fn shutdown_requested(&mut self, input: ShutdownRequestedInput<'_>) -> Result<(), ProcessorError> {
        if !self.held {
            input.checkpointer.checkpoint().await?;
        }
        Ok(())
    }

    async fn lease_lost(&mut self, input: LeaseLostInput) {
        self.log
            .lease_lost
            .lock()
            .unwrap()
            .push((self.worker.clone(), input.shard_id));
    }
}

/// Our worker; `max_leases_to_steal` 0 switches stealing off.
#[allow(clippy::too_many_arguments)]
fn rust_worker(
    app: &str,
    stream: &str,
    worker: &str,
    backend: &KinesisBackend,
    store: &DynamoDbLeaseStore,
    log: &RustLog,
    max_leases_to_steal: usize,
    failover: Duration,
) -> SchedulerHandle {
    let (w, log) = (worker.to_owned(), log.clone());
    Scheduler::builder(app, stream)
        .max_leases_to_steal(max_leases_to_steal)
        .worker_id(worker.to_owned())
        .backend(backend.clone())
        .lease_store(store.clone())
        .initial_position(InitialPosition::TrimHorizon)
        .failover_time(failover)
        .polling_interval(Duration::from_millis(200))
        .min_read_interval(Duration::from_millis(100))
        .shard_sync_interval(Duration::from_secs(5))
        .parent_poll_interval(Duration::from_millis(500))
        .processor_factory(move |shard: &str| InteropProcessor {
            worker: w.clone(),
            shard: shard.to_owned(),
            log: log.clone(),
            held: false,
        })
        .build()
        .expect("config")
        .spawn()
}

/// The stream, with a partition key that routes to each shard.
struct Producer {
    client: aws_sdk_kinesis::Client,
    stream: String,
    shards: Vec<Shard>,
    key_of_shard: Vec<String>,
    puts: Vec<Put>,
}

impl Producer {
    async fn new(client: aws_sdk_kinesis::Client, backend: &KinesisBackend, stream: &str) -> Self {
        let mut shards = backend.list_shards(stream).await.expect("ListShards");
        shards.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
        assert_eq!(shards.len(), SHARDS);
        let key_of_shard = shards
            .iter()
            .map(|s| {
                (0..)
                    .map(|i| format!("pk-{i}"))
                    .find(|k| {
                        s.hash_key_range
                            .contains(effective_hash_key(k, None).expect("hash"))
                    })
                    .expect("a key for every shard")
            })
            .collect();
        Self {
            client,
            stream: stream.to_owned(),
            shards,
            key_of_shard,
            puts: Vec::new(),
        }
    }

    fn shard_id(&self, shard: usize) -> &str {
        &self.shards[shard].shard_id
    }

    async fn put(&mut self, shard: usize, data: String) {
        let out = self
            .client
            .put_record()
            .stream_name(&self.stream)
            .partition_key(&self.key_of_shard[shard])
            .data(Blob::new(data.as_bytes()))
            .send()
            .await
            .expect("PutRecord");
        assert_eq!(out.shard_id(), self.shard_id(shard), "routing");
        self.puts.push(Put {
            shard: out.shard_id().to_owned(),
            seq: out.sequence_number().to_owned(),
            sub: 0,
            data,
        });
    }

    /// `n` plain records in every shard, data `{prefix}-{shard}-{i}`.
    async fn wave(&mut self, prefix: &str, n: usize) {
        for i in 0..n {
            for s in 0..SHARDS {
                self.put(s, format!("{prefix}-{s}-{i}")).await;
            }
        }
    }

    /// One KPL aggregate of `n` user records (data `{prefix}-{i}`, the `hold`-th one marked
    /// with [`HOLD`]) in `shard`; returns its sequence number.
    async fn aggregate(&mut self, shard: usize, prefix: &str, n: usize, hold: usize) -> String {
        let key = self.key_of_shard[shard].clone();
        let datas: Vec<String> = (0..n)
            .map(|i| {
                if i == hold {
                    format!("{prefix}-{i}{HOLD}")
                } else {
                    format!("{prefix}-{i}")
                }
            })
            .collect();
        let users: Vec<(&str, Option<&str>, &[u8])> =
            datas.iter().map(|d| (key.as_str(), None, d.as_bytes())).collect();
        let out = self
            .client
            .put_record()
            .stream_name(&self.stream)
            .partition_key(&key)
            .data(Blob::new(aggregate(&users).to_vec()))
            .send()
            .await
            .expect("PutRecord (aggregate)");
        assert_eq!(out.shard_id(), self.shard_id(shard), "routing");
        let seq = out.sequence_number().to_owned();
        for (i, data) in datas.into_iter().enumerate() {
            self.puts.push(Put {
                shard: out.shard_id().to_owned(),
                seq: seq.clone(),
                sub: i as u64,
                data,
            });
        }
        seq
    }

    fn all_data(&self) -> BTreeSet<String> {
        self.puts.iter().map(|p| p.data.clone()).collect()
    }

    /// The records after the checkpoints (what the next owner must process, exactly).
    fn after(&self, checkpoints: &BTreeMap<String, ExtendedSequenceNumber>) -> BTreeSet<String> {
        self.puts
            .iter()
            .filter(|p| p.position() > checkpoints[&p.shard])
            .map(|p| p.data.clone())
            .collect()
    }

    /// The last record put in each shard.
    fn last_in(&self, shard: &str) -> ExtendedSequenceNumber {
        self.puts
            .iter()
            .filter(|p| p.shard == shard)
            .map(Put::position)
            .max()
            .expect("records in the shard")
    }

    fn position_of(&self, data: &str) -> (String, ExtendedSequenceNumber) {
        let p = self.puts.iter().find(|p| p.data == data).expect("put");
        (p.shard.clone(), p.position())
    }
}

/// Checkpoints, short: `shard-suffix=sequence/sub`.
fn show(checkpoints: &BTreeMap<String, ExtendedSequenceNumber>) -> String {
    checkpoints
        .iter()
        .map(|(shard, cp)| {
            format!(
                "{}={}/{}",
                shard.trim_start_matches("shardId-"),
                cp.checkpoint_str(),
                cp.sub_sequence()
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

async fn checkpoints(store: &DynamoDbLeaseStore) -> BTreeMap<String, ExtendedSequenceNumber> {
    store
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|l| (l.lease_key, l.checkpoint))
        .collect()
}

async fn owners(store: &DynamoDbLeaseStore) -> BTreeMap<String, Option<String>> {
    store
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|l| (l.lease_key, l.lease_owner))
        .collect()
}

async fn raw_rows(client: &aws_sdk_dynamodb::Client, table: &str) -> Vec<HashMap<String, AttributeValue>> {
    client
        .scan()
        .table_name(table)
        .consistent_read(true)
        .send()
        .await
        .expect("Scan")
        .items
        .unwrap_or_default()
}

/// Names of the tables, the lease table's index names.
async fn extras(client: &aws_sdk_dynamodb::Client, app: &str) -> (BTreeSet<String>, Vec<String>) {
    let tables = client
        .list_tables()
        .send()
        .await
        .expect("ListTables")
        .table_names
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.starts_with(app))
        .collect();
    let indexes = client
        .describe_table()
        .table_name(app)
        .send()
        .await
        .expect("DescribeTable")
        .table
        .and_then(|t| t.global_secondary_indexes)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| i.index_name)
        .collect();
    (tables, indexes)
}

fn java_data(daemon: &JavaDaemon) -> Vec<String> {
    daemon.records().into_iter().map(|(_, _, _, d)| d).collect()
}

fn counts<'a>(items: impl IntoIterator<Item = &'a String>) -> BTreeMap<&'a String, usize> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i).or_default() += 1;
    }
    m
}

/// Waits until `cond` holds (polling every 200 ms); on time-out panics with `what` and the tail
/// of the Java KCL's log.
async fn wait_for(limit: Duration, what: &str, java: Option<&JavaDaemon>, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() >= deadline {
            let log = java.map(|j| j.log_tail(80)).unwrap_or_default();
            panic!("timed out after {limit:?} waiting for: {what}\n--- Java KCL log tail ---\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_for_async<F, Fut>(limit: Duration, what: &str, java: Option<&JavaDaemon>, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        if Instant::now() >= deadline {
            let log = java.map(|j| j.log_tail(80)).unwrap_or_default();
            panic!("timed out after {limit:?} waiting for: {what}\n--- Java KCL log tail ---\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn run_dir(app: &str, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("java-kcl")
        .join(".run")
        .join(app)
        .join(name)
}

/// The application every test of this file uses: created once, and run once by the Java KCL
/// (its slow first start), so that each test's Java starts are restarts.
struct Shared {
    app: String,
    stream: String,
}

static SHARED: OnceCell<Shared> = OnceCell::const_new();
/// The tests share the application, so they run one at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// One test's view of the shared application. SDK clients are made per test: they must not
/// outlive the test's runtime.
struct Ctx {
    app: String,
    stream: String,
    endpoints: &'static Endpoints,
    dynamodb: aws_sdk_dynamodb::Client,
    backend: KinesisBackend,
    store: DynamoDbLeaseStore,
    producer: Producer,
}

impl Ctx {
    /// Waits for the other tests, creates and warms up the application if no test did yet.
    async fn acquire() -> (MutexGuard<'static, ()>, Self) {
        init_tracing();
        let guard = SERIAL.lock().await;
        let shared = SHARED.get_or_init(warm_up).await;
        let (sdk, endpoints) = sdk().await;
        let backend = KinesisBackend::from_conf(&sdk);
        let store = DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::new(&sdk), &shared.app);
        let producer = Producer::new(aws_sdk_kinesis::Client::new(&sdk), &backend, &shared.stream).await;
        let ctx = Self {
            app: shared.app.clone(),
            stream: shared.stream.clone(),
            endpoints,
            dynamodb: aws_sdk_dynamodb::Client::new(&sdk),
            backend,
            store,
            producer,
        };
        (guard, ctx)
    }

    fn java(&self, worker: &str, run: &str) -> JavaDaemon {
        let config = JavaConfig {
            application: self.app.clone(),
            stream: self.stream.clone(),
            worker: worker.to_owned(),
            failover: JAVA_FAILOVER,
            extra_properties: Vec::new(),
        };
        JavaDaemon::start(&config, self.endpoints, &run_dir(&self.app, run))
    }

    fn rust(&self, worker: &str, log: &RustLog) -> SchedulerHandle {
        self.rust_stealing(worker, log, 1, RUST_FAILOVER)
    }

    fn rust_stealing(
        &self,
        worker: &str,
        log: &RustLog,
        max_leases_to_steal: usize,
        failover: Duration,
    ) -> SchedulerHandle {
        rust_worker(
            &self.app,
            &self.stream,
            worker,
            &self.backend,
            &self.store,
            log,
            max_leases_to_steal,
            failover,
        )
    }
}

/// Installs the Java KCL, creates the stream and (with our `ensure_table`, so with the 3.x
/// index) the lease table, runs the Java KCL until it has processed a record in every shard and
/// checkpointed, and stops it. Puts a canary attribute on every lease row.
async fn warm_up() -> Shared {
    let install = java_kcl::install();
    let (sdk, endpoints) = sdk().await;
    let (app, stream) = (unique("java-interop-app"), unique("java-interop"));
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    create_stream(&kinesis, &stream, SHARDS as i32).await;
    let (backend, store) = backends(&sdk, &app).await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let (_, indexes) = extras(&dynamodb, &app).await;
    assert_eq!(indexes, [LEASE_OWNER_INDEX], "ensure_table creates the 3.x index");
    let mut producer = Producer::new(kinesis, &backend, &stream).await;
    producer.wave("warm-up", 1).await;
    let want: BTreeMap<String, ExtendedSequenceNumber> = producer
        .shards
        .iter()
        .map(|s| (s.shard_id.clone(), producer.last_in(&s.shard_id)))
        .collect();

    let started = Instant::now();
    let config = JavaConfig {
        application: app.clone(),
        stream: stream.clone(),
        worker: "java-1".into(),
        failover: JAVA_FAILOVER,
        extra_properties: Vec::new(),
    };
    let mut java = JavaDaemon::start(&config, endpoints, &run_dir(&app, "warm-up"));
    wait_for(
        JAVA_FIRST_START,
        "the Java KCL's first record",
        Some(&java),
        || !java.records().is_empty(),
    )
    .await;
    let first_record = started.elapsed();
    wait_for_async(
        LIMIT,
        "the Java KCL's checkpoints at every record",
        Some(&java),
        || {
            let (store, want) = (store.clone(), want.clone());
            async move { checkpoints(&store).await == want }
        },
    )
    .await;
    let stop = java.stop();
    let (tables, indexes) = extras(&dynamodb, &app).await;
    for t in ["CoordinatorState", "WorkerMetricStats"] {
        assert!(tables.contains(&format!("{app}-{t}")), "{t} table: {tables:?}");
    }
    let attributes: BTreeSet<String> = raw_rows(&dynamodb, &app)
        .await
        .into_iter()
        .flat_map(|r| r.into_keys())
        .collect();
    for shard in producer.shards.iter().map(|s| s.shard_id.clone()) {
        dynamodb
            .update_item()
            .table_name(&app)
            .key("leaseKey", AttributeValue::S(shard.clone()))
            .update_expression("SET #x = :x")
            .expression_attribute_names("#x", CANARY)
            .expression_attribute_values(":x", AttributeValue::S(format!("left alone {shard}")))
            .send()
            .await
            .expect("UpdateItem");
    }
    println!(
        "[java-interop] warm-up: Java KCL installed/checked in {install:.1?}; its first start on a new \
         application (lease table created by us): first record after {first_record:.1?}, graceful stop \
         {stop:.1?}; tables {tables:?}, lease table indexes {indexes:?}, lease row attributes {attributes:?}"
    );
    Shared { app, stream }
}

/// The records of this test (their data starts with `prefix`).
fn only(prefix: &str, data: impl IntoIterator<Item = String>) -> Vec<String> {
    data.into_iter().filter(|d| d.starts_with(prefix)).collect()
}

/// Java → Rust: the Java KCL consumes and checkpoints (inside a KPL aggregate in shard 0, before
/// records it processed in shard 1, at the end elsewhere) and stops; our worker takes every lease
/// and processes exactly the records after the Java checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_to_rust_resumes_exactly_after_the_java_checkpoints() {
    let (_serial, mut ctx) = Ctx::acquire().await;
    let p = &mut ctx.producer;
    p.wave("j2r-a", 10).await;
    let agg_seq = p.aggregate(0, "j2r-agg", 10, 4).await;
    p.put(1, format!("j2r-hold{HOLD}")).await;
    p.wave("j2r-a2", 5).await;
    let before_java = p.all_data();

    let started = Instant::now();
    let mut java = ctx.java("java-1", "j2r");
    let p = &ctx.producer;
    wait_for(LIMIT, "the Java KCL processed every record", Some(&java), || {
        only("j2r-", java_data(&java))
            .into_iter()
            .collect::<BTreeSet<_>>()
            == before_java
    })
    .await;
    let all_processed = started.elapsed();
    let (s0, s1) = (p.shard_id(0).to_owned(), p.shard_id(1).to_owned());
    let hold0 = ExtendedSequenceNumber::from_parts(&agg_seq, 4).unwrap();
    let hold1 = p.position_of(&format!("j2r-hold{HOLD}")).1;
    let mut want: BTreeMap<String, ExtendedSequenceNumber> = p
        .shards
        .iter()
        .map(|s| (s.shard_id.clone(), p.last_in(&s.shard_id)))
        .collect();
    want.insert(s0.clone(), hold0.clone());
    want.insert(s1.clone(), hold1.clone());
    let store = ctx.store.clone();
    wait_for_async(
        LIMIT,
        "the Java checkpoints in the lease table",
        Some(&java),
        || {
            let (store, want) = (store.clone(), want.clone());
            async move { checkpoints(&store).await == want }
        },
    )
    .await;
    let stop = java.stop();
    let java_stopped = Instant::now();
    let owners_after_java = owners(&ctx.store).await;

    let c1 = checkpoints(&ctx.store).await;
    let p = &mut ctx.producer;
    p.wave("j2r-b", 5).await;
    let expected = p.after(&c1);
    let java_seen: BTreeSet<String> = only("j2r-", java_data(&java)).into_iter().collect();
    let beyond_java_checkpoint = expected.intersection(&java_seen).count();

    let log = RustLog::default();
    let t0 = Instant::now();
    let rust = ctx.rust("rust-1", &log);
    wait_for(LIMIT, "our worker holds every lease", None, || {
        rust.held_leases().len() == SHARDS
    })
    .await;
    let all_leases = java_stopped.elapsed();
    wait_for(LIMIT, "our worker's first record", None, || {
        !log.records().is_empty()
    })
    .await;
    let first = java_stopped.elapsed();
    wait_for(
        LIMIT,
        "our worker processed every record after the Java checkpoints",
        None,
        || expected.is_subset(&log.records().into_iter().map(|g| g.data).collect()),
    )
    .await;
    let done = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await; // anything extra would show up now
    let t = Instant::now();
    rust.shutdown().await.expect("graceful shutdown");
    let shutdown = t.elapsed();

    let got: Vec<String> = log.records().into_iter().map(|g| g.data).collect();
    let got_set: BTreeSet<String> = got.iter().cloned().collect();
    let replayed: Vec<&String> = got_set.difference(&expected).collect();
    let lost: Vec<&String> = expected.difference(&got_set).collect();
    let duplicates = got.len() - got_set.len();
    let agg_got: Vec<String> = only("j2r-agg-", got.clone());
    println!(
        "[java-interop] Java -> Rust: {} records put; Java processed {} in {all_processed:.1?} (a restart), \
         checkpointed {}, stopped gracefully in {stop:.1?} leaving the owners {owners_after_java:?}; ours \
         processed {} (expected exactly {}): replayed {}, lost {}, duplicates {duplicates}; {} of them Java \
         had processed without checkpointing (by design); hand-over: every lease {all_leases:.1?} and first \
         record {first:.1?} after the Java KCL stopped, all records {done:.1?} after our start; our \
         graceful shutdown {shutdown:.1?}",
        ctx.producer.puts.len(),
        java_seen.len(),
        show(&c1),
        got.len(),
        expected.len(),
        replayed.len(),
        lost.len(),
        beyond_java_checkpoint,
    );
    assert_eq!(c1[&s0], hold0, "Java checkpoint inside the aggregate");
    assert_eq!(c1[&s1], hold1, "Java checkpoint before records it processed");
    assert!(
        replayed.is_empty(),
        "records at or before the Java checkpoints: {replayed:?}"
    );
    assert!(
        lost.is_empty(),
        "records after the Java checkpoints not processed: {lost:?}"
    );
    assert_eq!(duplicates, 0);
    assert_eq!(
        agg_got,
        (5..10).map(|i| format!("j2r-agg-{i}")).collect::<Vec<_>>(),
        "the rest of the aggregate, in order"
    );
    assert!(
        beyond_java_checkpoint > 0,
        "the scenario has records Java processed past its checkpoint"
    );
    for (_, shard, cp) in log.initialized.lock().unwrap().iter() {
        assert_eq!(cp, &c1[shard], "{shard} started from the Java checkpoint");
    }
    assert_extras_left_alone(&ctx).await;
}

/// Rust → Java: our worker checkpoints (inside a KPL aggregate in shard 2) and shuts down
/// gracefully; the Java KCL continues from our checkpoints, nothing lost or replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_to_java_continues_from_our_checkpoints() {
    let (_serial, mut ctx) = Ctx::acquire().await;
    let log = RustLog::default();
    let rust = ctx.rust("rust-1", &log);
    let p = &mut ctx.producer;
    p.wave("r2j-c", 5).await;
    let agg_seq = p.aggregate(2, "r2j-agg", 10, 6).await;
    let new = p.all_data();
    let s2 = p.shard_id(2).to_owned();
    wait_for(LIMIT, "our worker processed every record", None, || {
        new.is_subset(&log.records().into_iter().map(|g| g.data).collect())
    })
    .await;
    let before = log.records();
    let t = Instant::now();
    rust.shutdown().await.expect("graceful shutdown");
    let shutdown = t.elapsed();
    let rust_stopped = Instant::now();
    let after_shutdown = owners(&ctx.store).await;
    assert!(
        after_shutdown.values().all(Option::is_none),
        "our graceful shutdown releases every lease: {after_shutdown:?}"
    );
    let c2 = checkpoints(&ctx.store).await;
    let hold2 = ExtendedSequenceNumber::from_parts(&agg_seq, 6).unwrap();
    assert_eq!(c2[&s2], hold2, "our checkpoint inside the aggregate");

    let p = &mut ctx.producer;
    p.wave("r2j-d", 5).await;
    let expected = p.after(&c2);
    let rust_seen: BTreeSet<String> = before.iter().map(|g| g.data.clone()).collect();
    let beyond_our_checkpoint = expected.intersection(&rust_seen).count();

    let mut java = ctx.java("java-1", "r2j");
    wait_for(
        LIMIT,
        "the Java KCL's first record after our shutdown",
        Some(&java),
        || !only("r2j-", java_data(&java)).is_empty(),
    )
    .await;
    let first = rust_stopped.elapsed();
    wait_for(
        LIMIT,
        "the Java KCL processed every record after our checkpoints",
        Some(&java),
        || expected.is_subset(&java_data(&java).into_iter().collect()),
    )
    .await;
    let done = rust_stopped.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let all_java = java_data(&java);
    let got = only("r2j-", all_java.clone());
    let got_set: BTreeSet<String> = got.iter().cloned().collect();
    let replayed: Vec<&String> = got_set.difference(&expected).collect();
    let lost: Vec<&String> = expected.difference(&got_set).collect();
    let duplicates = got.len() - got_set.len();
    let agg_got = only("r2j-agg-", got.clone());
    let stop = java.stop();
    println!(
        "[java-interop] Rust -> Java: {} records put; ours processed {} and shut down gracefully in \
         {shutdown:.1?}, checkpoints {}; Java processed {} (expected exactly {}): replayed {}, lost {}, \
         duplicates {duplicates}, records of other tests {}; {} of them we had processed without \
         checkpointing (by design); hand-over: Java's first record {first:.1?}, all records {done:.1?} after \
         our shutdown (including the daemon's restart); Java's graceful stop {stop:.1?}",
        ctx.producer.puts.len(),
        rust_seen.len(),
        show(&c2),
        got.len(),
        expected.len(),
        replayed.len(),
        lost.len(),
        all_java.len() - got.len(),
        beyond_our_checkpoint,
    );
    assert!(
        replayed.is_empty(),
        "records at or before our checkpoints: {replayed:?}"
    );
    assert!(
        lost.is_empty(),
        "records after our checkpoints not processed: {lost:?}"
    );
    assert_eq!(duplicates, 0);
    assert_eq!(
        all_java.len(),
        got.len(),
        "the Java KCL replayed records of other tests"
    );
    assert_eq!(
        agg_got,
        (7..10).map(|i| format!("r2j-agg-{i}")).collect::<Vec<_>>(),
        "Java resumes inside the aggregate"
    );
    assert!(
        beyond_our_checkpoint > 0,
        "the scenario has records we processed past our checkpoint"
    );
    for (shard, starts) in java.initialized() {
        let (seq, sub) = starts.first().expect("a start").clone();
        assert_eq!(
            ExtendedSequenceNumber::from_parts(&seq, sub).expect("checkpoint"),
            c2[&shard],
            "{shard}: Java started from our checkpoint"
        );
    }
    assert_extras_left_alone(&ctx).await;
}

/// Mixed fleet: one Java worker (holding every lease first) and one of ours for a minute while
/// records flow. Nothing is lost; duplicates only in shards whose lease moved; our worker keeps
/// running and leaves the 3.x extras alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_fleet_loses_nothing() {
    let (_serial, mut ctx) = Ctx::acquire().await;
    let mut java = ctx.java("java-1", "mixed");
    let store = ctx.store.clone();
    wait_for_async(LIMIT, "the Java worker holds every lease", Some(&java), || {
        let store = store.clone();
        async move {
            let o = owners(&store).await;
            o.len() == SHARDS && o.values().all(|w| w.as_deref() == Some("java-1"))
        }
    })
    .await;
    wait_for(LIMIT, "the Java worker's processors started", Some(&java), || {
        java.initialized().len() == SHARDS
    })
    .await;
    let java_inits_before = java.initialized().values().map(Vec::len).sum::<usize>();

    let log = RustLog::default();
    // Sample the lease owners every 500 ms while records flow.
    let sampling = Arc::new(std::sync::Mutex::new(
        Vec::<BTreeMap<String, Option<String>>>::new(),
    ));
    let sampler = {
        let (store, sampling) = (ctx.store.clone(), sampling.clone());
        tokio::spawn(async move {
            loop {
                if let Ok(rows) = store.list().await {
                    sampling
                        .lock()
                        .unwrap()
                        .push(rows.into_iter().map(|l| (l.lease_key, l.lease_owner)).collect());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    // Ours joins while records flow, so that the leases it takes move under load.
    let t0 = Instant::now();
    let mut i = 0;
    let mut rust = None;
    while t0.elapsed() < MIXED_FOR {
        for s in 0..SHARDS {
            ctx.producer.put(s, format!("mix-{s}-{i}")).await;
        }
        i += 1;
        if rust.is_none() && t0.elapsed() >= JOIN_AFTER {
            rust = Some(ctx.rust("rust-2", &log));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rust = rust.expect("our worker started");
    let mixed = ctx.producer.all_data();
    let seen = || -> BTreeSet<String> {
        let mut v: BTreeSet<String> = only("mix-", java_data(&java)).into_iter().collect();
        v.extend(log.records().into_iter().map(|g| g.data));
        v
    };
    wait_for(
        LIMIT,
        "every record of the mixed fleet processed",
        Some(&java),
        || mixed.is_subset(&seen()),
    )
    .await;
    let drained = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    sampler.abort();
    assert!(
        rust.is_running(),
        "our worker kept running next to the Java KCL 3.x"
    );

    let java_records = only("mix-", java_data(&java));
    let rust_records: Vec<Got> = log.records();
    let all: Vec<String> = java_records
        .iter()
        .cloned()
        .chain(rust_records.iter().map(|g| g.data.clone()))
        .collect();
    let c = counts(all.iter());
    let lost: Vec<&String> = mixed.iter().filter(|d| !c.contains_key(d)).collect();
    let duplicated: Vec<&String> = c.iter().filter(|(_, n)| **n > 1).map(|(d, _)| *d).collect();
    let extra_deliveries: usize = c.values().map(|n| n - 1).sum();
    // Deliveries to the same worker twice (a lease that went away and came back).
    let mut per_worker: BTreeMap<(String, String), usize> = BTreeMap::new();
    for d in &java_records {
        *per_worker.entry(("java-1".into(), d.clone())).or_default() += 1;
    }
    for g in &rust_records {
        *per_worker.entry((g.worker.clone(), g.data.clone())).or_default() += 1;
    }
    let same_worker_again = per_worker.values().filter(|n| **n > 1).count();
    let rust_shards: BTreeSet<&String> = rust_records.iter().map(|g| &g.shard).collect();
    // Lease moves: owner changes between consecutive samples, and processor starts per shard.
    let samples = sampling.lock().unwrap().clone();
    let mut moves: BTreeMap<String, usize> = BTreeMap::new();
    for w in samples.windows(2) {
        for (shard, owner) in &w[1] {
            if w[0].get(shard) != Some(owner) {
                *moves.entry(shard.clone()).or_default() += 1;
            }
        }
    }
    let mut starts: BTreeMap<String, usize> = BTreeMap::new();
    for (_, shard, _) in log.initialized.lock().unwrap().iter() {
        *starts.entry(shard.clone()).or_default() += 1;
    }
    let java_starts = java.initialized();
    for (shard, v) in &java_starts {
        // The first start of each shard was before the records flowed.
        *starts.entry(shard.clone()).or_default() += v.len().saturating_sub(1);
    }
    let java_inits_now: usize = java_starts.values().map(Vec::len).sum();
    let mut share: BTreeMap<String, usize> = BTreeMap::new();
    for sample in &samples {
        for owner in sample.values() {
            *share
                .entry(owner.clone().unwrap_or_else(|| "(none)".into()))
                .or_default() += 1;
        }
    }
    let last = samples.last().cloned().unwrap_or_default();
    let rust_lost = log.lease_lost.lock().unwrap().len();
    let rust_starts = log.initialized.lock().unwrap().len();
    let t = Instant::now();
    rust.shutdown().await.expect("graceful shutdown");
    let rust_shutdown = t.elapsed();
    let java_stop = java.stop();
    println!(
        "[java-interop] mixed fleet for {MIXED_FOR:?} (ours joining after {JOIN_AFTER:?}): {} records put, processed by Java {}, by ours {} (shards \
         {rust_shards:?}); lost {}, records delivered more than once {} ({extra_deliveries} extra deliveries, \
         {same_worker_again} to the same worker again); all processed {drained:.1?} after the start; owner \
         changes per shard {moves:?}; processor starts after the first: Java {}, ours {rust_starts}; leases \
         ours lost {rust_lost}; lease-samples per owner {share:?}; owners at the end {last:?}; shutdown: ours \
         {rust_shutdown:.1?}, Java {java_stop:.1?}",
        mixed.len(),
        java_records.len(),
        rust_records.len(),
        lost.len(),
        duplicated.len(),
        java_inits_now - java_inits_before,
    );
    assert!(lost.is_empty(), "records lost in the mixed fleet: {lost:?}");
    for d in &duplicated {
        let (shard, _) = ctx.producer.position_of(d);
        assert!(
            starts.get(&shard).copied().unwrap_or(0) > 1 || moves.get(&shard).copied().unwrap_or(0) > 0,
            "{d} was delivered twice in {shard}, whose lease never moved"
        );
    }
    assert_extras_left_alone(&ctx).await;
}

/// A rolling migration, the way `docs/migration.md` recommends: our worker joins a Java worker
/// with stealing switched off (`max_leases_to_steal(0)`), so it takes nothing while the Java
/// worker runs; the Java worker is stopped gracefully while records flow, and ours takes every
/// lease when it expires. Nothing lost, nothing processed twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_migration_without_steals_replays_nothing() {
    let (_serial, ctx) = Ctx::acquire().await;
    let java = ctx.java("java-1", "rolling");
    let store = ctx.store.clone();
    wait_for_async(LIMIT, "the Java worker holds every lease", Some(&java), || {
        let store = store.clone();
        async move {
            let o = owners(&store).await;
            o.len() == SHARDS && o.values().all(|w| w.as_deref() == Some("java-1"))
        }
    })
    .await;
    wait_for(LIMIT, "the Java worker's processors started", Some(&java), || {
        java.initialized().len() == SHARDS
    })
    .await;

    let log = RustLog::default();
    // A longer failover time than the Java worker's: a late Java renewal (a busy machine) must
    // not look like an expired lease to ours.
    let rust = ctx.rust_stealing("rust-3", &log, 0, 2 * RUST_FAILOVER);
    let mut producer = Producer::new(ctx.producer.client.clone(), &ctx.backend, &ctx.stream).await;
    let t0 = Instant::now();
    let flow = tokio::spawn(async move {
        let mut i = 0;
        while t0.elapsed() < ROLLING_FOR {
            for s in 0..SHARDS {
                producer.put(s, format!("roll-{s}-{i}")).await;
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        producer
    });
    tokio::time::sleep(ROLLING_FOR / 3).await;
    let held_next_to_java = rust.held_leases().len();
    let java_lost_before_stop = java
        .events()
        .iter()
        .filter(|e| matches!(e, JavaEvent::Lifecycle { what, .. } if what == "lease_lost"))
        .count();
    // Stop the Java worker (a blocking call: off the runtime's threads, records keep flowing).
    let stop_began = Instant::now();
    let (java, stop) = tokio::task::spawn_blocking(move || {
        let mut java = java;
        let took = java.stop();
        (java, took)
    })
    .await
    .expect("stop");
    wait_for(LIMIT, "our worker holds every lease", None, || {
        rust.held_leases().len() == SHARDS
    })
    .await;
    let handover = stop_began.elapsed();
    let producer = flow.await.expect("producer");
    let put = producer.all_data();
    wait_for(LIMIT, "every record processed", None, || {
        let mut seen: BTreeSet<String> = only("roll-", java_data(&java)).into_iter().collect();
        seen.extend(log.records().into_iter().map(|g| g.data));
        put.is_subset(&seen)
    })
    .await;
    let drained = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    rust.shutdown().await.expect("graceful shutdown");

    let java_records = only("roll-", java_data(&java));
    let rust_records: Vec<String> = log.records().into_iter().map(|g| g.data).collect();
    let all: Vec<String> = java_records.iter().chain(&rust_records).cloned().collect();
    let c = counts(all.iter());
    let lost: Vec<&String> = put.iter().filter(|d| !c.contains_key(d)).collect();
    let duplicated: Vec<&String> = c.iter().filter(|(_, n)| **n > 1).map(|(d, _)| *d).collect();
    println!(
        "[java-interop] rolling migration ({ROLLING_FOR:?} of records, ours with max_leases_to_steal 0): {} \
         records put, processed by Java {}, by ours {}; lost {}, delivered twice {}; ours held \
         {held_next_to_java} leases next to the running Java worker, which lost {java_lost_before_stop}; \
         Java's graceful stop {stop:.1?}; ours held every lease {handover:.1?} after the stop began; all processed \
         {drained:.1?} after the start",
        put.len(),
        java_records.len(),
        rust_records.len(),
        lost.len(),
        duplicated.len(),
    );
    assert_eq!(
        held_next_to_java, 0,
        "with stealing off, ours takes nothing from a live Java worker"
    );
    assert_eq!(
        java_lost_before_stop, 0,
        "the Java worker lost no lease while it ran"
    );
    assert!(lost.is_empty(), "records lost: {lost:?}");
    assert!(duplicated.is_empty(), "records processed twice: {duplicated:?}");
    assert!(!rust_records.is_empty(), "ours processed the rest");
    assert_extras_left_alone(&ctx).await;
}

/// The Java KCL 3.x's extras are still there: its two tables, the index, and the attribute
/// neither library knows on every lease row.
async fn assert_extras_left_alone(ctx: &Ctx) {
    let (tables, indexes) = extras(&ctx.dynamodb, &ctx.app).await;
    for t in ["CoordinatorState", "WorkerMetricStats"] {
        assert!(
            tables.contains(&format!("{}-{t}", ctx.app)),
            "{t} table left alone: {tables:?}"
        );
    }
    assert_eq!(indexes, [LEASE_OWNER_INDEX], "index left alone");
    let rows = raw_rows(&ctx.dynamodb, &ctx.app).await;
    assert_eq!(rows.len(), SHARDS);
    for row in &rows {
        assert!(row.contains_key(CANARY), "unknown attribute survived: {row:?}");
    }
}
