//! `interactions`: a signed slash-command interaction → the adapter's HTTP answer, as Discord
//! sees it. The server runs on Postgres with sessions in Redis; the discord-adapter's endpoint
//! verifies the Ed25519 signature, calls `CommandService.Invoke` over gRPC (policy check, option
//! validation, the run + its dispatch + history in one transaction, the interaction session in
//! Redis) and answers with the message. Every request is a new `/deploy` by an allowed member,
//! so every one starts a run: the heaviest interaction there is.
//!
//! Load is open-loop at a fixed rate (50 and 500 per second): a request's latency counts from
//! the moment it was due, so a stalled server cannot hide its queueing (no coordinated
//! omission). Connections are kept alive and reused, as Discord's are.

use crate::{percentile, round2};
use facteur_tests::discord::{DEPLOYER, Options, Stack, command, key, signature};
use facteur_tests::{Backend, count_rows};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// One kept-alive HTTP/1.1 connection to the endpoint.
struct Conn {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

impl Conn {
    async fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Conn {
            read: BufReader::new(r),
            write: w,
        })
    }

    /// POST /interactions; the status and the body.
    async fn post(&mut self, body: &[u8], sig: &str, ts: &str) -> std::io::Result<(u16, Vec<u8>)> {
        let head = format!(
            "POST /interactions HTTP/1.1\r\nHost: discord-adapter\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Signature-Ed25519: {sig}\r\nX-Signature-Timestamp: {ts}\r\n\r\n",
            body.len()
        );
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        self.write.write_all(&req).await?;
        let mut line = String::new();
        self.read.read_line(&mut line).await?;
        let code = line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let mut length = 0usize;
        loop {
            line.clear();
            if self.read.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut out = vec![0u8; length];
        self.read.read_exact(&mut out).await?;
        Ok((code, out))
    }
}

/// The outcome of one rate: latencies (ms) of good answers, failures, wall time.
struct Rate {
    lat: Vec<f64>,
    failed: usize,
    elapsed: Duration,
}

async fn at_rate(
    endpoint: SocketAddr,
    rate: u32,
    seconds: u64,
    ids: &Arc<AtomicU64>,
) -> anyhow::Result<Rate> {
    let total = (rate as u64 * seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let pool: Arc<Mutex<Vec<Conn>>> = Arc::default();
    let start = tokio::time::Instant::now();
    let mut handles = Vec::with_capacity(total);
    for i in 0..total {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due).await;
        let id = 700_000_000_000_000_000 + ids.fetch_add(1, Ordering::Relaxed);
        let pool = pool.clone();
        handles.push(tokio::spawn(async move {
            let body = command(
                &id.to_string(),
                &[DEPLOYER],
                "deploy",
                json!([{"name": "service", "type": 3, "value": "api"}]),
            )
            .to_string();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let (sig, ts) = signature(&key(), now, body.as_bytes());
            let pooled = pool.lock().ok().and_then(|mut p| p.pop());
            let mut conn = match pooled {
                Some(c) => c,
                None => Conn::open(endpoint).await?,
            };
            let (code, out) = conn.post(body.as_bytes(), &sig, &ts).await?;
            let latency = due.elapsed();
            if let Ok(mut p) = pool.lock() {
                p.push(conn);
            }
            let answer: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
            // The run's card (an embed titled `/deploy · run …`), as a user would see it.
            let good = code == 200
                && answer["type"] == 4
                && facteur_tests::message_text(&answer["data"]).contains("/deploy");
            anyhow::Ok((good, latency))
        }));
    }
    let mut lat = Vec::with_capacity(total);
    let mut failed = 0;
    for h in handles {
        match h.await? {
            Ok((true, l)) => lat.push(l.as_secs_f64() * 1000.0),
            _ => failed += 1,
        }
    }
    let elapsed = start.elapsed();
    lat.sort_by(f64::total_cmp);
    Ok(Rate {
        lat,
        failed,
        elapsed,
    })
}

/// Runs the benchmark: a warm-up, then `seconds` at each rate.
pub async fn run(seconds: u64, rates: &[u32]) -> anyhow::Result<Value> {
    let stack = Stack::start(Options {
        backend: Backend::Postgres,
        redis: true,
        ..Default::default()
    })
    .await;
    let ids = Arc::new(AtomicU64::new(0));
    at_rate(stack.endpoint, 50, 2, &ids).await?;
    let mut by_rate = Vec::new();
    let mut accepted = 0usize;
    for &rate in rates {
        let r = at_rate(stack.endpoint, rate, seconds, &ids).await?;
        accepted += r.lat.len();
        let row = json!({
            "rate": rate,
            "requests": r.lat.len() + r.failed,
            "failed": r.failed,
            "p50_ms": round2(percentile(&r.lat, 50.0)),
            "p99_ms": round2(percentile(&r.lat, 99.0)),
            "p99_9_ms": round2(percentile(&r.lat, 99.9)),
            "max_ms": round2(r.lat.last().copied().unwrap_or(0.0)),
            "per_s": (r.lat.len() as f64 / r.elapsed.as_secs_f64()).round(),
        });
        println!("{row}");
        by_rate.push(row);
    }
    // Every good answer is a run on the database (the warm-up's included).
    let runs = count_rows(&stack.srv.server.state.store, "runs").await;
    anyhow::ensure!(
        runs as usize >= accepted,
        "{accepted} commands answered but only {runs} runs stored"
    );
    stack.srv.stop().await;
    let top = by_rate.last().cloned().unwrap_or_default();
    Ok(json!({
        "bench": "interactions",
        "backend": "postgres", "sessions": "redis",
        "rate": top["rate"], "p50_ms": top["p50_ms"], "p99_ms": top["p99_ms"],
        "p99_9_ms": top["p99_9_ms"], "max_ms": top["max_ms"], "per_s": top["per_s"],
        "failed": by_rate.iter().map(|r| r["failed"].as_u64().unwrap_or(0)).sum::<u64>(),
        "runs_stored": runs,
        "by_rate": by_rate,
    }))
}
