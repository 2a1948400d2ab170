//! The `scopegate` command: `run`, `check`, `demo`. Exit codes: 0 ok, 1 runtime failure,
//! 2 bad configuration.

use clap::{Parser, Subcommand};
use scopegate::config::{Config, LogFormat};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "scopegate",
    version,
    about = "Enforces GitLab CI/CD job-token scope in front of a forge"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (SIGTERM/Ctrl-C: drain and exit 0; SIGHUP: reload the config).
    Run {
        #[arg(long, short, default_value = "proxy.yaml")]
        config: PathBuf,
    },
    /// Validate a config file and print a summary.
    Check {
        #[arg(long, short, default_value = "proxy.yaml")]
        config: PathBuf,
    },
    /// Start a demo forge with sample projects and tokens, and scopegate in front of it.
    Demo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("scopegate: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                print!("{}", c.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config } => {
            let loaded = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            scopegate::logging::init(loaded.log_format);
            runtime.block_on(run(config, loaded))
        }
        Command::Demo => {
            scopegate::logging::init(LogFormat::Text);
            match runtime.block_on(scopegate::demo::run_demo()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("scopegate demo: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

async fn run(path: PathBuf, config: Config) -> ExitCode {
    let running = match scopegate::start(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("scopegate: {e}");
            return ExitCode::from(1);
        }
    };
    scopegate::reload::until_shutdown(&running, &path).await;
    tracing::info!("shutting down: draining in-flight requests");
    running.shutdown().await;
    ExitCode::SUCCESS
}
