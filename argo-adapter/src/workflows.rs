//! `argoproj.io/v1alpha1` `Workflow` objects through kube-rs, without generated types.

use facteur_proto::v1 as pb;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;

/// How a create or patch ended, as the server's `Complete` wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Done: the Workflow's name and UID, and whether it existed already.
    Ok {
        /// Name.
        name: String,
        /// UID.
        uid: String,
        /// AlreadyExists was answered.
        already_existed: bool,
    },
    /// Failed.
    Failed {
        /// What failed.
        message: String,
        /// Another attempt may succeed.
        retryable: bool,
    },
}

/// Access to Workflows in any namespace.
#[derive(Clone)]
pub struct Workflows {
    client: kube::Client,
    resource: ApiResource,
    templates: ApiResource,
}

impl Workflows {
    /// Without discovery: the plural is known.
    pub fn new(client: kube::Client) -> Self {
        let gvk = GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Workflow");
        let templates = GroupVersionKind::gvk("argoproj.io", "v1alpha1", "WorkflowTemplate");
        Self {
            client,
            resource: ApiResource::from_gvk_with_plural(&gvk, "workflows"),
            templates: ApiResource::from_gvk_with_plural(&templates, "workflowtemplates"),
        }
    }

    /// The namespaced API.
    pub fn api(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, &self.resource)
    }

    /// The namespaced API of WorkflowTemplates.
    pub fn templates(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, &self.templates)
    }

    /// The Workflow object for a job.
    pub fn object(&self, spec: &pb::WorkflowSpec) -> DynamicObject {
        let mut parameters: Vec<_> = spec
            .parameters
            .iter()
            .map(|p| json!({"name": p.name, "value": p.value}))
            .collect();
        parameters.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        let mut body = json!({
            "workflowTemplateRef": {"name": spec.workflow_template},
            "arguments": {"parameters": parameters},
        });
        if !spec.service_account.is_empty() {
            body["serviceAccountName"] = json!(spec.service_account);
        }
        let mut obj = DynamicObject::new(&spec.name, &self.resource)
            .within(&spec.namespace)
            .data(json!({"spec": body}));
        obj.metadata.labels = Some(spec.labels.clone().into_iter().collect());
        obj.metadata.annotations = Some(spec.annotations.clone().into_iter().collect());
        obj
    }

    /// Creates the Workflow; AlreadyExists counts as success (the name is the run's).
    pub async fn create(&self, spec: &pb::WorkflowSpec) -> Applied {
        use tracing::Instrument;
        let api = self.api(&spec.namespace);
        let created = api
            .create(&PostParams::default(), &self.object(spec))
            .instrument(kube_span("create", &spec.namespace, &spec.name))
            .await;
        match created {
            Ok(created) => Applied::Ok {
                name: spec.name.clone(),
                uid: created.metadata.uid.unwrap_or_default(),
                already_existed: false,
            },
            Err(kube::Error::Api(s)) if s.code == 409 => match api.get(&spec.name).await {
                Ok(existing) => Applied::Ok {
                    name: spec.name.clone(),
                    uid: existing.metadata.uid.unwrap_or_default(),
                    already_existed: true,
                },
                Err(e) => failed("reading the existing workflow", e, true),
            },
            // A missing namespace (404) will not appear by retrying.
            Err(e) => failed("creating the workflow", e, false),
        }
    }

    /// The last `lines` lines of a Workflow pod's `main` container (`pods/log` get): what a run
    /// card shows of a failed step, for commands that opt in.
    pub async fn log_tail(
        &self,
        namespace: &str,
        pod: &str,
        lines: i64,
    ) -> Result<String, kube::Error> {
        use tracing::Instrument;
        let params = kube::api::LogParams {
            container: Some("main".into()),
            tail_lines: Some(lines),
            // Bounded whatever the lines hold; the card keeps the end of it.
            limit_bytes: Some(64 * 1024),
            ..Default::default()
        };
        Api::<k8s_openapi::api::core::v1::Pod>::namespaced(self.client.clone(), namespace)
            .logs(pod, &params)
            .instrument(resource_span("get", "pods/log", namespace, pod))
            .await
    }

    /// Applies a decision on a suspend step as `argo resume` / `argo stop` do, without the Argo
    /// server: the Workflow is read, its node updated (Succeeded with the supplied output
    /// parameters and the approver named, or Failed naming who rejected it, the Workflow then
    /// stopped), `spec.suspend` cleared, and the object replaced at the version read. A
    /// conflict (the controller wrote in between) reads it again, up to 10 times. A step no
    /// longer waiting is done: decided elsewhere (the Argo UI, a timeout).
    pub async fn decide(
        &self,
        namespace: &str,
        name: &str,
        a: &pb::Approval,
        approved: bool,
    ) -> Applied {
        use tracing::Instrument;
        let api = self.api(namespace);
        for _ in 0..10 {
            let mut wf = match api
                .get(name)
                .instrument(kube_span("get", namespace, name))
                .await
            {
                Ok(wf) => wf,
                Err(e) => return failed("reading the workflow", e, true),
            };
            if !decision(&mut wf.data, a, approved) {
                return Applied::Ok {
                    name: name.to_string(),
                    uid: wf.metadata.uid.unwrap_or_default(),
                    already_existed: true,
                };
            }
            match api
                .replace(name, &PostParams::default(), &wf)
                .instrument(kube_span("update", namespace, name))
                .await
            {
                Ok(wf) => {
                    return Applied::Ok {
                        name: name.to_string(),
                        uid: wf.metadata.uid.unwrap_or_default(),
                        already_existed: false,
                    };
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    tracing::debug!(workflow = %name, "conflict applying a decision; reading again");
                }
                Err(e) => return failed("updating the workflow", e, true),
            }
        }
        Applied::Failed {
            message: "the workflow kept changing under the decision (10 conflicts)".into(),
            retryable: true,
        }
    }

    /// Merge-patches `spec.shutdown` to `Stop` or `Terminate` (what `argo stop|terminate` do).
    pub async fn shutdown(&self, namespace: &str, name: &str, mode: &str) -> Applied {
        use tracing::Instrument;
        let patch = json!({"spec": {"shutdown": mode}});
        match self
            .api(namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .instrument(kube_span("patch", namespace, name))
            .await
        {
            Ok(wf) => Applied::Ok {
                name: name.to_string(),
                uid: wf.metadata.uid.unwrap_or_default(),
                already_existed: false,
            },
            // 404: the create may not have landed yet.
            Err(e) => failed("patching spec.shutdown", e, true),
        }
    }
}

/// Writes a decision into a Workflow object (`data`: its JSON); `false` when nothing waits any
/// more (the node left `Running`, the Workflow is no longer suspended).
pub fn decision(data: &mut serde_json::Value, a: &pb::Approval, approved: bool) -> bool {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let by = &a.decided_by;
    let mut changed = false;
    if !a.node_id.is_empty() {
        let Some(node) = data.pointer_mut(&format!("/status/nodes/{}", a.node_id)) else {
            return false;
        };
        if node["phase"] != "Running" {
            return false;
        }
        if approved {
            node["phase"] = json!("Succeeded");
            node["message"] = json!(format!("Approved by {by} via facteur"));
            if !a.values.is_empty() {
                let mut values: Vec<(&String, &String)> = a.values.iter().collect();
                values.sort();
                node["outputs"]["parameters"] = values
                    .into_iter()
                    .map(|(k, v)| json!({"name": k, "value": v}))
                    .collect();
            }
        } else {
            node["phase"] = json!("Failed");
            node["message"] = json!(if a.reason.is_empty() {
                format!("Rejected by {by} via facteur")
            } else {
                format!("Rejected by {by} via facteur: {}", a.reason)
            });
        }
        node["finishedAt"] = json!(now);
        changed = true;
    }
    if let Some(spec) = data
        .get_mut("spec")
        .and_then(serde_json::Value::as_object_mut)
        && spec.get("suspend").and_then(serde_json::Value::as_bool) == Some(true)
    {
        spec.remove("suspend");
        changed = true;
    }
    if changed && !approved {
        data["spec"]["shutdown"] = json!("Stop");
    }
    changed
}

/// The client span of one Kubernetes API call on a Workflow.
fn kube_span(verb: &str, namespace: &str, name: &str) -> tracing::Span {
    resource_span(verb, "workflows.argoproj.io", namespace, name)
}

/// The client span of one Kubernetes API call.
fn resource_span(verb: &str, resource: &str, namespace: &str, name: &str) -> tracing::Span {
    tracing::info_span!(
        "kubernetes",
        otel.name = %format!("{verb} {resource}"),
        otel.kind = "client",
        k8s.namespace.name = %namespace,
        k8s.resource = %resource,
        k8s.verb = %verb,
        k8s.object.name = %name,
    )
}

/// Classifies a Kubernetes error: network trouble, 5xx, 429 and conflicts are worth retrying,
/// 404 when `not_found_retryable`; other 4xx (forbidden, invalid) are not.
fn failed(what: &str, e: kube::Error, not_found_retryable: bool) -> Applied {
    let retryable = match &e {
        kube::Error::Api(s) => {
            s.code >= 500
                || s.code == 429
                || s.code == 409
                || (s.code == 404 && not_found_retryable)
        }
        _ => true,
    };
    let message = match &e {
        kube::Error::Api(s) => format!(
            "{what}: kubernetes answered {} {}: {}",
            s.code, s.reason, s.message
        ),
        other => format!("{what}: {other}"),
    };
    Applied::Failed { message, retryable }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting() -> serde_json::Value {
        json!({"spec": {"suspend": true},
               "status": {"nodes": {"n1": {"id": "n1", "phase": "Running", "type": "Suspend"}}}})
    }

    #[test]
    fn a_decision_is_written_as_argo_resume_and_stop_write_it() {
        let a = pb::Approval {
            node_id: "n1".into(),
            decided_by: "bob".into(),
            values: [("env".to_string(), "prod".to_string())].into(),
            ..Default::default()
        };
        let mut wf = waiting();
        assert!(decision(&mut wf, &a, true));
        let n = &wf["status"]["nodes"]["n1"];
        assert_eq!(n["phase"], "Succeeded");
        assert_eq!(n["message"], "Approved by bob via facteur");
        assert_eq!(
            n["outputs"]["parameters"],
            json!([{"name": "env", "value": "prod"}])
        );
        assert!(wf["spec"].get("suspend").is_none() && wf["spec"].get("shutdown").is_none());
        assert!(!decision(&mut wf, &a, true), "nothing waits any more");

        let mut wf = waiting();
        let reject = pb::Approval {
            reason: "no".into(),
            ..a.clone()
        };
        assert!(decision(&mut wf, &reject, false));
        assert_eq!(
            wf["status"]["nodes"]["n1"]["message"],
            "Rejected by bob via facteur: no"
        );
        assert_eq!(wf["status"]["nodes"]["n1"]["phase"], "Failed");
        assert_eq!(wf["spec"]["shutdown"], "Stop");

        // Only the Workflow is suspended.
        let mut wf = json!({"spec": {"suspend": true}, "status": {}});
        let whole = pb::Approval {
            node_id: String::new(),
            ..a
        };
        assert!(decision(&mut wf, &whole, true));
        assert!(wf["spec"].get("suspend").is_none());
    }
}
