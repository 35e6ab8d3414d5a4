//! The application layer, between the edges (`grpc`, `http`) and the store. Each function is
//! one use case: it authorizes and audits, applies the domain's rules, calls the store, counts
//! and logs. It speaks domain types only (an [`discord::Interaction`], a Codex task, a
//! requester), never protobuf; the edges decode, call one function here and map its error.

pub mod codex;
pub mod completions;
pub mod discord;
pub mod dispatch;
pub mod feeds;
pub mod guilds;
pub mod history;
pub mod policy;
pub mod runs;
pub mod sessions;
pub mod status;
pub mod templates;

/// One page of a list paged by key (creation time, id), and the key to continue after it.
#[derive(Debug)]
pub struct Page<T> {
    /// The items, at most the page size.
    pub items: Vec<T>,
    /// The key of the last item when more follow.
    pub next: Option<(chrono::DateTime<chrono::Utc>, String)>,
}

impl<T> Page<T> {
    /// From up to `limit + 1` rows read in key order: the extra row only says more follow.
    pub(crate) fn of(
        mut rows: Vec<T>,
        limit: u64,
        key: impl Fn(&T) -> (chrono::DateTime<chrono::Utc>, String),
    ) -> Page<T> {
        let more = rows.len() as u64 > limit;
        rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Page {
            next: if more { rows.last().map(key) } else { None },
            items: rows,
        }
    }
}
