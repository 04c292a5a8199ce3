//! Writing a test result to Redis: the one idempotent write that workers and the
//! aggregator's dead-letter consumer share, so both obey the same first-writer-wins rule.
//!
//! The write is one Lua script, so it is atomic: the first result of an attempt wins
//! (`HSETNX`), and only that first write marks the test done (if final), notifies the
//! aggregators on the results stream and tells the dashboard on the suite's live event
//! stream ([`crate::events`]). Writing the same attempt again changes nothing.
//!
//! The same write keeps a passed result in the result cache when its message asks for
//! it ([`Keep`]), and writes the results the producer serves from the cache
//! ([`record_all`]), so a cached result reaches the aggregators, reports and dashboard
//! by the one path every result takes.

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
if ARGV[11] ~= '' then
  redis.call('SET', KEYS[5], ARGV[11], 'EX', ARGV[12])
end
return 1
";

/// Compiled once: `redis::Script` hashes its text, and EVALSHA falls back to EVAL when
/// a restarted Redis no longer knows it.
static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RECORD_SCRIPT));

/// A result cache entry to write with a result, if this write is the attempt's first.
#[derive(Debug, Clone)]
pub struct Keep {
    /// The entry's Redis key ([`Namespace::cache_entry_key`]).
    pub key: String,
    /// JSON [`isotest_protocol::cache::CacheEntry`].
    pub entry: String,
    pub ttl_secs: u64,
}

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
    record_keeping(conn, ns, result, None).await
}

/// [`record`], and if this call wrote the result, `keep`'s entry into the result cache
/// in the same script.
///
/// # Errors
///
/// Returns the [`redis::RedisError`] when Redis does not confirm the write.
pub async fn record_keeping(
    conn: &mut ConnectionManager,
    ns: &Namespace,
    result: &TestResult,
    keep: Option<&Keep>,
) -> Result<bool, redis::RedisError> {
    let written: i64 = invocation(ns, result, keep).invoke_async(conn).await?;
    Ok(written == 1)
}

/// How many results one pipeline of [`record_all`] carries.
const BATCH: usize = 1_000;

/// Writes many results (each by the same script as [`record`]), pipelined in batches:
/// the producer's results served from the cache, thousands in a few round trips.
///
/// # Errors
///
/// Returns the [`redis::RedisError`] when Redis does not confirm the writes.
pub async fn record_all(
    conn: &mut ConnectionManager,
    ns: &Namespace,
    results: &[TestResult],
) -> Result<(), redis::RedisError> {
    for batch in results.chunks(BATCH) {
        let invocations: Vec<_> = batch.iter().map(|r| invocation(ns, r, None)).collect();
        let mut pipe = redis::pipe();
        pipe.load_script(&SCRIPT).ignore();
        for invocation in &invocations {
            pipe.invoke_script(invocation).ignore();
        }
        let () = pipe.query_async(conn).await?;
    }
    Ok(())
}

fn invocation<'a>(
    ns: &Namespace,
    result: &TestResult,
    keep: Option<&Keep>,
) -> redis::ScriptInvocation<'a> {
    // A struct of strings, numbers and vectors always serializes.
    let json = serde_json::to_string(result).unwrap_or_default();
    let results_key = ns.results_key(&result.suite_id);
    let mut invocation = SCRIPT.prepare_invoke();
    invocation
        .key(&results_key)
        .key(ns.done_key(&result.suite_id))
        .key(ns.results_stream())
        .key(ns.suite_events_key(&result.suite_id))
        // Without an entry to keep, a key the writer may touch anyway stands in.
        .key(keep.map_or(results_key.as_str(), |k| k.key.as_str()))
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
        .arg(keep.map_or("", |k| k.entry.as_str()))
        .arg(keep.map_or(0, |k| k.ttl_secs));
    invocation
}
