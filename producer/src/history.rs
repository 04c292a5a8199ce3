//! The producer's side of the history store (`--history-url`): the quarantined tests
//! a suite is submitted with, reports and statuses of suites whose Redis keys have
//! expired, and a small JSON API over the history (a caller sees the suites it may
//! read: its own, every one with an admin token):
//! `GET /v1/history/suites`, `GET /v1/tests/{name}/history`, `GET /v1/flaky` and
//! `GET /v1/quarantine`.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use isotest_history::{FlakyPolicy, FlakyTest, History, HistoryError, Owner, SuiteRow, TestRun};
use isotest_protocol::api::{SuiteRecord, SuiteStatus, meta};
use isotest_protocol::report::Report;

use crate::auth::Caller;
use crate::http::{ApiFailure, AppState};
use crate::store::StoredReport;

/// The most rows one request returns.
const MAX_ROWS: u32 = 1000;

/// The history routes, for [`crate::http::router`]'s `/v1` set.
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/history/suites", get(suites))
        .route("/v1/tests/{name}/history", get(test_history))
        .route("/v1/flaky", get(flaky))
        .route("/v1/quarantine", get(quarantine))
}

/// The store, or the answer that this producer has none.
fn store(state: &AppState) -> Result<&History, ApiFailure> {
    state.history.as_ref().ok_or(ApiFailure::NoHistory)
}

/// Whose suites a caller sees, as [`Caller::may_see`] says: its own, every one with
/// an admin token, the anonymous ones without a token.
fn owner_of(caller: &Caller) -> Owner<'_> {
    match caller {
        Caller::Anonymous => Owner::Anonymous,
        Caller::Token(token) if token.admin => Owner::Any,
        Caller::Token(token) => Owner::Token(token.name.as_str()),
    }
}

/// Fills in what the history store adds to a new suite's record (its owner already
/// set): the tests quarantined for it (by owner, by repository, everywhere). A history
/// store that fails is logged and leaves the suite without quarantine rather than
/// refusing a CI job's suite.
pub(crate) async fn prepare_record(state: &AppState, record: &mut SuiteRecord) {
    let Some(history) = &state.history else {
        return;
    };
    let repository = record.meta.get(meta::REPOSITORY).map(String::as_str);
    match history
        .quarantined_for(record.owner.as_deref(), repository)
        .await
    {
        // Only the suite's own tests: the record stays small whatever the list holds.
        Ok(quarantined) => {
            record.quarantined = quarantined
                .into_iter()
                .filter(|t| record.tests.contains(t))
                .collect();
        }
        Err(error) => tracing::warn!(
            error = %isotest_infra::error_chain(&error),
            "Could not read the quarantine; the suite runs without it."
        ),
    }
}

/// A report from the history store, for a suite Redis no longer has, if the caller
/// may see it.
pub(crate) async fn stored_report(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Option<StoredReport>, ApiFailure> {
    let Some(history) = &state.history else {
        return Ok(None);
    };
    match history.suite(id).await? {
        Some(row) if caller.may_see(row.token.as_deref()) => {}
        Some(_) | None => return Ok(None),
    }
    let Some(json) = history.report_json(id).await? else {
        return Ok(None);
    };
    let report: Report =
        serde_json::from_str(&json).map_err(|source| HistoryError::CorruptReport {
            suite_id: id.to_owned(),
            source,
        })?;
    Ok(Some(StoredReport { json, report }))
}

/// A status from the history store, for a suite Redis no longer has.
pub(crate) async fn status(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Option<SuiteStatus>, ApiFailure> {
    Ok(stored_report(state, caller, id).await?.map(|stored| {
        let report = stored.report;
        SuiteStatus {
            id: id.to_owned(),
            name: report.suite,
            state: report.state,
            total: report.summary.total,
            done: u32::try_from(report.tests.iter().filter(|t| t.attempts > 0).count())
                .unwrap_or(u32::MAX),
            summary: Some(report.summary),
            queue: None,
            waiting: None,
        }
    }))
}

#[derive(Debug, Deserialize)]
struct Last {
    last: Option<u32>,
    suite: Option<String>,
}

/// `GET /v1/history/suites?last=N`: the suites that ended last, newest first, of those
/// the caller may see.
async fn suites(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<Last>, QueryRejection>,
) -> Result<Json<Vec<SuiteRow>>, ApiFailure> {
    let Query(query) = query.map_err(bad_query)?;
    let last = query.last.unwrap_or(20).min(MAX_ROWS);
    Ok(Json(store(&state)?.suites(last, owner_of(&caller)).await?))
}

/// `GET /v1/tests/{name}/history?last=N&suite=NAME`: a test's last runs, newest first
/// (a token sees the runs of its own suites).
async fn test_history(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    query: Result<Query<Last>, QueryRejection>,
) -> Result<Json<Vec<TestRun>>, ApiFailure> {
    let Query(query) = query.map_err(bad_query)?;
    let last = query.last.unwrap_or(20).min(MAX_ROWS);
    Ok(Json(
        store(&state)?
            .test_runs(&name, query.suite.as_deref(), owner_of(&caller), last)
            .await?,
    ))
}

/// A query string that does not parse: bad input, answered as every other (JSON, 400).
fn bad_query(rejection: QueryRejection) -> ApiFailure {
    ApiFailure::BadQuery(rejection.body_text())
}

#[derive(Debug, Deserialize)]
struct FlakyQuery {
    /// Runs of the last this many days count (default 30).
    days: Option<u32>,
}

/// `GET /v1/flaky?days=N`: the flaky tests among the suites the caller may see,
/// highest score first.
async fn flaky(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<FlakyQuery>, QueryRejection>,
) -> Result<Json<Vec<FlakyTest>>, ApiFailure> {
    let Query(query) = query.map_err(bad_query)?;
    let days = u64::from(query.days.unwrap_or(30));
    let since = isotest_protocol::now_ms().saturating_sub(days * 86_400_000);
    Ok(Json(
        store(&state)?
            .flaky(since, owner_of(&caller), &FlakyPolicy::default())
            .await?,
    ))
}

/// `GET /v1/quarantine`: the quarantine entries that apply to the caller's suites (for
/// every suite, its token, its suites' repositories; every entry for an admin), with
/// their reason and when each was added.
async fn quarantine(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<isotest_history::Quarantined>>, ApiFailure> {
    Ok(Json(
        store(&state)?.quarantine_visible(owner_of(&caller)).await?,
    ))
}
