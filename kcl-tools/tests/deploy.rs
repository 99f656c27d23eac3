//! The deployment files shipped in `kcl-tools/deploy/` say what the code does: the IAM policy
//! grants exactly the AWS actions the library calls (no more, no fewer), each explained in the
//! README; the systemd unit is valid and writes the records to a file, never to the journal
//! (whose rate and line limits would drop lines that were already checkpointed).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// `snake_case` to `PascalCase`: the SDK's method name to the IAM action's.
fn pascal(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        })
        .collect()
}

/// The SDK operations called on `client` in a source file (its test module excluded): every
/// `client . <op>()` chain, across line breaks (`client.config()`, the client's settings, is no
/// call).
fn sdk_calls(source: &str) -> BTreeSet<String> {
    let code = source.split("#[cfg(test)]").next().unwrap_or_default();
    let compact: String = code.split_whitespace().collect();
    let mut ops = BTreeSet::new();
    for (i, _) in compact.match_indices("client.") {
        let rest = &compact[i + "client.".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        if !name.is_empty() && name != "config" && rest[name.len()..].starts_with("()") {
            ops.insert(name);
        }
    }
    ops
}

fn policy_actions() -> BTreeSet<String> {
    let policy: serde_json::Value =
        serde_json::from_str(&read("kcl-tools/deploy/iam-policy.json")).expect("valid JSON");
    let mut actions = BTreeSet::new();
    for statement in policy["Statement"].as_array().expect("statements") {
        assert_eq!(statement["Effect"], "Allow");
        match &statement["Action"] {
            serde_json::Value::String(a) => {
                actions.insert(a.clone());
            }
            serde_json::Value::Array(list) => {
                actions.extend(list.iter().map(|a| a.as_str().expect("action string").to_owned()))
            }
            other => panic!("unexpected Action {other}"),
        }
    }
    actions
}

/// Calls of the lease store that only `kcl-admin` makes, never a worker.
const OPERATOR_ONLY: &[&str] = &["dynamodb:DeleteTable"];

#[test]
fn the_iam_policy_grants_exactly_the_calls_the_code_makes_each_explained() {
    let mut called = BTreeSet::new();
    for op in sdk_calls(&read("kcl-core/src/backend/kinesis.rs")) {
        called.insert(format!("kinesis:{}", pascal(&op)));
    }
    for file in [
        "kcl-lease/src/dynamodb/mod.rs",
        "kcl-lease/src/dynamodb/schema.rs",
    ] {
        for op in sdk_calls(&read(file)) {
            called.insert(format!("dynamodb:{}", pascal(&op)));
        }
    }
    assert!(
        called.contains("kinesis:GetRecords") && called.contains("dynamodb:UpdateItem"),
        "{called:?}"
    );
    // Operator-only calls (kcl-admin delete-application) are not the worker's: the policy must
    // not grant them, and the README must say who needs them.
    let readme = read("kcl-tools/deploy/README.md");
    for action in OPERATOR_ONLY {
        assert!(
            called.remove(*action),
            "{action} is no longer called: drop it from OPERATOR_ONLY"
        );
        assert!(
            readme.contains(&format!("`{action}`")),
            "README.md does not say who needs {action}"
        );
    }
    let granted = policy_actions();
    let unused: Vec<_> = granted.difference(&called).collect();
    let missing: Vec<_> = called.difference(&granted).collect();
    assert!(
        unused.is_empty(),
        "the policy grants actions the code never calls: {unused:?}"
    );
    assert!(
        missing.is_empty(),
        "the code calls actions the policy does not grant: {missing:?}"
    );
    for action in &granted {
        assert!(
            readme.contains(&format!("`{action}`")),
            "README.md does not explain {action}"
        );
    }
    let policy = read("kcl-tools/deploy/iam-policy.json");
    assert!(
        policy.contains("table/APPLICATION_NAME-WorkerHeartbeats"),
        "the heartbeat table is covered"
    );
}

#[test]
fn the_systemd_unit_writes_records_to_a_file_and_is_valid() {
    let unit = read("kcl-tools/deploy/kcl-tail.service");
    let setting = |name: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.trim().strip_prefix(&format!("{name}=")).map(str::to_owned))
            .collect()
    };
    let stdout = setting("StandardOutput");
    assert_eq!(stdout.len(), 1, "{stdout:?}");
    assert!(
        stdout[0].starts_with("append:/var/log/kcl-tail/"),
        "records must go to a file, not {}",
        stdout[0]
    );
    assert_eq!(
        setting("LogsDirectory"),
        ["kcl-tail"],
        "the file's directory is writable under ProtectSystem=strict"
    );
    assert_eq!(setting("StandardError"), ["journal"]);
    assert_eq!(setting("KillSignal"), ["SIGTERM"]);

    // systemd's own check, with ExecStart pointing at the binary just built.
    let exe = env!("CARGO_BIN_EXE_kcl-tail");
    let dir = std::env::temp_dir().join(format!("kcl-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("kcl-tail.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/kcl-tail", exe)).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package) must be installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}
