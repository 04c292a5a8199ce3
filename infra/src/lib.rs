//! What every isotest service shares at its edges: the connection settings
//! ([`Endpoints`]), connecting to RabbitMQ with its topology declared ([`amqp`]) and
//! to Redis ([`store`]), the one idempotent write of a test result ([`results`]), the
//! cut of a result's output to its suite's budget ([`output_budget`]), the
//! one write of a suite's report and its reading ([`reports`]), the scheduler's state
//! and its atomic steps, from claim to the worker's fence ([`schedule`]), a suite's live
//! event stream for the dashboard ([`events`]), reading a suite's
//! record and results ([`suites`]), cancelling a suite ([`cancel`]), where a tenant's
//! URL may send a request ([`egress`]), logging
//! ([`telemetry`]), Prometheus metrics and the `/metrics` server ([`metrics`]) and the
//! shutdown signal ([`shutdown`]).

pub mod amqp;
pub mod cancel;
pub mod egress;
pub mod events;
pub mod metrics;
pub mod output_budget;
pub mod reports;
pub mod results;
pub mod schedule;
pub mod shutdown;
pub mod store;
pub mod suites;
pub mod telemetry;

use isotest_protocol::names::Namespace;

/// The local RabbitMQ with its default guest account.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The local Redis.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";

/// Where a service finds RabbitMQ and Redis, and the namespace it works in.
/// (The command line's flags for them, with these defaults, are in the cli crate.)
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// RabbitMQ URL.
    pub amqp_url: String,
    /// Redis URL.
    pub redis_url: String,
    /// Prefix of every queue, exchange and key, so deployments can share servers.
    pub namespace: Namespace,
}

/// An error and its causes on one line (`what failed: because: because`), the form
/// every log line and user-facing message takes.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A stable id for this process, reported as the `worker` of every result it writes.
pub fn process_id(role: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    let host = if host.is_empty() { "localhost" } else { host };
    format!("{role}-{host}-{}", std::process::id())
}
