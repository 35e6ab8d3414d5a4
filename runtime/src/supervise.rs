//! Supervised background tasks, for every facteur process.
//!
//! A process's long-lived tasks (sweepers, scans, feeds, watchers) are owned by one
//! [`Supervisor`]. A task that ends before shutdown, by returning or by panicking, is logged and
//! started again after a backoff (1 s doubling to 30 s, with backon's jitter so replicas do not
//! retry in step). A task that keeps dying — more than [`RESTART_BUDGET`] restarts within
//! [`RESTART_WINDOW`] — cannot be helped from inside: the supervisor records the failure
//! ([`Supervisor::failed`], which readiness reports) and cancels the process's shutdown token,
//! so the process drains and exits with a non-zero code and Kubernetes restarts it. A task never
//! dies behind a green health check.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Restarts allowed within [`RESTART_WINDOW`] before a task is given up on.
pub const RESTART_BUDGET: usize = 5;
/// Window of [`RESTART_BUDGET`].
pub const RESTART_WINDOW: Duration = Duration::from_secs(600);
/// First restart delay; doubles to [`BACKOFF_CAP`].
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Longest restart delay.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// Whether a task may end on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    /// Runs until shutdown: returning before it is a failure.
    UntilShutdown,
    /// Has a job to finish: `Ok` is done, an error or a panic is a failure.
    UntilDone,
}

/// The backoff and budget of restarts (tests shorten them).
#[derive(Clone, Copy, Debug)]
pub struct RestartPolicy {
    pub initial: Duration,
    pub cap: Duration,
    pub budget: usize,
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial: BACKOFF_INITIAL,
            cap: BACKOFF_CAP,
            budget: RESTART_BUDGET,
            window: RESTART_WINDOW,
        }
    }
}

type OnRestart = Arc<dyn Fn(&'static str) + Send + Sync>;

/// Owner of a process's background tasks.
pub struct Supervisor {
    shutdown: CancellationToken,
    policy: RestartPolicy,
    tasks: Mutex<JoinSet<()>>,
    failed: Arc<OnceLock<String>>,
    on_restart: Mutex<Option<OnRestart>>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("failed", &self.failed.get())
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// A supervisor that cancels `shutdown` when a task cannot be kept alive.
    pub fn new(shutdown: CancellationToken) -> Arc<Supervisor> {
        Self::with_policy(shutdown, RestartPolicy::default())
    }

    /// [`Supervisor::new`] with another restart policy.
    pub fn with_policy(shutdown: CancellationToken, policy: RestartPolicy) -> Arc<Supervisor> {
        Arc::new(Supervisor {
            shutdown,
            policy,
            tasks: Mutex::new(JoinSet::new()),
            failed: Arc::default(),
            on_restart: Mutex::new(None),
        })
    }

    /// Called with the task's name at every restart (a metric, say).
    pub fn on_restart(&self, f: impl Fn(&'static str) + Send + Sync + 'static) {
        if let Ok(mut slot) = self.on_restart.lock() {
            *slot = Some(Arc::new(f));
        }
    }

    /// The task that could not be kept alive, and why; `None` while all are well.
    pub fn failed(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }

    /// Runs `make()` as task `name`, again after each failure (see the module).
    pub fn spawn<F, Fut>(&self, name: &'static str, lifetime: Lifetime, make: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.spawn_with(name, lifetime, self.policy, make)
    }

    /// [`Supervisor::spawn`] with its own restart policy.
    pub fn spawn_with<F, Fut>(
        &self,
        name: &'static str,
        lifetime: Lifetime,
        policy: RestartPolicy,
        make: F,
    ) where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let shutdown = self.shutdown.clone();
        let failed = self.failed.clone();
        let on_restart = self.on_restart.lock().ok().and_then(|s| s.clone());
        let watcher = async move {
            use backon::BackoffBuilder;
            let mut restarts: Vec<Instant> = Vec::new();
            let mut delays = backon::ExponentialBuilder::new()
                .with_min_delay(policy.initial)
                .with_max_delay(policy.cap)
                .with_jitter()
                .without_max_times()
                .build();
            loop {
                let outcome = tokio::spawn(make()).await;
                if shutdown.is_cancelled() {
                    return;
                }
                let why = match outcome {
                    Ok(Ok(())) if lifetime == Lifetime::UntilDone => return,
                    Ok(Ok(())) => "it returned before shutdown".to_string(),
                    Ok(Err(e)) => e,
                    Err(e) if e.is_panic() => "it panicked".to_string(),
                    Err(e) => format!("it was cancelled: {e}"),
                };
                let now = Instant::now();
                restarts.retain(|t| now.duration_since(*t) < policy.window);
                if restarts.len() >= policy.budget {
                    let reason = format!(
                        "background task {name} failed {} times within {} s, last because {why}",
                        restarts.len() + 1,
                        policy.window.as_secs()
                    );
                    tracing::error!(task = name, reason = %reason, "background task cannot be kept alive: readiness goes down and the process stops");
                    let _ = failed.set(reason);
                    shutdown.cancel();
                    return;
                }
                restarts.push(now);
                let wait = delays.next().unwrap_or(policy.cap);
                tracing::error!(task = name, reason = %why, restart_in_ms = wait.as_millis() as u64, "background task ended; restarting it");
                if let Some(f) = &on_restart {
                    f(name);
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        };
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.spawn(watcher);
        }
    }

    /// Waits for every task to end (they end on shutdown), at most `grace`; then aborts the rest.
    pub async fn join(&self, grace: Duration) {
        let mut tasks = match self.tasks.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => return,
        };
        let all = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all).await.is_err() {
            tasks.abort_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn quick() -> RestartPolicy {
        RestartPolicy {
            initial: Duration::from_millis(5),
            cap: Duration::from_millis(20),
            budget: 3,
            window: Duration::from_secs(60),
        }
    }

    #[tokio::test]
    async fn a_task_that_dies_once_is_restarted_and_the_process_goes_on() {
        let shutdown = CancellationToken::new();
        let s = Supervisor::with_policy(shutdown.clone(), quick());
        let restarted = Arc::new(AtomicUsize::new(0));
        let r = restarted.clone();
        s.on_restart(move |name| {
            assert_eq!(name, "flaky");
            r.fetch_add(1, Ordering::SeqCst);
        });
        let runs = Arc::new(AtomicUsize::new(0));
        let n = runs.clone();
        let stop = shutdown.clone();
        s.spawn("flaky", Lifetime::UntilShutdown, move || {
            let n = n.clone();
            let stop = stop.clone();
            async move {
                if n.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("first run dies");
                }
                stop.cancelled().await;
                Ok(())
            }
        });
        tokio::time::timeout(Duration::from_secs(5), async {
            while runs.load(Ordering::SeqCst) < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("restarted");
        assert_eq!(restarted.load(Ordering::SeqCst), 1);
        assert!(s.failed().is_none());
        assert!(
            !shutdown.is_cancelled(),
            "one failure does not stop the process"
        );
        shutdown.cancel();
        s.join(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn a_task_that_keeps_dying_stops_the_process() {
        let shutdown = CancellationToken::new();
        let s = Supervisor::with_policy(shutdown.clone(), quick());
        s.spawn("broken", Lifetime::UntilShutdown, || async {
            Err("the database said no".to_string())
        });
        tokio::time::timeout(Duration::from_secs(5), shutdown.cancelled())
            .await
            .expect("shutdown asked for");
        let why = s.failed().expect("failure recorded");
        assert!(
            why.contains("broken") && why.contains("the database said no"),
            "{why}"
        );
        s.join(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn returning_early_is_a_failure_unless_the_task_may_finish() {
        let shutdown = CancellationToken::new();
        let s = Supervisor::with_policy(shutdown.clone(), quick());
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        s.spawn("one-off", Lifetime::UntilDone, move || {
            let d = d.clone();
            async move {
                d.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        });
        s.spawn("quitter", Lifetime::UntilShutdown, || async { Ok(()) });
        tokio::time::timeout(Duration::from_secs(5), shutdown.cancelled())
            .await
            .expect("the quitter stops the process");
        assert_eq!(
            done.load(Ordering::SeqCst),
            1,
            "a finished job is not run again"
        );
        assert!(s.failed().expect("failed").contains("quitter"));
    }
}
