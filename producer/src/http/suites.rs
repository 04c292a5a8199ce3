//! The suite routes: `POST /v1/suites` (submit), `GET /v1/suites/{id}` (status) and
//! `DELETE /v1/suites/{id}` (cancel), and who may see a suite's record.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use tracing::Instrument;
use uuid::Uuid;

use isotest_protocol::api::{
    QueueState, Submitted, SuiteRecord, SuiteStatus, parse_blob_reference,
};
use isotest_protocol::report::SuiteState;
use isotest_protocol::schedule::{Priority, ScheduledSuite};

use super::{ApiFailure, AppState, read_body};
use crate::auth::Caller;
use crate::store::StoredReport;
use crate::suite;

/// `POST /v1/suites`: validate, then record the suite with its tests waiting for the
/// dispatcher, in longest-first order, in one transaction; then accept.
pub(super) async fn submit(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Submitted>), ApiFailure> {
    let body = read_body(
        &headers,
        body,
        "request body",
        state.limits.max_manifest_bytes,
    )
    .await?;
    let suite = suite::parse(&body)?;
    if suite.network && !caller.may_use_network() {
        return Err(ApiFailure::NetworkNotGranted(
            caller.owner().unwrap_or_default(),
        ));
    }
    // Checked now so the submitter hears it; the aggregator checks again when it
    // delivers, connecting only to the addresses it checked then.
    if let Some(url) = &suite.callback_url {
        state
            .egress
            .check_url(url)
            .await
            .map_err(ApiFailure::Callback)?;
    }
    if let Some(reference) = &suite.workspace {
        let hex = parse_blob_reference(reference).unwrap_or_default();
        // Only a blob this caller uploaded: a digest seen elsewhere is no licence to
        // run another tenant's workspace.
        if !state.store.blob_exists(hex, caller.blob_owner()).await? {
            return Err(ApiFailure::MissingBlob(reference.clone()));
        }
        // Kept while the suite may run, and the blob TTL after.
        let deadline = suite
            .deadline_ms
            .map_or(state.default_deadline, Duration::from_millis);
        state
            .store
            .keep_blob(hex, state.limits.blob_ttl.saturating_add(deadline))
            .await?;
    }
    let id = Uuid::now_v7().to_string();
    let token = match &caller {
        Caller::Anonymous => "",
        Caller::Token(token) => token.name.as_str(),
    };
    let span = tracing::info_span!("submit", suite_id = %id, suite = %suite.name, token);
    async move {
        let now = isotest_protocol::now_ms();
        let scheduled = scheduled(&caller, suite.priority, now)?;
        let mut record = suite::record(&id, &suite, now, state.default_deadline);
        record.owner = caller.owner();
        record.public_url = public_url(&state, &headers);
        crate::history::prepare_record(&state, &mut record).await;
        let mut messages = suite::messages(&id, &suite, now);
        let hits = match crate::cache::CacheUser::of(&caller, &suite) {
            Some(user) => {
                let exclude = crate::cache::excluded(state.history.as_ref(), &record, now).await;
                crate::cache::serve(&state.store, &state.cache, &user, &exclude, &mut messages, now)
                    .await?
            }
            None => Vec::new(),
        };
        let known = state.store.durations(&suite.name, &record.tests).await?;
        let mut pending = crate::dispatch::order::order(
            &suite
                .tests
                .iter()
                .zip(known)
                .map(|(test, last_ms)| crate::dispatch::order::Known {
                    timeout_ms: test.timeout_ms,
                    last_ms,
                })
                .collect::<Vec<_>>(),
        );
        if !hits.is_empty() {
            let served: std::collections::HashSet<u32> = hits.iter().map(|h| h.index).collect();
            pending.retain(|entry| !served.contains(&entry.index));
        }
        // One transaction: a worker's result always finds its suite, the sweeper
        // closes it at its deadline, and the dispatcher sees all of its tests or none.
        state
            .store
            .schedule_suite(&record, &scheduled, &messages, &pending)
            .await?;
        // Served from the cache: written as results once the suite they belong to is.
        crate::cache::record_hits(&state.store, &record, &hits).await?;
        state.wake.notify_one();
        tracing::info!(tests = record.tests.len(), cached = hits.len(), priority = %scheduled.priority, "Accepted suite.");
        let producer_metrics = isotest_infra::metrics::producer();
        producer_metrics.suites_submitted.inc();
        producer_metrics
            .tests_submitted
            .inc_by(record.tests.len() as u64);
        let tests = u32::try_from(record.tests.len()).unwrap_or(u32::MAX);
        Ok((
            StatusCode::ACCEPTED,
            Json(Submitted {
                tests,
                status_url: format!("/v1/suites/{id}"),
                report_url: format!("/v1/suites/{id}/report"),
                junit_url: format!("/v1/suites/{id}/report.xml"),
                id,
            }),
        ))
    }
    .instrument(span)
    .await
}

/// The base URL of the producer's links: `--public-url`, else the scheme and host the
/// request came to (a proxy's `X-Forwarded-Proto` and `X-Forwarded-Host` first). A
/// client can only name the host its own suite's links point at.
pub fn public_url(state: &AppState, headers: &HeaderMap) -> Option<String> {
    if let Some(url) = &state.public_url {
        return Some(url.clone());
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let host = header("x-forwarded-host").or_else(|| header("host"))?;
    // Only a host and port: anything else would make the link another URL.
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
    {
        return None;
    }
    let scheme = match header("x-forwarded-proto") {
        Some("https") => "https",
        _ => "http",
    };
    Some(format!("{scheme}://{host}"))
}

/// The scheduler's entry of a suite from its caller: the token's weight, quota and
/// priority, or the suite's own priority where it asks for one the token allows.
/// Without a token (an open producer), a suite may ask for any priority.
///
/// # Errors
///
/// Returns [`ApiFailure::PriorityAboveToken`] for a priority above the token's.
pub fn scheduled(
    caller: &Caller,
    asked: Option<Priority>,
    now_ms: u64,
) -> Result<ScheduledSuite, ApiFailure> {
    let (token, weight, quota, allowed) = match caller {
        Caller::Anonymous => (String::new(), 1, None, Priority::High),
        Caller::Token(t) => (t.name.clone(), t.weight.max(1), t.quota, t.priority),
    };
    let priority = match (caller, asked) {
        (_, Some(asked)) if asked > allowed => {
            return Err(ApiFailure::PriorityAboveToken {
                token,
                asked,
                allowed,
            });
        }
        (_, Some(asked)) => asked,
        (Caller::Anonymous, None) => Priority::Normal,
        (Caller::Token(_), None) => allowed,
    };
    Ok(ScheduledSuite {
        schema_version: isotest_protocol::SCHEMA_VERSION,
        token,
        weight,
        priority,
        quota,
        created_at_ms: now_ms,
    })
}

/// Suite ids are UUIDs; the canonical lowercase form is the one in Redis keys.
pub fn parse_suite_id(text: &str) -> Result<String, ApiFailure> {
    Uuid::parse_str(text)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| ApiFailure::BadSuiteId(text.to_owned()))
}

/// `GET /v1/suites/{id}`.
#[tracing::instrument(skip_all, fields(suite_id = %id))]
pub(super) async fn status(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<SuiteStatus>, ApiFailure> {
    let id = parse_suite_id(&id)?;
    if state.store.suite(&id).await?.is_none() {
        // Past its retention in Redis, a suite is in the history store.
        return crate::history::status(&state, &caller, &id)
            .await?
            .map(Json)
            .ok_or(ApiFailure::SuiteNotFound(id));
    }
    let record = visible_record(&state, &caller, &id).await?;
    let report = state.store.report(&id).await?;
    let done = state.store.done_count(&id).await?;
    let (queue, waiting, unstarted) = if report.is_none() {
        let queue = state.publisher.queue_state().await;
        let waiting = state.store.waiting(&id).await?;
        (queue, waiting, state.store.unstarted(&id).await?)
    } else {
        (None, 0, 0)
    };
    let status = match report {
        Some(StoredReport { report, .. }) => ended_status(id, report, done),
        None => SuiteStatus {
            waiting: Some(waiting),
            id,
            name: record.name,
            state: SuiteState::Running,
            total: u32::try_from(record.tests.len()).unwrap_or(u32::MAX),
            done,
            summary: None,
            // So that a client can say when no worker takes the suite's tests: the
            // tests in RabbitMQ, or this suite's not started yet (some of which wait
            // for the scheduler), whichever is more.
            queue: queue.map(|q| QueueState {
                waiting: q.waiting.max(unstarted),
                ..q
            }),
        },
    };
    Ok(Json(status))
}

/// `DELETE /v1/suites/{id}`: cancel a running suite. Its queued tests are skipped and
/// its running ones killed by the workers, which see the stored report; tests without
/// a final result are reported `cancelled`. 200 with the new status, 404 for an unknown
/// suite, 409 for one that has already ended.
#[tracing::instrument(skip_all, fields(suite_id = %id))]
pub(super) async fn cancel(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<SuiteStatus>, ApiFailure> {
    use isotest_infra::cancel::Cancelled;
    let id = parse_suite_id(&id)?;
    visible_record(&state, &caller, &id).await?;
    match state.store.cancel(&id).await? {
        Cancelled::Now(report) => {
            tracing::info!(cancelled = report.summary.cancelled, "Cancelled the suite.");
            let done = state.store.done_count(&id).await?;
            Ok(Json(ended_status(id, *report, done)))
        }
        Cancelled::AlreadyEnded(ended) => Err(ApiFailure::AlreadyEnded {
            id,
            state: state_name(ended),
        }),
        Cancelled::UnknownSuite => Err(ApiFailure::SuiteNotFound(id)),
    }
}

/// A suite state as the API's JSON spells it.
fn state_name(state: SuiteState) -> &'static str {
    state.as_str()
}

/// The suite's record, if the caller may see the suite (see [`Caller::may_see`]).
///
/// # Errors
///
/// Another token's suite is [`ApiFailure::SuiteNotFound`], exactly as an unknown one
/// (404, not 403), so a suite id says nothing about other tenants' suites; a suite
/// without a record (whose owner cannot be told) is not found either.
pub(super) async fn visible_record(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<SuiteRecord, ApiFailure> {
    match state.store.suite(id).await? {
        Some(record) if caller.may_see(record.owner.as_deref()) => Ok(record),
        Some(_) | None => Err(ApiFailure::SuiteNotFound(id.to_owned())),
    }
}

/// The status of a suite whose report is written: its summary, nothing waiting.
fn ended_status(id: String, report: isotest_protocol::report::Report, done: u32) -> SuiteStatus {
    SuiteStatus {
        id,
        name: report.suite,
        state: report.state,
        total: report.summary.total,
        done,
        waiting: None,
        summary: Some(report.summary),
        queue: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn suite_ids_must_be_uuids_and_are_normalized() {
        let id = "0190A3B4-1C2D-7E8F-9A0B-1C2D3E4F5A6B";
        assert_eq!(
            parse_suite_id(id).expect("uuid"),
            "0190a3b4-1c2d-7e8f-9a0b-1c2d3e4f5a6b"
        );
        for bad in ["", "42", "../etc", "0190a3b4-1c2d-7e8f-9a0b"] {
            let err = parse_suite_id(bad).expect_err(bad);
            assert_eq!(err.status(), StatusCode::BAD_REQUEST);
            assert_eq!(
                err.to_string(),
                format!("`{bad}` is not a suite id (a UUID)")
            );
        }
    }

    #[test]
    fn a_suite_gets_its_tokens_share_and_at_most_its_priority() {
        use isotest_protocol::api::TokenRecord;
        let token = Caller::Token(TokenRecord {
            schema_version: 1,
            name: "ci".into(),
            quota: Some(4),
            admin: false,
            network: false,
            weight: 3,
            priority: Priority::Normal,
            trusted: false,
            cache: false,
        });
        // (caller, asked) → the priority given, or None for a refusal.
        let cases = [
            (&token, None, Some(Priority::Normal)),
            (&token, Some(Priority::Low), Some(Priority::Low)),
            (&token, Some(Priority::Normal), Some(Priority::Normal)),
            (&token, Some(Priority::High), None),
            (&Caller::Anonymous, None, Some(Priority::Normal)),
            (
                &Caller::Anonymous,
                Some(Priority::High),
                Some(Priority::High),
            ),
        ];
        for (caller, asked, expected) in cases {
            let got = scheduled(caller, asked, 7).ok().map(|s| s.priority);
            assert_eq!(got, expected, "{caller:?} {asked:?}");
        }
        let entry = scheduled(&token, None, 7).expect("allowed");
        assert_eq!(
            (entry.token.as_str(), entry.weight, entry.quota),
            ("ci", 3, Some(4))
        );
        let err = scheduled(&token, Some(Priority::High), 7).expect_err("above");
        assert_eq!(err.status(), StatusCode::FORBIDDEN);
    }
}
