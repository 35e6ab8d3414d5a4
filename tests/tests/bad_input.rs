//! Input the database cannot hold is bad input, not an outage: a NUL character in each string
//! field of a CodexTask, each limited field at and over its limit, invalid UTF-8, and Discord
//! interaction fields too long for their columns — through gRPC, binary HTTP and JSON HTTP.
//! Each is answered INVALID_ARGUMENT / 400 naming the field, nothing is written, and the valid
//! deliveries sent at the same time are all accepted. (Before, each was UNAVAILABLE / 503, and
//! producers retry those forever.)

use facteur_client::pb;
use facteur_proto::froussard::{
    CodexFailingCheck, CodexIterationsPolicy, CodexReviewContext, CodexReviewThread, CodexTask,
};
use facteur_tests::*;
use prost::Message;
use serde_json::Value;
use tonic::Code;

const SAMPLE: &str = include_str!("../fixtures/codex-task.json");
const NUL: &str = "a\u{0}b";

fn sample(delivery: &str) -> CodexTask {
    let mut t = facteur_proto::codex_task_from_json(SAMPLE.as_bytes()).expect("sample");
    t.delivery_id = delivery.into();
    t
}

fn codex_config(db: &TestDb) -> facteur_config::Config {
    let mut c = with_tokens(config(db));
    c.codex_implementation_orchestrator.enabled = true;
    c.database.max_connections = 10;
    c
}

type Setter = fn(&mut CodexTask, String);

/// Every string field of a CodexTask (nested ones included), by the name an error gives it.
fn string_fields() -> Vec<(&'static str, Setter)> {
    fn review(t: &mut CodexTask) -> &mut CodexReviewContext {
        t.review_context.get_or_insert_with(Default::default)
    }
    fn thread(t: &mut CodexTask) -> &mut CodexReviewThread {
        let r = review(t);
        if r.review_threads.is_empty() {
            r.review_threads.push(Default::default());
        }
        &mut r.review_threads[0]
    }
    fn check(t: &mut CodexTask) -> &mut CodexFailingCheck {
        let r = review(t);
        if r.failing_checks.is_empty() {
            r.failing_checks.push(Default::default());
        }
        &mut r.failing_checks[0]
    }
    fn first(list: &mut Vec<String>, v: String) {
        match list.first_mut() {
            Some(x) => *x = v,
            None => list.push(v),
        }
    }
    fn iterations(t: &mut CodexTask) -> &mut CodexIterationsPolicy {
        t.iterations.get_or_insert_with(Default::default)
    }
    vec![
        ("prompt", |t, v| t.prompt = v),
        ("repository", |t, v| t.repository = v),
        ("base", |t, v| t.base = v),
        ("head", |t, v| t.head = v),
        ("issue_url", |t, v| t.issue_url = v),
        ("issue_title", |t, v| t.issue_title = v),
        ("issue_body", |t, v| t.issue_body = v),
        ("sender", |t, v| t.sender = v),
        ("plan_comment_url", |t, v| t.plan_comment_url = Some(v)),
        ("plan_comment_body", |t, v| t.plan_comment_body = Some(v)),
        ("review_context.summary", |t, v| review(t).summary = Some(v)),
        ("review_context.review_threads[0].summary", |t, v| {
            thread(t).summary = v
        }),
        ("review_context.review_threads[0].url", |t, v| {
            thread(t).url = Some(v)
        }),
        ("review_context.review_threads[0].author", |t, v| {
            thread(t).author = Some(v)
        }),
        ("review_context.failing_checks[0].name", |t, v| {
            check(t).name = v
        }),
        ("review_context.failing_checks[0].conclusion", |t, v| {
            check(t).conclusion = Some(v)
        }),
        ("review_context.failing_checks[0].url", |t, v| {
            check(t).url = Some(v)
        }),
        ("review_context.failing_checks[0].details", |t, v| {
            check(t).details = Some(v)
        }),
        ("review_context.additional_notes[0]", |t, v| {
            first(&mut review(t).additional_notes, v)
        }),
        ("iterations.mode", |t, v| iterations(t).mode = v),
        ("iterations.reason", |t, v| iterations(t).reason = Some(v)),
        ("iterations.stop_on[0]", |t, v| {
            first(&mut iterations(t).stop_on, v)
        }),
    ]
}

async fn rows(srv: &TestServer) -> [i64; 4] {
    let s = &srv.server.state.store;
    [
        count_rows(s, "codex_kb.ideas").await,
        count_rows(s, "codex_kb.task_runs").await,
        count_rows(s, "runs").await,
        count_rows(s, "dispatches").await,
    ]
}

async fn post(srv: &TestServer, content_type: &str, body: &[u8]) -> (u16, Value) {
    let auth = format!("Bearer {CODEX_TOKEN}");
    let headers = [
        ("Content-Type", content_type),
        ("Authorization", auth.as_str()),
    ];
    let (code, body) = http(srv.server.http_addr, "POST", "/codex/tasks", &headers, body).await;
    (code, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// The task is refused on all three paths, naming `field`.
async fn refused_everywhere(srv: &TestServer, task: &CodexTask, field: &str) {
    let c = srv.client(CODEX_TOKEN).await;
    let err = c
        .codex()
        .submit_task(pb::SubmitTaskRequest {
            task: Some(task.clone()),
            delivery_id: String::new(),
        })
        .await
        .expect_err("refused");
    assert_eq!(
        err.code(),
        Code::InvalidArgument,
        "{field}: {}",
        err.message()
    );
    assert!(
        err.message().contains(field),
        "gRPC error names `{field}`: {}",
        err.message()
    );
    let (code, body) = post(srv, "application/x-protobuf", &task.encode_to_vec()).await;
    assert_eq!(code, 400, "{field} (binary): {body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains(field),
        "{body}"
    );
    let json = facteur_proto::codex_task_json(task);
    let (code, body) = post(srv, "application/json", json.as_bytes()).await;
    assert_eq!(code, 400, "{field} (JSON): {body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains(field),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_codex_tasks_are_invalid_argument_naming_the_field_and_write_nothing() {
    let db = TestDb::new(Backend::Postgres).await;
    let srv = TestServer::start(codex_config(&db)).await;

    // Valid deliveries go on while the bad ones are refused: none of them is failed by a bad
    // neighbour in its group-commit batch.
    let good = {
        let url = srv.grpc_url();
        tokio::spawn(async move {
            let c = facteur_client::Client::lazy(
                facteur_client::ClientConfig::new(url).with_token(CODEX_TOKEN),
            )
            .expect("client");
            let calls = (0..60).map(|i| {
                let c = c.clone();
                async move {
                    c.codex()
                        .submit_task(pb::SubmitTaskRequest {
                            task: Some(sample(&format!("good-{i}"))),
                            delivery_id: String::new(),
                        })
                        .await
                        .map(|_| ())
                        .map_err(|s| format!("{:?} {}", s.code(), s.message()))
                }
            });
            futures::future::join_all(calls).await
        })
    };

    for (i, (field, set)) in string_fields().into_iter().enumerate() {
        let mut task = sample(&format!("nul-{i}"));
        set(&mut task, NUL.to_string());
        refused_everywhere(&srv, &task, field).await;
    }
    // The delivery id itself, given in the task and in the request.
    refused_everywhere(&srv, &sample(NUL), "delivery_id").await;

    // Limits: at the limit accepted, one over refused.
    let at = |n: usize| format!("{}/{}", "o".repeat(39), "r".repeat(n - 40));
    let mut task = sample("repo-over");
    task.repository = at(141);
    refused_everywhere(&srv, &task, "repository").await;
    let mut task = sample(&"d".repeat(201));
    task.repository = "proompteng/lab".into();
    refused_everywhere(&srv, &task, "delivery_id").await;

    // A timestamp protojson cannot render (rawEvent would be lost): gRPC and binary HTTP.
    let mut task = sample("ts-out-of-range");
    task.issued_at = Some(facteur_proto::Timestamp {
        seconds: 253_402_300_800,
        nanos: 0,
    });
    let err = srv
        .client(CODEX_TOKEN)
        .await
        .codex()
        .submit_task(pb::SubmitTaskRequest {
            task: Some(task.clone()),
            delivery_id: String::new(),
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("issued_at"), "{}", err.message());
    let (code, body) = post(&srv, "application/x-protobuf", &task.encode_to_vec()).await;
    assert_eq!(code, 400, "{body}");

    // Invalid UTF-8: in proto-JSON, and in a binary string field.
    let (code, body) = post(&srv, "application/json", b"{\"prompt\": \"\xff\xfe\"}").await;
    assert_eq!(code, 400, "{body}");
    let mut bytes = sample("bad-utf8").encode_to_vec();
    // Field 2 (prompt), length-delimited, two bytes that are not UTF-8.
    bytes.extend_from_slice(&[0x12, 0x02, 0xff, 0xfe]);
    let (code, body) = post(&srv, "application/x-protobuf", &bytes).await;
    assert_eq!(code, 400, "{body}");

    let results = good.await.expect("good deliveries");
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "valid deliveries refused: {failed:?}");
    // One idea (the same issue), one task run, run and dispatch per delivery.
    assert_eq!(
        rows(&srv).await,
        [1, 60, 60, 60],
        "only the valid ones are stored"
    );

    // At the limits: accepted.
    let mut task = sample(&"d".repeat(200));
    task.repository = at(140);
    let c = srv.client(CODEX_TOKEN).await;
    let ok = c
        .codex()
        .submit_task(pb::SubmitTaskRequest {
            task: Some(task),
            delivery_id: String::new(),
        })
        .await;
    assert!(ok.is_ok(), "at the limits: {ok:?}");
    assert_eq!(rows(&srv).await, [2, 61, 61, 61]);
    srv.stop().await;
}

const GUILD: &str = "100000000000000001";
const DEPLOYER: &str = "200000000000000001";

fn ctx(id: &str) -> pb::InteractionContext {
    interaction(id, GUILD, &[DEPLOYER])
}

#[tokio::test]
async fn bad_interactions_and_parameters_are_invalid_argument_and_write_nothing() {
    let db = TestDb::new(Backend::Postgres).await;
    let srv = TestServer::start(with_deploy_command(with_tokens(config(&db)), DEPLOYER)).await;
    let c = srv.client(DISCORD_TOKEN).await;
    type Edit = fn(&mut pb::InteractionContext);
    let cases: Vec<(&str, Edit)> = vec![
        ("context.channel_id", |c| c.channel_id = "5".repeat(40)),
        ("context.channel_id", |c| c.channel_id = "general".into()),
        ("context.user_name", |c| c.user_name = "n".repeat(101)),
        ("context.user_name", |c| c.user_name = NUL.into()),
        ("context.interaction_id", |c| {
            c.interaction_id = "i".repeat(101)
        }),
        ("context.interaction_id", |c| c.interaction_id = NUL.into()),
        ("context.token", |c| c.token = NUL.into()),
        ("context.locale", |c| c.locale = "l".repeat(17)),
        ("context.application_id", |c| c.application_id = "x".into()),
        ("context.role_ids[1]", |c| c.role_ids.push("admin".into())),
    ];
    for (i, (field, edit)) in cases.into_iter().enumerate() {
        let mut context = ctx(&format!("9000000000000000{i:02}"));
        edit(&mut context);
        let err = c
            .command()
            .invoke(deploy_invoke(context))
            .await
            .expect_err("refused");
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{field}: {}",
            err.message()
        );
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    // At the limits: accepted.
    let mut context = ctx(&"7".repeat(100));
    context.user_name = "n".repeat(100);
    context.locale = "en-US".into();
    let ok = c.command().invoke(deploy_invoke(context)).await;
    assert!(ok.is_ok(), "{ok:?}");
    assert_eq!(count_rows(&srv.server.state.store, "runs").await, 1);

    // An admin run's parameter and idempotency key.
    let a = srv.client(ADMIN_TOKEN).await;
    for (field, params, key) in [
        (
            "`service` must not contain control characters",
            vec![("service", NUL)],
            "",
        ),
        ("idempotency_key", vec![("service", "api")], NUL),
    ] {
        let err = a
            .admin()
            .start_run(pb::StartRunRequest {
                cluster: String::new(),
                command: "deploy".into(),
                parameters: params
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                idempotency_key: key.into(),
            })
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    assert_eq!(count_rows(&srv.server.state.store, "runs").await, 1);
    srv.stop().await;
}
