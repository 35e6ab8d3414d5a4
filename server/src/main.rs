//! `facteur`: serve the control plane, apply migrations, or check the configuration.

use anyhow::Context;
use clap::{Parser, Subcommand};
use facteur_config::{Process, load};
use facteur_runtime::telemetry;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// mimalloc: glibc malloc was a fifth of the CPU of an ingestion profile (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "facteur",
    version,
    about = "facteur control plane: Discord and Codex requests become Argo Workflows runs"
)]
struct Cli {
    #[command(flatten)]
    common: facteur_runtime::adapter::CommonArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve gRPC and HTTP (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Load and validate; print the effective configuration with secrets redacted.
    Check {
        /// Validate for this process: server, discord-adapter or argo-adapter.
        #[arg(long, default_value = "server")]
        process: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match facteur_runtime::runtime::build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    if let Some(Command::Config {
        command: ConfigCommand::Check { process },
    }) = &cli.command
    {
        let process = match process.as_str() {
            "server" => Process::Server,
            "discord-adapter" => Process::DiscordAdapter,
            "argo-adapter" => Process::ArgoAdapter,
            other => {
                eprintln!(
                    "unknown process `{other}`: expected server, discord-adapter or argo-adapter"
                );
                return ExitCode::from(2);
            }
        };
        return match load(cli.common.config.as_deref(), process) {
            Ok(c) => {
                print!("{}", c.redacted_yaml());
                eprintln!("configuration is valid");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let config = match load(cli.common.config.as_deref(), Process::Server) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = telemetry::init("facteur", &config.telemetry, cli.common.log_json);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => facteur_server::app::open_store(&config).await.map(|_| ()),
        Command::Serve => serve(config).await,
        Command::Config { .. } => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "facteur stopped on an error");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: facteur_config::Config) -> anyhow::Result<()> {
    // Before start-up work: a SIGTERM during start-up drains too.
    let stop = facteur_runtime::signals::drain("facteur");
    let shutdown = CancellationToken::new();
    let server = facteur_server::start(config, shutdown.clone()).await?;
    tokio::spawn(async move {
        stop.await;
        shutdown.cancel();
    });
    server.wait().await.context("server stopped")?;
    tracing::info!("facteur stopped");
    Ok(())
}
