//! The aggregator service: what it is made of and how it runs. Its jobs each have a
//! file: `stream` reads and claims the results stream and completes suites,
//! `sweep` closes suites past their deadline, delivers queued webhooks and trims the
//! stream, `dead_letters` records dead-lettered test messages as infrastructure
//! errors, and `history` records ended suites in the history store and lets their
//! Redis keys expire. Any number of replicas may run: every report goes through the one `SET NX`
//! of [`reports::store`], and assembly is deterministic, so they never store two
//! different reports.

mod dead_letters;
mod history;
mod stream;
mod sweep;

pub use history::HistorySink;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use isotest_infra::metrics;
use isotest_infra::reports::{self, Stored};
use isotest_infra::store::{self, StoreError};
use isotest_protocol::api::SuiteRecord;
use isotest_protocol::names::Namespace;
use isotest_protocol::report::Report;

use crate::webhook::{WebhookConfig, Webhooks};

/// What the aggregator needs to run; [`AggregatorConfig::new`] fills in the timings.
#[derive(Debug, Clone)]
pub struct AggregatorConfig {
    pub redis_url: String,
    pub namespace: Namespace,
    /// This replica's name in the consumer group; unique per running process.
    pub consumer: String,
    /// How long one read waits for new entries; shutdown waits at most this long.
    pub block: Duration,
    /// The most entries one read takes.
    pub batch: usize,
    /// How long an entry stays pending with a consumer before another claims it (the
    /// consumer is then taken for dead).
    pub claim_idle: Duration,
    /// How often to look for entries to claim.
    pub claim_interval: Duration,
    /// How often to close suites past their deadline.
    pub sweep_interval: Duration,
    /// How often to trim handled entries off the results stream.
    pub trim_interval: Duration,
    /// How long to wait before trying again after Redis failed.
    pub retry_backoff: Duration,
    /// RabbitMQ, to empty the namespace's dead-letter queue; `None` leaves it alone.
    pub amqp_url: Option<String>,
    /// How `suite.finished` webhooks are signed and delivered.
    pub webhooks: WebhookConfig,
    /// Where ended suites are recorded, and how long their Redis keys stay after;
    /// `None` records nothing and lets nothing expire.
    pub history: Option<HistorySink>,
}

impl AggregatorConfig {
    /// A configuration with the default timings.
    pub fn new(
        redis_url: impl Into<String>,
        namespace: Namespace,
        consumer: impl Into<String>,
    ) -> Self {
        AggregatorConfig {
            redis_url: redis_url.into(),
            namespace,
            consumer: consumer.into(),
            block: Duration::from_millis(500),
            batch: 100,
            claim_idle: Duration::from_secs(30),
            claim_interval: Duration::from_secs(5),
            sweep_interval: Duration::from_secs(1),
            trim_interval: Duration::from_secs(60),
            retry_backoff: Duration::from_millis(500),
            amqp_url: None,
            webhooks: WebhookConfig::default(),
            history: None,
        }
    }
}

/// A failure to start the aggregator.
#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    #[error("connect to redis")]
    Connect(#[source] StoreError),
    #[error("create consumer group `{group}` on stream `{stream}`")]
    CreateGroup {
        stream: String,
        group: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("make the webhooks' HTTP client")]
    WebhookClient(#[source] reqwest::Error),
}

/// A built aggregator, ready to [`run`](Aggregator::run).
pub struct Aggregator {
    config: AggregatorConfig,
    /// Blocking reads hold their connection for up to `block`, so the stream reader and
    /// the sweeper each have their own.
    reader: ConnectionManager,
    sweeper: ConnectionManager,
    webhooks: Webhooks,
}

impl std::fmt::Debug for Aggregator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Aggregator {
    /// Connects to Redis and creates the consumer group on the results stream.
    ///
    /// # Errors
    ///
    /// Returns [`AggregatorError`] when Redis is unreachable or refuses the group.
    pub async fn build(config: AggregatorConfig) -> Result<Aggregator, AggregatorError> {
        let reader = store::connect(&config.redis_url)
            .await
            .map_err(AggregatorError::Connect)?;
        let sweeper = store::connect(&config.redis_url)
            .await
            .map_err(AggregatorError::Connect)?;
        let webhooks = Webhooks::new(
            config.webhooks.clone(),
            config.namespace.clone(),
            sweeper.clone(),
        )
        .map_err(AggregatorError::WebhookClient)?;
        let aggregator = Aggregator {
            config,
            reader,
            sweeper,
            webhooks,
        };
        metrics::readiness().set(READY_PART, false);
        aggregator
            .ensure_group(&mut aggregator.reader.clone())
            .await?;
        Ok(aggregator)
    }

    /// Runs until `shutdown` completes, then finishes the entry in hand and returns.
    ///
    /// Redis failures while running are logged and retried, never fatal: a restarted
    /// Redis must not need a restarted aggregator.
    ///
    /// # Errors
    ///
    /// Returns [`AggregatorError`] only for failures that retrying cannot mend.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), AggregatorError> {
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let this = Arc::new(self);
        tracker.spawn({
            let this = Arc::clone(&this);
            let token = token.clone();
            async move { this.sweep_loop(token).await }
        });
        if let Some(url) = this.config.amqp_url.clone() {
            let this = Arc::clone(&this);
            let token = token.clone();
            tracker.spawn(async move { this.dead_letter_loop(url, token).await });
        }
        tracing::info!(
            namespace = %this.config.namespace,
            consumer = %this.config.consumer,
            "Aggregator started."
        );
        this.webhooks.log_start();

        let reader = this.read_loop(token.clone());
        tokio::pin!(reader);
        tokio::pin!(shutdown);
        let result = tokio::select! {
            result = &mut reader => result,
            () = &mut shutdown => {
                tracing::info!("Shutting down: finishing the entry in hand.");
                token.cancel();
                reader.await
            }
        };
        token.cancel();
        tracker.close();
        tracker.wait().await;
        this.webhooks.shutdown().await;
        tracing::info!("Aggregator stopped.");
        result
    }

    /// Ends a suite with `report` through the one report write
    /// ([`reports::store`]), which wins only if the suite has no report yet; when this
    /// call stored it and the suite has a `callback_url`, its webhook (queued and
    /// claimed by this aggregator in the same write) is delivered at once.
    async fn store_report(
        &self,
        conn: &mut ConnectionManager,
        record: &SuiteRecord,
        report: &Report,
    ) -> redis::RedisResult<Stored> {
        let callback_url = record.callback_url.as_deref();
        let due = callback_url.map(|_| self.webhooks.claimed_until_ms());
        let stored = reports::store(conn, &self.config.namespace, report, due).await?;
        if let (Stored::Now, Some(url)) = (stored, callback_url) {
            self.webhooks
                .spawn(report, url, record.public_url.as_deref());
        }
        Ok(stored)
    }
}

/// This service's name in `/readyz`: ready while Redis answers.
const READY_PART: &str = "aggregator";
