//! A tower layer around every gRPC call: one span per RPC, and the request counter and latency
//! histogram by method and status code.

use crate::metrics::Metrics;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tracing::Instrument;

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
        let span =
            tracing::info_span!("rpc", rpc.method = %method, rpc.code = tracing::field::Empty);
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
                tracing::Span::current().record("rpc.code", code.as_str());
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
