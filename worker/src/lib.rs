//! The worker: takes test messages off RabbitMQ ([`service`]), lays each out for its
//! framework ([`frameworks`]), runs it in a fresh sandbox ([`run`]), from a prepared build
//! where its framework compiles ([`prepare`]), and records the result in Redis before acking
//! ([`record`]), keeping passed results in the result cache where asked ([`cache`]).
//! Embedded mode reuses [`run`], [`prepare`] and [`frameworks`] without the
//! broker.

pub mod cache;
pub mod frameworks;
pub mod prepare;
pub mod record;
pub mod run;
pub mod service;
pub mod warm;

pub use run::{Runner, RunnerConfig};
pub use service::{Worker, WorkerConfig, WorkerError};
