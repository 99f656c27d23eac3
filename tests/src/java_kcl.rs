//! Test fixture: the real Java KCL 3.1.3 (its MultiLangDaemon with the recording processor of
//! `tests/java-kcl/processor.py`), started and stopped through `tests/java-kcl/java-kcl.sh`,
//! which installs it from PyPI (`kclpy-ext`, pinned) into `tests/java-kcl/.venv` on first use.
//!
//! A [`JavaDaemon`] is stopped gracefully (SIGTERM) by [`JavaDaemon::stop`], and on drop if the
//! test did not stop it (e.g. it panicked), so no daemon outlives its test. What the processor
//! recorded is read with [`JavaDaemon::events`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::emulators::Endpoints;

/// How to start one daemon.
#[derive(Clone, Debug)]
pub struct JavaConfig {
    /// Application name (= lease table name).
    pub application: String,
    /// Stream name.
    pub stream: String,
    /// Worker id.
    pub worker: String,
    /// `failoverTimeMillis`.
    pub failover: Duration,
    /// More `key = value` lines for the properties file.
    pub extra_properties: Vec<String>,
}

/// One event the recording processor wrote.
#[derive(Clone, Debug, PartialEq)]
pub enum JavaEvent {
    /// A lease was taken: the processor was initialised at `checkpoint` / `sub`.
    Initialize {
        shard: String,
        checkpoint: String,
        sub: u64,
    },
    /// A record was processed.
    Record {
        shard: String,
        seq: String,
        sub: u64,
        key: String,
        data: String,
    },
    /// A checkpoint was asked for: at `seq`/`sub`, or (both `None`) at the last record delivered,
    /// as at shard end and shutdown; `error` when the daemon refused it.
    Checkpoint {
        shard: String,
        seq: Option<String>,
        sub: Option<u64>,
        error: Option<String>,
    },
    /// `shutdown_requested`, `lease_lost` or `shard_ended`.
    Lifecycle { shard: String, what: String },
}

/// A running MultiLangDaemon.
pub struct JavaDaemon {
    run_dir: PathBuf,
    records: PathBuf,
    pid: u32,
    stopped: bool,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("java-kcl")
        .join("java-kcl.sh")
}

fn run_script(command: &str, envs: &[(&str, String)]) -> String {
    let output = Command::new("bash")
        .arg(script())
        .arg(command)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script().display()));
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "java-kcl.sh {command} failed ({}):\n--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}",
        output.status
    );
    if !stderr.trim().is_empty() {
        eprint!("{stderr}");
    }
    stdout
}

/// Installs the Java KCL (idempotent); returns how long it took.
pub fn install() -> Duration {
    let t = Instant::now();
    run_script("install", &[]);
    t.elapsed()
}

impl JavaDaemon {
    /// Starts a daemon in `run_dir` (created) against the emulators; its processor appends to
    /// `run_dir/records.jsonl`.
    pub fn start(config: &JavaConfig, endpoints: &Endpoints, run_dir: &Path) -> Self {
        std::fs::create_dir_all(run_dir).expect("run dir");
        let records = run_dir.join("records.jsonl");
        let _ = std::fs::remove_file(&records);
        let envs = [
            ("KCL_JAVA_RUN_DIR", run_dir.display().to_string()),
            ("KCL_JAVA_APP", config.application.clone()),
            ("KCL_JAVA_STREAM", config.stream.clone()),
            ("KCL_JAVA_WORKER", config.worker.clone()),
            ("KCL_JAVA_RECORDS", records.display().to_string()),
            ("KCL_JAVA_FAILOVER_MS", config.failover.as_millis().to_string()),
            ("KCL_JAVA_PROPERTIES", config.extra_properties.join("\n")),
            ("AWS_ENDPOINT_URL_KINESIS", endpoints.kinesis.clone()),
            ("AWS_ENDPOINT_URL_DYNAMODB", endpoints.dynamodb.clone()),
            ("AWS_REGION", endpoints.region.clone()),
        ];
        let out = run_script("start", &envs);
        let pid = out
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("java-kcl.sh start printed no pid: {out:?}"));
        Self {
            run_dir: run_dir.to_owned(),
            records,
            pid,
            stopped: false,
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Stops it gracefully (SIGTERM; SIGKILL after 60 s); returns how long the shutdown took.
    pub fn stop(&mut self) -> Duration {
        let t = Instant::now();
        if !self.stopped {
            self.stopped = true;
            run_script(
                "stop",
                &[("KCL_JAVA_RUN_DIR", self.run_dir.display().to_string())],
            );
        }
        t.elapsed()
    }

    /// The last `lines` lines of the daemon's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.run_dir.join("daemon.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Everything the processor recorded so far (complete lines only).
    pub fn events(&self) -> Vec<JavaEvent> {
        read_events(&self.records)
    }

    /// The records processed so far, in order: (shard, seq, sub, data).
    pub fn records(&self) -> Vec<(String, String, u64, String)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                JavaEvent::Record {
                    shard,
                    seq,
                    sub,
                    data,
                    ..
                } => Some((shard, seq, sub, data)),
                _ => None,
            })
            .collect()
    }

    /// The leases it initialised processors for, with the checkpoint each started from.
    pub fn initialized(&self) -> BTreeMap<String, Vec<(String, u64)>> {
        let mut m: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        for e in self.events() {
            if let JavaEvent::Initialize {
                shard,
                checkpoint,
                sub,
            } = e
            {
                m.entry(shard).or_default().push((checkpoint, sub));
            }
        }
        m
    }
}

impl Drop for JavaDaemon {
    fn drop(&mut self) {
        if !self.stopped {
            if std::thread::panicking() {
                eprintln!(
                    "--- last 60 lines of the Java KCL log (pid {}, {}) ---\n{}",
                    self.pid,
                    self.run_dir.join("daemon.log").display(),
                    self.log_tail(60)
                );
            }
            self.stopped = true;
            let _ = Command::new("bash")
                .arg(script())
                .arg("stop")
                .env("KCL_JAVA_RUN_DIR", &self.run_dir)
                .env("KCL_JAVA_STOP_TIMEOUT", "10")
                .stdin(Stdio::null())
                .status();
        }
    }
}

fn text(v: &Value, field: &str) -> Option<String> {
    v.get(field).and_then(Value::as_str).map(str::to_owned)
}

/// Parses the processor's output file (ignoring a partial last line).
pub fn read_events(path: &Path) -> Vec<JavaEvent> {
    let content = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = Vec::new();
    for line in content.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let shard = text(&v, "shard").unwrap_or_default();
        let sub = v.get("sub").and_then(Value::as_u64);
        let event = match v.get("event").and_then(Value::as_str) {
            Some("initialize") => JavaEvent::Initialize {
                shard,
                checkpoint: text(&v, "checkpoint").unwrap_or_default(),
                sub: sub.unwrap_or(0),
            },
            Some("record") => JavaEvent::Record {
                shard,
                seq: text(&v, "seq").unwrap_or_default(),
                sub: sub.unwrap_or(0),
                key: text(&v, "key").unwrap_or_default(),
                data: text(&v, "data").unwrap_or_default(),
            },
            Some("checkpoint") => JavaEvent::Checkpoint {
                shard,
                seq: text(&v, "seq"),
                sub,
                error: text(&v, "error"),
            },
            Some(other) => JavaEvent::Lifecycle {
                shard,
                what: other.to_owned(),
            },
            None => continue,
        };
        out.push(event);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_processor_writes_and_skips_a_partial_line() {
        let dir = std::env::temp_dir().join(format!("java-kcl-events-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("records.jsonl");
        std::fs::write(
            &path,
            concat!(
                r#"{"checkpoint": "TRIM_HORIZON", "event": "initialize", "shard": "s0", "sub": 0, "t": 1.0, "worker": "w"}"#,
                "\n",
                r#"{"data": "a:1", "event": "record", "key": "a", "seq": "42", "shard": "s0", "sub": 3, "t": 1.0, "worker": "w"}"#,
                "\n",
                r#"{"event": "checkpoint", "seq": null, "shard": "s0", "sub": null, "t": 1.0, "worker": "w", "error": "x"}"#,
                "\n",
                r#"{"event": "lease_lost", "shard": "s0", "t": 1.0, "worker": "w"}"#,
                "\n",
                r#"{"event": "record", "sha"#,
            ),
        )
        .unwrap();
        let events = read_events(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            events,
            [
                JavaEvent::Initialize {
                    shard: "s0".into(),
                    checkpoint: "TRIM_HORIZON".into(),
                    sub: 0
                },
                JavaEvent::Record {
                    shard: "s0".into(),
                    seq: "42".into(),
                    sub: 3,
                    key: "a".into(),
                    data: "a:1".into()
                },
                JavaEvent::Checkpoint {
                    shard: "s0".into(),
                    seq: None,
                    sub: None,
                    error: Some("x".into())
                },
                JavaEvent::Lifecycle {
                    shard: "s0".into(),
                    what: "lease_lost".into()
                },
            ]
        );
    }

    #[test]
    fn the_fixture_script_is_there() {
        assert!(script().is_file(), "{} missing", script().display());
    }
}
