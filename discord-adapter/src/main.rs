//! `facteur-discord`: the discord-adapter process: Discord's interactions over the HTTP endpoint
//! (`discord.mode: http`, the default) or over the gateway websocket (`gateway`, one replica).

use anyhow::Context;
use facteur_config::Process;
use facteur_runtime::supervise::{Lifetime, Supervisor};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    facteur_runtime::adapter::main(
        "facteur-discord",
        "facteur discord-adapter: Discord interactions for the control plane",
        Process::DiscordAdapter,
        run,
    )
}

async fn run(config: facteur_config::Config) -> anyhow::Result<()> {
    // Before start-up work: a SIGTERM during start-up drains too.
    let stop = facteur_runtime::signals::drain("facteur-discord");
    let control = facteur_runtime::adapter::control_plane(&config.control_plane)?;
    let app_id: u64 = config
        .discord
        .application_id
        .parse()
        .context("discord.application_id")?;
    let http = Arc::new(facteur_discord::discord_http(
        config.discord.bot_token.expose(),
        app_id,
        &config.discord.api_base_url,
    ));
    let guild = (!config.discord.guild_id.is_empty())
        .then(|| config.discord.guild_id.parse::<u64>())
        .transpose()
        .context("discord.guild_id")?;
    let shutdown = CancellationToken::new();
    // The background tasks are supervised: one that dies is started again with backoff; one
    // that keeps dying stops the adapter with an error (a non-zero exit: Kubernetes restarts it).
    let supervisor = Supervisor::new(shutdown.clone());
    // The catalog is registered (once per version, retried with backoff) by the guilds task.
    {
        let (control, http, shutdown) = (control.clone(), http.clone(), shutdown.clone());
        supervisor.spawn("guilds", Lifetime::UntilShutdown, move || {
            let (control, http, shutdown) = (control.clone(), http.clone(), shutdown.clone());
            async move {
                facteur_discord::follow_guilds(control, http, guild, shutdown).await;
                Ok(())
            }
        });
    }
    {
        let (control, http, shutdown) = (control.clone(), http.clone(), shutdown.clone());
        let cursor = Arc::new(std::sync::Mutex::new(String::new()));
        supervisor.spawn("run-cards", Lifetime::UntilShutdown, move || {
            let (control, http, shutdown) = (control.clone(), http.clone(), shutdown.clone());
            let cursor = cursor.clone();
            async move {
                facteur_discord::follow_runs_from(control, http, cursor, shutdown).await;
                Ok(())
            }
        });
    }
    let listener = tokio::net::TcpListener::bind(&config.discord.interactions_listen_address)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (discord.interactions_listen_address)",
                config.discord.interactions_listen_address
            )
        })?;
    tracing::info!(addr = %listener.local_addr()?, "interactions endpoint listening");
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let gateway = config.discord.mode == "gateway";
    let adapter = if gateway {
        facteur_discord::Adapter::for_gateway(control, http)
    } else {
        let verifier = facteur_discord::verify::Verifier::new(&config.discord.public_key)?;
        facteur_discord::Adapter::new(verifier, control, http)
    };
    let app = if gateway {
        // Interactions come over the websocket; the listener keeps serving the probes.
        axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }))
    } else {
        facteur_discord::router(adapter.clone())
    };
    let token = shutdown.clone();
    tokio::spawn(async move {
        stop.await;
        token.cancel();
    });
    let token = shutdown.clone();
    let serving = axum::serve(listener, app).with_graceful_shutdown(async move {
        token.cancelled().await;
    });
    if gateway {
        tracing::info!(
            "discord.mode gateway: interactions over the gateway websocket (run one replica)"
        );
        let gateway_http = facteur_discord::discord_http(
            config.discord.bot_token.expose(),
            app_id,
            &config.discord.api_base_url,
        );
        let connected = async {
            let r = facteur_discord::gateway::run(adapter.clone(), gateway_http, shutdown.clone())
                .await;
            shutdown.cancel();
            r
        };
        let (served, connected) = tokio::join!(serving, connected);
        served?;
        connected?;
    } else {
        serving.await?;
    }
    let grace = Duration::from_secs(config.discord.shutdown_grace_seconds);
    let drained = adapter.drain(grace).await;
    // The run cards' edits still pending (at most one per run, within a second).
    supervisor.join(grace).await;
    if let Some(why) = supervisor.failed() {
        anyhow::bail!("{why}");
    }
    drained
}
