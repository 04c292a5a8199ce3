//! The aggregator service: it reads the results stream through a consumer group,
//! stores a suite's report once its every test has a final result, and sweeps suites
//! past their deadline. Any number of replicas may run: `SET NX` on the report key and
//! a deterministic [`assemble`] mean they never store two different reports.
//!
//! It also empties the dead-letter queue: a test message no worker could handle is
//! recorded as an `error` whose reason starts with `infrastructure`, through the same
//! idempotent write workers use, so the suite still completes. And [`cancel`] closes a
//! suite on request, with the same `SET NX` as completion, so exactly one of the two wins.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimOptions, StreamId, StreamReadOptions, StreamReadReply};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use isotest_infra::amqp;
use isotest_infra::metrics::{self, StateLabels, StatusLabels};
use isotest_infra::store::{self, StoreError};
use isotest_protocol::api::SuiteRecord;
use isotest_protocol::message::TestMessage;
use isotest_protocol::names::Namespace;
use isotest_protocol::report::{Report, SuiteState};
use isotest_protocol::result::TestResult;

use crate::report::assemble;
use crate::webhook::{WebhookConfig, Webhooks};
use isotest_infra::error_chain;

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

/// What became of one stream entry; every outcome but an error acks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Tests are still running.
    Waiting,
    /// This call stored the report.
    Stored,
    /// The report was already there (another replica, or the sweeper).
    AlreadyReported,
    /// No suite record: nothing to report on.
    UnknownSuite,
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

    /// Creates the group unless it exists. It starts at the stream's beginning, not its
    /// end, so entries written before the first aggregator ever ran are not skipped.
    async fn ensure_group(&self, conn: &mut ConnectionManager) -> Result<(), AggregatorError> {
        let ns = &self.config.namespace;
        let stream = ns.results_stream();
        let group = ns.aggregator_group();
        match conn
            .xgroup_create_mkstream::<_, _, _, ()>(&stream, &group, "0")
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(source) => Err(AggregatorError::CreateGroup {
                stream,
                group,
                source,
            }),
        }
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

    /// Reads the stream: this consumer's own pending entries first (left by a previous
    /// run under the same name), then new ones, and now and then entries that dead
    /// consumers left pending.
    async fn read_loop(&self, token: CancellationToken) -> Result<(), AggregatorError> {
        let mut conn = self.reader.clone();
        let mut records = RecordCache::default();
        // `Some(id)`: still reading our own pending entries, after `id`.
        let mut pending_after = Some("0".to_owned());
        let mut claim_cursor = "0-0".to_owned();
        let mut next_claim = tokio::time::Instant::now();

        while !token.is_cancelled() {
            let batch = if let Some(after) = &pending_after {
                match self.read_group(&mut conn, after, None).await {
                    Ok(entries) if entries.is_empty() => {
                        pending_after = None;
                        continue;
                    }
                    Ok(entries) => {
                        pending_after = entries.last().map(|e| e.id.clone());
                        entries
                    }
                    Err(error) => {
                        self.backoff(&token, &error, "read pending entries").await;
                        continue;
                    }
                }
            } else if tokio::time::Instant::now() >= next_claim {
                next_claim = tokio::time::Instant::now() + self.config.claim_interval;
                match self.claim(&mut conn, &claim_cursor).await {
                    Ok((next, entries)) => {
                        // More may be idle past the cursor: go on at once rather
                        // than one page per interval.
                        if next != "0-0" {
                            next_claim = tokio::time::Instant::now();
                        }
                        claim_cursor = next;
                        if !entries.is_empty() {
                            tracing::info!(
                                count = entries.len(),
                                "Claimed entries left pending by another consumer."
                            );
                        }
                        entries
                    }
                    Err(error) => {
                        self.backoff(&token, &error, "claim idle entries").await;
                        continue;
                    }
                }
            } else {
                match self
                    .read_group(&mut conn, ">", Some(self.config.block))
                    .await
                {
                    Ok(entries) => entries,
                    Err(error) => {
                        self.backoff(&token, &error, "read new entries").await;
                        // The group may be gone with its stream (a flushed Redis).
                        if let Err(error) = self.ensure_group(&mut conn).await {
                            tracing::warn!(error = %error, "Could not re-create the consumer group.");
                        }
                        continue;
                    }
                }
            };

            for entry in batch {
                // Entries read but not handled stay pending: a restart under the same
                // name or another consumer's claim handles them.
                if token.is_cancelled() {
                    break;
                }
                self.handle_entry(&mut conn, &mut records, &entry).await;
            }
        }
        Ok(())
    }

    async fn read_group(
        &self,
        conn: &mut ConnectionManager,
        id: &str,
        block: Option<Duration>,
    ) -> redis::RedisResult<Vec<StreamId>> {
        let ns = &self.config.namespace;
        let mut options = StreamReadOptions::default()
            .group(ns.aggregator_group(), &self.config.consumer)
            .count(self.config.batch);
        if let Some(block) = block {
            options = options.block(usize::try_from(block.as_millis()).unwrap_or(usize::MAX));
        }
        let reply: redis::RedisResult<Option<StreamReadReply>> = conn
            .xread_options(&[ns.results_stream()], &[id], &options)
            .await;
        // Ready while Redis answers: this read runs at least every `block`.
        metrics::readiness().set(READY_PART, reply.is_ok());
        let reply = reply?;
        Ok(reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default())
    }

    async fn claim(
        &self,
        conn: &mut ConnectionManager,
        cursor: &str,
    ) -> redis::RedisResult<(String, Vec<StreamId>)> {
        let ns = &self.config.namespace;
        let reply: redis::streams::StreamAutoClaimReply = conn
            .xautoclaim_options(
                ns.results_stream(),
                ns.aggregator_group(),
                &self.config.consumer,
                u64::try_from(self.config.claim_idle.as_millis()).unwrap_or(u64::MAX),
                cursor,
                StreamAutoClaimOptions::default().count(self.config.batch),
            )
            .await?;
        Ok((reply.next_stream_id, reply.claimed))
    }

    /// Logs a Redis failure and waits before the next try (or until shutdown).
    async fn backoff(&self, token: &CancellationToken, error: &redis::RedisError, what: &str) {
        tracing::warn!(%error, what, "Redis failed; trying again.");
        tokio::select! {
            () = tokio::time::sleep(self.config.retry_backoff) => {}
            () = token.cancelled() => {}
        }
    }

    /// Handles one entry and acks it, unless Redis failed: then it stays pending and is
    /// claimed again after `claim_idle`.
    async fn handle_entry(
        &self,
        conn: &mut ConnectionManager,
        records: &mut RecordCache,
        entry: &StreamId,
    ) {
        // A deleted entry still pending comes back without fields; there is nothing to do.
        let Some(suite_id) = entry.get::<String>("suite") else {
            if !entry.map.is_empty() {
                tracing::warn!(entry = %entry.id, "Stream entry has no `suite` field; dropping it.");
            }
            self.ack(conn, &entry.id).await;
            return;
        };
        let span = tracing::info_span!("entry", suite_id = %suite_id, entry = %entry.id);
        async {
            match self.complete_if_done(conn, records, &suite_id).await {
                Ok(outcome) => {
                    match outcome {
                        Outcome::Stored => {
                            tracing::info!("Stored the suite's report.");
                            count_stored(SuiteState::Complete);
                            observe_lag(&entry.id);
                        }
                        Outcome::UnknownSuite => {
                            tracing::warn!("Result for an unknown suite; dropping it.");
                        }
                        Outcome::Waiting | Outcome::AlreadyReported => {
                            tracing::debug!(?outcome, "Handled a result.");
                        }
                    }
                    self.ack(conn, &entry.id).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "Could not handle a result; it stays pending.");
                }
            }
        }
        .instrument(span)
        .await;
    }

    async fn ack(&self, conn: &mut ConnectionManager, id: &str) {
        let ns = &self.config.namespace;
        let acked: redis::RedisResult<usize> = conn
            .xack(ns.results_stream(), ns.aggregator_group(), &[id])
            .await;
        // An unacked entry is handled again later, which is harmless.
        if let Err(error) = acked {
            tracing::warn!(%error, entry = id, "Could not ack a stream entry.");
        }
    }

    /// Stores the suite's report if every test has its final result.
    async fn complete_if_done(
        &self,
        conn: &mut ConnectionManager,
        records: &mut RecordCache,
        suite_id: &str,
    ) -> redis::RedisResult<Outcome> {
        let ns = &self.config.namespace;
        if conn.exists(ns.report_key(suite_id)).await? {
            records.forget(suite_id);
            return Ok(Outcome::AlreadyReported);
        }
        let Some(record) = records.get(conn, ns, suite_id).await? else {
            return Ok(Outcome::UnknownSuite);
        };
        let done: usize = conn.scard(ns.done_key(suite_id)).await?;
        if done < record.distinct_tests {
            return Ok(Outcome::Waiting);
        }
        let results = load_results(conn, ns, suite_id).await?;
        let report = assemble(&record.record, results, SuiteState::Complete);
        // The done set only counts names; this check makes sure each is one of ours.
        if report.summary.lost > 0 {
            tracing::warn!(
                done,
                "The done set counts every test, yet some have no final result; waiting."
            );
            return Ok(Outcome::Waiting);
        }
        let callback_url = record.record.callback_url.as_deref();
        let due = callback_url.map(|_| self.webhooks.claimed_until_ms());
        let outcome = store_report(conn, ns, &report, due).await?;
        if let (Outcome::Stored, Some(url)) = (outcome, callback_url) {
            self.webhooks.spawn(&report, url);
        }
        records.forget(suite_id);
        Ok(outcome)
    }

    /// Closes suites past their deadline, every `sweep_interval`, until shutdown.
    async fn sweep_loop(&self, token: CancellationToken) {
        let mut conn = self.sweeper.clone();
        let mut interval = tokio::time::interval(self.config.sweep_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_trim = tokio::time::Instant::now() + self.config.trim_interval;
        let mut unfinished = Unfinished::default();
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                () = token.cancelled() => return,
            }
            if let Err(error) = self.sweep(&mut conn, &token).await {
                tracing::warn!(%error, "Could not sweep suites past their deadline.");
            }
            if let Err(error) = self.webhooks.sweep(&mut conn).await {
                tracing::warn!(%error, "Could not sweep queued webhooks.");
            }
            match unfinished.count(&mut conn, &self.config.namespace).await {
                Ok((suites, tests)) => {
                    metrics::aggregator().suites_open.set(suites);
                    metrics::aggregator().tests_unfinished.set(tests);
                }
                Err(error) => tracing::debug!(%error, "Could not count the open suites' tests."),
            }
            if tokio::time::Instant::now() >= next_trim {
                next_trim = tokio::time::Instant::now() + self.config.trim_interval;
                if let Err(error) = self.trim(&mut conn).await {
                    tracing::warn!(%error, "Could not trim the results stream.");
                }
            }
        }
    }

    async fn sweep(
        &self,
        conn: &mut ConnectionManager,
        token: &CancellationToken,
    ) -> redis::RedisResult<()> {
        let ns = &self.config.namespace;
        const PAGE: isize = 100;
        loop {
            let now = isotest_protocol::now_ms();
            let due: Vec<String> = conn
                .zrangebyscore_limit(ns.open_suites_key(), "-inf", now, 0, PAGE)
                .await?;
            for suite_id in &due {
                if token.is_cancelled() {
                    return Ok(());
                }
                let span = tracing::info_span!("sweep", suite_id = %suite_id);
                self.close_expired(conn, suite_id).instrument(span).await?;
            }
            if due.len() < PAGE as usize {
                return Ok(());
            }
        }
    }

    /// Removes the entries every aggregator is done with, which would otherwise pile up
    /// in Redis forever: those before both the group's oldest pending entry and the last
    /// one it delivered. Nothing else reads the stream through a group, and the
    /// notifications are worthless once handled (the results hash keeps the data).
    async fn trim(&self, conn: &mut ConnectionManager) -> redis::RedisResult<()> {
        let ns = &self.config.namespace;
        let stream = ns.results_stream();
        let groups: redis::streams::StreamInfoGroupsReply = conn.xinfo_groups(&stream).await?;
        let Some(group) = groups
            .groups
            .iter()
            .find(|g| g.name == ns.aggregator_group())
        else {
            return Ok(());
        };
        // XPENDING's summary: [count, smallest id, largest id, consumers].
        let summary: (usize, Option<String>, Option<String>, redis::Value) = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(ns.aggregator_group())
            .query_async(conn)
            .await?;
        let keep_from = match summary.1 {
            Some(oldest_pending) if summary.0 > 0 => oldest_pending,
            _ => group.last_delivered_id.clone(),
        };
        let removed: usize = redis::cmd("XTRIM")
            .arg(&stream)
            .arg("MINID")
            .arg(&keep_from)
            .query_async(conn)
            .await?;
        if removed > 0 {
            tracing::debug!(removed, "Trimmed handled entries off the results stream.");
        }
        Ok(())
    }

    /// Stores the report of a suite whose deadline passed, with its missing tests lost.
    async fn close_expired(
        &self,
        conn: &mut ConnectionManager,
        suite_id: &str,
    ) -> redis::RedisResult<()> {
        let ns = &self.config.namespace;
        if conn.exists(ns.report_key(suite_id)).await? {
            let _: usize = conn.zrem(ns.open_suites_key(), suite_id).await?;
            return Ok(());
        }
        let Some(record) = load_record(conn, ns, suite_id).await? else {
            tracing::warn!("Open suite has no record; closing it without a report.");
            let _: usize = conn.zrem(ns.open_suites_key(), suite_id).await?;
            return Ok(());
        };
        let results = load_results(conn, ns, suite_id).await?;
        let report = assemble(
            &record,
            results.iter().cloned(),
            SuiteState::DeadlineExceeded,
        );
        // Every test may have finished just before the deadline, with the entry that
        // completes the suite not yet read: that suite is complete, not late.
        let report = if report.summary.lost == 0 {
            assemble(&record, results, SuiteState::Complete)
        } else {
            report
        };
        let callback_url = record.callback_url.as_deref();
        let due = callback_url.map(|_| self.webhooks.claimed_until_ms());
        if store_report(conn, ns, &report, due).await? == Outcome::Stored {
            if let Some(url) = callback_url {
                self.webhooks.spawn(&report, url);
            }
            count_stored(report.state);
            tracing::info!(
                lost = report.summary.lost,
                state = ?report.state,
                "Closed a suite past its deadline."
            );
        }
        Ok(())
    }
}

/// This service's name in `/readyz`: ready while Redis answers.
const READY_PART: &str = "aggregator";

/// Counts a report this process stored.
fn count_stored(state: SuiteState) {
    metrics::suites_completed()
        .get_or_create(&StateLabels::of(state))
        .inc();
}

/// Observes the time from a result's stream entry (its id starts with Redis's clock in
/// milliseconds) to now, when the report it completed is stored.
fn observe_lag(entry_id: &str) {
    let Some(written_ms) = entry_id
        .split_once('-')
        .and_then(|(ms, _)| ms.parse::<u64>().ok())
    else {
        return;
    };
    let lag_ms = isotest_protocol::now_ms().saturating_sub(written_ms);
    metrics::aggregator()
        .aggregation_lag
        .observe(lag_ms as f64 / 1e3);
}

/// How many dead letters are handled at once.
const DEAD_LETTER_PREFETCH: u16 = 16;

impl Aggregator {
    /// Consumes the dead-letter queue until shutdown, reconnecting whenever RabbitMQ
    /// goes away.
    async fn dead_letter_loop(&self, url: String, token: CancellationToken) {
        let name = amqp::connection_name(
            &format!("{}-dead-letters", self.config.consumer),
            &self.config.namespace,
        );
        loop {
            let Some(conn) = amqp::reconnect(&url, &name, token.cancelled()).await else {
                return;
            };
            let why = self.consume_dead_letters(&conn, &name, &token).await;
            let _ = conn
                .close(200, "aggregator dead-letter consumer".into())
                .await;
            match why {
                None => return,
                Some(why) => {
                    tracing::warn!(reason = %why, "Lost the dead-letter queue; reconnecting.");
                    tokio::select! {
                        () = tokio::time::sleep(self.config.retry_backoff) => {}
                        () = token.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Handles dead letters on one connection; `None` on shutdown, else why it stopped.
    async fn consume_dead_letters(
        &self,
        conn: &lapin::Connection,
        tag: &str,
        token: &CancellationToken,
    ) -> Option<String> {
        let ns = &self.config.namespace;
        let channel = match amqp::channel_with_topology(conn, ns).await {
            Ok(channel) => channel,
            Err(e) => return Some(error_chain(&e)),
        };
        if let Err(e) = channel
            .basic_qos(DEAD_LETTER_PREFETCH, BasicQosOptions::default())
            .await
        {
            return Some(error_chain(&e));
        }
        let consumer = channel
            .basic_consume(
                ns.dead_letter_queue().as_str().into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await;
        let mut consumer = match consumer {
            Ok(consumer) => consumer,
            Err(e) => return Some(error_chain(&e)),
        };
        tracing::info!(queue = %ns.dead_letter_queue(), "Consuming dead letters.");
        let mut redis = self.sweeper.clone();
        loop {
            tokio::select! {
                () = token.cancelled() => return None,
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => self.handle_dead_letter(&mut redis, delivery).await,
                    Some(Err(e)) => return Some(error_chain(&e)),
                    None => return Some("the broker cancelled the consumer".to_owned()),
                },
            }
        }
    }

    /// Records a dead test message as an infrastructure error, then acks; a body that
    /// is no test message belongs to no suite and is only logged.
    async fn handle_dead_letter(&self, redis: &mut ConnectionManager, delivery: Delivery) {
        let reason = death_reason(&delivery);
        let msg = match TestMessage::from_bytes(&delivery.data) {
            Ok(msg) => msg,
            Err(error) => {
                tracing::warn!(
                    error = %error_chain(&error),
                    bytes = delivery.data.len(),
                    death = %reason,
                    "Dropping a dead letter that is not a test message this aggregator reads."
                );
                let _ = delivery.ack(BasicAckOptions::default()).await;
                return;
            }
        };
        let span = tracing::info_span!("dead_letter", suite_id = %msg.suite_id, test = %msg.test.name, attempt = msg.attempt);
        async {
            let result = dead_letter_result(&msg, &self.config.consumer, &reason);
            match isotest_infra::results::record(redis, &self.config.namespace, &result).await {
                Ok(written) => {
                    tracing::warn!(written, death = %reason, "Recorded an infrastructure error for a dead test message.");
                    metrics::aggregator().dead_letters.inc();
                    if written {
                        metrics::results_written()
                            .get_or_create(&StatusLabels {
                                status: result.status.as_str(),
                            })
                            .inc();
                    }
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "Could not record a dead test message; returning it.");
                    tokio::time::sleep(self.config.retry_backoff).await;
                    let _ = delivery
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..Default::default()
                        })
                        .await;
                }
            }
        }
        .instrument(span)
        .await;
    }
}

/// Why RabbitMQ dead-lettered a message, from its `x-first-death-reason` header:
/// `delivery_limit` (its workers kept failing or dying), `rejected`, or `expired`.
fn death_reason(delivery: &Delivery) -> String {
    let header = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-first-death-reason").cloned());
    match header {
        Some(AMQPValue::LongString(text)) => text.to_string(),
        Some(AMQPValue::ShortString(text)) => text.to_string(),
        _ => "unknown".to_owned(),
    }
}

/// The final `error` result of a test whose message was dead-lettered.
fn dead_letter_result(msg: &TestMessage, consumer: &str, death: &str) -> TestResult {
    let now = isotest_protocol::now_ms();
    let why = match death {
        "delivery_limit" => format!(
            "infrastructure: no worker could handle the test in {} deliveries (dead-lettered)",
            amqp::DELIVERY_LIMIT
        ),
        other => format!("infrastructure: the test message was dead-lettered ({other})"),
    };
    TestResult::prepare_error(msg, consumer, why, now)
}

/// What [`cancel`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancelled {
    /// This call stored the cancelled report.
    Now(Box<Report>),
    /// The suite had already ended; its report says how.
    AlreadyEnded(SuiteState),
    /// No such suite.
    UnknownSuite,
}

/// Cancels a suite: stores its report as [`SuiteState::Cancelled`] (tests without a
/// final result become `cancelled`) unless it already has one. Workers then drop its
/// queued messages and kill its running tests, as for any closed suite.
///
/// # Errors
///
/// Returns the [`redis::RedisError`] when Redis fails.
pub async fn cancel(
    conn: &mut ConnectionManager,
    ns: &Namespace,
    suite_id: &str,
) -> redis::RedisResult<Cancelled> {
    if let Some(state) = stored_state(conn, ns, suite_id).await? {
        return Ok(Cancelled::AlreadyEnded(state));
    }
    let Some(record) = load_record(conn, ns, suite_id).await? else {
        return Ok(Cancelled::UnknownSuite);
    };
    let results = load_results(conn, ns, suite_id).await?;
    let report = assemble(&record, results, SuiteState::Cancelled);
    // The producer cancels, and it sends no webhooks: queue it due now, for the next
    // aggregator sweep.
    let due = record
        .callback_url
        .as_ref()
        .map(|_| isotest_protocol::now_ms());
    match store_report(conn, ns, &report, due).await? {
        Outcome::Stored => {
            count_stored(SuiteState::Cancelled);
            Ok(Cancelled::Now(Box::new(report)))
        }
        // Completed (or swept) between the check and the write: that report stands.
        _ => Ok(Cancelled::AlreadyEnded(
            stored_state(conn, ns, suite_id)
                .await?
                .unwrap_or(SuiteState::Complete),
        )),
    }
}

/// The state of a stored report, if there is one.
async fn stored_state(
    conn: &mut ConnectionManager,
    ns: &Namespace,
    suite_id: &str,
) -> redis::RedisResult<Option<SuiteState>> {
    #[derive(serde::Deserialize)]
    struct State {
        state: SuiteState,
    }
    let json: Option<String> = conn.get(ns.report_key(suite_id)).await?;
    Ok(json
        .map(|json| serde_json::from_str::<State>(&json).map_or(SuiteState::Complete, |s| s.state)))
}

/// Stores the report unless one exists, then takes the suite off the open set; with
/// `webhook_due_ms`, queues the suite's webhook in the same step (see [`crate::webhook`]).
async fn store_report(
    conn: &mut ConnectionManager,
    ns: &Namespace,
    report: &Report,
    webhook_due_ms: Option<u64>,
) -> redis::RedisResult<Outcome> {
    let stored = crate::webhook::store_report(conn, ns, report, webhook_due_ms).await?;
    Ok(if stored {
        Outcome::Stored
    } else {
        Outcome::AlreadyReported
    })
}

/// The suite's record, or `None` when there is none or it cannot be read (logged).
async fn load_record(
    conn: &mut ConnectionManager,
    ns: &Namespace,
    suite_id: &str,
) -> redis::RedisResult<Option<SuiteRecord>> {
    let json: Option<String> = conn.get(ns.suite_key(suite_id)).await?;
    Ok(json.and_then(|json| match serde_json::from_str(&json) {
        Ok(record) => Some(record),
        Err(error) => {
            tracing::error!(%error, "Suite record is not valid JSON of a suite record.");
            None
        }
    }))
}

/// Every result of the suite; one that does not parse is logged and left out.
async fn load_results(
    conn: &mut ConnectionManager,
    ns: &Namespace,
    suite_id: &str,
) -> redis::RedisResult<Vec<TestResult>> {
    let fields: HashMap<String, String> = conn.hgetall(ns.results_key(suite_id)).await?;
    Ok(fields
        .into_iter()
        .filter_map(|(field, json)| match serde_json::from_str(&json) {
            Ok(result) => Some(result),
            Err(error) => {
                tracing::warn!(%error, field, "Result is not valid JSON of a test result; ignoring it.");
                None
            }
        })
        .collect())
}

/// The number of distinct tests a record lists (a name listed twice is one test).
fn distinct_tests(record: &SuiteRecord) -> usize {
    record.tests.iter().collect::<HashSet<_>>().len()
}

/// Counts the tests of open suites that have no final result yet, wherever they wait
/// (queued, held by a worker, awaiting a retry) or run: what workers are scaled on. A suite's
/// number of distinct tests is read from its record once and kept while the suite is open.
#[derive(Debug, Default)]
struct Unfinished {
    distinct_tests: HashMap<String, usize>,
}

impl Unfinished {
    /// (open suites, their tests without a final result).
    async fn count(
        &mut self,
        conn: &mut ConnectionManager,
        ns: &Namespace,
    ) -> redis::RedisResult<(i64, i64)> {
        let open: Vec<String> = conn.zrange(ns.open_suites_key(), 0, -1).await?;
        let still_open: HashSet<&str> = open.iter().map(String::as_str).collect();
        self.distinct_tests
            .retain(|id, _| still_open.contains(id.as_str()));
        for id in &open {
            if !self.distinct_tests.contains_key(id)
                && let Some(record) = load_record(conn, ns, id).await?
            {
                self.distinct_tests
                    .insert(id.clone(), distinct_tests(&record));
            }
        }
        let done: Vec<usize> = if open.is_empty() {
            Vec::new()
        } else {
            let mut pipe = redis::pipe();
            for id in &open {
                pipe.scard(ns.done_key(id));
            }
            pipe.query_async(conn).await?
        };
        let tests: usize = open
            .iter()
            .zip(done)
            .map(|(id, done)| {
                self.distinct_tests
                    .get(id)
                    .map_or(0, |n| n.saturating_sub(done))
            })
            .sum();
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        Ok((count(open.len()), count(tests)))
    }
}

/// A record and the number of distinct tests it lists, which completion compares the
/// done set against (a name listed twice is one test).
#[derive(Debug)]
struct CachedRecord {
    record: SuiteRecord,
    distinct_tests: usize,
}

/// Suite records by id: a record of 20 000 names is too big to fetch and parse for
/// each of its 20 000 results. Records never change once written, so no invalidation
/// is needed beyond forgetting finished suites.
#[derive(Debug, Default)]
struct RecordCache {
    records: HashMap<String, Arc<CachedRecord>>,
}

impl RecordCache {
    const CAPACITY: usize = 256;

    async fn get(
        &mut self,
        conn: &mut ConnectionManager,
        ns: &Namespace,
        suite_id: &str,
    ) -> redis::RedisResult<Option<Arc<CachedRecord>>> {
        if let Some(record) = self.records.get(suite_id) {
            return Ok(Some(Arc::clone(record)));
        }
        let Some(record) = load_record(conn, ns, suite_id).await? else {
            return Ok(None);
        };
        let distinct_tests = distinct_tests(&record);
        let cached = Arc::new(CachedRecord {
            record,
            distinct_tests,
        });
        // Dropping everything at once is crude, but it bounds memory and costs only
        // re-reads.
        if self.records.len() >= Self::CAPACITY {
            self.records.clear();
        }
        self.records
            .insert(suite_id.to_owned(), Arc::clone(&cached));
        Ok(Some(cached))
    }

    fn forget(&mut self, suite_id: &str) {
        self.records.remove(suite_id);
    }
}
