//! Recording ended suites in the history store, and retention: every sweep takes the
//! suites queued by the report's one write ([`Namespace::history_pending_key`]),
//! records each with its record's token, metadata and digests, then lets the suite's
//! Redis keys expire after the retention time. A suite stays queued until it is
//! recorded, so a crash or a history store that is down delays it, never loses it;
//! recording is keyed by the suite id, so doing it twice writes nothing twice.

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use isotest_history::quarantine::Scope;
use isotest_history::write::digests_of;
use isotest_history::{FlakyPolicy, History, HistoryError, Recorded, SuiteEntry};
use isotest_infra::reports::{self, LoadError};
use isotest_infra::suites::load_record;
use isotest_protocol::names::Namespace;

use super::Aggregator;

/// Suites recorded per round trip.
const PAGE: isize = 100;

/// How long a queued suite waits for an aggregator with a history store before one
/// without drops it from the queue (it keeps its Redis keys, unexpired).
const UNRECORDED_KEPT: Duration = Duration::from_secs(3600);

/// Where the aggregator records ended suites, and for how long their Redis keys stay
/// after that.
#[derive(Debug, Clone)]
pub struct HistorySink {
    pub history: History,
    pub retention: Duration,
    /// Quarantine a test of a recorded suite whose flakiness score reaches this (0 to
    /// 1), for the suite's repository (else its token, else everywhere); `None` never.
    pub auto_quarantine: Option<f64>,
}

/// The runs an automatic quarantine looks back over.
const AUTO_QUARANTINE_SINCE: Duration = Duration::from_secs(30 * 86_400);

/// A failure of one round of recording; the suites stay queued.
#[derive(Debug, thiserror::Error)]
pub(super) enum HistoryJobError {
    #[error("redis command failed")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    History(#[from] HistoryError),
}

impl Aggregator {
    /// Records the queued suites; without a history store, drops the queue's entries
    /// older than [`UNRECORDED_KEPT`] so that it does not grow.
    pub(super) async fn record_history(
        &self,
        conn: &mut ConnectionManager,
    ) -> Result<(), HistoryJobError> {
        let ns = &self.config.namespace;
        let key = ns.history_pending_key();
        let Some(sink) = &self.config.history else {
            let before = isotest_protocol::now_ms()
                .saturating_sub(u64::try_from(UNRECORDED_KEPT.as_millis()).unwrap_or(0));
            let _: usize = conn.zrembyscore(&key, "-inf", before).await?;
            return Ok(());
        };
        loop {
            let due: Vec<String> = conn.zrange(&key, 0, PAGE - 1).await?;
            for suite_id in &due {
                record_one(conn, ns, sink, suite_id).await?;
            }
            if due.len() < PAGE as usize {
                return Ok(());
            }
        }
    }
}

/// Quarantines the tests of suites named `suite` whose score reaches `threshold`.
async fn auto_quarantine(
    sink: &HistorySink,
    record: &isotest_protocol::api::SuiteRecord,
    suite: &str,
    threshold: f64,
) -> Result<(), HistoryJobError> {
    let now = isotest_protocol::now_ms();
    let since =
        now.saturating_sub(u64::try_from(AUTO_QUARANTINE_SINCE.as_millis()).unwrap_or(u64::MAX));
    let policy = FlakyPolicy {
        min_score: threshold,
        ..FlakyPolicy::default()
    };
    let scope = match (
        record.meta.get(isotest_protocol::api::meta::REPOSITORY),
        &record.owner,
    ) {
        (Some(repo), _) => Scope::Repository(repo.clone()),
        (None, Some(token)) => Scope::Token(token.clone()),
        (None, None) => Scope::All,
    };
    for flaky in sink.history.flaky_in_suite(suite, since, &policy).await? {
        let reason = format!(
            "automatic: flaky score {:.2} ({} of {} runs)",
            flaky.score, flaky.signals, flaky.runs
        );
        if sink
            .history
            .quarantine_add(&scope, &flaky.test, &reason, now)
            .await?
        {
            tracing::info!(test = %flaky.test, %scope, score = flaky.score, "Quarantined a flaky test.");
        }
    }
    Ok(())
}

/// Records one queued suite, sets its keys to expire and takes it off the queue.
async fn record_one(
    conn: &mut ConnectionManager,
    ns: &Namespace,
    sink: &HistorySink,
    suite_id: &str,
) -> Result<(), HistoryJobError> {
    let key = ns.history_pending_key();
    let stored = match reports::load(conn, ns, suite_id).await {
        Ok(stored) => stored,
        Err(LoadError::Redis(e)) => return Err(e.into()),
        Err(error @ LoadError::Corrupt { .. }) => {
            tracing::error!(%suite_id, error = %isotest_infra::error_chain(&error), "Could not record the suite in the history store: its report does not parse.");
            None
        }
    };
    let Some(stored) = stored else {
        // Nothing to record (the report expired or was never readable).
        let _: usize = conn.zrem(&key, suite_id).await?;
        return Ok(());
    };
    let record = load_record(conn, ns, suite_id).await?.unwrap_or_default();
    let digests = digests_of(&record);
    let entry = SuiteEntry {
        report: &stored.report,
        token: record.owner.as_deref(),
        meta: &record.meta,
        digests: &digests,
    };
    let recorded = sink.history.record(&entry).await?;
    if recorded == Recorded::Now {
        tracing::debug!(%suite_id, "Recorded the suite in the history store.");
        if let Some(threshold) = sink.auto_quarantine {
            auto_quarantine(sink, &record, &stored.report.suite, threshold).await?;
        }
    }
    let seconds = i64::try_from(sink.retention.as_secs().max(1)).unwrap_or(i64::MAX);
    let mut pipe = redis::pipe();
    for suite_key in ns.suite_keys(suite_id) {
        pipe.expire(suite_key, seconds).ignore();
    }
    pipe.zrem(&key, suite_id).ignore();
    let () = pipe.query_async(conn).await?;
    Ok(())
}
