//! Reading what a report is made of: a suite's record ([`load_record`], or through a
//! [`RecordCache`] on the aggregator's hot path) and every result of its tests
//! ([`load_results`]). A value that does not parse is logged and left out rather than
//! failing the suite: one bad entry must not keep a report from being made.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use isotest_protocol::api::SuiteRecord;
use isotest_protocol::names::Namespace;
use isotest_protocol::result::TestResult;

/// The suite's record, or `None` when there is none or it cannot be read (logged).
///
/// # Errors
///
/// Returns the [`redis::RedisError`] when Redis fails.
pub async fn load_record(
    conn: &mut ConnectionManager,
    ns: &Namespace,
    suite_id: &str,
) -> redis::RedisResult<Option<SuiteRecord>> {
    let json: Option<String> = conn.get(ns.suite_key(suite_id)).await?;
    Ok(json.and_then(|json| match serde_json::from_str(&json) {
        Ok(record) => Some(record),
        Err(error) => {
            tracing::error!(%error, "Suite record is not valid JSON of a suite record.");
            None
        }
    }))
}

/// Every result of the suite; one that does not parse is logged and left out.
///
/// # Errors
///
/// Returns the [`redis::RedisError`] when Redis fails.
pub async fn load_results(
    conn: &mut ConnectionManager,
    ns: &Namespace,
    suite_id: &str,
) -> redis::RedisResult<Vec<TestResult>> {
    let fields: HashMap<String, String> = conn.hgetall(ns.results_key(suite_id)).await?;
    Ok(fields
        .into_iter()
        .filter_map(|(field, json)| match serde_json::from_str(&json) {
            Ok(result) => Some(result),
            Err(error) => {
                tracing::warn!(%error, field, "Result is not valid JSON of a test result; ignoring it.");
                None
            }
        })
        .collect())
}

/// A record and the number of distinct tests it lists, which completion compares the
/// done set against (a name listed twice is one test).
#[derive(Debug)]
pub struct CachedRecord {
    pub record: SuiteRecord,
    pub distinct_tests: usize,
}

/// Suite records by id: a record of 20 000 names is too big to fetch and parse for
/// each of its 20 000 results. Records never change once written, so no invalidation
/// is needed beyond forgetting finished suites.
#[derive(Debug, Default)]
pub struct RecordCache {
    records: HashMap<String, Arc<CachedRecord>>,
}

impl RecordCache {
    const CAPACITY: usize = 256;

    /// The suite's record, from the cache or else from Redis (then cached).
    ///
    /// # Errors
    ///
    /// Returns the [`redis::RedisError`] when Redis fails.
    pub async fn get(
        &mut self,
        conn: &mut ConnectionManager,
        ns: &Namespace,
        suite_id: &str,
    ) -> redis::RedisResult<Option<Arc<CachedRecord>>> {
        if let Some(record) = self.records.get(suite_id) {
            return Ok(Some(Arc::clone(record)));
        }
        let Some(record) = load_record(conn, ns, suite_id).await? else {
            return Ok(None);
        };
        let distinct_tests = record.tests.iter().collect::<HashSet<_>>().len();
        let cached = Arc::new(CachedRecord {
            record,
            distinct_tests,
        });
        // Dropping everything at once is crude, but it bounds memory and costs only
        // re-reads.
        if self.records.len() >= Self::CAPACITY {
            self.records.clear();
        }
        self.records
            .insert(suite_id.to_owned(), Arc::clone(&cached));
        Ok(Some(cached))
    }

    /// Drops a suite's record: it has ended, and its record is not needed again.
    pub fn forget(&mut self, suite_id: &str) {
        self.records.remove(suite_id);
    }
}
