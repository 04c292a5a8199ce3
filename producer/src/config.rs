//! The producer's settings: where RabbitMQ and Redis are, where to listen, how large a
//! request may be, the deadline of a suite that names none, whether the API is open
//! to requests without a token (it is not, unless the operator says so), and how the
//! dispatcher keeps the queue.

use std::net::SocketAddr;
use std::time::Duration;

use isotest_infra::Endpoints;
use isotest_infra::egress::EgressArgs;

/// The address the producer listens on when none is given.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// The largest suite submission, in bytes (the manifest parser's own limit).
pub const DEFAULT_MAX_MANIFEST_BYTES: u64 = isotest_protocol::manifest::MAX_MANIFEST_BYTES as u64;
/// The largest workspace blob, in bytes.
pub const DEFAULT_MAX_BLOB_BYTES: u64 = 256 * 1024 * 1024;
/// The most blob bytes the producer holds in memory at once, over every upload.
pub const DEFAULT_UPLOAD_BUFFER_BYTES: u64 = 1024 * 1024 * 1024;
/// How long one blob upload may take, from its first byte to its last.
pub const DEFAULT_UPLOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// The most blobs one token may have stored at once.
pub const DEFAULT_MAX_BLOBS_PER_TOKEN: u32 = 1000;
/// The most blob bytes one token may have stored at once.
pub const DEFAULT_MAX_BLOB_BYTES_PER_TOKEN: u64 = 4 * 1024 * 1024 * 1024;
/// How long a blob is kept after its upload or its last use by a suite.
pub const DEFAULT_BLOB_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
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
    /// Accept /v1 requests without a token (anonymous, no quota): for a producer only
    /// its own machine can reach. Without it every /v1 request needs a token from
    /// `isotest token add NAME`. `isotest up` is open by default when it listens on a
    /// loopback address.
    #[arg(long, env = "ISOTEST_OPEN", conflicts_with = "require_token")]
    pub open: bool,
    /// Refuse every /v1 request without a valid API token: the producer's default,
    /// said explicitly (for `isotest up`, which is otherwise open on loopback).
    #[arg(long, env = "ISOTEST_REQUIRE_TOKEN")]
    pub require_token: bool,
    #[command(flatten)]
    pub dispatch: crate::dispatch::DispatchConfig,
    /// Which internal hosts a suite's `callback_url` may name (none by default).
    #[command(flatten)]
    pub egress: EgressArgs,
    /// The history store (`postgres://…`): quarantined tests, and reports of suites
    /// whose Redis keys have expired. None: no quarantine, and a suite is readable only
    /// while Redis keeps it.
    #[arg(long, env = "ISOTEST_HISTORY_URL")]
    pub history_url: Option<String>,
    /// The URL clients reach this API at (`https://isotest.example.com`), the base of
    /// the absolute links it hands out, such as a webhook's `report_url`. Without it,
    /// the scheme and host a suite was submitted to (`Host`, `X-Forwarded-Proto`).
    #[arg(long, env = "ISOTEST_PUBLIC_URL", value_parser = parse_public_url)]
    pub public_url: Option<String>,
}

/// A public URL: `http` or `https`, with a host, kept without a trailing slash.
///
/// # Errors
///
/// Returns a one-line reason for anything else.
pub fn parse_public_url(text: &str) -> Result<String, String> {
    let url = url::Url::parse(text).map_err(|e| {
        format!("`{text}` is not a URL ({e}); give one like https://isotest.example.com")
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "`{text}` is not an http(s) URL with a host; give one like https://isotest.example.com"
        ));
    }
    Ok(text.trim_end_matches('/').to_owned())
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
    /// The most blob bytes held in memory at once over every upload; an upload waits
    /// for room (up to 30s or a quarter of --upload-timeout, then 503), so many
    /// uploads cannot exhaust the producer.
    #[arg(long, env = "ISOTEST_UPLOAD_BUFFER_BYTES", default_value_t = DEFAULT_UPLOAD_BUFFER_BYTES)]
    pub upload_buffer_bytes: u64,
    /// How long one blob upload may take ("5m"); a slower one is cut off with 408.
    #[arg(long, env = "ISOTEST_UPLOAD_TIMEOUT", default_value = "5m", value_parser = parse_time)]
    pub upload_timeout: Duration,
    /// The most blobs one token may have stored at once.
    #[arg(long, env = "ISOTEST_MAX_BLOBS_PER_TOKEN", default_value_t = DEFAULT_MAX_BLOBS_PER_TOKEN)]
    pub max_blobs_per_token: u32,
    /// The most blob bytes one token may have stored at once.
    #[arg(long, env = "ISOTEST_MAX_BLOB_BYTES_PER_TOKEN", default_value_t = DEFAULT_MAX_BLOB_BYTES_PER_TOKEN)]
    pub max_blob_bytes_per_token: u64,
    /// How long a blob is kept after its upload or its last use by a suite ("7d" is
    /// written "168h"); a suite's deadline extends it.
    #[arg(long, env = "ISOTEST_BLOB_TTL", default_value = "168h", value_parser = parse_time)]
    pub blob_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_manifest_bytes: DEFAULT_MAX_MANIFEST_BYTES,
            max_blob_bytes: DEFAULT_MAX_BLOB_BYTES,
            upload_buffer_bytes: DEFAULT_UPLOAD_BUFFER_BYTES,
            upload_timeout: DEFAULT_UPLOAD_TIMEOUT,
            max_blobs_per_token: DEFAULT_MAX_BLOBS_PER_TOKEN,
            max_blob_bytes_per_token: DEFAULT_MAX_BLOB_BYTES_PER_TOKEN,
            blob_ttl: DEFAULT_BLOB_TTL,
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
            open: false,
            require_token: false,
            dispatch: crate::dispatch::DispatchConfig::default(),
            egress: EgressArgs::default(),
            history_url: None,
            public_url: None,
        }
    }
}

fn parse_time(text: &str) -> Result<Duration, String> {
    isotest_protocol::duration::parse(text).map_err(|e| format!("duration {e}"))
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
        assert!(
            !cli.config.open,
            "a producer is closed unless told otherwise"
        );
    }

    #[test]
    fn open_and_require_token_exclude_each_other() {
        let cli = Cli::try_parse_from(["producer", "--open"]).expect("--open parses");
        assert!(cli.config.open);
        let err = Cli::try_parse_from(["producer", "--open", "--require-token"]).expect_err("both");
        assert!(err.to_string().contains("cannot be used with"), "{err}");
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
