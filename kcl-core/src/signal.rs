//! [`shutdown_signal`]: the signal for a graceful shutdown, as process managers send it.

use tracing::{info, warn};

/// Resolves when the process is asked to stop: on Unix at the first SIGTERM (what ECS,
/// Kubernetes, systemd and `docker stop` send) or SIGINT (Ctrl-C); elsewhere at Ctrl-C. Give it
/// to [`Scheduler::run`](crate::Scheduler::run), so that a stopped worker checkpoints and hands
/// its leases over at once instead of leaving them to expire (the other workers would take the
/// shards only after the failover time, and deliver the records in flight again):
///
/// ```no_run
/// # async fn run(scheduler: kcl_core::Scheduler) -> kcl_core::Result<()> {
/// scheduler.run(kcl_core::shutdown_signal()).await
/// # }
/// ```
///
/// The handlers are installed when the future is first polled (until then a SIGTERM ends the
/// process at once), on the tokio runtime it runs on, which needs its I/O driver
/// (`#[tokio::main]` and `Builder::enable_all` have it). A handler that cannot be installed is
/// logged as a warning and the other signal is still waited for; if neither can be, the future
/// never resolves. The signal received is logged at info level.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let wait = |kind: SignalKind, name: &'static str| async move {
            match signal(kind) {
                Ok(mut stream) => {
                    stream.recv().await;
                    name
                }
                Err(e) => {
                    warn!(error = %e, "cannot listen for {name}; waiting for the other signal only");
                    std::future::pending().await
                }
            }
        };
        let name = tokio::select! {
            name = wait(SignalKind::terminate(), "SIGTERM") => name,
            name = wait(SignalKind::interrupt(), "SIGINT") => name,
        };
        info!(signal = name, "shutdown signal received; stopping gracefully");
    }
    #[cfg(not(unix))]
    {
        match tokio::signal::ctrl_c().await {
            Ok(()) => info!(signal = "Ctrl-C", "shutdown signal received; stopping gracefully"),
            Err(e) => {
                warn!(error = %e, "cannot listen for Ctrl-C; no signal will shut down gracefully");
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    /// The process's own SIGTERM and SIGINT resolve it (the handlers are in place after the
    /// first poll), and the process survives them.
    #[tokio::test(flavor = "current_thread")]
    async fn sigterm_and_sigint_resolve_it() {
        for sig in ["-TERM", "-INT"] {
            let mut signal = Box::pin(shutdown_signal());
            assert!((&mut signal).now_or_never().is_none(), "nothing received yet");
            let status = std::process::Command::new("kill")
                .args([sig, &std::process::id().to_string()])
                .status()
                .expect("kill(1)");
            assert!(status.success());
            tokio::time::timeout(std::time::Duration::from_secs(10), signal)
                .await
                .unwrap_or_else(|_| panic!("{sig} did not resolve shutdown_signal"));
        }
    }
}
