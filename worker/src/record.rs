//! Writing a result to Redis, and reading what a test needs from it (its workspace).
//!
//! The write is [`isotest_infra::results::record`], one Lua script shared with the
//! aggregator's dead-letter consumer: atomic and idempotent, the first result of an
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
    #[error(
        "workspace blob {reference} in Redis has sha256:{actual}: its bytes were replaced since the upload; refusing to run them"
    )]
    Tampered { reference: String, actual: String },
}

impl RecordError {
    /// Whether trying again later may succeed (Redis went away) rather than never (a missing blob).
    pub fn is_transient(&self) -> bool {
        matches!(self, RecordError::Write { .. } | RecordError::Read(_))
    }
}

/// Records results for one namespace.
#[derive(Clone)]
pub struct Recorder {
    redis: ConnectionManager,
    ns: Namespace,
    blobs: Arc<BlobCache>,
    /// The output bytes one suite's results may hold in all.
    suite_output_bytes: u64,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("ns", &self.ns)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    pub fn new(redis: ConnectionManager, ns: Namespace, suite_output_bytes: u64) -> Recorder {
        Recorder {
            redis,
            ns,
            blobs: Arc::new(BlobCache::new(512 * 1024 * 1024)),
            suite_output_bytes,
        }
    }

    /// Writes a result unless its attempt already has one; true when this call wrote it.
    /// Its output first takes its share of the suite's output budget, and is cut to
    /// what it got (`isotest_infra::output_budget`).
    ///
    /// # Errors
    ///
    /// Returns [`RecordError::Write`] when Redis does not confirm the write.
    pub async fn record(
        &self,
        result: &TestResult,
        keep: Option<&isotest_infra::results::Keep>,
    ) -> Result<bool, RecordError> {
        let mut conn = self.redis.clone();
        let write = |source| RecordError::Write {
            test: result.name.clone(),
            source,
        };
        let mut fitted = result.clone();
        let cut = isotest_infra::output_budget::reserve(
            &mut conn,
            &self.ns,
            &mut fitted,
            self.suite_output_bytes,
        )
        .await
        .map_err(write)?;
        if cut {
            tracing::info!(
                suite_id = %result.suite_id,
                test = %result.name,
                "Cut the test's output: its suite's output budget is spent."
            );
        }
        // The entry is kept only with the result as written, whole: a cut result's
        // output is no longer the run's.
        let keep = keep.filter(|_| !cut);
        isotest_infra::results::record_keeping(&mut conn, &self.ns, &fitted, keep)
            .await
            .map_err(write)
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

    /// Whether this attempt already has a result, and if so whether it was final: a
    /// redelivered message whose worker died after writing but before acking.
    ///
    /// # Errors
    ///
    /// Returns [`RecordError::Read`] when Redis does not answer.
    pub async fn recorded_attempt(
        &self,
        suite_id: &str,
        name: &str,
        attempt: u32,
    ) -> Result<Option<Recorded>, RecordError> {
        let json: Option<String> = self
            .redis
            .clone()
            .hget(self.ns.results_key(suite_id), result_field(name, attempt))
            .await
            .map_err(RecordError::Read)?;
        Ok(json.map(|json| {
            #[derive(serde::Deserialize)]
            struct Finality {
                is_final: bool,
            }
            // A result that does not parse was still written first and wins; taking
            // it for final means no retry is published on its account.
            match serde_json::from_str::<Finality>(&json) {
                Ok(Finality { is_final: false }) => Recorded::Retryable,
                _ => Recorded::Final,
            }
        }))
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

    /// The scheduler's fence: whether this copy of a dispatched test (its dispatch
    /// `token`) is the one to run, marking it started if so (see
    /// [`isotest_infra::schedule::start`]).
    ///
    /// # Errors
    ///
    /// Returns [`RecordError::Read`] when Redis does not answer.
    pub async fn start(
        &self,
        suite_id: &str,
        index: u32,
        token: &str,
    ) -> Result<isotest_infra::schedule::Start, RecordError> {
        isotest_infra::schedule::start(&mut self.redis.clone(), &self.ns, suite_id, index, token)
            .await
            .map_err(RecordError::Read)
    }

    /// Registers this worker's test slots for the dispatcher (see
    /// [`isotest_infra::schedule::register_slots`]); `None` slots removes them.
    ///
    /// # Errors
    ///
    /// Returns [`RecordError::Read`] when Redis does not answer.
    pub async fn register_slots(
        &self,
        worker: &str,
        slots: Option<u16>,
    ) -> Result<(), RecordError> {
        let mut conn = self.redis.clone();
        match slots {
            Some(n) => {
                isotest_infra::schedule::register_slots(&mut conn, &self.ns, worker, n).await
            }
            None => isotest_infra::schedule::unregister_slots(&mut conn, &self.ns, worker).await,
        }
        .map_err(RecordError::Read)
    }

    /// Advertises the identity of each environment this worker offers (a hash field per
    /// name, [`Namespace::environments_key`]), which the producer's cache keys cover.
    ///
    /// # Errors
    ///
    /// Returns [`RecordError::Read`] when Redis does not answer.
    pub async fn advertise(
        &self,
        environments: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), RecordError> {
        if environments.is_empty() {
            return Ok(());
        }
        let fields: Vec<(&String, &String)> = environments.iter().collect();
        self.redis
            .clone()
            .hset_multiple::<_, _, _, ()>(self.ns.environments_key(), &fields)
            .await
            .map_err(RecordError::Read)
    }

    /// A blob a reference names, straight from Redis (a prepared build: the worker unpacks
    /// it once and keeps the unpacked tree, not the bytes).
    ///
    /// # Errors
    ///
    /// Returns [`RecordError`] for a malformed reference, a missing blob, or Redis failing.
    pub async fn blob(&self, reference: &str) -> Result<Arc<[u8]>, RecordError> {
        let hex = parse_blob_reference(reference)
            .ok_or_else(|| RecordError::BadReference(reference.to_owned()))?;
        self.fetch(reference, hex).await
    }

    /// A blob's bytes from Redis, checked against the sha256 that names them: whoever
    /// could write Redis could otherwise swap another tenant's workspace.
    async fn fetch(&self, reference: &str, hex: &str) -> Result<Arc<[u8]>, RecordError> {
        use sha2::{Digest, Sha256};
        let bytes: Option<Vec<u8>> = self
            .redis
            .clone()
            .get(self.ns.blob_key(hex))
            .await
            .map_err(RecordError::Read)?;
        let bytes = bytes.ok_or_else(|| RecordError::MissingBlob(reference.to_owned()))?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != hex {
            return Err(RecordError::Tampered {
                reference: reference.to_owned(),
                actual,
            });
        }
        Ok(bytes.into())
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
        let bytes = self.fetch(reference, hex).await?;
        self.blobs.put(hex, bytes.clone());
        Ok(bytes)
    }
}

/// What an attempt already recorded says about what comes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The test's verdict is in.
    Final,
    /// A retry follows this attempt.
    Retryable,
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
