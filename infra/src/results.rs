//! Writing a test result to Redis: the one idempotent write that workers and the
//! aggregator's dead-letter consumer share, so both obey the same first-writer-wins rule.
//!
//! The write is one Lua script, so it is atomic: the first result of an attempt wins
//! (`HSETNX`), and only that first write marks the test done (if final), notifies the
//! aggregators on the results stream and tells the dashboard on the suite's live event
//! stream ([`crate::events`]). Writing the same attempt again changes nothing.

use std::sync::LazyLock;

use redis::aio::ConnectionManager;

use isotest_protocol::names::Namespace;
use isotest_protocol::result::TestResult;

const RECORD_SCRIPT: &str = r"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
if ARGV[5] == '1' then
  redis.call('SADD', KEYS[2], ARGV[4])
end
redis.call('XADD', KEYS[3], '*', 'suite', ARGV[3], 'test', ARGV[4], 'field', ARGV[1])
redis.call('XADD', KEYS[4], 'NOMKSTREAM', 'MAXLEN', '~', ARGV[6], '*', 'kind', 'result',
  'test', ARGV[4], 'attempt', ARGV[7], 'status', ARGV[8], 'final', ARGV[5],
  'duration_ms', ARGV[9], 'worker', ARGV[10])
return 1
";

/// Compiled once: `redis::Script` hashes its text, and EVALSHA falls back to EVAL when
/// a restarted Redis no longer knows it.
static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RECORD_SCRIPT));

/// Writes a result unless its attempt already has one; true when this call wrote it.
///
/// # Errors
///
/// Returns the [`redis::RedisError`] when Redis does not confirm the write.
pub async fn record(
    conn: &mut ConnectionManager,
    ns: &Namespace,
    result: &TestResult,
) -> Result<bool, redis::RedisError> {
    // A struct of strings, numbers and vectors always serializes.
    let json = serde_json::to_string(result).unwrap_or_default();
    let written: i64 = SCRIPT
        .key(ns.results_key(&result.suite_id))
        .key(ns.done_key(&result.suite_id))
        .key(ns.results_stream())
        .key(ns.suite_events_key(&result.suite_id))
        .arg(result.field())
        .arg(json)
        .arg(&result.suite_id)
        .arg(&result.name)
        .arg(if result.is_final { "1" } else { "0" })
        .arg(crate::events::MAX_EVENTS)
        .arg(result.attempt)
        .arg(result.status.as_str())
        .arg(result.duration_ms)
        .arg(&result.worker)
        .invoke_async(conn)
        .await?;
    Ok(written == 1)
}
