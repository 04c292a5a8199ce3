//! The producer's settings: where RabbitMQ and Redis are, where to listen, how large a
//! request may be, the deadline of a suite that names none, whether the API is open
//! to requests without a token (it is not, unless the operator says so), and how the
//! dispatcher keeps the queue.

use std::net::SocketAddr;
use std::time::Duration;

use isotest_infra::Endpoints;
use isotest_infra::egress::EgressPolicy;

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

/// Everything [`crate::Producer::build`] needs (the command line's `isotest producer`
/// builds it from its flags; [`Config::new`] gives the same defaults in code).
#[derive(Debug, Clone)]
pub struct Config {
    pub endpoints: Endpoints,
    /// Address of the HTTP API; port 0 picks a free port.
    pub listen: SocketAddr,
    pub limits: Limits,
    /// Deadline of a suite whose manifest sets none.
    pub default_deadline: Duration,
    /// Accept /v1 requests without a token (anonymous, no quota): for a producer only
    /// its own machine can reach. Otherwise every /v1 request needs a token.
    pub open: bool,
    pub dispatch: crate::dispatch::DispatchConfig,
    /// Which internal hosts a suite's `callback_url` may name (none by default).
    pub egress: EgressPolicy,
    /// The history store (`postgres://…`): quarantined tests, and reports of suites
    /// whose Redis keys have expired. None: no quarantine, and a suite is readable only
    /// while Redis keeps it.
    pub history_url: Option<String>,
    /// The result cache: its salt and how long entries live.
    pub cache: CacheConfig,
    /// The URL clients reach this API at (`https://isotest.example.com`), the base of
    /// the absolute links it hands out, such as a webhook's `report_url`. Without it,
    /// the scheme and host a suite was submitted to (`Host`, `X-Forwarded-Proto`).
    pub public_url: Option<String>,
}

/// How long a result cache entry lives when none is given.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The result cache's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Mixed into every result cache key: changing it disowns the whole cache (every
    /// entry written before stops matching). Empty by default.
    pub cache_salt: String,
    /// How long a result cache entry lives after it is written.
    pub cache_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            cache_salt: String::new(),
            cache_ttl: DEFAULT_CACHE_TTL,
        }
    }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest `POST /v1/suites` body, in bytes.
    pub max_manifest_bytes: u64,
    /// Largest `PUT /v1/blobs` body, in bytes.
    pub max_blob_bytes: u64,
    /// The most blob bytes held in memory at once over every upload; an upload waits
    /// for room (up to 30s or a quarter of the upload timeout, then 503), so many
    /// uploads cannot exhaust the producer.
    pub upload_buffer_bytes: u64,
    /// How long one blob upload may take; a slower one is cut off with 408.
    pub upload_timeout: Duration,
    /// The most blobs one token may have stored at once.
    pub max_blobs_per_token: u32,
    /// The most blob bytes one token may have stored at once.
    pub max_blob_bytes_per_token: u64,
    /// How long a blob is kept after its upload or its last use by a suite; a suite's
    /// deadline extends it.
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
            dispatch: crate::dispatch::DispatchConfig::default(),
            egress: EgressPolicy::default(),
            history_url: None,
            cache: CacheConfig::default(),
            public_url: None,
        }
    }
}
