//! The `pillion` command: run the sidecar, check a config, start the bundled echo app, or load-test.

mod echo;
mod run;

use clap::{Parser, Subcommand};
use std::{path::PathBuf, process::ExitCode};

/// Pillion: a light service-proxy sidecar.
#[derive(Debug, Parser)]
#[command(name = "pillion", version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("PILLION_COMMIT"), ")"), about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the sidecar.
    Run(run::RunArgs),
    /// Validate a config file: exit 0 when it is good, 2 with the errors when not.
    Check {
        /// The config file.
        file: PathBuf,
    },
    /// Run the bundled test upstream: answers every request, echoing what it saw.
    Echo(echo::EchoArgs),
    /// Run the echo app on 127.0.0.1:8080 and the sidecar with the default config in front of it.
    Demo(run::LogArgs),
    /// Create a development CA and workload certificates with SPIFFE identities.
    Cert(pillion_tls::cert::CertArgs),
    /// Load-test an HTTP server: closed loop (as fast as responses come) or open loop (--rate).
    Bench(pillion_load::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Check { file } => run::check(&file),
        Command::Echo(args) => echo::main(args),
        Command::Demo(log) => run::demo(log),
        Command::Bench(args) => pillion_load::main(args),
        Command::Cert(args) => pillion_tls::cert::main(args),
    }
}
