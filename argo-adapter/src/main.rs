//! `facteur-argo`: validates its configuration section. Serving (dispatch leasing and Workflow tracking) arrives with issue #3;
//! until then `run` says so and exits non-zero instead of pretending to work.

use clap::{Parser, Subcommand};
use facteur_config::{Process, load};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "facteur-argo", version)]
struct Cli {
    /// Configuration file (YAML). Also FACTEUR_CONFIG_FILE.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the adapter.
    Run,
    /// Load and validate this process's configuration; print it with secrets redacted.
    ConfigCheck,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load(cli.config.as_deref(), Process::ArgoAdapter) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::ConfigCheck => {
            print!("{}", config.redacted_yaml());
            ExitCode::SUCCESS
        }
        Command::Run => {
            eprintln!(
                "facteur-argo: dispatch leasing and Workflow tracking is not available yet (issue #3)"
            );
            ExitCode::from(2)
        }
    }
}
