//! Kubernetes client configuration, resolved as the old service did: `argo.kubeconfig`
//! (`FACTEUR_KUBECONFIG`), then `KUBECONFIG`, then in-cluster, then `~/.kube/config`.

use kube::config::{KubeConfigOptions, Kubeconfig};

/// Builds the client configuration.
pub async fn resolve(explicit: &str) -> anyhow::Result<kube::Config> {
    if !explicit.is_empty() {
        let kc = Kubeconfig::read_from(explicit)
            .map_err(|e| anyhow::anyhow!("cannot read argo.kubeconfig `{explicit}`: {e}"))?;
        return kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| anyhow::anyhow!("invalid kubeconfig `{explicit}`: {e}"));
    }
    if let Ok(path) = std::env::var("KUBECONFIG")
        && !path.is_empty()
    {
        return kube::Config::from_kubeconfig(&KubeConfigOptions::default())
            .await
            .map_err(|e| anyhow::anyhow!("invalid KUBECONFIG `{path}`: {e}"));
    }
    if std::env::var("KUBERNETES_SERVICE_HOST").is_ok() {
        return kube::Config::incluster()
            .map_err(|e| anyhow::anyhow!("in-cluster configuration failed: {e}"));
    }
    kube::Config::from_kubeconfig(&KubeConfigOptions::default())
        .await
        .map_err(|e| anyhow::anyhow!("no Kubernetes configuration: set FACTEUR_KUBECONFIG or KUBECONFIG, or run in a cluster ({e})"))
}
