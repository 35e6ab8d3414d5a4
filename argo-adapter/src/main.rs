//! `facteur-argo`: the argo-adapter process.

use anyhow::Context;
use clap::{Parser, Subcommand};
use facteur_client::{Client, ClientConfig};
use facteur_config::{Process, load, telemetry};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "facteur-argo",
    version,
    about = "facteur argo-adapter: Workflows on Kubernetes for the control plane"
)]
struct Cli {
    /// Configuration file (YAML). Also FACTEUR_CONFIG_FILE.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log as JSON whatever the terminal.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the adapter (the default).
    Run,
    /// Load and validate this process's configuration; print it with secrets redacted.
    ConfigCheck,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load(cli.config.as_deref(), Process::ArgoAdapter) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    if matches!(cli.command, Some(Command::ConfigCheck)) {
        print!("{}", config.redacted_yaml());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let _telemetry = telemetry::init("facteur-argo", &config.telemetry, cli.log_json);
        match run(config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "facteur-argo stopped on an error");
                ExitCode::FAILURE
            }
        }
    })
}

async fn run(config: facteur_config::Config) -> anyhow::Result<()> {
    let mut cc = ClientConfig::new(config.control_plane.url.clone())
        .with_token(config.control_plane.token.expose());
    if !config.control_plane.ca_file.is_empty() {
        cc.ca_pem = Some(
            std::fs::read(&config.control_plane.ca_file)
                .with_context(|| format!("cannot read {}", config.control_plane.ca_file))?,
        );
    }
    let control = Client::lazy(cc)?;
    let kube_config = facteur_argo::kubeconfig::resolve(&config.argo.kubeconfig).await?;
    let kube = kube::Client::try_from(kube_config).context("cannot build the Kubernetes client")?;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
        token.cancel();
    });
    #[cfg(unix)]
    {
        let token = shutdown.clone();
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::spawn(async move {
                term.recv().await;
                tracing::info!("SIGTERM: shutting down");
                token.cancel();
            });
        }
    }
    facteur_argo::run(&config, control, kube, shutdown).await
}
