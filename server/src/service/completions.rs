//! The queue of completions waiting to be written together (owned by the shared state; written
//! by [`crate::service::dispatch`]). Apart from the writer so the state does not import a
//! service.

use crate::domain::Result;
use crate::domain::run::Run;
use crate::store::dispatch::{CompleteEffect, Completion};
use tokio::sync::oneshot;

/// Completions waiting to be recorded: those that arrive while a batch is being written are
/// written together by the next one ([`crate::store::Store::complete_batch`]), so an adapter
/// completing many jobs at once costs one transaction per batch, not one per job.
#[derive(Default)]
pub struct Completions {
    queue: std::sync::Mutex<CompletionQueue>,
}

pub(crate) type Completed = Result<(Run, CompleteEffect)>;

#[derive(Default)]
pub(crate) struct CompletionQueue {
    pub(crate) waiting: Vec<(Completion, oneshot::Sender<Completed>)>,
    /// A writer task is running; it takes what is waiting until nothing is.
    pub(crate) writing: bool,
}

impl Completions {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, CompletionQueue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Most completions in one transaction.
const COMPLETION_BATCH: usize = 64;

impl CompletionQueue {
    /// Up to [`COMPLETION_BATCH`] waiting completions, one per dispatch (a repeated one waits
    /// for the next batch, where it sees what the first did).
    pub(crate) fn take(&mut self) -> Vec<(Completion, oneshot::Sender<Completed>)> {
        let mut batch = Vec::new();
        let mut rest = Vec::new();
        for w in self.waiting.drain(..) {
            if batch.len() < COMPLETION_BATCH
                && !batch
                    .iter()
                    .any(|(c, _): &(Completion, _)| c.dispatch_id == w.0.dispatch_id)
            {
                batch.push(w);
            } else {
                rest.push(w);
            }
        }
        self.waiting = rest;
        batch
    }
}
