//! The command line: one `isotest` binary for users (`run`) and for the services.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

mod service;
pub use service::{DispatchArgs, EgressArgs, EndpointsArgs, LimitsArgs, ProducerArgs};

/// Runs CI test suites, one fresh Linux sandbox per test, on one machine or many.
#[derive(Debug, Parser)]
#[command(name = "isotest", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a suite: embedded on this machine, or on a server with --server.
    Run(RunArgs),
    /// Serve the HTTP API that validates suites and publishes one message per test.
    Producer(ProducerArgs),
    /// Take tests off the queue and run each in a fresh sandbox.
    Worker(WorkerArgs),
    /// Assemble suite reports from the results workers write.
    Aggregator(AggregatorArgs),
    /// Producer, aggregator and a worker in one process (a one-machine deployment).
    Up(Box<UpArgs>),
    /// Measure the pipeline or the sandbox.
    Bench(crate::bench::BenchArgs),
    /// Manage the producer's API tokens (one per CI system, each with an optional quota).
    Token(crate::tokens::TokenArgs),
    /// A test's last runs (status, duration, commit, worker), or `prune` old history.
    History(crate::history::HistoryArgs),
    /// The suites that ended last.
    Suites(crate::history::SuitesArgs),
    /// One suite's state and counts, from a server or the history store.
    Status(crate::history::StatusArgs),
    /// The flaky tests, with their scores and last failures.
    Flaky(crate::history::FlakyArgs),
    /// Quarantine tests: they run and are reported, but do not fail their suite.
    Quarantine(crate::history::QuarantineArgs),
    /// Fetch a finished suite's stored report from a server and write it, as `run` would.
    Report(ReportArgs),
    /// Print a shell completion script (`isotest completions bash > /etc/bash_completion.d/isotest`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// Writes the completion script of `shell` for the whole command line to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    use clap::CommandFactory;
    clap_complete::generate(shell, &mut Cli::command(), "isotest", out);
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The suite manifest (TOML, or JSON by its .json extension).
    pub manifest: PathBuf,
    /// An isotest server (producer) URL; without it (or the config file's, see
    /// README "Config file") the suite runs embedded.
    #[arg(long, env = "ISOTEST_SERVER")]
    pub server: Option<String>,
    /// Run embedded even though the config file names a server.
    #[arg(long, conflicts_with = "server")]
    pub embedded: bool,
    /// The API token the server asks for (from `isotest token add`), sent as
    /// `Authorization: Bearer`.
    #[arg(long, env = "ISOTEST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub reports: ReportPaths,
    /// Embedded mode: tests run at once (default: the number of cores).
    #[arg(long)]
    pub concurrency: Option<u16>,
    /// Show no progress, only the summary.
    #[arg(long)]
    pub quiet: bool,
    /// Run only the test of this name (repeatable), such as a failure to rerun.
    #[arg(long = "only", value_name = "NAME")]
    pub only: Vec<String>,
    /// Metadata kept with the suite in the history (repeatable): `commit`, `branch`,
    /// `repository`, `system`, `job_url` or any key; overrides what is detected from
    /// GitHub Actions, GitLab CI, Jenkins or Buildkite.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = crate::meta::parse_pair)]
    pub meta: Vec<(String, String)>,
    /// Embedded mode: keep no history of this run (no quarantine either).
    #[arg(long, env = "ISOTEST_NO_HISTORY")]
    pub no_history: bool,
    /// Run every test, whatever the result cache holds (the suite's `cache = false`),
    /// and keep nothing in it.
    #[arg(long, env = "ISOTEST_NO_CACHE")]
    pub no_cache: bool,
    #[command(flatten)]
    pub history: crate::history::StoreArgs,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// A suite on a server.
#[derive(Debug, Args)]
pub struct SuiteArgs {
    /// The suite's id.
    pub id: String,
    /// The isotest server (producer) URL (default: the config file's).
    #[arg(long, env = "ISOTEST_SERVER")]
    pub server: Option<String>,
    /// The API token the server asks for.
    #[arg(long, env = "ISOTEST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Where `run` and `report` write the reports.
#[derive(Debug, Args)]
pub struct ReportPaths {
    /// Write the JUnit XML report here.
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the CTRF JSON report here.
    #[arg(long)]
    pub ctrf: Option<PathBuf>,
}

/// `isotest report ID`: where to write the stored report.
#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub suite: SuiteArgs,
    #[command(flatten)]
    pub reports: ReportPaths,
}

/// How sandboxes are made on this host.
#[derive(Debug, Clone, Args)]
pub struct SandboxArgs {
    /// Run even where the host cannot apply every limit (what is missing is logged).
    #[arg(long, env = "ISOTEST_ALLOW_WEAKER_ISOLATION")]
    pub allow_weaker_isolation: bool,
    /// Where per-test workspaces are mounted on the host.
    #[arg(long, env = "ISOTEST_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// A named environment: NAME=ROOT_DIR (repeatable); tests choose one with `environment`.
    #[arg(long = "environment", value_name = "NAME=ROOT", value_parser = parse_environment)]
    pub environments: Vec<(String, PathBuf)>,
    /// Memory limit of each test, in MiB.
    #[arg(long, env = "ISOTEST_MEMORY_MIB", default_value_t = 1024)]
    pub memory_mib: u64,
    /// Process limit of each test.
    #[arg(long, env = "ISOTEST_PIDS", default_value_t = 256)]
    pub pids: u64,
    /// Size of each test's workspace, in MiB.
    #[arg(long, env = "ISOTEST_WORKSPACE_MIB", default_value_t = 1024)]
    pub workspace_mib: u64,
    /// Bytes of stdout and of stderr kept per test; the rest is dropped with a marker.
    #[arg(long, env = "ISOTEST_OUTPUT_BYTES", default_value_t = 1024 * 1024)]
    pub output_bytes: usize,
    /// The Python interpreter pytest and unittest tests run with.
    #[arg(long, env = "ISOTEST_PYTHON")]
    pub python: Option<PathBuf>,
    /// CPU time each test may use in all its processes ("30s", "5m"); none by default,
    /// the wall-clock timeout still applies.
    #[arg(long, env = "ISOTEST_CPU_TIME", value_parser = parse_duration)]
    pub cpu_time: Option<Duration>,
    /// After a limit is hit: SIGTERM, this long to exit, then SIGKILL.
    #[arg(long, env = "ISOTEST_KILL_GRACE", default_value = "1s", value_parser = parse_duration)]
    pub kill_grace: Duration,
    /// Let tests of suites with `network = true` share this host's network (they can
    /// then reach its loopback services); refused with an `error` verdict otherwise.
    #[arg(long, env = "ISOTEST_ALLOW_NETWORK")]
    pub allow_network: bool,
    /// A toolchain installed outside /usr (rustup's ~/.cargo and ~/.rustup, pyenv, nvm,
    /// /opt/...), seen read-only at the same path in every sandbox, its bin/ on PATH
    /// (repeatable; the variable takes a colon-separated list).
    #[arg(
        long = "toolchain-dir",
        value_name = "DIR",
        env = "ISOTEST_TOOLCHAIN_DIRS",
        value_delimiter = ':',
        value_parser = parse_toolchain_dir
    )]
    pub toolchain_dirs: Vec<PathBuf>,
    /// Warm interpreters kept at once for Python tests, each a sandboxed pytest or unittest
    /// that has imported its framework and collected one test file, forked into a fresh
    /// sandbox per test (0: every test starts cold).
    #[arg(long, env = "ISOTEST_WARM_ZYGOTES", default_value_t = 8)]
    pub warm_zygotes: usize,
    /// Memory the warm interpreters may hold together, in MiB (the least recently used go).
    #[arg(long, env = "ISOTEST_WARM_MEMORY_MIB", default_value_t = 2048)]
    pub warm_memory_mib: u64,
    /// A warm interpreter unused this long goes away.
    #[arg(long, env = "ISOTEST_WARM_IDLE", default_value = "60s", value_parser = parse_duration)]
    pub warm_idle: Duration,
}

fn parse_toolchain_dir(text: &str) -> Result<PathBuf, String> {
    let dir = std::fs::canonicalize(text).map_err(|e| format!("`{text}`: {e}"))?;
    if !dir.is_dir() {
        return Err(format!("`{text}` is not a directory"));
    }
    if dir == std::path::Path::new("/") {
        return Err("the whole root cannot be exposed; name the toolchain's own directory".into());
    }
    Ok(dir)
}

fn parse_environment(text: &str) -> Result<(String, PathBuf), String> {
    let (name, root) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not NAME=ROOT_DIR"))?;
    if name.is_empty() || root.is_empty() {
        return Err(format!("`{text}` is not NAME=ROOT_DIR"));
    }
    Ok((name.to_owned(), PathBuf::from(root)))
}

impl SandboxArgs {
    pub fn sandbox_config(&self) -> isotest_sandbox::SandboxConfig {
        let mut config = isotest_sandbox::SandboxConfig::default();
        if let Some(dir) = &self.state_dir {
            config.state_dir = dir.clone();
        }
        config.environments = self
            .environments
            .iter()
            .cloned()
            .collect::<BTreeMap<_, _>>();
        config.allow_weaker_isolation = self.allow_weaker_isolation;
        config.expose = self.toolchain_dirs.clone();
        config
    }

    pub fn limits(&self) -> isotest_sandbox::Limits {
        isotest_sandbox::Limits {
            memory_bytes: self.memory_mib.saturating_mul(1024 * 1024),
            pids: self.pids,
            workspace_bytes: self.workspace_mib.saturating_mul(1024 * 1024),
            stdout_bytes: self.output_bytes,
            stderr_bytes: self.output_bytes,
            cpu_time: self.cpu_time,
            kill_grace: self.kill_grace,
            ..isotest_sandbox::Limits::default()
        }
    }

    /// The settings of every sandbox a runner named `worker_id`, running `concurrency` tests
    /// at once, makes.
    pub fn runner_config(
        &self,
        worker_id: String,
        concurrency: u16,
    ) -> isotest_worker::RunnerConfig {
        isotest_worker::RunnerConfig {
            worker_id,
            tools: self.toolchain(),
            limits: self.limits(),
            allow_network: self.allow_network,
            artifact_dir: self.sandbox_config().state_dir.join("artifacts"),
            warm: (self.warm_zygotes > 0).then(|| isotest_worker::warm::WarmConfig {
                max_zygotes: self.warm_zygotes,
                max_bytes: self.warm_memory_mib.saturating_mul(1024 * 1024),
                idle: self.warm_idle,
                spares: usize::from(concurrency.clamp(1, 4)),
                ..isotest_worker::warm::WarmConfig::default()
            }),
        }
    }

    pub fn toolchain(&self) -> isotest_worker::frameworks::Toolchain {
        let mut tools = isotest_worker::frameworks::Toolchain::detect(&self.toolchain_dirs);
        if let Some(python) = &self.python {
            tools.python = python.clone();
        }
        for (name, path) in tools.unseen(&self.toolchain_dirs) {
            tracing::warn!(
                program = name,
                path = %path.display(),
                "Sandboxes cannot see this toolchain: expose its directory with --toolchain-dir (ISOTEST_TOOLCHAIN_DIRS)."
            );
        }
        tools
    }
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub endpoints: EndpointsArgs,
    #[command(flatten)]
    pub worker: WorkerSettings,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// How a worker takes and runs tests (`isotest worker`, and the worker inside `isotest up`).
#[derive(Debug, Args)]
pub struct WorkerSettings {
    /// Tests run at once (the consumer prefetch).
    #[arg(long, env = "ISOTEST_CONCURRENCY", default_value_t = default_concurrency())]
    pub concurrency: u16,
    /// On shutdown, how long running tests may take to finish before their messages go back to the queue.
    #[arg(long, env = "ISOTEST_DRAIN_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// The longest test timeout taken; keep it below RabbitMQ's consumer_timeout (30m by default).
    #[arg(long, env = "ISOTEST_MAX_TEST_TIMEOUT", default_value = "25m", value_parser = parse_duration)]
    pub max_test_timeout: Duration,
    /// The most output (stdout, stderr, cases' messages, in bytes as stored in JSON) all
    /// results of one suite may hold in Redis; output past it is cut, with a marker.
    #[arg(long, env = "ISOTEST_SUITE_OUTPUT_BYTES", default_value_t = isotest_infra::output_budget::DEFAULT_SUITE_OUTPUT_BYTES)]
    pub suite_output_bytes: u64,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

#[derive(Debug, Args)]
pub struct AggregatorArgs {
    #[command(flatten)]
    pub endpoints: EndpointsArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    pub queues: QueueWatchArgs,
    #[command(flatten)]
    pub webhooks: WebhookArgs,
    /// Which internal hosts a suite's `callback_url` may reach (none by default).
    #[command(flatten)]
    pub egress: EgressArgs,
    /// The history store (`postgres://…`) ended suites are recorded in; without it,
    /// nothing is recorded and nothing in Redis expires.
    #[arg(long, env = "ISOTEST_HISTORY_URL")]
    pub history_url: Option<String>,
    #[command(flatten)]
    pub retention: RetentionArgs,
}

/// How long a suite's data stays in Redis once it is in the history store.
#[derive(Debug, Clone, Args)]
pub struct RetentionArgs {
    /// Once a suite is in the history store, its results and report in Redis expire
    /// after this long (its report is then read from the history store).
    #[arg(long, env = "ISOTEST_RETENTION", default_value = "7d", value_parser = parse_age)]
    pub retention: Duration,
    /// Quarantine a test automatically once its flakiness score (0 to 1, over its last
    /// 20 counted runs) reaches this, for its suite's repository (else its token).
    #[arg(long, env = "ISOTEST_AUTO_QUARANTINE_ABOVE")]
    pub auto_quarantine_above: Option<f64>,
}

/// How the aggregator signs the `suite.finished` webhooks it sends.
#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// Signs each webhook body: `X-Isotest-Signature: sha256=<hex HMAC-SHA256>`. Without
    /// it webhooks go unsigned (a warning is logged at start).
    #[arg(long, env = "ISOTEST_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub producer: ProducerArgs,
    #[command(flatten)]
    pub worker: WorkerSettings,
    /// One /metrics, /healthz and /readyz for the three services (the producer's API
    /// port serves /metrics too).
    #[command(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    pub queues: QueueWatchArgs,
    #[command(flatten)]
    pub webhooks: WebhookArgs,
    #[command(flatten)]
    pub retention: RetentionArgs,
}

/// Where a service serves its metrics and health.
#[derive(Debug, Clone, Args)]
pub struct MetricsArgs {
    /// Serve /metrics (Prometheus), /healthz and /readyz on this address (port 0: any
    /// free port, logged at start). By default each service has a port of its own, so
    /// that services beside each other (and a Prometheus on 9090) do not collide: the
    /// aggregator 0.0.0.0:9471, a worker 0.0.0.0:9472, `up` port 9470 on its --listen
    /// address.
    #[arg(long, env = "ISOTEST_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

/// The aggregator's default metrics address (the KEDA ScaledObject in deploy/ reads it).
pub const AGGREGATOR_METRICS: SocketAddr = SocketAddr::new(UNSPECIFIED, 9471);
/// A worker's default metrics address.
pub const WORKER_METRICS: SocketAddr = SocketAddr::new(UNSPECIFIED, 9472);
/// `isotest up`'s default metrics port, on the address its API listens on.
pub const UP_METRICS_PORT: u16 = 9470;
const UNSPECIFIED: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

impl MetricsArgs {
    /// The address asked for, or the service's own default.
    pub fn listen_or(&self, default: SocketAddr) -> SocketAddr {
        self.metrics_listen.unwrap_or(default)
    }
}

/// How the aggregator reads RabbitMQ's queue depths for /metrics.
#[derive(Debug, Clone, Args)]
pub struct QueueWatchArgs {
    /// How often to read the depth of the tests and dead-letter queues.
    #[arg(long, env = "ISOTEST_QUEUE_POLL_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub queue_poll_interval: Duration,
}

/// The number of cores, the default concurrency.
pub fn default_concurrency() -> u16 {
    std::thread::available_parallelism().map_or(1, |n| u16::try_from(n.get()).unwrap_or(u16::MAX))
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    isotest_protocol::duration::parse(text).map_err(|e| e.to_string())
}

/// An age or a retention: days (`"7d"`, `"90d"`) or a duration as [`parse_duration`]
/// reads it (`"12h"`).
pub fn parse_age(text: &str) -> Result<Duration, String> {
    match text.trim().strip_suffix('d') {
        Some(days) if !days.is_empty() && days.bytes().all(|b| b.is_ascii_digit()) => {
            let days: u64 = days.parse().map_err(|_| format!("`{text}` is too long"))?;
            if days == 0 {
                return Err("must be greater than zero".into());
            }
            days.checked_mul(86_400)
                .map(Duration::from_secs)
                .ok_or_else(|| format!("`{text}` is too long"))
        }
        _ => parse_duration(text),
    }
}

#[cfg(test)]
mod help;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    /// Two services on one host (a worker beside an aggregator, `up` beside either)
    /// must not ask for the same metrics address by default, and `up` binds where its
    /// API listens.
    #[test]
    fn each_service_has_its_own_default_metrics_address() {
        let up =
            Cli::try_parse_from(["isotest", "up", "--listen", "127.0.0.1:8080"]).expect("parses");
        let Command::Up(up) = up.command else {
            panic!("not up")
        };
        let up = crate::services::up_metrics_addr(&up);
        assert_eq!(up, "127.0.0.1:9470".parse().expect("addr"));
        let defaults = [up, AGGREGATOR_METRICS, WORKER_METRICS];
        for (i, a) in defaults.iter().enumerate() {
            for b in &defaults[i + 1..] {
                assert_ne!(a.port(), b.port(), "{a} and {b}");
            }
            assert_ne!(a.port(), 9090, "Prometheus's own port");
        }
        let worker = Cli::try_parse_from(["isotest", "worker"]).expect("parses");
        let Command::Worker(worker) = worker.command else {
            panic!("not worker")
        };
        assert_eq!(worker.metrics.listen_or(WORKER_METRICS), WORKER_METRICS);
    }

    #[test]
    fn ages_take_days_or_durations() {
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3_600)));
        for bad in ["0d", "d", "1.5d", "-1d", "soon"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn completions_name_every_subcommand() {
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh] {
            let mut out = Vec::new();
            completions(shell, &mut out);
            let script = String::from_utf8(out).expect("UTF-8");
            for word in ["run", "worker", "token", "--server", "--junit"] {
                assert!(script.contains(word), "{shell}: no {word}");
            }
        }
    }

    #[test]
    fn environments_are_name_equals_root() {
        assert_eq!(
            parse_environment("py312=/srv/py312"),
            Ok(("py312".into(), "/srv/py312".into()))
        );
        assert!(parse_environment("py312").is_err());
        assert!(parse_environment("=/x").is_err());
    }
}
