//! Turning a Workflow object into a status report, and sending it (de-duplicated).

use facteur_client::{Backoff, Client, pb, retry};
use kube::api::DynamicObject;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Label carrying the run id.
pub const RUN_ID_LABEL: &str = "facteur.proompteng.ai/run-id";
/// Selector of the Workflows facteur manages.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=facteur";

fn ts(v: &Value) -> Option<facteur_proto::Timestamp> {
    let t = chrono::DateTime::parse_from_rfc3339(v.as_str()?).ok()?;
    Some(facteur_proto::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    })
}

/// The failing node: a failed or errored Pod node if any (the step that broke), else any
/// failed node; its display name and message.
pub fn failing_node(status: &Value) -> Option<(String, String)> {
    let nodes = status.get("nodes")?.as_object()?;
    let failed = |n: &&Value| {
        matches!(
            n.get("phase").and_then(Value::as_str),
            Some("Failed" | "Error")
        )
    };
    let pick = nodes
        .values()
        .filter(failed)
        .filter(|n| n.get("type").and_then(Value::as_str) == Some("Pod"))
        .max_by_key(|n| n.get("finishedAt").and_then(Value::as_str).unwrap_or(""))
        .or_else(|| nodes.values().find(failed))?;
    let name = pick
        .get("displayName")
        .or_else(|| pick.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let message = pick
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    Some((name, message))
}

/// The report for a Workflow object; `None` when it has no phase yet.
pub fn report_of(obj: &DynamicObject, source: &str) -> Option<pb::ReportWorkflowStatusRequest> {
    let status = obj.data.get("status")?;
    let phase = status.get("phase").and_then(Value::as_str).unwrap_or("");
    if phase.is_empty() {
        return None;
    }
    let s = |k: &str| {
        status
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let (failed_node, failed_node_message) = failing_node(status).unwrap_or_default();
    Some(pb::ReportWorkflowStatusRequest {
        run_id: obj
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(RUN_ID_LABEL))
            .cloned()
            .unwrap_or_default(),
        namespace: obj.metadata.namespace.clone().unwrap_or_default(),
        workflow_name: obj.metadata.name.clone().unwrap_or_default(),
        workflow_uid: obj.metadata.uid.clone().unwrap_or_default(),
        phase: phase.to_string(),
        message: s("message"),
        progress: s("progress"),
        started_at: status.get("startedAt").and_then(ts),
        finished_at: status.get("finishedAt").and_then(ts),
        failed_node,
        failed_node_message,
        source: source.to_string(),
    })
}

/// Phase, progress and message: what makes a report worth sending again.
type Fingerprint = (String, String, String);

/// Sends reports, skipping one identical to the last sent for the same Workflow.
#[derive(Clone)]
pub struct Reporter {
    client: Client,
    last: Arc<Mutex<HashMap<String, Fingerprint>>>,
}

impl Reporter {
    /// Reports through `client`.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            last: Arc::default(),
        }
    }

    /// Sends `r` (retrying while the server is unavailable). A report the server rejects is
    /// logged and dropped: the watch will send the Workflow's state again.
    pub async fn send(&self, r: pb::ReportWorkflowStatusRequest) {
        let key = format!("{}/{}", r.namespace, r.workflow_name);
        let fingerprint = (r.phase.clone(), r.progress.clone(), r.message.clone());
        if self
            .last
            .lock()
            .map(|m| m.get(&key) == Some(&fingerprint))
            .unwrap_or(false)
        {
            return;
        }
        let terminal = matches!(r.phase.as_str(), "Succeeded" | "Failed" | "Error");
        // While the server is unreachable (restarting, say), keep trying: a dropped report of a
        // final phase would leave the run unfinished until the next resync.
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let result = loop {
            let attempt = retry(4, backoff, || {
                let mut c = self.client.dispatch();
                let r = r.clone();
                async move { c.report_workflow_status(r).await }
            })
            .await;
            match attempt {
                Err(s) if facteur_client::is_retryable(&s) => {
                    tracing::warn!(workflow = %key, code = ?s.code(), "server unavailable for a status report; still trying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                other => break other,
            }
        };
        match result {
            Ok(resp) => {
                let resp = resp.into_inner();
                tracing::debug!(workflow = %key, phase = %r.phase, changed = resp.changed, source = %r.source, "status reported");
                if let Ok(mut m) = self.last.lock() {
                    if terminal {
                        // Nothing follows a terminal phase: forget it, keeping the map bounded.
                        m.remove(&key);
                    } else {
                        m.insert(key, fingerprint);
                    }
                }
            }
            Err(s) => {
                tracing::warn!(workflow = %key, phase = %r.phase, code = ?s.code(), error = %s.message(), "status report refused")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_failing_pod_node_is_named() {
        let status = json!({"nodes": {
            "a": {"phase": "Failed", "type": "Steps", "displayName": "main", "message": "child failed"},
            "b": {"phase": "Succeeded", "type": "Pod", "displayName": "checkout"},
            "c": {"phase": "Failed", "type": "Pod", "displayName": "build", "message": "exit code 2", "finishedAt": "2026-01-01T00:00:02Z"},
        }});
        assert_eq!(
            failing_node(&status),
            Some(("build".into(), "exit code 2".into()))
        );
        assert_eq!(failing_node(&json!({"nodes": {}})), None);
    }
}
