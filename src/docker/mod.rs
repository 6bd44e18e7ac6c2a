//! Docker Engine API client over reqwest (unix socket, TCP, TLS), the minimal
//! models dockside reads, and the `/events` line stream.

pub mod client;
pub mod exec;
pub mod logs;
pub mod models;
pub mod prune;
pub mod pull;
pub mod recreate;

pub use client::{DockerClient, DockerError, EventItem, EventStream};
