//! Driving a binary under test as a child process: reading its stdout lines with a deadline and
//! stopping it with SIGTERM, as systemd or a user's Ctrl-C would.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Reads `n` lines of the child's stdout (each within 60 s), then keeps reading for `quiet` to
/// make sure no more come.
pub async fn read_lines(child: &mut Child, n: usize, quiet: Duration) -> Vec<String> {
    let stdout = child.stdout.as_mut().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut out = Vec::new();
    while out.len() < n {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} lines after 60 s: {out:?}", out.len()))
            .expect("read stdout")
            .expect("the child exited early");
        out.push(line);
    }
    if let Ok(Ok(Some(extra))) = tokio::time::timeout(quiet, lines.next_line()).await {
        panic!("unexpected extra line: {extra}");
    }
    out
}

/// Sends SIGTERM and waits (at most 60 s) for a successful exit.
pub async fn sigterm(child: &mut Child) {
    sigterm_explained(child, String::new).await;
}

/// [`sigterm`], with `explain()` (e.g. the last lines of the child's log) in the failure
/// messages.
pub async fn sigterm_explained(child: &mut Child, explain: impl Fn() -> String) {
    let pid = child.id().expect("pid").to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .unwrap_or_else(|_| panic!("the child did not stop on SIGTERM\n{}", explain()))
        .expect("wait");
    assert!(
        exit.success(),
        "the child exited with {exit:?} after SIGTERM\n{}",
        explain()
    );
}

/// A GET over plain TCP (HTTP/1.1, the connection closed after the answer) to `addr`
/// (`host:port`): the status line and the body.
pub async fn http_get(addr: &str, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

/// The peak resident set size of process `pid` so far (Linux `VmHWM`), in bytes; 0 once the
/// process is gone (or off Linux).
pub fn peak_rss(pid: u32) -> usize {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The child processes of `pid` (Linux `/proc/PID/task/*/children`).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
                out.extend(list.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out
}

/// A payload of exactly `len` bytes that names its record: `rec-NNNNNNNN` (12 bytes), then a
/// printable filler derived from the index (no newline), so that a truncated, shifted or
/// mixed-up record is caught; [`record_index`] reads the index back.
pub fn named_payload(index: usize, len: usize) -> Vec<u8> {
    let mut data = format!("rec-{index:08}").into_bytes();
    data.extend((data.len()..len).map(|i| b'a' + ((i + index) % 26) as u8));
    data.truncate(len);
    data
}

/// The index a [`named_payload`] carries.
pub fn record_index(data: &[u8]) -> Option<usize> {
    std::str::from_utf8(data.get(4..12)?).ok()?.parse().ok()
}
