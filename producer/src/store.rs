//! What the producer reads and writes in Redis: suite records and the open-suite
//! index, each suite's tests waiting for the scheduler, blobs, API tokens and their
//! suites, earlier tests' durations, and (read-only) the workers'
//! progress and the aggregator's report; cancelling goes through
//! [`isotest_infra::cancel`], which stores the cancelled report.

use std::sync::LazyLock;
use std::time::Duration;

use redis::AsyncTypedCommands;
use redis::aio::ConnectionManager;

use isotest_infra::cancel::{self, Cancelled};
use isotest_infra::events;
use isotest_infra::reports::{self, LoadError};
use isotest_protocol::api::{SuiteRecord, TokenRecord};
use isotest_protocol::message::TestMessage;
use isotest_protocol::names::Namespace;
use isotest_protocol::schedule::{PendingEntry, ScheduledSuite};

pub use isotest_infra::reports::StoredReport;

/// How many of a token's latest suites the dashboard lists.
pub const RECENT_SUITES: i64 = 200;
/// How many of the latest suites of every token an admin token can list.
pub const ALL_RECENT_SUITES: i64 = 1000;

/// How long a readiness probe waits for Redis to answer.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Failure to read or write Redis, or a stored value that is not what it should be.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis command failed")]
    Redis(#[from] redis::RedisError),
    #[error("`{key}` in Redis is not valid JSON of its type")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("redis did not answer within {}s", PING_TIMEOUT.as_secs())]
    Timeout,
}

impl From<LoadError> for StoreError {
    fn from(e: LoadError) -> StoreError {
        match e {
            LoadError::Redis(e) => StoreError::Redis(e),
            LoadError::Corrupt { key, source } => StoreError::Corrupt { key, source },
        }
    }
}

/// Adds a token unless one of that name exists. KEYS: tokens. ARGV: hash, record JSON, name.
const ADD_TOKEN_SCRIPT: &str = r"
for _, json in ipairs(redis.call('HVALS', KEYS[1])) do
  local ok, record = pcall(cjson.decode, json)
  if ok and record.name == ARGV[3] then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
";

/// Removes the token of a name and its in-flight index. KEYS: tokens, the token's
/// suites. ARGV: name.
const REVOKE_TOKEN_SCRIPT: &str = r"
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local ok, record = pcall(cjson.decode, entries[i + 1])
  if ok and record.name == ARGV[1] then
    redis.call('HDEL', KEYS[1], entries[i])
    redis.call('DEL', KEYS[2])
    return 1
  end
end
return 0
";

/// Stores a blob for an uploader within its blob quota, and makes the uploader one of
/// its owners, in one step. An uploader's blobs that have expired are dropped from its
/// count first; a blob it already has costs nothing more.
///
/// KEYS: blob, blob owners, the uploader's blobs. ARGV: bytes, uploader, hex, size,
/// most blobs, most bytes, time to live (s), blob key prefix. Returns {1 if the bytes
/// were written else 0, count, bytes}, or {-1, count, bytes} over the count and
/// {-2, count, bytes} over the bytes.
const PUT_BLOB_SCRIPT: &str = r"
local entries = redis.call('HGETALL', KEYS[3])
local count, bytes = 0, 0
for i = 1, #entries, 2 do
  if redis.call('EXISTS', ARGV[8] .. entries[i]) == 0 then
    redis.call('HDEL', KEYS[3], entries[i])
  elseif entries[i] ~= ARGV[3] then
    count = count + 1
    bytes = bytes + tonumber(entries[i + 1])
  end
end
if count + 1 > tonumber(ARGV[5]) then
  return {-1, count, bytes}
end
if bytes + tonumber(ARGV[4]) > tonumber(ARGV[6]) then
  return {-2, count, bytes}
end
local written = redis.call('SET', KEYS[1], ARGV[1], 'NX')
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[7])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
redis.call('EXPIRE', KEYS[3], ARGV[7])
if written then
  return {1, count, bytes}
end
return {0, count, bytes}
";

static PUT_BLOB: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(PUT_BLOB_SCRIPT));

/// A blob upload its uploader's blob quota does not leave room for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverBlobQuota {
    /// It has this many blobs, the most it may have.
    Count(u64),
    /// It has this many bytes of blobs; this one would take it over.
    Bytes(u64),
}

/// An uploader's blob quota and how long its blobs are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobQuota {
    pub max_blobs: u32,
    pub max_bytes: u64,
    pub ttl: Duration,
}

static ADD_TOKEN: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(ADD_TOKEN_SCRIPT));
static REVOKE_TOKEN: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(REVOKE_TOKEN_SCRIPT));

/// The producer's view of Redis under one namespace.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) conn: ConnectionManager,
    pub(crate) ns: Namespace,
}

impl Store {
    pub fn new(conn: ConnectionManager, ns: Namespace) -> Store {
        Store { conn, ns }
    }

    /// Answers whether Redis responds to PING.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError`] when Redis fails or is too slow to answer.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        tokio::time::timeout(PING_TIMEOUT, conn.ping())
            .await
            .map_err(|_| StoreError::Timeout)??;
        Ok(())
    }

    /// Records a suite and schedules its tests, all or nothing, in one transaction:
    /// its record and deadline, the token's index of its suites, its first-attempt
    /// messages and pending list (in `pending` order), its live event stream and its
    /// place among the recent suites (the dashboard) and, last, its entry among the
    /// scheduled suites, which makes the dispatcher see it.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Redis`] when the transaction fails (nothing is written).
    pub async fn schedule_suite(
        &self,
        record: &SuiteRecord,
        scheduled: &ScheduledSuite,
        messages: &[TestMessage],
        pending: &[PendingEntry],
    ) -> Result<(), StoreError> {
        // Structs of strings and numbers always serialize.
        let json = serde_json::to_string(record).unwrap_or_default();
        let entry = serde_json::to_string(scheduled).unwrap_or_default();
        let id = &record.id;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .set(self.ns.suite_key(id), json)
            .ignore()
            .zadd(self.ns.open_suites_key(), id, record.deadline_at_ms)
            .ignore();
        if !scheduled.token.is_empty() {
            pipe.hset(
                self.ns.token_suites_key(&scheduled.token),
                id,
                record.tests.len(),
            )
            .ignore();
        }
        for chunk in messages.chunks(1000) {
            let fields: Vec<(u32, Vec<u8>)> =
                chunk.iter().map(|m| (m.index, m.to_bytes())).collect();
            pipe.hset_multiple(self.ns.messages_key(id), &fields)
                .ignore();
        }
        for chunk in pending.chunks(1000) {
            let entries: Vec<String> = chunk.iter().map(|e| e.encode()).collect();
            pipe.rpush(self.ns.pending_key(id), entries).ignore();
        }
        // The suite's live event stream (the dashboard), bounded and expiring after it,
        // and its place among its token's (or no token's) recent suites.
        let events = self.ns.suite_events_key(id);
        let recent = self.ns.recent_suites_key(record.owner.as_deref());
        pipe.cmd("XADD")
            .arg(&events)
            .arg("MAXLEN")
            .arg("~")
            .arg(events::MAX_EVENTS)
            .arg("*")
            .arg("kind")
            .arg(events::SUBMITTED)
            .ignore()
            .cmd("PEXPIREAT")
            .arg(&events)
            .arg(events::expires_at_ms(record.deadline_at_ms))
            .ignore()
            .zadd(&recent, id, record.created_at_ms)
            .ignore()
            .cmd("ZREMRANGEBYRANK")
            .arg(&recent)
            .arg(0)
            .arg(-1 - RECENT_SUITES)
            .ignore();
        // And among every suite's, for an admin token's list.
        let all = self.ns.all_recent_suites_key();
        pipe.zadd(&all, id, record.created_at_ms)
            .ignore()
            .cmd("ZREMRANGEBYRANK")
            .arg(&all)
            .arg(0)
            .arg(-1 - ALL_RECENT_SUITES)
            .ignore();
        pipe.hset(self.ns.scheduled_suites_key(), id, entry)
            .ignore();
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// The last known duration of each named test of suites called `suite_name`.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Redis`] when Redis fails.
    pub async fn durations(
        &self,
        suite_name: &str,
        tests: &[String],
    ) -> Result<Vec<Option<u64>>, StoreError> {
        let key = self.ns.durations_key(suite_name);
        let mut conn = self.conn.clone();
        if !conn.exists(&key).await? {
            return Ok(vec![None; tests.len()]);
        }
        let mut known = Vec::with_capacity(tests.len());
        for chunk in tests.chunks(5000) {
            let values: Vec<Option<u64>> = redis::cmd("HMGET")
                .arg(&key)
                .arg(chunk)
                .query_async(&mut conn)
                .await?;
            known.extend(values);
        }
        Ok(known)
    }

    /// How many of the suite's tests wait for the scheduler.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Redis`] when Redis fails.
    pub async fn waiting(&self, id: &str) -> Result<u32, StoreError> {
        let mut conn = self.conn.clone();
        let waiting = conn.llen(self.ns.pending_key(id)).await?;
        Ok(u32::try_from(waiting).unwrap_or(u32::MAX))
    }

    /// The namespace of every key this store touches.
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// How many of the suite's tests no worker has started yet, wherever they wait:
    /// in Redis for the scheduler, claimed, or in RabbitMQ (read in one transaction,
    /// so a test moving from one to the next is counted once).
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Redis`] when Redis fails.
    pub async fn unstarted(&self, id: &str) -> Result<u32, StoreError> {
        let mut conn = self.conn.clone();
        let (pending, dispatched, started): (u64, Option<u64>, u64) = redis::pipe()
            .atomic()
            .llen(self.ns.pending_key(id))
            .get(self.ns.dispatched_key(id))
            .hlen(self.ns.started_key(id))
            .query_async(&mut conn)
            .await?;
        let unstarted = pending + dispatched.unwrap_or(0).saturating_sub(started);
        Ok(u32::try_from(unstarted).unwrap_or(u32::MAX))
    }

    /// A connection for the dispatcher (cheap: it shares this one).
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The token stored under this hash, if any.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError`] when Redis fails or the record is corrupt.
    pub async fn token(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        let key = self.ns.tokens_key();
        let mut conn = self.conn.clone();
        match conn.hget(&key, hash).await? {
            None => Ok(None),
            Some(json) => serde_json::from_str(&json)
                .map(Some)
                .map_err(|source| StoreError::Corrupt { key, source }),
        }
    }

    /// Whether any token exists (then every `/v1` request needs one).
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Redis`] when Redis fails.
    pub async fn any_token(&self) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        Ok(conn.hlen(self.ns.tokens_key()).await? > 0)
    }

    /// Stores a token under its hash; false (and nothing stored) when a token of that
    /// name exists.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Redis`] when the script fails.
    pub async fn add_token(&self, hash: &str, record: &TokenRecord) -> Result<bool, StoreError> {
        let json = serde_json::to_string(record).unwrap_or_default();
        let mut conn = self.conn.clone();
        let added: i64 = ADD_TOKEN
            .key(self.ns.tokens_key())
            .arg(hash)
            .arg(json)
            .arg(&record.name)
            .invoke_async(&mut conn)
            .await?;
        Ok(added == 1)
    }

    /// Every token, by name.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError`] when Redis fails or a record is corrupt.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let key = self.ns.tokens_key();
        let mut conn = self.conn.clone();
        let mut tokens = conn
            .hvals(&key)
            .await?
            .iter()
            .map(|json| serde_json::from_str::<TokenRecord>(json))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| StoreError::Corrupt { key, source })?;
        tokens.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(tokens)
    }

    /// The token's tests (running: dispatched without a final result, which its quota
    /// bounds; waiting: not yet dispatched), over its open suites (read-only, for
    /// `isotest token list`).
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Redis`] when Redis fails.
    pub async fn in_flight(&self, token_name: &str) -> Result<(u64, u64), StoreError> {
        let mut conn = self.conn.clone();
        let open = conn.hgetall(self.ns.token_suites_key(token_name)).await?;
        let (mut running, mut waiting) = (0u64, 0u64);
        for id in open.keys() {
            if conn.exists(self.ns.report_key(id)).await?
                || !conn.exists(self.ns.suite_key(id)).await?
            {
                continue;
            }
            let done = u64::try_from(conn.scard(self.ns.done_key(id)).await?).unwrap_or(0);
            let dispatched: Option<u64> =
                redis::AsyncCommands::get(&mut conn, self.ns.dispatched_key(id)).await?;
            running += dispatched.unwrap_or(0).saturating_sub(done);
            waiting += u64::try_from(conn.llen(self.ns.pending_key(id)).await?).unwrap_or(0);
        }
        Ok((running, waiting))
    }

    /// Revokes the token of this name; false when there is none.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Redis`] when the script fails.
    pub async fn revoke_token(&self, name: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let revoked: i64 = REVOKE_TOKEN
            .key(self.ns.tokens_key())
            .key(self.ns.token_suites_key(name))
            .arg(name)
            .invoke_async(&mut conn)
            .await?;
        Ok(revoked == 1)
    }

    /// The suite's record, if the suite exists.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError`] when Redis fails or the record is corrupt.
    pub async fn suite(&self, id: &str) -> Result<Option<SuiteRecord>, StoreError> {
        let key = self.ns.suite_key(id);
        let mut conn = self.conn.clone();
        match conn.get(&key).await? {
            None => Ok(None),
            Some(json) => serde_json::from_str(&json)
                .map(Some)
                .map_err(|source| StoreError::Corrupt { key, source }),
        }
    }

    /// How many tests of the suite have a final result.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Redis`] when Redis fails.
    pub async fn done_count(&self, id: &str) -> Result<u32, StoreError> {
        let mut conn = self.conn.clone();
        let done = conn.scard(self.ns.done_key(id)).await?;
        Ok(u32::try_from(done).unwrap_or(u32::MAX))
    }

    /// The suite's report, once the aggregator has written it.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError`] when Redis fails or the report is corrupt.
    pub async fn report(&self, id: &str) -> Result<Option<StoredReport>, StoreError> {
        let mut conn = self.conn.clone();
        Ok(reports::load(&mut conn, &self.ns, id).await?)
    }

    /// Cancels the suite: stores its report as cancelled unless it already has one.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Redis`] when Redis fails.
    pub async fn cancel(&self, id: &str) -> Result<Cancelled, StoreError> {
        let mut conn = self.conn.clone();
        Ok(cancel::cancel(&mut conn, &self.ns, id).await?)
    }

    /// Whether the blob with this sha256 (hex) is stored and `owner` uploaded it (any
    /// owner when none is given: an admin's view).
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Redis`] when Redis fails.
    pub async fn blob_exists(&self, hex: &str, owner: Option<&str>) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let exists = conn.exists(self.ns.blob_key(hex)).await?;
        Ok(match owner {
            Some(owner) if exists => conn.sismember(self.ns.blob_owners_key(hex), owner).await?,
            _ => exists,
        })
    }

    /// Stores a blob unless it is already there, and adds `owner` to its owners (who
    /// has shown the bytes), within the owner's blob quota; returns whether the bytes
    /// were written. Every upload keeps the blob for `quota.ttl` more.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Redis`] when Redis fails.
    pub async fn put_blob(
        &self,
        hex: &str,
        bytes: &[u8],
        owner: &str,
        quota: BlobQuota,
    ) -> Result<Result<bool, OverBlobQuota>, StoreError> {
        let mut conn = self.conn.clone();
        let (code, count, stored): (i64, u64, u64) = PUT_BLOB
            .key(self.ns.blob_key(hex))
            .key(self.ns.blob_owners_key(hex))
            .key(self.ns.token_blobs_key(owner))
            .arg(bytes)
            .arg(owner)
            .arg(hex)
            .arg(bytes.len())
            .arg(quota.max_blobs)
            .arg(quota.max_bytes)
            .arg(quota.ttl.as_secs().max(1))
            .arg(self.ns.blob_key(""))
            .invoke_async(&mut conn)
            .await?;
        Ok(match code {
            -1 => Err(OverBlobQuota::Count(count)),
            -2 => Err(OverBlobQuota::Bytes(stored)),
            written => Ok(written == 1),
        })
    }

    /// Keeps a blob (and who owns it) at least `ttl` more: a suite about to use it.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Redis`] when Redis fails.
    pub async fn keep_blob(&self, hex: &str, ttl: Duration) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        redis::pipe()
            .expire(self.ns.blob_key(hex), secs)
            .ignore()
            .expire(self.ns.blob_owners_key(hex), secs)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }
}
