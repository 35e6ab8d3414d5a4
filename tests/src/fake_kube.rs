//! A fake Kubernetes API server for `argoproj.io/v1alpha1` `workflows`: a real HTTP server that
//! the unmodified kube-rs client talks to. It serves create (409 on a taken name), get, list
//! with `labelSelector`, watch (newline-delimited JSON events with resourceVersion, resumable
//! from a version; `workflowtemplates` too, set with [`FakeKube::apply_template`]) and JSON merge patch, and plays the Argo controller on demand
//! ([`FakeKube::set_phase`]). Pods exist only as logs (`pods/{name}/log` with `container` and
//! `tailLines`), set with [`FakeKube::set_pod_log`].

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

const BASE: &str = "/apis/argoproj.io/v1alpha1/namespaces/{ns}/workflows";

#[derive(Clone, Debug)]
struct WatchEvent {
    rv: u64,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    objects: BTreeMap<(String, String), Value>,
    log: Vec<WatchEvent>,
    creates: Vec<Value>,
    patches: Vec<(String, String, Value)>,
    fail_creates: VecDeque<u16>,
    hang_creates: usize,
    create_delay: Option<std::time::Duration>,
    create_seen: HashMap<String, std::time::Instant>,
    pod_logs: BTreeMap<(String, String), String>,
    conflict_puts: usize,
    replaces: Vec<Value>,
    templates: BTreeMap<(String, String), Value>,
    log_requests: Vec<(String, String, HashMap<String, String>)>,
}

/// Handle to a running fake.
#[derive(Clone)]
pub struct FakeKube {
    /// Where it listens.
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    events: broadcast::Sender<WatchEvent>,
    cut_watches: broadcast::Sender<()>,
}

#[derive(Clone)]
struct Ctx(FakeKube);

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        axum::Json(body),
    )
        .into_response()
}

fn matches_selector(obj: &Value, selector: Option<&String>) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    sel.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => {
            obj["metadata"]["labels"][k.trim()].as_str() == Some(v.trim_start_matches('=').trim())
        }
        None => !obj["metadata"]["labels"][term.trim()].is_null(),
    })
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

impl FakeKube {
    /// Writes a kubeconfig naming this server (plain HTTP, no credentials) with `namespace` as
    /// its context's, for a real binary to read; returns its path (`dir/kubeconfig`).
    pub fn write_kubeconfig(
        &self,
        dir: &std::path::Path,
        namespace: &str,
    ) -> std::io::Result<std::path::PathBuf> {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\ncurrent-context: fake\n",
            self.addr
        );
        std::fs::write(&path, text)?;
        Ok(path)
    }

    /// Starts on a free loopback port.
    pub async fn start() -> FakeKube {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake kube");
        let addr = listener.local_addr().expect("addr");
        let (events, _) = broadcast::channel(4096);
        let (cut_watches, _) = broadcast::channel(16);
        let fake = FakeKube {
            addr,
            inner: Arc::default(),
            events,
            cut_watches,
        };
        let app = Router::new()
            .route(BASE, get(list_or_watch_workflows).post(create))
            .route(
                "/apis/argoproj.io/v1alpha1/namespaces/{ns}/workflowtemplates",
                get(list_or_watch_templates),
            )
            .route(
                &format!("{BASE}/{{name}}"),
                get(get_one).patch(patch).put(replace),
            )
            .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(pod_log))
            .with_state(Ctx(fake.clone()));
        tokio::spawn(async move {
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let _ = axum::serve(listener, app).await;
        });
        fake
    }

    /// A kube-rs client for this server.
    pub fn client(&self) -> kube::Client {
        let cfg = kube::Config::new(format!("http://{}", self.addr).parse().expect("uri"));
        kube::Client::try_from(cfg).expect("kube client")
    }

    fn record(&self, inner: &mut Inner, kind: &'static str, object: Value) {
        let ev = WatchEvent {
            rv: inner.rv,
            kind,
            object,
        };
        inner.log.push(ev.clone());
        let _ = self.events.send(ev);
    }

    /// Every create request body received (including refused ones), in order.
    pub fn creates(&self) -> Vec<Value> {
        self.inner
            .lock()
            .map(|i| i.creates.clone())
            .unwrap_or_default()
    }

    /// When the first create request for `name` arrived.
    pub fn create_seen(&self, name: &str) -> Option<std::time::Instant> {
        self.inner.lock().ok()?.create_seen.get(name).copied()
    }

    /// How many distinct Workflows had a create request.
    pub fn create_seen_count(&self) -> usize {
        self.inner.lock().map(|i| i.create_seen.len()).unwrap_or(0)
    }

    /// Every merge patch received: (namespace, name, patch).
    pub fn patches(&self) -> Vec<(String, String, Value)> {
        self.inner
            .lock()
            .map(|i| i.patches.clone())
            .unwrap_or_default()
    }

    /// The stored Workflow objects.
    pub fn workflows(&self) -> Vec<Value> {
        self.inner
            .lock()
            .map(|i| i.objects.values().cloned().collect())
            .unwrap_or_default()
    }

    /// One Workflow.
    pub fn workflow(&self, ns: &str, name: &str) -> Option<Value> {
        self.inner
            .lock()
            .ok()?
            .objects
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    /// The next `n` creates answer `code` (e.g. 500, 403) without creating anything.
    pub fn fail_creates(&self, n: usize, code: u16) {
        if let Ok(mut i) = self.inner.lock() {
            i.fail_creates.extend(std::iter::repeat_n(code, n));
        }
    }

    /// Answers every create after `d` (the object exists at once, as on a slow API server).
    pub fn delay_creates(&self, d: std::time::Duration) {
        if let Ok(mut i) = self.inner.lock() {
            i.create_delay = Some(d);
        }
    }

    /// The next `n` creates store the Workflow but never answer (the caller "dies" waiting).
    pub fn hang_creates(&self, n: usize) {
        if let Ok(mut i) = self.inner.lock() {
            i.hang_creates += n;
        }
    }

    /// The next `n` replaces (PUT) of a Workflow find it changed by "the controller" just
    /// before: its resourceVersion moves on and they get 409 Conflict.
    pub fn conflict_puts(&self, n: usize) {
        if let Ok(mut i) = self.inner.lock() {
            i.conflict_puts += n;
        }
    }

    /// Every replace (PUT) body received, conflicts included.
    pub fn replaces(&self) -> Vec<Value> {
        self.inner
            .lock()
            .map(|i| i.replaces.clone())
            .unwrap_or_default()
    }

    /// Creates or replaces a WorkflowTemplate (`metadata.namespace` and `.name` from `obj`), as
    /// `kubectl apply` would.
    pub fn apply_template(&self, mut obj: Value) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.rv += 1;
        let rv = inner.rv;
        obj["apiVersion"] = json!("argoproj.io/v1alpha1");
        obj["kind"] = json!("WorkflowTemplate");
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = (
            obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            obj["metadata"]["name"].as_str().unwrap_or("").to_string(),
        );
        let kind = if inner.templates.contains_key(&key) {
            "MODIFIED"
        } else {
            obj["metadata"]["uid"] = json!(format!("uid-tpl-{rv}"));
            "ADDED"
        };
        inner.templates.insert(key, obj.clone());
        self.record(&mut inner, kind, obj);
    }

    /// Deletes a WorkflowTemplate.
    pub fn delete_template(&self, ns: &str, name: &str) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.rv += 1;
        let rv = inner.rv;
        if let Some(mut obj) = inner.templates.remove(&(ns.to_string(), name.to_string())) {
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            self.record(&mut inner, "DELETED", obj);
        }
    }

    /// The `main` container's log of pod `ns/name`.
    pub fn set_pod_log(&self, ns: &str, name: &str, log: &str) {
        if let Ok(mut i) = self.inner.lock() {
            i.pod_logs
                .insert((ns.to_string(), name.to_string()), log.to_string());
        }
    }

    /// Every pod log request: (namespace, pod, query parameters).
    pub fn log_requests(&self) -> Vec<(String, String, HashMap<String, String>)> {
        self.inner
            .lock()
            .map(|i| i.log_requests.clone())
            .unwrap_or_default()
    }

    /// Ends every open watch stream (clients must resume them).
    pub fn end_watches(&self) {
        let _ = self.cut_watches.send(());
    }

    /// Plays the Argo controller: sets `status.phase` and merges `extra` into `status`.
    pub fn set_phase(&self, ns: &str, name: &str, phase: &str, extra: Value) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.rv += 1;
        let rv = inner.rv;
        let Some(obj) = inner.objects.get_mut(&(ns.to_string(), name.to_string())) else {
            panic!("no workflow {ns}/{name} to move to {phase}");
        };
        let mut status = json!({"phase": phase});
        if phase == "Running" && obj["status"]["startedAt"].is_null() {
            status["startedAt"] =
                json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
        if matches!(phase, "Succeeded" | "Failed" | "Error") {
            status["finishedAt"] =
                json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        }
        merge(&mut status, &extra);
        merge(&mut obj["status"], &status);
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let obj = obj.clone();
        self.record(&mut inner, "MODIFIED", obj);
    }
}

async fn create(State(Ctx(fake)): State<Ctx>, Path(ns): Path<String>, body: Bytes) -> Response {
    let Ok(mut obj) = serde_json::from_slice::<Value>(&body) else {
        return status(400, "BadRequest", "body is not JSON".into());
    };
    let hang = {
        let seen = std::time::Instant::now();
        let Ok(mut inner) = fake.inner.lock() else {
            return status(500, "InternalError", "lock".into());
        };
        inner.creates.push(obj.clone());
        if let Some(name) = obj["metadata"]["name"].as_str() {
            inner.create_seen.entry(name.to_string()).or_insert(seen);
        }
        if let Some(code) = inner.fail_creates.pop_front() {
            return status(code, "InternalError", format!("injected failure {code}"));
        }
        let Some(name) = obj["metadata"]["name"].as_str().map(str::to_string) else {
            return status(422, "Invalid", "metadata.name is required".into());
        };
        if inner.objects.contains_key(&(ns.clone(), name.clone())) {
            return status(
                409,
                "AlreadyExists",
                format!("workflows.argoproj.io \"{name}\" already exists"),
            );
        }
        inner.rv += 1;
        obj["metadata"]["namespace"] = json!(ns);
        obj["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
        obj["metadata"]["resourceVersion"] = json!(inner.rv.to_string());
        obj["metadata"]["creationTimestamp"] =
            json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        inner.objects.insert((ns.clone(), name), obj.clone());
        fake.record(&mut inner, "ADDED", obj.clone());
        let hang = inner.hang_creates > 0;
        if hang {
            inner.hang_creates -= 1;
        }
        (hang, inner.create_delay)
    };
    let (hang, delay) = hang;
    if hang {
        std::future::pending::<()>().await;
    }
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    (StatusCode::CREATED, axum::Json(obj)).into_response()
}

/// PUT: replaces a Workflow when the body's resourceVersion is the stored one (409 otherwise).
async fn replace(
    State(Ctx(fake)): State<Ctx>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let Ok(obj) = serde_json::from_slice::<Value>(&body) else {
        return status(400, "BadRequest", "body is not JSON".into());
    };
    let Ok(mut inner) = fake.inner.lock() else {
        return status(500, "InternalError", "lock".into());
    };
    inner.replaces.push(obj.clone());
    let key = (ns, name.clone());
    if inner.conflict_puts > 0 && inner.objects.contains_key(&key) {
        inner.conflict_puts -= 1;
        inner.rv += 1;
        let rv = inner.rv;
        if let Some(o) = inner.objects.get_mut(&key) {
            o["metadata"]["resourceVersion"] = json!(rv.to_string());
            let o = o.clone();
            fake.record(&mut inner, "MODIFIED", o);
        }
    }
    let Some(stored) = inner.objects.get(&key) else {
        return status(
            404,
            "NotFound",
            format!("workflows.argoproj.io \"{name}\" not found"),
        );
    };
    if stored["metadata"]["resourceVersion"] != obj["metadata"]["resourceVersion"] {
        return status(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on workflows.argoproj.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
    }
    inner.rv += 1;
    let rv = inner.rv;
    let mut obj = obj;
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    inner.objects.insert(key, obj.clone());
    fake.record(&mut inner, "MODIFIED", obj.clone());
    axum::Json(obj).into_response()
}

async fn pod_log(
    State(Ctx(fake)): State<Ctx>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Ok(mut inner) = fake.inner.lock() else {
        return status(500, "InternalError", "poisoned".into());
    };
    inner
        .log_requests
        .push((ns.clone(), name.clone(), q.clone()));
    if q.get("container").is_some_and(|c| c != "main") {
        return status(400, "BadRequest", "container is not valid for pod".into());
    }
    let Some(log) = inner.pod_logs.get(&(ns, name.clone())) else {
        return status(404, "NotFound", format!("pods \"{name}\" not found"));
    };
    let lines: Vec<&str> = log.lines().collect();
    let tail = q
        .get("tailLines")
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(lines.len());
    let mut out = lines[lines.len().saturating_sub(tail)..].join("\n");
    out.push('\n');
    (StatusCode::OK, out).into_response()
}

async fn get_one(
    State(Ctx(fake)): State<Ctx>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    match fake.workflow(&ns, &name) {
        Some(o) => axum::Json(o).into_response(),
        None => status(
            404,
            "NotFound",
            format!("workflows.argoproj.io \"{name}\" not found"),
        ),
    }
}

async fn patch(
    State(Ctx(fake)): State<Ctx>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct != "application/merge-patch+json" {
        return status(
            415,
            "UnsupportedMediaType",
            format!("expected a merge patch, got `{ct}`"),
        );
    }
    let Ok(p) = serde_json::from_slice::<Value>(&body) else {
        return status(400, "BadRequest", "patch is not JSON".into());
    };
    let Ok(mut inner) = fake.inner.lock() else {
        return status(500, "InternalError", "lock".into());
    };
    inner.patches.push((ns.clone(), name.clone(), p.clone()));
    inner.rv += 1;
    let rv = inner.rv;
    let Some(obj) = inner.objects.get_mut(&(ns, name.clone())) else {
        return status(
            404,
            "NotFound",
            format!("workflows.argoproj.io \"{name}\" not found"),
        );
    };
    merge(obj, &p);
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    let obj = obj.clone();
    fake.record(&mut inner, "MODIFIED", obj.clone());
    axum::Json(obj).into_response()
}

async fn list_or_watch_workflows(
    State(Ctx(fake)): State<Ctx>,
    Path(ns): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    list_or_watch(fake, ns, q, "Workflow")
}

async fn list_or_watch_templates(
    State(Ctx(fake)): State<Ctx>,
    Path(ns): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    list_or_watch(fake, ns, q, "WorkflowTemplate")
}

/// List or watch objects of `kind` in `ns` (the event log holds both kinds).
fn list_or_watch(
    fake: FakeKube,
    ns: String,
    q: HashMap<String, String>,
    kind: &'static str,
) -> Response {
    let selector = q.get("labelSelector").cloned();
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
        let from: u64 = q
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut live = fake.events.subscribe();
        let mut cut = fake.cut_watches.subscribe();
        let backlog: Vec<WatchEvent> = fake
            .inner
            .lock()
            .map(|i| i.log.iter().filter(|e| e.rv > from).cloned().collect())
            .unwrap_or_default();
        let ns2 = ns.clone();
        let wanted = move |e: &WatchEvent| {
            e.object["kind"].as_str().unwrap_or("Workflow") == kind
                && e.object["metadata"]["namespace"].as_str() == Some(ns2.as_str())
                && matches_selector(&e.object, selector.as_ref())
        };
        let line = |e: &WatchEvent| {
            Ok::<_, std::convert::Infallible>(Bytes::from(format!(
                "{}\n",
                json!({"type": e.kind, "object": e.object})
            )))
        };
        let stream = async_stream(backlog, from, wanted, line, move |tx| async move {
            loop {
                tokio::select! {
                    _ = cut.recv() => return,
                    ev = live.recv() => match ev {
                        Ok(ev) => if tx.send(ev).await.is_err() { return },
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => return,
                    },
                }
            }
        });
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(stream))
            .unwrap_or_else(|_| status(500, "InternalError", "stream".into()));
    }
    let Ok(inner) = fake.inner.lock() else {
        return status(500, "InternalError", "lock".into());
    };
    let objects = if kind == "Workflow" {
        &inner.objects
    } else {
        &inner.templates
    };
    let items: Vec<Value> = objects
        .iter()
        .filter(|((n, _), o)| *n == ns && matches_selector(o, selector.as_ref()))
        .map(|(_, o)| o.clone())
        .collect();
    axum::Json(
        json!({"apiVersion": "argoproj.io/v1alpha1", "kind": format!("{kind}List"),
        "metadata": {"resourceVersion": inner.rv.to_string()}, "items": items}),
    )
    .into_response()
}

/// Backlog first, then live events from `pump`, filtered, deduplicated by resourceVersion.
fn async_stream<F, L, P, Fut>(
    backlog: Vec<WatchEvent>,
    from: u64,
    wanted: F,
    line: L,
    pump: P,
) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>>
where
    F: Fn(&WatchEvent) -> bool + Send + 'static,
    L: Fn(&WatchEvent) -> Result<Bytes, std::convert::Infallible> + Send + 'static,
    P: FnOnce(tokio::sync::mpsc::Sender<WatchEvent>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<WatchEvent>(1024);
    tokio::spawn(pump(tx));
    let mut last = from;
    let backlog = futures::stream::iter(backlog);
    let live = tokio_stream::wrappers::ReceiverStream::new(rx);
    futures::StreamExt::filter_map(futures::StreamExt::chain(backlog, live), move |e| {
        let out = if e.rv > last && wanted(&e) {
            last = e.rv;
            Some(line(&e))
        } else {
            None
        };
        std::future::ready(out)
    })
}
