//! The HTTP API: routes, handlers, and the mapping of every failure to a status code
//! and a one-line [`ApiError`]. Every `/v1` route passes [`auth::authenticate`] first;
//! `docs/openapi.yaml` describes them all and is served at `GET /openapi.yaml`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tracing::Instrument;
use uuid::Uuid;

use isotest_protocol::api::{
    ApiError, BlobStored, QueueState, Submitted, SuiteRecord, SuiteStatus, parse_blob_reference,
};
use isotest_protocol::report::SuiteState;
use isotest_protocol::schedule::{Priority, ScheduledSuite};

use isotest_infra::egress::{EgressError, EgressPolicy};

use crate::auth::{self, Caller};
use crate::config::Limits;
use crate::publisher::Publisher;
use crate::store::{BlobQuota, OverBlobQuota, Store, StoreError, StoredReport};
use crate::suite::{self, SubmitError};
use isotest_infra::error_chain as chain;

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub store: Store,
    /// Shared with the dispatcher, which publishes; the API only checks it is up.
    pub publisher: Arc<Publisher>,
    /// Wakes this process's dispatcher when a suite is accepted.
    pub wake: Arc<tokio::sync::Notify>,
    /// How the dispatcher keeps the queue.
    pub dispatch: crate::dispatch::DispatchConfig,
    pub limits: Limits,
    pub default_deadline: Duration,
    /// Accept `/v1` requests without a token (`--open`).
    pub open: bool,
    /// Where a suite's `callback_url` may point.
    pub egress: EgressPolicy,
    /// Room for blob bodies in memory, in KiB: each upload holds its size until done.
    pub uploads: tokio::sync::Semaphore,
    /// The history store (`--history-url`): quarantine, reports of expired suites, the
    /// history routes.
    pub history: Option<isotest_history::History>,
    /// The dashboard's live views.
    pub live: crate::ui::live::Live,
    /// The result cache's salt and entry lifetime.
    pub cache: crate::config::CacheConfig,
}

/// How long an upload waits for room in memory before it is refused with 503 (or a
/// quarter of the upload timeout, if shorter: an upload that holds room is then sure
/// to be waited on no longer than it may take).
const UPLOAD_WAIT: Duration = Duration::from_secs(30);

/// The upload room of `bytes`, in the KiB units of [`AppState::uploads`].
pub fn upload_units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

/// The OpenAPI document of this API, served at `GET /openapi.yaml`.
pub const OPENAPI_YAML: &str = include_str!("../../docs/openapi.yaml");

/// Every answer other than success, each with its status code.
#[derive(Debug, thiserror::Error)]
pub enum ApiFailure {
    #[error(transparent)]
    Submit(#[from] SubmitError),
    #[error(
        "{ORIGIN}: workspace: blob {0} is not stored; upload it with PUT /v1/blobs/{0} first",
        ORIGIN = suite::ORIGIN
    )]
    MissingBlob(String),
    #[error("{ORIGIN}: callback_url", ORIGIN = suite::ORIGIN)]
    Callback(#[source] EgressError),
    #[error(
        "token {0} may not run suites with `network = true`; an operator grants it with `isotest token add NAME --network`"
    )]
    NetworkNotGranted(String),
    #[error("{what} is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("{what} is more than the limit of {limit} bytes")]
    TooLargeStream { what: &'static str, limit: u64 },
    #[error("could not read the request body")]
    ReadBody(#[source] axum::Error),
    #[error("the producer is receiving as many uploads as it holds at once; try again shortly")]
    UploadsBusy,
    #[error("the upload took longer than {}s", .0.as_secs())]
    UploadTimeout(Duration),
    #[error(
        "{owner} has {count} blobs stored, the most it may have (--max-blobs-per-token); unused blobs expire"
    )]
    TooManyBlobs { owner: String, count: u64 },
    #[error(
        "{owner} has {stored} bytes of blobs stored; this one's {size} would exceed its limit of {limit} (--max-blob-bytes-per-token)"
    )]
    TooManyBlobBytes {
        owner: String,
        stored: u64,
        size: u64,
        limit: u64,
    },
    #[error("`{0}` is not a suite id (a UUID)")]
    BadSuiteId(String),
    #[error("query string: {0}")]
    BadQuery(String),
    #[error("`{0}` is not a blob reference; use sha256:<64 lowercase hex digits>")]
    BadBlobReference(String),
    #[error("blob content has sha256:{actual}, not the {expected} its reference names")]
    DigestMismatch { expected: String, actual: String },
    #[error("suite {0} not found")]
    SuiteNotFound(String),
    #[error("suite {suite} has no test `{test}`")]
    TestNotFound { suite: String, test: String },
    #[error("this server already streams {0} live views; try again later")]
    TooManyStreams(usize),
    #[error("suite {id} is still running ({done} of {total} tests done)")]
    Running { id: String, done: u32, total: u32 },
    #[error("suite {id} has already ended ({state}); there is nothing to cancel")]
    AlreadyEnded { id: String, state: &'static str },
    /// The one submission a token can never have accepted (a quota only makes a suite
    /// wait).
    #[error(
        "the suite asks for priority {asked}, above token {token}'s {allowed}; ask for {allowed} or lower, or use a token made with --priority {asked}"
    )]
    PriorityAboveToken {
        token: String,
        asked: Priority,
        allowed: Priority,
    },
    #[error("could not use Redis")]
    Store(#[from] StoreError),
    #[error("this producer keeps no history; start it with --history-url")]
    NoHistory,
    #[error("could not use the history store")]
    History(#[from] isotest_history::HistoryError),
    #[error("no route for {method} {path}")]
    NoRoute { method: Method, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: Method, path: String },
}

impl ApiFailure {
    /// The status code a client sees.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiFailure::Submit(_)
            | ApiFailure::Callback(_)
            | ApiFailure::MissingBlob(_)
            | ApiFailure::BadSuiteId(_)
            | ApiFailure::BadQuery(_)
            | ApiFailure::BadBlobReference(_)
            | ApiFailure::DigestMismatch { .. }
            | ApiFailure::ReadBody(_) => StatusCode::BAD_REQUEST,
            ApiFailure::TooLarge { .. } | ApiFailure::TooLargeStream { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiFailure::SuiteNotFound(_)
            | ApiFailure::TestNotFound { .. }
            | ApiFailure::NoRoute { .. } => StatusCode::NOT_FOUND,
            ApiFailure::Running { .. } | ApiFailure::AlreadyEnded { .. } => StatusCode::CONFLICT,
            ApiFailure::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiFailure::NetworkNotGranted(_) | ApiFailure::PriorityAboveToken { .. } => {
                StatusCode::FORBIDDEN
            }
            ApiFailure::TooManyBlobs { .. } | ApiFailure::TooManyBlobBytes { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiFailure::UploadsBusy => StatusCode::SERVICE_UNAVAILABLE,
            ApiFailure::UploadTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiFailure::TooManyStreams(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiFailure::Store(StoreError::Corrupt { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiFailure::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiFailure::NoHistory => StatusCode::NOT_IMPLEMENTED,
            ApiFailure::History(isotest_history::HistoryError::CorruptReport { .. }) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ApiFailure::History(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// The one-line JSON answer of a failed request; server errors are logged as errors,
/// refusals (the client's to fix) at debug level.
pub(crate) fn error_response(status: StatusCode, failure: &dyn std::error::Error) -> Response {
    let error = chain(failure);
    if status.is_server_error() {
        tracing::error!(%status, error, "Request failed.");
    } else {
        tracing::debug!(%status, error, "Request refused.");
    }
    (status, Json(ApiError { error })).into_response()
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        error_response(self.status(), &self)
    }
}

/// The API's routes over the shared state.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(isotest_infra::metrics::render))
        .route("/openapi.yaml", get(openapi))
        .merge(v1_routes(Arc::clone(&state)))
        .merge(crate::ui::routes(Arc::clone(&state)))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        // Bodies are read by `read_body`, which enforces each route's own limit
        // with a clear 413 instead of axum's default 2 MB cut-off.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// The `/v1` routes, each behind [`auth::authenticate`] (a layer of the matched
/// routes only, so an unknown path is still a plain 404).
fn v1_routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/suites", post(submit))
        .route("/v1/suites/{id}", get(status).delete(cancel))
        .route("/v1/suites/{id}/report", get(report))
        .route("/v1/suites/{id}/report.xml", get(report_junit))
        .route("/v1/suites/{id}/report.ctrf.json", get(report_ctrf))
        .route("/v1/blobs/{reference}", put(put_blob).head(head_blob))
        .merge(crate::history::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            auth::authenticate,
        ))
}

async fn no_route(method: Method, uri: Uri) -> ApiFailure {
    ApiFailure::NoRoute {
        method,
        path: uri.path().to_owned(),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiFailure {
    ApiFailure::MethodNotAllowed {
        method,
        path: uri.path().to_owned(),
    }
}

async fn healthz() -> &'static str {
    "ok"
}

/// `GET /openapi.yaml`: the API's description, open like the health checks.
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI_YAML).into_response()
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let mut problems = Vec::new();
    if let Err(e) = state.store.ping().await {
        problems.push(format!("redis: {}", chain(&e)));
    }
    if let Err(e) = state.publisher.ensure_connected().await {
        problems.push(format!("rabbitmq: {}", chain(&e)));
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready").into_response()
    } else {
        let error = format!("not ready: {}", problems.join("; "));
        (StatusCode::SERVICE_UNAVAILABLE, Json(ApiError { error })).into_response()
    }
}

/// Reads a whole body, refusing it as soon as it is known to exceed `limit`.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    what: &'static str,
    limit: u64,
) -> Result<Bytes, ApiFailure> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(size) = declared
        && size > limit
    {
        return Err(ApiFailure::TooLarge { what, size, limit });
    }
    let mut bytes = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(ApiFailure::ReadBody)?;
        if (bytes.len() + chunk.len()) as u64 > limit {
            // Without a Content-Length the full size is unknown; stop reading here.
            return Err(ApiFailure::TooLargeStream { what, limit });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(bytes))
}

/// `POST /v1/suites`: validate, then record the suite with its tests waiting for the
/// dispatcher, in longest-first order, in one transaction; then accept.
async fn submit(
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
async fn status(
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
        Some(StoredReport { report, .. }) => SuiteStatus {
            id,
            name: report.suite,
            state: report.state,
            total: report.summary.total,
            done,
            waiting: None,
            summary: Some(report.summary),
            queue: None,
        },
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
async fn cancel(
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
            Ok(Json(SuiteStatus {
                id,
                name: report.suite,
                state: report.state,
                total: report.summary.total,
                done,
                waiting: None,
                summary: Some(report.summary),
                queue: None,
            }))
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
async fn visible_record(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<SuiteRecord, ApiFailure> {
    match state.store.suite(id).await? {
        Some(record) if caller.may_see(record.owner.as_deref()) => Ok(record),
        Some(_) | None => Err(ApiFailure::SuiteNotFound(id.to_owned())),
    }
}

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
async fn report(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiFailure> {
    let stored = stored_report(&state, &caller, &id).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], stored.json).into_response())
}

/// `GET /v1/suites/{id}/report.xml`: JUnit XML.
#[tracing::instrument(skip_all, fields(suite_id = %id))]
async fn report_junit(
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
async fn report_ctrf(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiFailure> {
    let stored = stored_report(&state, &caller, &id).await?;
    Ok(Json(isotest_report::ctrf(&stored.report)))
}

/// `PUT /v1/blobs/{reference}`: store a workspace under its sha256.
async fn put_blob(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(reference): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<BlobStored>), ApiFailure> {
    let expected = parse_blob_reference(&reference)
        .ok_or_else(|| ApiFailure::BadBlobReference(reference.clone()))?
        .to_owned();
    let limits = state.limits;
    // Room in memory for the whole body (its declared size, or the most a blob may be)
    // before a byte is read, so concurrent uploads cannot exhaust the producer.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let room = upload_units(
        declared
            .unwrap_or(limits.max_blob_bytes)
            .min(limits.max_blob_bytes),
    )
    .min(upload_units(limits.upload_buffer_bytes))
    .max(1);
    let wait = UPLOAD_WAIT.min(limits.upload_timeout / 4);
    let _room = tokio::time::timeout(wait, state.uploads.acquire_many(room))
        .await
        .map_err(|_| ApiFailure::UploadsBusy)?
        .map_err(|_| ApiFailure::UploadsBusy)?;
    let bytes = tokio::time::timeout(
        limits.upload_timeout,
        read_body(&headers, body, "blob", limits.max_blob_bytes),
    )
    .await
    .map_err(|_| ApiFailure::UploadTimeout(limits.upload_timeout))??;
    let actual = hex::encode(Sha256::digest(&bytes));
    if actual != expected {
        return Err(ApiFailure::DigestMismatch {
            expected: reference,
            actual,
        });
    }
    let quota = BlobQuota {
        max_blobs: limits.max_blobs_per_token,
        max_bytes: limits.max_blob_bytes_per_token,
        ttl: limits.blob_ttl,
    };
    let owner = caller.uploader();
    let written = match state
        .store
        .put_blob(&expected, &bytes, owner, quota)
        .await?
    {
        Ok(written) => written,
        Err(OverBlobQuota::Count(count)) => {
            return Err(ApiFailure::TooManyBlobs {
                owner: owner_name(owner),
                count,
            });
        }
        Err(OverBlobQuota::Bytes(stored)) => {
            return Err(ApiFailure::TooManyBlobBytes {
                owner: owner_name(owner),
                stored,
                size: bytes.len() as u64,
                limit: limits.max_blob_bytes_per_token,
            });
        }
    };
    let size = bytes.len() as u64;
    tracing::info!(reference, size, written, "Stored blob.");
    Ok((StatusCode::CREATED, Json(BlobStored { reference, size })))
}

/// How an uploader is named in an error: its token, or that there is none.
fn owner_name(owner: &str) -> String {
    if owner == isotest_protocol::names::Namespace::ANONYMOUS_OWNER {
        "the anonymous uploader".to_owned()
    } else {
        format!("token {owner}")
    }
}

/// `HEAD /v1/blobs/{reference}`: 200 if this caller has stored it, so it can skip the
/// upload; another tenant's blob is 404, so a digest tells nothing of other tenants.
async fn head_blob(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(reference): Path<String>,
) -> Result<StatusCode, ApiFailure> {
    let hex = parse_blob_reference(&reference)
        .ok_or_else(|| ApiFailure::BadBlobReference(reference.clone()))?;
    Ok(
        if state.store.blob_exists(hex, caller.blob_owner()).await? {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        },
    )
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

    #[test]
    fn failures_map_to_their_status_and_line() {
        let cases: Vec<(ApiFailure, StatusCode, &str)> = vec![
            (
                ApiFailure::TooLarge {
                    what: "blob",
                    size: 300,
                    limit: 256,
                },
                StatusCode::PAYLOAD_TOO_LARGE,
                "blob is 300 bytes, more than the limit of 256",
            ),
            (
                ApiFailure::Running {
                    id: "s".into(),
                    done: 12,
                    total: 60,
                },
                StatusCode::CONFLICT,
                "suite s is still running (12 of 60 tests done)",
            ),
            (
                ApiFailure::AlreadyEnded {
                    id: "s".into(),
                    state: "complete",
                },
                StatusCode::CONFLICT,
                "suite s has already ended (complete); there is nothing to cancel",
            ),
            (
                ApiFailure::SuiteNotFound("s".into()),
                StatusCode::NOT_FOUND,
                "suite s not found",
            ),
            (
                ApiFailure::MissingBlob("sha256:ab".into()),
                StatusCode::BAD_REQUEST,
                "request body: workspace: blob sha256:ab is not stored; upload it with PUT /v1/blobs/sha256:ab first",
            ),
            (
                ApiFailure::PriorityAboveToken {
                    token: "ci-gitlab".into(),
                    asked: Priority::High,
                    allowed: Priority::Normal,
                },
                StatusCode::FORBIDDEN,
                "the suite asks for priority high, above token ci-gitlab's normal; ask for normal or lower, or use a token made with --priority high",
            ),
        ];
        for (failure, status, line) in cases {
            assert_eq!(failure.status(), status, "{failure}");
            assert_eq!(chain(&failure), line);
        }
    }
}
