//! Every answer of the API other than success ([`ApiFailure`]), each with its status
//! code, and the one-line JSON body a client sees.

use std::time::Duration;

use axum::Json;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};

use isotest_infra::egress::EgressError;
use isotest_infra::error_chain as chain;
use isotest_protocol::api::ApiError;
use isotest_protocol::schedule::Priority;

use crate::store::StoreError;
use crate::suite::{self, SubmitError};

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

#[cfg(test)]
mod tests {
    use super::*;
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
