//! The child process driver: a [`RecordProcessor`] that runs the user's executable for one
//! shard and speaks the MultiLang protocol with it.
//!
//! Each call writes one message to the child's stdin and reads the child's stdout until the
//! `status` for that message, answering every `checkpoint` request on the way through the
//! shard's [`Checkpointer`]. The child's stderr is copied to the log, with the shard id.
//!
//! A child that exits, writes a `status` for another action, or stays silent for longer than
//! the configured timeout fails the call: the child is killed and the call returns an error,
//! which the runtime retries after a backoff (the same batch, never skipping records). The next
//! call starts a new child and initializes it from the shard's current checkpoint first. Only
//! that shard is affected; the daemon and the other shards carry on.
//!
//! After `leaseLost`, and after a `shardEnded` that checkpointed `SHARD_END`, the child's
//! stdin is closed and the child is given [`EXIT_GRACE`] to exit before it is killed. At a
//! graceful shutdown the child gets `shutdownRequested` (its checkpoints are written), then
//! `leaseLost`, as the Java daemon does, and is then closed the same way.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kcl_core::{
    Checkpointer, ExtendedSequenceNumber, InitializeInput, LeaseLostInput, ProcessRecordsInput,
    ProcessorError, ProcessorFactory, RecordProcessor, ShardEndedInput, ShutdownRequestedInput,
};
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::protocol::{
    error_name, parse_line, CheckpointRequest, CheckpointTarget, FromChild, ToChild,
    ILLEGAL_ARGUMENT_EXCEPTION, INVALID_STATE_EXCEPTION,
};

/// How long a child may take to exit after its stdin was closed, before it is killed.
pub const EXIT_GRACE: Duration = Duration::from_secs(10);
/// Longest line read from a child (longer ones are skipped, and logged).
pub const MAX_LINE: usize = 1 << 20;
/// Messages read ahead from a child's stdout.
const STDOUT_QUEUE: usize = 64;

/// Why a call to the child failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ChildError {
    /// The executable could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Writing to the child's stdin failed (it exited or closed it).
    #[error("writing {action} to the child failed: {source}")]
    Write {
        /// The message.
        action: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The child's stdout ended before the status.
    #[error("the child exited (stdout closed) while processing {action}")]
    Exited {
        /// The message being processed.
        action: &'static str,
    },
    /// The child answered with the status of another action.
    #[error("the child answered {action} with the status for {got:?}")]
    WrongStatus {
        /// The message sent.
        action: &'static str,
        /// What the status said.
        got: String,
    },
    /// No message from the child in time.
    #[error("no answer from the child for {action} within {timeout:?}")]
    Timeout {
        /// The message being processed.
        action: &'static str,
        /// The limit.
        timeout: Duration,
    },
}

/// What the daemon runs for each shard, and how.
#[derive(Clone, Debug)]
pub struct ChildSettings {
    /// The program and its arguments (`executableName`, split on whitespace).
    pub command: Vec<String>,
    /// The working directory (the daemon's).
    pub working_dir: Option<PathBuf>,
    /// The most the child may take for one message (`timeoutInSeconds`); `None`: no limit.
    pub timeout: Option<Duration>,
}

/// Makes a [`ChildProcessor`] per shard.
#[derive(Clone, Debug)]
pub struct ChildFactory {
    settings: Arc<ChildSettings>,
}

impl ChildFactory {
    /// A factory running `settings.command` for every shard.
    pub fn new(settings: ChildSettings) -> Self {
        Self {
            settings: Arc::new(settings),
        }
    }
}

impl ProcessorFactory for ChildFactory {
    fn create(&self, shard: &kcl_core::ShardInfo) -> Box<dyn RecordProcessor> {
        Box::new(ChildProcessor::new(&shard.shard_id, self.settings.clone()))
    }
}

/// A running child.
struct Running {
    process: Child,
    stdin: Option<ChildStdin>,
    messages: mpsc::Receiver<FromChild>,
    stdout_task: JoinHandle<()>,
    stderr_task: JoinHandle<()>,
}

/// The record processor of one shard: drives one child process.
pub struct ChildProcessor {
    shard_id: String,
    settings: Arc<ChildSettings>,
    child: Option<Running>,
}

impl ChildProcessor {
    /// A processor for `shard_id`; the child starts in `initialize`.
    pub fn new(shard_id: &str, settings: Arc<ChildSettings>) -> Self {
        Self {
            shard_id: shard_id.to_owned(),
            settings,
            child: None,
        }
    }

    fn spawn(&self) -> Result<Running, ChildError> {
        let (program, args) = self
            .settings
            .command
            .split_first()
            .map(|(p, a)| (p.clone(), a.to_vec()))
            .unwrap_or_default();
        let mut cmd = Command::new(&program);
        cmd.args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Its own process group: a Ctrl-C in the terminal reaches the daemon only, which then
        // shuts the children down through the protocol.
        #[cfg(unix)]
        cmd.process_group(0);
        if let Some(dir) = &self.settings.working_dir {
            cmd.current_dir(dir);
        }
        let mut process = cmd.spawn().map_err(|source| ChildError::Spawn {
            program: program.clone(),
            source,
        })?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (process.stdin.take(), process.stdout.take(), process.stderr.take())
        else {
            return Err(ChildError::Spawn {
                program,
                source: std::io::Error::other("no pipes to the child"),
            });
        };
        let (tx, messages) = mpsc::channel(STDOUT_QUEUE);
        let shard = self.shard_id.clone();
        let stdout_task = tokio::spawn(read_stdout(stdout, tx, shard.clone()));
        let stderr_task = tokio::spawn(copy_stderr(stderr, shard));
        info!(shard_id = %self.shard_id, pid = process.id(), program = %program, "child process started");
        Ok(Running {
            process,
            stdin: Some(stdin),
            messages,
            stdout_task,
            stderr_task,
        })
    }

    /// Starts a child if none runs, and initializes it at `checkpoint`.
    async fn ensure_child(&mut self, checkpoint: &ExtendedSequenceNumber) -> Result<(), ChildError> {
        if self.child.is_some() {
            return Ok(());
        }
        self.child = Some(self.spawn()?);
        let shard_id = self.shard_id.clone();
        self.call(&ToChild::initialize(&shard_id, checkpoint), None).await
    }

    /// Sends one message and answers the child until its status. On failure the child is
    /// killed (and a new one started by the next call).
    async fn call(
        &mut self,
        msg: &ToChild<'_>,
        checkpointer: Option<&Checkpointer>,
    ) -> Result<(), ChildError> {
        let result = self.exchange(msg, checkpointer).await;
        if let Err(e) = &result {
            warn!(shard_id = %self.shard_id, error = %e, "child failed; killing it");
            self.kill().await;
        }
        result
    }

    async fn exchange(
        &mut self,
        msg: &ToChild<'_>,
        checkpointer: Option<&Checkpointer>,
    ) -> Result<(), ChildError> {
        let action = msg.action();
        let timeout = self.settings.timeout;
        let shard_id = self.shard_id.clone();
        let Some(child) = self.child.as_mut() else {
            return Err(ChildError::Exited { action });
        };
        write_line(child, &msg.to_line(), action, timeout).await?;
        loop {
            let next = child.messages.recv();
            let message = match timeout {
                Some(limit) => tokio::time::timeout(limit, next)
                    .await
                    .map_err(|_| ChildError::Timeout {
                        action,
                        timeout: limit,
                    })?,
                None => next.await,
            };
            match message {
                None => return Err(ChildError::Exited { action }),
                Some(FromChild::Status { response_for }) if response_for == action => return Ok(()),
                Some(FromChild::Status { response_for }) => {
                    return Err(ChildError::WrongStatus {
                        action,
                        got: response_for,
                    })
                }
                Some(FromChild::Checkpoint(request)) => {
                    let error = checkpoint(&shard_id, checkpointer, &request).await;
                    write_line(child, &request.reply(error).to_line(), "checkpoint", timeout).await?;
                }
                Some(FromChild::Other(other)) => {
                    debug!(shard_id = %shard_id, action = %other, "ignoring a message from the child");
                }
            }
        }
    }

    /// Closes the child's stdin and waits for it to exit (killing it after [`EXIT_GRACE`]).
    async fn close(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        drop(child.stdin.take());
        // Drain stdout (the child may still write) while waiting for the exit.
        let drain = async { while child.messages.recv().await.is_some() {} };
        let exited = tokio::time::timeout(EXIT_GRACE, async {
            drain.await;
            child.process.wait().await
        })
        .await;
        match exited {
            Ok(Ok(status)) => info!(shard_id = %self.shard_id, %status, "child process exited"),
            Ok(Err(e)) => warn!(shard_id = %self.shard_id, error = %e, "waiting for the child failed"),
            Err(_) => {
                warn!(shard_id = %self.shard_id, grace = ?EXIT_GRACE, "child did not exit after its stdin was closed; killing it");
                let _ = child.process.kill().await;
            }
        }
        finish_io(child).await;
    }

    /// Kills the child at once.
    async fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        drop(child.stdin.take());
        if let Err(e) = child.process.kill().await {
            warn!(shard_id = %self.shard_id, error = %e, "killing the child failed");
        }
        child.stdout_task.abort();
        finish_io(child).await;
    }
}

/// Waits (briefly) for the stderr copy to finish, so the child's last words are logged.
async fn finish_io(child: Running) {
    let _ = tokio::time::timeout(Duration::from_secs(2), child.stderr_task).await;
    child.stdout_task.abort();
}

async fn write_line(
    child: &mut Running,
    line: &str,
    action: &'static str,
    timeout: Option<Duration>,
) -> Result<(), ChildError> {
    let Some(stdin) = child.stdin.as_mut() else {
        return Err(ChildError::Exited { action });
    };
    let write = async {
        stdin.write_all(line.as_bytes()).await?;
        stdin.flush().await
    };
    let written = match timeout {
        Some(limit) => tokio::time::timeout(limit, write)
            .await
            .map_err(|_| ChildError::Timeout {
                action,
                timeout: limit,
            })?,
        None => write.await,
    };
    written.map_err(|source| ChildError::Write { action, source })
}

/// Carries out a checkpoint request; the error name for the reply, if it failed.
async fn checkpoint(
    shard_id: &str,
    checkpointer: Option<&Checkpointer>,
    request: &CheckpointRequest,
) -> Option<&'static str> {
    let Some(checkpointer) = checkpointer else {
        warn!(
            shard_id,
            "the child asked to checkpoint outside processRecords, shardEnded or shutdownRequested"
        );
        return Some(INVALID_STATE_EXCEPTION);
    };
    let result = match &request.target {
        CheckpointTarget::LastDelivered => checkpointer.checkpoint().await,
        CheckpointTarget::At {
            sequence_number,
            sub_sequence_number,
        } => {
            checkpointer
                .checkpoint_at(sequence_number, *sub_sequence_number)
                .await
        }
        CheckpointTarget::Invalid => {
            warn!(shard_id, "the child asked to checkpoint at an invalid position");
            return Some(ILLEGAL_ARGUMENT_EXCEPTION);
        }
    };
    match result {
        Ok(()) => {
            debug!(shard_id, checkpoint = %checkpointer.current(), "checkpoint written for the child");
            None
        }
        Err(e) => {
            let name = error_name(&e);
            info!(shard_id, error = %e, reply = name, "checkpoint refused");
            Some(name)
        }
    }
}

/// Reads the child's stdout line by line into `tx`; ends at EOF or when the receiver is gone.
async fn read_stdout(stdout: impl AsyncRead + Unpin, tx: mpsc::Sender<FromChild>, shard_id: String) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        match read_bounded_line(&mut reader, &mut line).await {
            Ok(None) => return,
            Ok(Some(false)) => {
                warn!(shard_id = %shard_id, limit = MAX_LINE, "skipping an over-long line from the child");
            }
            Ok(Some(true)) => {
                let text = String::from_utf8_lossy(&line);
                match parse_line(&text) {
                    Some(msg) => {
                        if tx.send(msg).await.is_err() {
                            return;
                        }
                    }
                    None if text.trim().is_empty() => {}
                    None => {
                        debug!(shard_id = %shard_id, "skipping a line from the child that is not a message")
                    }
                }
            }
            Err(e) => {
                warn!(shard_id = %shard_id, error = %e, "reading the child's stdout failed");
                return;
            }
        }
    }
}

/// Reads one line into `buf` (without the newline): `None` at EOF, `Some(false)` if it was
/// longer than [`MAX_LINE`] (the rest of it is consumed and dropped).
async fn read_bounded_line(
    reader: &mut (impl AsyncBufReadExt + Unpin),
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<bool>> {
    buf.clear();
    let n = reader.take(MAX_LINE as u64 + 1).read_until(b'\n', buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        return Ok(Some(true));
    }
    if buf.len() <= MAX_LINE {
        // The last line, without a newline.
        return Ok(Some(true));
    }
    // Too long: skip to the end of the line.
    loop {
        buf.clear();
        let n = reader.take(64 * 1024).read_until(b'\n', buf).await?;
        if n == 0 || buf.last() == Some(&b'\n') {
            buf.clear();
            return Ok(Some(false));
        }
    }
}

/// Copies the child's stderr to the log, a line at a time, with the shard id.
async fn copy_stderr(stderr: impl AsyncRead + Unpin, shard_id: String) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        match read_bounded_line(&mut reader, &mut line).await {
            Ok(None) | Err(_) => return,
            Ok(Some(_)) => {
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end();
                if !text.is_empty() {
                    info!(target: "kcl_multilang::child", shard_id = %shard_id, "{text}");
                }
            }
        }
    }
}

#[async_trait]
impl RecordProcessor for ChildProcessor {
    async fn initialize(&mut self, input: InitializeInput) -> Result<(), ProcessorError> {
        self.shard_id = input.shard_id;
        // A retry after a failure: start afresh.
        self.kill().await;
        self.ensure_child(&input.checkpoint).await?;
        Ok(())
    }

    async fn process_records(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), ProcessorError> {
        self.ensure_child(&input.checkpointer.current()).await?;
        let msg = ToChild::process_records(input.records, input.millis_behind_latest);
        self.call(&msg, Some(input.checkpointer)).await?;
        Ok(())
    }

    async fn shard_ended(&mut self, input: ShardEndedInput<'_>) -> Result<(), ProcessorError> {
        self.ensure_child(&input.checkpointer.current()).await?;
        self.call(&ToChild::ShardEnded, Some(input.checkpointer)).await?;
        if input.checkpointer.current().is_shard_end() {
            self.close().await;
        } else {
            // The runtime calls shard_ended again; the child stays to be asked again.
            warn!(shard_id = %self.shard_id, "the child did not checkpoint at shard end; the shard's children wait");
        }
        Ok(())
    }

    async fn shutdown_requested(&mut self, input: ShutdownRequestedInput<'_>) -> Result<(), ProcessorError> {
        if self.child.is_none() {
            return Ok(());
        }
        let requested = self
            .call(&ToChild::ShutdownRequested, Some(input.checkpointer))
            .await;
        if self.child.is_some() {
            // Then, as in the Java daemon, the lease is gone for this worker.
            if self.call(&ToChild::LeaseLost, None).await.is_ok() {
                self.close().await;
            }
        }
        requested?;
        Ok(())
    }

    async fn lease_lost(&mut self, _input: LeaseLostInput) {
        if self.child.is_none() {
            return;
        }
        if self.call(&ToChild::LeaseLost, None).await.is_ok() {
            self.close().await;
        }
    }
}
