//! A suite's report: `GET /v1/suites/{id}/report` (JSON as stored),
//! `…/report.xml` (JUnit) and `…/report.ctrf.json` (CTRF), from Redis or, past its
//! retention there, from the history store.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::suites::visible_record;
use super::{ApiFailure, AppState, parse_suite_id};
use crate::auth::Caller;
use crate::store::StoredReport;

/// The report, or why there is none yet.
async fn stored_report(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<StoredReport, ApiFailure> {
    let id = parse_suite_id(id)?;
    if state.store.suite(&id).await?.is_none() {
        // Past its retention in Redis, a suite's report is in the history store.
        return crate::history::stored_report(state, caller, &id)
            .await?
            .ok_or(ApiFailure::SuiteNotFound(id));
    }
    let record = visible_record(state, caller, &id).await?;
    if let Some(report) = state.store.report(&id).await? {
        return Ok(report);
    }
    let done = state.store.done_count(&id).await?;
    Err(ApiFailure::Running {
        id,
        done,
        total: u32::try_from(record.tests.len()).unwrap_or(u32::MAX),
    })
}

/// `GET /v1/suites/{id}/report`: the JSON exactly as the aggregator wrote it.
#[tracing::instrument(skip_all, fields(suite_id = %id))]
pub(super) async fn report(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiFailure> {
    let stored = stored_report(&state, &caller, &id).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], stored.json).into_response())
}

/// `GET /v1/suites/{id}/report.xml`: JUnit XML.
#[tracing::instrument(skip_all, fields(suite_id = %id))]
pub(super) async fn report_junit(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiFailure> {
    let stored = stored_report(&state, &caller, &id).await?;
    let xml = isotest_report::junit(&stored.report);
    Ok(([(header::CONTENT_TYPE, "application/xml")], xml).into_response())
}

/// `GET /v1/suites/{id}/report.ctrf.json`: the Common Test Report Format.
#[tracing::instrument(skip_all, fields(suite_id = %id))]
pub(super) async fn report_ctrf(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiFailure> {
    let stored = stored_report(&state, &caller, &id).await?;
    Ok(Json(isotest_report::ctrf(&stored.report)))
}
