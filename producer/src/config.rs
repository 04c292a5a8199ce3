//! The producer's settings: where RabbitMQ and Redis are, where to listen, how large a
//! request may be, the deadline of a suite that names none, whether every request
//! needs an API token, and how the dispatcher keeps the queue.

use std::net::SocketAddr;
use std::time::Duration;

use isotest_infra::Endpoints;

/// The address the producer listens on when none is given.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// The largest suite submission, in bytes (the manifest parser's own limit).
pub const DEFAULT_MAX_MANIFEST_BYTES: u64 = isotest_protocol::manifest::MAX_MANIFEST_BYTES as u64;
/// The largest workspace blob, in bytes.
pub const DEFAULT_MAX_BLOB_BYTES: u64 = 256 * 1024 * 1024;
/// How long a suite may run when its manifest sets no `deadline`.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(3600);

/// Everything [`crate::Producer::build`] needs.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    #[command(flatten)]
    pub endpoints: Endpoints,
    /// Address of the HTTP API; port 0 picks a free port.
    #[arg(long, env = "ISOTEST_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub limits: Limits,
    /// Deadline of a suite whose manifest sets none ("1h", "90m", ...).
    #[arg(long, env = "ISOTEST_DEFAULT_DEADLINE", default_value = "1h", value_parser = parse_duration)]
    pub default_deadline: Duration,
    /// Refuse every /v1 request without a valid API token, even while no token exists
    /// (without it, the API is open until the first `isotest token add`).
    #[arg(long, env = "ISOTEST_REQUIRE_TOKEN")]
    pub require_token: bool,
    #[command(flatten)]
    pub dispatch: crate::dispatch::DispatchConfig,
}

/// Request size limits; a larger request is answered 413.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct Limits {
    /// Largest `POST /v1/suites` body, in bytes.
    #[arg(long, env = "ISOTEST_MAX_MANIFEST_BYTES", default_value_t = DEFAULT_MAX_MANIFEST_BYTES)]
    pub max_manifest_bytes: u64,
    /// Largest `PUT /v1/blobs` body, in bytes.
    #[arg(long, env = "ISOTEST_MAX_BLOB_BYTES", default_value_t = DEFAULT_MAX_BLOB_BYTES)]
    pub max_blob_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: DEFAULT_MAX_MANIFEST_BYTES,
            max_blob_bytes: DEFAULT_MAX_BLOB_BYTES,
        }
    }
}

impl Config {
    /// The defaults for everything but the endpoints.
    pub fn new(endpoints: Endpoints, listen: SocketAddr) -> Config {
        Config {
            endpoints,
            listen,
            limits: Limits::default(),
            default_deadline: DEFAULT_DEADLINE,
            require_token: false,
            dispatch: crate::dispatch::DispatchConfig::default(),
        }
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    isotest_protocol::duration::parse(text).map_err(|e| format!("deadline {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn defaults_come_from_the_constants() {
        let cli = Cli::try_parse_from(["producer"]).expect("defaults parse");
        assert_eq!(cli.config.limits, Limits::default());
        assert_eq!(cli.config.default_deadline, DEFAULT_DEADLINE);
        assert_eq!(cli.config.listen.port(), 8080);
    }

    #[test]
    fn refuses_a_bad_deadline() {
        let err = Cli::try_parse_from(["producer", "--default-deadline", "0s"])
            .expect_err("zero deadline");
        assert!(
            err.to_string().contains("must be greater than zero"),
            "{err}"
        );
    }
}
