//! `facteurctl`: the admin CLI of the facteur control plane.

use clap::{Parser, Subcommand};
use facteur_client::{Client, ClientConfig, pb};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "facteurctl",
    version,
    about = "Administer a facteur control plane"
)]
struct Cli {
    /// gRPC URL of the server.
    #[arg(
        long,
        env = "FACTEUR_CONTROL_PLANE_URL",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    url: String,
    /// Bearer token of an admin principal.
    #[arg(
        long,
        env = "FACTEUR_CONTROL_PLANE_TOKEN",
        hide_env_values = true,
        default_value = "",
        global = true
    )]
    token: String,
    /// PEM CA to trust for an https:// URL.
    #[arg(long, env = "FACTEUR_CONTROL_PLANE_CA_FILE", global = true)]
    ca_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Server version and the health of each dependency; exits 1 when not ready.
    Status,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("facteurctl: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut cfg = ClientConfig::new(cli.url.clone()).with_token(cli.token);
    if let Some(path) = &cli.ca_file {
        cfg.ca_pem = Some(
            std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
        );
    }
    let client = Client::connect(cfg).await?;
    match cli.command {
        Command::Status => status(&client, &cli.url).await,
    }
}

async fn status(client: &Client, url: &str) -> anyhow::Result<ExitCode> {
    let s = client
        .admin()
        .get_status(pb::GetStatusRequest {})
        .await
        .map_err(|e| anyhow::anyhow!("{}: {}", code_name(e.code()), e.message()))?
        .into_inner();
    let since = s
        .started_at
        .map(|t| format!(", up since {}", fmt_time(t.seconds)))
        .unwrap_or_default();
    println!(
        "facteur {} at {url}: {}{since}",
        s.version,
        if s.ready { "ready" } else { "NOT READY" }
    );
    let rows: Vec<Vec<String>> = s
        .dependencies
        .iter()
        .map(|d| {
            vec![
                d.name.clone(),
                d.backend.clone(),
                if d.healthy { "yes".into() } else { "NO".into() },
                format!("{:.1} ms", d.latency_ms),
                d.message.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["DEPENDENCY", "BACKEND", "HEALTHY", "LATENCY", "MESSAGE"],
            &rows
        )
    );
    Ok(if s.ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn code_name(c: tonic::Code) -> String {
    format!("{c:?}").to_ascii_uppercase()
}

fn fmt_time(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0).map_or_else(
        || unix.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string(),
    )
}

/// Left-aligned columns separated by two spaces.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_tables() {
        assert_eq!(fmt_time(0), "1970-01-01 00:00:00Z");
        assert_eq!(fmt_time(1_795_392_000), "2026-11-23 00:00:00Z");
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }
}
