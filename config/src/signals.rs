//! The shutdown signals of every facteur process. Kubernetes stops a pod with SIGTERM (and
//! SIGKILL after the grace period); a terminal sends SIGINT. The first of either starts a drain;
//! a second exits at once.

/// Resolves on SIGTERM or SIGINT.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Resolves on the first SIGTERM or SIGINT (logging that `process` drains), and arms the
/// second: it flushes the logs and exits with status 130 at once.
pub async fn drain(process: &'static str) {
    signal().await;
    tracing::info!(
        process,
        "shutting down: finishing in-flight work (signal again to exit at once)"
    );
    tokio::spawn(async move {
        signal().await;
        tracing::warn!(process, "second signal: exiting now");
        crate::telemetry::flush_logs();
        std::process::exit(130);
    });
}
