//! `TestEnv`: a fresh namespace on the real Redis, writers that mimic the producer and
//! the worker, and a handle on a running aggregator with a test-controlled shutdown.

use std::future::Future;
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use isotest_aggregator::{Aggregator, AggregatorConfig, AggregatorError};
use isotest_protocol::SCHEMA_VERSION;
use isotest_protocol::api::SuiteRecord;
use isotest_protocol::names::Namespace;
use isotest_protocol::report::Report;
use isotest_protocol::result::{Status, TestResult, Timings, Usage};

/// How long a test waits for something before it fails.
pub const PATIENCE: Duration = Duration::from_secs(15);

pub struct TestEnv {
    pub url: String,
    pub ns: Namespace,
    pub redis: ConnectionManager,
}

impl TestEnv {
    /// Connects to Redis and picks a namespace no other test uses.
    pub async fn new() -> TestEnv {
        let url = isotest_testkit::servers().await.redis_url;
        let redis = match isotest_infra::store::connect(&url).await {
            Ok(redis) => redis,
            Err(error) => panic!(
                "these tests need a running Redis at {url} (set REDIS_URL to use another): {error:?}"
            ),
        };
        let ns = isotest_testkit::namespace();
        TestEnv { url, ns, redis }
    }

    /// A configuration with quick timings, so tests do not wait on defaults.
    pub fn config(&self, consumer: &str) -> AggregatorConfig {
        let mut config = AggregatorConfig::new(&self.url, self.ns.clone(), consumer);
        config.block = Duration::from_millis(100);
        config.sweep_interval = Duration::from_millis(100);
        config.claim_interval = Duration::from_millis(200);
        config.retry_backoff = Duration::from_millis(100);
        config.trim_interval = Duration::from_millis(200);
        // The webhook receivers of these tests listen on loopback.
        config.webhooks.egress =
            isotest_infra::egress::EgressPolicy::allowing(&["127.0.0.1"]).expect("valid");
        config
    }

    /// Starts an aggregator; stop it with [`Running::stop`].
    pub async fn start(&self, config: AggregatorConfig) -> Running {
        let aggregator = Aggregator::build(config).await.expect("aggregator builds");
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(aggregator.run(async move {
            let _ = rx.await;
        }));
        Running {
            shutdown: Some(tx),
            handle,
        }
    }

    /// Writes a suite as the producer does: its record, then its place in the open set.
    pub async fn submit(&self, id: &str, tests: &[&str], deadline_in: Duration) -> SuiteRecord {
        let now = isotest_protocol::now_ms();
        let record = SuiteRecord {
            schema_version: SCHEMA_VERSION,
            id: id.to_owned(),
            name: format!("suite {id}"),
            tests: tests.iter().map(|t| (*t).to_owned()).collect(),
            created_at_ms: now,
            deadline_at_ms: now + u64::try_from(deadline_in.as_millis()).expect("short"),
            flaky_result: Default::default(),
            callback_url: None,
            owner: None,
            ..SuiteRecord::default()
        };
        let mut redis = self.redis.clone();
        let json = serde_json::to_string(&record).expect("serializes");
        let () = redis
            .set(self.ns.suite_key(id), json)
            .await
            .expect("record written");
        let _: usize = redis
            .zadd(self.ns.open_suites_key(), id, record.deadline_at_ms)
            .await
            .expect("suite opened");
        record
    }

    /// Writes a result as the worker does (the same shared script); true when this
    /// call wrote it.
    pub async fn record(&self, result: &TestResult) -> bool {
        isotest_infra::results::record(&mut self.redis.clone(), &self.ns, result)
            .await
            .expect("result written")
    }

    /// Every result of a suite, as the aggregator would read them.
    pub async fn results(&self, suite_id: &str) -> Vec<TestResult> {
        let fields: std::collections::HashMap<String, String> = self
            .redis
            .clone()
            .hgetall(self.ns.results_key(suite_id))
            .await
            .expect("results read");
        fields
            .values()
            .map(|json| serde_json::from_str(json).expect("a result"))
            .collect()
    }

    pub async fn report(&self, suite_id: &str) -> Option<Report> {
        let json: Option<String> = self
            .redis
            .clone()
            .get(self.ns.report_key(suite_id))
            .await
            .expect("report read");
        json.map(|json| serde_json::from_str(&json).expect("a report"))
    }

    /// Polls until the suite's report is stored.
    pub async fn wait_report(&self, suite_id: &str) -> Report {
        let env = self;
        poll(&format!("the report of {suite_id}"), || async move {
            env.report(suite_id).await
        })
        .await
    }

    /// Entries delivered to the group and not acked yet.
    pub async fn pending(&self) -> usize {
        let reply: redis::Value = redis::cmd("XPENDING")
            .arg(self.ns.results_stream())
            .arg(self.ns.aggregator_group())
            .query_async(&mut self.redis.clone())
            .await
            .expect("xpending");
        match reply {
            redis::Value::Array(items) => match items.first() {
                Some(redis::Value::Int(n)) => usize::try_from(*n).expect("count"),
                other => panic!("unexpected XPENDING count {other:?}"),
            },
            other => panic!("unexpected XPENDING reply {other:?}"),
        }
    }

    /// Whether the group has been handed every entry of the stream.
    pub async fn all_delivered(&self) -> bool {
        let mut redis = self.redis.clone();
        let last: redis::streams::StreamRangeReply = redis
            .xrevrange_count(self.ns.results_stream(), "+", "-", 1)
            .await
            .expect("xrevrange");
        let Some(last) = last.ids.first() else {
            return true;
        };
        let groups: redis::streams::StreamInfoGroupsReply = redis
            .xinfo_groups(self.ns.results_stream())
            .await
            .expect("xinfo groups");
        groups
            .groups
            .iter()
            .any(|g| g.name == self.ns.aggregator_group() && g.last_delivered_id == last.id)
    }

    /// The length of the results stream.
    pub async fn stream_len(&self) -> usize {
        self.redis
            .clone()
            .xlen(self.ns.results_stream())
            .await
            .expect("xlen")
    }

    pub async fn is_open(&self, suite_id: &str) -> bool {
        let score: Option<f64> = self
            .redis
            .clone()
            .zscore(self.ns.open_suites_key(), suite_id)
            .await
            .expect("zscore");
        score.is_some()
    }

    /// Deletes every key of the namespace.
    pub async fn cleanup(self) {
        let mut redis = self.redis.clone();
        let keys: Vec<String> = redis
            .keys(format!("{}:*", self.ns))
            .await
            .expect("keys listed");
        if !keys.is_empty() {
            let _: usize = redis.del(keys).await.expect("keys deleted");
        }
    }
}

/// A running aggregator.
pub struct Running {
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), AggregatorError>>,
}

impl Running {
    /// Asks for a graceful shutdown and waits for it, which must be prompt.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let joined = tokio::time::timeout(Duration::from_secs(5), &mut self.handle)
            .await
            .expect("the aggregator stops within 5 s of shutdown");
        joined
            .expect("the task did not panic")
            .expect("run returns Ok");
    }
}

/// Calls `check` until it gives `Some`, failing after [`PATIENCE`].
pub async fn poll<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    isotest_testkit::poll(PATIENCE, what, || {
        let checked = check();
        async move { Ok::<_, std::convert::Infallible>(checked.await) }
    })
    .await
    .unwrap_or_else(|e| panic!("gave up: {e}"))
}

/// One attempt's result, finished now.
pub fn result(
    suite_id: &str,
    name: &str,
    attempt: u32,
    is_final: bool,
    status: Status,
) -> TestResult {
    let now = isotest_protocol::now_ms();
    TestResult {
        schema_version: SCHEMA_VERSION,
        suite_id: suite_id.to_owned(),
        name: name.to_owned(),
        index: 0,
        attempt,
        is_final,
        status,
        reason: None,
        infrastructure: false,
        stage: None,
        exit_code: Some(i32::from(status != Status::Passed)),
        duration_ms: 10,
        started_at_ms: now.saturating_sub(10),
        finished_at_ms: now,
        worker: "worker-test".into(),
        stdout: format!("{name} attempt {attempt}\n"),
        stderr: String::new(),
        cases: Vec::new(),
        usage: Usage::default(),
        timings: Timings::default(),
        start: None,
        cached_from: None,
    }
}
