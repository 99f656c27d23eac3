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
/// `client . <op>()` chain, across line breaks (`client.config()`, the client's settings, and
/// `client.clone()` are no calls).
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
        if !name.is_empty()
            && !["config", "clone"].contains(&name.as_str())
            && rest[name.len()..].starts_with("()")
        {
            ops.insert(name);
        }
    }
    ops
}

fn policy_actions(path: &str) -> BTreeSet<String> {
    policy_statements(path)
        .into_iter()
        .flat_map(|(actions, _)| actions)
        .collect()
}

/// Each statement of a policy: its actions and its resources (all `Allow`).
fn policy_statements(path: &str) -> Vec<(BTreeSet<String>, Vec<String>)> {
    let policy: serde_json::Value = serde_json::from_str(&read(path)).expect("valid JSON");
    let mut out = Vec::new();
    for statement in policy["Statement"].as_array().expect("statements") {
        let mut actions = BTreeSet::new();
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
        let resources = match &statement["Resource"] {
            serde_json::Value::String(r) => vec![r.clone()],
            serde_json::Value::Array(list) => list
                .iter()
                .map(|r| r.as_str().expect("resource string").to_owned())
                .collect(),
            other => panic!("unexpected Resource {other}"),
        };
        out.push((actions, resources));
    }
    out
}

/// The lease store's calls (the lease and heartbeat tables), as `dynamodb:` actions.
fn lease_store_calls() -> BTreeSet<String> {
    let mut called = BTreeSet::new();
    for file in [
        "kcl-lease/src/dynamodb/mod.rs",
        "kcl-lease/src/dynamodb/schema.rs",
    ] {
        for op in sdk_calls(&read(file)) {
            called.insert(format!("dynamodb:{}", pascal(&op)));
        }
    }
    called
}

/// Calls of the lease store that only `kcl-admin` makes, never a worker.
const OPERATOR_ONLY: &[&str] = &["dynamodb:DeleteTable"];

#[test]
fn the_iam_policy_grants_exactly_the_calls_the_code_makes_each_explained() {
    let mut called = BTreeSet::new();
    for op in sdk_calls(&read("kcl-core/src/backend/kinesis.rs")) {
        called.insert(format!("kinesis:{}", pascal(&op)));
    }
    called.extend(lease_store_calls());
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
    let granted = policy_actions("kcl-tools/deploy/iam-policy.json");
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

/// The DynamoDB Streams policy: exactly the calls of `DynamoDbStreamsBackend` (DynamoDB Streams'
/// actions are in IAM's `dynamodb` namespace), the lease store and the CloudWatch publisher,
/// each explained in the README's section; the stream's actions only on the table's streams,
/// `DescribeTable` on the source table, and nothing of Kinesis.
#[test]
fn the_dynamodb_streams_policy_grants_exactly_the_calls_the_code_makes_each_explained() {
    const POLICY: &str = "kcl-tools/deploy/iam-policy-dynamodb-streams.json";
    let backend = sdk_calls(&read("kcl-core/src/backend/dynamodb_streams.rs"));
    let mut called: BTreeSet<String> = backend
        .iter()
        .map(|op| format!("dynamodb:{}", pascal(op)))
        .collect();
    for op in [
        "describe_stream",
        "get_shard_iterator",
        "get_records",
        "describe_table",
    ] {
        assert!(backend.contains(op), "{op} is no longer called: {backend:?}");
    }
    called.extend(lease_store_calls());
    for op in sdk_calls(&read("kcl-core/src/metrics/cloudwatch.rs")) {
        called.insert(format!("cloudwatch:{}", pascal(&op)));
    }
    called.retain(|a| !OPERATOR_ONLY.contains(&a.as_str()));
    let granted = policy_actions(POLICY);
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

    let readme = read("kcl-tools/deploy/README.md");
    let section = readme
        .split("## A DynamoDB Streams application")
        .nth(1)
        .expect("the README's DynamoDB Streams section");
    for action in &granted {
        let short = action.trim_start_matches("dynamodb:");
        assert!(
            section.contains(&format!("`{action}`")) || section.contains(&format!("`{short}`")),
            "the README's DynamoDB Streams section does not explain {action}"
        );
    }
    // Where each action is granted.
    let stream_resource = "arn:aws:dynamodb:REGION:ACCOUNT:table/TABLE_NAME/stream/*";
    let tables = [
        "arn:aws:dynamodb:REGION:ACCOUNT:table/APPLICATION_NAME",
        "arn:aws:dynamodb:REGION:ACCOUNT:table/APPLICATION_NAME-WorkerHeartbeats",
    ];
    for (actions, resources) in policy_statements(POLICY) {
        for action in &actions {
            let allowed: Vec<&str> = match action.as_str() {
                "dynamodb:DescribeStream" | "dynamodb:GetShardIterator" | "dynamodb:GetRecords" => {
                    vec![stream_resource]
                }
                "dynamodb:DescribeTable" => {
                    let mut t = tables.to_vec();
                    t.push("arn:aws:dynamodb:REGION:ACCOUNT:table/TABLE_NAME");
                    t
                }
                "cloudwatch:PutMetricData" => vec!["*"],
                _ => tables.to_vec(),
            };
            for resource in &resources {
                assert!(
                    allowed.contains(&resource.as_str()),
                    "{action} is granted on {resource}, beyond {allowed:?}"
                );
            }
        }
    }
    let policy = read(POLICY);
    assert!(!policy.contains("kinesis:"), "no Kinesis action");
    assert!(
        policy.contains("\"cloudwatch:namespace\": \"APPLICATION_NAME\""),
        "PutMetricData is limited to the application's namespace"
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
