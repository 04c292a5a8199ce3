//! Writing a result to Redis, and reading what a test needs from it (its workspace).
//!
//! The write is one Lua script, so it is atomic and idempotent: the first result of an
//! attempt wins (`HSETNX`), and only that first write marks the test done and notifies
//! the aggregators. A redelivered message whose attempt is already recorded changes
//! nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use isotest_protocol::api::parse_blob_reference;
use isotest_protocol::names::Namespace;
use isotest_protocol::result::{TestResult, result_field};

/// A failure to talk to Redis about a result or a blob.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("write the result of {test} to Redis")]
    Write {
        test: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("read from Redis")]
    Read(#[source] redis::RedisError),
    #[error("workspace `{0}` is not a blob reference")]
    BadReference(String),
    #[error("workspace blob {0} is not in Redis (was it uploaded, or has it expired?)")]
    MissingBlob(String),
}

impl RecordError {
    /// Whether trying again later may succeed (Redis went away) rather than never (a missing blob).
    pub fn is_transient(&self) -> bool {
        matches!(self, RecordError::Write { .. } | RecordError::Read(_))
    }
}

const RECORD_SCRIPT: &str = r"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
if ARGV[5] == '1' then
  redis.call('SADD', KEYS[2], ARGV[4])
end
redis.call('XADD', KEYS[3], '*', 'suite', ARGV[3], 'test', ARGV[4], 'field', ARGV[1])
return 1
";

/// Records results for one namespace.
#[derive(Clone)]
pub struct Recorder {
    redis: ConnectionManager,
    ns: Namespace,
    script: Arc<redis::Script>,
    blobs: Arc<BlobCache>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("ns", &self.ns)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    pub fn new(redis: ConnectionManager, ns: Namespace) -> Recorder {
        Recorder {
            redis,
            ns,
            script: Arc::new(redis::Script::new(RECORD_SCRIPT)),
            blobs: Arc::new(BlobCache::new(512 * 1024 * 1024)),
        }
    }

    /// Writes a result unless its attempt already has one; true when this call wrote it.
    ///
    /// # Errors
    ///
    /// Returns [`RecordError::Write`] when Redis does not confirm the write.
    pub async fn record(&self, result: &TestResult) -> Result<bool, RecordError> {
        let json = serde_json::to_string(result).unwrap_or_default();
        let written: i64 = self
            .script
            .key(self.ns.results_key(&result.suite_id))
            .key(self.ns.done_key(&result.suite_id))
            .key(self.ns.results_stream())
            .arg(result.field())
            .arg(json)
            .arg(&result.suite_id)
            .arg(&result.name)
            .arg(if result.is_final { "1" } else { "0" })
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(|source| RecordError::Write {
                test: result.name.clone(),
                source,
            })?;
        Ok(written == 1)
    }

    /// Whether this attempt of the test already has a result (a redelivered message).
    ///
    /// # Errors
    ///
    /// Returns [`RecordError::Read`] when Redis does not answer.
    pub async fn is_recorded(
        &self,
        suite_id: &str,
        name: &str,
        attempt: u32,
    ) -> Result<bool, RecordError> {
        self.redis
            .clone()
            .hexists(self.ns.results_key(suite_id), result_field(name, attempt))
            .await
            .map_err(RecordError::Read)
    }

    /// Whether the suite already has its report (it completed, timed out or was cancelled).
    ///
    /// # Errors
    ///
    /// Returns [`RecordError::Read`] when Redis does not answer.
    pub async fn is_closed(&self, suite_id: &str) -> Result<bool, RecordError> {
        self.redis
            .clone()
            .exists(self.ns.report_key(suite_id))
            .await
            .map_err(RecordError::Read)
    }

    /// The packed workspace a reference names, from a local cache or Redis.
    ///
    /// # Errors
    ///
    /// Returns [`RecordError`] for a malformed reference, a missing blob, or Redis failing.
    pub async fn workspace(&self, reference: &str) -> Result<Arc<[u8]>, RecordError> {
        let hex = parse_blob_reference(reference)
            .ok_or_else(|| RecordError::BadReference(reference.to_owned()))?;
        if let Some(bytes) = self.blobs.get(hex) {
            return Ok(bytes);
        }
        let bytes: Option<Vec<u8>> = self
            .redis
            .clone()
            .get(self.ns.blob_key(hex))
            .await
            .map_err(RecordError::Read)?;
        let bytes: Arc<[u8]> = bytes
            .ok_or_else(|| RecordError::MissingBlob(reference.to_owned()))?
            .into();
        self.blobs.put(hex, bytes.clone());
        Ok(bytes)
    }
}

/// Workspaces by digest, so the tests of one suite fetch theirs once per worker.
/// Bounded by total size; when full, it forgets everything (suites come in waves).
#[derive(Debug)]
struct BlobCache {
    max_bytes: usize,
    entries: Mutex<Cached>,
}

/// Total bytes held, and the blobs by digest.
#[derive(Debug, Default)]
struct Cached {
    bytes: usize,
    blobs: HashMap<String, Arc<[u8]>>,
}

impl BlobCache {
    fn new(max_bytes: usize) -> BlobCache {
        BlobCache {
            max_bytes,
            entries: Mutex::new(Cached::default()),
        }
    }

    fn get(&self, hex: &str) -> Option<Arc<[u8]>> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries.blobs.get(hex).cloned()
    }

    fn put(&self, hex: &str, bytes: Arc<[u8]>) {
        if bytes.len() > self.max_bytes {
            return;
        }
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.bytes + bytes.len() > self.max_bytes {
            entries.blobs.clear();
            entries.bytes = 0;
        }
        entries.bytes += bytes.len();
        entries.blobs.insert(hex.to_owned(), bytes);
    }
}
