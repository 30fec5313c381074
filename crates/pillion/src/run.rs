//! `pillion run`, `check` and `demo`: load the config, bind, serve, drain on a signal.

use clap::Args;
use pillion_admin::{Admin, Phase};
use pillion_config::{Config, DEFAULT_CONFIG, DEFAULT_CONFIG_NAME};
use pillion_proxy::Proxy;
use pillion_telemetry::{init_tracing, LogFormat, Metrics};
use std::{path::Path, path::PathBuf, process::ExitCode};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Exit code for a config that cannot be used.
const EXIT_CONFIG: u8 = 2;
/// Exit code for a failure at run time (an address in use, ...).
const EXIT_RUNTIME: u8 = 1;

/// `pillion run` options.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The config file; without it, the built-in default (config/pillion.yaml).
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Worker threads; 1 runs everything on one thread. Default: one per CPU.
    #[arg(long)]
    workers: Option<usize>,
    #[command(flatten)]
    log: LogArgs,
}

/// Logging options.
#[derive(Debug, Args, Clone)]
pub struct LogArgs {
    /// Log level or filter (`info`, `debug`, `info,pillion_proxy=debug`); overrides RUST_LOG.
    #[arg(long)]
    log_level: Option<String>,
    /// Log line format.
    #[arg(long, value_enum, default_value = "plain")]
    log_format: LogFormatArg,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Plain,
    Json,
}

/// `pillion check FILE`.
pub fn check(file: &Path) -> ExitCode {
    match load(Some(file)) {
        Ok(_) => {
            println!("{}: ok", file.display());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `pillion run`.
pub fn run(args: RunArgs) -> ExitCode {
    let config = match load(args.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = init_log(&args.log) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let rt = match runtime(args.workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    rt.block_on(serve(config))
}

/// `pillion demo`: the echo app on 127.0.0.1:8080 behind the default config.
pub fn demo(log: LogArgs) -> ExitCode {
    let config = match load(None) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = init_log(&log) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let rt = match runtime(None) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    rt.block_on(async {
        let app = std::net::SocketAddr::from(([127, 0, 0, 1], 8080));
        let listener = match tokio::net::TcpListener::bind(app).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot start the demo app on {app}: {e}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
        tokio::spawn(crate::echo::serve(
            listener,
            crate::echo::Defaults::named("demo-app"),
        ));
        info!("demo app on {app}; try: curl -i http://127.0.0.1:15006/hello");
        serve(config).await
    })
}

/// Reads and validates a config, printing every error; `None` means the built-in default.
fn load(file: Option<&Path>) -> Result<Config, ExitCode> {
    let (text, name) = match file {
        None => (DEFAULT_CONFIG.to_string(), DEFAULT_CONFIG_NAME.to_string()),
        Some(path) => match std::fs::read_to_string(path) {
            Ok(t) => (t, path.display().to_string()),
            Err(e) => {
                eprintln!("error: {}: cannot read the config: {e}", path.display());
                return Err(ExitCode::from(EXIT_CONFIG));
            }
        },
    };
    Config::load(&text, &name).map_err(|errors| {
        for e in errors.iter() {
            eprintln!("error: {e}");
        }
        ExitCode::from(EXIT_CONFIG)
    })
}

fn init_log(log: &LogArgs) -> Result<(), String> {
    let format = match log.log_format {
        LogFormatArg::Plain => LogFormat::Plain,
        LogFormatArg::Json => LogFormat::Json,
    };
    init_tracing(log.log_level.as_deref(), format)
}

fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.max(1))
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
}

/// Binds everything, serves until SIGTERM or SIGINT, then drains.
async fn serve(config: Config) -> ExitCode {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Metrics::register(&mut registry);
    let proxy = match Proxy::build(&config, &metrics) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let dump = serde_yaml::to_string(&config).unwrap_or_else(|e| format!("# cannot render: {e}\n"));
    let admin = Admin::new(registry, dump);

    let admin_sock = match tokio::net::TcpListener::bind(config.admin.address).await {
        Ok(s) => s,
        Err(e) => {
            error!(address = %config.admin.address, "cannot listen (admin): {e}");
            eprintln!(
                "error: cannot listen on {} (admin): {e}",
                config.admin.address
            );
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let bound = match proxy.bind().await {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    tokio::spawn(admin.clone().serve(admin_sock));
    proxy.resolve().await;

    let shutdown = CancellationToken::new();
    tokio::spawn(watch_signals(shutdown.clone(), admin.clone()));
    admin.set_phase(Phase::Ready);
    info!(listeners = config.listeners.len(), "ready");
    proxy.serve(bound, shutdown, config.drain_timeout.0).await;
    info!("exiting");
    ExitCode::SUCCESS
}

/// Starts draining on the first SIGTERM or SIGINT; a second one exits at once.
async fn watch_signals(shutdown: CancellationToken, admin: std::sync::Arc<Admin>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            error!("cannot install signal handlers: {e}");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: draining"),
        _ = int.recv() => info!("SIGINT: draining"),
    }
    admin.set_phase(Phase::Draining);
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    warn!("second signal: exiting without waiting for the drain");
    std::process::exit(i32::from(EXIT_RUNTIME));
}
