//! A suite's report in Redis: [`store`] is the one place a report is ever written, and
//! it writes it exactly once (`SET NX`); [`load`] and [`stored_state`] read it back.
//!
//! Completion, the deadline sweep and cancellation all end a suite through [`store`],
//! so whichever comes first wins and the others find the report already there. The
//! same Lua script queues the suite's `suite.finished` webhook, so a stored report
//! always has its delivery queued, and queues the suite for the history store
//! ([`Namespace::history_pending_key`]), so no ended suite is left out of it.

use std::sync::LazyLock;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use isotest_protocol::names::Namespace;
use isotest_protocol::report::{Report, SuiteState};

use crate::metrics::{self, StateLabels};

/// Stores a report unless one exists and takes its suite off the open set, and in the
/// same step queues its webhook (ARGV[3], the ms when it is due; empty for none) and
/// its recording in the history store (ARGV[4], now in ms), and tells the suite's live
/// event stream ([`crate::events`]) that it ended.
/// KEYS: report, open suites, webhooks, history pending, events; ARGV: report JSON, suite
/// id, due, now, state, the stream's bound. 1 if stored.
const STORE_SCRIPT: &str = r"
local stored = redis.call('SET', KEYS[1], ARGV[1], 'NX')
redis.call('ZREM', KEYS[2], ARGV[2])
if not stored then
  return 0
end
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
end
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[2])
redis.call('XADD', KEYS[5], 'NOMKSTREAM', 'MAXLEN', '~', ARGV[6], '*', 'kind', 'end',
  'state', ARGV[5])
return 1
";

/// Compiled once: `redis::Script` hashes its text, and EVALSHA falls back to EVAL when
/// a restarted Redis no longer knows it.
static STORE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(STORE_SCRIPT));

/// What [`store`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Stored {
    /// This call wrote the report: the suite ended here.
    Now,
    /// The suite already had a report (another replica, the sweeper, a cancellation);
    /// nothing was written.
    AlreadyReported,
}

/// Stores `report` unless the suite has one, then takes the suite off the open set;
/// when `webhook_due_ms` is given, queues its webhook (see [`Namespace::webhooks_key`])
/// due then, and queues the suite for the history store, in the same script. A report this call stores is counted in
/// [`metrics::suites_completed`].
///
/// # Errors
///
/// Returns the [`redis::RedisError`] when Redis fails; nothing is then written.
pub async fn store(
    conn: &mut ConnectionManager,
    ns: &Namespace,
    report: &Report,
    webhook_due_ms: Option<u64>,
) -> redis::RedisResult<Stored> {
    // A report of strings and numbers always serializes.
    let json = serde_json::to_string(report).unwrap_or_default();
    let stored: i64 = STORE
        .key(ns.report_key(&report.suite_id))
        .key(ns.open_suites_key())
        .key(ns.webhooks_key())
        .key(ns.history_pending_key())
        .key(ns.suite_events_key(&report.suite_id))
        .arg(json)
        .arg(&report.suite_id)
        .arg(webhook_due_ms.map(|ms| ms.to_string()).unwrap_or_default())
        .arg(isotest_protocol::now_ms())
        .arg(report.state.as_str())
        .arg(crate::events::MAX_EVENTS)
        .invoke_async(conn)
        .await?;
    if stored != 1 {
        return Ok(Stored::AlreadyReported);
    }
    metrics::suites_completed()
        .get_or_create(&StateLabels::of(report.state))
        .inc();
    // Only the scheduler's order depends on them: a failure here costs the next run
    // its longest-first order, never this suite its report.
    if let Err(error) = crate::schedule::record_durations(conn, ns, report).await {
        tracing::warn!(error = %crate::error_chain(&error), "Could not keep the tests' durations.");
    }
    Ok(Stored::Now)
}

/// A failure to read a stored report.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("redis command failed")]
    Redis(#[from] redis::RedisError),
    #[error("`{key}` in Redis is not valid JSON of its type")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A report as stored, with the parsed form for renderings.
#[derive(Debug)]
pub struct StoredReport {
    /// The exact JSON the aggregator wrote, served as is so that fields added by a
    /// newer aggregator reach clients.
    pub json: String,
    pub report: Report,
}

/// The suite's report, once it has one.
///
/// # Errors
///
/// Returns [`LoadError`] when Redis fails or the report is not a report.
pub async fn load(
    conn: &mut ConnectionManager,
    ns: &Namespace,
    suite_id: &str,
) -> Result<Option<StoredReport>, LoadError> {
    let key = ns.report_key(suite_id);
    let json: Option<String> = conn.get(&key).await?;
    let Some(json) = json else {
        return Ok(None);
    };
    match serde_json::from_str(&json) {
        Ok(report) => Ok(Some(StoredReport { json, report })),
        Err(source) => Err(LoadError::Corrupt { key, source }),
    }
}

/// The state of a stored report, if there is one. Only the state is read, so a report
/// this process cannot otherwise parse still counts as ended (as `complete` when even
/// its state is unreadable).
///
/// # Errors
///
/// Returns the [`redis::RedisError`] when Redis fails.
pub async fn stored_state(
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
