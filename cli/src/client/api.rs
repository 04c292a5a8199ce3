//! The HTTP client of the producer's API: the server's URL checked, the token sent as a
//! sensitive header, blobs uploaded, answers read as JSON (riding out outages where asked),
//! and error answers turned into one-line reasons.

use std::time::{Duration, Instant};

use reqwest::{Client, Response, StatusCode};
use serde::de::DeserializeOwned;

use isotest_protocol::api::{ApiError, Submitted};

use super::CANCEL_TIMEOUT;
use super::follow::{OUTAGE_MAX_PAUSE, Outage, transient_status, transient_transport};
use crate::args::SuiteArgs;
use crate::exit::Failure;
use crate::input::Bundle;
use crate::output::Progress;

/// Checks a server URL as given (`--server`, `ISOTEST_SERVER`): an `http` or `https` URL
/// with a host, such as `http://127.0.0.1:8080`.
///
/// # Errors
///
/// Returns [`Failure::BadInput`] with what a URL looks like.
pub fn server_url(text: &str) -> Result<reqwest::Url, Failure> {
    let bad = |why: &str| {
        let hint = if text.contains("://") {
            "http://HOST:PORT".to_owned()
        } else {
            format!("http://{}", text.trim_start_matches('/'))
        };
        Failure::BadInput(format!(
            "the server URL `{text}` {why}; give one like {hint}"
        ))
    };
    if !text.contains("://") {
        return Err(bad("has no http:// or https:// scheme"));
    }
    let url = reqwest::Url::parse(text).map_err(|_| bad("is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("has no http:// or https:// scheme"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("names no host"));
    }
    Ok(url)
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

/// The producer's API at one server, with the token every request carries.
pub(super) struct Api {
    base: String,
    pub(super) http: Client,
}

impl Api {
    /// The server of a command about one suite: `--server` or the config file's.
    pub(super) fn for_suite(args: &SuiteArgs) -> Result<Api, Failure> {
        let server = crate::user_config::load()?
            .resolve(args.server.as_deref(), args.token.as_deref())
            .ok_or_else(|| {
                Failure::BadInput(
                    "no server: give --server (ISOTEST_SERVER), or `server` in the config file"
                        .into(),
                )
            })?;
        Api::new(&server.url, server.token.as_deref())
    }

    pub(super) fn new(server: &str, token: Option<&str>) -> Result<Api, Failure> {
        server_url(server)?;
        Ok(Api {
            base: server.trim_end_matches('/').to_owned(),
            http: Client::builder()
                .default_headers(authorization(token)?)
                .connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(300))
                .build()
                .map_err(|e| Failure::Service(e.into()))?,
        })
    }

    pub(super) fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    /// Cancels a submitted suite, within a few seconds or not at all (logged): the
    /// user asked to stop, and waiting long on a dead server would not be stopping.
    pub(super) async fn cancel(&self, submitted: &Submitted) {
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

    pub(super) async fn upload(&self, bundle: &Bundle) -> Result<(), Failure> {
        let url = self.url(&format!("/v1/blobs/{}", bundle.reference));
        let head = self.send(self.http.head(&url)).await?;
        if head.status() == StatusCode::OK {
            return Ok(());
        }
        let put = self
            .send(self.http.put(&url).body(bundle.bytes.to_vec()))
            .await?;
        if put.status() == StatusCode::PAYLOAD_TOO_LARGE {
            let reason = check(put)
                .await
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            return Err(Failure::BadInput(too_large(bundle.bytes.len(), &reason)));
        }
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

    /// GETs `url` as JSON, riding out a restarting server or a cut connection (saying so
    /// once on stderr, then pausing longer each try, up to [`OUTAGE_MAX_PAUSE`]) until
    /// `outage.until`; any other failure ends it at once.
    pub(super) async fn json_through_outages<T: DeserializeOwned>(
        &self,
        url: &str,
        outage: &mut Outage,
        progress: &Progress,
    ) -> Result<T, Failure> {
        loop {
            let why = match self.http.get(url).send().await {
                Ok(response) if transient_status(response.status()) => {
                    response.status().to_string()
                }
                Err(e) if transient_transport(&e) => root_cause(&e),
                Ok(response) => {
                    if outage.told {
                        progress.println("isotest: the server answers again");
                    }
                    *outage = Outage::new(outage.until);
                    let response = check(response).await?;
                    return response.json().await.map_err(|e| {
                        Failure::Service(
                            anyhow::Error::new(e).context(format!("read the answer of {url}")),
                        )
                    });
                }
                Err(e) => {
                    return Err(Failure::Service(
                        anyhow::Error::new(e)
                            .context(format!("talk to the isotest server at {}", self.base)),
                    ));
                }
            };
            if Instant::now() + outage.pause > outage.until {
                return Err(Failure::Unreachable(format!(
                    "the isotest server at {} did not answer until the suite's deadline: {why}",
                    self.base
                )));
            }
            if !outage.told {
                progress.println(&format!(
                    "isotest: the server did not answer ({why}); trying again until the suite's deadline"
                ));
                outage.told = true;
            }
            tokio::time::sleep(outage.pause).await;
            outage.pause = (outage.pause * 2).min(OUTAGE_MAX_PAUSE);
        }
    }

    pub(super) async fn json<T: DeserializeOwned>(
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

/// The line for a workspace the server will not take: its size, the server's reason, and
/// how to make it smaller.
fn too_large(bytes: usize, reason: &str) -> String {
    #[expect(clippy::cast_precision_loss, reason = "a size shown in MiB")]
    let mib = bytes as f64 / (1024.0 * 1024.0);
    format!(
        "the packed workspace ({mib:.1} MiB) is larger than the server takes: {reason}; leave build \
         output and dependencies out with .gitignore or `workspace_exclude = [\"target/\", \"node_modules/\"]` \
         in the manifest, or point `workspace` at a smaller directory"
    )
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

#[cfg(test)]
mod tests {
    use super::{server_url, too_large};

    #[test]
    fn a_workspace_too_large_says_what_to_do() {
        insta::assert_snapshot!(too_large(
            280 * 1024 * 1024,
            "the server refused http://h/v1/blobs/sha256:ab (413 Payload Too Large): blob is 293601280 bytes, more than the limit of 268435456"
        ));
    }

    #[test]
    fn a_server_url_needs_a_scheme_and_a_host() {
        let lines: Vec<String> = [
            "127.0.0.1:18580",
            "localhost:8080",
            "ftp://example.com",
            "http://",
            "isotest.example.com/",
        ]
        .iter()
        .map(|text| match server_url(text) {
            Ok(url) => format!("{text} => ok {url}"),
            Err(e) => format!("{text} => {e}"),
        })
        .collect();
        insta::assert_snapshot!(lines.join("\n"));
        for good in ["http://127.0.0.1:18580", "https://isotest.example.com/"] {
            assert!(server_url(good).is_ok(), "{good}");
        }
    }
}
