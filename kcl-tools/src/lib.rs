//! The operator tools of the Kinesis Client Library for Rust, as users install them
//! (`cargo install kcl-tools`, or `pip install kcl-multilang` for the MultiLang daemon alone):
//!
//! - `kcl-tail`: a ready consumer; reads a stream as a KCL application and prints one JSON line
//!   per record (Prometheus metrics, the status page, a systemd unit in `deploy/`).
//! - `kcl-admin`: an application's lease table for operators (leases, workers, lag; rewinding
//!   checkpoints, deleting an application).
//! - `kcl-multilang`: the Java KCL's MultiLangDaemon protocol, so record processors written for
//!   the Java daemon (kclpy, `aws-kcl` for Node.js, ...) run unchanged without a JVM.
//!
//! This library holds the code those binaries share (and that kcl-examples' `kcl-demo` and
//! `kcl-bench` reuse: logging, exit status). It is the binaries' internals, not an API with
//! stability promises: applications use `kcl-core` and `kcl-lease`. It is built with kcl-core's
//! and kcl-lease's production features only, never their `testing` features (fault injection).
//!
//! # Layout
//! - [`admin`]: `kcl-admin`'s logic over any lease store and stream backend (leases, workers,
//!   lag, reset) and its tables.
//! - [`multilang`]: `kcl-multilang`, the MultiLangDaemon protocol (properties, messages, the
//!   child process driver).
//! - [`lines`]: stdin read line by line with a bound (the tools' `--local` modes).
//! - [`logging`]: the logging of every binary (text or JSON on stderr, colour only on a
//!   terminal).
//! - [`metrics`]: where the metrics go (Prometheus, CloudWatch as the Java KCL publishes them,
//!   or nowhere), for `kcl-tail --metrics` and kcl-multilang's `metrics*` properties.
//! - this module: what several binaries share: [`exit_status`], [`prepare_aws`],
//!   [`prometheus_builder`], [`CheckpointEveryBatch`].
//! - `src/bin/`: the three binaries; `deploy/`: a systemd unit and the IAM policy for
//!   `kcl-tail`.

pub mod admin;
pub mod lines;
pub mod logging;
pub mod metrics;
pub mod multilang;

use std::future::Future;
use std::process::ExitCode;

use async_trait::async_trait;
use kcl_core::{ProcessRecordsInput, ProcessorError, RecordProcessor, ShutdownRequestedInput};

/// A processor that only checkpoints: after every batch, and at a graceful shutdown (for
/// demos and benchmarks where what is measured is the runtime, not the processing).
pub struct CheckpointEveryBatch;

#[async_trait]
impl RecordProcessor for CheckpointEveryBatch {
    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
        input.checkpointer.checkpoint().await?;
        Ok(())
    }

    async fn shutdown_requested(&mut self, input: ShutdownRequestedInput<'_>) -> Result<(), ProcessorError> {
        input.checkpointer.checkpoint().await?;
        Ok(())
    }
}

/// Runs a binary's body: an error is printed as one line (the chain of causes, see
/// [`logging::print_error`]) and the exit status is 1.
pub async fn exit_status(body: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    match body.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logging::print_error(&e);
            ExitCode::FAILURE
        }
    }
}

/// Checks that every stream can be read (a missing stream or missing permissions fail here,
/// before anything is created), then creates the lease table `application` if it is absent.
pub async fn prepare_aws(
    backend: &impl kcl_core::StreamBackend,
    store: &kcl_lease::DynamoDbLeaseStore,
    streams: &[&str],
    application: &str,
) -> anyhow::Result<()> {
    use anyhow::Context;
    for stream in streams {
        kcl_core::StreamBackend::list_shards(backend, stream)
            .await
            .with_context(|| format!("reading the shards of stream {stream}"))?;
    }
    store
        .ensure_table()
        .await
        .with_context(|| format!("preparing the lease table {application}"))?;
    Ok(())
}

/// A Prometheus exporter that drops series idle for `idle` (counters, gauges, histograms):
/// shard consumers touch their series while they hold the shard, so the series of a shard that
/// left this worker disappear from `/metrics` after `idle` instead of reporting a stale lag
/// forever. `kcl-tail` uses [`kcl_core::metrics::SHARD_SERIES_IDLE_TIMEOUT`].
pub fn prometheus_builder(idle: std::time::Duration) -> metrics_exporter_prometheus::PrometheusBuilder {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .idle_timeout(metrics_util::MetricKindMask::ALL, Some(idle))
}
