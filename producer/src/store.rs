//! What the producer reads and writes in Redis: suite records and the open-suite
//! index, blobs, and (read-only) the workers' progress and the aggregator's report.

use std::time::Duration;

use redis::AsyncTypedCommands;
use redis::aio::ConnectionManager;

use isotest_protocol::api::SuiteRecord;
use isotest_protocol::names::Namespace;
use isotest_protocol::report::Report;

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

/// A report as stored, with the parsed form for renderings.
#[derive(Debug)]
pub struct StoredReport {
    /// The exact JSON the aggregator wrote, served as is so that fields added by a
    /// newer aggregator reach clients.
    pub json: String,
    pub report: Report,
}

/// The producer's view of Redis under one namespace.
#[derive(Debug, Clone)]
pub struct Store {
    conn: ConnectionManager,
    ns: Namespace,
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

    /// Writes a suite's record and enters it in the open set, both or neither.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Redis`] when the transaction fails.
    pub async fn record_suite(&self, record: &SuiteRecord) -> Result<(), StoreError> {
        // A struct of strings and numbers always serializes.
        let json = serde_json::to_string(record).unwrap_or_default();
        let mut conn = self.conn.clone();
        redis::pipe()
            .atomic()
            .set(self.ns.suite_key(&record.id), json)
            .ignore()
            .zadd(self.ns.open_suites_key(), &record.id, record.deadline_at_ms)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
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
        let key = self.ns.report_key(id);
        let mut conn = self.conn.clone();
        match conn.get(&key).await? {
            None => Ok(None),
            Some(json) => match serde_json::from_str(&json) {
                Ok(report) => Ok(Some(StoredReport { json, report })),
                Err(source) => Err(StoreError::Corrupt { key, source }),
            },
        }
    }

    /// Cancels the suite: stores its report as cancelled unless it already has one.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Redis`] when Redis fails.
    pub async fn cancel(&self, id: &str) -> Result<isotest_aggregator::Cancelled, StoreError> {
        let mut conn = self.conn.clone();
        Ok(isotest_aggregator::cancel(&mut conn, &self.ns, id).await?)
    }

    /// Whether the blob with this sha256 (hex) is stored.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Redis`] when Redis fails.
    pub async fn blob_exists(&self, hex: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        Ok(conn.exists(self.ns.blob_key(hex)).await?)
    }

    /// Stores a blob unless it is already there; returns whether it was written.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Redis`] when Redis fails.
    pub async fn put_blob(&self, hex: &str, bytes: &[u8]) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        // Content-addressed: an existing value is the same bytes, so NX skips the copy.
        Ok(conn.set_nx(self.ns.blob_key(hex), bytes).await?)
    }
}
