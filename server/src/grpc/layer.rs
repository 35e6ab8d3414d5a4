//! A tower layer around every gRPC call: one server span per RPC (OpenTelemetry's RPC
//! conventions, a child of the caller's `traceparent`), and the request counter and latency
//! histogram by method and status code.

use crate::metrics::Metrics;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tracing::Instrument;

/// gRPC codes that OpenTelemetry counts as a server error (UNKNOWN, DEADLINE_EXCEEDED,
/// UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS); the others are the caller's.
const SERVER_ERRORS: [i64; 6] = [2, 4, 12, 13, 14, 15];

/// The server span of one RPC, as OpenTelemetry's RPC conventions name it: span name
/// `facteur.v1.AdminService/StartRun`, kind server, `rpc.system`, `rpc.service`, `rpc.method`,
/// and `rpc.grpc.status_code` once answered.
pub fn rpc_span(path: &str) -> tracing::Span {
    let full = path.trim_start_matches('/');
    let (service, method) = full.split_once('/').unwrap_or((full, ""));
    tracing::info_span!(
        "grpc",
        otel.name = %full,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
    )
}

/// Wraps a service with [`RpcObserver`].
#[derive(Clone)]
pub struct RpcObserverLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for RpcObserverLayer {
    type Service = RpcObserver<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcObserver {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// See [`RpcObserverLayer`].
#[derive(Clone)]
pub struct RpcObserver<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcObserver<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_string();
        let span = rpc_span(&method);
        // A caller's trace context (W3C `traceparent` metadata) makes this span its child.
        facteur_config::telemetry::adopt_parent(&span, |k| {
            req.headers()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        });
        let start = Instant::now();
        let fut = {
            let _enter = span.enter();
            self.inner.call(req)
        };
        let metrics = self.metrics.clone();
        Box::pin(
            async move {
                let res = fut.await;
                // An error status travels in the headers of a trailers-only response; a success
                // (or a stream's final status) travels in trailers, which we count as OK here.
                let code = match &res {
                    Ok(r) => r
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("0")
                        .to_string(),
                    Err(_) => "transport".to_string(),
                };
                let span = tracing::Span::current();
                if let Ok(n) = code.parse::<i64>() {
                    span.record("rpc.grpc.status_code", n);
                    if SERVER_ERRORS.contains(&n) {
                        span.record("otel.status_code", "error");
                    }
                } else {
                    span.record("otel.status_code", "error");
                }
                metrics.add(
                    crate::metrics::Metric::GrpcRequests,
                    vec![("method", method.clone()), ("code", code)],
                    1,
                );
                metrics.observe(
                    crate::metrics::Metric::GrpcRequestDurationMs,
                    vec![("method", method)],
                    start.elapsed(),
                );
                res
            }
            .instrument(span),
        )
    }
}
