//! Workspace blobs: `PUT /v1/blobs/{reference}` (an upload, held in a bounded buffer
//! with a timeout and a per-token quota) and `HEAD /v1/blobs/{reference}`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use sha2::{Digest, Sha256};

use isotest_protocol::api::{BlobStored, parse_blob_reference};

use super::{ApiFailure, AppState, read_body};
use crate::auth::Caller;
use crate::store::{BlobQuota, OverBlobQuota};

/// How long an upload waits for room in memory before it is refused with 503 (or a
/// quarter of the upload timeout, if shorter: an upload that holds room is then sure
/// to be waited on no longer than it may take).
const UPLOAD_WAIT: Duration = Duration::from_secs(30);

/// The upload room of `bytes`, in the KiB units of [`AppState::uploads`].
pub fn upload_units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

/// `PUT /v1/blobs/{reference}`: store a workspace under its sha256.
pub(super) async fn put_blob(
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
pub(super) async fn head_blob(
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
