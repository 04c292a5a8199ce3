//! Dashboard sessions: a browser logs in once with an API token and then carries an
//! HttpOnly, SameSite=Strict cookie, since `EventSource` cannot send an
//! `Authorization` header.
//!
//! The cookie is 32 random bytes; Redis keeps, under its sha256, the hash of the token
//! it was opened with (never the token), for [`SESSION_TTL`]. Each request looks the
//! token up again, so revoking a token ends its sessions at once.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, header};
use redis::AsyncTypedCommands;

use isotest_protocol::api::TokenRecord;

use crate::auth;
use crate::store::{Store, StoreError};

/// The cookie's name.
pub const COOKIE: &str = "isotest_session";

/// How long a session lasts after login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// The session id of the request's cookie, if it has one.
pub fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|value| !value.is_empty())
}

/// The `Set-Cookie` value that gives the browser a session. `Path=/`: the session also
/// reads (GET only) the `/v1` API, such as a test's history. `Secure` when the browser
/// came over HTTPS (to a proxy in front of the producer, which says so).
pub fn set_cookie(session: &str, secure: bool) -> HeaderValue {
    let value = format!(
        "{COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if secure { "; Secure" } else { "" }
    );
    // Hex digits and ASCII only.
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Whether the browser came over HTTPS, as the proxy in front of the producer says
/// (`X-Forwarded-Proto`); the producer itself serves plain HTTP.
pub fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` value that ends the browser's session.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("isotest_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

impl Store {
    /// Opens a session for a token: returns the cookie's value.
    ///
    /// # Errors
    ///
    /// Returns [`SessionError`] when Redis fails or no random bytes are to be had.
    pub async fn open_session(&self, token_hash: &str) -> Result<String, SessionError> {
        // The same shape as a token (32 random bytes in hex), without its prefix.
        let session = auth::generate().map_err(SessionError::Random)?;
        let session = session
            .strip_prefix(auth::TOKEN_PREFIX)
            .unwrap_or(&session)
            .to_owned();
        let mut conn = self.conn.clone();
        conn.set_ex(
            self.ns.ui_session_key(&auth::hash(&session)),
            token_hash,
            SESSION_TTL.as_secs(),
        )
        .await
        .map_err(|e| SessionError::Store(e.into()))?;
        Ok(session)
    }

    /// The token of a session, if the session exists and its token is not revoked.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError`] when Redis fails or the token's record is corrupt.
    pub async fn session_token(&self, session: &str) -> Result<Option<TokenRecord>, StoreError> {
        let mut conn = self.conn.clone();
        let Some(token_hash) = conn
            .get(self.ns.ui_session_key(&auth::hash(session)))
            .await?
        else {
            return Ok(None);
        };
        self.token(&token_hash).await
    }

    /// Ends a session.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError`] when Redis fails.
    pub async fn close_session(&self, session: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        conn.del(self.ns.ui_session_key(&auth::hash(session)))
            .await?;
        Ok(())
    }
}

/// Failure to open a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("could not store the session")]
    Store(#[source] StoreError),
    #[error("could not make a session id")]
    Random(#[source] auth::TokenError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_session_cookie_among_others() {
        // (Cookie headers, the session read)
        let cases: [(&[&str], Option<&str>); 6] = [
            (&[], None),
            (&["isotest_session=abc"], Some("abc")),
            (&["a=1; isotest_session=abc; b=2"], Some("abc")),
            (&["a=1", "isotest_session=abc"], Some("abc")),
            (&["isotest_session="], None),
            (&["isotest_sessionx=abc; other=isotest_session"], None),
        ];
        for (values, expected) in cases {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(header::COOKIE, HeaderValue::from_static(v));
            }
            assert_eq!(cookie(&headers), expected, "{values:?}");
        }
    }

    #[test]
    fn the_cookie_is_http_only_and_strict() {
        let value = set_cookie("abc", false);
        let text = value.to_str().expect("ascii");
        assert!(text.starts_with("isotest_session=abc; Path=/;"), "{text}");
        assert!(text.contains("HttpOnly") && text.contains("SameSite=Strict"));
        assert!(!text.contains("Secure"), "{text}");
        let secure = set_cookie("abc", true);
        assert!(secure.to_str().expect("ascii").ends_with("; Secure"));
        let mut headers = HeaderMap::new();
        assert!(!over_https(&headers));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("HTTPS"));
        assert!(over_https(&headers));
        assert!(
            clear_cookie()
                .to_str()
                .expect("ascii")
                .contains("Max-Age=0")
        );
    }
}
