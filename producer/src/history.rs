//! The producer's side of the history store (`--history-url`): the quarantined tests
//! a suite is submitted with, reports and statuses of suites whose Redis keys have
//! expired, and a small JSON API over the history (a token sees its own suites):
//! `GET /v1/history/suites`, `GET /v1/tests/{name}/history` and `GET /v1/flaky`.

use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use isotest_history::{FlakyPolicy, FlakyTest, History, HistoryError, SuiteRow, TestRun};
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
}

/// The store, or the answer that this producer has none.
fn store(state: &AppState) -> Result<&History, ApiFailure> {
    state.history.as_ref().ok_or(ApiFailure::NoHistory)
}

/// The name of the calling token, which scopes what it sees.
fn token_of(caller: &Caller) -> Option<&str> {
    match caller {
        Caller::Anonymous => None,
        Caller::Token(token) => Some(token.name.as_str()),
    }
}

/// Fills in what the history store adds to a new suite's record: its token and the
/// tests quarantined for it (by token, by repository, everywhere). A history store
/// that fails is logged and leaves the suite without quarantine rather than refusing
/// a CI job's suite.
pub(crate) async fn prepare_record(state: &AppState, caller: &Caller, record: &mut SuiteRecord) {
    record.token = token_of(caller).map(str::to_owned);
    let Some(history) = &state.history else {
        return;
    };
    let repository = record.meta.get(meta::REPOSITORY).map(String::as_str);
    match history
        .quarantined_for(record.token.as_deref(), repository)
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

/// A report from the history store, for a suite Redis no longer has.
pub(crate) async fn stored_report(
    state: &AppState,
    id: &str,
) -> Result<Option<StoredReport>, ApiFailure> {
    let Some(history) = &state.history else {
        return Ok(None);
    };
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
pub(crate) async fn status(state: &AppState, id: &str) -> Result<Option<SuiteStatus>, ApiFailure> {
    Ok(stored_report(state, id).await?.map(|stored| {
        let report = stored.report;
        SuiteStatus {
            id: id.to_owned(),
            name: report.suite,
            state: report.state,
            total: report.summary.total,
            done: u32::try_from(report.tests.iter().filter(|t| t.attempts > 0).count())
                .unwrap_or(u32::MAX),
            summary: Some(report.summary),
        }
    }))
}

#[derive(Debug, Deserialize)]
struct Last {
    last: Option<u32>,
    suite: Option<String>,
}

/// `GET /v1/history/suites?last=N`: the suites that ended last, newest first.
async fn suites(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<Last>,
) -> Result<Json<Vec<SuiteRow>>, ApiFailure> {
    let last = query.last.unwrap_or(20).min(MAX_ROWS);
    Ok(Json(store(&state)?.suites(last, token_of(&caller)).await?))
}

/// `GET /v1/tests/{name}/history?last=N&suite=NAME`: a test's last runs, newest first
/// (a token sees the runs of its own suites).
async fn test_history(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(query): Query<Last>,
) -> Result<Json<Vec<TestRun>>, ApiFailure> {
    let history = store(&state)?;
    let last = query.last.unwrap_or(20).min(MAX_ROWS);
    let mut runs = history
        .test_runs(&name, query.suite.as_deref(), last)
        .await?;
    if let Some(token) = token_of(&caller) {
        let mine = history.suites(MAX_ROWS, Some(token)).await?;
        runs.retain(|r| mine.iter().any(|s| s.id == r.suite_id));
    }
    Ok(Json(runs))
}

#[derive(Debug, Deserialize)]
struct FlakyQuery {
    /// Runs of the last this many days count (default 30).
    days: Option<u32>,
}

/// `GET /v1/flaky?days=N`: the flaky tests, highest score first.
async fn flaky(
    State(state): State<Arc<AppState>>,
    Query(query): Query<FlakyQuery>,
) -> Result<Json<Vec<FlakyTest>>, ApiFailure> {
    let days = u64::from(query.days.unwrap_or(30));
    let since = isotest_protocol::now_ms().saturating_sub(days * 86_400_000);
    Ok(Json(
        store(&state)?.flaky(since, &FlakyPolicy::default()).await?,
    ))
}
