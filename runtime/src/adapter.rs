//! What the adapter binaries (`facteur-argo`, `facteur-discord`) share: the command line
//! `[--config FILE] [--log-json] [run | config-check]`, start-up (configuration, runtime,
//! telemetry, the exit code) and the control-plane client of `control_plane.*`.

use crate::telemetry;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use facteur_client::{Client, ClientConfig};
use facteur_config::{Config, ControlPlaneConfig, Process, load};
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

/// The options every facteur binary takes: `--config FILE` and `--log-json`.
#[derive(clap::Args, Debug, Default)]
pub struct CommonArgs {
    /// Configuration file (YAML). Also FACTEUR_CONFIG_FILE.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Log as JSON whatever the terminal.
    #[arg(long, global = true)]
    pub log_json: bool,
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
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

/// The whole `main` of an adapter binary called `name`: parses the command line, loads and
/// validates the configuration for `process` (exit 2 naming every error), and runs `run` on a
/// multi-thread runtime with telemetry; an error is logged and exits 1.
pub fn main<F, Fut>(name: &'static str, about: &'static str, process: Process, run: F) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let matches = Cli::command()
        .name(name)
        .bin_name(name)
        .about(about)
        .version(env!("CARGO_PKG_VERSION"))
        .get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let config = match load(cli.common.config.as_deref(), process) {
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
    let runtime = match crate::runtime::build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let _telemetry = telemetry::init(name, &config.telemetry, cli.common.log_json);
        match run(config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "{name} stopped on an error");
                ExitCode::FAILURE
            }
        }
    })
}

/// The client of `control_plane.*` (lazy: it connects on first use and reconnects by itself).
pub fn control_plane(c: &ControlPlaneConfig) -> anyhow::Result<Client> {
    let mut cc = ClientConfig::new(c.url.clone()).with_token(c.token.expose());
    if !c.ca_file.is_empty() {
        cc.ca_pem = Some(std::fs::read(&c.ca_file).map_err(|e| {
            anyhow::anyhow!("cannot read {} (control_plane.ca_file): {e}", c.ca_file)
        })?);
    }
    Ok(Client::lazy(cc)?)
}

/// Follows a server stream until `shutdown`: opens it with `open`, hands every message to
/// `each` in order, and opens it again after an error or its end, with capped backoff. The one
/// reconnect loop of both adapters (lease stream, run updates, guild set-ups).
pub async fn follow<T, O, OF, E, EF>(
    what: &str,
    shutdown: &tokio_util::sync::CancellationToken,
    open: O,
    each: E,
) where
    O: Fn() -> OF,
    OF: std::future::Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>>,
    E: Fn(T) -> EF,
    EF: std::future::Future<Output = ()>,
{
    let mut backoff = facteur_client::Backoff::new(
        std::time::Duration::from_millis(200),
        std::time::Duration::from_secs(15),
    );
    while !shutdown.is_cancelled() {
        let opened = tokio::select! {
            _ = shutdown.cancelled() => return,
            s = open() => s,
        };
        match opened {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    let next = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        n = stream.message() => n,
                    };
                    match next {
                        Ok(Some(message)) => {
                            backoff.reset();
                            each(message).await;
                        }
                        Ok(None) => break,
                        Err(st) => {
                            tracing::warn!(code = ?st.code(), error = %st.message(), "{what} interrupted");
                            break;
                        }
                    }
                }
            }
            Err(st) => {
                tracing::warn!(code = ?st.code(), error = %st.message(), "cannot follow {what}")
            }
        }
        tokio::select! { _ = shutdown.cancelled() => return, _ = tokio::time::sleep(backoff.next_delay()) => {} }
    }
}
