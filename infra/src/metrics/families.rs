//! The metric families of each service, registered the first time that service touches
//! them, with their histogram buckets and their (bounded) label sets.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use isotest_protocol::report::SuiteState;

use super::{histogram, register};

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
    /// Tests the scheduler has sent to RabbitMQ (first attempts).
    pub tests_dispatched: Counter,
    /// Tests waiting in Redis for the scheduler, as the dispatching producer last
    /// counted them (0 on the others).
    pub tests_waiting: Gauge,
}

/// The producer's metrics, registered on first use.
pub fn producer() -> &'static ProducerMetrics {
    static METRICS: LazyLock<ProducerMetrics> = LazyLock::new(|| {
        let m = ProducerMetrics {
            suites_submitted: Counter::default(),
            tests_submitted: Counter::default(),
            tests_dispatched: Counter::default(),
            tests_waiting: Gauge::default(),
        };
        register(
            "suites_submitted",
            "Suites accepted (recorded with their tests waiting for the scheduler)",
            &m.suites_submitted,
        );
        register(
            "tests_submitted",
            "Tests of accepted suites",
            &m.tests_submitted,
        );
        register(
            "tests_dispatched",
            "Tests the scheduler sent to RabbitMQ",
            &m.tests_dispatched,
        );
        register(
            "tests_waiting",
            "Tests waiting in Redis for the scheduler (on the dispatching producer)",
            &m.tests_waiting,
        );
        m
    });
    &METRICS
}

/// RabbitMQ's view of the namespace's queues, as the [`watch_queues`](super::watch_queues)
/// task last read it.
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
