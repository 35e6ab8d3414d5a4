//! A tower layer around every gRPC call: one server span per RPC (OpenTelemetry's RPC
//! conventions, a child of the caller's `traceparent`), the request counter and latency
//! histogram by method and status code, and the caller's deadline (`grpc-timeout`) answered
//! with DEADLINE_EXCEEDED when it passes (tonic's own timeout would say CANCELLED).

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

/// A `grpc-timeout` header's duration (`<up to 8 digits><H|M|S|m|u|n>`).
pub fn grpc_timeout(v: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcObserver<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
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
        facteur_runtime::telemetry::adopt_parent(&span, |k| {
            req.headers()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        });
        let start = Instant::now();
        // One millisecond inside the caller's deadline, so this answers before tonic's own
        // timer (which would answer CANCELLED) fires on the same tick.
        let deadline = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(grpc_timeout)
            .map(|d| d.saturating_sub(std::time::Duration::from_millis(1)));
        let fut = {
            let _enter = span.enter();
            self.inner.call(req)
        };
        let metrics = self.metrics.clone();
        Box::pin(
            async move {
                let mut res = match deadline {
                    None => fut.await,
                    Some(d) => match tokio::time::timeout(d, fut).await {
                        Ok(res) => res,
                        Err(_) => Ok(tonic::Status::deadline_exceeded(
                            "the caller's deadline passed before the server answered",
                        )
                        .into_http()),
                    },
                };
                if let Ok(r) = &mut res {
                    // Every error answer carries google.rpc.Status details (one mapping).
                    super::status::add_details(r.headers_mut());
                    // Every service takes compressed requests (tonic itself says so only when
                    // refusing an encoding): a client may compress from its first call.
                    r.headers_mut()
                        .entry("grpc-accept-encoding")
                        .or_insert(http::HeaderValue::from_static("gzip,zstd"));
                }
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

#[cfg(test)]
mod tests {
    use super::grpc_timeout;
    use std::time::Duration;

    #[test]
    fn grpc_timeouts_parse_as_the_protocol_writes_them() {
        assert_eq!(grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "123456789S", "10x", "-1S"] {
            assert_eq!(grpc_timeout(bad), None, "{bad}");
        }
    }
}
