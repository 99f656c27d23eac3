//! `kcl-demo`, `kcl-replicate` and `kcl-bench` as a log pipeline sees them: both take `--log-format` (and
//! `KCL_LOG_FORMAT`), and `--log-format json` writes one JSON object per line. The operator
//! tools' checks (signals, colours, errors) are in kcl-tools/tests/binaries.rs.

use std::process::{Command, Stdio};

use serde_json::Value;

const BINARIES: [&str; 3] = [
    env!("CARGO_BIN_EXE_kcl-demo"),
    env!("CARGO_BIN_EXE_kcl-replicate"),
    env!("CARGO_BIN_EXE_kcl-bench"),
];

/// Every line of `stderr` is a JSON object with a level, fields and a target.
fn all_json(stderr: &[u8]) -> Vec<Value> {
    let text = String::from_utf8_lossy(stderr);
    assert!(!text.trim().is_empty(), "no logs");
    text.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            assert!(v["level"].is_string(), "{line}");
            assert!(v["fields"].is_object(), "{line}");
            assert!(v["target"].is_string(), "{line}");
            v
        })
        .collect()
}

#[test]
fn kcl_demo_json_logs_are_one_object_per_line() {
    // Briefly; kcl-demo ends by itself (`--duration`).
    let demo = Command::new(env!("CARGO_BIN_EXE_kcl-demo"))
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .env_remove("KCL_LOG_FORMAT")
        .args([
            "--log-format=json",
            "--duration",
            "1",
            "--shards",
            "2",
            "--workers",
            "1",
        ])
        .args(["--rate", "100", "--no-kill", "--no-reshard"])
        .stdin(Stdio::null())
        .output()
        .expect("kcl-demo");
    assert!(demo.status.success(), "{}", String::from_utf8_lossy(&demo.stderr));
    let lines = all_json(&demo.stderr);
    assert!(
        lines
            .iter()
            .any(|v| v["fields"]["message"].as_str() == Some("worker starting")),
        "{lines:?}"
    );
}

#[test]
fn every_binary_takes_log_format() {
    for exe in BINARIES {
        let out = Command::new(exe).arg("--help").output().expect("--help");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{exe}");
        assert!(
            help.contains("--log-format") && help.contains("KCL_LOG_FORMAT"),
            "{exe}: {help}"
        );
        let bad = Command::new(exe)
            .args(["--log-format", "xml", "--help"])
            .output()
            .expect("run");
        assert_eq!(
            bad.status.code(),
            Some(2),
            "{exe}: --log-format xml is a usage error"
        );
    }
}
