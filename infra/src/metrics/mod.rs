//! Prometheus metrics: one registry per process, the metric families of each service
//! (registered the first time that service touches them, so a worker does not expose
//! the aggregator's gauges), the queue watcher that reads RabbitMQ's queue depths, and
//! the small HTTP server that serves `/metrics`, `/healthz` and `/readyz`.
//!
//! Labels are bounded on purpose: framework, status and state, never a suite id or a
//! test name, which would make one time series per test. Ids travel in AMQP headers and
//! tracing spans instead.
//!
//! `families.rs` holds the metric families and their labels, `server.rs` the HTTP server and
//! readiness, `watch.rs` the queue watcher; this module holds the registry they share.

mod families;
mod server;
mod watch;

use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

pub use families::{
    AGGREGATION_LAG_BUCKETS, AggregatorMetrics, ProducerMetrics, QueueMetrics,
    SANDBOX_START_BUCKETS, StateLabels, StatusLabels, TEST_DURATION_BUCKETS, TestLabels,
    WorkerMetrics, aggregator, producer, queues, results_written, suites_completed, worker,
};
pub use server::{MetricsError, MetricsServer, Readiness, readiness, render, router};
pub use watch::watch_queues;

/// The `Content-Type` of what [`render`] serves: OpenMetrics text, which Prometheus reads.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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

/// The registry in OpenMetrics text.
pub fn encode() -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry());
    text
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
    use isotest_protocol::report::SuiteState;

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
        let dashboard = include_str!("../../../deploy/grafana/isotest.json");
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
