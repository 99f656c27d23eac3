//! Records of 10 MiB (Kinesis' most since October 2025) through the tools on the bundled local
//! backend: every record printed whole by `kcl-tail --local` (one JSON line of about 14 MB
//! each), in order per shard, with the process's peak memory measured and bounded per shard.
//! The figures are printed (run with `--nocapture`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use kcl_tests::process::{named_payload as payload, peak_rss, record_index};
use serde_json::Value;

const MIB: usize = 1024 * 1024;
const RECORD: usize = 10 * MIB;
const RECORDS: usize = 6;
const SHARDS: usize = 2;
const LIMIT: Duration = Duration::from_secs(120);

fn kcl_tail(max_record_kib: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kcl-tail"))
        .args([
            "--local",
            "--stream",
            "big",
            "--local-shards",
            &SHARDS.to_string(),
        ])
        .args(["--local-max-record-kib", max_record_kib])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("kcl-tail")
}

/// The lines kcl-tail prints, through a channel (a reader thread per process).
fn printed(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::with_capacity(MIB, stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Feeds `lines` to a local kcl-tail, waits for them printed, and returns the printed JSON
/// records and the process's peak memory (read while it still runs, before stdin is closed).
fn run(lines: &[Vec<u8>], max_record_kib: &str) -> (Vec<Value>, usize) {
    let mut child = kcl_tail(max_record_kib);
    let rx = printed(&mut child);
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = {
        let lines = lines.to_vec();
        std::thread::spawn(move || {
            for line in lines {
                stdin.write_all(&line).expect("write stdin");
                stdin.write_all(b"\n").expect("write stdin");
            }
            stdin
        })
    };
    let mut records = Vec::new();
    for _ in 0..lines.len() {
        let line = rx.recv_timeout(LIMIT).expect("a record printed in time");
        records.push(serde_json::from_str::<Value>(&line).expect("one JSON object per line"));
    }
    let peak = peak_rss(child.id());
    drop(writer.join().expect("writer")); // stdin closed: kcl-tail ends
    let status = child.wait().expect("wait");
    assert!(status.success(), "kcl-tail: {status:?}");
    (records, peak)
}

#[test]
fn kcl_tail_prints_every_10_mib_record_whole_with_bounded_memory() {
    // The baseline: the same process with small records.
    let small: Vec<Vec<u8>> = (0..RECORDS).map(|i| payload(i, 64)).collect();
    let (_, baseline) = run(&small, "10240");
    let big: Vec<Vec<u8>> = (0..RECORDS).map(|i| payload(i, RECORD)).collect();
    let (records, peak) = run(&big, "10240");
    let mut seen = Vec::new();
    for record in &records {
        let data = record["data"].as_str().expect("data");
        let bytes = aws_smithy_types::base64::decode(data).expect("base64");
        let index = record_index(&bytes).expect("index");
        assert_eq!(bytes, payload(index, RECORD), "record {index} printed whole");
        seen.push(index);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..RECORDS).collect::<Vec<_>>(), "every record once");
    // The local stream keeps every record in the process; the rest is the tool's own.
    let stored = RECORDS * RECORD;
    let own = peak.saturating_sub(baseline).saturating_sub(stored);
    let per_shard = own / SHARDS;
    eprintln!(
        "kcl-tail --local, {RECORDS} records of 10 MiB on {SHARDS} shards: peak RSS {} MiB, \
         baseline {} MiB, stored {} MiB, the rest {} MiB: {} MiB per shard",
        peak / MIB,
        baseline / MIB,
        stored / MIB,
        own / MIB,
        per_shard / MIB
    );
    // Bounded: a shard holds its read-ahead (8 MiB plus one record), the batch being printed
    // and its JSON line (about 14 MB); far from the records put.
    assert!(per_shard < 100 * MIB, "{} MiB per shard", per_shard / MIB);
}

/// A line longer than the local stream's largest record is refused with an error naming the
/// limit (not buffered without bound, not truncated).
#[test]
fn kcl_tail_local_refuses_a_line_longer_than_the_largest_record() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kcl-tail"))
        .args(["--local", "--stream", "big"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcl-tail");
    let mut stdin = child.stdin.take().expect("stdin");
    let line = payload(0, MIB + 1);
    let _ = stdin.write_all(&line);
    let _ = stdin.write_all(b"\n");
    drop(stdin);
    let out = child.wait_with_output().expect("wait");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("longer than the largest record of the local stream (1048576 bytes)"),
        "{stderr}"
    );
}
