//! Prometheus metrics: one registry per process, the metric families of each service
//! (registered the first time that service touches them, so a worker does not expose
//! the aggregator's gauges), the queue watcher that reads RabbitMQ's queue depths, and
//! the small HTTP server that serves `/metrics`, `/healthz` and `/readyz`.
//!
//! Labels are bounded on purpose: framework, status and state, never a suite id or a
//! test name, which would make one time series per test. Ids travel in AMQP headers and
//! tracing spans instead.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use isotest_protocol::names::Namespace;
use isotest_protocol::report::SuiteState;

use crate::amqp;

/// The `Content-Type` of what [`render`] serves: OpenMetrics text, which Prometheus reads.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Buckets of test durations, in seconds: from a `true` in a sandbox to the longest
/// timeout a worker takes by default (25 minutes; a test past 600 s lands in `+Inf`).
pub const TEST_DURATION_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Buckets of sandbox start times, in seconds: a few milliseconds when all is well,
/// seconds when a workspace is big or the host is starved.
pub const SANDBOX_START_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets of aggregation lag, in seconds: from the stream entry of a suite's last
/// result to its report being stored.
pub const AGGREGATION_LAG_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Every metric of this process lives here, prefixed `isotest_`.
static REGISTRY: LazyLock<Mutex<Registry>> =
    LazyLock::new(|| Mutex::new(Registry::with_prefix("isotest")));

fn registry() -> MutexGuard<'static, Registry> {
    // Registering and encoding cannot leave the registry half-changed, so a panic
    // elsewhere while it was held does not make it unusable.
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

fn register<M: Metric + Clone>(name: &str, help: &str, metric: &M) {
    registry().register(name, help, metric.clone());
}

fn histogram(buckets: &'static [f64]) -> Histogram {
    Histogram::new(buckets.iter().copied())
}

/// The labels of a test's duration.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TestLabels {
    pub framework: &'static str,
    pub status: &'static str,
}

/// A result's status.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: &'static str,
}

/// How a suite ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

impl StateLabels {
    pub fn of(state: SuiteState) -> StateLabels {
        let state = match state {
            SuiteState::Running => "running",
            SuiteState::Complete => "complete",
            SuiteState::DeadlineExceeded => "deadline_exceeded",
            SuiteState::Cancelled => "cancelled",
        };
        StateLabels { state }
    }
}

/// What a worker measures.
#[derive(Debug)]
pub struct WorkerMetrics {
    /// Test messages this worker holds unacked: taken off the queue, not yet settled.
    pub tests_in_flight: Gauge,
    pub test_duration: Family<TestLabels, Histogram, fn() -> Histogram>,
    pub sandbox_start: Histogram,
    pub redeliveries: Counter,
}

/// The worker's metrics, registered on first use.
pub fn worker() -> &'static WorkerMetrics {
    static METRICS: LazyLock<WorkerMetrics> = LazyLock::new(|| {
        let m = WorkerMetrics {
            tests_in_flight: Gauge::default(),
            test_duration: Family::new_with_constructor(|| histogram(&TEST_DURATION_BUCKETS)),
            sandbox_start: histogram(&SANDBOX_START_BUCKETS),
            redeliveries: Counter::default(),
        };
        register(
            "tests_in_flight",
            "Test messages this worker holds unacked (running, or waiting for a slot)",
            &m.tests_in_flight,
        );
        register(
            "test_duration_seconds",
            "Wall-clock duration of test attempts this worker ran",
            &m.test_duration,
        );
        register(
            "sandbox_start_seconds",
            "From taking a test message to the test's first instruction in its sandbox",
            &m.sandbox_start,
        );
        register(
            "redeliveries",
            "Test messages delivered again (redelivered flag, or x-delivery-count above 0)",
            &m.redeliveries,
        );
        m
    });
    &METRICS
}

/// Results this process wrote to Redis (the first write of an attempt only), by
/// status. Workers write them; so does the aggregator for dead-lettered tests.
pub fn results_written() -> &'static Family<StatusLabels, Counter> {
    static METRIC: LazyLock<Family<StatusLabels, Counter>> = LazyLock::new(|| {
        let m = Family::default();
        register(
            "results_written",
            "Test results written to Redis (first write of each attempt), by status",
            &m,
        );
        m
    });
    &METRIC
}

/// Reports this process stored, by how the suite ended. The aggregator stores
/// `complete` and `deadline_exceeded`; the producer stores `cancelled`.
pub fn suites_completed() -> &'static Family<StateLabels, Counter> {
    static METRIC: LazyLock<Family<StateLabels, Counter>> = LazyLock::new(|| {
        let m = Family::default();
        register(
            "suites_completed",
            "Suite reports stored by this process, by final state",
            &m,
        );
        m
    });
    &METRIC
}

/// What the aggregator measures.
#[derive(Debug)]
pub struct AggregatorMetrics {
    /// Suites not yet reported, read from Redis (the same for every replica).
    pub suites_open: Gauge,
    /// Tests of open suites without a final result (queued, waiting for a retry, or
    /// running), read from Redis: what KEDA scales workers on.
    pub tests_unfinished: Gauge,
    pub aggregation_lag: Histogram,
    pub dead_letters: Counter,
}

/// The aggregator's metrics, registered on first use.
pub fn aggregator() -> &'static AggregatorMetrics {
    static METRICS: LazyLock<AggregatorMetrics> = LazyLock::new(|| {
        let m = AggregatorMetrics {
            suites_open: Gauge::default(),
            tests_unfinished: Gauge::default(),
            aggregation_lag: histogram(&AGGREGATION_LAG_BUCKETS),
            dead_letters: Counter::default(),
        };
        register(
            "suites_open",
            "Suites accepted and not yet reported (read from Redis; every replica sees the same)",
            &m.suites_open,
        );
        register(
            "tests_unfinished",
            "Tests of open suites without a final result: queued, waiting for a retry, or running (read from Redis; every replica sees the same)",
            &m.tests_unfinished,
        );
        register(
            "aggregation_lag_seconds",
            "From the stream entry of a suite's last result to its report being stored",
            &m.aggregation_lag,
        );
        register(
            "dead_letters",
            "Dead-lettered test messages handled (recorded as infrastructure errors)",
            &m.dead_letters,
        );
        m
    });
    &METRICS
}

/// What the producer measures.
#[derive(Debug)]
pub struct ProducerMetrics {
    pub suites_submitted: Counter,
    pub tests_submitted: Counter,
}

/// The producer's metrics, registered on first use.
pub fn producer() -> &'static ProducerMetrics {
    static METRICS: LazyLock<ProducerMetrics> = LazyLock::new(|| {
        let m = ProducerMetrics {
            suites_submitted: Counter::default(),
            tests_submitted: Counter::default(),
        };
        register(
            "suites_submitted",
            "Suites accepted (every test message confirmed by RabbitMQ)",
            &m.suites_submitted,
        );
        register(
            "tests_submitted",
            "Test messages published for accepted suites",
            &m.tests_submitted,
        );
        m
    });
    &METRICS
}

/// RabbitMQ's view of the namespace's queues, as the [`watch_queues`] task last read it.
#[derive(Debug)]
pub struct QueueMetrics {
    /// Ready messages of `{ns}.tests`; the unacked ones are the workers'
    /// `isotest_tests_in_flight`.
    pub tests_ready: Gauge,
    pub tests_consumers: Gauge,
    /// Ready messages of `{ns}.tests.dead`.
    pub dead_letter_ready: Gauge,
}

/// The queue gauges, registered on first use.
pub fn queues() -> &'static QueueMetrics {
    static METRICS: LazyLock<QueueMetrics> = LazyLock::new(|| {
        let m = QueueMetrics {
            tests_ready: Gauge::default(),
            tests_consumers: Gauge::default(),
            dead_letter_ready: Gauge::default(),
        };
        register(
            "tests_queue_messages",
            "Ready test messages in the tests queue (unacked ones are isotest_tests_in_flight on the workers)",
            &m.tests_ready,
        );
        register(
            "tests_queue_consumers",
            "Consumers of the tests queue",
            &m.tests_consumers,
        );
        register(
            "dead_letter_queue_messages",
            "Ready messages in the dead-letter queue",
            &m.dead_letter_ready,
        );
        m
    });
    &METRICS
}

/// The registry in OpenMetrics text.
pub fn encode() -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry());
    text
}

/// `GET /metrics`: the registry in OpenMetrics text.
pub async fn render() -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], encode()).into_response()
}

/// Which parts of this process are ready, for `/readyz`. A service marks itself
/// unready when it starts and ready once connected; `isotest up` has several parts,
/// and is ready only when all are.
#[derive(Debug, Default)]
pub struct Readiness {
    parts: Mutex<BTreeMap<&'static str, bool>>,
}

impl Readiness {
    pub fn set(&self, part: &'static str, ready: bool) {
        self.parts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(part, ready);
    }

    /// The parts not ready; `Err` with nothing named when no part has registered yet.
    ///
    /// # Errors
    ///
    /// Returns the names of the parts that are not ready.
    pub fn check(&self) -> Result<(), Vec<&'static str>> {
        let parts = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
        let unready: Vec<&'static str> = parts
            .iter()
            .filter(|(_, ready)| !**ready)
            .map(|(part, _)| *part)
            .collect();
        if parts.is_empty() || !unready.is_empty() {
            Err(unready)
        } else {
            Ok(())
        }
    }
}

/// This process's readiness.
pub fn readiness() -> &'static Readiness {
    static READINESS: LazyLock<Readiness> = LazyLock::new(Readiness::default);
    &READINESS
}

async fn readyz() -> Response {
    match readiness().check() {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(parts) if parts.is_empty() => {
            (StatusCode::SERVICE_UNAVAILABLE, "not ready: starting").into_response()
        }
        Err(parts) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}", parts.join(", ")),
        )
            .into_response(),
    }
}

/// `/metrics`, `/healthz` and `/readyz`.
pub fn router() -> Router {
    Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
}

/// A metrics server that failed.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "could not listen for metrics on {addr} (give another with --metrics-listen or ISOTEST_METRICS_LISTEN)"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the metrics server failed")]
    Serve(#[source] std::io::Error),
}

/// The HTTP server of `/metrics`, `/healthz` and `/readyz`, bound and ready to run.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
}

impl MetricsServer {
    /// Binds the listener (port 0 picks a free port; see [`MetricsServer::local_addr`]).
    ///
    /// # Errors
    ///
    /// Returns [`MetricsError::Bind`] when the address is taken or not ours.
    pub async fn bind(addr: SocketAddr) -> Result<MetricsServer, MetricsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError::Bind { addr, source })?;
        Ok(MetricsServer { listener })
    }

    /// The bound address.
    ///
    /// # Errors
    ///
    /// Returns the I/O error of a listener without a local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes.
    ///
    /// # Errors
    ///
    /// Returns [`MetricsError::Serve`] when the server fails.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), MetricsError> {
        if let Ok(addr) = self.listener.local_addr() {
            tracing::info!(%addr, "Serving /metrics, /healthz and /readyz.");
        }
        axum::serve(self.listener, router())
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(MetricsError::Serve)
    }
}

/// Reads the depth and consumers of the namespace's queues every `interval` with a
/// passive `queue.declare`, into [`queues`], until `stop` is cancelled. RabbitMQ going
/// away only pauses it: it reconnects after [`amqp::Backoff`].
pub async fn watch_queues(
    url: String,
    name: String,
    ns: Namespace,
    interval: Duration,
    stop: CancellationToken,
) {
    let gauges = queues();
    let mut backoff = amqp::Backoff::default();
    loop {
        let Some(conn) = amqp::reconnect(&url, &name, stop.cancelled()).await else {
            return;
        };
        let why = watch_on(&conn, &ns, interval, &stop, &mut backoff, gauges).await;
        let _ = conn.close(200, "queue watcher".into()).await;
        let Some(why) = why else {
            return;
        };
        tracing::warn!(reason = %why, "Could not read the queue depths; reconnecting.");
        if !backoff.wait(stop.cancelled()).await {
            return;
        }
    }
}

/// Reads on one connection; `None` on shutdown, else why it stopped. A read that
/// succeeds resets `backoff`.
async fn watch_on(
    conn: &lapin::Connection,
    ns: &Namespace,
    interval: Duration,
    stop: &CancellationToken,
    backoff: &mut amqp::Backoff,
    gauges: &QueueMetrics,
) -> Option<String> {
    // Declaring the topology first (idempotent) means the passive declares below find
    // the queues even when this runs before any other service has started.
    let channel = match amqp::channel_with_topology(conn, ns).await {
        Ok(channel) => channel,
        Err(e) => return Some(e.to_string()),
    };
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return None,
        }
        // A passive declare of a queue that does not exist closes the channel: someone
        // deleted it. Reconnecting declares it again.
        let read = async {
            let tests = channel
                .queue_declare(
                    ns.tests_queue().as_str().into(),
                    passive,
                    FieldTable::default(),
                )
                .await?;
            let dead = channel
                .queue_declare(
                    ns.dead_letter_queue().as_str().into(),
                    passive,
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>((tests, dead))
        };
        match read.await {
            Ok((tests, dead)) => {
                backoff.reset();
                gauges.tests_ready.set(i64::from(tests.message_count()));
                gauges
                    .tests_consumers
                    .set(i64::from(tests.consumer_count()));
                gauges
                    .dead_letter_ready
                    .set(i64::from(dead.message_count()));
            }
            Err(e) => return Some(e.to_string()),
        }
    }
}

/// Decrements a gauge when dropped: a test in flight stops counting however its
/// handling ends.
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    /// Increments `gauge` now and decrements it on drop.
    pub fn inc(gauge: &Gauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_renders_histograms_with_their_buckets_and_labels() {
        worker()
            .test_duration
            .get_or_create(&TestLabels {
                framework: "command",
                status: "passed",
            })
            .observe(0.02);
        results_written()
            .get_or_create(&StatusLabels { status: "failed" })
            .inc();
        let text = encode();
        for line in [
            "isotest_test_duration_seconds_bucket{le=\"0.01\",framework=\"command\",status=\"passed\"} 0",
            "isotest_test_duration_seconds_bucket{le=\"0.025\",framework=\"command\",status=\"passed\"} 1",
            "isotest_test_duration_seconds_bucket{le=\"600.0\",framework=\"command\",status=\"passed\"} 1",
            "isotest_test_duration_seconds_count{framework=\"command\",status=\"passed\"} 1",
            "# TYPE isotest_test_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        assert!(
            text.contains("isotest_results_written_total{status=\"failed\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn the_dashboard_queries_only_metrics_that_exist() {
        let dashboard = include_str!("../../deploy/grafana/isotest.json");
        let _ = (aggregator(), producer(), queues());
        // A family shows only once it has a series.
        let _ = worker().test_duration.get_or_create(&TestLabels {
            framework: "pytest",
            status: "passed",
        });
        let _ = results_written().get_or_create(&StatusLabels { status: "passed" });
        let _ = suites_completed().get_or_create(&StateLabels::of(SuiteState::Complete));
        let text = encode();
        let mut queried = 0;
        for (start, _) in dashboard.match_indices("isotest_") {
            let name: String = dashboard[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let family = ["_bucket", "_total", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name);
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "the dashboard queries `{name}`, which no service exposes"
            );
            queried += 1;
        }
        assert!(queried > 10, "the dashboard queries isotest metrics");
    }

    #[test]
    fn readiness_needs_every_part() {
        let readiness = Readiness::default();
        assert_eq!(readiness.check(), Err(vec![]), "nothing registered yet");
        readiness.set("worker", false);
        readiness.set("aggregator", true);
        assert_eq!(readiness.check(), Err(vec!["worker"]));
        readiness.set("worker", true);
        assert_eq!(readiness.check(), Ok(()));
    }

    #[test]
    fn a_gauge_guard_gives_back_what_it_took() {
        let gauge = Gauge::default();
        {
            let _a = GaugeGuard::inc(&gauge);
            let _b = GaugeGuard::inc(&gauge);
            assert_eq!(gauge.get(), 2);
        }
        assert_eq!(gauge.get(), 0);
    }
}
