//! The `wakegate` binary: parse the command line and the config, build the
//! runtime, run embedded mode until SIGTERM/SIGINT. All logic lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};

/// Exit code for an invalid configuration (EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// Exit code when a listener cannot be bound (EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;

#[derive(Parser)]
#[command(name = "wakegate", version, about = "A scale-to-zero ingress gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run embedded: the gateway and local solutions in one process.
    Run {
        /// The configuration file.
        #[arg(short, long, default_value = "wakegate.toml")]
        config: PathBuf,
    },
    /// Validate a configuration file and print every problem with its key.
    Check {
        /// The configuration file.
        #[arg(short, long, default_value = "wakegate.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("WAKEGATE_LOG").or_else(|_| std::env::var("RUST_LOG")).unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    match cli.command {
        Command::Check { config } => match wakegate::config::load(&config) {
            Ok(c) => {
                println!("{}: ok ({} solutions)", config.display(), c.config.solutions.len());
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("{}: {e}", config.display());
                }
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Run { config: path } => run(path),
    }
}

fn run(path: PathBuf) -> ExitCode {
    let loaded = match wakegate::config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                tracing::error!(key = %e.key, "invalid configuration: {}", e.reason);
            }
            eprintln!("wakegate: {} is invalid; nothing started (run `wakegate check --config {}`)", path.display(), path.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let workers = match loaded.config.settings.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let runtime = if workers == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wakegate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(t), Ok(i)) => (t, i),
            _ => {
                eprintln!("wakegate: cannot install signal handlers");
                return Ok(());
            }
        };
        let stop = async {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM"),
                _ = int.recv() => tracing::info!("SIGINT"),
            }
        };
        // Registered only when first polled, i.e. after the first signal, so
        // that signal does not count as the second one.
        let stop_now = async {
            let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
                return std::future::pending().await;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        wakegate::app::run(path, loaded, stop, stop_now).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wakegate: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}
