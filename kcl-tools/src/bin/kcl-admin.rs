//! `kcl-admin`: an operator's view of a KCL application's lease table (this library's or the
//! Java KCL's: same schema) and two actions on it: rewinding checkpoints and deleting the
//! application. The logic lives in `kcl_tools::admin`; this file parses arguments, connects
//! to AWS (or builds the `--local` demo) and prints tables or JSON.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use aws_smithy_types::date_time::Format;
use aws_smithy_types::DateTime;
use clap::{Parser, Subcommand};
use kcl_core::aws::{load_sdk_config, AwsOptions};
use kcl_core::backend::dynamodb_streams::DynamoDbSourceError;
use kcl_core::dynamodb_streams::DynamoDbStreamArn;
use kcl_core::{
    DynamoDbStreamsBackend, InMemoryLeaseStore, InitialPosition, KinesisBackend, LeaseStore, LocalBackend,
    Scheduler, SchedulerHandle, StreamBackend,
};
use kcl_lease::{DynamoDbLeaseStore, SequenceNumber};
use kcl_tools::admin::{self, table, AdminError, ObserveOptions, ResetTarget};

const EXIT_CODES: &str = "\
Exit codes:
  0  done
  1  error (AWS, lease table or stream; the message says which call failed)
  2  usage (bad arguments, bad timestamp or sequence number, unknown shard)
  3  refused: leases are held by live workers (stop them, or pass --force)
  4  conflict: a lease changed between the read and the conditional write; nothing was
     overwritten, run the command again
  5  unknown application: no lease table with that name

What \"live\" means: kcl-admin reads the lease table (and the heartbeat table, if any) twice,
--watch-ms apart. A lease is held live if it has an owner and its counter moved, or its owner's
heartbeat row moved. Use a watch longer than the workers' renewal interval (a third of their
failover time by default).

--local: a local application exists only inside one process, so kcl-admin --local builds a
demo application in this process (a local stream of --local-shards shards with 100 records,
and one worker that processes them and keeps running) and runs the command on it: it shows
what each command prints, without AWS. Nothing outside the process is read or changed.";

/// Inspect and operate a KCL application's lease table.
#[derive(Parser, Debug)]
#[command(name = "kcl-admin", version, after_help = EXIT_CODES)]
struct Args {
    /// The application name: its lease table's name.
    #[arg(long, global = true)]
    application_name: Option<String>,
    /// The application's stream (for the lag of single-stream leases, and the fan-out
    /// consumer of delete-application). Multi-stream leases name their stream themselves.
    /// Repeat it for several streams.
    #[arg(long = "stream", global = true)]
    streams: Vec<String>,
    /// The application reads this DynamoDB table's change stream (its latest stream, as
    /// `kcl-tail --dynamodb-table`): the lag is read from it. Not with --stream.
    #[arg(long, global = true, value_name = "TABLE", conflicts_with_all = ["streams", "dynamodb_stream_arn", "local"])]
    dynamodb_table: Option<String>,
    /// The application reads the DynamoDB stream with this ARN: the lag is read from it. Not
    /// with --stream. The region defaults to the ARN's.
    #[arg(long, global = true, value_name = "ARN", conflicts_with_all = ["streams", "local"])]
    dynamodb_stream_arn: Option<String>,
    /// AWS region (default: the SDK's chain: AWS_REGION, profile, IMDS).
    #[arg(long, global = true)]
    region: Option<String>,
    /// Endpoint URL for both Kinesis and DynamoDB (LocalStack, emulators). The
    /// AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_KINESIS and AWS_ENDPOINT_URL_DYNAMODB variables also work.
    #[arg(long, global = true)]
    endpoint_url: Option<String>,
    /// A named AWS profile.
    #[arg(long, global = true)]
    profile: Option<String>,
    /// Print JSON (one document on stdout; errors too, as {"error": kind, "message": ...}).
    #[arg(long, global = true)]
    json: bool,
    /// Milliseconds between the two reads that tell live leases from stale ones (0: one read,
    /// liveness unknown; reset and delete-application then treat every owned lease as live).
    #[arg(long, global = true, default_value_t = 4_000, alias = "observe-ms")]
    watch_ms: u64,
    /// Do not read the stream for the lag (no Kinesis calls).
    #[arg(long, global = true)]
    no_lag: bool,
    /// Run on a demo application built in this process (see below).
    #[arg(long, global = true)]
    local: bool,
    /// Shards of the --local demo stream.
    #[arg(long, global = true, default_value_t = 4)]
    local_shards: usize,
    #[command(flatten)]
    log: kcl_tools::logging::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every lease: shard, owner, counter, checkpoint, lag (records after the checkpoint,
    /// counted up to 10,000, and MillisBehindLatest of the first of them, read with
    /// GetRecords; unknown for LATEST and AT_TIMESTAMP checkpoints), parents, children,
    /// throughputKBps, and whether the counter moved during the watch.
    Leases,
    /// Every worker: leases held, leases renewed during the watch, summed throughputKBps,
    /// heartbeat row (if the application has a heartbeat table).
    Workers,
    /// Rewind (or fast-forward) checkpoints. Each write is conditional on the owner and counter
    /// read; the owner is removed, so the next worker to take the lease starts at the new
    /// position. Prints what it changed.
    Reset {
        /// trim-horizon | latest | at-timestamp <RFC3339> | sequence <N>. `sequence N`:
        /// processing resumes after record N. `at-timestamp T` writes the AT_TIMESTAMP
        /// sentinel, as the Java KCL does: the timestamp itself is the workers'
        /// configuration, so start them with `--initial-position at-timestamp:T`.
        #[arg(long, num_args = 1..=2, value_names = ["POSITION", "VALUE"], required = true)]
        to: Vec<String>,
        /// Only this shard (a shard id or a lease key).
        #[arg(long)]
        shard: Option<String>,
        /// Reset even leases held by live workers (they lose them and take them again).
        #[arg(long)]
        force: bool,
    },
    /// Delete the application: the lease table and the heartbeat table.
    DeleteApplication {
        /// Also deregister the enhanced fan-out consumer on every --stream.
        #[arg(long)]
        delete_consumer: bool,
        /// The fan-out consumer's name (default: the application name, as kcl-tail names it).
        #[arg(long)]
        consumer_name: Option<String>,
        /// Delete even while workers are live (they stop: their lease table is gone).
        #[arg(long)]
        force: bool,
    },
}

/// An error with the exit code it maps to.
struct Failure {
    code: u8,
    error: anyhow::Error,
    json: Option<serde_json::Value>,
}

impl From<AdminError> for Failure {
    fn from(e: AdminError) -> Self {
        Failure {
            code: e.exit_code(),
            json: Some(e.to_json()),
            error: e.into(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure {
            code: admin::EXIT_ERROR,
            error,
            json: None,
        }
    }
}

/// What a command printed and the exit code it wants (0, or 4 for conflicts).
struct Outcome {
    text: String,
    json: serde_json::Value,
    code: u8,
}

fn parse_target(to: &[String]) -> Result<ResetTarget, AdminError> {
    let usage = |m: String| AdminError::Usage(m);
    match to {
        [p] if p == "trim-horizon" || p == "TRIM_HORIZON" => Ok(ResetTarget::TrimHorizon),
        [p] if p == "latest" || p == "LATEST" => Ok(ResetTarget::Latest),
        [p, t] if p == "at-timestamp" => {
            let dt = DateTime::from_str(t, Format::DateTimeWithOffset)
                .or_else(|_| DateTime::from_str(t, Format::DateTime))
                .map_err(|e| {
                    usage(format!(
                        "bad timestamp {t:?}: {e}; expected RFC 3339, e.g. 2026-12-03T07:00:00Z"
                    ))
                })?;
            let normalized = dt
                .fmt(Format::DateTime)
                .map_err(|e| usage(format!("bad timestamp {t:?}: {e}")))?;
            Ok(ResetTarget::AtTimestamp(normalized))
        }
        [p, s] if p == "sequence" => SequenceNumber::new(s)
            .map(ResetTarget::Sequence)
            .map_err(|e| usage(format!("bad sequence number: {e}"))),
        _ => Err(usage(format!(
            "--to {}: expected trim-horizon, latest, at-timestamp <RFC3339> or sequence <N>",
            to.join(" ")
        ))),
    }
}

/// Builds the `--local` demo: a stream, 100 records, one running worker that checkpointed them.
async fn local_demo(
    args: &Args,
    application: &str,
    stream: &str,
) -> Result<(LocalBackend, InMemoryLeaseStore, SchedulerHandle)> {
    let backend = LocalBackend::new();
    backend
        .create_stream(stream, args.local_shards)
        .with_context(|| format!("creating the local stream {stream}"))?;
    for i in 0..100u32 {
        backend
            .put_record(
                stream,
                &i.to_string(),
                format!("record {i}").into_bytes().into(),
                None,
            )
            .await?;
    }
    let store = InMemoryLeaseStore::new();
    let handle = Scheduler::builder(application.to_owned(), stream.to_owned())
        .initial_position(InitialPosition::TrimHorizon)
        .failover_time(Duration::from_secs(3))
        .polling_interval(Duration::from_millis(100))
        .worker_id("demo-worker".to_owned())
        .backend(backend.clone())
        .lease_store(store.clone())
        .processor_factory(|_: &str| kcl_tools::CheckpointEveryBatch)
        .build()?
        .spawn();
    // Until every shard has a checkpoint on a record (bounded).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let leases = store.list().await?;
        if leases.len() >= args.local_shards && leases.iter().all(|l| l.checkpoint.sequence().is_some()) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the demo worker did not checkpoint every shard within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((backend, store, handle))
}

async fn run_command<S: LeaseStore, B: StreamBackend>(
    args: &Args,
    streams: &[String],
    application: &str,
    store: &S,
    backend: &B,
    aws: Option<(&DynamoDbLeaseStore, &aws_sdk_kinesis::Client)>,
) -> Result<Outcome, Failure> {
    let options = ObserveOptions {
        watch: Duration::from_millis(args.watch_ms),
        stream: streams.first().cloned(),
        lag: !args.no_lag && matches!(args.command, Command::Leases),
    };
    let target = match &args.command {
        Command::Reset { to, .. } => Some(parse_target(to)?),
        _ => None,
    };
    let observation = admin::observe(application, store, backend, &options).await?;
    match &args.command {
        Command::Leases => Ok(Outcome {
            text: table::leases(&observation),
            json: json(&observation),
            code: 0,
        }),
        Command::Workers => {
            let rows = admin::workers(&observation);
            Ok(Outcome {
                text: table::workers(&rows),
                json: json(&rows),
                code: 0,
            })
        }
        Command::Reset { shard, force, .. } => {
            let target = target.ok_or_else(|| anyhow::anyhow!("no reset target"))?;
            let rows = admin::select(&observation, shard.as_deref())?;
            check_live(&rows, *force, args.watch_ms)?;
            let report = admin::reset(store, &rows, &target).await?;
            let mut text = table::reset(&report);
            if let ResetTarget::AtTimestamp(t) = &target {
                text.push_str(&format!(
                    "note: AT_TIMESTAMP written; start the workers with --initial-position at-timestamp:{t}\n"
                ));
            }
            let code = if report.conflicts.is_empty() {
                0
            } else {
                admin::EXIT_CONFLICT
            };
            Ok(Outcome {
                text,
                json: json(&report),
                code,
            })
        }
        Command::DeleteApplication {
            delete_consumer,
            consumer_name,
            force,
        } => {
            let rows = admin::select(&observation, None)?;
            check_live(&rows, *force, args.watch_ms)?;
            let mut done = Vec::new();
            match aws {
                Some((dynamo, kinesis)) => {
                    let (lease, heartbeat) = dynamo.delete_tables().await.map_err(AdminError::from)?;
                    done.push(format!("lease table {}: {}", dynamo.table_name(), gone(lease)));
                    done.push(format!(
                        "heartbeat table {}: {}",
                        dynamo.heartbeat_table_name(),
                        gone(heartbeat)
                    ));
                    if *delete_consumer {
                        let name = consumer_name.as_deref().unwrap_or(application);
                        for stream in streams {
                            done.push(deregister(kinesis, stream, name).await?);
                        }
                    }
                }
                None => {
                    // The demo's table lives in this process: its rows are deleted one by one.
                    for row in &rows {
                        store.delete(&row.lease).await.map_err(AdminError::from)?;
                    }
                    done.push(format!("{} lease rows of the demo deleted", rows.len()));
                }
            }
            Ok(Outcome {
                text: done.iter().map(|l| format!("{l}\n")).collect(),
                json: serde_json::json!({ "application": application, "deleted": done }),
                code: 0,
            })
        }
    }
}

fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v)
        .unwrap_or_else(|e| serde_json::json!({ "error": "json", "message": e.to_string() }))
}

fn gone(existed: bool) -> &'static str {
    if existed {
        "deleted"
    } else {
        "did not exist"
    }
}

/// With no watch nothing is known about liveness: every owned lease counts as live.
fn check_live(rows: &[&admin::LeaseRow], force: bool, watch_ms: u64) -> Result<(), AdminError> {
    if watch_ms == 0 && !force {
        let owned: Vec<admin::LiveLease> = rows
            .iter()
            .filter_map(|l| {
                l.owner.as_ref().map(|o| admin::LiveLease {
                    lease_key: l.lease_key.clone(),
                    shard_id: l.shard_id.clone(),
                    owner: o.clone(),
                })
            })
            .collect();
        if !owned.is_empty() {
            return Err(AdminError::Live(owned));
        }
    }
    admin::check_not_live(rows, force)
}

async fn deregister(kinesis: &aws_sdk_kinesis::Client, stream: &str, name: &str) -> Result<String, Failure> {
    let summary = kinesis
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .with_context(|| format!("describing stream {stream}"))?;
    let arn = summary
        .stream_description_summary()
        .map(|s| s.stream_arn().to_owned())
        .ok_or_else(|| anyhow::anyhow!("stream {stream}: no ARN in DescribeStreamSummary"))?;
    match kinesis
        .deregister_stream_consumer()
        .stream_arn(&arn)
        .consumer_name(name)
        .send()
        .await
    {
        Ok(_) => Ok(format!("fan-out consumer {name} on {stream}: deregistered")),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            Ok(format!("fan-out consumer {name} on {stream}: was not registered"))
        }
        Err(e) => Err(anyhow::Error::new(e)
            .context(format!("deregistering consumer {name} on {stream}"))
            .into()),
    }
}

/// The DynamoDB Streams backend and the stream's ARN, when --dynamodb-table or
/// --dynamodb-stream-arn names one (a table without a stream is an error).
async fn dynamodb_backend(
    args: &Args,
    sdk: &aws_config::SdkConfig,
) -> Result<Option<(DynamoDbStreamsBackend, DynamoDbStreamArn)>, Failure> {
    let found = match (&args.dynamodb_table, &args.dynamodb_stream_arn) {
        (Some(table), _) => DynamoDbStreamsBackend::for_table(sdk, table).await,
        (None, Some(arn)) => DynamoDbStreamsBackend::for_stream_arn(sdk, arn),
        (None, None) => return Ok(None),
    };
    match found {
        Ok(found) => Ok(Some(found)),
        Err(e @ DynamoDbSourceError::Arn(_)) => Err(AdminError::Usage(e.to_string()).into()),
        Err(e) => Err(anyhow::Error::new(e).into()),
    }
}

async fn run(args: &Args) -> Result<Outcome, Failure> {
    if args.local {
        let application = args
            .application_name
            .clone()
            .unwrap_or_else(|| "kcl-admin-demo".to_owned());
        let stream = args.streams.first().cloned().unwrap_or_else(|| "demo".to_owned());
        let (backend, store, handle) = local_demo(args, &application, &stream).await?;
        let outcome = run_command(args, &[stream], &application, &store, &backend, None).await;
        handle.shutdown().await.context("stopping the demo worker")?;
        return outcome;
    }
    let application = args.application_name.clone().ok_or_else(|| {
        AdminError::Usage("--application-name is required (or --local for the demo)".into())
    })?;
    let sdk = load_sdk_config(&AwsOptions {
        // A DynamoDB stream's ARN names its region (as for kcl-tail).
        region: args.region.clone().or_else(|| {
            args.dynamodb_stream_arn
                .as_deref()
                .and_then(|arn| arn.parse::<DynamoDbStreamArn>().ok())
                .map(|arn| arn.region)
        }),
        endpoint_url: args.endpoint_url.clone(),
        profile: args.profile.clone(),
    })
    .await;
    if sdk.region().is_none() {
        return Err(AdminError::Usage("no AWS region: pass --region or set AWS_REGION".into()).into());
    }
    let backend = KinesisBackend::from_conf(&sdk);
    let store = DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::new(&sdk), &application);
    let kinesis = backend.client().clone();
    if let Some(dynamodb) = dynamodb_backend(args, &sdk).await? {
        let (backend, arn) = dynamodb;
        if matches!(
            args.command,
            Command::DeleteApplication {
                delete_consumer: true,
                ..
            }
        ) {
            return Err(AdminError::Usage(
                "--delete-consumer deregisters a Kinesis fan-out consumer: DynamoDB Streams has none".into(),
            )
            .into());
        }
        // The leases' stream is the DynamoDB stream, named by its ARN (as kcl-tail names it).
        return run_command(
            args,
            &[arn.to_string()],
            &application,
            &store,
            &backend,
            Some((&store, &kinesis)),
        )
        .await;
    }
    run_command(
        args,
        &args.streams,
        &application,
        &store,
        &backend,
        Some((&store, &kinesis)),
    )
    .await
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    kcl_tools::logging::init("kcl-admin", "warn", &args.log);
    match run(&args).await {
        Ok(outcome) => {
            if args.json {
                println!("{}", outcome.json);
            } else {
                print!("{}", outcome.text);
            }
            if outcome.code == admin::EXIT_CONFLICT {
                kcl_tools::logging::print_error(&anyhow::anyhow!(
                    "some leases changed since they were read; nothing was overwritten (see above)"
                ));
            }
            ExitCode::from(outcome.code)
        }
        Err(f) => {
            if args.json {
                let v = f.json.unwrap_or_else(
                    || serde_json::json!({ "error": "error", "message": kcl_tools::logging::error_text(&f.error) }),
                );
                println!("{v}");
            }
            kcl_tools::logging::print_error(&f.error);
            ExitCode::from(f.code)
        }
    }
}
