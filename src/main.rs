//! The `dockside` binary: arguments, config (exit 64 on error), logging,
//! runtime, signals, then `dockside::run`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use dockside::{Config, EXIT_CONFIG, EXIT_STATE_DIR, RunError, config, logging, signals};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const USAGE: &str = "\
dockside — mirrors Docker engines onto MQTT

USAGE:
    dockside [--config PATH] [--embedded-broker] [run]
                                            run the daemon (--embedded-broker: with its own
                                            MQTT broker on 127.0.0.1:1883, mqtt.embedded)
    dockside [--config PATH] check-config   print the effective config (secrets redacted)
    dockside [--config PATH] health         is the running instance (same state.dir) healthy?
                                            exit 0 / 1, one line saying why
    dockside --version | --help

The config file is --config PATH, else $DOCKSIDE_CONFIG, else /etc/dockside/dockside.toml
when it exists; every key can be overridden with DOCKSIDE__<SECTION>__<KEY>.";

enum Command {
    Run,
    CheckConfig,
    Health,
}

struct Args {
    command: Command,
    config: Option<PathBuf>,
    embedded_broker: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut path = None;
    let mut embedded_broker = false;
    let mut command = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "-c" | "--config" => {
                path = Some(PathBuf::from(args.next().ok_or("--config needs a path")?));
            }
            s if s.starts_with("--config=") => {
                path = Some(PathBuf::from(&s["--config=".len()..]));
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "-V" | "--version" => {
                println!("dockside {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            "--embedded-broker" => embedded_broker = true,
            "run" if command.is_none() => command = Some(Command::Run),
            "check-config" if command.is_none() => command = Some(Command::CheckConfig),
            "health" if command.is_none() => command = Some(Command::Health),
            other => return Err(format!("unexpected argument `{other}`")),
        }
    }
    Ok(Args {
        command: command.unwrap_or(Command::Run),
        config: path,
        embedded_broker,
    })
}

fn load(cli_path: Option<&std::path::Path>, embedded: bool) -> Result<Config, config::ConfigError> {
    let mut env: HashMap<String, String> = std::env::vars().collect();
    if embedded {
        // The flag is `mqtt.embedded = true`, on every (re)load.
        env.insert("DOCKSIDE__MQTT__EMBEDDED".into(), "true".into());
    }
    let path = config::resolve_path(cli_path, &env);
    Config::load(path.as_deref(), &env)
}

fn main() -> ExitCode {
    let Args {
        command,
        config: cli_path,
        embedded_broker,
    } = match parse_args() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("dockside: {e}\n\n{USAGE}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let cfg = match load(cli_path.as_deref(), embedded_broker) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dockside: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    match command {
        Command::CheckConfig => {
            print!("{}", cfg.redacted_toml());
            return ExitCode::SUCCESS;
        }
        Command::Health => {
            let (ok, line) = dockside::health_socket::check(&cfg.state.dir);
            println!("{line}");
            return if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        Command::Run => {}
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
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "dockside starting");
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
