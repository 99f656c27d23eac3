//! `kcl-multilang`: the Java KCL's MultiLangDaemon without a JVM. It reads the same properties
//! file, starts the same record processor (`executableName`: a kclpy, `aws-kcl` Node.js, Ruby
//! or .NET client program) once per shard lease and speaks the same protocol with it over
//! stdin/stdout, on this project's runtime: leases in the DynamoDB table `applicationName`, in
//! the Java KCL's format, shared with Java workers of the same application.
//!
//! ```text
//! kcl-multilang --properties-file app.properties     # also: -p app.properties, or app.properties
//! ```
//!
//! SIGTERM or SIGINT shut it down gracefully: every child gets `shutdownRequested` (its
//! checkpoints are written), then the leases are released for the other workers. A child that
//! fails only fails its shard, which is retried with a new child after a backoff.
//!
//! `--local` runs on the bundled in-process backend instead of AWS, to try a record processor
//! without an account: the lines of stdin become records of a local stream named `streamName`
//! (`--local-shards`, `--local-max-record-kib` up to 10 MiB records), read from the start
//! (`TRIM_HORIZON`) with an in-memory lease table, until SIGTERM or SIGINT.
//!
//! Exit status: 0 after a graceful shutdown, 2 for a bad command line or properties file (one
//! line on stderr says what is wrong), 1 for anything else. Logs go to stderr (`RUST_LOG`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use kcl_core::aws::{load_sdk_config, AwsOptions};
use kcl_core::{KinesisBackend, Scheduler, SchedulerBuilder};
use kcl_lease::DynamoDbLeaseStore;
use kcl_tools::multilang::child::{ChildFactory, ChildSettings};
use kcl_tools::multilang::properties::MultiLangConfig;
use tracing::{info, warn};

/// Run record processors written for the Java KCL's MultiLangDaemon, without Java.
#[derive(Parser, Debug)]
#[command(name = "kcl-multilang", version)]
struct Args {
    /// The daemon's properties file (the Java MultiLangDaemon's format and keys).
    #[arg(short = 'p', long = "properties-file", value_name = "FILE")]
    properties_file: Option<PathBuf>,
    /// The properties file, given as the only argument.
    #[arg(value_name = "FILE", conflicts_with = "properties_file")]
    file: Option<PathBuf>,
    /// The Java daemon's logback configuration: accepted and ignored (set RUST_LOG instead).
    #[arg(short = 'l', long = "log-configuration", value_name = "FILE")]
    log_configuration: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464, at `/metrics`) instead of
    /// publishing them to CloudWatch (which the properties' `metricsLevel` and friends set up,
    /// as the Java daemon does, unless `metricsLevel = NONE`).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Run on the bundled in-process backend, without AWS: stdin lines become records of a
    /// local stream named `streamName`, read from TRIM_HORIZON with an in-memory lease table,
    /// until SIGTERM or SIGINT. No CloudWatch metrics (`--metrics-addr` serves Prometheus).
    #[arg(long)]
    local: bool,
    /// Shards of the local stream (with --local).
    #[arg(long, default_value_t = 4, requires = "local")]
    local_shards: usize,
    /// The largest record of the local stream, in KiB (with --local): 1024 (1 MiB, Kinesis'
    /// default) to 10240 (10 MiB, its most). A longer stdin line is an error.
    #[arg(long, default_value_t = 1024, requires = "local", value_parser = clap::value_parser!(u32).range(1024..=10240))]
    local_max_record_kib: u32,
    #[command(flatten)]
    log: kcl_tools::logging::LogArgs,
}

/// A usage or configuration problem: exit status 2.
#[derive(Debug)]
struct ConfigError(String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn config_error(msg: impl Into<String>) -> anyhow::Error {
    ConfigError(msg.into()).into()
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<ConfigError>().is_some() => {
            kcl_tools::logging::print_error(&e);
            ExitCode::from(2)
        }
        Err(e) => {
            kcl_tools::logging::print_error(&e);
            ExitCode::FAILURE
        }
    }
}

/// The program to run: found (with a `/`: relative to the working directory; without: on PATH).
fn check_program(program: &str) -> Result<()> {
    let found = if program.contains('/') {
        Path::new(program).is_file()
    } else {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
    };
    if found {
        Ok(())
    } else {
        Err(config_error(format!(
            "executableName: {program} not found (relative names are looked up on PATH, paths are relative to {})",
            std::env::current_dir()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|_| ".".into())
        )))
    }
}

fn load_config(args: &Args) -> Result<MultiLangConfig> {
    let path = args
        .properties_file
        .as_ref()
        .or(args.file.as_ref())
        .ok_or_else(|| config_error("no properties file: kcl-multilang --properties-file FILE"))?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| config_error(format!("cannot read {}: {e}", path.display())))?;
    let config =
        MultiLangConfig::parse(&text).map_err(|e| config_error(format!("{}: {e}", path.display())))?;
    let program = config.executable.first().map(String::as_str).unwrap_or_default();
    check_program(program)?;
    for key in &config.unknown {
        warn!(%key, "unknown property; ignored");
    }
    for key in &config.ignored {
        info!(%key, "property of the Java daemon without effect here; ignored");
    }
    for (key, note) in &config.notes {
        info!(%key, "Java KCL 3.5 property accepted: {note}");
    }
    if args.log_configuration.is_some() {
        info!("-l (logback configuration) ignored; set RUST_LOG to choose what is logged");
    }
    Ok(config)
}

fn configure(config: &MultiLangConfig) -> Result<SchedulerBuilder> {
    let working_dir = std::env::current_dir().context("the working directory")?;
    let factory = ChildFactory::new(ChildSettings {
        command: config.executable.clone(),
        working_dir: Some(working_dir),
        timeout: config.timeout,
    });
    let mut b = Scheduler::builder(config.application_name.clone(), config.stream_name.clone());
    if let Some(arn) = &config.stream_arn {
        b = b.stream_arn(arn.clone());
    }
    let mut b = b
        .initial_position(config.initial_position)
        .retrieval(config.retrieval.clone())
        .processor_factory(factory);
    if let Some(id) = &config.worker_id {
        b = b.worker_id(id.clone());
    }
    if let Some(f) = config.failover_time {
        b = b.failover_time(f);
    }
    if let Some(n) = config.max_records {
        b = b.max_records(n);
    }
    if let Some(d) = config.idle_time_between_reads {
        b = b.polling_interval(d);
    }
    if let Some(d) = config.shard_sync_interval {
        b = b.shard_sync_interval(d);
    }
    if let Some(d) = config.parent_shard_poll_interval {
        b = b.parent_poll_interval(d);
    }
    if let Some(n) = config.max_leases_for_worker {
        b = b.max_leases_per_worker(n);
    }
    if let Some(n) = config.max_leases_to_steal {
        b = b.max_leases_to_steal(n);
    }
    if let Some(clean) = config.cleanup_leases_upon_shard_completion {
        b = b.delete_finished_leases(clean);
    }
    if let Some(d) = config.shutdown_grace {
        b = b.graceful_shutdown_timeout(d);
    }
    Ok(b)
}

async fn run() -> Result<()> {
    let args = Args::try_parse().map_err(|e| {
        // --help and --version are not errors.
        if matches!(
            e.kind(),
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
        ) {
            let _ = e.print();
            std::process::exit(0);
        }
        let text = e.to_string();
        let first = text.trim().lines().next().unwrap_or("bad arguments");
        config_error(first.strip_prefix("error: ").unwrap_or(first).to_owned())
    })?;
    kcl_tools::logging::init(
        "kcl-multilang",
        "warn,kcl_multilang=info,kcl_tools=info,kcl_core=info",
        &args.log,
    );
    let config = load_config(&args)?;
    if args.local {
        return run_local(&args, &config).await;
    }
    let options = |endpoint: &Option<String>| AwsOptions {
        region: config
            .region
            .clone()
            .or_else(|| config.stream_arn.as_ref().map(|a| a.region.clone())),
        endpoint_url: endpoint.clone(),
        profile: None,
    };
    let kinesis_sdk = load_sdk_config(&options(&config.kinesis_endpoint)).await;
    let dynamodb_sdk = load_sdk_config(&options(&config.dynamodb_endpoint)).await;
    if kinesis_sdk.region().is_none() {
        return Err(config_error(
            "no AWS region: set regionName in the properties file, or AWS_REGION",
        ));
    }
    // Named by ARN from the first call on (the checks below included).
    let backend = KinesisBackend::from_conf(&kinesis_sdk).with_stream_arns(config.stream_arn.clone());
    let store = DynamoDbLeaseStore::new(
        aws_sdk_dynamodb::Client::new(&dynamodb_sdk),
        &config.application_name,
    );
    kcl_tools::prepare_aws(
        &backend,
        &store,
        &[config.stream_name.as_str()],
        &config.application_name,
    )
    .await?;
    let scheduler = configure(&config)?
        .backend(backend)
        .lease_store(store)
        .build()
        .map_err(|e| config_error(e.to_string()))?;
    let cloudwatch = match args.metrics_addr {
        Some(addr) => {
            kcl_tools::prometheus_builder(kcl_core::metrics::SHARD_SERIES_IDLE_TIMEOUT)
                .with_http_listener(addr)
                .install()
                .with_context(|| format!("serving metrics on {addr}"))?;
            info!(%addr, "serving Prometheus metrics (no CloudWatch metrics)");
            None
        }
        None => {
            let sdk = load_sdk_config(&options(&config.cloudwatch_endpoint.clone().or_else(|| {
                std::env::var("AWS_ENDPOINT_URL_CLOUDWATCH")
                    .ok()
                    .filter(|u| !u.is_empty())
            })))
            .await;
            kcl_tools::metrics::install_cloudwatch(&sdk, &config.application_name, &config.metrics)?
        }
    };
    info!(
        worker_id = %scheduler.config().worker_id,
        application = %config.application_name,
        stream = %config.stream_name,
        executable = %config.executable.join(" "),
        "kcl-multilang starting"
    );
    let result = scheduler.run(kcl_core::shutdown_signal()).await;
    // After the hand-over: the last window of metrics.
    kcl_tools::metrics::finish_cloudwatch(cloudwatch).await;
    result?;
    info!("kcl-multilang stopped");
    Ok(())
}

/// `--local`: the daemon on the bundled backend; stdin lines become records until SIGTERM or
/// SIGINT (the end of stdin only ends the input).
async fn run_local(args: &Args, config: &MultiLangConfig) -> Result<()> {
    let backend = kcl_core::LocalBackend::new();
    let stream = config.stream_name.as_str();
    backend
        .create_stream(stream, args.local_shards)
        .map_err(|e| config_error(format!("creating the local stream {stream}: {e}")))?;
    backend
        .update_max_record_size(stream, args.local_max_record_kib)
        .map_err(|e| config_error(format!("the local stream's record size: {e}")))?;
    let scheduler = configure(config)?
        .initial_position(kcl_core::InitialPosition::TrimHorizon)
        .backend(backend.clone())
        .lease_store(kcl_core::InMemoryLeaseStore::new())
        .build()
        .map_err(|e| config_error(e.to_string()))?;
    if let Some(addr) = args.metrics_addr {
        kcl_tools::prometheus_builder(kcl_core::metrics::SHARD_SERIES_IDLE_TIMEOUT)
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("serving metrics on {addr}"))?;
    }
    info!(
        worker_id = %scheduler.config().worker_id,
        stream,
        shards = args.local_shards,
        executable = %config.executable.join(" "),
        "kcl-multilang starting on the local backend: stdin lines become records"
    );
    let handle = scheduler.spawn();
    let max_record = args.local_max_record_kib as usize * 1024;
    let mut lines = kcl_tools::lines::stdin_lines(max_record, 2);
    let mut put = 0u64;
    let signal = kcl_core::shutdown_signal();
    tokio::pin!(signal);
    let mut input_open = true;
    loop {
        tokio::select! {
            line = lines.recv(), if input_open => match line {
                Some(line) => {
                    let line = line.with_context(|| format!("reading line {} of stdin", put + 1))?;
                    backend.put_record(stream, &put.to_string(), line.into(), None).await?;
                    put += 1;
                }
                None => {
                    info!(records = put, "end of stdin: every line was put");
                    input_open = false;
                }
            },
            () = &mut signal => break,
            () = handle.stopped() => break,
        }
    }
    handle.shutdown().await?;
    Ok(())
}
