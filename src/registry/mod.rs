//! Registry side of the image watcher: references and classification, and the
//! registry client (HEAD checks, auth, platform resolution, cooldowns).

pub mod client;
pub mod helpers;
pub mod reference;
pub mod tags;

pub use client::{Credentials, Platform, RegistryClient, RegistryError, Remote};
pub use reference::{Class, Reference, classify, unproven_verdict};
