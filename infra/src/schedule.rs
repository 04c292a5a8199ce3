//! The scheduler's state in Redis, and every step that changes it, each one Lua script:
//! the dispatcher's lease, claiming a suite's next tests for RabbitMQ, confirming or
//! putting back a claim, and the fence a worker passes before it runs a dispatched copy
//! of a test. Together they keep the scheduler's invariant: every test is dispatched,
//! and at most one copy of its message is ever run, whichever dispatcher dies when.
//!
//! The protocol: the leader *claims* tests (pending → claimed, the test's dispatch token
//! set in one script), publishes them with their token, then *confirms* the claim. A
//! claim left by a dead leader is *put back* by the next one, unless a worker has
//! already *started* that copy: a copy whose token is no longer the test's current
//! one is dropped by the worker that receives it, so the test runs once.

use std::sync::LazyLock;
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use isotest_protocol::names::Namespace;

/// Takes or keeps the lease. KEYS: lease. ARGV: owner, ttl ms.
/// 1: renewed, 2: newly taken, 0: another owner holds it.
const LEASE_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
";

/// Gives the lease up if this owner holds it. KEYS: lease. ARGV: owner.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Claims up to ARGV[3] of a suite's pending tests for the lease holder.
/// KEYS: lease, scheduled suites, pending, messages, dispatch, dispatched, report, claims.
/// ARGV: owner, suite id, count, token.
/// Answers {'not-leader'}, {'closed'}, or {'ok', index, message, index, message, ...}.
const CLAIM_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {'not-leader'}
end
if redis.call('EXISTS', KEYS[7]) == 1 then
  return {'closed'}
end
local out = {'ok'}
for _ = 1, tonumber(ARGV[3]) do
  local entry = redis.call('LPOP', KEYS[3])
  if not entry then
    break
  end
  local index = string.match(entry, '^(%d+):')
  local message = redis.call('HGET', KEYS[4], index)
  if index and message then
    redis.call('HSET', KEYS[5], index, ARGV[4])
    redis.call('HSET', KEYS[8], ARGV[2] .. '|' .. index, ARGV[1] .. '|' .. ARGV[4] .. '|' .. entry)
    redis.call('INCR', KEYS[6])
    out[#out + 1] = index
    out[#out + 1] = message
  end
end
return out
";

/// Confirms claims RabbitMQ has taken. KEYS: claims. ARGV: owner|token| prefix, then
/// the claims' fields.
const CONFIRM_SCRIPT: &str = r"
local prefix = ARGV[1]
for i = 2, #ARGV do
  local value = redis.call('HGET', KEYS[1], ARGV[i])
  if value and string.sub(value, 1, #prefix) == prefix then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return 0
";

/// Ends claims: those of other owners than ARGV[2] (when ARGV[2] is not empty) and
/// those of token ARGV[3] (when not empty). A claimed copy a worker has started
/// stands; any other goes back to the head of its suite's pending list with its
/// dispatch token removed, so the copy (if it reached RabbitMQ) is dropped on arrival.
/// KEYS: claims. ARGV: suite key prefix, owner, token. Answers {put back, started}.
const PUT_BACK_SCRIPT: &str = r"
local claims = redis.call('HGETALL', KEYS[1])
local back, started = 0, 0
for i = 1, #claims, 2 do
  local field, value = claims[i], claims[i + 1]
  local owner, token, entry = string.match(value, '^([^|]*)|([^|]*)|(.*)$')
  local suite, index = string.match(field, '^(.*)|(%d+)$')
  local mine = (ARGV[2] ~= '' and owner ~= ARGV[2]) or (ARGV[3] ~= '' and token == ARGV[3])
  if owner and suite and mine then
    redis.call('HDEL', KEYS[1], field)
    local base = ARGV[1] .. suite
    if redis.call('HGET', base .. ':started', index) == token then
      started = started + 1
    elseif redis.call('HGET', base .. ':dispatch', index) == token then
      redis.call('HDEL', base .. ':dispatch', index)
      if redis.call('EXISTS', base .. ':report') == 0 then
        redis.call('LPUSH', base .. ':pending', entry)
        redis.call('DECR', base .. ':dispatched')
        back = back + 1
      end
    end
  end
end
return {back, started}
";

/// A worker's fence: the copy with token ARGV[2] of test ARGV[1] may run only while it
/// is the test's current dispatch and its suite is open; then it is marked started.
/// KEYS: started (the one key it writes). ARGV: test index, token, then the names of the
/// dispatch hash and the report key, which it only reads: EVAL asks for write access to
/// every declared key, and a worker's Redis user may only read those
/// (`deploy/redis/users.acl`). 1: run, 0: a stale copy, 2: the suite is closed.
const START_SCRIPT: &str = r"
if redis.call('EXISTS', ARGV[4]) == 1 then
  return 2
end
if redis.call('HGET', ARGV[3], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
";

static LEASE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(LEASE_SCRIPT));
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RELEASE_SCRIPT));
static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CLAIM_SCRIPT));
static CONFIRM: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CONFIRM_SCRIPT));
static PUT_BACK: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(PUT_BACK_SCRIPT));
static START: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(START_SCRIPT));

/// Who holds the dispatcher lease after [`hold_lease`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// This owner held it and has renewed it.
    Renewed,
    /// This owner has just taken it: claims of earlier leaders must be put back.
    Taken,
    /// Another owner holds it.
    Elsewhere,
}

/// Takes the dispatcher lease for `ttl`, or renews it if `owner` holds it.
///
/// # Errors
///
/// Returns the [`redis::RedisError`] when Redis fails.
pub async fn hold_lease(
    conn: &mut ConnectionManager,
    ns: &Namespace,
    owner: &str,
    ttl: Duration,
) -> redis::RedisResult<Lease> {
    let held: i64 = LEASE
        .key(ns.dispatcher_lease_key())
        .arg(owner)
        .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
        .invoke_async(conn)
        .await?;
    Ok(match held {
        1 => Lease::Renewed,
        2 => Lease::Taken,
        _ => Lease::Elsewhere,
    })
}

/// Gives the lease up, if `owner` holds it, so a standby takes over at once.
///
/// # Errors
///
/// Returns the [`redis::RedisError`] when Redis fails.
pub async fn release_lease(
    conn: &mut ConnectionManager,
    ns: &Namespace,
    owner: &str,
) -> redis::RedisResult<()> {
    let _: i64 = RELEASE
        .key(ns.dispatcher_lease_key())
        .arg(owner)
        .invoke_async(conn)
        .await?;
    Ok(())
}

/// What [`claim`] took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller no longer holds the lease: it must not dispatch.
    NotLeader,
    /// The suite has a report; nothing of it is dispatched any more.
    Closed,
    /// The claimed tests: (index, first-attempt message JSON), in dispatch order.
    Tests(Vec<(u32, String)>),
}

/// Claims up to `count` of the suite's pending tests under dispatch `token`, for the
/// lease holder `owner` only.
///
/// # Errors
///
/// Returns the [`redis::RedisError`] when Redis fails (nothing is then claimed).
pub async fn claim(
    conn: &mut ConnectionManager,
    ns: &Namespace,
    owner: &str,
    suite_id: &str,
    count: usize,
    token: &str,
) -> redis::RedisResult<Claim> {
    let answer: Vec<String> = CLAIM
        .key(ns.dispatcher_lease_key())
        .key(ns.scheduled_suites_key())
        .key(ns.pending_key(suite_id))
        .key(ns.messages_key(suite_id))
        .key(ns.dispatch_key(suite_id))
        .key(ns.dispatched_key(suite_id))
        .key(ns.report_key(suite_id))
        .key(ns.claims_key())
        .arg(owner)
        .arg(suite_id)
        .arg(count)
        .arg(token)
        .invoke_async(conn)
        .await?;
    let mut answer = answer.into_iter();
    Ok(match answer.next().as_deref() {
        Some("ok") => {
            let mut tests = Vec::new();
            while let (Some(index), Some(message)) = (answer.next(), answer.next()) {
                if let Ok(index) = index.parse() {
                    tests.push((index, message));
                }
            }
            Claim::Tests(tests)
        }
        Some("closed") => Claim::Closed,
        _ => Claim::NotLeader,
    })
}

/// The claims field of one test.
fn claim_field(suite_id: &str, index: u32) -> String {
    format!("{suite_id}|{index}")
}

/// Confirms that RabbitMQ took the claimed tests of `token`: they are dispatched.
///
/// # Errors
///
/// Returns the [`redis::RedisError`] when Redis fails (the claims then stay, and the
/// next leader finds them started or puts them back).
pub async fn confirm(
    conn: &mut ConnectionManager,
    ns: &Namespace,
    owner: &str,
    token: &str,
    tests: &[(String, u32)],
) -> redis::RedisResult<()> {
    if tests.is_empty() {
        return Ok(());
    }
    let mut invocation = CONFIRM.key(ns.claims_key());
    invocation.arg(format!("{owner}|{token}|"));
    for (suite_id, index) in tests {
        invocation.arg(claim_field(suite_id, *index));
    }
    let _: i64 = invocation.invoke_async(conn).await?;
    Ok(())
}

/// Which claims [`put_back`] ends.
#[derive(Debug, Clone, Copy)]
pub enum Claims<'a> {
    /// Every claim not made by this owner: what a new leader inherits.
    NotOf(&'a str),
    /// The claims of one dispatch token: a batch RabbitMQ did not confirm.
    Token(&'a str),
}

/// Ends claims: a copy a worker started stands, any other test goes back to the head of
/// its suite's pending list (its copy, if published, will be dropped). Answers (put
/// back, already started).
///
/// # Errors
///
/// Returns the [`redis::RedisError`] when Redis fails.
pub async fn put_back(
    conn: &mut ConnectionManager,
    ns: &Namespace,
    which: Claims<'_>,
) -> redis::RedisResult<(u64, u64)> {
    let (owner, token) = match which {
        Claims::NotOf(owner) => (owner, ""),
        Claims::Token(token) => ("", token),
    };
    PUT_BACK
        .key(ns.claims_key())
        .arg(ns.suite_key(""))
        .arg(owner)
        .arg(token)
        .invoke_async(conn)
        .await
}

/// What the worker's fence says of a dispatched copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The copy is the test's current dispatch, now marked started: run it.
    Run,
    /// Its dispatcher died and the test was dispatched again: drop this copy.
    Stale,
    /// The suite has a report: drop it, as any message of a closed suite.
    Closed,
}

/// The worker's fence, in one step with the closed-suite check: whether the copy of
/// test `index` dispatched with `token` is its current dispatch, marking it started if
/// so.
///
/// # Errors
///
/// Returns the [`redis::RedisError`] when Redis fails.
pub async fn start(
    conn: &mut ConnectionManager,
    ns: &Namespace,
    suite_id: &str,
    index: u32,
    token: &str,
) -> redis::RedisResult<Start> {
    let started: i64 = START
        .key(ns.started_key(suite_id))
        .arg(index)
        .arg(token)
        .arg(ns.dispatch_key(suite_id))
        .arg(ns.report_key(suite_id))
        .invoke_async(conn)
        .await?;
    Ok(match started {
        1 => Start::Run,
        2 => Start::Closed,
        _ => Start::Stale,
    })
}

/// Drops the scheduling keys of a suite that has ended, and its entry in its token's
/// index of suites (`token` empty: none).
///
/// # Errors
///
/// Returns the [`redis::RedisError`] when Redis fails.
pub async fn forget_suite(
    conn: &mut ConnectionManager,
    ns: &Namespace,
    suite_id: &str,
    token: &str,
) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    if !token.is_empty() {
        pipe.hdel(ns.token_suites_key(token), suite_id).ignore();
    }
    pipe.atomic()
        .hdel(ns.scheduled_suites_key(), suite_id)
        .ignore()
        .del(&[
            ns.pending_key(suite_id),
            ns.messages_key(suite_id),
            ns.dispatch_key(suite_id),
            ns.started_key(suite_id),
            ns.dispatched_key(suite_id),
        ])
        .ignore()
        .query_async::<()>(conn)
        .await
}

/// How long a worker's slots count without being registered again.
pub const SLOTS_TTL: Duration = Duration::from_secs(15);

/// Registers (or refreshes) a worker's test slots, valid for [`SLOTS_TTL`].
///
/// # Errors
///
/// Returns the [`redis::RedisError`] when Redis fails.
pub async fn register_slots(
    conn: &mut ConnectionManager,
    ns: &Namespace,
    worker: &str,
    slots: u16,
) -> redis::RedisResult<()> {
    let expires = isotest_protocol::now_ms()
        .saturating_add(u64::try_from(SLOTS_TTL.as_millis()).unwrap_or(u64::MAX));
    conn.hset(ns.worker_slots_key(), worker, format!("{slots}:{expires}"))
        .await
}

/// Removes a worker's slots (it is stopping).
///
/// # Errors
///
/// Returns the [`redis::RedisError`] when Redis fails.
pub async fn unregister_slots(
    conn: &mut ConnectionManager,
    ns: &Namespace,
    worker: &str,
) -> redis::RedisResult<()> {
    conn.hdel(ns.worker_slots_key(), worker).await
}

/// The test slots of the workers registered and alive, dropping expired entries.
///
/// # Errors
///
/// Returns the [`redis::RedisError`] when Redis fails.
pub async fn live_slots(conn: &mut ConnectionManager, ns: &Namespace) -> redis::RedisResult<u64> {
    let key = ns.worker_slots_key();
    let entries: Vec<(String, String)> = conn.hgetall(&key).await?;
    let now = isotest_protocol::now_ms();
    let mut slots = 0u64;
    let mut expired = Vec::new();
    for (worker, value) in entries {
        match value
            .split_once(':')
            .and_then(|(s, e)| Some((s.parse::<u64>().ok()?, e.parse::<u64>().ok()?)))
        {
            Some((n, expires)) if expires > now => slots += n,
            _ => expired.push(worker),
        }
    }
    if !expired.is_empty() {
        let _: i64 = conn.hdel(&key, expired).await?;
    }
    Ok(slots)
}

/// Keeps each finished test's duration under its suite's name, for the next run's
/// longest-first order. Only tests that ran to a verdict count (not lost, cancelled,
/// skipped tests, nor infrastructure errors).
///
/// # Errors
///
/// Returns the [`redis::RedisError`] when Redis fails.
pub async fn record_durations(
    conn: &mut ConnectionManager,
    ns: &Namespace,
    report: &isotest_protocol::report::Report,
) -> redis::RedisResult<()> {
    use isotest_protocol::result::Status;
    let durations: Vec<(&str, u64)> = report
        .tests
        .iter()
        .filter(|t| {
            matches!(
                t.status,
                Status::Passed | Status::Failed | Status::Timeout | Status::Oom
            )
        })
        // A test served from the result cache did not run: its last real duration stands.
        .filter(|t| t.cached_from.is_none())
        .map(|t| (t.name.as_str(), t.duration_ms))
        .collect();
    if durations.is_empty() {
        return Ok(());
    }
    for chunk in durations.chunks(1000) {
        let _: () = conn
            .hset_multiple(ns.durations_key(&report.suite), chunk)
            .await?;
    }
    Ok(())
}
