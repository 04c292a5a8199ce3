//! The HTTP API: routes, handlers, and the mapping of every failure to a status code
//! and a one-line [`ApiError`]. Every `/v1` route passes [`auth::authenticate`] first;
//! `docs/openapi.yaml` describes them all and is served at `GET /openapi.yaml`.
//!
//! Its parts, by route family: [`failure`] (every refusal with its status code),
//! [`suites`] (submit, status, cancel), [`list`] (the caller's suites), [`reports`] (a suite's report as JSON, JUnit
//! and CTRF) and [`blobs`] (workspace uploads with their bounded buffer and quota);
//! the history routes are in [`crate::history`], the dashboard's in [`crate::ui`].

mod blobs;
mod failure;
mod list;
mod reports;
mod suites;

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use futures_util::StreamExt;

use isotest_protocol::api::ApiError;

use isotest_infra::egress::EgressPolicy;

use crate::auth;
use crate::config::Limits;
use crate::publisher::Publisher;
use crate::store::Store;
use isotest_infra::error_chain as chain;

pub use blobs::upload_units;
pub use failure::ApiFailure;
pub(crate) use failure::error_response;
pub use suites::{parse_suite_id, scheduled};

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
    /// The producer's URL for clients (`--public-url`), else taken from each request.
    pub public_url: Option<String>,
    /// The dashboard's live views.
    pub live: crate::ui::live::Live,
    /// The result cache's salt and entry lifetime.
    pub cache: crate::config::CacheConfig,
}

/// The OpenAPI document of this API, served at `GET /openapi.yaml`.
pub const OPENAPI_YAML: &str = include_str!("../../../docs/openapi.yaml");

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
        .route(
            "/v1/suites",
            axum::routing::post(suites::submit).get(list::list),
        )
        .route(
            "/v1/suites/{id}",
            get(suites::status).delete(suites::cancel),
        )
        .route("/v1/suites/{id}/report", get(reports::report))
        .route("/v1/suites/{id}/report.xml", get(reports::report_junit))
        .route(
            "/v1/suites/{id}/report.ctrf.json",
            get(reports::report_ctrf),
        )
        .route(
            "/v1/blobs/{reference}",
            put(blobs::put_blob).head(blobs::head_blob),
        )
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
pub(super) async fn read_body(
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
