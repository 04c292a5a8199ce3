//! The sweeper: every `sweep_interval` it closes suites past their deadline (tests
//! without a final result become `lost`), delivers queued webhooks that are due,
//! records ended suites in the history store (`history.rs`), and
//! counts the open suites and their unfinished tests; every `trim_interval` it trims handled entries off the
//! results stream.

use std::collections::HashSet;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use isotest_infra::metrics;
use isotest_infra::reports::Stored;
use isotest_infra::suites::{RecordCache, load_record, load_results};
use isotest_protocol::names::Namespace;
use isotest_protocol::report::SuiteState;
use isotest_report::assemble;

use super::Aggregator;

impl Aggregator {
    /// Closes suites past their deadline, every `sweep_interval`, until shutdown.
    pub(super) async fn sweep_loop(&self, token: CancellationToken) {
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
            if let Err(error) = self.record_history(&mut conn).await {
                tracing::warn!(error = %isotest_infra::error_chain(&error), "Could not record ended suites in the history store; they stay queued.");
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
        if self.store_report(conn, &record, &report).await? == Stored::Now {
            tracing::info!(
                lost = report.summary.lost,
                state = ?report.state,
                "Closed a suite past its deadline."
            );
        }
        Ok(())
    }
}

/// Counts the tests of open suites that have no final result yet, wherever they wait
/// (queued, held by a worker, awaiting a retry) or run: what workers are scaled on. A suite's
/// number of distinct tests is read from its record once and kept while the suite is open.
#[derive(Debug, Default)]
struct Unfinished {
    records: RecordCache,
    open: HashSet<String>,
}

impl Unfinished {
    /// (open suites, their tests without a final result).
    async fn count(
        &mut self,
        conn: &mut ConnectionManager,
        ns: &Namespace,
    ) -> redis::RedisResult<(i64, i64)> {
        let open: Vec<String> = conn.zrange(ns.open_suites_key(), 0, -1).await?;
        let now_open: HashSet<String> = open.iter().cloned().collect();
        for closed in self.open.difference(&now_open) {
            self.records.forget(closed);
        }
        self.open = now_open;
        let done: Vec<usize> = if open.is_empty() {
            Vec::new()
        } else {
            let mut pipe = redis::pipe();
            for id in &open {
                pipe.scard(ns.done_key(id));
            }
            pipe.query_async(conn).await?
        };
        let mut tests = 0usize;
        for (id, done) in open.iter().zip(done) {
            if let Some(record) = self.records.get(conn, ns, id).await? {
                tests += record.distinct_tests.saturating_sub(done);
            }
        }
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        Ok((count(open.len()), count(tests)))
    }
}
