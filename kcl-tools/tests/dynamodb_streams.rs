//! `kcl-tail --dynamodb-table` against moto's server (started by the project's
//! `localstack/start-moto.sh` through `kcl_tests::moto`; the test fails, never skips, when it
//! cannot), which serves DynamoDB and DynamoDB Streams on one endpoint: a table with a
//! `NEW_AND_OLD_IMAGES` stream, 1,000 puts, updates and deletes over 50 keys written with boto3
//! (moto's virtualenv has it) while two workers of one application (the lease table in moto's
//! DynamoDB) read the stream; the worker holding the shard is killed with `kill -9` in the
//! middle. Every change is delivered (the union of both outputs), each worker's output in order
//! per key, and the changes are the ones written (event, new and old image). Then the other
//! worker is killed too, `kcl-admin --dynamodb-table` reads the checkpoint left and the lag, and
//! a restarted application delivers the changes after that checkpoint (the last batch), then
//! the next ones, and nothing else twice.
//!
//! What moto does differently from DynamoDB Streams (none of it changes what this test checks):
//! one shard per stream that never closes (no shard rotation, so no lineage to follow; the
//! rotation is tested on the local backend, tests/tests/dynamodb_streams.rs), sequence numbers of
//! 22 digits counting up by one, `ApproximateCreationDateTime` with a fraction of a second (the
//! service rounds down to the second), `eventVersion` `1.0` (the service says `1.1`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

const TAIL: &str = env!("CARGO_BIN_EXE_kcl-tail");
const ADMIN: &str = env!("CARGO_BIN_EXE_kcl-admin");
const CHANGES: usize = 1000;

fn unique(what: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "kcl-tail-ddb-{what}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000
    )
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/ddb_changes.py")
}

/// Runs the boto3 script; returns its stdout's JSON lines.
fn boto3(args: &[&str]) -> Vec<Value> {
    let out = Command::new(kcl_tests::moto::python())
        .arg(script())
        .arg(kcl_tests::moto::ensure_started())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the boto3 script");
    assert!(
        out.status.success(),
        "ddb_changes.py {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// A worker process, killed if the test ends first (a failed assertion leaves nothing running).
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Worker {
    /// Waits at most `timeout` for the process to end.
    fn wait_at_most(&mut self, timeout: Duration, what: &str, out: &Path) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "{what} did not end within {timeout:?}\n{}",
                stderr_of(out)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A `kcl-tail --dynamodb-table` worker writing its stdout to `out` (kept after a `kill -9`).
fn worker(table: &str, application: &str, id: &str, out: &Path, extra: &[&str]) -> Worker {
    let stderr = File::create(out.with_extension("err")).expect("stderr file");
    Command::new(TAIL)
        .args(["--dynamodb-table", table, "--application-name", application])
        .args([
            "--worker-id",
            id,
            "--endpoint-url",
            kcl_tests::moto::ensure_started(),
        ])
        .args(["--initial-position", "trim-horizon", "--failover-ms", "3000"])
        .args(["--metrics", "none"])
        .args(extra)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .stdin(Stdio::null())
        .stdout(File::create(out).expect("stdout file"))
        .stderr(stderr)
        .spawn()
        .map(Worker)
        .expect("start kcl-tail")
}

/// The complete JSON lines of a worker's output so far.
fn lines(out: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", out.display())))
        .collect()
}

/// One printed change as (key, event, new v, old v), to compare with what was written.
fn as_written(line: &Value) -> Value {
    let v = |image: &str| {
        line.get(image)
            .map(|i| Value::from(i["v"]["N"].as_str().expect("v").parse::<u64>().expect("a number")))
            .unwrap_or(Value::Null)
    };
    serde_json::json!({
        "key": line["keys"]["pk"]["S"],
        "event": line["event_name"],
        "new": v("new_image"),
        "old": v("old_image"),
    })
}

fn sequence(line: &Value) -> u128 {
    line["sequence_number"]
        .as_str()
        .expect("sequence_number")
        .parse()
        .expect("digits")
}

/// Per key, the changes of one output in the order printed; panics unless the sequence numbers
/// of each key only go up.
fn check_order_per_key(name: &str, output: &[Value]) {
    let mut last: BTreeMap<String, u128> = BTreeMap::new();
    for line in output {
        let key = line["keys"]["pk"]["S"].as_str().expect("key").to_owned();
        let seq = sequence(line);
        if let Some(before) = last.insert(key.clone(), seq) {
            assert!(
                seq > before,
                "{name}: key {key}: sequence number {seq} after {before}"
            );
        }
    }
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stderr_of(out: &Path) -> String {
    std::fs::read_to_string(out.with_extension("err")).unwrap_or_default()
}

#[test]
fn every_change_is_delivered_in_order_per_key_through_a_kill_9_and_a_restart() {
    let table = unique("t");
    let application = unique("app");
    let dir = std::env::temp_dir().join(unique("out"));
    std::fs::create_dir_all(&dir).unwrap();
    boto3(&["create", &table]);

    let outs = [dir.join("w1.jsonl"), dir.join("w2.jsonl")];
    let mut workers = [
        worker(&table, &application, "w1", &outs[0], &[]),
        worker(&table, &application, "w2", &outs[1], &[]),
    ];
    // The writes, while the workers read.
    let writer = std::thread::spawn({
        let table = table.clone();
        move || boto3(&["write", &table, "0", &CHANGES.to_string()])
    });
    // moto's stream has one shard: kill the worker that holds it once it printed some changes.
    let mut holder = None;
    wait_for("a worker printing 200 changes", Duration::from_secs(120), || {
        holder = outs.iter().position(|o| lines(o).len() >= 200);
        holder.is_some()
    });
    let killed = holder.unwrap();
    workers[killed].0.kill().expect("kill -9"); // SIGKILL
    workers[killed].0.wait().unwrap();
    let printed_before_kill = lines(&outs[killed]).len();
    let written = writer.join().expect("the writer");
    assert_eq!(written.len(), CHANGES);

    let survivor = 1 - killed;
    let seen = || {
        outs.iter()
            .flat_map(|o| lines(o))
            .map(|l| sequence(&l))
            .collect::<BTreeSet<_>>()
    };
    wait_for("every change delivered", Duration::from_secs(180), || {
        seen().len() >= CHANGES
    });
    // The whole application dies: the survivor is killed with kill -9 too.
    workers[survivor].0.kill().expect("kill -9");
    workers[survivor].0.wait().unwrap();

    let outputs: Vec<Vec<Value>> = outs.iter().map(|o| lines(o)).collect();
    for (i, output) in outputs.iter().enumerate() {
        check_order_per_key(&format!("worker {}", i + 1), output);
    }
    // The union, in the order delivered (the killed worker first, then the survivor's from its
    // checkpoint): each change once, exactly the changes written, in their order.
    let mut union = Vec::new();
    let mut once = BTreeSet::new();
    for line in outputs[killed].iter().chain(&outputs[survivor]) {
        if once.insert(sequence(line)) {
            union.push(line.clone());
        }
    }
    let delivered: Vec<Value> = union.iter().map(as_written).collect();
    assert_eq!(delivered.len(), CHANGES);
    assert_eq!(
        delivered, written,
        "the changes delivered are the changes written, in order"
    );
    let duplicates = outputs[killed].len() + outputs[survivor].len() - CHANGES;
    // At-least-once: what is printed twice is at most what was printed after the killed
    // worker's last checkpoint, its last batch (a batch is at most 1,000 changes).
    assert!(duplicates <= 1000, "{duplicates} changes printed twice");

    // The checkpoint the application left (kcl-admin on its lease table, the lag read from
    // the DynamoDB stream): what was printed after it is the survivor's last batch.
    let leases = admin_leases(&application, &table);
    assert_eq!(leases.len(), 1, "moto's stream has one shard: {leases:?}");
    let checkpoint: u128 = leases[0]["checkpoint"]
        .as_str()
        .expect("a sequence number checkpoint")
        .parse()
        .expect("digits");
    let unacknowledged: Vec<Value> = union
        .iter()
        .filter(|l| sequence(l) > checkpoint)
        .map(as_written)
        .collect();
    assert_eq!(
        leases[0]["lag"]["records"],
        unacknowledged.len(),
        "the lag is what was printed after the checkpoint: {leases:?}"
    );
    eprintln!(
        "killed worker {} after {printed_before_kill} changes; the survivor printed {} and was killed too; \
         {duplicates} printed twice; {} printed after the last checkpoint",
        killed + 1,
        outputs[survivor].len(),
        unacknowledged.len()
    );

    // A restarted application (after the fail-over time, the dead worker's lease is taken):
    // the changes after the checkpoint (the last batch, printed again), then the next 20, and
    // nothing else twice.
    let next = boto3(&["write", &table, &CHANGES.to_string(), "20"]);
    let expected: Vec<Value> = unacknowledged.iter().chain(&next).cloned().collect();
    let restarted = dir.join("w3.jsonl");
    let n = expected.len().to_string();
    let mut third = worker(&table, &application, "w3", &restarted, &["-n", &n]);
    let status = third.wait_at_most(Duration::from_secs(120), "the restarted worker", &restarted);
    assert!(
        status.success(),
        "the restarted worker: {status:?}\n{}",
        stderr_of(&restarted)
    );
    let again = lines(&restarted);
    assert_eq!(
        again.iter().map(as_written).collect::<Vec<_>>(),
        expected,
        "a restart prints the changes after the checkpoint, then the new ones"
    );
    assert!(again.iter().all(|l| sequence(l) > checkpoint));
    for line in &again {
        assert!(line["stream_arn"]
            .as_str()
            .unwrap()
            .contains(&format!(":table/{table}/stream/")));
        assert!(line["shard_id"].as_str().unwrap().starts_with("shardId-"));
        assert!(line["approximate_creation_time"].as_str().unwrap().ends_with('Z'));
    }
    // `-n` ends gracefully: the lease checkpointed at the last change, nothing after it.
    let leases = admin_leases(&application, &table);
    let last = again.iter().map(sequence).max().unwrap().to_string();
    assert_eq!(leases[0]["checkpoint"], Value::from(last));
    assert_eq!(leases[0]["lag"]["records"], 0, "{leases:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `kcl-admin --dynamodb-table TABLE --json leases`: the application's leases, with their lag.
fn admin_leases(application: &str, table: &str) -> Vec<Value> {
    let admin = Command::new(ADMIN)
        .args(["--application-name", application, "--dynamodb-table", table])
        .args(["--endpoint-url", kcl_tests::moto::ensure_started()])
        .args(["--watch-ms", "0", "--json", "leases"])
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env_remove("AWS_PROFILE")
        .output()
        .expect("kcl-admin");
    assert!(
        admin.status.success(),
        "kcl-admin: {}",
        String::from_utf8_lossy(&admin.stderr)
    );
    let leases: Value = serde_json::from_slice(&admin.stdout).expect("kcl-admin's JSON");
    leases["leases"].as_array().expect("leases").clone()
}

#[test]
fn a_table_without_a_stream_is_one_clear_error() {
    let endpoint = kcl_tests::moto::ensure_started();
    let table = unique("nostream");
    let status = Command::new(kcl_tests::moto::python())
        .args(["-c", &format!(
            "import boto3; boto3.client('dynamodb', endpoint_url='{endpoint}', region_name='us-east-1', \
             aws_access_key_id='test', aws_secret_access_key='test').create_table(TableName='{table}', \
             KeySchema=[{{'AttributeName':'pk','KeyType':'HASH'}}], \
             AttributeDefinitions=[{{'AttributeName':'pk','AttributeType':'S'}}], BillingMode='PAY_PER_REQUEST')"
        )])
        .status()
        .unwrap();
    assert!(status.success());
    let start = Instant::now();
    let out = Command::new(TAIL)
        .args(["--dynamodb-table", &table, "--endpoint-url", endpoint])
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env_remove("AWS_PROFILE")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(start.elapsed() < Duration::from_secs(30), "no retry loop");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "error: table {table} has no stream; enable DynamoDB Streams on it (StreamSpecification, e.g. NEW_AND_OLD_IMAGES)"
        )
    );
    assert!(out.stdout.is_empty());
}
