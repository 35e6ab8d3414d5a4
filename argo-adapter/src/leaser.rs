//! Leases jobs from the server and carries them out, reconnecting with capped backoff.

use crate::workflows::{Applied, Workflows};
use facteur_client::{Backoff, Client, pb, retry};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use facteur_proto::workflow::TRACEPARENT_ANNOTATION;

/// Keeps a lease stream open until `shutdown` (the adapters' one reconnect loop,
/// [`facteur_runtime::adapter::follow`]); jobs run concurrently up to `max_in_flight`.
#[allow(clippy::too_many_arguments)] // TODO(#32): one adapter identity (id, cluster) struct
pub async fn run(
    control: Client,
    workflows: Workflows,
    adapter_id: String,
    cluster: String,
    mut assigned: crate::assignment::Assigned,
    max_in_flight: u32,
    grace: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(max_in_flight as usize));
    // Jobs live in this set. On shutdown no new job is taken, and those in flight get `grace` to
    // finish (create and complete); past it they are cut, as a killed process would be, and
    // their leases expire and are redelivered.
    let jobs = std::sync::Mutex::new(tokio::task::JoinSet::new());
    let open = |namespaces: Vec<String>| {
        let mut dispatch = control.dispatch();
        let req = pb::LeaseRequest {
            adapter_id: adapter_id.clone(),
            max_in_flight,
            namespaces,
            cluster: cluster.clone(),
        };
        async move {
            let stream = dispatch.lease(req).await;
            if stream.is_ok() {
                tracing::info!("lease stream open");
            }
            stream
        }
    };
    let each = |job: pb::LeaseResponse| {
        let (permits, jobs) = (permits.clone(), &jobs);
        let (control, workflows) = (control.clone(), workflows.clone());
        async move {
            // At most `max_in_flight` jobs at once: the stream waits for a free slot.
            let Ok(permit) = permits.acquire_owned().await else {
                return;
            };
            let kind = pb::DispatchKind::try_from(job.kind)
                .map(|k| {
                    k.as_str_name()
                        .trim_start_matches("DISPATCH_KIND_")
                        .to_lowercase()
                })
                .unwrap_or_default();
            let span = tracing::info_span!(
                "dispatch",
                otel.name = %format!("facteur-argo dispatch {kind}"),
                otel.kind = "consumer",
                run_id = %job.run_id,
                dispatch_id = %job.dispatch_id,
                attempt = job.attempt,
            );
            // The job carries its run's trace context: the create joins the request's trace.
            let parent = job
                .workflow
                .as_ref()
                .and_then(|w| w.annotations.get(TRACEPARENT_ANNOTATION).cloned());
            facteur_runtime::telemetry::adopt_parent(&span, |k| {
                (k == "traceparent").then(|| parent.clone()).flatten()
            });
            let mut jobs = jobs.lock().unwrap_or_else(|p| p.into_inner());
            while jobs.try_join_next().is_some() {}
            jobs.spawn(
                async move {
                    execute(&control, &workflows, job).await;
                    drop(permit);
                }
                .instrument(span),
            );
        }
    };
    // One lease stream per assignment: when the server assigns other namespaces, the stream is
    // opened again for them (jobs in flight carry on). With no namespace assigned, none is
    // opened (an empty filter would mean every namespace).
    while !shutdown.is_cancelled() {
        let namespaces = assigned.borrow_and_update().clone().unwrap_or_default();
        let round = shutdown.child_token();
        let stream = async {
            if namespaces.is_empty() {
                round.cancelled().await;
            } else {
                let ns = namespaces.clone();
                facteur_runtime::adapter::follow(
                    "the lease stream",
                    &round,
                    || open(ns.clone()),
                    each,
                )
                .await;
            }
        };
        tokio::pin!(stream);
        tokio::select! {
            _ = &mut stream => {}
            changed = assigned.changed() => {
                if changed.is_ok() {
                    tracing::info!(from = ?namespaces, "assignment changed: leasing again");
                    round.cancel();
                }
                stream.await;
            }
        }
    }
    let mut jobs = jobs.into_inner().unwrap_or_else(|p| p.into_inner());
    // The lease stream is closed: no new job comes. Let those in flight finish.
    while jobs.try_join_next().is_some() {}
    if jobs.is_empty() {
        return Ok(());
    }
    tracing::info!(jobs = jobs.len(), grace = ?grace, "finishing the jobs in flight");
    let drained =
        tokio::time::timeout(grace, async { while jobs.join_next().await.is_some() {} }).await;
    if drained.is_ok() {
        tracing::info!("every job in flight finished");
        return Ok(());
    }
    let cut = jobs.len();
    jobs.abort_all();
    Err(anyhow::anyhow!(
        "the shutdown grace of {} s (argo.shutdown_grace_seconds) ran out with {cut} job(s) in flight: they were cut, and their leases will expire and be handed out again",
        grace.as_secs()
    ))
}

/// Carries out one job and reports its outcome.
pub async fn execute(control: &Client, workflows: &Workflows, job: pb::LeaseResponse) {
    let Some(spec) = job.workflow.as_ref() else {
        tracing::error!("job without a workflow spec; leaving it to expire");
        return;
    };
    let applied = match pb::DispatchKind::try_from(job.kind) {
        Ok(pb::DispatchKind::Create) => workflows.create(spec).await,
        Ok(pb::DispatchKind::Stop) => {
            workflows
                .shutdown(&spec.namespace, &spec.name, "Stop")
                .await
        }
        Ok(pb::DispatchKind::Terminate) => {
            workflows
                .shutdown(&spec.namespace, &spec.name, "Terminate")
                .await
        }
        Ok(kind @ (pb::DispatchKind::Approve | pb::DispatchKind::Reject)) => match &job.approval {
            Some(a) => {
                let approved = kind == pb::DispatchKind::Approve;
                workflows
                    .decide(&spec.namespace, &spec.name, a, approved)
                    .await
            }
            None => Applied::Failed {
                message: "approval job without its decision".into(),
                retryable: false,
            },
        },
        _ => Applied::Failed {
            message: format!("unknown dispatch kind {}", job.kind),
            retryable: false,
        },
    };
    let outcome = match &applied {
        Applied::Ok {
            name,
            uid,
            already_existed,
        } => {
            tracing::info!(workflow = %name, uid = %uid, already_existed, "workflow applied");
            pb::complete_request::Outcome::Success(pb::DispatchSuccess {
                workflow_name: name.clone(),
                workflow_uid: uid.clone(),
                already_existed: *already_existed,
            })
        }
        Applied::Failed { message, retryable } => {
            tracing::warn!(error = %message, retryable, "workflow not applied");
            pb::complete_request::Outcome::Failure(pb::DispatchFailure {
                message: message.clone(),
                retryable: *retryable,
            })
        }
    };
    let req = pb::CompleteRequest {
        dispatch_id: job.dispatch_id.clone(),
        lease_token: job.lease_token.clone(),
        outcome: Some(outcome),
    };
    // Complete is idempotent for a success; retried while the server is unreachable. If it never
    // lands, the lease expires, the job is redelivered, and the create answers AlreadyExists.
    let result = retry(
        8,
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        || {
            let mut c = control.dispatch();
            let req = req.clone();
            async move { c.complete(req).await }
        },
    )
    .await;
    if let Err(s) = result {
        tracing::warn!(code = ?s.code(), error = %s.message(), "complete not recorded; the lease will expire and the job be redelivered");
    }
}
