//! API tokens: making and hashing them, reading `Authorization: Bearer`, and the
//! middleware that lets a `/v1` request through only with a valid token (or, on a
//! producer started with `--open`, with none). It fails closed: no token defined, a
//! flushed Redis or a namespace typo means every request is refused, never accepted. A
//! dashboard session cookie ([`crate::ui::session`]) stands for its token on reads (GET
//! and HEAD) only.
//!
//! A token belongs to one CI system (its `name`) and carries its share of the test
//! slots (`weight`), its highest `priority`, and perhaps a quota: how many of its tests
//! may be dispatched and unfinished at once. The dispatcher ([`crate::dispatch`])
//! applies all three; a quota makes a suite wait, never refuses it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use isotest_protocol::api::TokenRecord;
use isotest_protocol::names::Namespace;

use crate::http::AppState;
use crate::store::StoreError;
use isotest_infra::error_chain as chain;

/// What every token starts with, so secret scanners and people recognise one.
pub const TOKEN_PREFIX: &str = "itk_";
/// Random bytes in a token.
const TOKEN_BYTES: usize = 32;
/// The longest token name.
const MAX_NAME_LEN: usize = 64;

/// Failure to make a token or to name one.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token name `{0}` is invalid: use 1 to 64 of A-Z, a-z, 0-9, `.`, `-` and `_`")]
    BadName(String),
    #[error("the operating system gave no random bytes")]
    Random(#[source] getrandom::Error),
}

/// Makes a new token: [`TOKEN_PREFIX`] and 32 random bytes in hex.
///
/// # Errors
///
/// Returns [`TokenError::Random`] when the operating system's random source fails.
pub fn generate() -> Result<String, TokenError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(TokenError::Random)?;
    Ok(format!("{TOKEN_PREFIX}{}", hex::encode(bytes)))
}

/// The sha256 (hex) under which a token is stored.
///
/// A fast hash is right here, unlike for passwords: a token is 32 random bytes, so
/// there is no dictionary to try and 2^256 secrets to search, and a slow hash would
/// only slow every request. A leaked Redis dump therefore gives no usable token.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Checks a token name: it appears in keys, logs and error messages.
///
/// # Errors
///
/// Returns [`TokenError::BadName`] unless the name is 1 to 64 of `A-Z a-z 0-9 . - _`.
pub fn validate_name(name: &str) -> Result<(), TokenError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if valid {
        Ok(())
    } else {
        Err(TokenError::BadName(name.to_owned()))
    }
}

/// Who made a `/v1` request; the auth middleware puts it in the request's extensions.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No token was given, and the producer is open (`--open`).
    Anonymous,
    /// The holder of this token.
    Token(TokenRecord),
}

impl Caller {
    /// The owner recorded for a suite this caller submits: its token's name.
    pub fn owner(&self) -> Option<String> {
        match self {
            Caller::Anonymous => None,
            Caller::Token(token) => Some(token.name.clone()),
        }
    }

    /// The owner this caller's blob uploads are recorded under, and whose blobs it may
    /// use; none for an admin, who may use every blob.
    pub fn blob_owner(&self) -> Option<&str> {
        match self {
            Caller::Anonymous => Some(Namespace::ANONYMOUS_OWNER),
            Caller::Token(token) if token.admin => None,
            Caller::Token(token) => Some(&token.name),
        }
    }

    /// The owner recorded for a blob this caller uploads.
    pub fn uploader(&self) -> &str {
        match self {
            Caller::Anonymous => Namespace::ANONYMOUS_OWNER,
            Caller::Token(token) => &token.name,
        }
    }

    /// Whether this caller may submit a suite with `network = true`: a token the
    /// operator granted it, or anyone on an open (local) producer.
    pub fn may_use_network(&self) -> bool {
        match self {
            Caller::Anonymous => true,
            Caller::Token(token) => token.network,
        }
    }

    /// Whether this caller may read or cancel a suite of this owner: its own, or any
    /// with an admin token. Anonymous callers see only anonymous suites.
    pub fn may_see(&self, owner: Option<&str>) -> bool {
        match self {
            Caller::Anonymous => owner.is_none(),
            Caller::Token(token) => token.admin || owner == Some(token.name.as_str()),
        }
    }
}

/// Why a request is refused before its handler runs.
#[derive(Debug, thiserror::Error)]
pub enum AuthFailure {
    #[error(
        "this isotest server requires an API token: send `Authorization: Bearer <token>` (isotest run --token or ISOTEST_TOKEN); its operator makes one with `isotest token add NAME`"
    )]
    Missing,
    #[error("the Authorization header is not `Bearer <token>`")]
    Malformed,
    #[error("the API token is not valid (unknown or revoked)")]
    Unknown,
    #[error("could not check the API token")]
    Store(#[source] StoreError),
}

impl AuthFailure {
    /// 401 for the client's token, 503 when Redis cannot say.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthFailure::Store(StoreError::Corrupt { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
            AuthFailure::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

impl IntoResponse for AuthFailure {
    fn into_response(self) -> Response {
        let status = self.status();
        if !status.is_server_error() {
            // A refused credential is worth seeing at the default level.
            tracing::info!(%status, error = chain(&self), "Request refused.");
        }
        let mut response = crate::http::error_response(status, &self);
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The token of an `Authorization: Bearer <token>` header, if there is a header.
///
/// # Errors
///
/// Returns [`AuthFailure::Malformed`] for any other Authorization header.
pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, AuthFailure> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| AuthFailure::Malformed)?;
    let (scheme, token) = text.split_once(' ').ok_or(AuthFailure::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthFailure::Malformed);
    }
    Ok(Some(token))
}

/// The middleware of every `/v1` route: finds the [`Caller`] or refuses the request
/// with 401 before its handler runs, so a refused request changes nothing.
///
/// A token that is given must be valid even on an open producer: a CI job that sends
/// a revoked or mistyped token should hear so rather than run unaccounted.
///
/// Without a header, a read (GET, HEAD) may come from the dashboard with its session
/// cookie, which stands for the token it was opened with. Only reads: the cookie is
/// SameSite=Strict, and a read changes nothing, so no other site can act with it.
pub async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Result<Response, AuthFailure> {
    let caller = caller(&state, request.method(), request.headers()).await?;
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

/// Who sent the request, or why it is refused.
pub async fn caller(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Caller, AuthFailure> {
    let is_read = matches!(*method, Method::GET | Method::HEAD);
    if bearer(headers)?.is_none()
        && is_read
        && let Some(session) = crate::ui::session::cookie(headers)
        && let Some(record) = state
            .store
            .session_token(session)
            .await
            .map_err(AuthFailure::Store)?
    {
        return Ok(Caller::Token(record));
    }
    Ok(match bearer(headers)? {
        Some(token) => {
            // Looked up by hash, so no secret is compared here (no timing to leak).
            match state
                .store
                .token(&hash(token))
                .await
                .map_err(AuthFailure::Store)?
            {
                Some(record) => Caller::Token(record),
                None => return Err(AuthFailure::Unknown),
            }
        }
        // Closed unless the operator opened it: whether tokens exist is never asked,
        // so an empty or flushed token table refuses everyone rather than no one.
        None if state.open => Caller::Anonymous,
        None => return Err(AuthFailure::Missing),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_hex() {
        let a = generate().expect("random");
        let b = generate().expect("random");
        assert_ne!(a, b);
        let hex = a.strip_prefix(TOKEN_PREFIX).expect("prefix");
        assert_eq!(hex.len(), 64);
        assert!(hex.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_eq!(hash(&a).len(), 64);
        assert_ne!(hash(&a), hash(&b));
    }

    #[test]
    fn the_hash_is_sha256_hex() {
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn names_are_key_and_log_safe() {
        for ok in [
            "ci-gitlab",
            "GitHub_Actions",
            "jenkins.main",
            &"x".repeat(64),
        ] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a:b", "é", "a/b", &"x".repeat(65)] {
            let err = validate_name(bad).expect_err(bad);
            assert!(err.to_string().starts_with("token name `"), "{err}");
        }
    }

    #[test]
    fn reads_bearer_headers() {
        // (header, the token read, or None for a refusal)
        let cases = [
            (None, Some(None)),
            (Some("Bearer itk_1"), Some(Some("itk_1"))),
            (Some("bearer itk_1"), Some(Some("itk_1"))),
            (Some("Bearer  itk_1 "), Some(Some("itk_1"))),
            (Some("Basic dXNlcjpwYXNz"), None),
            (Some("Bearer "), None),
            (Some("itk_1"), None),
        ];
        for (value, expected) in cases {
            let mut headers = HeaderMap::new();
            if let Some(v) = value {
                headers.insert(header::AUTHORIZATION, HeaderValue::from_static(v));
            }
            assert_eq!(bearer(&headers).ok(), expected, "{value:?}");
        }
    }

    #[test]
    fn a_caller_sees_its_own_suites_and_an_admin_all() {
        let token = |name: &str, admin: bool| {
            Caller::Token(TokenRecord {
                schema_version: 1,
                name: name.to_owned(),
                quota: None,
                admin,
                network: false,
                weight: 1,
                priority: isotest_protocol::schedule::Priority::Normal,
                trusted: false,
                cache: false,
            })
        };
        // (caller, owner of the suite, may see it)
        let cases = [
            (token("a", false), Some("a"), true),
            (token("a", false), Some("b"), false),
            (token("a", false), None, false),
            (token("root", true), Some("b"), true),
            (token("root", true), None, true),
            (Caller::Anonymous, None, true),
            (Caller::Anonymous, Some("a"), false),
        ];
        for (caller, owner, expected) in cases {
            assert_eq!(caller.may_see(owner), expected, "{caller:?} {owner:?}");
        }
    }

    #[test]
    fn refusals_are_401_with_a_challenge() {
        for failure in [
            AuthFailure::Missing,
            AuthFailure::Malformed,
            AuthFailure::Unknown,
        ] {
            let response = failure.into_response();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(
                response.headers().get(header::WWW_AUTHENTICATE),
                Some(&HeaderValue::from_static("Bearer"))
            );
        }
    }
}
