//! The shutdown signals of every facteur process. Kubernetes stops a pod with SIGTERM (and
//! SIGKILL after the grace period); a terminal sends SIGINT. The first of either starts a drain;
//! a second exits at once.
//!
//! The handlers are installed when [`signal`] or [`drain`] is *called*, not when the returned
//! future is first polled: call them before start-up work, so a SIGTERM that comes early (a pod
//! stopped while it starts) drains instead of killing the process.

use std::future::Future;

/// Installs SIGTERM and SIGINT handlers now; the future resolves on the first of them.
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            let next = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = next(term) => {}
                _ = next(int) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Installs the handlers now; the future resolves on the first SIGTERM or SIGINT (logging that
/// `process` drains), and arms the second: it flushes the logs and exits with status 130 at once.
pub fn drain(process: &'static str) -> impl Future<Output = ()> + Send + 'static {
    let first = signal();
    async move {
        first.await;
        tracing::info!(
            process,
            "shutting down: finishing in-flight work (signal again to exit at once)"
        );
        let second = signal();
        tokio::spawn(async move {
            second.await;
            tracing::warn!(process, "second signal: exiting now");
            crate::telemetry::flush_logs();
            std::process::exit(130);
        });
    }
}
