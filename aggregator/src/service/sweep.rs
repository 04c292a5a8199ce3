//! The sweeper: every `sweep_interval` it closes suites past their deadline (tests
//! without a final result become `lost`), delivers queued webhooks that are due, and
//! counts the open suites; every `trim_interval` it trims handled entries off the
//! results stream.

use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use isotest_infra::metrics;
use isotest_infra::reports::Stored;
use isotest_infra::suites::{load_record, load_results};
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
            match conn
                .zcard::<_, i64>(self.config.namespace.open_suites_key())
                .await
            {
                Ok(open) => {
                    metrics::aggregator().suites_open.set(open);
                }
                Err(error) => tracing::debug!(%error, "Could not count the open suites."),
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
