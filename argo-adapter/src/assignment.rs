//! What this adapter serves, as the server says (`DispatchService.GetAssignment`): every
//! namespace the server dispatches to, narrowed by `argo.namespaces` (the adapter's RBAC scope).
//! Asked at start and every `refresh_seconds` after, which is also the heartbeat that lets
//! `AdminService.GetStatus` list this adapter. A server too old to answer gets the namespaces of
//! the adapter's own configuration, as before.

use facteur_client::{Backoff, Client, pb};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The current assignment: `None` until the server first answers.
pub type Assigned = watch::Receiver<Option<Vec<String>>>;

/// Keeps `tx` current until `shutdown`.
#[allow(clippy::too_many_arguments)] // TODO(#32): one adapter identity (id, cluster) struct
pub async fn follow(
    control: Client,
    adapter_id: String,
    cluster: String,
    narrowing: Vec<String>,
    max_in_flight: u32,
    fallback: Vec<String>,
    tx: watch::Sender<Option<Vec<String>>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(15));
    let mut failing = false;
    while !shutdown.is_cancelled() {
        let req = pb::GetAssignmentRequest {
            adapter_id: adapter_id.clone(),
            namespaces: narrowing.clone(),
            max_in_flight,
            cluster: cluster.clone(),
        };
        let mut dispatch = control.dispatch();
        let answer = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            a = dispatch.get_assignment(req) => a,
        };
        let wait = match answer {
            Ok(a) => {
                let a = a.into_inner();
                backoff.reset();
                failing = false;
                if a.namespaces.is_empty() {
                    tracing::warn!(dispatch_namespaces = ?a.dispatch_namespaces, narrowing = ?narrowing, "this adapter serves no namespace: argo.namespaces excludes every namespace the server dispatches to");
                }
                let changed = tx.send_if_modified(|cur| {
                    let new = Some(a.namespaces.clone());
                    let changed = *cur != new;
                    *cur = new;
                    changed
                });
                if changed {
                    tracing::info!(namespaces = ?a.namespaces, dispatch_namespaces = ?a.dispatch_namespaces, "assignment from the server");
                }
                Duration::from_secs(u64::from(a.refresh_seconds.clamp(1, 60)))
            }
            Err(st) if st.code() == tonic::Code::Unimplemented => {
                tracing::warn!(namespaces = ?fallback, "the server does not assign namespaces (an older version): serving those of this adapter's configuration");
                tx.send_replace(Some(fallback));
                return Ok(());
            }
            Err(st) => {
                if !failing {
                    tracing::warn!(code = ?st.code(), error = %st.message(), "cannot get this adapter's assignment; keeping the last one and retrying");
                }
                failing = true;
                backoff.next_delay()
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
    Ok(())
}
