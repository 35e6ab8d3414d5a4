//! The two feeds the discord-adapter follows: the runs whose card must change (`WatchRuns`) and
//! the guilds whose commands must be registered (`WatchGuilds`). Each is one loop that sends
//! domain values into a channel and ends when its receiver goes or the server shuts down; the
//! gRPC handlers only convert what comes out. The change feed's cursor cannot skip a commit:
//! see [`crate::store::feed`].

use crate::domain::Result;
use crate::domain::run::Run;
use crate::service::sessions::{self, InteractionSession, RunMessage};
use crate::state::AppState;
use crate::store::feed::FeedCursor;
use crate::store::guilds::Guild;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::Sender;

/// Longest wait between two looks at the change feed (changes on other replicas, expirations).
const WATCH_RECHECK: Duration = Duration::from_millis(500);
/// How many feed entries one look reads at most.
const FEED_BATCH: u64 = 200;
/// A guild whose registration is still pending is sent again after this long (the adapter
/// that got it may have died or failed).
const GUILD_RESEND: Duration = Duration::from_secs(30);
/// Longest wait between two looks at the guilds (set-ups on other replicas).
const GUILD_RECHECK: Duration = Duration::from_secs(1);

/// One run whose card must change, at its newest feed entry, with where it is shown.
#[derive(Debug, Clone)]
pub struct RunChange {
    /// Resume after this to skip what was sent up to here.
    pub cursor: FeedCursor,
    /// The run as it is now.
    pub run: Run,
    /// The interaction that started it, while its token lives.
    pub session: Option<InteractionSession>,
    /// The message `RecordRunMessage` recorded for it.
    pub message: Option<RunMessage>,
}

/// Where a new follower starts when it names no cursor: now.
pub async fn now(state: &AppState) -> Result<FeedCursor> {
    state.store.feed_now().await
}

/// What one look at the change feed found.
#[derive(Debug, Default)]
pub struct Batch {
    /// One change per run at its newest entry, in feed order (cursors only grow): resuming
    /// after one of them skips only entries of runs sent after it.
    pub changes: Vec<RunChange>,
    /// The newest entry read, whether or not its run is still there: where the next look
    /// starts (a batch of pruned runs alone must not be read again and again).
    pub end: Option<FeedCursor>,
}

/// The changes after `cursor`. A run that vanished (pruned) in between is left out.
pub async fn runs_after(state: &AppState, cursor: FeedCursor) -> Result<Batch> {
    let changes = state
        .store
        .discord_changes_after(cursor, FEED_BATCH)
        .await?;
    let mut newest: BTreeMap<String, FeedCursor> = BTreeMap::new();
    for e in changes {
        newest.insert(e.run_id, e.cursor);
    }
    let mut order: Vec<(FeedCursor, String)> = newest.into_iter().map(|(r, c)| (c, r)).collect();
    order.sort();
    let mut batch = Batch {
        end: order.last().map(|(c, _)| *c),
        changes: Vec::with_capacity(order.len()),
    };
    for (cursor, run_id) in order {
        let Some(run) = state.store.get_run(&run_id).await? else {
            continue;
        };
        let (session, message) = sessions::of_run(state, &run).await;
        batch.changes.push(RunChange {
            cursor,
            run,
            session,
            message,
        });
    }
    Ok(batch)
}

/// Follows the change feed from `cursor` into `tx` until `tx`'s receiver goes or the server
/// shuts down: woken by local changes, and every [`WATCH_RECHECK`] for other replicas'. A
/// look that fails is tried again from the same cursor: nothing is skipped.
pub async fn follow_runs(state: Arc<AppState>, mut cursor: FeedCursor, tx: Sender<RunChange>) {
    loop {
        let notified = state.dispatch_wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match runs_after(&state, cursor).await {
            Ok(Batch {
                changes,
                end: Some(end),
            }) => {
                for change in changes {
                    if tx.send(change).await.is_err() {
                        return;
                    }
                }
                cursor = end;
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "run change feed failed; retrying"),
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep(WATCH_RECHECK) => {}
            _ = tx.closed() => return,
            _ = state.shutdown.cancelled() => return,
        }
    }
}

/// What the guild feed sends.
#[derive(Debug, Clone)]
pub enum GuildChange {
    /// The catalog is now at this version (sent only to followers that asked for notices).
    Catalog(u64),
    /// A guild to register, at the catalog version it is sent for.
    Guild(Guild, u64),
}

/// Follows the guilds into `tx`: every guild first (after a catalog notice, when `notices`),
/// then pending set-ups as they appear, a pending one again after [`GUILD_RESEND`]; when the
/// catalog changes, every guild again. Ends when `tx`'s receiver goes or the server shuts down.
pub async fn follow_guilds(state: Arc<AppState>, notices: bool, tx: Sender<GuildChange>) {
    let mut sent: BTreeMap<String, (i64, std::time::Instant)> = BTreeMap::new();
    let mut first = true;
    let mut catalog = None;
    loop {
        let notified = state.guilds_wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let version = state.catalog.version();
        let changed = catalog != Some(version);
        if changed && notices && tx.send(GuildChange::Catalog(version)).await.is_err() {
            return;
        }
        catalog = Some(version);
        match state.store.guilds(None).await {
            Ok(guilds) => {
                for g in guilds {
                    let due = match sent.get(&g.guild_id) {
                        _ if changed => true,
                        None => first || g.pending(),
                        Some((generation, at)) => {
                            g.pending()
                                && (*generation != g.generation || at.elapsed() >= GUILD_RESEND)
                        }
                    };
                    if !due {
                        continue;
                    }
                    sent.insert(
                        g.guild_id.clone(),
                        (g.generation, std::time::Instant::now()),
                    );
                    if tx.send(GuildChange::Guild(g, version)).await.is_err() {
                        return;
                    }
                }
                first = false;
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the guilds; retrying"),
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep(GUILD_RECHECK) => {}
            _ = tx.closed() => return,
            _ = state.shutdown.cancelled() => return,
        }
    }
}
