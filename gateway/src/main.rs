//! The `wakegate` binary: parse the command line and the config, build the
//! runtime, run embedded mode until SIGTERM/SIGINT. All logic lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};

/// mimalloc, when built with `--features mimalloc` (see gateway/Cargo.toml
/// for why the system malloc is the default).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Run the gateway role in a Kubernetes cluster (settings from a ConfigMap,
    /// solutions from labelled Services and Ingresses).
    Gateway(wakegate::cluster::Args),
    /// Run the scaler role in a Kubernetes cluster (wake API, idle reaper).
    Scaler(ScalerArgs),
    /// Validate a configuration file and print every problem with its key.
    Check {
        /// The configuration file.
        #[arg(short, long, default_value = "wakegate.toml")]
        config: PathBuf,
    },
    /// Internal: how `run` starts a solution's command (its process group
    /// dies with wakegate; see wakegate_scaler::process::guard).
    #[command(hide = true)]
    Guard {
        /// wakegate's pid (gone already: the command is not started).
        #[arg(long)]
        parent: u32,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        argv: Vec<std::ffi::OsString>,
    },
}

/// Flags of `wakegate scaler` (see docs/cluster-contract.md).
#[derive(clap::Args)]
struct ScalerArgs {
    /// Namespace of wakegate's own objects.
    #[arg(long, env = "POD_NAMESPACE", default_value = "wakegate")]
    namespace: String,
    /// Namespace of the solutions.
    #[arg(long, env = "WAKEGATE_SOLUTIONS_NAMESPACE", default_value = "solutions")]
    solutions_namespace: String,
    /// The settings ConfigMap.
    #[arg(long, env = "WAKEGATE_CONFIGMAP", default_value = "wakegate-config")]
    configmap: String,
    /// File holding the wake API token.
    #[arg(long, env = "WAKEGATE_TOKEN_FILE", default_value = "/var/run/wakegate/token")]
    token_file: PathBuf,
    /// Service whose EndpointSlices list the gateway pods.
    #[arg(long, env = "WAKEGATE_GATEWAY_SERVICE", default_value = "wakegate-gateway-admin")]
    gateway_service: String,
    /// This replica's name (Lease holder).
    #[arg(long, env = "POD_NAME", default_value = "wakegate-scaler")]
    identity: String,
    /// Wake API listener.
    #[arg(long, default_value = "0.0.0.0:9091")]
    listen: std::net::SocketAddr,
    /// Admin listener.
    #[arg(long, default_value = "0.0.0.0:9092")]
    admin_listen: std::net::SocketAddr,
    /// Lease duration in seconds (failover takes about this long).
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // rustls warns once per handshake about clients sending an IP as SNI
    // (wrk, some health checkers): a log flood, not news. Errors still show.
    let filter = std::env::var("WAKEGATE_LOG").or_else(|_| std::env::var("RUST_LOG")).unwrap_or_else(|_| "info,rustls=error".into());
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
        Command::Guard { parent, argv } => scaler::process::guard::run(parent, &argv),
        Command::Scaler(args) => scaler(args),
        Command::Gateway(args) => gateway(args),
    }
}

fn gateway(args: wakegate::cluster::Args) -> ExitCode {
    let Ok(rt) = runtime(0) else {
        eprintln!("wakegate: cannot start the runtime");
        return ExitCode::FAILURE;
    };
    let result = rt.block_on(async move {
        let stop = signalled();
        let stop_now = async { signalled().await };
        wakegate::cluster::run(args, stop, stop_now).await
    });
    // Connections still open are dropped with the runtime: their lines last.
    drop(rt);
    wakegate::access_log::flush_all(wakegate::access_log::FLUSH_WAIT);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wakegate gateway: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

/// A runtime with `workers` threads (0 = one per core).
fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let workers = match workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    if workers == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed at the call, not
/// at the first poll, so a signal during start-up is not lost.
fn signalled() -> impl std::future::Future<Output = ()> {
    let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            eprintln!("wakegate: cannot install signal handlers");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = int.recv() => tracing::info!("SIGINT"),
        }
    }
}

fn scaler(a: ScalerArgs) -> ExitCode {
    let Ok(rt) = runtime(0) else {
        eprintln!("wakegate: cannot start the runtime");
        return ExitCode::FAILURE;
    };
    let args = scaler::cluster::Args {
        namespace: a.namespace,
        solutions_namespace: a.solutions_namespace,
        configmap: a.configmap,
        token_file: a.token_file,
        gateway_service: a.gateway_service,
        identity: a.identity,
        listen: a.listen,
        admin_listen: a.admin_listen,
        lease_duration: std::time::Duration::from_secs(a.lease_seconds.max(3)),
    };
    let result = rt.block_on(async move {
        let client = match scaler::cluster::default_client().await {
            Ok(c) => c,
            Err(e) => return Err(format!("no Kubernetes client (in-cluster or KUBECONFIG): {e}")),
        };
        let stop = signalled();
        let (wake, admin) = scaler::cluster::bind(&args).await.map_err(|e| e.to_string())?;
        scaler::cluster::run(args, client, wake, admin, stop).await.map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wakegate scaler: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

fn run(path: PathBuf) -> ExitCode {
    // Solutions start through this binary's guard. /proc/self/exe stays
    // valid when an upgrade replaces the file (and in the forked child it is
    // still this binary); without /proc, the path this binary was run from.
    let exe = PathBuf::from("/proc/self/exe");
    match if exe.exists() { Ok(exe) } else { std::env::current_exe() } {
        Ok(exe) => scaler::process::use_guard(exe),
        Err(e) => tracing::warn!("cannot find this binary ({e}): a solution's own children would outlive a wakegate killed outright"),
    }
    let loaded = match wakegate::config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                if e.key.is_empty() {
                    tracing::error!("invalid configuration: {}", e.reason);
                } else {
                    tracing::error!(key = %e.key, "invalid configuration: {}", e.reason);
                }
            }
            eprintln!("wakegate: {} is invalid; nothing started (run `wakegate check --config {}`)", path.display(), path.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match runtime(loaded.config.settings.workers) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wakegate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let stop = signalled();
        // Registered only when first polled, i.e. after the first signal, so
        // that signal does not count as the second one.
        let stop_now = async { signalled().await };
        wakegate::app::run(path, loaded, stop, stop_now).await
    });
    // Connections still open are dropped with the runtime: their lines last.
    drop(runtime);
    wakegate::access_log::flush_all(wakegate::access_log::FLUSH_WAIT);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wakegate: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}
