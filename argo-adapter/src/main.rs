//! `facteur-argo`: the argo-adapter process.

use anyhow::Context;
use facteur_config::Process;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    facteur_runtime::adapter::main(
        "facteur-argo",
        "facteur argo-adapter: Workflows on Kubernetes for the control plane",
        Process::ArgoAdapter,
        run,
    )
}

async fn run(config: facteur_config::Config) -> anyhow::Result<()> {
    // Before start-up work: a SIGTERM during start-up drains too.
    let stop = facteur_runtime::signals::drain("facteur-argo");
    let control = facteur_runtime::adapter::control_plane(&config.control_plane)?;
    let kube_config = facteur_argo::kubeconfig::resolve(&config.argo.kubeconfig).await?;
    let kube = kube::Client::try_from(kube_config).context("cannot build the Kubernetes client")?;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        stop.await;
        token.cancel();
    });
    facteur_argo::run(&config, control, kube, shutdown).await
}
