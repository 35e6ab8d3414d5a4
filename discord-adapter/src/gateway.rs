//! Gateway mode (`discord.mode: gateway`): interactions arrive over Discord's gateway websocket
//! (serenity's client, no intents: interactions are not intent-gated) instead of the HTTP
//! endpoint. The same [`respond`](crate::respond) answers them; the answer goes to the
//! interaction's callback route, and a deferred one is completed by editing `@original` as in
//! HTTP mode.
//!
//! Run exactly one replica in this mode: every gateway connection of a bot receives every
//! interaction, so two replicas would answer each one twice.

use crate::{Adapter, respond};
use serde_json::json;
use serenity::all::{Context, EventHandler, GatewayIntents, Interaction, Ready};
use serenity::http::Http;
use tokio_util::sync::CancellationToken;

struct Handler {
    adapter: Adapter,
}

/// An interaction as the HTTP endpoint would have received it: serenity's model serialised
/// back, with the `type` the model keeps in its enum.
pub fn as_json(interaction: &Interaction) -> Option<serde_json::Value> {
    let kind = match interaction {
        Interaction::Ping(_) => 1,
        Interaction::Command(_) => 2,
        Interaction::Component(_) => 3,
        Interaction::Autocomplete(_) => 4,
        Interaction::Modal(_) => 5,
        _ => return None,
    };
    let mut v = serde_json::to_value(interaction).ok()?;
    v["type"] = json!(kind);
    Some(v)
}

#[serenity::async_trait]
impl EventHandler for Handler {
    async fn ready(&self, _ctx: Context, ready: Ready) {
        tracing::info!(
            bot = %ready.user.name,
            session_guilds = ready.guilds.len(),
            "connected to the Discord gateway"
        );
    }

    async fn interaction_create(&self, _ctx: Context, interaction: Interaction) {
        let (id, token) = (interaction.id(), interaction.token().to_string());
        let Some(v) = as_json(&interaction) else {
            tracing::warn!(interaction_id = %id, "interaction of an unknown type ignored");
            return;
        };
        let Some(answer) = respond(&self.adapter, &v).await else {
            return;
        };
        if let Err(e) = self
            .adapter
            .http
            .create_interaction_response(id, &token, &answer, vec![])
            .await
        {
            tracing::warn!(interaction_id = %id, error = %e, "cannot answer an interaction");
        }
    }
}

/// Connects to the gateway with `http` (its own REST client: serenity's client takes one by
/// value) and answers interactions until `shutdown`. serenity reconnects and resumes by itself.
pub async fn run(adapter: Adapter, http: Http, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut client = serenity::all::ClientBuilder::new_with_http(http, GatewayIntents::empty())
        .event_handler(Handler { adapter })
        .await?;
    let shards = client.shard_manager.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        shards.shutdown_all().await;
    });
    client.start().await?;
    Ok(())
}
