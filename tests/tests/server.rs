//! The control plane as a client sees it: health, reflection, auth, readiness, shutdown,
//! on SQLite and on Postgres.

use facteur_client::pb;
use facteur_tests::*;
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_reflection::pb::v1 as refl;
use tonic_reflection::pb::v1alpha as refl_alpha;

async fn http_get(url: &str) -> (u16, String) {
    // A minimal HTTP/1.1 GET over a TcpStream keeps this suite free of an HTTP client crate.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = tokio::net::TcpStream::connect(host)
        .await
        .expect("connect http");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

async fn health_status(client: &facteur_client::Client, service: &str) -> ServingStatus {
    let r = client
        .health()
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check");
    ServingStatus::try_from(r.into_inner().status).expect("known status")
}

async fn list_services_v1(client: &facteur_client::Client) -> Vec<String> {
    let mut rc = refl::server_reflection_client::ServerReflectionClient::new(client.channel());
    let req = refl::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            refl::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut stream = rc
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection v1")
        .into_inner();
    let resp = stream.next().await.expect("one answer").expect("ok");
    match resp.message_response {
        Some(refl::server_reflection_response::MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

async fn serving_and_reflection(backend: Backend) {
    let db = TestDb::new(backend).await;
    let srv = TestServer::start(config(&db)).await;
    let client = srv.client("").await;
    assert_eq!(health_status(&client, "").await, ServingStatus::Serving);
    for name in facteur_proto::SERVICE_NAMES {
        assert_eq!(
            health_status(&client, name).await,
            ServingStatus::Serving,
            "{name}"
        );
    }
    let services = list_services_v1(&client).await;
    for name in facteur_proto::SERVICE_NAMES
        .iter()
        .chain(&["grpc.health.v1.Health"])
    {
        assert!(
            services.iter().any(|s| s == name),
            "reflection lacks {name}: {services:?}"
        );
    }

    // v1alpha too (grpcio clients), and a file lookup resolves an imported well-known type.
    let mut rc =
        refl_alpha::server_reflection_client::ServerReflectionClient::new(client.channel());
    let req = refl_alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            refl_alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "facteur.v1.AdminService".into(),
            ),
        ),
    };
    let mut stream = rc
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("v1alpha")
        .into_inner();
    match stream
        .next()
        .await
        .expect("answer")
        .expect("ok")
        .message_response
    {
        Some(refl_alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(
            f,
        )) => {
            assert!(!f.file_descriptor_proto.is_empty());
        }
        other => panic!("unexpected v1alpha answer {other:?}"),
    }

    let status = client
        .admin()
        .get_status(pb::GetStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert!(status.ready);
    let backends: Vec<_> = status
        .dependencies
        .iter()
        .map(|d| d.backend.as_str())
        .collect();
    let expected_db = if backend == Backend::Sqlite {
        "sqlite"
    } else {
        "postgres"
    };
    assert_eq!(backends, vec![expected_db, "memory", "supervisor"]);

    let (code, body) = http_get(&srv.http_url("/readyz")).await;
    assert_eq!(code, 200, "{body}");
    for path in ["/healthz", "/health", "/ready"] {
        assert_eq!(http_get(&srv.http_url(path)).await.0, 200, "{path}");
    }
    let (code, metrics) = http_get(&srv.http_url("/metrics")).await;
    assert_eq!(code, 200);
    assert!(metrics.contains("facteur_grpc_requests_total{method=\"/facteur.v1.AdminService/GetStatus\",code=\"0\"} 1"), "{metrics}");
    assert_eq!(http_get(&srv.http_url("/nope")).await.0, 404);
    srv.stop().await;
}

#[tokio::test]
async fn serving_and_reflection_on_sqlite() {
    serving_and_reflection(Backend::Sqlite).await;
}

#[tokio::test]
async fn serving_and_reflection_on_postgres() {
    serving_and_reflection(Backend::Postgres).await;
}

#[tokio::test]
async fn auth_rejections_carry_the_right_codes() {
    let db = TestDb::new(Backend::Sqlite).await;
    let srv = TestServer::start(with_tokens(config(&db))).await;

    let anonymous = srv.client("").await;
    let err = anonymous
        .admin()
        .get_status(pb::GetStatusRequest {})
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("authorization"), "{}", err.message());

    let unknown = srv.client("not-a-configured-token-000").await;
    let err = unknown
        .admin()
        .get_status(pb::GetStatusRequest {})
        .await
        .expect_err("unknown token");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        !err.message().contains("not-a-configured"),
        "token echoed: {}",
        err.message()
    );

    let argo = srv.client(ARGO_TOKEN).await;
    let err = argo
        .admin()
        .get_status(pb::GetStatusRequest {})
        .await
        .expect_err("wrong role");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("argo-adapter"), "{}", err.message());
    let err = srv
        .client(DISCORD_TOKEN)
        .await
        .dispatch()
        .complete(pb::CompleteRequest::default())
        .await
        .expect_err("role");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = srv
        .client(CODEX_TOKEN)
        .await
        .command()
        .list_commands(pb::ListCommandsRequest::default())
        .await
        .expect_err("role");
    assert_eq!(err.code(), Code::PermissionDenied);

    let admin = srv.client(ADMIN_TOKEN).await;
    admin
        .admin()
        .get_status(pb::GetStatusRequest {})
        .await
        .expect("admin may call AdminService");

    // Health and reflection stay open.
    assert_eq!(health_status(&anonymous, "").await, ServingStatus::Serving);
    assert!(!list_services_v1(&anonymous).await.is_empty());

    // Refusals are counted by code.
    let (_, metrics) = http_get(&srv.http_url("/metrics")).await;
    assert!(
        metrics.contains("method=\"/facteur.v1.AdminService/GetStatus\",code=\"16\"} 2"),
        "{metrics}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn malformed_requests_name_what_is_wrong() {
    let db = TestDb::new(Backend::Sqlite).await;
    let srv = TestServer::start(config(&db)).await;
    let c = srv.client("").await;
    let check = |r: Result<(), tonic::Status>, field: &str| {
        let err = r.expect_err("malformed");
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    };
    check(
        c.command()
            .invoke(pb::InvokeRequest::default())
            .await
            .map(|_| ()),
        "context",
    );
    check(
        c.command()
            .autocomplete(pb::AutocompleteRequest::default())
            .await
            .map(|_| ()),
        "context",
    );
    check(
        c.command()
            .interact(pb::InteractRequest::default())
            .await
            .map(|_| ()),
        "context",
    );
    check(
        c.command()
            .record_run_message(pb::RecordRunMessageRequest::default())
            .await
            .map(|_| ()),
        "run_id",
    );
    check(
        c.command()
            .watch_runs(pb::WatchRunsRequest { cursor: "x".into() })
            .await
            .map(|_| ()),
        "cursor",
    );
    check(
        c.dispatch()
            .lease(pb::LeaseRequest::default())
            .await
            .map(|_| ()),
        "adapter_id",
    );
    check(
        c.dispatch()
            .complete(pb::CompleteRequest::default())
            .await
            .map(|_| ()),
        "dispatch_id",
    );
    check(
        c.dispatch()
            .report_workflow_status(pb::ReportWorkflowStatusRequest::default())
            .await
            .map(|_| ()),
        "run_id",
    );
    check(
        c.admin()
            .get_run(pb::GetRunRequest::default())
            .await
            .map(|_| ()),
        "run_id",
    );
    check(
        c.admin()
            .cancel_run(pb::CancelRunRequest::default())
            .await
            .map(|_| ()),
        "run_id",
    );
    check(
        c.admin()
            .set_policy(pb::SetPolicyRequest::default())
            .await
            .map(|_| ()),
        "policy",
    );
    check(
        c.admin()
            .requeue_dead_letter(pb::RequeueDeadLetterRequest::default())
            .await
            .map(|_| ()),
        "dispatch_id",
    );
    check(
        c.codex()
            .get_task(pb::GetTaskRequest::default())
            .await
            .map(|_| ()),
        "delivery_id",
    );
    srv.stop().await;
}

#[tokio::test]
async fn readiness_follows_redis_and_recovers_without_restart() {
    let db = TestDb::new(Backend::Postgres).await;
    let prefix = RedisPrefix::new();
    let upstream = redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_string();
    let proxy = CuttableProxy::start(&upstream).await;
    let mut cfg = config(&db);
    cfg.redis.url = facteur_config::Secret(format!("redis://{}", proxy.addr));
    cfg.redis.key_prefix = prefix.0.clone();
    cfg.redis.timeout_ms = 300;
    let srv = TestServer::start(cfg).await;
    let client = srv.client("").await;
    assert_eq!(http_get(&srv.http_url("/readyz")).await.0, 200);
    assert_eq!(health_status(&client, "").await, ServingStatus::Serving);

    proxy.cut();
    let (code, body) = http_get(&srv.http_url("/readyz")).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("redis"), "readiness must name redis: {body}");
    assert!(
        !body.contains("\"backend\":\"postgres\",\"healthy\":false"),
        "{body}"
    );
    // gRPC health follows what /readyz found within 0.5 s (the probe's check moves it).
    wait_until(
        "gRPC health NOT_SERVING",
        Duration::from_millis(500),
        || {
            let c = client.clone();
            async move { health_status(&c, "").await == ServingStatus::NotServing }
        },
    )
    .await;
    let status = client
        .admin()
        .get_status(pb::GetStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert!(!status.ready);

    proxy.restore();
    wait_until("/readyz 200 again", Duration::from_secs(10), || async {
        http_get(&srv.http_url("/readyz")).await.0 == 200
    })
    .await;
    wait_until(
        "gRPC health SERVING again",
        Duration::from_millis(500),
        || {
            let c = client.clone();
            async move { health_status(&c, "").await == ServingStatus::Serving }
        },
    )
    .await;
    srv.stop().await;
}

#[tokio::test]
async fn refuses_a_public_bind_without_tokens() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut cfg = config(&db);
    cfg.server.grpc_listen_address = "0.0.0.0:0".into();
    let err = match facteur_server::start(cfg, Default::default()).await {
        Ok(_) => panic!("must refuse to start"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("0.0.0.0") && err.contains("auth.tokens"),
        "{err}"
    );
}

#[tokio::test]
async fn shutdown_closes_the_listeners_and_a_restart_keeps_the_data() {
    let db = TestDb::new(Backend::Sqlite).await;
    let srv = TestServer::start(config(&db)).await;
    let store = srv.server.state.store.clone();
    let (run, _) = store
        .create_run(sample_run("restart-key"), "test")
        .await
        .expect("run");
    let grpc = srv.server.grpc_addr;
    srv.stop().await;
    assert!(
        tokio::net::TcpStream::connect(grpc).await.is_err(),
        "listener still open after shutdown"
    );

    let srv = TestServer::start(config(&db)).await;
    let c = srv.client("").await;
    let got = c
        .admin()
        .get_run(pb::GetRunRequest {
            run_id: run.id.clone(),
        })
        .await
        .expect("run survives")
        .into_inner();
    assert_eq!(
        got.run.map(|r| r.idempotency_key),
        Some("restart-key".to_string())
    );
    assert_eq!(got.events.len(), 1);
    srv.stop().await;
}
