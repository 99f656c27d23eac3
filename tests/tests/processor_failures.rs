//! The processor failure policy on the in-process runtime, in paused Tokio time (the retries
//! wait on backoff timers): a batch that keeps failing — by an error or by a panic — is
//! delivered again with a growing attempt number forever by default; under
//! `ProcessorFailurePolicy::SkipAfter` it goes to the hook (retried until the hook succeeds),
//! is skipped and checkpointed past, and the shard goes on.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kcl_core::{
    FailedBatch, FailedBatchHook, InMemoryLeaseStore, LocalBackend, ProcessRecordsInput, ProcessorError,
    ProcessorFailurePolicy, RecordProcessor, SchedulerHandle,
};
use kcl_tests::*;

const LIMIT: Duration = Duration::from_secs(600);
const SHARD: &str = "shardId-000000000000";

/// How the processor fails on a batch that holds the record `poison`.
#[derive(Clone, Copy)]
enum Failure {
    Error,
    Panic,
}

/// A batch the hook got: shard, payloads, failed attempts, the last error.
type Hooked = (String, Vec<String>, u32, String);

#[derive(Clone, Default)]
struct Seen {
    /// Payloads processed successfully, in order.
    processed: Arc<Mutex<Vec<String>>>,
    /// The attempt numbers of the deliveries of the poisoned batch.
    poison_attempts: Arc<Mutex<Vec<u32>>>,
    /// What the hook got: (shard, payloads, attempts, error).
    hooked: Arc<Mutex<Vec<Hooked>>>,
    /// Hook calls that are made to fail before one succeeds.
    hook_failures: Arc<Mutex<u32>>,
}

fn payloads(records: &[kcl_core::Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.data).into_owned())
        .collect()
}

struct Poisoned {
    seen: Seen,
    failure: Failure,
    /// Succeed on the poisoned batch from this attempt on (never if `None`).
    heals_at: Option<u32>,
}

#[async_trait]
impl RecordProcessor for Poisoned {
    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
        let batch = payloads(input.records);
        if batch.iter().any(|p| p == "poison") {
            self.seen.poison_attempts.lock().unwrap().push(input.attempt);
            if self.heals_at.is_none_or(|at| input.attempt < at) {
                match self.failure {
                    Failure::Error => return Err("cannot process the poison record".into()),
                    Failure::Panic => panic!("processor panics on the poison record"),
                }
            }
        } else {
            assert_eq!(input.attempt, 1, "a good batch is delivered once");
        }
        self.seen.processed.lock().unwrap().extend(batch);
        input.checkpointer.checkpoint().await?;
        Ok(())
    }
}

#[async_trait]
impl FailedBatchHook for Seen {
    async fn failed_batch(&self, batch: FailedBatch<'_>) -> Result<(), ProcessorError> {
        {
            let mut failures = self.hook_failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return Err("dead-letter destination unavailable".into());
            }
        }
        self.hooked.lock().unwrap().push((
            batch.shard_id.to_owned(),
            payloads(batch.records),
            batch.attempts,
            batch.error.to_string(),
        ));
        Ok(())
    }
}

async fn put(backend: &LocalBackend, payloads: &[&str]) {
    for p in payloads {
        backend
            .put_record(STREAM, "k", Bytes::from(p.to_string()), None)
            .await
            .expect("put");
    }
}

/// One worker on a one-shard stream; `good-0..2` are processed before `poison` is put, so that
/// the poisoned batch holds the poison record alone.
async fn start(
    policy: ProcessorFailurePolicy,
    failure: Failure,
    heals_at: Option<u32>,
) -> (LocalBackend, InMemoryLeaseStore, Seen, SchedulerHandle) {
    init_tracing();
    let backend = LocalBackend::new();
    backend.create_stream(STREAM, 1).expect("create stream");
    let store = InMemoryLeaseStore::new();
    let seen = Seen::default();
    let s = seen.clone();
    let worker = fast(
        "w",
        backend.clone(),
        store.clone(),
        &Log::default(),
        Duration::from_secs(10),
    )
    .processor_failure(policy)
    .processor_factory(move |_: &str| Poisoned {
        seen: s.clone(),
        failure,
        heals_at,
    })
    .build()
    .expect("valid config")
    .spawn();
    put(&backend, &["good-0", "good-1", "good-2"]).await;
    wait_until(LIMIT, "the first records processed", || {
        seen.processed.lock().unwrap().len() == 3
    })
    .await;
    put(&backend, &["poison"]).await;
    (backend, store, seen, worker)
}

fn skip_after(n: u32, hook: Option<Seen>) -> ProcessorFailurePolicy {
    let attempts = NonZeroU32::new(n).expect("non-zero");
    match hook {
        Some(hook) => ProcessorFailurePolicy::skip_after(attempts, hook),
        None => ProcessorFailurePolicy::SkipAfter { attempts, hook: None },
    }
}

/// After the skip, the records that follow are processed and the checkpoint is past the poison.
async fn assert_goes_on(
    backend: &LocalBackend,
    store: &InMemoryLeaseStore,
    seen: &Seen,
    worker: SchedulerHandle,
) {
    put(backend, &["good-3", "good-4"]).await;
    wait_until(LIMIT, "the records after the skipped batch", || {
        seen.processed.lock().unwrap().len() == 5
    })
    .await;
    assert_eq!(
        *seen.processed.lock().unwrap(),
        ["good-0", "good-1", "good-2", "good-3", "good-4"]
    );
    worker.shutdown().await.unwrap();
    // A new owner does not see the skipped batch again.
    let again = Seen::default();
    let a = again.clone();
    let next = fast(
        "next",
        backend.clone(),
        store.clone(),
        &Log::default(),
        Duration::from_secs(10),
    )
    .processor_factory(move |_: &str| Poisoned {
        seen: a.clone(),
        failure: Failure::Error,
        heals_at: None,
    })
    .build()
    .unwrap()
    .spawn();
    put(backend, &["good-5"]).await;
    wait_until(LIMIT, "the next owner's first record", || {
        !again.processed.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(*again.processed.lock().unwrap(), ["good-5"]);
    assert!(again.poison_attempts.lock().unwrap().is_empty());
    next.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_failing_batch_goes_to_the_hook_after_n_attempts_and_is_skipped() {
    let hook = Seen::default();
    *hook.hook_failures.lock().unwrap() = 2;
    let (backend, store, seen, worker) = start(skip_after(3, Some(hook.clone())), Failure::Error, None).await;
    wait_until(LIMIT, "the hook called", || {
        !hook.hooked.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(*seen.poison_attempts.lock().unwrap(), [1, 2, 3]);
    let hooked = hook.hooked.lock().unwrap().clone();
    assert_eq!(
        hooked.len(),
        1,
        "the batch reaches the hook once (its failures are retried)"
    );
    let (shard, records, attempts, error) = &hooked[0];
    assert_eq!(
        (shard.as_str(), records.as_slice(), *attempts),
        (SHARD, &["poison".to_owned()][..], 3)
    );
    assert_eq!(error, "cannot process the poison record");
    assert_goes_on(&backend, &store, &seen, worker).await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_processor_counts_as_failing_and_its_batch_is_skipped() {
    let hook = Seen::default();
    let (backend, store, seen, worker) = start(skip_after(2, Some(hook.clone())), Failure::Panic, None).await;
    wait_until(LIMIT, "the hook called", || {
        !hook.hooked.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(*seen.poison_attempts.lock().unwrap(), [1, 2]);
    let (_, records, attempts, error) = hook.hooked.lock().unwrap()[0].clone();
    assert_eq!((records, attempts), (vec!["poison".to_owned()], 2));
    assert!(error.contains("processor panics on the poison record"), "{error}");
    assert_goes_on(&backend, &store, &seen, worker).await;
}

#[tokio::test(start_paused = true)]
async fn without_a_hook_the_batch_is_skipped_after_n_attempts() {
    let (backend, _store, seen, worker) = start(skip_after(4, None), Failure::Panic, None).await;
    wait_until(LIMIT, "four attempts", || {
        seen.poison_attempts.lock().unwrap().len() == 4
    })
    .await;
    put(&backend, &["good-3", "good-4"]).await;
    wait_until(LIMIT, "the records after the skipped batch", || {
        seen.processed.lock().unwrap().len() == 5
    })
    .await;
    assert_eq!(*seen.poison_attempts.lock().unwrap(), [1, 2, 3, 4]);
    assert_eq!(
        *seen.processed.lock().unwrap(),
        ["good-0", "good-1", "good-2", "good-3", "good-4"]
    );
    worker.shutdown().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn by_default_a_failing_or_panicking_batch_is_retried_until_it_succeeds() {
    for failure in [Failure::Error, Failure::Panic] {
        let (backend, _store, seen, worker) =
            start(ProcessorFailurePolicy::default(), failure, Some(12)).await;
        put(&backend, &["good-3"]).await;
        wait_until(LIMIT, "the poison record processed at last", || {
            seen.processed.lock().unwrap().len() == 5
        })
        .await;
        assert_eq!(
            *seen.poison_attempts.lock().unwrap(),
            (1..=12).collect::<Vec<_>>()
        );
        assert_eq!(
            *seen.processed.lock().unwrap(),
            ["good-0", "good-1", "good-2", "poison", "good-3"],
            "nothing skipped, order kept"
        );
        worker.shutdown().await.unwrap();
    }
}

/// Each failed delivery counts in `ProcessorErrors` (one per batch) and, as the Java KCL 3.5.4
/// publishes it, `RecordsFailedProcessing` (the records of that batch).
#[test]
fn failed_deliveries_count_their_records_in_records_failed_processing() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        rt.block_on(async {
            // The poison batch (the poison record alone) fails three times, then succeeds.
            let (backend, _store, seen, worker) =
                start(ProcessorFailurePolicy::default(), Failure::Error, Some(4)).await;
            wait_until(LIMIT, "the poison record processed at last", || {
                seen.processed.lock().unwrap().len() == 4
            })
            .await;
            assert_eq!(*seen.poison_attempts.lock().unwrap(), [1, 2, 3, 4]);
            drop(backend);
            worker.shutdown().await.unwrap();
        });
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let sum = |name: &str| -> u64 {
        snapshot
            .iter()
            .filter(|(key, ..)| key.key().name() == name)
            .map(|(.., value)| match value {
                DebugValue::Counter(c) => *c,
                _ => 0,
            })
            .sum()
    };
    assert_eq!(sum("ProcessorErrors"), 3);
    assert_eq!(sum("RecordsFailedProcessing"), 3);
    assert_eq!(sum("RecordsProcessed"), 4);
}
