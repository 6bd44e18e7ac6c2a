//! The `dockside` binary: arguments, config (exit 64 on error), logging,
//! runtime, signals, then `dockside::run`.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use dockside::cli::{Cli, Cmd};
use dockside::{Config, EXIT_CONFIG, EXIT_STATE_DIR, RunError, config, logging, signals};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn load(cli_path: Option<&std::path::Path>, embedded: bool) -> Result<Config, config::ConfigError> {
    let mut env: HashMap<String, String> = std::env::vars().collect();
    if embedded {
        // The flag is `mqtt.embedded = true`, on every (re)load.
        env.insert("DOCKSIDE__MQTT__EMBEDDED".into(), "true".into());
    }
    let path = config::resolve_path(cli_path, &env);
    Config::load(path.as_deref(), &env)
}

/// `--help`, `--version`, completions and the man page: printed, exit 0.
/// Bad arguments: exit 64 like any configuration error.
fn parse_args() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(c) => Ok(c),
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG as u8 } else { 0 };
            let _ = e.print();
            Err(ExitCode::from(code))
        }
    }
}

fn print_bytes(b: &[u8]) -> ExitCode {
    use std::io::Write;
    match std::io::stdout().write_all(b) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dockside: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let Cli {
        command,
        config: cli_path,
        embedded_broker,
    } = match parse_args() {
        Ok(x) => x,
        Err(code) => return code,
    };
    match &command {
        Some(Cmd::Completions { shell }) => {
            return print_bytes(&dockside::cli::completions(*shell));
        }
        Some(Cmd::Manpage) => {
            return match dockside::cli::manpage() {
                Ok(m) => print_bytes(&m),
                Err(e) => {
                    eprintln!("dockside: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    let cfg = match load(cli_path.as_deref(), embedded_broker) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dockside: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    match command.unwrap_or(Cmd::Run) {
        Cmd::CheckConfig => {
            print!("{}", cfg.redacted_toml());
            return ExitCode::SUCCESS;
        }
        Cmd::Health => {
            let (ok, line) = dockside::health_socket::check(&cfg.state.dir);
            println!("{line}");
            return if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        Cmd::Run | Cmd::Completions { .. } | Cmd::Manpage => {}
    }
    logging::init(&cfg.log);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dockside: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let (mut hups, _signals) = match signals::install(shutdown.clone()) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!(error = %e, "cannot install signal handlers");
                return ExitCode::FAILURE;
            }
        };
        let (reload_tx, reload_rx) = mpsc::channel::<Config>(1);
        tokio::spawn(async move {
            while hups.recv().await.is_some() {
                match load(cli_path.as_deref(), embedded_broker) {
                    Ok(c) => {
                        let _ = reload_tx.send(c).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reload refused: keeping the running configuration")
                    }
                }
            }
        });
        tracing::info!(version = dockside::cli::VERSION, "dockside starting");
        match dockside::run(cfg, shutdown, reload_rx).await {
            Ok(()) => {
                tracing::info!("dockside stopped");
                ExitCode::SUCCESS
            }
            Err(e @ RunError::StateDir(_)) => {
                tracing::error!(error = %e, "cannot use the state directory");
                eprintln!("dockside: {e}");
                ExitCode::from(EXIT_STATE_DIR as u8)
            }
            Err(e @ (RunError::Config(_) | RunError::Embedded(_) | RunError::Http(_))) => {
                eprintln!("dockside: configuration error: {e}");
                ExitCode::from(EXIT_CONFIG as u8)
            }
            Err(e) => {
                tracing::error!(error = %e, "dockside failed");
                eprintln!("dockside: {e}");
                ExitCode::FAILURE
            }
        }
    });
    // Do not wait for idle pooled connections or lingering tasks.
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}
