//! dockside: mirrors Docker engines onto MQTT.
//!
//! Shape (SPEC §1): a supervisor with one task per endpoint, one MQTT task that
//! owns the client, and a coalescing outbox between them. `run` is what the
//! binary calls and what tests can drive directly.
//!
//! "SPEC §n" in comments is section n of `docs/SPEC.md`, the product
//! contract (topics, payloads, command words, config keys) that Home
//! Assistant, Jeedom and users' automations rely on.

pub mod backoff;
pub mod cli;
pub mod clock;
pub mod command;
pub mod config;
pub mod docker;
pub mod embedded;
pub mod embedded_gate;
pub mod endpoint;
pub mod filter;
pub mod health_socket;
pub mod history;
pub mod homeassistant;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod mqtt;
pub mod panel;
pub mod payloads;
pub mod persist;
pub mod portainer;
pub mod problem;
#[cfg(test)]
mod proptests;
pub mod registry;
pub mod signals;
pub mod stacks;
pub mod stats;
pub mod status_server;
pub mod supervise;
pub mod supervisor;
pub mod topics;
pub mod watcher;

pub use config::Config;
pub use supervisor::{RunError, run};

/// Exit code for configuration errors (EX_USAGE / EX_CONFIG family, as linkerd2-proxy).
pub const EXIT_CONFIG: i32 = 64;
/// Exit code when the state directory cannot be used (EX_CANTCREAT).
pub const EXIT_STATE_DIR: i32 = 73;
