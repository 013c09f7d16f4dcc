//! `mailflow`: argument parsing only; each command lives in `cli/`.

mod admin;
mod cli;
mod context;
mod directory;
mod frontend;
mod logs;
mod mailbox;
mod message;
mod net;
mod transport;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MAILFLOW_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mailflow: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
