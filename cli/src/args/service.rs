//! The flags the service libraries are configured from, each set of them turned into
//! the library's plain config: where RabbitMQ and Redis are ([`EndpointsArgs`] →
//! [`Endpoints`]), which internal hosts a callback may reach ([`EgressArgs`] →
//! [`EgressPolicy`]) and the producer's settings ([`ProducerArgs`] →
//! [`isotest_producer::Config`]). The libraries know nothing of the command line.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use isotest_infra::egress::{BadAllowEntry, EgressPolicy};
use isotest_infra::{DEFAULT_AMQP_URL, DEFAULT_REDIS_URL, Endpoints};
use isotest_producer::config::{
    DEFAULT_LISTEN, DEFAULT_MAX_BLOB_BYTES, DEFAULT_MAX_BLOB_BYTES_PER_TOKEN,
    DEFAULT_MAX_BLOBS_PER_TOKEN, DEFAULT_MAX_MANIFEST_BYTES, DEFAULT_UPLOAD_BUFFER_BYTES,
};
use isotest_producer::dispatch::DispatchConfig;
use isotest_protocol::names::Namespace;

/// Where a service finds RabbitMQ and Redis, and the namespace it works in.
#[derive(Debug, Clone, Args)]
pub struct EndpointsArgs {
    /// RabbitMQ URL.
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_AMQP_URL)]
    pub amqp_url: String,
    /// Redis URL.
    #[arg(long, env = "REDIS_URL", default_value = DEFAULT_REDIS_URL)]
    pub redis_url: String,
    /// Prefix of every queue, exchange and key, so deployments can share servers.
    #[arg(long, env = "ISOTEST_NAMESPACE", default_value = Namespace::DEFAULT, value_parser = parse_namespace)]
    pub namespace: Namespace,
}

fn parse_namespace(text: &str) -> Result<Namespace, String> {
    Namespace::new(text).map_err(|e| e.to_string())
}

impl From<EndpointsArgs> for Endpoints {
    fn from(args: EndpointsArgs) -> Endpoints {
        Endpoints {
            amqp_url: args.amqp_url,
            redis_url: args.redis_url,
            namespace: args.namespace,
        }
    }
}

impl EndpointsArgs {
    /// The endpoints these flags name.
    pub fn endpoints(&self) -> Endpoints {
        self.clone().into()
    }
}

/// The operator's exceptions to the egress check, as a service's flags read them.
#[derive(Debug, Clone, Default, Args)]
pub struct EgressArgs {
    /// Let callback URLs reach this host name, IP address or network (CIDR) although it
    /// is internal (loopback, link-local, private); repeat it or separate entries with
    /// commas. By default a callback may reach public addresses only.
    #[arg(
        long = "allow-callback-host",
        env = "ISOTEST_ALLOW_CALLBACK_HOSTS",
        value_delimiter = ',',
        value_name = "HOST|CIDR",
        value_parser = parse_allow_entry
    )]
    pub allow_callback_hosts: Vec<String>,
}

fn parse_allow_entry(text: &str) -> Result<String, BadAllowEntry> {
    EgressPolicy::allowing(&[text]).map(|_| text.to_owned())
}

impl EgressArgs {
    /// The policy these flags describe. Every entry was checked as the flags were
    /// parsed; one that was not (set in code) makes the policy allow nothing extra.
    pub fn policy(&self) -> EgressPolicy {
        EgressPolicy::allowing(&self.allow_callback_hosts).unwrap_or_default()
    }
}

/// `isotest producer`, and the producer inside `isotest up`.
#[derive(Debug, Clone, Args)]
pub struct ProducerArgs {
    #[command(flatten)]
    pub endpoints: EndpointsArgs,
    /// Address of the HTTP API; port 0 picks a free port.
    #[arg(long, env = "ISOTEST_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub limits: LimitsArgs,
    /// Deadline of a suite whose manifest sets none ("1h", "90m", ...).
    #[arg(long, env = "ISOTEST_DEFAULT_DEADLINE", default_value = "1h", value_parser = parse_deadline)]
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
    pub dispatch: DispatchArgs,
    /// Which internal hosts a suite's `callback_url` may name (none by default).
    #[command(flatten)]
    pub egress: EgressArgs,
    /// The history store (`postgres://…`): quarantined tests, and reports of suites
    /// whose Redis keys have expired. None: no quarantine, and a suite is readable only
    /// while Redis keeps it.
    #[arg(long, env = "ISOTEST_HISTORY_URL")]
    pub history_url: Option<String>,
    /// The result cache: its salt and how long entries live.
    #[command(flatten)]
    pub cache: CacheArgs,
    /// The URL clients reach this API at (`https://isotest.example.com`), the base of
    /// the absolute links it hands out, such as a webhook's `report_url`. Without it,
    /// the scheme and host a suite was submitted to (`Host`, `X-Forwarded-Proto`).
    #[arg(long, env = "ISOTEST_PUBLIC_URL", value_parser = isotest_producer::config::parse_public_url)]
    pub public_url: Option<String>,
}

/// The result cache's settings.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct CacheArgs {
    /// Mixed into every result cache key: changing it disowns the whole cache (every
    /// entry written before stops matching). Empty by default.
    #[arg(long, env = "ISOTEST_CACHE_SALT", default_value = "")]
    pub cache_salt: String,
    /// How long a result cache entry lives after it is written ("168h").
    #[arg(long, env = "ISOTEST_CACHE_TTL", default_value = "168h", value_parser = parse_cache_ttl)]
    pub cache_ttl: Duration,
}

fn parse_cache_ttl(text: &str) -> Result<Duration, String> {
    isotest_protocol::duration::parse(text).map_err(|e| format!("duration {e}"))
}

impl From<CacheArgs> for isotest_producer::CacheConfig {
    fn from(args: CacheArgs) -> isotest_producer::CacheConfig {
        isotest_producer::CacheConfig {
            cache_salt: args.cache_salt,
            cache_ttl: args.cache_ttl,
        }
    }
}

impl From<ProducerArgs> for isotest_producer::Config {
    fn from(args: ProducerArgs) -> isotest_producer::Config {
        isotest_producer::Config {
            endpoints: args.endpoints.into(),
            listen: args.listen,
            limits: args.limits.into(),
            default_deadline: args.default_deadline,
            open: args.open,
            dispatch: args.dispatch.into(),
            egress: args.egress.policy(),
            history_url: args.history_url,
            cache: args.cache.into(),
            public_url: args.public_url,
        }
    }
}

/// Request size limits; a larger request is answered 413.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Args)]
pub struct LimitsArgs {
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

impl From<LimitsArgs> for isotest_producer::Limits {
    fn from(args: LimitsArgs) -> isotest_producer::Limits {
        isotest_producer::Limits {
            max_manifest_bytes: args.max_manifest_bytes,
            max_blob_bytes: args.max_blob_bytes,
            upload_buffer_bytes: args.upload_buffer_bytes,
            upload_timeout: args.upload_timeout,
            max_blobs_per_token: args.max_blobs_per_token,
            max_blob_bytes_per_token: args.max_blob_bytes_per_token,
            blob_ttl: args.blob_ttl,
        }
    }
}

/// How the dispatcher keeps the queue.
#[derive(Debug, Clone, Copy, PartialEq, Args)]
pub struct DispatchArgs {
    /// Tests kept ready in RabbitMQ per worker slot (slots: the live workers'
    /// --concurrency, or the queue's consumers if more). Small keeps the order fair;
    /// at least 1 keeps every free slot fed.
    #[arg(
        long = "dispatch-ahead",
        env = "ISOTEST_DISPATCH_AHEAD",
        default_value_t = 2.0
    )]
    pub ahead: f64,
    /// The fewest tests kept ready, whatever the slots.
    #[arg(
        long = "dispatch-min-ready",
        env = "ISOTEST_DISPATCH_MIN_READY",
        default_value_t = 4
    )]
    pub min_ready: u32,
    /// How long the dispatcher lease lasts without renewal: how soon a standby producer
    /// takes over from one that died.
    #[arg(long = "dispatch-lease", env = "ISOTEST_DISPATCH_LEASE", default_value = "3s", value_parser = parse_lease)]
    pub lease: Duration,
}

impl From<DispatchArgs> for DispatchConfig {
    fn from(args: DispatchArgs) -> DispatchConfig {
        DispatchConfig {
            ahead: args.ahead,
            min_ready: args.min_ready,
            lease: args.lease,
        }
    }
}

fn parse_time(text: &str) -> Result<Duration, String> {
    isotest_protocol::duration::parse(text).map_err(|e| format!("duration {e}"))
}

fn parse_deadline(text: &str) -> Result<Duration, String> {
    isotest_protocol::duration::parse(text).map_err(|e| format!("deadline {e}"))
}

fn parse_lease(text: &str) -> Result<Duration, String> {
    isotest_protocol::duration::parse(text).map_err(|e| format!("lease {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use isotest_producer::config::{DEFAULT_BLOB_TTL, DEFAULT_DEADLINE, DEFAULT_UPLOAD_TIMEOUT};

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        producer: ProducerArgs,
    }

    fn config(args: &[&str]) -> Result<isotest_producer::Config, clap::Error> {
        let args = std::iter::once("producer").chain(args.iter().copied());
        Cli::try_parse_from(args).map(|cli| cli.producer.into())
    }

    /// The flags' defaults are the library's own, so a producer built in code
    /// (`Config::new`, the tests, the bench) behaves as one started bare.
    #[test]
    fn defaults_come_from_the_constants() {
        let parsed = config(&[]).expect("defaults parse");
        let built = isotest_producer::Config::new(
            Endpoints {
                amqp_url: DEFAULT_AMQP_URL.into(),
                redis_url: DEFAULT_REDIS_URL.into(),
                namespace: Namespace::new(Namespace::DEFAULT).expect("namespace"),
            },
            DEFAULT_LISTEN.parse().expect("address"),
        );
        assert_eq!(parsed.limits, built.limits);
        assert_eq!(parsed.dispatch, built.dispatch);
        assert_eq!(parsed.egress, built.egress);
        assert_eq!(parsed.cache, built.cache);
        assert_eq!(parsed.default_deadline, DEFAULT_DEADLINE);
        assert_eq!(parsed.limits.upload_timeout, DEFAULT_UPLOAD_TIMEOUT);
        assert_eq!(parsed.limits.blob_ttl, DEFAULT_BLOB_TTL);
        assert_eq!(parsed.listen.port(), 8080);
        assert!(!parsed.open, "a producer is closed unless told otherwise");
        assert_eq!(parsed.history_url, None);
    }

    #[test]
    fn open_and_require_token_exclude_each_other() {
        assert!(config(&["--open"]).expect("--open parses").open);
        let err = config(&["--open", "--require-token"]).expect_err("both");
        assert!(err.to_string().contains("cannot be used with"), "{err}");
    }

    #[test]
    fn refuses_a_bad_deadline() {
        let err = config(&["--default-deadline", "0s"]).expect_err("zero deadline");
        assert!(
            err.to_string().contains("must be greater than zero"),
            "{err}"
        );
    }

    #[test]
    fn a_public_url_is_kept_without_its_slash_and_a_bad_one_is_refused() {
        let parsed = config(&["--public-url", "https://isotest.example.com/"]).expect("parses");
        assert_eq!(
            parsed.public_url.as_deref(),
            Some("https://isotest.example.com")
        );
        let err = config(&["--public-url", "ftp://isotest.example.com"]).expect_err("not http");
        assert!(err.to_string().contains("not an http(s) URL"), "{err}");
    }

    #[test]
    fn allowed_callback_hosts_reach_the_policy() {
        let parsed =
            config(&["--allow-callback-host", "10.0.0.0/8,hooks.internal"]).expect("entries parse");
        assert_eq!(
            parsed.egress,
            EgressPolicy::allowing(&["10.0.0.0/8", "hooks.internal"]).expect("policy")
        );
        assert!(config(&["--allow-callback-host", "a/b/c"]).is_err());
    }
}
