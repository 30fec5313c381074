//! `pillion run`, `check` and `demo`: load the config, bind, serve, drain on a signal.

use clap::Args;
use pillion_admin::{Admin, Controls, Limits, Phase, Port};
use pillion_config::{Config, DEFAULT_CONFIG, DEFAULT_CONFIG_NAME};
use pillion_proxy::Proxy;
use pillion_telemetry::{access_log::AccessLog, init_tracing, LogControl, LogFormat, Metrics};
use std::{path::Path, path::PathBuf, process::ExitCode, sync::Arc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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
    let log = match init_log(&args.log) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let rt = match runtime(args.workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    rt.block_on(serve(config, log))
}

/// `pillion demo`: the echo app on 127.0.0.1:8080 behind the default config.
pub fn demo(log: LogArgs) -> ExitCode {
    let config = match load(None) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let log = match init_log(&log) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
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
        serve(config, log).await
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
    let config = Config::load(&text, &name).map_err(|errors| {
        for e in errors.iter() {
            eprintln!("error: {e}");
        }
        ExitCode::from(EXIT_CONFIG)
    })?;
    let problems = check_tls(&config);
    if problems.is_empty() {
        Ok(config)
    } else {
        for (path, e) in problems {
            eprintln!(
                "error: {}",
                pillion_config::ConfigError::located(&text, &name, &path, e)
            );
        }
        Err(ExitCode::from(EXIT_CONFIG))
    }
}

/// Loads every certificate, key and bundle, and compiles every policy, so that a missing or
/// malformed file is a config error before anything binds.
fn check_tls(config: &Config) -> Vec<(String, String)> {
    use pillion_tls::{authz::Policy, ClientTls, ServerTls, TlsMetrics};
    let metrics = TlsMetrics::default();
    let mut problems = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        if let Some(t) = l
            .tls
            .as_ref()
            .filter(|t| t.mode != pillion_config::TlsMode::Disabled)
        {
            if let Err(e) = ServerTls::new(&l.name, t, &metrics) {
                problems.push((format!("listeners[{i}].tls"), e.to_string()));
            }
        }
        if let Some(rules) = &l.authz {
            if let Err(e) = Policy::compile(&l.name, rules, &metrics) {
                problems.push((format!("listeners[{i}].authz"), e));
            }
        }
        for (j, r) in l.routes.iter().enumerate() {
            if let Some(rules) = &r.authz {
                if let Err(e) = Policy::compile(&l.name, rules, &metrics) {
                    problems.push((format!("listeners[{i}].routes[{j}].authz"), e));
                }
            }
        }
    }
    for (i, c) in config.clusters.iter().enumerate() {
        if let Some(t) = &c.tls {
            if let Err(e) = ClientTls::new(&c.name, t, false, &metrics) {
                problems.push((format!("clusters[{i}].tls"), e.to_string()));
            }
        }
    }
    problems
}

fn init_log(log: &LogArgs) -> Result<LogControl, String> {
    // NOTE: checked here, before logging starts: tracing reads a typo (`inof`) as a target and
    // would quietly log nothing.
    let (filter, from) = match &log.log_level {
        Some(l) => (Some(l.clone()), "--log-level"),
        None => (
            std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty()),
            "RUST_LOG",
        ),
    };
    if let Some(filter) = filter {
        pillion_config::check_log_filter(&filter).map_err(|e| format!("{from}: {e}"))?;
    }
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

/// Binds everything, serves until SIGTERM, SIGINT or `/shutdown`, then drains and exits.
/// `/drain` drains without exiting.
async fn serve(config: Config, log: LogControl) -> ExitCode {
    // Installed before anything is bound: a signal that arrives once the sidecar can be seen
    // (its ports, its `ready` line) is handled, never the default action that kills it.
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot install signal handlers: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    pillion_telemetry::register_process_metrics(
        &mut registry,
        env!("CARGO_PKG_VERSION"),
        env!("PILLION_COMMIT"),
    );
    let access_log = match &config.access_log {
        None => None,
        Some(cfg) => match AccessLog::start(
            cfg,
            metrics.access_log_lines.clone(),
            metrics.access_log_dropped.clone(),
        ) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        },
    };
    let tls_metrics = pillion_tls::TlsMetrics::register(&mut registry);
    let proxy = match Proxy::build(&config, &metrics, &tls_metrics, access_log.clone()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };

    registry.register_collector(Box::new(pillion_proxy::metrics::ClusterCollector::new(
        proxy.clusters(),
    )));
    let drain = CancellationToken::new();
    let shutdown = CancellationToken::new();
    let log = Arc::new(log);
    let clusters = proxy.clusters();
    let listeners = proxy.listeners();
    let controls = Controls {
        config_dump: config.dump(),
        clusters: Box::new(move || {
            serde_json::Value::Array(
                clusters
                    .iter()
                    .map(|c| {
                        let s = c.snapshot();
                        let endpoints: Vec<_> = s
                            .endpoints
                            .iter()
                            .map(|e| {
                                serde_json::json!({
                                    "address": e.addr.to_string(),
                                    "healthy": e.healthy,
                                    "ejected": e.ejected,
                                    "in_flight": e.in_flight,
                                    "latency_ms": e.ewma_ms,
                                })
                            })
                            .collect();
                        serde_json::json!({
                            "name": c.name(),
                            "balancer": s.balancer.name(),
                            "endpoints": endpoints,
                            "ejections_total": s.ejections_total,
                        })
                    })
                    .collect(),
            )
        }),
        listeners: Box::new(move || {
            serde_json::Value::Array(
                listeners
                    .iter()
                    .map(|l| {
                        serde_json::json!({
                            "name": l.name,
                            "address": l.address.to_string(),
                            "protocol": format!("{:?}", l.protocol).to_lowercase(),
                            "routes": l.routes,
                        })
                    })
                    .collect(),
            )
        }),
        log_filter: {
            let log = log.clone();
            Box::new(move || log.current())
        },
        set_log_filter: {
            let log = log.clone();
            Box::new(move |f| {
                pillion_config::check_log_filter(f)?;
                log.set(f).map(|()| log.current())
            })
        },
        drain: drain.clone(),
        shutdown: shutdown.clone(),
    };
    let admin = Admin::new(registry, controls);

    let admin_sock = match pillion_proxy::listen(config.admin.address) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "error: cannot listen on {} (admin.address): {e}",
                config.admin.address
            );
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let health_sock = match config.admin.health_address {
        None => None,
        Some(addr) => match pillion_proxy::listen(addr) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("error: cannot listen on {addr} (admin.health_address): {e}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        },
    };
    let bound = match proxy.bind() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let limits = Limits {
        header_timeout: config.admin.header_timeout.0,
        idle_timeout: config.admin.idle_timeout.0,
        max_connections: config.admin.max_connections,
    };
    tokio::spawn(admin.clone().serve(admin_sock, Port::Admin, limits));
    if let Some(sock) = health_sock {
        tokio::spawn(admin.clone().serve(sock, Port::Health, limits));
    }
    proxy.resolve().await;

    tokio::spawn(signals.watch(shutdown.clone(), access_log));
    let stop_accepting = CancellationToken::new();
    {
        let (drain, shutdown, stop, admin) = (
            drain.clone(),
            shutdown.clone(),
            stop_accepting.clone(),
            admin.clone(),
        );
        tokio::spawn(async move {
            tokio::select! {
                _ = drain.cancelled() => {},
                _ = shutdown.cancelled() => {},
            }
            admin.set_phase(Phase::Draining);
            stop.cancel();
        });
    }
    admin.set_phase(Phase::Ready);
    info!(listeners = config.listeners.len(), "ready");
    proxy
        .serve(bound, stop_accepting, config.drain_timeout.0)
        .await;
    if !shutdown.is_cancelled() {
        info!("drained; waiting for /shutdown or a signal to exit");
        shutdown.cancelled().await;
    }
    info!("exiting");
    ExitCode::SUCCESS
}

/// The signals the sidecar handles, registered with the runtime.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            usr1: signal(SignalKind::user_defined1())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// SIGTERM or SIGINT: drain and exit (a second one exits at once). SIGUSR1: reopen the
    /// access log. SIGHUP (a closed terminal, or a reload habit): logged and otherwise ignored,
    /// as Envoy does; the config is read once, at start.
    async fn watch(mut self, shutdown: CancellationToken, access_log: Option<AccessLog>) {
        let mut draining = false;
        loop {
            tokio::select! {
                _ = self.term.recv() => info!("SIGTERM"),
                _ = self.int.recv() => info!("SIGINT"),
                _ = self.usr1.recv() => {
                    if let Some(l) = &access_log {
                        l.reopen();
                    }
                    info!("SIGUSR1: reopening the access log");
                    continue;
                }
                _ = self.hup.recv() => {
                    info!("SIGHUP ignored: the config is read only at start; restart to apply a new one");
                    continue;
                }
            }
            if draining {
                warn!("second signal: exiting without waiting for the drain");
                std::process::exit(i32::from(EXIT_RUNTIME));
            }
            info!("draining");
            draining = true;
            shutdown.cancel();
        }
    }
}
