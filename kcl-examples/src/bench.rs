//! Measuring helpers shared by the benchmark scenarios: process CPU and memory, JSON output
//! with pre-rendered values, and the emulators.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use kcl_core::aws::{load_sdk_config, AwsOptions};

/// CPU seconds (user + system) and peak RSS in MiB of this process.
pub fn rusage() -> (f64, f64) {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return (0.0, 0.0);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        secs(ru.ru_utime) + secs(ru.ru_stime),
        ru.ru_maxrss as f64 / 1024.0,
    )
}

/// Current RSS in MiB (from /proc; 0 where unavailable).
pub fn current_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |pages| pages * 4096.0 / (1024.0 * 1024.0))
}

/// A JSON object from pre-rendered values.
pub fn json(fields: &[(&str, String)]) -> String {
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", body.join(","))
}

/// A JSON string.
pub fn s(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A JSON number with three decimals (`null` when not finite).
pub fn f(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "null".into()
    }
}

/// Starts the emulators with the project's script and sets the endpoint variables.
pub fn start_emulators() -> Result<()> {
    if std::env::var_os("AWS_ENDPOINT_URL_KINESIS").is_some()
        && std::env::var_os("AWS_ENDPOINT_URL_DYNAMODB").is_some()
    {
        return Ok(());
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new("bash")
        .arg(root.join("localstack/start-emulators.sh"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running localstack/start-emulators.sh")?;
    if !out.status.success() {
        bail!("localstack/start-emulators.sh failed");
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((k, v)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
            std::env::set_var(k, v);
        }
    }
    Ok(())
}

/// The SDK configuration and a Kinesis client for the emulators (started if need be).
pub async fn aws() -> Result<(aws_config::SdkConfig, aws_sdk_kinesis::Client)> {
    start_emulators()?;
    let sdk = load_sdk_config(&AwsOptions {
        region: Some("us-east-1".into()),
        ..AwsOptions::default()
    })
    .await;
    let kinesis = aws_sdk_kinesis::Client::new(&sdk);
    Ok((sdk, kinesis))
}

/// Creates a stream and waits until it is active.
pub async fn create_stream(kinesis: &aws_sdk_kinesis::Client, stream: &str, shards: i32) -> Result<()> {
    kinesis
        .create_stream()
        .stream_name(stream)
        .shard_count(shards)
        .send()
        .await
        .context("CreateStream")?;
    for _ in 0..600 {
        let status = kinesis
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await?;
        if status
            .stream_description_summary()
            .map(|s| s.stream_status().as_str())
            == Some("ACTIVE")
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("stream {stream} did not become ACTIVE")
}

/// A name unique to this process and moment.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// Checks `cond` every `poll` until it holds; how long that took, or an error naming `what`
/// after `limit`.
pub async fn wait_for(
    limit: Duration,
    poll: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) -> Result<Duration> {
    let start = tokio::time::Instant::now();
    while !cond() {
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(poll).await;
    }
    Ok(start.elapsed())
}
