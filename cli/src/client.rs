//! `isotest run --server`: upload the workspace, submit the suite, follow its
//! progress, and fetch the report from the producer's HTTP API.

use std::time::Duration;

use reqwest::{Client, Response, StatusCode};
use serde::de::DeserializeOwned;

use isotest_protocol::api::{ApiError, Submitted, SuiteStatus};
use isotest_protocol::report::{Report, SuiteState};

use crate::exit::Failure;
use crate::input::{Bundle, LoadedSuite};
use crate::output::Progress;

/// How often the suite's status is asked for.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// How long Ctrl-C waits for the server to confirm the cancellation.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Submits the suite to `server` (with `token` as `Authorization: Bearer`, when given)
/// and waits for its report.
///
/// # Errors
///
/// Returns [`Failure::Unreachable`] when the server does not answer, [`Failure::BadInput`]
/// when it refuses the suite (its one-line reason), and [`Failure::Interrupted`] on Ctrl-C
/// (after cancelling the suite on the server, if it was submitted).
pub async fn run(
    server: &str,
    token: Option<&str>,
    loaded: LoadedSuite,
    quiet: bool,
) -> Result<Report, Failure> {
    let api = Api {
        base: server.trim_end_matches('/').to_owned(),
        http: Client::builder()
            .default_headers(authorization(token)?)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| Failure::Service(e.into()))?,
    };
    let submit = async {
        for bundle in loaded.workspace.iter().chain(&loaded.artifacts) {
            api.upload(bundle).await?;
        }
        let body = serde_json::to_vec(&loaded.manifest).map_err(|e| Failure::Service(e.into()))?;
        api.json::<Submitted>(
            api.http
                .post(api.url("/v1/suites"))
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    };
    let interrupted = isotest_infra::shutdown::signal();
    tokio::pin!(interrupted);
    let submitted = tokio::select! {
        submitted = submit => submitted?,
        () = &mut interrupted => return Err(Failure::Interrupted),
    };
    tracing::info!(suite_id = %submitted.id, tests = submitted.tests, "Suite submitted.");
    let follow = async {
        let mut progress = Progress::new(submitted.tests, quiet);
        let status = loop {
            let status: SuiteStatus = api
                .json(api.http.get(api.url(&submitted.status_url)))
                .await?;
            progress.set_done(status.done, status.waiting);
            if status.state != SuiteState::Running {
                break status;
            }
            tokio::time::sleep(POLL_EVERY).await;
        };
        progress.finish();
        tracing::info!(suite_id = %status.id, state = ?status.state, "Suite ended.");
        api.json::<Report>(api.http.get(api.url(&submitted.report_url)))
            .await
    };
    tokio::select! {
        report = follow => report,
        () = &mut interrupted => {
            // The suite would otherwise keep every worker busy until its deadline.
            api.cancel(&submitted).await;
            Err(Failure::Interrupted)
        }
    }
}

/// The `Authorization` header every request carries (none without a token), marked
/// sensitive so that it never appears in debug output.
fn authorization(token: Option<&str>) -> Result<reqwest::header::HeaderMap, Failure> {
    let mut headers = reqwest::header::HeaderMap::new();
    // An empty value is a CI secret that is not set: send none, and let the server say
    // that it wants one.
    if let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| {
                Failure::BadInput(
                    "the API token (--token or ISOTEST_TOKEN) has characters a header cannot carry"
                        .to_owned(),
                )
            })?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    Ok(headers)
}

struct Api {
    base: String,
    http: Client,
}

impl Api {
    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    /// Cancels a submitted suite, within a few seconds or not at all (logged): the
    /// user asked to stop, and waiting long on a dead server would not be stopping.
    async fn cancel(&self, submitted: &Submitted) {
        let request = self
            .http
            .delete(self.url(&submitted.status_url))
            .timeout(CANCEL_TIMEOUT)
            .send();
        match request.await {
            Ok(response) if response.status().is_success() => {
                eprintln!("isotest: cancelled suite {}", submitted.id);
            }
            // 409: it ended on its own meanwhile, which is as good.
            Ok(response) if response.status() == StatusCode::CONFLICT => {}
            Ok(response) => {
                eprintln!(
                    "isotest: could not cancel suite {} ({}); it runs on until its deadline",
                    submitted.id,
                    response.status()
                );
            }
            Err(e) => {
                eprintln!(
                    "isotest: could not cancel suite {}: {}; it runs on until its deadline",
                    submitted.id,
                    root_cause(&e)
                );
            }
        }
    }

    async fn upload(&self, bundle: &Bundle) -> Result<(), Failure> {
        let url = self.url(&format!("/v1/blobs/{}", bundle.reference));
        let head = self.send(self.http.head(&url)).await?;
        if head.status() == StatusCode::OK {
            return Ok(());
        }
        let put = self
            .send(self.http.put(&url).body(bundle.bytes.to_vec()))
            .await?;
        check(put).await.map(drop)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Response, Failure> {
        request.send().await.map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                Failure::Unreachable(format!(
                    "cannot reach the isotest server at {}: {}",
                    self.base,
                    root_cause(&e)
                ))
            } else {
                Failure::Service(
                    anyhow::Error::new(e)
                        .context(format!("talk to the isotest server at {}", self.base)),
                )
            }
        })
    }

    async fn json<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, Failure> {
        let response = check(self.send(request).await?).await?;
        let url = response.url().to_string();
        response.json().await.map_err(|e| {
            Failure::Service(anyhow::Error::new(e).context(format!("read the answer of {url}")))
        })
    }
}

/// Turns an error answer into its one-line reason: 4xx is the user's to fix, 5xx the server's.
async fn check(response: Response) -> Result<Response, Failure> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let url = response.url().to_string();
    let text = response.text().await.unwrap_or_default();
    let reason = serde_json::from_str::<ApiError>(&text).map_or(text, |e| e.error);
    let line = format!("the server refused {url} ({status}): {reason}");
    Err(if status.is_client_error() {
        Failure::BadInput(line)
    } else {
        Failure::Service(anyhow::anyhow!(line))
    })
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
