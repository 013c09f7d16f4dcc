//! `mailflow`: argument parsing only; each command lives in `cli/`.

mod admin;
mod cli;
mod directory;
mod files;
mod frontend;
#[cfg(test)]
mod fuzz;
mod logs;
mod mailbox;
mod message;
mod net;
mod server;
mod transport;
mod wal;

use clap::Parser;

fn main() -> std::process::ExitCode {
    // Before anything can create a file: keys, the organisation file, queues,
    // databases and logs are the organisation's secrets (DESIGN §7).
    private_umask();
    let args = cli::Cli::parse();
    if !matches!(args.command, cli::Command::Serve) {
        restore_sigpipe();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MAILFLOW_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if matches!(args.command, cli::Command::Serve) {
        match net::receive::raise_open_files_limit() {
            Some(n) => tracing::debug!("open files limit: {n}"),
            None => tracing::warn!("cannot read the open files limit"),
        }
    }
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mailflow: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Rust ignores SIGPIPE, so `println!` panics when the reader of a pipe has gone
/// (`mailflow track | head`). A command-line tool should end quietly instead, as every
/// Unix tool does. `serve` keeps SIGPIPE ignored: a client closing its socket must never
/// kill the server.
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to its default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// umask 077: every file and folder this process creates is its owner's only, whatever
/// the umask it was started with.
fn private_umask() {
    // SAFETY: umask only sets the process's file mode creation mask.
    unsafe {
        libc::umask(0o077);
    }
}
