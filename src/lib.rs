//! scopegate: a reverse proxy that enforces GitLab CI/CD job-token scope in front of a
//! GitLab-compatible forge.
//!
//! The request's phases are written down once, in [`gate`]:
//! extract ([`credentials`]) → resolve ([`jobs`]) → target ([`canonical`], [`target`],
//! [`resolve`]) → decide ([`policy`]) → forward ([`forward`]) → log ([`gate::access`]).
//! [`suggest`] reads the authentication log back into inbound allowlist entries.
//! Extraction, classification and policy are pure functions of the request head, the config
//! and the job's facts; every piece of I/O (listeners, the forge client, caches) lives at the
//! edges ([`server`], [`forge`], [`jobs`], [`resolve`]).
#![forbid(unsafe_code)]

pub mod admin;
pub mod canonical;
pub mod config;
pub mod credentials;
pub mod demo;
pub mod error;
pub mod forge;
pub mod forward;
pub mod gate;
pub mod inspect;
pub mod jobs;
pub mod logging;
pub mod policy;
pub mod reload;
pub mod resolve;
pub mod secret;
pub mod server;
pub mod suggest;
pub mod target;

pub use config::Config;
pub use server::{start, Running};
