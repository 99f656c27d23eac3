//! The tools (`kcl-tail`, `kcl-admin`, `kcl-multilang`) as a process manager or a log pipeline
//! sees them, on the bundled local backend (no AWS, no emulators): SIGTERM stops them gracefully with exit status 0; their logs carry
//! no colour codes unless stderr is a terminal (and `NO_COLOR` is not set); `--log-format json`
//! (or `KCL_LOG_FORMAT=json`) writes one JSON object per line; a closed stderr does not stop
//! them; a failure ends with one line of sentences; contradicting settings are refused before
//! any AWS call.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// kcl-examples' `kcl-demo` and `kcl-bench` have the same checks in kcl-examples/tests/binaries.rs.
const BINARIES: [&str; 3] = [
    env!("CARGO_BIN_EXE_kcl-tail"),
    env!("CARGO_BIN_EXE_kcl-admin"),
    env!("CARGO_BIN_EXE_kcl-multilang"),
];

/// A binary with a clean environment for logging: `RUST_LOG=info`, no `NO_COLOR`, no
/// `KCL_LOG_FORMAT`.
fn command(exe: &str) -> Command {
    let mut c = Command::new(exe);
    c.env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .env_remove("KCL_LOG_FORMAT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Waits for the process, killing it after `limit`.
fn wait(mut child: Child, limit: Duration) -> Output {
    let id = child.id();
    let (done, timed_out) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if timed_out.recv_timeout(limit).is_err() {
            let _ = Command::new("kill").args(["-KILL", &id.to_string()]).status();
        }
    });
    // Closes stdin (the local kcl-tail's input) if the test did not.
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("wait");
    let _ = done.send(());
    let _ = watchdog.join();
    out
}

/// `kcl-tail --local` reading `lines` from stdin, stopping after them (`-n`).
fn tail_local(extra: &[&str], env: &[(&str, &str)], lines: usize) -> Output {
    let mut c = command(env!("CARGO_BIN_EXE_kcl-tail"));
    c.args(["--local", "--stream", "logs", "-n", &lines.to_string()])
        .args(extra);
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().expect("kcl-tail");
    let mut stdin = child.stdin.take().expect("stdin");
    for i in 0..lines {
        writeln!(stdin, "line {i}").expect("write stdin");
    }
    drop(stdin);
    let out = wait(child, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "kcl-tail: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), lines);
    out
}

#[test]
fn sigterm_stops_kcl_tail_gracefully_with_status_0() {
    let mut child = command(env!("CARGO_BIN_EXE_kcl-tail"))
        .args(["--local", "--stream", "orders"])
        .spawn()
        .expect("kcl-tail");
    // Records printed: the worker runs, and the signal handlers are installed (the first poll
    // of the shutdown signal comes before the first record is read).
    let mut stdin = child.stdin.take().expect("stdin");
    for i in 0..3 {
        writeln!(stdin, "order {i}").expect("write stdin");
    }
    let stdout = child.stdout.take().expect("stdout");
    let (lines, printed) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    for _ in 0..3 {
        let line = printed
            .recv_timeout(Duration::from_secs(30))
            .expect("a record within 30 s")
            .expect("stdout");
        let record: Value = serde_json::from_str(&line).expect("a JSON record");
        assert_eq!(record["stream"], "orders");
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill(1)");
    assert!(status.success());
    // stdin stays open: SIGTERM, not the end of the input, stops it.
    let out = wait(child, Duration::from_secs(30));
    drop(stdin);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{stderr}", out.status);
    assert!(
        stderr.contains("shutdown signal received") && stderr.contains("SIGTERM"),
        "{stderr}"
    );
    assert!(stderr.contains("worker shutting down gracefully"), "{stderr}");
    assert!(stderr.contains("worker stopped"), "{stderr}");
    assert!(!stderr.contains("ERROR"), "{stderr}");
}

#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let out = tail_local(&[], &[], 3);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("worker starting"), "logs at info: {stderr}");
    assert!(
        !stderr.contains("\x1b["),
        "escape codes in piped logs: {stderr:?}"
    );
}

/// Runs `cmd` (a shell command) with its stderr on a terminal, through util-linux `script`;
/// returns what the terminal got.
fn on_a_terminal(cmd: &str, no_color: Option<&str>) -> String {
    let mut c = Command::new("script");
    c.args(["-qec", cmd, "/dev/null"])
        .env("RUST_LOG", "info")
        .env_remove("KCL_LOG_FORMAT")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(v) = no_color {
        c.env("NO_COLOR", v);
    }
    let child = c.spawn().expect("script (util-linux) must be installed");
    let out = wait(child, Duration::from_secs(60));
    assert!(out.status.success(), "{cmd}: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    let tail = env!("CARGO_BIN_EXE_kcl-tail");
    // stdout to /dev/null (records), stderr (logs) on the terminal.
    let cmd = format!("printf 'a\\nb\\n' | {tail} --local --stream t -n 2 >/dev/null");
    let coloured = on_a_terminal(&cmd, None);
    assert!(coloured.contains("worker starting"), "{coloured}");
    assert!(
        coloured.contains("\x1b["),
        "a terminal gets colours: {coloured:?}"
    );
    let plain = on_a_terminal(&cmd, Some("1"));
    assert!(plain.contains("worker starting"), "{plain}");
    assert!(!plain.contains("\x1b["), "NO_COLOR=1: {plain:?}");
}

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

fn messages(lines: &[Value]) -> Vec<&str> {
    lines
        .iter()
        .filter_map(|v| v["fields"]["message"].as_str())
        .collect()
}

#[test]
fn json_logs_are_one_object_per_line() {
    let flag = tail_local(&["--log-format", "json"], &[], 3);
    let lines = all_json(&flag.stderr);
    assert!(messages(&lines).contains(&"worker starting"), "{lines:?}");
    assert!(!String::from_utf8_lossy(&flag.stderr).contains("\x1b["));

    let env = tail_local(&[], &[("KCL_LOG_FORMAT", "json")], 3);
    assert!(messages(&all_json(&env.stderr)).contains(&"worker stopped"));

    // kcl-admin on its in-process demo application.
    let admin = wait(
        command(env!("CARGO_BIN_EXE_kcl-admin"))
            .args(["--local", "--watch-ms", "0", "leases", "--log-format", "json"])
            .spawn()
            .expect("kcl-admin"),
        Duration::from_secs(60),
    );
    assert!(
        admin.status.success(),
        "{}",
        String::from_utf8_lossy(&admin.stderr)
    );
    assert!(messages(&all_json(&admin.stderr)).contains(&"worker starting"));

    // The error that ends a program is a JSON line too.
    let multilang = wait(
        command(env!("CARGO_BIN_EXE_kcl-multilang"))
            .args(["--log-format", "json", "/nonexistent/app.properties"])
            .spawn()
            .expect("kcl-multilang"),
        Duration::from_secs(60),
    );
    assert_eq!(multilang.status.code(), Some(2));
    let lines = all_json(&multilang.stderr);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["level"], "ERROR");
    assert!(
        messages(&lines)[0].contains("cannot read /nonexistent/app.properties"),
        "{lines:?}"
    );
}

/// kclpy's sample properties name the stream by an ARN of another region than `regionName`:
/// one sentence naming both, exit status 2, before any AWS call (the endpoints lead nowhere).
#[test]
fn kcl_multilang_refuses_a_stream_arn_of_another_region() {
    let dir = std::env::temp_dir().join(format!("kcl-binaries-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("sample.properties");
    std::fs::write(
        &path,
        "executableName = sample_kclpy_app.py\nstreamName = kclpysample\n\
         streamArn = arn:aws:kinesis:us-east-5:000000000000:stream/kclpysample\n\
         applicationName = PythonKCLSample\nregionName = us-east-1\n\
         kinesisEndpoint = http://127.0.0.1:9\ndynamoDBEndpoint = http://127.0.0.1:9\n",
    )
    .expect("write properties");
    let out = wait(
        command(env!("CARGO_BIN_EXE_kcl-multilang"))
            .arg("--properties-file")
            .arg(&path)
            .spawn()
            .expect("kcl-multilang"),
        Duration::from_secs(60),
    );
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim(),
        format!(
            "error: {}: streamArn names region us-east-5 but regionName is us-east-1: \
             remove streamArn or make the two agree",
            path.display()
        )
    );
}

/// An endpoint where nothing listens: exit status 1 and one line of sentences naming the
/// endpoint or the failed connection, no `Debug` dump of the SDK's errors, no message twice.
#[test]
fn an_unreachable_endpoint_is_one_line_of_sentences() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let aws = ["--region", "us-east-1", "--endpoint-url", &endpoint];
    let run = |exe: &str, args: &[&str]| {
        let mut c = command(exe);
        c.args(args)
            .env_remove("RUST_LOG")
            .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
            .env("AWS_SECRET_ACCESS_KEY", "secret")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
        for var in [
            "AWS_PROFILE",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_KINESIS",
            "AWS_ENDPOINT_URL_DYNAMODB",
        ] {
            c.env_remove(var);
        }
        wait(c.spawn().expect("start"), Duration::from_secs(60))
    };
    let tail = [
        env!("CARGO_BIN_EXE_kcl-tail"),
        "--stream",
        "s",
        "--application-name",
        "a",
    ];
    let admin = [env!("CARGO_BIN_EXE_kcl-admin"), "--application-name", "a"];
    let cases = [
        (
            &tail[..],
            vec![],
            format!("cannot connect to Kinesis at {endpoint}"),
        ),
        (
            &tail[..],
            vec!["--no-checkpoint"],
            format!("cannot connect to Kinesis at {endpoint}"),
        ),
        (&admin[..], vec!["leases"], "tcp connect error".to_owned()),
    ];
    for (cmd, extra, needle) in cases {
        let args: Vec<&str> = cmd[1..].iter().copied().chain(aws).chain(extra).collect();
        let out = run(cmd[0], &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        let line = stderr.trim();
        assert_eq!(line.lines().count(), 1, "{args:?}: one line: {stderr}");
        assert!(
            line.starts_with("error: ") && line.contains(&needle),
            "{args:?}: {line}"
        );
        for dump in ["DispatchFailure(", "ConnectorError {", "Os {", "kind:"] {
            assert!(!line.contains(dump), "{args:?}: a Debug dump: {line}");
        }
        let parts: Vec<&str> = line.split(": ").collect();
        let distinct: std::collections::BTreeSet<&str> = parts.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            parts.len(),
            "{args:?}: a message repeated: {line}"
        );

        // The same error as a JSON line.
        let args: Vec<&str> = args.into_iter().chain(["--log-format", "json"]).collect();
        let out = run(cmd[0], &args);
        assert_eq!(out.status.code(), Some(1));
        let lines = all_json(&out.stderr);
        let last = lines.last().expect("a line");
        assert_eq!(last["level"], "ERROR");
        assert_eq!(
            last["fields"]["message"].as_str(),
            line.strip_prefix("error: "),
            "{args:?}"
        );
    }
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

#[test]
fn a_closed_stderr_does_not_stop_kcl_tail() {
    let mut child = command(env!("CARGO_BIN_EXE_kcl-tail"))
        .args(["--local", "--stream", "s", "-n", "20"])
        .spawn()
        .expect("kcl-tail");
    // Nobody reads the logs any more: every log line fails to be written.
    drop(child.stderr.take());
    let mut stdin = child.stdin.take().expect("stdin");
    for i in 0..20 {
        writeln!(stdin, "line {i}").expect("write stdin");
    }
    drop(stdin);
    let out = wait(child, Duration::from_secs(60));
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 20);
}
