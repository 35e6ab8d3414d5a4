//! What the session store keeps, typed: the only place its keys are built and its values are
//! shaped. Keys and JSON fields are those the old service used.

use crate::domain::Result;
use crate::domain::interaction::Interaction;
use crate::domain::run::Run;
use crate::state::AppState;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Interaction tokens live 15 minutes; so do the sessions that hold them.
pub const SESSION_TTL: Duration = Duration::from_secs(15 * 60);
/// Messages of runs are remembered this long for bot-token edits after the interaction token.
pub const MESSAGE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

fn session_key(interaction_id: &str) -> String {
    format!("facteur:session:{interaction_id}")
}
fn run_session_key(run_id: &str) -> String {
    format!("facteur:run-session:{run_id}")
}
fn run_message_key(run_id: &str) -> String {
    format!("facteur:run-message:{run_id}")
}
fn last_dispatch_key(user_id: &str) -> String {
    format!("facteur:dispatch:{user_id}")
}

/// The interaction a run answers, while its token lives.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct InteractionSession {
    /// Interaction id.
    pub interaction_id: String,
    /// Application id.
    pub application_id: String,
    /// Interaction token (a secret: never logged).
    pub token: String,
    /// Guild.
    pub guild_id: String,
    /// Channel.
    pub channel_id: String,
    /// Member.
    pub user_id: String,
    /// The run it started.
    pub run_id: String,
    /// When the token expires.
    pub expires_at: Option<DateTime<Utc>>,
}

/// The Discord message that shows a run.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RunMessage {
    /// Channel.
    pub channel_id: String,
    /// Message.
    pub message_id: String,
}

/// The old service's per-user "last dispatch" record.
#[derive(Serialize)]
struct LastDispatch<'a> {
    run_id: &'a str,
    command: &'a str,
    workflow_name: &'a str,
}

fn json(v: &impl Serialize) -> Result<String> {
    serde_json::to_string(v).map_err(|e| crate::domain::Error::Internal(e.to_string()))
}

fn session_of(i: &Interaction, run_id: &str) -> InteractionSession {
    InteractionSession {
        interaction_id: i.interaction_id.clone(),
        application_id: i.application_id.clone(),
        token: i.token.clone(),
        guild_id: i.guild_id.clone(),
        channel_id: i.channel_id.clone(),
        user_id: i.user_id.clone(),
        run_id: run_id.to_string(),
        expires_at: Some(Utc::now() + chrono::Duration::from_std(SESSION_TTL).unwrap_or_default()),
    }
}

/// Writes the session of interaction `i` *before* the run it starts exists: a run and the
/// session that lets it report back are one outcome. If the session store does not answer,
/// this fails and nothing is started; once it is written, the run (keyed by the interaction id)
/// finds it whatever happens next.
pub async fn open(state: &AppState, i: &Interaction) -> Result<()> {
    let value = json(&session_of(i, ""))?;
    state
        .sessions
        .put(&session_key(&i.interaction_id), &value, SESSION_TTL)
        .await
}

/// Links the session of `i` to the run it started (by run id, and the old service's per-user
/// "last dispatch" record). Best effort: the session written by [`open`] already lets the run
/// report back.
pub async fn link(state: &AppState, i: &Interaction, run: &Run) {
    let result = async {
        let value = json(&session_of(i, &run.id))?;
        let s = &state.sessions;
        s.put(&session_key(&i.interaction_id), &value, SESSION_TTL)
            .await?;
        s.put(&run_session_key(&run.id), &value, SESSION_TTL)
            .await?;
        let last = LastDispatch {
            run_id: &run.id,
            command: &run.command,
            workflow_name: &run.workflow_name,
        };
        s.put(&last_dispatch_key(&i.user_id), &json(&last)?, SESSION_TTL)
            .await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(run_id = %run.id, error = %e, "session not linked to its run; the interaction session still reaches it");
    }
}

/// Records the message that shows a run.
pub async fn record_message(state: &AppState, run_id: &str, m: &RunMessage) -> Result<()> {
    state
        .sessions
        .put(&run_message_key(run_id), &json(m)?, MESSAGE_TTL)
        .await
}

async fn read<T: for<'de> Deserialize<'de>>(state: &AppState, key: &str) -> Option<T> {
    let v = state.sessions.get(key).await.ok().flatten()?;
    serde_json::from_str(&v).ok()
}

/// The interaction session and the recorded message of a run, where they exist (best effort:
/// a session store that does not answer gives none). A run started from Discord finds its
/// session by run id, or else by its interaction (its idempotency key `discord:<id>`).
pub async fn of_run(
    state: &AppState,
    run: &Run,
) -> (Option<InteractionSession>, Option<RunMessage>) {
    let mut session: Option<InteractionSession> = read(state, &run_session_key(&run.id)).await;
    if session.is_none()
        && let Some(interaction) = run.idempotency_key.strip_prefix("discord:")
    {
        session = read::<InteractionSession>(state, &session_key(interaction))
            .await
            .filter(|s| s.run_id.is_empty() || s.run_id == run.id);
    }
    (session, read(state, &run_message_key(&run.id)).await)
}

/// The live interaction sessions, of one guild or (empty) all.
pub async fn list(state: &AppState, guild_id: &str) -> Result<Vec<InteractionSession>> {
    let s = &state.sessions;
    let mut out = Vec::new();
    for key in s.keys(&session_key("")).await? {
        // A session may expire between listing and reading it.
        let Some(session) = read::<InteractionSession>(state, &key).await else {
            continue;
        };
        if guild_id.is_empty() || session.guild_id == guild_id {
            out.push(session);
        }
    }
    Ok(out)
}
