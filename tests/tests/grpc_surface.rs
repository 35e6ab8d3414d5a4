//! The gRPC surface as common clients' defaults meet it: compressed requests (gzip, zstd)
//! accepted and `grpc-accept-encoding` advertised, compressed answers when asked, a caller's
//! deadline answered DEADLINE_EXCEEDED, and every error carrying `google.rpc.Status` details
//! (`ErrorInfo` with a stable reason, `BadRequest` naming the field) that the Rust client reads.

use facteur_client::pb;
use facteur_client::pb::codex_service_client::CodexServiceClient;
use facteur_tests::*;
use tonic::codec::CompressionEncoding;
use tonic::metadata::MetadataValue;

const SAMPLE: &str = include_str!("../fixtures/codex-task.json");

fn task(delivery: &str) -> facteur_proto::froussard::CodexTask {
    let mut t = facteur_proto::codex_task_from_json(SAMPLE.as_bytes()).expect("sample");
    t.delivery_id = delivery.into();
    t
}

fn submit(
    t: facteur_proto::froussard::CodexTask,
    token: &str,
) -> tonic::Request<pb::SubmitTaskRequest> {
    let mut r = tonic::Request::new(pb::SubmitTaskRequest {
        task: Some(t),
        delivery_id: String::new(),
    });
    let bearer: MetadataValue<_> = format!("Bearer {token}").parse().expect("metadata");
    r.metadata_mut().insert("authorization", bearer);
    r
}

/// One unary call of `msg` over a fresh HTTP/2 connection; the answer's headers.
async fn raw_call(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    msg: &impl prost::Message,
) -> http::HeaderMap {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = h2::client::handshake(tcp).await.expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut send = send.ready().await.expect("ready");
    let (response, mut stream) = send
        .send_request(req.body(()).expect("request"), false)
        .expect("send");
    // Not compressed, its length, the message.
    let mut body = vec![0u8];
    body.extend_from_slice(&(msg.encoded_len() as u32).to_be_bytes());
    body.extend_from_slice(&msg.encode_to_vec());
    stream
        .send_data(axum::body::Bytes::from(body), true)
        .expect("data");
    response.await.expect("response").into_parts().0.headers
}

#[tokio::test]
async fn compressed_calls_deadlines_and_error_details() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut cfg = with_tokens(config(&db));
    cfg.codex_implementation_orchestrator.enabled = true;
    let srv = TestServer::start(cfg).await;
    let channel = tonic::transport::Endpoint::from_shared(srv.grpc_url())
        .expect("url")
        .connect()
        .await
        .expect("connect");

    // gzip and zstd requests, as grpcio (compression=Gzip) and connect-node send them.
    for (i, encoding) in [CompressionEncoding::Gzip, CompressionEncoding::Zstd]
        .into_iter()
        .enumerate()
    {
        let mut c = CodexServiceClient::new(channel.clone())
            .send_compressed(encoding)
            .accept_compressed(encoding);
        let answer = c
            .submit_task(submit(task(&format!("compressed-{i}")), CODEX_TOKEN))
            .await
            .unwrap_or_else(|e| panic!("{encoding:?}: {e}"));
        let accepts = answer
            .metadata()
            .get("grpc-accept-encoding")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(
            accepts.contains("gzip") && accepts.contains("zstd"),
            "advertised: {accepts:?}"
        );
        let sent = answer
            .metadata()
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert_eq!(sent, format!("{encoding}"), "answered compressed as asked");
        assert!(!answer.into_inner().duplicate);
    }

    // Bad input: a stable reason and the field, in details the Rust client reads.
    let mut bad = task("bad-repository");
    bad.repository = "r".repeat(141);
    let mut c = CodexServiceClient::new(channel.clone());
    let err = c
        .submit_task(submit(bad, CODEX_TOKEN))
        .await
        .expect_err("too long");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        facteur_client::error_reason(&err).as_deref(),
        Some("INVALID_ARGUMENT")
    );
    let field = facteur_client::bad_field(&err).expect("a field violation");
    assert!(field.ends_with("repository"), "{field}");
    use facteur_client::StatusExt;
    let info = err.get_error_details();
    assert_eq!(
        info.error_info().map(|i| i.domain.as_str()),
        Some("facteur.proompteng.ai")
    );
    // Errors the interceptor raises carry them too.
    let err = c
        .submit_task(submit(task("no-auth"), "not-a-token-at-all-0000"))
        .await
        .expect_err("unknown token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        facteur_client::error_reason(&err).as_deref(),
        Some("UNAUTHENTICATED")
    );
    srv.stop().await;
}

#[tokio::test]
async fn a_deadline_that_passes_on_the_server_is_deadline_exceeded() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let db = TestDb::new(Backend::Postgres).await;
    let srv = TestServer::start(with_tokens(config(&db))).await;
    // Another session holds the runs table: a StartRun waits on it past its caller's deadline.
    let other = sea_orm::Database::connect(db.url.as_str())
        .await
        .expect("connect");
    let lock = other.begin().await.expect("begin");
    lock.execute_unprepared("LOCK TABLE runs IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    // Sent raw over HTTP/2, as grpcio and connect send it: tonic's own client would time the
    // call out itself (CANCELLED, on the client) before the server's answer arrived.
    let started = std::time::Instant::now();
    let head = raw_call(
        &srv.server.grpc_addr.to_string(),
        "/facteur.v1.AdminService/StartRun",
        &[
            ("grpc-timeout", "300m"),
            ("authorization", &format!("Bearer {ADMIN_TOKEN}")),
        ],
        &pb::StartRunRequest {
            command: "dispatch".into(),
            ..Default::default()
        },
    )
    .await;
    let err = tonic::Status::from_header_map(&head).expect("a status in the headers");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    assert_eq!(
        facteur_client::error_reason(&err).as_deref(),
        Some("DEADLINE_EXCEEDED")
    );
    lock.rollback().await.expect("release");
    srv.stop().await;
}
