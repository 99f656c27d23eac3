//! Where the tools' metrics go: Prometheus (an endpoint the tools serve), CloudWatch (as the
//! Java KCL publishes them: `kcl_core::metrics::cloudwatch`), an OpenTelemetry collector over
//! OTLP (under the Java KCL 3.5's OpenTelemetry names: `kcl_core::metrics::otlp`) or nowhere.
//! One place for `kcl-tail --metrics` and kcl-multilang's `metrics*` properties.

use std::time::Duration;

use anyhow::{Context, Result};
use kcl_core::metrics::cloudwatch::{self, CloudWatchConfig, CloudWatchHandle, MetricsLevel};
use kcl_core::metrics::otlp::{self, OtlpConfig, OtlpHandle};
use tracing::{info, warn};

/// How long a stopping tool waits for its last CloudWatch window to be published.
pub const FINAL_FLUSH: Duration = Duration::from_secs(3);

/// Where the metrics go (`kcl-tail --metrics`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricsSink {
    /// A Prometheus endpoint (served on `--metrics-addr`, when given).
    Prometheus,
    /// CloudWatch, as the Java KCL publishes: namespace = the application name.
    Cloudwatch,
    /// OTLP/HTTP to an OpenTelemetry collector, under the Java KCL 3.5's OpenTelemetry names:
    /// `service.name` = the application name.
    Otlp,
    /// Nowhere.
    None,
}

/// Parses a Java `MetricsLevel`: `NONE`, `SUMMARY` or `DETAILED` (any case).
pub fn parse_level(s: &str) -> Result<MetricsLevel, String> {
    match s.trim().to_ascii_uppercase().as_str() {
        "NONE" => Ok(MetricsLevel::None),
        "SUMMARY" => Ok(MetricsLevel::Summary),
        "DETAILED" => Ok(MetricsLevel::Detailed),
        _ => Err(format!("{s:?}: expected NONE, SUMMARY or DETAILED")),
    }
}

/// The CloudWatch settings the Java KCL's properties name: `metricsLevel`,
/// `metricsEnabledDimensions`, `metricsBufferTimeMillis`, `metricsMaxQueueSize`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudWatchSettings {
    /// `metricsLevel` (default DETAILED).
    pub level: MetricsLevel,
    /// `metricsEnabledDimensions` (`Operation` is always added); `None`: the default
    /// (`Operation`, `ShardId`).
    pub dimensions: Option<Vec<String>>,
    /// `metricsBufferTimeMillis` (default 10 s).
    pub buffer_time: Duration,
    /// `metricsMaxQueueSize` (default 10,000 datums).
    pub max_queue_size: usize,
}

impl Default for CloudWatchSettings {
    fn default() -> Self {
        Self {
            level: MetricsLevel::Detailed,
            dimensions: None,
            buffer_time: Duration::from_secs(10),
            max_queue_size: 10_000,
        }
    }
}

/// Installs the CloudWatch recorder as the process's `metrics` recorder: namespace
/// `namespace` (the application name), the client of `sdk` (region, credentials, and the
/// endpoint: `AWS_ENDPOINT_URL_CLOUDWATCH` or `AWS_ENDPOINT_URL` for an emulator). `None` at
/// level NONE (nothing is published).
pub fn install_cloudwatch(
    sdk: &aws_config::SdkConfig,
    namespace: &str,
    settings: &CloudWatchSettings,
) -> Result<Option<CloudWatchHandle>> {
    if settings.level == MetricsLevel::None {
        info!("metrics level NONE: no CloudWatch metrics");
        return Ok(None);
    }
    let client = aws_sdk_cloudwatch::Client::new(sdk);
    let mut config = CloudWatchConfig::new(namespace, client)
        .level(settings.level)
        .buffer_time(settings.buffer_time)
        .max_queue_size(settings.max_queue_size);
    if let Some(dimensions) = &settings.dimensions {
        config = config.enabled_dimensions(dimensions.iter().map(String::as_str));
    }
    let handle = cloudwatch::install(config).context("installing the CloudWatch metrics")?;
    info!(namespace, level = ?settings.level, "publishing metrics to CloudWatch");
    Ok(Some(handle))
}

/// Publishes the last window of a CloudWatch recorder, waiting at most [`FINAL_FLUSH`] (the
/// leases are handed over before: a slow or unreachable endpoint delays only the exit).
pub async fn finish_cloudwatch(handle: Option<CloudWatchHandle>) {
    let Some(handle) = handle else { return };
    match tokio::time::timeout(FINAL_FLUSH, handle.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %kcl_core::ErrorChain(&e), "publishing the last metrics failed"),
        Err(_) => warn!(timeout = ?FINAL_FLUSH, "publishing the last metrics timed out"),
    }
}

/// The OTLP exporter's settings that the tools take.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct OtlpSettings {
    /// The collector's base URL (`/v1/metrics` is appended); `None`: the `OTEL_EXPORTER_OTLP_*`
    /// variables, else `http://localhost:4318`.
    pub endpoint: Option<String>,
    /// As the Java KCL's `metricsLevel` (default DETAILED).
    pub level: MetricsLevel,
    /// As `metricsEnabledDimensions` (Java names; `Operation` is always added); `None`: the
    /// default (`Operation`, `ShardId`).
    pub dimensions: Option<Vec<String>>,
    /// How often to export; `None`: `OTEL_METRIC_EXPORT_INTERVAL`, else 60 s.
    pub interval: Option<Duration>,
}

/// Installs the OTLP exporter as the process's `metrics` recorder: `service.name` =
/// `application` (unless `OTEL_SERVICE_NAME` says otherwise), the other settings from the
/// standard `OTEL_*` variables unless `settings` gives them. `None` at level NONE.
pub fn install_otlp(application: &str, settings: &OtlpSettings) -> Result<Option<OtlpHandle>> {
    if settings.level == MetricsLevel::None {
        info!("metrics level NONE: no OTLP metrics");
        return Ok(None);
    }
    let mut config = OtlpConfig::new(application).from_env().level(settings.level);
    if let Some(endpoint) = &settings.endpoint {
        config = config.endpoint(endpoint);
    }
    if let Some(dimensions) = &settings.dimensions {
        config = config.enabled_dimensions(dimensions.iter().map(String::as_str));
    }
    if let Some(interval) = settings.interval {
        config = config.export_interval(interval);
    }
    let endpoint = config.endpoint.clone();
    let interval = config.export_interval;
    let handle = otlp::install(config).context("installing the OTLP metrics exporter")?;
    info!(%endpoint, ?interval, level = ?settings.level, "exporting metrics over OTLP");
    Ok(Some(handle))
}

/// Exports the last window of an OTLP exporter, waiting at most [`FINAL_FLUSH`] (as
/// [`finish_cloudwatch`]).
pub async fn finish_otlp(handle: Option<OtlpHandle>) {
    let Some(handle) = handle else { return };
    match tokio::time::timeout(FINAL_FLUSH, handle.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %kcl_core::ErrorChain(&e), "exporting the last metrics failed"),
        Err(_) => warn!(timeout = ?FINAL_FLUSH, "exporting the last metrics timed out"),
    }
}
