//! A whole stack for end-to-end tests and benchmarks: the server, argo-adapters on the real
//! kube-rs client, and the fake Kubernetes API server.

use crate::fake_kube::FakeKube;
use crate::{ARGO_TOKEN, TestServer};
use facteur_client::{Client, ClientConfig, pb};
use facteur_config::{Config, Process};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// One argo-adapter running in this process.
pub struct Adapter {
    handle: JoinHandle<anyhow::Result<()>>,
    stop: CancellationToken,
}

impl Adapter {
    /// Starts an adapter against `grpc_url` and `kube` (64 jobs in flight).
    pub fn start(grpc_url: &str, kube: &FakeKube, namespace: &str) -> Adapter {
        Self::start_in_flight(grpc_url, kube, namespace, 64)
    }

    /// [`Adapter::start`] with `max_in_flight` jobs at once.
    pub fn start_in_flight(
        grpc_url: &str,
        kube: &FakeKube,
        namespace: &str,
        max_in_flight: u32,
    ) -> Adapter {
        let env = [(
            "FACTEUR_CONTROL_PLANE_URL".to_string(),
            grpc_url.to_string(),
        )]
        .into();
        let mut cfg =
            facteur_config::load_from(None, &env, Process::ArgoAdapter).expect("adapter config");
        cfg.argo.namespace = namespace.to_string();
        cfg.argo.max_in_flight = max_in_flight;
        let errs = cfg.validate(Process::ArgoAdapter);
        assert!(errs.is_empty(), "adapter config invalid: {errs:?}");
        Self::start_with(cfg, kube)
    }

    /// Starts an adapter with an explicit configuration.
    pub fn start_with(cfg: Config, kube: &FakeKube) -> Adapter {
        let control =
            Client::lazy(ClientConfig::new(cfg.control_plane.url.clone()).with_token(ARGO_TOKEN))
                .expect("control client");
        let stop = CancellationToken::new();
        let token = stop.clone();
        let kube = kube.client();
        let handle =
            tokio::spawn(async move { facteur_argo::run(&cfg, control, kube, token).await });
        Adapter { handle, stop }
    }

    /// Kills it at once, like a dead process: in-flight work is abandoned.
    pub fn kill(self) {
        self.handle.abort();
    }

    /// Stops it gracefully.
    pub async fn stop(self) {
        let _ = self.drain().await;
    }

    /// Stops it as SIGTERM does and returns how it ended (an error when its grace ran out).
    pub async fn drain(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.handle
            .await
            .map_err(|e| anyhow::anyhow!("adapter task: {e}"))?
    }
}

/// Admin helpers over the gRPC API.
pub struct Admin(pub Client);

impl Admin {
    /// `StartRun`.
    pub async fn start_run(&self, command: &str, params: &[(&str, &str)]) -> pb::Run {
        let parameters = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.0
            .admin()
            .start_run(pb::StartRunRequest {
                command: command.into(),
                parameters,
                idempotency_key: String::new(),
                cluster: String::new(),
            })
            .await
            .expect("start run")
            .into_inner()
            .run
            .expect("run")
    }

    /// `GetRun`.
    pub async fn get(&self, id: &str) -> pb::GetRunResponse {
        self.0
            .admin()
            .get_run(pb::GetRunRequest { run_id: id.into() })
            .await
            .expect("get run")
            .into_inner()
    }

    /// The run's status.
    pub async fn status(&self, id: &str) -> pb::RunStatus {
        let run = self.get(id).await.run.expect("run");
        pb::RunStatus::try_from(run.status).unwrap_or(pb::RunStatus::Unspecified)
    }
}

/// Connects an admin client to `srv`.
pub async fn admin(srv: &TestServer) -> Admin {
    Admin(srv.client(crate::ADMIN_TOKEN).await)
}
