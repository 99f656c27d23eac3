//! `kcl-tail --status-addr`: the worker's status page, looked at in a real headless browser
//! (Debian's Chromium, which `.ci/run` installs): the page is rendered, its DOM holds one row
//! per held shard with state and record counts, and the screenshot shows the table's rows (the
//! `processing` cells are painted in their colour, one band per shard). `/status.json` says the
//! same for scripts.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kcl_tests::process::http_get;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const TAIL: &str = env!("CARGO_BIN_EXE_kcl-tail");
const SHARDS: usize = 4;
const LINES: usize = 40;

fn chromium() -> PathBuf {
    for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!("the status page test needs Chromium: apt-get install -y chromium (.ci/run does)");
}

/// Runs headless Chromium on `url` with `extra` arguments; returns its stdout.
async fn run_chromium(url: &str, profile: &Path, extra: &[String]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--window-size=1200,900",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(url)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("chromium did not finish within 90 s")
    .expect("start chromium");
    assert!(
        out.status.success(),
        "chromium failed: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn start_tail() -> (Child, String) {
    let mut tail = Command::new(TAIL)
        .args([
            "--local",
            "--stream",
            "status-page",
            "--local-shards",
            &SHARDS.to_string(),
            "--worker-id",
            "status-test-worker",
            "--status-addr",
            "127.0.0.1:0",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start kcl-tail");
    let mut stderr = BufReader::new(tail.stderr.take().expect("stderr")).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stderr.next_line().await.expect("read stderr") {
            if let Some(url) = line.strip_prefix("kcl-tail: status page on http://") {
                return url.trim_end_matches('/').to_owned();
            }
        }
        panic!("kcl-tail ended without serving its status page");
    })
    .await
    .expect("no status page address on stderr within 30 s");
    // Keep draining stderr so that kcl-tail never blocks on it.
    tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
    (tail, addr)
}

/// Row bands of the screenshot painted in the `processing` colour (#c8f0c8): runs of
/// consecutive pixel rows that hold at least `min_pixels` such pixels.
fn processing_bands(png: &Path, min_pixels: usize) -> usize {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png).expect("screenshot"),
    ));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("a frame");
    let channels = info.color_type.samples();
    assert!(channels >= 3, "unexpected PNG colour type {:?}", info.color_type);
    let (mut bands, mut inside) = (0, false);
    for y in 0..info.height as usize {
        let row = &buf[y * info.line_size..(y + 1) * info.line_size];
        let green = row
            .chunks(channels)
            .filter(|p| p[0].abs_diff(0xc8) <= 6 && p[1].abs_diff(0xf0) <= 6 && p[2].abs_diff(0xc8) <= 6)
            .count();
        let hit = green >= min_pixels;
        if hit && !inside {
            bands += 1;
        }
        inside = hit;
    }
    bands
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_every_held_shard_in_a_real_browser() {
    let (mut tail, addr) = start_tail().await;
    let mut stdin = tail.stdin.take().expect("stdin");
    for i in 0..LINES {
        stdin.write_all(format!("record {i}\n").as_bytes()).await.unwrap();
    }
    stdin.flush().await.unwrap();
    // Every line printed: every shard is held and processing.
    let mut stdout = BufReader::new(tail.stdout.take().expect("stdout")).lines();
    for n in 0..LINES {
        tokio::time::timeout(Duration::from_secs(60), stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("only {n} of {LINES} records printed after 60 s"))
            .unwrap()
            .expect("kcl-tail ended early");
    }

    // The JSON, for scripts.
    let (status, json) = http_get(&addr, "/status.json").await;
    assert!(status.ends_with("200 OK"), "{status}");
    assert!(json.contains("\"worker_id\":\"status-test-worker\""), "{json}");
    assert!(json.contains("\"leases_held\":4"), "{json}");
    assert_eq!(json.matches("\"state\":\"processing\"").count(), SHARDS, "{json}");
    assert_eq!(json.matches("\"event\":\"taken\"").count(), SHARDS, "{json}");
    let (status, _) = http_get(&addr, "/nothing-here").await;
    assert!(status.ends_with("404 Not Found"), "{status}");

    // The page, in a real browser.
    let profile = tempdir("kcl-status-chromium");
    let url = format!("http://{addr}/");
    let dom = run_chromium(&url, &profile, &["--dump-dom".to_owned()]).await;
    assert!(dom.contains("Worker status-test-worker"), "{dom}");
    let leases = dom
        .split("<table id=\"leases\">")
        .nth(1)
        .and_then(|t| t.split("</table>").next())
        .unwrap_or_else(|| panic!("no leases table in the rendered page: {dom}"));
    for shard in 0..SHARDS {
        assert!(
            leases.contains(&format!("shardId-{shard:012}")),
            "shard {shard} missing: {leases}"
        );
    }
    assert_eq!(
        leases.matches("<tr>").count(),
        SHARDS + 1,
        "a header and one row per shard: {leases}"
    );
    assert_eq!(leases.matches(">processing<").count(), SHARDS, "{leases}");
    let records: u64 = leases
        .split("<tr>")
        .skip(2)
        .map(|row| {
            let cells: Vec<&str> = row.split("<td").collect();
            let records = cells.get(6).expect("a records cell");
            let value = records
                .split('>')
                .nth(1)
                .and_then(|v| v.split('<').next())
                .unwrap_or("x");
            value
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("records cell {records:?}"))
        })
        .sum();
    assert_eq!(
        records, LINES as u64,
        "records per shard add up to what was printed: {leases}"
    );
    let moves = dom.split("<table id=\"moves\">").nth(1).expect("moves table");
    assert!(moves.contains(">taken<"), "{moves}");

    // The screenshot: one painted band per shard row.
    let shot = profile.join("status.png");
    run_chromium(&url, &profile, &[format!("--screenshot={}", shot.display())]).await;
    let bands = processing_bands(&shot, 12);
    assert_eq!(
        bands,
        SHARDS,
        "processing cells painted in the screenshot {}",
        shot.display()
    );

    drop(stdin);
    let exit = tokio::time::timeout(Duration::from_secs(30), tail.wait())
        .await
        .expect("kcl-tail exits at EOF")
        .unwrap();
    assert!(exit.success());
    let _ = std::fs::remove_dir_all(&profile);
}

fn tempdir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
