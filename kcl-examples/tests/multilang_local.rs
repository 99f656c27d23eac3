//! The child process driver of `kcl-multilang` on the bundled local stream and lease store (no
//! emulators): a hand-written child (`tests/multilang/scripted_child.py`, plain Python, no
//! client library) probes the daemon's checkpoint answers, and misbehaves once (a wrong status,
//! a hang past `timeoutInSeconds`, an exit mid-call). Each time only its shard is affected: a
//! new child gets the same batch again, nothing is lost, the worker keeps running.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use kcl_core::{InMemoryLeaseStore, InitialPosition, LeaseStore, LocalBackend, Scheduler};
use kcl_examples::multilang::child::{ChildFactory, ChildSettings};
use serde_json::Value;

const STREAM: &str = "multilang-local";

fn python() -> PathBuf {
    let path = std::env::var_os("PATH").expect("PATH");
    std::env::split_paths(&path)
        .map(|d| d.join("python3"))
        .find(|p| p.is_file())
        .expect("python3 on PATH")
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("tests")
        .join("multilang")
        .join("scripted_child.py")
}

struct Run {
    out: Vec<Value>,
    records: Vec<String>,
    initialized: usize,
    checkpoints: Vec<String>,
}

/// Runs two shards with the scripted child in `mode` until `n` records were processed.
async fn run(mode: &str, timeout: Option<Duration>, n: usize) -> Run {
    let dir = std::env::temp_dir().join(format!("kcl-multilang-local-{mode}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let out = dir.join("out.jsonl");
    let marker = dir.join("marker");
    // The child inherits the environment: one variable set per test, each test its own files.
    let command = vec![
        "/usr/bin/env".to_owned(),
        format!("SCRIPT_OUT={}", out.display()),
        format!("SCRIPT_MARKER={}", marker.display()),
        format!("SCRIPT_MODE={mode}"),
        python().display().to_string(),
        script().display().to_string(),
    ];
    let backend = LocalBackend::new();
    backend.create_stream(STREAM, 2).expect("stream");
    let store = InMemoryLeaseStore::new();
    let handle = Scheduler::builder("multilang-local-app", STREAM)
        .backend(backend.clone())
        .lease_store(store.clone())
        .initial_position(InitialPosition::TrimHorizon)
        .polling_interval(Duration::from_millis(50))
        .processor_factory(ChildFactory::new(ChildSettings {
            command,
            working_dir: Some(dir.clone()),
            timeout,
        }))
        .build()
        .expect("scheduler")
        .spawn();
    for i in 0..n {
        backend
            .put_record(STREAM, &format!("key-{i}"), Bytes::from(format!("rec-{i}")), None)
            .await
            .expect("put");
    }
    let read = || -> Vec<Value> {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let records = |out: &[Value]| -> Vec<String> {
        let mut v: Vec<String> = out
            .iter()
            .filter(|o| o["got"]["action"] == "processRecords")
            .flat_map(|o| o["got"]["records"].as_array().cloned().unwrap_or_default())
            .filter_map(|r| r["data"].as_str().map(str::to_owned))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let o = read();
        let accepted = o
            .iter()
            .filter(|x| x["reply"]["error"].is_null() && x["asked"]["sequenceNumber"].is_string())
            .count();
        // Every record delivered, and each batch's checkpoint answered.
        if records(&o).len() >= n && accepted >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{mode}: only {} of {n} records: {o:?}",
            records(&o).len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(handle.is_running(), "{mode}: the worker keeps running");
    handle.shutdown().await.expect("shutdown");
    let checkpoints = store
        .list()
        .await
        .expect("leases")
        .into_iter()
        .map(|l| l.checkpoint.checkpoint_str().to_owned())
        .collect();
    let out = read();
    let _ = std::fs::remove_dir_all(&dir);
    Run {
        records: records(&out),
        initialized: out.iter().filter(|o| o["got"]["action"] == "initialize").count(),
        out,
        checkpoints,
    }
}

fn decoded(records: &[String]) -> Vec<String> {
    let mut v: Vec<String> = records
        .iter()
        .map(|b64| {
            let bytes = aws_smithy_types::base64::decode(b64).expect("base64");
            String::from_utf8(bytes).expect("utf-8")
        })
        .collect();
    v.sort();
    v
}

fn expected(n: usize) -> Vec<String> {
    let mut v: Vec<String> = (0..n).map(|i| format!("rec-{i}")).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_answers_carry_the_java_exception_names() {
    let run = run("normal", None, 10).await;
    assert_eq!(decoded(&run.records), expected(10));
    assert_eq!(run.initialized, 2, "one child per shard");
    let replies: Vec<(&Value, &Value)> = run
        .out
        .iter()
        .filter(|o| !o["reply"].is_null())
        .map(|o| (&o["asked"], &o["reply"]))
        .collect();
    for (asked, reply) in &replies {
        assert_eq!(reply["action"], "checkpoint");
        // The reply repeats the request.
        assert_eq!(reply["sequenceNumber"], asked["sequenceNumber"]);
        let want = match asked["sequenceNumber"].as_str() {
            None => None,
            Some("bogus") => Some("IllegalArgumentException"),
            Some(_) if asked.get("subSequenceNumber").is_some() => Some("IllegalArgumentException"),
            Some(_) => None,
        };
        let got = reply["error"].as_str();
        if asked["sequenceNumber"].is_null() {
            // During initialize there is no checkpointer; at shutdown there is.
            assert!(
                got.is_none() || got == Some("InvalidStateException"),
                "{asked} -> {reply}"
            );
        } else {
            assert_eq!(got, want, "{asked} -> {reply}");
        }
    }
    assert!(
        replies
            .iter()
            .filter(|(_, r)| r["error"] == "InvalidStateException")
            .count()
            >= 2,
        "a checkpoint in initialize is refused with InvalidStateException: {replies:?}"
    );
    // The accepted checkpoints (sequence number only) were written.
    assert_eq!(run.checkpoints.len(), 2);
    assert!(
        run.checkpoints
            .iter()
            .all(|c| c.bytes().all(|b| b.is_ascii_digit())),
        "{:?}",
        run.checkpoints
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_status_fails_the_shard_and_a_new_child_gets_the_batch() {
    let run = run("wrong_status", None, 10).await;
    assert_eq!(decoded(&run.records), expected(10));
    assert_eq!(run.initialized, 3, "the misbehaving shard got a new child");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_child_is_killed_after_the_timeout() {
    let run = run("hang", Some(Duration::from_secs(2)), 10).await;
    assert_eq!(decoded(&run.records), expected(10));
    assert_eq!(run.initialized, 3, "the hanging shard got a new child");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_exiting_mid_call_fails_its_shard_only() {
    let run = run("exit", None, 10).await;
    assert_eq!(decoded(&run.records), expected(10));
    assert_eq!(run.initialized, 3, "the dead shard got a new child");
}
