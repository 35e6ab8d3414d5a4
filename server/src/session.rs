//! The session store: short-lived data (interaction sessions, de-duplication, the old per-user
//! `facteur:dispatch:<user id>` key). One trait, two implementations: Redis through
//! deadpool-redis for production and several replicas, in-memory as the embedded default.
//! Both honour TTLs. Losing it loses no run: runs live in the database.

use crate::domain::{Error, Result};
use deadpool_redis::redis;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A boxed future, so the trait stays object-safe (`Arc<dyn SessionStore>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Key-value store with per-key TTL.
pub trait SessionStore: Send + Sync + 'static {
    /// `redis` or `memory`.
    fn backend(&self) -> &'static str;
    /// Sets `key` to `value` for `ttl`.
    fn put<'a>(&'a self, key: &'a str, value: &'a str, ttl: Duration) -> BoxFuture<'a, ()>;
    /// Sets `key` only if absent; true when this call set it (de-duplication).
    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, bool>;
    /// The value, if present and not expired.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<String>>;
    /// Removes `key`; true when it existed.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, bool>;
    /// Remaining lifetime of `key`, if present.
    fn ttl<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<Duration>>;
    /// Live keys starting with `prefix`.
    fn keys<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Vec<String>>;
    /// Round trip, for readiness.
    fn ping(&self) -> BoxFuture<'_, ()>;
}

/// In-memory store: one process only. Expired entries are dropped on access and swept on writes.
#[derive(Default)]
pub struct MemorySessionStore {
    entries: Mutex<HashMap<String, (String, Instant)>>,
    writes: std::sync::atomic::AtomicU64,
}

/// Writes between two sweeps of expired entries: keeps memory bounded at negligible cost.
const SWEEP_EVERY: u64 = 1024;

impl MemorySessionStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut HashMap<String, (String, Instant)>, Instant) -> T,
    ) -> Result<T> {
        let mut map = self
            .entries
            .lock()
            .map_err(|_| Error::session_store("memory store lock poisoned"))?;
        Ok(f(&mut map, Instant::now()))
    }

    fn wrote(&self, map: &mut HashMap<String, (String, Instant)>, now: Instant) {
        if self
            .writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % SWEEP_EVERY
            == SWEEP_EVERY - 1
        {
            map.retain(|_, (_, exp)| *exp > now);
        }
    }
}

fn ready<'a, T: Send + 'a>(v: Result<T>) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(v))
}

impl SessionStore for MemorySessionStore {
    fn backend(&self) -> &'static str {
        "memory"
    }
    fn put<'a>(&'a self, key: &'a str, value: &'a str, ttl: Duration) -> BoxFuture<'a, ()> {
        ready(self.with(|m, now| {
            m.insert(key.to_string(), (value.to_string(), now + ttl));
            self.wrote(m, now);
        }))
    }
    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, bool> {
        ready(self.with(|m, now| {
            let live = m.get(key).is_some_and(|(_, exp)| *exp > now);
            if !live {
                m.insert(key.to_string(), (value.to_string(), now + ttl));
                self.wrote(m, now);
            }
            !live
        }))
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<String>> {
        ready(self.with(|m, now| match m.get(key) {
            Some((v, exp)) if *exp > now => Some(v.clone()),
            Some(_) => {
                m.remove(key);
                None
            }
            None => None,
        }))
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, bool> {
        ready(self.with(|m, now| m.remove(key).is_some_and(|(_, exp)| exp > now)))
    }
    fn ttl<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<Duration>> {
        ready(self.with(|m, now| {
            m.get(key)
                .and_then(|(_, exp)| exp.checked_duration_since(now))
                .filter(|d| !d.is_zero())
        }))
    }
    fn keys<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Vec<String>> {
        ready(self.with(|m, now| {
            let mut keys: Vec<String> = m
                .iter()
                .filter(|(k, (_, exp))| *exp > now && k.starts_with(prefix))
                .map(|(k, _)| k.clone())
                .collect();
            keys.sort();
            keys
        }))
    }
    fn ping(&self) -> BoxFuture<'_, ()> {
        ready(self.with(|_, _| ()))
    }
}

/// Redis store (deadpool-redis). Every call is bounded by the configured timeout, so a Redis that
/// stops answering turns into errors (and readiness failures) instead of hung requests.
pub struct RedisSessionStore {
    pool: deadpool_redis::Pool,
    prefix: String,
    timeout: Duration,
}

impl RedisSessionStore {
    /// Builds the pool; connects lazily, so a Redis that is down does not fail start-up.
    pub fn new(url: &str, key_prefix: &str, pool_size: usize, timeout: Duration) -> Result<Self> {
        let mut cfg = deadpool_redis::Config::from_url(url);
        let mut pool_cfg = deadpool_redis::PoolConfig::new(pool_size);
        pool_cfg.timeouts.wait = Some(timeout);
        pool_cfg.timeouts.create = Some(timeout);
        pool_cfg.timeouts.recycle = Some(timeout);
        cfg.pool = Some(pool_cfg);
        let pool = cfg
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            // The error text may echo the URL: name the problem, not the value.
            .map_err(|_| Error::invalid("redis.url", "redis.url is not a valid Redis URL"))?;
        Ok(Self {
            pool,
            prefix: key_prefix.to_string(),
            timeout,
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T> {
        let call = async {
            let mut conn = self.pool.get().await.map_err(Error::session_store)?;
            cmd.query_async::<T>(&mut conn)
                .await
                .map_err(Error::session_store)
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(Error::session_store(format!(
                "redis did not answer within {:?}",
                self.timeout
            ))),
        }
    }
}

fn millis(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}

impl SessionStore for RedisSessionStore {
    fn backend(&self) -> &'static str {
        "redis"
    }
    fn put<'a>(&'a self, key: &'a str, value: &'a str, ttl: Duration) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut c = redis::cmd("SET");
            c.arg(self.key(key)).arg(value).arg("PX").arg(millis(ttl));
            self.run::<()>(c).await
        })
    }
    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let mut c = redis::cmd("SET");
            c.arg(self.key(key))
                .arg(value)
                .arg("NX")
                .arg("PX")
                .arg(millis(ttl));
            Ok(self.run::<Option<String>>(c).await?.is_some())
        })
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            let mut c = redis::cmd("GET");
            c.arg(self.key(key));
            self.run(c).await
        })
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let mut c = redis::cmd("DEL");
            c.arg(self.key(key));
            Ok(self.run::<i64>(c).await? > 0)
        })
    }
    fn ttl<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<Duration>> {
        Box::pin(async move {
            let mut c = redis::cmd("PTTL");
            c.arg(self.key(key));
            let ms: i64 = self.run(c).await?;
            // -2: no key; -1: no expiry (never written by us).
            Ok((ms > 0).then(|| Duration::from_millis(ms as u64)))
        })
    }
    fn keys<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Vec<String>> {
        Box::pin(async move {
            let pattern = format!("{}*", escape_glob(&self.key(prefix)));
            let mut cursor: u64 = 0;
            let mut out = Vec::new();
            loop {
                let mut c = redis::cmd("SCAN");
                c.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(500);
                let (next, keys): (u64, Vec<String>) = self.run(c).await?;
                out.extend(
                    keys.into_iter()
                        .filter_map(|k| k.strip_prefix(&self.prefix).map(str::to_string)),
                );
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            out.sort();
            out.dedup();
            Ok(out)
        })
    }
    fn ping(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let pong: String = self.run(redis::cmd("PING")).await?;
            if pong == "PONG" {
                Ok(())
            } else {
                Err(Error::session_store(format!(
                    "unexpected PING answer `{pong}`"
                )))
            }
        })
    }
}

fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
