//! Reading the results stream through the consumer group: this consumer's own pending
//! entries first, then new ones, and now and then entries that dead consumers left
//! pending (claimed after `claim_idle`). Each entry names a suite with a new result; the
//! suite is completed once its every test has a final result.

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimOptions, StreamId, StreamReadOptions, StreamReadReply};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use isotest_infra::metrics;
use isotest_infra::reports::Stored;
use isotest_infra::suites::{RecordCache, load_results};
use isotest_protocol::report::SuiteState;
use isotest_report::assemble;

use super::{Aggregator, AggregatorError, READY_PART};

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
    /// Creates the group unless it exists. It starts at the stream's beginning, not its
    /// end, so entries written before the first aggregator ever ran are not skipped.
    pub(super) async fn ensure_group(
        &self,
        conn: &mut ConnectionManager,
    ) -> Result<(), AggregatorError> {
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

    /// Reads the stream: this consumer's own pending entries first (left by a previous
    /// run under the same name), then new ones, and now and then entries that dead
    /// consumers left pending.
    pub(super) async fn read_loop(&self, token: CancellationToken) -> Result<(), AggregatorError> {
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
        let stored = self.store_report(conn, &record.record, &report).await?;
        records.forget(suite_id);
        Ok(match stored {
            Stored::Now => Outcome::Stored,
            Stored::AlreadyReported => Outcome::AlreadyReported,
        })
    }
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
