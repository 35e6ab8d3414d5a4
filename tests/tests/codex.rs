//! Codex task ingestion: wire compatibility, durable idempotency, validation that writes
//! nothing, adoption of the old codex_kb schema, and a task followed to its end.

use facteur_client::pb;
use facteur_proto::froussard::CodexTask;
use facteur_tests::fake_kube::FakeKube;
use facteur_tests::stack::{Adapter, admin};
use facteur_tests::*;
use prost::Message;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use std::time::Duration;
use tonic::Code;

const SAMPLE: &str = include_str!("../fixtures/codex-task.json");
const WAIT: Duration = Duration::from_secs(20);

fn sample() -> CodexTask {
    facteur_proto::codex_task_from_json(SAMPLE.as_bytes())
        .expect("the shared sample parses as proto-JSON")
}

fn codex_config(db: &TestDb) -> facteur_config::Config {
    let mut c = with_tokens(config(db));
    let o = &mut c.codex_implementation_orchestrator;
    o.enabled = true;
    o.autonomous_namespace = "jangar".into();
    o.autonomous_service_account = "jangar-inspector".into();
    o.judge_prompt = "be strict".into();
    c.dispatcher.lease_seconds = 2;
    c
}

async fn post_task(srv: &TestServer, token: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("Content-Type", content_type)];
    if !token.is_empty() {
        headers.push(("Authorization", auth.as_str()));
    }
    let (code, body) = http(srv.server.http_addr, "POST", "/codex/tasks", &headers, body).await;
    (code, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn rows(srv: &TestServer) -> [i64; 5] {
    let s = &srv.server.state.store;
    [
        count_rows(s, "codex_kb.ideas").await,
        count_rows(s, "codex_kb.tasks").await,
        count_rows(s, "codex_kb.task_runs").await,
        count_rows(s, "runs").await,
        count_rows(s, "dispatches").await,
    ]
}

async fn compat_endpoint(backend: Backend) {
    let db = TestDb::new(backend).await;
    let srv = TestServer::start(codex_config(&db)).await;
    let bytes = sample().encode_to_vec();
    let (code, body) = post_task(&srv, CODEX_TOKEN, "application/x-protobuf", &bytes).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["stage"], "implementation");
    assert_eq!(body["namespace"], "jangar");
    assert_eq!(body["duplicate"], false);
    let name = body["workflowName"]
        .as_str()
        .expect("workflowName")
        .to_string();
    assert!(name.starts_with("codex-autonomous-"), "{name}");
    assert!(
        chrono::DateTime::parse_from_rfc3339(body["submittedAt"].as_str().expect("submittedAt"))
            .is_ok()
    );
    assert_eq!(rows(&srv).await, [1, 1, 1, 1, 1]);

    // The replay answers with the original, and writes nothing.
    let (code, again) = post_task(&srv, CODEX_TOKEN, "application/x-protobuf", &bytes).await;
    assert_eq!(code, 202);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["workflowName"], name.as_str());
    assert_eq!(again["submittedAt"], body["submittedAt"]);
    assert_eq!(rows(&srv).await, [1, 1, 1, 1, 1]);

    // A replay with other content still answers with the original (the old service's
    // behaviour), and is counted apart.
    let mut changed = sample();
    changed.prompt = "something else".into();
    let (code, differs) = post_task(
        &srv,
        CODEX_TOKEN,
        "application/x-protobuf",
        &changed.encode_to_vec(),
    )
    .await;
    assert_eq!(code, 202);
    assert_eq!(differs["duplicate"], true);
    assert_eq!(differs["workflowName"], name.as_str());
    assert_eq!(rows(&srv).await, [1, 1, 1, 1, 1]);

    // proto-JSON with content-type application/json is accepted too.
    let mut other = serde_json::from_str::<Value>(SAMPLE).expect("json");
    other["deliveryId"] = json!("delivery-json-1");
    let (code, body) = post_task(
        &srv,
        CODEX_TOKEN,
        "application/json",
        other.to_string().as_bytes(),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(
        rows(&srv).await,
        [1, 1, 2, 2, 2],
        "same issue and stage: one idea, one task, two task runs"
    );
    // A producer built against a newer CodexTask: fields this one does not declare are
    // skipped (as binary protobuf skips them) and counted; the task is taken.
    let mut newer = serde_json::from_str::<Value>(SAMPLE).expect("json");
    newer["deliveryId"] = json!("delivery-json-newer");
    newer["futureField"] = json!({"a": 1});
    newer["iterations"] = json!({"futureKnob": true});
    let (code, body) = post_task(
        &srv,
        CODEX_TOKEN,
        "application/json",
        newer.to_string().as_bytes(),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let (_, metrics) = http(srv.server.http_addr, "GET", "/metrics", &[], b"").await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("facteur_codex_unknown_fields_total 2"),
        "{metrics}"
    );
    // A known field of the wrong shape is still refused, naming it.
    let mut wrong = serde_json::from_str::<Value>(SAMPLE).expect("json");
    wrong["deliveryId"] = json!("delivery-json-wrong");
    wrong["issueNumber"] = json!({"not": "a number"});
    let (code, body) = post_task(
        &srv,
        CODEX_TOKEN,
        "application/json",
        wrong.to_string().as_bytes(),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(body.to_string().contains("issueNumber: "), "{body}");

    // What was recorded.
    let c = srv.client(CODEX_TOKEN).await;
    let got = c
        .codex()
        .get_task(pb::GetTaskRequest {
            key: Some(pb::get_task_request::Key::DeliveryId(
                "delivery-1635-implementation".into(),
            )),
        })
        .await
        .expect("get task")
        .into_inner()
        .task
        .expect("task");
    assert_eq!(
        (
            got.repository.as_str(),
            got.issue_number,
            got.stage.as_str()
        ),
        ("proompteng/lab", 1635, "implementation")
    );
    assert_eq!(got.status, "queued");
    let run = got.run.expect("run");
    assert_eq!(
        run.target.as_ref().map(|t| t.workflow_name.as_str()),
        Some(name.as_str())
    );
    let params: std::collections::BTreeMap<_, _> = run
        .parameters
        .iter()
        .map(|p| (p.name.as_str(), p.value.as_str()))
        .collect();
    assert_eq!(params["repository"], "proompteng/lab");
    assert_eq!(params["issue_number"], "1635");
    assert_eq!(params["base"], "main");
    assert_eq!(params["head"], "codex/issue-1635-ingestion");
    assert_eq!(params["implementation_iterations"], "1");
    assert_eq!(params["iteration_cycle"], "1");
    assert_eq!(params["judge_prompt"], "be strict");
    let raw: Value = serde_json::from_slice(&base64_decode(params["rawEvent"]))
        .expect("rawEvent is base64 proto-JSON");
    let event: Value = serde_json::from_slice(&base64_decode(params["eventBody"]))
        .expect("eventBody is base64 proto-JSON");
    // eventBody is rawEvent with `stage` the plain string (wire-compat.md §5), keys sorted:
    // every other field the same, field by field.
    assert_eq!(raw["stage"], "CODEX_TASK_STAGE_IMPLEMENTATION");
    assert_eq!(event["stage"], "implementation");
    let (raw_o, event_o) = (
        raw.as_object().expect("object"),
        event.as_object().expect("object"),
    );
    assert_eq!(
        raw_o.keys().collect::<Vec<_>>(),
        event_o.keys().collect::<Vec<_>>(),
        "the same fields"
    );
    for (k, v) in raw_o {
        if k != "stage" {
            assert_eq!(&event_o[k], v, "eventBody.{k}");
        }
    }
    let event_text =
        String::from_utf8(base64_decode(params["eventBody"])).expect("eventBody is UTF-8");
    let keys: Vec<&str> = event_o.keys().map(String::as_str).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(keys, sorted);
    assert!(
        event_text.starts_with("{\"base\":\"main\","),
        "keys sorted in the text itself: {event_text}"
    );
    assert_eq!(
        raw["issueNumber"], "1635",
        "int64 as a string, as protojson renders it"
    );
    assert_eq!(raw["deliveryId"], "delivery-1635-implementation");
    assert_eq!(raw["issuedAt"], "2025-10-30T20:55:00Z");
    let list = c
        .codex()
        .list_tasks(pb::ListTasksRequest {
            repository: "proompteng/lab".into(),
            page_size: 1,
            ..Default::default()
        })
        .await;
    let list = list.expect("list").into_inner();
    assert_eq!(list.tasks.len(), 1);
    assert!(!list.next_page_token.is_empty());
    let (_, metrics) = http(srv.server.http_addr, "GET", "/metrics", &[], b"").await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("facteur_codex_tasks_accepted_total 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("facteur_codex_tasks_duplicate_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("facteur_codex_tasks_replay_differs_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("facteur_codex_ingest_duration_ms_count 5"),
        "{metrics}"
    );
    srv.stop().await;
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("standard base64")
}

#[tokio::test]
async fn compat_endpoint_with_the_sample_on_sqlite() {
    Box::pin(compat_endpoint(Backend::Sqlite)).await;
}

#[tokio::test]
async fn compat_endpoint_with_the_sample_on_postgres() {
    Box::pin(compat_endpoint(Backend::Postgres)).await;
}

async fn rejections_write_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let srv = TestServer::start(codex_config(&db)).await;
    let pbuf = "application/x-protobuf";
    let mut no_delivery = sample();
    no_delivery.delivery_id = String::new();
    let mut blank = sample();
    blank.delivery_id = "   ".into();
    let mut planning = sample();
    planning.stage = facteur_proto::froussard::CodexTaskStage::Planning as i32;
    // (case, token, content type, body, expected status, expected message fragment)
    type Case<'a> = (&'a str, String, &'a str, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("empty", CODEX_TOKEN.into(), pbuf, vec![], 400, "empty body"),
        (
            "garbage",
            CODEX_TOKEN.into(),
            pbuf,
            b"\xff\xff\xff\xff not protobuf".to_vec(),
            400,
            "not a binary protobuf CodexTask",
        ),
        (
            "bad json",
            CODEX_TOKEN.into(),
            "application/json",
            b"{\"stage\": 12.5}".to_vec(),
            400,
            "proto-JSON",
        ),
        (
            "no delivery id",
            CODEX_TOKEN.into(),
            pbuf,
            no_delivery.encode_to_vec(),
            400,
            "delivery_id is required",
        ),
        (
            "blank delivery id",
            CODEX_TOKEN.into(),
            pbuf,
            blank.encode_to_vec(),
            400,
            "delivery_id is required",
        ),
        (
            "planning stage",
            CODEX_TOKEN.into(),
            pbuf,
            planning.encode_to_vec(),
            400,
            "CODEX_TASK_STAGE_PLANNING",
        ),
        (
            "too large",
            CODEX_TOKEN.into(),
            pbuf,
            vec![b'x'; 4 * 1024 * 1024 + 1],
            413,
            "larger than",
        ),
        (
            "no token",
            String::new(),
            pbuf,
            sample().encode_to_vec(),
            401,
            "authorization",
        ),
        (
            "wrong role",
            ARGO_TOKEN.into(),
            pbuf,
            sample().encode_to_vec(),
            403,
            "argo-adapter",
        ),
    ];
    for (what, token, ct, body, want, says) in cases {
        let (code, resp) = post_task(&srv, &token, ct, &body).await;
        assert_eq!(code, want, "{what}: {resp}");
        assert!(
            resp["error"].as_str().unwrap_or("").contains(says),
            "{what}: {resp}"
        );
        if what.contains("delivery id") {
            // The field at fault comes from the error's type, as gRPC's BadRequest does.
            assert_eq!(
                (resp["reason"].as_str(), resp["field"].as_str()),
                (Some("INVALID_ARGUMENT"), Some("delivery_id")),
                "{what}: {resp}"
            );
        }
        assert_eq!(rows(&srv).await, [0, 0, 0, 0, 0], "{what} wrote something");
    }
    // A body cut short (the client stops 990 bytes before its content-length): counted as
    // unreadable, not as undecodable, and nothing written.
    {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(srv.server.http_addr)
            .await
            .expect("connect");
        let head = format!(
            "POST /codex/tasks HTTP/1.1\r\nhost: facteur\r\nauthorization: Bearer {CODEX_TOKEN}\r\n\
             content-type: {pbuf}\r\ncontent-length: 1000\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.expect("head");
        s.write_all(&[0u8; 10]).await.expect("part of the body");
        s.shutdown().await.expect("shutdown");
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer).await;
    }
    let counted = "facteur_codex_tasks_rejected_total{reason=\"unreadable\"} 1";
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, metrics) = http(srv.server.http_addr, "GET", "/metrics", &[], b"").await;
        if String::from_utf8_lossy(&metrics).contains(counted) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never counted: {counted}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        rows(&srv).await,
        [0, 0, 0, 0, 0],
        "a cut body wrote something"
    );
    let c = srv.client(CODEX_TOKEN).await;
    let err = c
        .codex()
        .submit_task(pb::SubmitTaskRequest {
            task: Some(no_delivery),
            delivery_id: String::new(),
        })
        .await;
    assert_eq!(err.expect_err("no delivery").code(), Code::InvalidArgument);
    let err = c
        .codex()
        .submit_task(pb::SubmitTaskRequest {
            task: None,
            delivery_id: "x".into(),
        })
        .await;
    assert_eq!(err.expect_err("no task").code(), Code::InvalidArgument);
    srv.stop().await;

    // Orchestration off: 503 over HTTP, FAILED_PRECONDITION over gRPC; nothing written.
    let mut cfg = codex_config(&db);
    cfg.codex_implementation_orchestrator.enabled = false;
    let srv = TestServer::start(cfg).await;
    let (code, resp) = post_task(&srv, CODEX_TOKEN, pbuf, &sample().encode_to_vec()).await;
    assert_eq!(code, 503, "{resp}");
    assert_eq!(resp["reason"], "FAILED_PRECONDITION", "{resp}");
    let err = srv
        .client(CODEX_TOKEN)
        .await
        .codex()
        .submit_task(pb::SubmitTaskRequest {
            task: Some(sample()),
            delivery_id: String::new(),
        })
        .await;
    let err = err.expect_err("disabled");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let d = facteur_client::StatusExt::get_error_details(&err);
    let info = d.error_info().expect("error info");
    assert_eq!(
        info.metadata.get("feature").map(String::as_str),
        Some("codex_orchestration"),
        "{info:?}"
    );
    assert_eq!(rows(&srv).await, [0, 0, 0, 0, 0]);
    let (_, metrics) = http(srv.server.http_addr, "GET", "/metrics", &[], b"").await;
    assert!(
        String::from_utf8_lossy(&metrics)
            .contains("facteur_codex_tasks_rejected_total{reason=\"disabled\"} 2")
    );
    srv.stop().await;
}

#[tokio::test]
async fn rejections_write_nothing_on_sqlite() {
    Box::pin(rejections_write_nothing(Backend::Sqlite)).await;
}

#[tokio::test]
async fn rejections_write_nothing_on_postgres() {
    Box::pin(rejections_write_nothing(Backend::Postgres)).await;
}

async fn replay_after_restart(backend: Backend) {
    let db = TestDb::new(backend).await;
    let srv = TestServer::start(codex_config(&db)).await;
    let c = srv.client(CODEX_TOKEN).await;
    let first = c
        .codex()
        .submit_task(pb::SubmitTaskRequest {
            task: Some(sample()),
            delivery_id: String::new(),
        })
        .await;
    let first = first.expect("submit").into_inner();
    assert!(!first.duplicate);
    // The task moves on; a replay must not touch it (nor its idea) again.
    let tasks = table(&srv, "codex_kb.tasks");
    let ideas = table(&srv, "codex_kb.ideas");
    let conn = srv.server.state.store.connection();
    for sql in [
        format!("UPDATE {tasks} SET state = 'completed'"),
        format!("UPDATE {ideas} SET payload = '{{\"marker\":1}}'"),
    ] {
        conn.execute_unprepared(&sql).await.expect(&sql);
    }
    srv.stop().await;

    let srv = TestServer::start(codex_config(&db)).await;
    let c = srv.client(CODEX_TOKEN).await;
    let again = c
        .codex()
        .submit_task(pb::SubmitTaskRequest {
            task: Some(sample()),
            delivery_id: String::new(),
        })
        .await;
    let again = again.expect("replay").into_inner();
    assert!(again.duplicate);
    assert_eq!(
        (
            &again.idea_id,
            &again.task_id,
            &again.task_run_id,
            &again.run_id,
            &again.workflow_name
        ),
        (
            &first.idea_id,
            &first.task_id,
            &first.task_run_id,
            &first.run_id,
            &first.workflow_name
        )
    );
    assert_eq!(again.submitted_at, first.submitted_at);
    let conn = srv.server.state.store.connection();
    let row = conn
        .query_one_raw(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            format!("SELECT t.state, CAST(i.payload AS TEXT) AS payload FROM {tasks} t JOIN {ideas} i ON i.id = t.idea_id"),
        ))
        .await
        .expect("read back")
        .expect("one task");
    let state: String = row.try_get("", "state").expect("state");
    let payload: String = row.try_get("", "payload").expect("payload");
    assert_eq!(state, "completed", "a replay re-queued the task");
    assert!(
        payload.contains("marker"),
        "a replay rewrote the idea: {payload}"
    );
    for t in ["codex_kb.task_runs", "runs", "dispatches"] {
        assert_eq!(count_rows(&srv.server.state.store, t).await, 1, "{t}");
    }
    srv.stop().await;
}

/// A table's name on the server's backend (`codex_kb.x` is `codex_kb_x` on SQLite).
fn table(srv: &TestServer, name: &str) -> String {
    match srv.server.state.store.connection().get_database_backend() {
        sea_orm::DatabaseBackend::Sqlite => name.replace("codex_kb.", "codex_kb_"),
        _ => name.to_string(),
    }
}

#[tokio::test]
async fn replay_after_restart_on_sqlite() {
    replay_after_restart(Backend::Sqlite).await;
}

#[tokio::test]
async fn replay_after_restart_on_postgres() {
    replay_after_restart(Backend::Postgres).await;
}

async fn concurrent_duplicates(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut cfg = codex_config(&db);
    cfg.database.max_connections = 16;
    let srv = TestServer::start(cfg).await;
    let kube = FakeKube::start().await;
    let adapter = Adapter::start(&srv.grpc_url(), &kube, "jangar");
    let c = srv.client(CODEX_TOKEN).await;
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.codex()
                .submit_task(pb::SubmitTaskRequest {
                    task: Some(sample()),
                    delivery_id: String::new(),
                })
                .await
        }));
    }
    let mut fresh = 0;
    let mut runs = std::collections::BTreeSet::new();
    for t in tasks {
        let r = t
            .await
            .expect("task")
            .expect("submit under contention")
            .into_inner();
        fresh += usize::from(!r.duplicate);
        runs.insert(r.run_id);
    }
    assert_eq!(fresh, 1, "exactly one submission created it");
    assert_eq!(runs.len(), 1, "every answer names the same run");
    assert_eq!(rows(&srv).await, [1, 1, 1, 1, 1]);
    let a = admin(&srv).await;
    let run_id = runs.into_iter().next().expect("run");
    wait_until("the workflow", WAIT, || async {
        a.status(&run_id).await == pb::RunStatus::Submitted
    })
    .await;
    assert_eq!(kube.workflows().len(), 1, "exactly one Workflow");
    adapter.stop().await;
    srv.stop().await;
}

#[tokio::test]
async fn sixty_four_concurrent_duplicates_on_sqlite() {
    concurrent_duplicates(Backend::Sqlite).await;
}

#[tokio::test]
async fn sixty_four_concurrent_duplicates_on_postgres() {
    concurrent_duplicates(Backend::Postgres).await;
}

/// 48 deliveries on 4 issues and 16 replays of them, all at once: on Postgres they share batch
/// statements (one slot, so whatever waits goes together), two deliveries of one issue never in
/// the same statement; every delivery is written once with its own run, every replay answers
/// with the original.
async fn concurrent_deliveries(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut cfg = codex_config(&db);
    cfg.database.max_connections = 8;
    cfg.database.codex_batch_slots = 1;
    let srv = TestServer::start(cfg).await;
    let c = srv.client(CODEX_TOKEN).await;
    let mut tasks = Vec::new();
    for i in (0..48).chain(0..16) {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut t = sample();
            t.delivery_id = format!("delivery-{i}");
            t.issue_number = 1 + i % 4;
            let r = c
                .codex()
                .submit_task(pb::SubmitTaskRequest {
                    task: Some(t),
                    delivery_id: String::new(),
                })
                .await
                .expect("submit")
                .into_inner();
            (i, r)
        }));
    }
    let mut answers: std::collections::BTreeMap<i64, Vec<pb::SubmitTaskResponse>> =
        Default::default();
    for t in tasks {
        let (i, r) = t.await.expect("task");
        answers.entry(i).or_default().push(r);
    }
    let store = &srv.server.state.store;
    for (i, rs) in &answers {
        assert_eq!(
            rs.iter().filter(|r| !r.duplicate).count(),
            1,
            "delivery-{i}: one answer created it"
        );
        assert!(
            rs.iter()
                .all(|r| r.run_id == rs[0].run_id && r.task_run_id == rs[0].task_run_id),
            "delivery-{i}: every answer names the same run and task run"
        );
        let run = store
            .run_by_key(&format!("codex:delivery-{i}"))
            .await
            .expect("read")
            .expect("the delivery's run");
        assert_eq!(run.id, rs[0].run_id, "delivery-{i}: the stored run");
        assert_eq!(store.run_events(&run.id).await.expect("events").len(), 1);
        // The task, bound once per delivery (alone or in a batch), is read back whole.
        let raw: Value = serde_json::from_slice(&base64_decode(&run.parameters["rawEvent"]))
            .expect("rawEvent is base64 proto-JSON");
        assert_eq!(raw["deliveryId"], format!("delivery-{i}"));
        assert_eq!(run.parameters["prompt"], sample().prompt);
    }
    let ids: std::collections::BTreeSet<_> = answers.values().map(|rs| &rs[0].run_id).collect();
    assert_eq!(ids.len(), 48, "one run per delivery");
    assert_eq!(rows(&srv).await, [4, 4, 48, 48, 48]);
    let stats = store.codex_batch_stats();
    if backend == Backend::Postgres {
        assert_eq!(
            stats.deliveries, 64,
            "every submission went through a batch"
        );
        assert!(
            stats.statements < 64,
            "waiting submissions shared statements: {stats:?}"
        );
    } else {
        assert_eq!(
            stats,
            Default::default(),
            "SQLite writes one delivery at a time"
        );
    }
    srv.stop().await;
}

#[tokio::test]
async fn concurrent_deliveries_on_sqlite() {
    concurrent_deliveries(Backend::Sqlite).await;
}

#[tokio::test]
async fn concurrent_deliveries_share_batches_on_postgres() {
    concurrent_deliveries(Backend::Postgres).await;
}

/// A delivery whose rows cannot be written (its run's idempotency key is taken by a run that has
/// no task run) fails its own submission only: the batch it was in is written again one
/// delivery at a time, and the others are accepted.
#[tokio::test]
async fn a_delivery_that_cannot_be_written_fails_alone() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut cfg = codex_config(&db);
    cfg.database.max_connections = 8;
    cfg.database.codex_batch_slots = 1;
    let srv = TestServer::start(cfg).await;
    let store = &srv.server.state.store;
    use facteur_server::domain::run::{NewRun, RunSource};
    let taken = NewRun {
        idempotency_key: "codex:delivery-bad".into(),
        command: "deploy".into(),
        source: RunSource::Admin,
        requester: Default::default(),
        cluster: "default".into(),
        namespace: "jangar".into(),
        workflow_template: "deploy".into(),
        service_account: String::new(),
        workflow_name_prefix: "deploy-".into(),
        parameters: Default::default(),
        parent_run_id: None,
        trace_parent: String::new(),
    };
    store
        .create_run(taken, "test")
        .await
        .expect("the squatting run");
    let c = srv.client(CODEX_TOKEN).await;
    let mut tasks = Vec::new();
    for i in 0..32 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut t = sample();
            t.delivery_id = if i == 7 {
                "delivery-bad".into()
            } else {
                format!("delivery-{i}")
            };
            t.issue_number = 1000 + i;
            c.codex()
                .submit_task(pb::SubmitTaskRequest {
                    task: Some(t),
                    delivery_id: String::new(),
                })
                .await
        }));
    }
    let mut ok = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.expect("task") {
            Ok(r) => {
                assert!(!r.into_inner().duplicate);
                ok += 1;
            }
            Err(status) => assert_eq!(i, 7, "only the bad delivery fails: {status:?}"),
        }
    }
    assert_eq!(ok, 31);
    // 31 ideas, tasks and task runs; 32 runs and dispatches counting the squatter's.
    assert_eq!(rows(&srv).await, [31, 31, 31, 32, 32]);
    srv.stop().await;
}

async fn followed_to_the_end(backend: Backend) {
    let db = TestDb::new(backend).await;
    let srv = TestServer::start(codex_config(&db)).await;
    let kube = FakeKube::start().await;
    let adapter = Adapter::start(&srv.grpc_url(), &kube, "jangar");
    let c = srv.client(CODEX_TOKEN).await;
    let r = c
        .codex()
        .submit_task(pb::SubmitTaskRequest {
            task: Some(sample()),
            delivery_id: String::new(),
        })
        .await;
    let r = r.expect("submit").into_inner();
    wait_until("the workflow", WAIT, || async {
        kube.workflow("jangar", &r.workflow_name).is_some()
    })
    .await;
    let wf = kube.workflow("jangar", &r.workflow_name).expect("workflow");
    assert_eq!(
        wf["spec"]["workflowTemplateRef"]["name"],
        "codex-autonomous"
    );
    assert_eq!(wf["spec"]["serviceAccountName"], "jangar-inspector");
    let names: Vec<&str> = wf["spec"]["arguments"]["parameters"]
        .as_array()
        .expect("params")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for p in [
        "base",
        "eventBody",
        "head",
        "implementation_iterations",
        "issue_number",
        "iteration_cycle",
        "judge_prompt",
        "prompt",
        "rawEvent",
        "repository",
    ] {
        assert!(names.contains(&p), "parameter {p} missing: {names:?}");
    }
    // The prompt and eventBody are not stored twice over (made again from rawEvent when the
    // run is read), and the Workflow gets them as planned.
    let value = |name: &str| {
        wf["spec"]["arguments"]["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .and_then(|p| p["value"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(value("prompt"), sample().prompt);
    assert!(!value("eventBody").is_empty() && value("eventBody") != value("rawEvent"));
    let stored = facteur_server::store::Store::connect(&db.url, 2, Duration::from_secs(5))
        .await
        .expect("store");
    let runs = facteur_tests::count_rows(&stored, "runs").await;
    assert_eq!(runs, 1);
    let raw: String = {
        use sea_orm::Statement;
        let c = stored.connection();
        let row = c
            .query_one_raw(Statement::from_string(
                c.get_database_backend(),
                "SELECT parameters FROM runs",
            ))
            .await
            .expect("select")
            .expect("row");
        row.try_get("", "parameters").expect("parameters")
    };
    // Stored: the task's proto-JSON once; rawEvent, eventBody and prompt are made from it.
    let kept: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&raw).expect("stored parameters are JSON");
    for made in ["eventBody", "prompt", "rawEvent"] {
        assert!(!kept.contains_key(made), "{made} stored: {raw}");
    }
    assert_eq!(kept["facteur:derived"], "eventBody,prompt,rawEvent");
    assert_eq!(
        base64_decode(&value("rawEvent")),
        kept["facteur:task"].as_bytes(),
        "rawEvent is the stored task"
    );
    let task = |c: facteur_client::Client, id: String| async move {
        c.codex()
            .get_task(pb::GetTaskRequest {
                key: Some(pb::get_task_request::Key::TaskRunId(id)),
            })
            .await
            .expect("get")
            .into_inner()
            .task
            .expect("task")
    };
    kube.set_phase("jangar", &r.workflow_name, "Running", json!({}));
    wait_until("task run running", WAIT, || async {
        task(c.clone(), r.task_run_id.clone()).await.status == "running"
    })
    .await;
    kube.set_phase("jangar", &r.workflow_name, "Succeeded", json!({}));
    wait_until("task run succeeded", WAIT, || async {
        task(c.clone(), r.task_run_id.clone()).await.status == "succeeded"
    })
    .await;

    // The codex_kb row itself, as other readers of the table see it.
    let db_conn = srv.server.state.store.connection();
    let b = db_conn.get_database_backend();
    let (table, id) = if b == sea_orm::DatabaseBackend::Postgres {
        ("codex_kb.task_runs", "id::text")
    } else {
        ("codex_kb_task_runs", "id")
    };
    use sea_orm::ConnectionTrait;
    let row = db_conn
        .query_one_raw(sea_orm::Statement::from_string(
            b,
            format!("SELECT status, external_run_id, started_at IS NOT NULL AS s, completed_at IS NOT NULL AS c FROM {table} WHERE {id} = '{}'", r.task_run_id),
        ))
        .await
        .expect("query")
        .expect("row");
    assert_eq!(
        row.try_get::<String>("", "status").expect("status"),
        "succeeded"
    );
    assert_eq!(
        row.try_get::<String>("", "external_run_id")
            .expect("external"),
        r.workflow_name
    );
    assert!(row.try_get::<bool>("", "s").expect("s") && row.try_get::<bool>("", "c").expect("c"));
    adapter.stop().await;
    srv.stop().await;
}

#[tokio::test]
async fn a_task_followed_to_succeeded_on_sqlite() {
    followed_to_the_end(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_task_followed_to_succeeded_on_postgres() {
    followed_to_the_end(Backend::Postgres).await;
}

#[tokio::test]
async fn an_old_service_database_is_adopted_without_loss() {
    let db = TestDb::new(Backend::Postgres).await;
    // The old service's schema and rows, created by hand (no facteur tables yet).
    let old = sea_orm::Database::connect(&db.url).await.expect("connect");
    use sea_orm::ConnectionTrait;
    for sql in [
        "CREATE SCHEMA codex_kb",
        "CREATE TABLE codex_kb.ideas (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), source_type text NOT NULL, source_ref text NOT NULL,
            priority smallint NOT NULL DEFAULT 0, status text NOT NULL, risk_flags jsonb NOT NULL DEFAULT '{}', payload jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT ideas_source_unique UNIQUE (source_type, source_ref))",
        "CREATE TABLE codex_kb.tasks (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), idea_id uuid NOT NULL REFERENCES codex_kb.ideas(id) ON DELETE CASCADE,
            stage text NOT NULL, state text NOT NULL, assignee text, sla_deadline timestamptz, metadata jsonb NOT NULL DEFAULT '{}',
            created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT tasks_idea_stage_unique UNIQUE (idea_id, stage))",
        "CREATE INDEX tasks_state_idx ON codex_kb.tasks (state, updated_at DESC)",
        "CREATE TABLE codex_kb.task_runs (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), task_id uuid NOT NULL REFERENCES codex_kb.tasks(id) ON DELETE CASCADE,
            external_run_id text, status text NOT NULL, queued_at timestamptz NOT NULL DEFAULT now(), started_at timestamptz, completed_at timestamptz,
            input_ref text, output_ref text, retry_count smallint NOT NULL DEFAULT 0, error_code text, metadata jsonb NOT NULL DEFAULT '{}',
            created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(), delivery_id text NOT NULL,
            CONSTRAINT task_runs_delivery_unique UNIQUE (delivery_id))",
        "CREATE TABLE codex_kb.run_events (id bigserial PRIMARY KEY, task_run_id uuid, event_type text, actor text, payload jsonb, emitted_at timestamptz)",
        "INSERT INTO codex_kb.ideas (id, source_type, source_ref, status, payload) VALUES ('11111111-1111-4111-8111-111111111111', 'github_issue', 'proompteng/lab#7', 'received', '{\"old\": true}')",
        "INSERT INTO codex_kb.tasks (id, idea_id, stage, state) VALUES ('22222222-2222-4222-8222-222222222222', '11111111-1111-4111-8111-111111111111', 'implementation', 'queued')",
        "INSERT INTO codex_kb.task_runs (id, task_id, status, delivery_id) VALUES ('33333333-3333-4333-8333-333333333333', '22222222-2222-4222-8222-222222222222', 'queued', 'old-delivery-7')",
        "INSERT INTO codex_kb.run_events (task_run_id, event_type, actor) VALUES ('33333333-3333-4333-8333-333333333333', 'created', 'go-facteur')",
    ] {
        old.execute_unprepared(sql).await.expect(sql);
    }
    let _ = old.close().await;

    // Our migrations run over it; the rows read back through the API.
    let srv = TestServer::start(codex_config(&db)).await;
    let c = srv.client(CODEX_TOKEN).await;
    let got = c
        .codex()
        .get_task(pb::GetTaskRequest {
            key: Some(pb::get_task_request::Key::DeliveryId(
                "old-delivery-7".into(),
            )),
        })
        .await
        .expect("old task run readable")
        .into_inner()
        .task
        .expect("task");
    assert_eq!(got.task_run_id, "33333333-3333-4333-8333-333333333333");
    assert_eq!(got.idea_id, "11111111-1111-4111-8111-111111111111");
    assert_eq!(
        (
            got.repository.as_str(),
            got.issue_number,
            got.status.as_str()
        ),
        ("proompteng/lab", 7, "queued")
    );
    assert!(
        got.run.is_none(),
        "the old service ran nothing we can follow"
    );

    // A replay of the old delivery is a duplicate; a new task for the same issue reuses its idea.
    let mut replay = sample();
    replay.delivery_id = "old-delivery-7".into();
    let r = c
        .codex()
        .submit_task(pb::SubmitTaskRequest {
            task: Some(replay),
            delivery_id: String::new(),
        })
        .await
        .expect("replay")
        .into_inner();
    assert!(r.duplicate);
    assert_eq!(r.task_run_id, "33333333-3333-4333-8333-333333333333");
    let mut fresh = sample();
    fresh.issue_number = 7;
    fresh.delivery_id = "new-delivery-7".into();
    let r = c
        .codex()
        .submit_task(pb::SubmitTaskRequest {
            task: Some(fresh),
            delivery_id: String::new(),
        })
        .await
        .expect("new")
        .into_inner();
    assert!(!r.duplicate);
    assert_eq!(r.idea_id, "11111111-1111-4111-8111-111111111111");
    assert_eq!(r.task_id, "22222222-2222-4222-8222-222222222222");
    assert_eq!(
        count_rows(&srv.server.state.store, "codex_kb.run_events").await,
        1,
        "the old tables are left alone"
    );
    srv.stop().await;
}

/// The Postgres batcher keeps its connections between statements. When the database drops them
/// (a restart, a failover, an administrator), a submission may fail with UNAVAILABLE while dead
/// connections are found and replaced, never hangs, and the producer's retry is accepted
/// exactly once.
#[tokio::test]
async fn dropped_database_connections_are_replaced() {
    let db = TestDb::new(Backend::Postgres).await;
    let srv = TestServer::start(codex_config(&db)).await;
    let c = srv.client(CODEX_TOKEN).await;
    let submit = |id: &'static str| {
        let c = c.clone();
        async move {
            let mut task = sample();
            task.delivery_id = id.to_string();
            tokio::time::timeout(
                Duration::from_secs(10),
                c.codex().submit_task(pb::SubmitTaskRequest {
                    task: Some(task),
                    delivery_id: String::new(),
                }),
            )
            .await
            .expect("a submission on dropped connections must not hang")
        }
    };
    assert!(
        !submit("before")
            .await
            .expect("first")
            .into_inner()
            .duplicate
    );

    let killer = sea_orm::Database::connect(db.url.as_str())
        .await
        .expect("connect");
    let killed = killer
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        ))
        .await
        .expect("terminate")
        .expect("one row");
    assert!(killed.try_get::<i64>("", "n").expect("n") >= 1);

    // The producer retries a refused delivery, as it does for any UNAVAILABLE.
    let mut refusals = 0;
    let accepted = loop {
        match submit("after").await {
            Ok(r) => break r.into_inner(),
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "{s}");
                refusals += 1;
                assert!(refusals < 20, "never recovered: {s}");
            }
        }
    };
    // The kept connection was among the dropped ones: the first statement after noticed.
    assert!(refusals >= 1);
    assert!(
        !accepted.duplicate,
        "nothing was written on a dropped connection"
    );
    let again = submit("after").await.expect("replay").into_inner();
    assert!(again.duplicate);
    assert_eq!(again.run_id, accepted.run_id);
    assert_eq!(
        count_rows(&srv.server.state.store, "codex_kb.task_runs").await,
        2
    );
    assert_eq!(count_rows(&srv.server.state.store, "runs").await, 2);
    killer.close().await.ok();
    srv.stop().await;
}

/// What a submission answers is what was stored, and the stored run gives every parameter as
/// planned (the task bound once, its derived parameters made again). On both backends the run
/// is created at the task run's instant.
async fn the_accepted_run_is_the_stored_run(backend: Backend) {
    let db = TestDb::new(backend).await;
    let srv = TestServer::start(codex_config(&db)).await;
    let state = &srv.server.state;
    let plan = facteur_server::domain::codex::plan(
        &sample(),
        "",
        &state.config,
        facteur_proto::codex_task_json,
    )
    .expect("plan");
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string();
    let accepted = state
        .store
        .submit_codex(plan.clone(), "froussard", traceparent.clone())
        .await
        .expect("submit");
    assert!(!accepted.duplicate);
    let stored = state
        .store
        .get_run(accepted.run_id.as_deref().expect("a run"))
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(accepted.namespace, stored.namespace);
    assert_eq!(accepted.workflow_name, stored.workflow_name);
    assert_eq!(stored.trace_parent, traceparent);
    assert_eq!(
        stored.parameters,
        plan.workflow_parameters().expect("parameters"),
        "read back as planned"
    );
    // The task run (whose created_at is the submission time) and its run share one instant.
    assert_eq!(accepted.submitted_at, stored.created_at);
    let task_run = state
        .store
        .codex_by_task_run(&accepted.task_run_id)
        .await
        .expect("read")
        .expect("task run");
    assert_eq!(task_run.created_at, stored.created_at);
    srv.stop().await;
}

#[tokio::test]
async fn the_accepted_run_is_the_stored_run_on_postgres() {
    Box::pin(the_accepted_run_is_the_stored_run(Backend::Postgres)).await;
}

#[tokio::test]
async fn the_accepted_run_is_the_stored_run_on_sqlite() {
    Box::pin(the_accepted_run_is_the_stored_run(Backend::Sqlite)).await;
}
