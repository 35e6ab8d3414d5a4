//! Rust client of the facteur control plane: the generated stubs, bearer auth, TLS, the trace
//! context of calls and retries with jittered backoff. Used by the adapters, `facteurctl` and
//! the tests; a service that only calls facteur needs nothing else (no facteur configuration,
//! no OpenTelemetry, no allocator).
//!
//! ```no_run
//! # async fn demo() -> Result<(), facteur_client::ClientError> {
//! let client = facteur_client::Client::connect(
//!     facteur_client::ClientConfig::new("http://127.0.0.1:50051").with_token("my-admin-token-0123"),
//! )
//! .await?;
//! let status = client.admin().get_status(facteur_client::pb::GetStatusRequest {}).await?;
//! println!("server {}", status.into_inner().version);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

pub use facteur_proto::v1 as pb;
use pb::admin_service_client::AdminServiceClient;
use pb::codex_service_client::CodexServiceClient;
use pb::command_service_client::CommandServiceClient;
use pb::dispatch_service_client::DispatchServiceClient;
/// The `google.rpc.Status` details the server attaches to every error (`ErrorInfo` with a
/// stable reason, `BadRequest` naming the field): `status.get_error_details()`.
pub use tonic_types::{ErrorDetails, StatusExt};

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint URL is invalid.
    #[error("invalid control plane url `{url}`: {message}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// The token cannot be sent as a header.
    #[error("the control plane token contains characters not allowed in a header")]
    InvalidToken,
    /// TLS set-up failed.
    #[error("tls: {0}")]
    Tls(String),
    /// Connecting failed.
    #[error("cannot connect to {url}: {message}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// The server answered with an error status.
    #[error(transparent)]
    Status(#[from] Status),
}

/// How to reach the server.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `http://host:port` or `https://host:port`.
    pub url: String,
    /// Bearer token (`None` for a server with auth off).
    token: Option<String>,
    /// PEM CA for `https://`; `None` uses the webpki roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Connect timeout. Default 5 s.
    pub connect_timeout: Duration,
    /// Per-request timeout of unary calls. Default 30 s.
    pub request_timeout: Duration,
}

/// How the process's telemetry knows the current span's W3C `traceparent` (see
/// [`send_trace_context`]).
static TRACE_CONTEXT: std::sync::OnceLock<fn() -> Option<String>> = std::sync::OnceLock::new();

/// From now on every call of every [`Client`] of this process sends the `traceparent` that
/// `current` gives, so the server's span joins the caller's trace. Set once, by the process's
/// telemetry (this crate depends on none); later calls change nothing.
pub fn send_trace_context(current: fn() -> Option<String>) {
    let _ = TRACE_CONTEXT.set(current);
}

impl ClientConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: None,
            ca_pem: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }

    /// Sets the bearer token (ignored when empty).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        let t = token.into();
        self.token = (!t.is_empty()).then_some(t);
        self
    }

    fn endpoint(&self) -> Result<Endpoint, ClientError> {
        let invalid = |m: String| ClientError::InvalidUrl {
            url: self.url.clone(),
            message: m,
        };
        let mut ep = Endpoint::from_shared(self.url.clone())
            .map_err(|e| invalid(e.to_string()))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        if self.url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new();
            tls = match &self.ca_pem {
                Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
                None => tls.with_webpki_roots(),
            };
            ep = ep
                .tls_config(tls)
                .map_err(|e| ClientError::Tls(e.to_string()))?;
        } else if !self.url.starts_with("http://") {
            return Err(invalid("must start with http:// or https://".into()));
        }
        Ok(ep)
    }
}

/// Adds `authorization: Bearer <token>` to every call, and the caller's trace context (W3C
/// `traceparent` of the current span, once the process's telemetry said how to know it:
/// [`send_trace_context`]) so the server's span joins it.
#[derive(Clone)]
pub struct Bearer {
    token: Option<MetadataValue<Ascii>>,
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.token {
            req.metadata_mut().insert("authorization", v.clone());
        }
        if let Some(tp) = TRACE_CONTEXT.get().and_then(|current| current())
            && let Ok(v) = MetadataValue::try_from(tp.as_str())
        {
            req.metadata_mut().insert("traceparent", v);
        }
        Ok(req)
    }
}

type Authed = InterceptedService<Channel, Bearer>;

/// A connection to the control plane; cheap to clone (one HTTP/2 channel underneath).
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    bearer: Bearer,
}

impl Client {
    /// Connects now, failing if the server cannot be reached.
    pub async fn connect(cfg: ClientConfig) -> Result<Client, ClientError> {
        let bearer = bearer(&cfg)?;
        let channel = cfg
            .endpoint()?
            .timeout(cfg.request_timeout)
            .connect()
            .await
            .map_err(|e| ClientError::Connect {
                url: cfg.url.clone(),
                message: source_chain(&e),
            })?;
        Ok(Client { channel, bearer })
    }

    /// Connects on first use and reconnects by itself; for long-running adapters. No request
    /// timeout is set, so server streams (Lease, WatchRuns) can stay open.
    pub fn lazy(cfg: ClientConfig) -> Result<Client, ClientError> {
        let bearer = bearer(&cfg)?;
        Ok(Client {
            channel: cfg.endpoint()?.connect_lazy(),
            bearer,
        })
    }

    /// The underlying channel (for the health and reflection clients).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// `facteur.v1.AdminService`.
    pub fn admin(&self) -> AdminServiceClient<Authed> {
        AdminServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    /// `facteur.v1.CommandService`.
    pub fn command(&self) -> CommandServiceClient<Authed> {
        CommandServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    /// `facteur.v1.CodexService`.
    pub fn codex(&self) -> CodexServiceClient<Authed> {
        CodexServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    /// `facteur.v1.DispatchService`.
    pub fn dispatch(&self) -> DispatchServiceClient<Authed> {
        DispatchServiceClient::with_interceptor(self.channel.clone(), self.bearer.clone())
    }
    /// `grpc.health.v1.Health`.
    pub fn health(&self) -> tonic_health::pb::health_client::HealthClient<Channel> {
        tonic_health::pb::health_client::HealthClient::new(self.channel.clone())
    }
}

fn bearer(cfg: &ClientConfig) -> Result<Bearer, ClientError> {
    let v = cfg
        .token
        .as_ref()
        .map(|t| {
            MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| ClientError::InvalidToken)
        })
        .transpose()?;
    Ok(Bearer { token: v })
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Capped exponential backoff with jitter (backon's): the n-th delay is `min(initial * 2^n,
/// cap)` plus up to as much again at random, so replicas that failed together do not retry in
/// lock-step. Never runs out: after the cap every delay is the cap (with its jitter). A clone
/// starts again from `initial`.
#[derive(Debug)]
pub struct Backoff {
    /// First delay (before jitter).
    pub initial: Duration,
    /// Largest delay (before jitter).
    pub cap: Duration,
    delays: backon::ExponentialBackoff,
}

impl Clone for Backoff {
    fn clone(&self) -> Self {
        Self::new(self.initial, self.cap)
    }
}

impl Backoff {
    /// Starts at `initial`, doubling up to `cap`.
    pub fn new(initial: Duration, cap: Duration) -> Self {
        Self {
            initial,
            cap,
            delays: Self::delays(initial, cap),
        }
    }

    fn delays(initial: Duration, cap: Duration) -> backon::ExponentialBackoff {
        use backon::BackoffBuilder;
        backon::ExponentialBuilder::default()
            .with_min_delay(initial)
            .with_max_delay(cap)
            .with_jitter()
            .without_max_times()
            .build()
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.cap)
    }

    /// Back to `initial` (after a success).
    pub fn reset(&mut self) {
        self.delays = Self::delays(self.initial, self.cap);
    }
}

/// The stable reason the server gave an error (`INVALID_ARGUMENT`, `DEPENDENCY_UNAVAILABLE`,
/// `RESOURCE_EXHAUSTED`, …), from its `ErrorInfo`; `None` for an error without details (from
/// a proxy, say).
pub fn error_reason(s: &Status) -> Option<String> {
    s.get_error_details().error_info().map(|i| i.reason.clone())
}

/// The field an INVALID_ARGUMENT names (its `BadRequest` field violation), if any.
pub fn bad_field(s: &Status) -> Option<String> {
    s.get_error_details()
        .bad_request()
        .and_then(|b| b.field_violations.first())
        .map(|v| v.field.clone())
}

/// Whether a status is worth retrying unchanged: the server or a dependency was unavailable
/// (UNAVAILABLE), overloaded (RESOURCE_EXHAUSTED), a concurrent change won (ABORTED), or time
/// ran out (DEADLINE_EXCEEDED). Anything else (bad input, a refused state, an internal error)
/// answers the same again, and is not retried.
pub fn is_retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::ResourceExhausted | Code::Aborted | Code::DeadlineExceeded
    )
}

/// Retries an idempotent call on retryable codes, up to `attempts` times, with backoff.
pub async fn retry<T, F, Fut>(attempts: u32, mut backoff: Backoff, mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut n = 1;
    loop {
        match call().await {
            Err(s) if n < attempts && is_retryable(&s) => {
                tokio::time::sleep(backoff.next_delay()).await;
                n += 1;
            }
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps_with_jitter() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(350));
        let mut firsts = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let got: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
            for (d, base) in got.iter().zip([100, 200, 350, 350, 350, 350]) {
                assert!(
                    (ms(base)..=ms(2 * base)).contains(d),
                    "{d:?} is not within {base} ms and twice that: {got:?}"
                );
            }
            firsts.insert(got[0]);
            b.reset();
        }
        assert!(firsts.len() > 1, "the delays are jittered: {firsts:?}");
    }

    #[tokio::test]
    async fn retry_stops_on_success_and_on_permanent_errors() {
        let mut calls = 0;
        let r: Result<u32, Status> = retry(
            5,
            Backoff::new(Duration::from_millis(1), Duration::from_millis(4)),
            || {
                calls += 1;
                let c = calls;
                async move {
                    if c < 3 {
                        Err(Status::unavailable("down"))
                    } else {
                        Ok(c)
                    }
                }
            },
        )
        .await;
        assert_eq!(r.ok(), Some(3));
        let mut calls = 0;
        let r: Result<u32, Status> = retry(
            5,
            Backoff::new(Duration::from_millis(1), Duration::from_millis(4)),
            || {
                calls += 1;
                async { Err(Status::invalid_argument("bad")) }
            },
        )
        .await;
        assert_eq!(r.map_err(|s| s.code()), Err(Code::InvalidArgument));
        assert_eq!(calls, 1);
    }

    #[test]
    fn urls_are_checked() {
        assert!(matches!(
            ClientConfig::new("ftp://x").endpoint(),
            Err(ClientError::InvalidUrl { .. })
        ));
        assert!(ClientConfig::new("http://127.0.0.1:1").endpoint().is_ok());
    }
}
