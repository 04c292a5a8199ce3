//! The dashboard at `/ui`: plain HTML, JavaScript and CSS embedded in the binary (no
//! front-end build), a login that turns an API token into a session cookie
//! ([`session`]), the JSON it reads ([`views`]) and each suite's live view as
//! server-sent events ([`live`]). A token sees only its own suites.
//!
//! The page also asks for the history store's views (`GET /v1/tests/{id}/history`,
//! `GET /v1/flaky`) and shows them when the server answers them; the session cookie
//! reads `/v1` routes for that.

pub mod live;
pub mod session;
pub mod views;

use std::sync::Arc;

use axum::Form;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::auth;
use crate::http::AppState;
use isotest_infra::error_chain as chain;

const INDEX_HTML: &str = include_str!("assets/index.html");
const LOGIN_HTML: &str = include_str!("assets/login.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The page's own files only: no inline script or style, nothing from elsewhere, no
/// framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's routes: pages and assets are open (they hold no data), the JSON
/// and the live views pass [`auth::authenticate`] (a session cookie, a Bearer token,
/// or none on an open producer).
pub fn routes(state: Arc<AppState>) -> axum::Router<Arc<AppState>> {
    let api = Router::new()
        .route("/ui/api/me", get(views::me))
        .route("/ui/api/suites", get(views::suites))
        .route("/ui/api/suites/{id}", get(views::suite))
        .route("/ui/api/suites/{id}/attempts", get(views::attempts))
        .route("/ui/api/suites/{id}/events", get(live::events))
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            auth::authenticate,
        ));
    Router::new()
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/app.js", get(app_js))
        .route("/ui/app.css", get(app_css))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .merge(api)
        .route_layer(axum::middleware::from_fn(security_headers))
}

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        // Not `no-referrer`: under it a browser sends `Origin: null` with the login
        // form, and the origin check below could not tell it from another site's.
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
        .into_response()
}

async fn app_css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS).into_response()
}

/// The login page, with a fixed message (never text from the request).
fn login_html(status: StatusCode, message: &str) -> Response {
    let body = LOGIN_HTML.replace("<!--message-->", message);
    (status, Html(body)).into_response()
}

async fn login_page(State(state): State<Arc<AppState>>) -> Response {
    let message = if state.open {
        r#"<p class="note">This server is open (no token needed): <a href="/ui">go to the dashboard</a>, or sign in to see a token's suites.</p>"#
    } else {
        ""
    };
    login_html(StatusCode::OK, message)
}

/// A form posted from another site is refused, so no other site can log a browser in
/// under its own token: the browser's `Sec-Fetch-Site` says so where it is sent, else
/// an `Origin` that is not this host.
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        // Browsers send Origin with every POST; a client that does not is no browser
        // another site controls.
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    origin_host.is_some_and(|h| !host.is_empty() && h == host)
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

/// `POST /ui/login`: a valid token gets a session cookie and goes to the dashboard.
async fn login(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !same_origin(&headers) {
        return login_html(
            StatusCode::FORBIDDEN,
            r#"<p class="error">This form was sent from another site.</p>"#,
        );
    }
    let token = form.token.trim();
    let record = match state.store.token(&auth::hash(token)).await {
        Ok(record) => record,
        Err(e) => {
            tracing::error!(error = chain(&e), "Could not check a dashboard login.");
            return login_html(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"<p class="error">The server could not check the token; try again.</p>"#,
            );
        }
    };
    let Some(record) = record.filter(|_| !token.is_empty()) else {
        tracing::info!("Dashboard login refused: unknown or revoked token.");
        return login_html(
            StatusCode::UNAUTHORIZED,
            r#"<p class="error">That token is not valid (unknown or revoked).</p>"#,
        );
    };
    match state.store.open_session(&auth::hash(token)).await {
        Ok(session) => {
            tracing::info!(token = %record.name, "Dashboard login.");
            let mut response = Redirect::to("/ui").into_response();
            response.headers_mut().insert(
                header::SET_COOKIE,
                session::set_cookie(&session, session::over_https(&headers)),
            );
            response
        }
        Err(e) => {
            tracing::error!(error = chain(&e), "Could not open a dashboard session.");
            login_html(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"<p class="error">The server could not open a session; try again.</p>"#,
            )
        }
    }
}

/// `POST /ui/logout`: ends the session and clears the cookie.
async fn logout(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if !same_origin(&headers) {
        return StatusCode::FORBIDDEN.into_response();
    }
    if let Some(session) = session::cookie(&headers)
        && let Err(e) = state.store.close_session(session).await
    {
        tracing::warn!(error = chain(&e), "Could not end a dashboard session.");
    }
    let mut response = Redirect::to("/ui/login").into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_forms_from_this_host_log_in() {
        // (Origin, Host, accepted)
        let cases = [
            (None, "h:8080", true),
            (Some("http://h:8080"), "h:8080", true),
            (Some("https://h:8080"), "h:8080", true),
            (Some("http://evil.example"), "h:8080", false),
            (Some("null"), "h:8080", false),
            (Some("http://h:8080"), "", false),
        ];
        for (origin, host, accepted) in cases {
            let mut headers = HeaderMap::new();
            if let Some(origin) = origin {
                headers.insert(header::ORIGIN, HeaderValue::from_static(origin));
            }
            if !host.is_empty() {
                headers.insert(header::HOST, HeaderValue::from_static(host));
            }
            assert_eq!(same_origin(&headers), accepted, "{origin:?} {host}");
        }
        // Sec-Fetch-Site, where a browser sends it, decides.
        for (site, accepted) in [
            ("same-origin", true),
            ("none", true),
            ("same-site", false),
            ("cross-site", false),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert("sec-fetch-site", HeaderValue::from_static(site));
            headers.insert(header::ORIGIN, HeaderValue::from_static("http://h"));
            headers.insert(header::HOST, HeaderValue::from_static("h"));
            assert_eq!(same_origin(&headers), accepted, "{site}");
        }
    }
}
