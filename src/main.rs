//! The `scopegate` command: `run`, `check`, `demo`, `allowlist suggest`. Exit codes: 0 ok,
//! 1 runtime failure, 2 bad configuration.

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
        /// Also check every configured id/path pair against the forge.
        #[arg(long)]
        forge: bool,
    },
    /// Start a demo forge with sample projects and tokens, and scopegate in front of it.
    Demo,
    /// Work with inbound allowlists.
    Allowlist {
        #[command(subcommand)]
        command: AllowlistCommand,
    },
}

#[derive(Subcommand)]
enum AllowlistCommand {
    /// Print the inbound allowlist entries (YAML for `projects:`) that would allow the
    /// cross-project job-token traffic an auth log recorded as denied or would_deny.
    Suggest {
        /// The auth log (`auth_log.path`), one JSON line per job-token request.
        #[arg(long)]
        auth_log: PathBuf,
        /// The config in force: entries it already allows are left out, and the projects it
        /// lists are printed whole (existing inbound list plus the new entries).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

// mimalloc rather than glibc's malloc: a request's short-lived allocations (header maps,
// paths, log lines) were ~15% of its instructions in malloc/free; callgrind 110.6k -> 101.7k
// instructions per allowed request. Built without transparent huge pages (`no_thp`): with
// them its arenas took idle RSS from 8 to 17 MiB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let workers = match workers() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("scopegate: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match build_runtime(workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("scopegate: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::Allowlist {
            command: AllowlistCommand::Suggest { auth_log, config },
        } => suggest(&auth_log, config.as_deref()),
        Command::Check { config, forge } => match Config::load(&config) {
            Ok(c) => {
                print!("{}", c.summary());
                if forge {
                    return runtime.block_on(check_forge(c));
                }
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
            // Held to the end of the arm: dropping it flushes the last lines.
            let _log = scopegate::logging::init(loaded.log_format);
            runtime.block_on(run(config, loaded))
        }
        Command::Demo => {
            let _log = scopegate::logging::init(LogFormat::Text);
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

/// `allowlist suggest`: exit 0 with the suggestion on stdout (unreadable log lines reported
/// on stderr and skipped), 1 when the log cannot be read, 2 for a bad config.
fn suggest(auth_log: &std::path::Path, config: Option<&std::path::Path>) -> ExitCode {
    let config = match config.map(Config::load).transpose() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let text = match std::fs::read(auth_log) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => {
            eprintln!("scopegate: cannot read {}: {e}", auth_log.display());
            return ExitCode::from(1);
        }
    };
    let (lines, bad) = scopegate::suggest::parse(&text);
    for b in &bad {
        eprintln!("{}:{}: skipped: {}", auth_log.display(), b.line, b.message);
    }
    let suggestions = scopegate::suggest::aggregate(&lines, config.as_ref());
    print!(
        "{}",
        scopegate::suggest::render(&suggestions, config.as_ref())
    );
    ExitCode::SUCCESS
}

/// How many threads serve requests: `SCOPEGATE_WORKERS` when set, else the CPUs this process
/// may run on (its affinity mask and cgroup quota, as `available_parallelism` reads them), so
/// `taskset -c 1 scopegate run` or a one-CPU container gets one.
fn workers() -> Result<usize, String> {
    match std::env::var("SCOPEGATE_WORKERS") {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(format!(
                "SCOPEGATE_WORKERS must be a whole number of threads, at least 1 (got {v:?})"
            )),
        },
        Err(_) => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}

/// One worker: Tokio's current-thread scheduler, which on one core does the same work as a
/// one-worker multi-thread runtime without its cross-thread wake-ups, work-stealing queues and
/// atomics (measured in bench/RESULTS.md). More: the multi-thread scheduler with that many
/// workers. Blocking work (file reads on reload) has its own pool either way.
fn build_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
}

async fn run(path: PathBuf, config: Config) -> ExitCode {
    // Before listening, so a SIGTERM or SIGHUP sent as soon as the port answers is handled
    // rather than killing the process.
    let triggers = scopegate::reload::Triggers::install(&path);
    let running = match scopegate::start(config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("scopegate: {e}");
            return ExitCode::from(1);
        }
    };
    let stop = triggers.until_shutdown(&running).await;
    tracing::info!(signal = ?stop, "shutting down: draining in-flight requests");
    match stop {
        scopegate::reload::Stop::Terminate => running.terminate().await,
        scopegate::reload::Stop::Interrupt => running.shutdown().await,
    }
    ExitCode::SUCCESS
}

/// `check --forge`: every configured id must exist at the forge under the configured path.
async fn check_forge(config: Config) -> ExitCode {
    let config = std::sync::Arc::new(config);
    let client = match scopegate::forge::build_client(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("scopegate: {e}");
            return ExitCode::from(1);
        }
    };
    let resolver = scopegate::resolve::Resolver::new(client, config.clone());
    let mut problems = 0;
    for p in &config.projects {
        match resolver
            .forge_project(&scopegate::config::Ref::Id(p.id))
            .await
        {
            Ok(Some(found)) => match &p.path {
                Some(path) if *path != found.path => {
                    problems += 1;
                    println!(
                        "MISMATCH project {}: config says {path}, the forge says {}",
                        p.id, found.path
                    );
                }
                _ => println!("ok       project {} = {}", p.id, found.path),
            },
            Ok(None) => {
                problems += 1;
                let hint = if resolver.has_service_token() {
                    ""
                } else {
                    " (without a service token only public projects are visible)"
                };
                println!("MISSING  project {}: not found at the forge{hint}", p.id);
            }
            Err(e) => {
                eprintln!("scopegate: forge look-up failed: {e}");
                return ExitCode::from(1);
            }
        }
    }
    if problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}
