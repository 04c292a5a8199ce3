//! The dashboard's JSON reads: who is looking, their suites, one suite, a test's
//! attempts. Each is scoped as the `/v1` reads are ([`Caller::may_see`]): a suite of
//! another token (or, for a caller without a token, of any token) is answered 404, as
//! if it did not exist; an admin token sees every suite by its id.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use redis::AsyncTypedCommands;
use serde::Deserialize;

use isotest_protocol::SCHEMA_VERSION;
use isotest_protocol::api::SuiteRecord;
use isotest_protocol::live::{SuiteList, SuiteRow, TestAttempts, Viewer};
use isotest_protocol::manifest::MAX_RETRIES;
use isotest_protocol::report::{SuiteState, Summary};
use isotest_protocol::result::{TestResult, result_field};

use crate::auth::Caller;
use crate::http::{ApiFailure, AppState, parse_suite_id};
use crate::store::{RECENT_SUITES, Store, StoreError};

/// How many suites the list shows.
const LISTED: usize = 50;

/// The token name a caller sees the suites of (`None`: suites submitted without one).
pub fn owner(caller: &Caller) -> Option<&str> {
    match caller {
        Caller::Anonymous => None,
        Caller::Token(token) => Some(token.name.as_str()),
    }
}

/// The suite's record, if the caller may see it (its own, or any for an admin token);
/// otherwise 404.
///
/// # Errors
///
/// Returns [`ApiFailure`] for a bad id, a suite not the caller's, or a Redis failure.
pub async fn owned_suite(
    store: &Store,
    caller: &Caller,
    id: &str,
) -> Result<SuiteRecord, ApiFailure> {
    let id = parse_suite_id(id)?;
    match store.suite(&id).await? {
        Some(record) if caller.may_see(record.owner.as_deref()) => Ok(record),
        _ => Err(ApiFailure::SuiteNotFound(id)),
    }
}

/// `GET /ui/api/me`.
pub async fn me(Extension(caller): Extension<Caller>) -> Json<Viewer> {
    Json(Viewer {
        schema_version: SCHEMA_VERSION,
        token: owner(&caller).map(str::to_owned),
    })
}

/// `GET /ui/api/suites`: the caller's latest suites, newest first.
pub async fn suites(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<SuiteList>, ApiFailure> {
    let ids = state.store.recent_suites(owner(&caller), LISTED).await?;
    let suites = state.store.suite_rows(&ids).await?;
    Ok(Json(SuiteList {
        schema_version: SCHEMA_VERSION,
        viewer: Viewer {
            schema_version: SCHEMA_VERSION,
            token: owner(&caller).map(str::to_owned),
        },
        suites,
    }))
}

/// `GET /ui/api/suites/{id}`.
pub async fn suite(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<SuiteRow>, ApiFailure> {
    let record = owned_suite(&state.store, &caller, &id).await?;
    let mut rows = state
        .store
        .suite_rows(std::slice::from_ref(&record.id))
        .await?;
    rows.pop()
        .map(Json)
        .ok_or(ApiFailure::SuiteNotFound(record.id))
}

#[derive(Debug, Deserialize)]
pub struct TestQuery {
    test: String,
}

/// `GET /ui/api/suites/{id}/attempts?test=NAME`: every attempt of a test, with output.
pub async fn attempts(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<TestQuery>,
) -> Result<Json<TestAttempts>, ApiFailure> {
    let record = owned_suite(&state.store, &caller, &id).await?;
    if !record.tests.contains(&query.test) {
        return Err(ApiFailure::TestNotFound {
            suite: record.id,
            test: query.test,
        });
    }
    let attempts = state.store.attempts(&record.id, &query.test).await?;
    Ok(Json(TestAttempts {
        schema_version: SCHEMA_VERSION,
        suite_id: record.id,
        suite: record.name,
        test: query.test,
        attempts,
    }))
}

/// What the list needs of a stored report (the rest of it is not read into memory).
#[derive(Deserialize)]
struct Ended {
    state: SuiteState,
    summary: Summary,
}

impl Store {
    /// The ids of a token's latest suites, newest first.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Redis`] when Redis fails.
    pub async fn recent_suites(
        &self,
        token: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        let stop = isize::try_from(limit.min(RECENT_SUITES as usize)).unwrap_or(isize::MAX) - 1;
        Ok(conn
            .zrevrange(self.ns.recent_suites_key(token), 0, stop)
            .await?)
    }

    /// A row for each suite that still has its record, in the order given.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError`] when Redis fails or a record is corrupt.
    pub async fn suite_rows(&self, ids: &[String]) -> Result<Vec<SuiteRow>, StoreError> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.get(self.ns.suite_key(id))
                .get(self.ns.report_key(id))
                .scard(self.ns.done_key(id));
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let flat: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
        let mut replies = Vec::with_capacity(ids.len());
        for chunk in flat.chunks_exact(3) {
            if let [record, report, done] = chunk {
                let parse = |e: redis::ParsingError| StoreError::Redis(e.into());
                let record: Option<String> = redis::from_redis_value_ref(record).map_err(parse)?;
                let report: Option<String> = redis::from_redis_value_ref(report).map_err(parse)?;
                let done: usize = redis::from_redis_value_ref(done).map_err(parse)?;
                replies.push((record, report, done));
            }
        }
        let mut rows = Vec::with_capacity(ids.len());
        for (id, (record, report, done)) in ids.iter().zip(replies) {
            let Some(record) = record else { continue };
            let record: SuiteRecord =
                serde_json::from_str(&record).map_err(|source| StoreError::Corrupt {
                    key: self.ns.suite_key(id),
                    source,
                })?;
            // A report this version cannot read still says the suite ended.
            let ended = report.map(|json| {
                serde_json::from_str::<Ended>(&json)
                    .ok()
                    .map_or((SuiteState::Complete, None), |e| (e.state, Some(e.summary)))
            });
            let total = u32::try_from(record.tests.len()).unwrap_or(u32::MAX);
            let (state, summary) = ended.unwrap_or((SuiteState::Running, None));
            rows.push(SuiteRow {
                schema_version: SCHEMA_VERSION,
                id: record.id,
                name: record.name,
                state,
                total,
                done: u32::try_from(done).unwrap_or(u32::MAX),
                created_at_ms: record.created_at_ms,
                deadline_at_ms: record.deadline_at_ms,
                summary,
            });
        }
        Ok(rows)
    }

    /// Every recorded attempt of a test, in order.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Redis`] when Redis fails.
    pub async fn attempts(&self, id: &str, test: &str) -> Result<Vec<TestResult>, StoreError> {
        let fields: Vec<String> = (1..=MAX_RETRIES + 1)
            .map(|attempt| result_field(test, attempt))
            .collect();
        Ok(self
            .results_of(id, &fields)
            .await?
            .into_iter()
            .flatten()
            .collect())
    }

    /// The results stored under these fields of the suite's results hash (`None` for a
    /// field without one, or one that does not parse, which is logged).
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Redis`] when Redis fails.
    pub async fn results_of(
        &self,
        id: &str,
        fields: &[String],
    ) -> Result<Vec<Option<TestResult>>, StoreError> {
        if fields.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let values: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(self.ns.results_key(id))
            .arg(fields)
            .query_async(&mut conn)
            .await?;
        Ok(values
            .into_iter()
            .map(|json| {
                json.and_then(|json| match serde_json::from_str(&json) {
                    Ok(result) => Some(result),
                    Err(error) => {
                        tracing::warn!(%error, "Result is not valid JSON of a test result; ignoring it.");
                        None
                    }
                })
            })
            .collect())
    }
}
