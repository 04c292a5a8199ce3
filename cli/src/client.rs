//! `isotest run --server`: upload the workspace, submit the suite, follow its
//! progress, and fetch the report from the producer's HTTP API.

use std::time::{Duration, Instant};

use reqwest::{Client, Response, StatusCode};
use serde::de::DeserializeOwned;

use isotest_protocol::api::{ApiError, QueueState, Submitted, SuiteStatus};
use isotest_protocol::live::{SuitePage, SuiteRow};
use isotest_protocol::now_ms;
use isotest_protocol::report::{Report, SuiteState};

use crate::args::{ReportArgs, SuiteArgs};
use crate::exit::Failure;
use crate::input::{Bundle, LoadedSuite};
use crate::output::{self, Progress, Where};
use crate::run::Ended;
use crate::user_config::Server;

/// How often the suite's status is asked for.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// How long Ctrl-C waits for the server to confirm the cancellation.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// Submits the suite to `server` (with `token` as `Authorization: Bearer`, when given)
/// and waits for its report.
///
/// On Ctrl-C or SIGTERM the suite is cancelled on the server and the run ends with the
/// server's `cancelled` report ([`Ended::Interrupted`]); interrupted before the server
/// took the suite, or when the server's report cannot be had, with one made here, every
/// test `cancelled`.
///
/// # Errors
///
/// Returns [`Failure::Unreachable`] when the server does not answer, and
/// [`Failure::BadInput`] when it refuses the suite (its one-line reason).
pub async fn run(
    server: &str,
    token: Option<&str>,
    loaded: LoadedSuite,
    quiet: bool,
) -> Result<Ended, Failure> {
    let api = Api::new(server, token)?;
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
        () = &mut interrupted => return Ok(Ended::Interrupted(cancelled_here(&loaded))),
    };
    tracing::info!(suite_id = %submitted.id, tests = submitted.tests, "Suite submitted.");
    output::started(
        &submitted.id,
        submitted.tests,
        Where::Server {
            status_url: &api.url(&submitted.status_url),
        },
        quiet,
    );
    // The suite ends by its deadline at the latest: outages are ridden out until then
    // (and a little after, for the aggregator to close it).
    let deadline = loaded.suite.deadline_ms.map_or(
        isotest_producer::config::DEFAULT_DEADLINE,
        Duration::from_millis,
    );
    let outlast = Instant::now() + deadline + OUTAGE_GRACE;
    let follow = async {
        let mut progress = Progress::new(submitted.tests, quiet);
        let mut watch = QueueWatch::default();
        let mut outage = Outage::new(outlast);
        let status = loop {
            let status: SuiteStatus = api
                .json_through_outages(&api.url(&submitted.status_url), &mut outage, &progress)
                .await?;
            if let Some(line) = status.queue.and_then(|q| watch.line(q, Instant::now())) {
                progress.println(&line);
            }
            progress.set_done(status.done, status.waiting);
            if status.state != SuiteState::Running {
                break status;
            }
            tokio::time::sleep(POLL_EVERY).await;
        };
        progress.finish();
        tracing::info!(suite_id = %status.id, state = ?status.state, "Suite ended.");
        api.json_through_outages::<Report>(&api.url(&submitted.report_url), &mut outage, &progress)
            .await
    };
    tokio::select! {
        report = follow => report.map(Ended::Finished),
        () = &mut interrupted => {
            // The suite would otherwise keep every worker busy until its deadline.
            api.cancel(&submitted).await;
            let stored = api
                .json::<Report>(api.http.get(api.url(&submitted.report_url)).timeout(CANCEL_TIMEOUT))
                .await;
            Ok(Ended::Interrupted(stored.unwrap_or_else(|e| {
                eprintln!("isotest: could not fetch the report of suite {}: {e}; every test is reported cancelled", submitted.id);
                cancelled_here(&loaded)
            })))
        }
    }
}

/// `isotest status ID`: prints the suite's state, and exits as its report would (0 all
/// passed, 1 not, 0 while it runs).
///
/// # Errors
///
/// As [`run`]: an unreachable server, or its refusal (an unknown suite is bad input).
pub async fn status(args: &SuiteArgs) -> Result<u8, Failure> {
    let api = Api::for_suite(args)?;
    let status: SuiteStatus = api
        .json(api.http.get(api.url(&suite_path(&args.id)?)))
        .await?;
    println!("{}", status_line(&status));
    Ok(match &status.summary {
        Some(s) if s.passed + s.skipped < s.total => crate::exit::TESTS_FAILED,
        _ => crate::exit::PASSED,
    })
}

/// The suites the token may see, newest first, up to `last` (paging as needed).
///
/// # Errors
///
/// As [`status`].
pub async fn suites(server: &Server, last: u32) -> Result<Vec<SuiteRow>, Failure> {
    let api = Api::new(&server.url, server.token.as_deref())?;
    let mut rows = Vec::new();
    let mut after: Option<String> = None;
    while rows.len() < last as usize {
        let limit = (last as usize - rows.len()).min(200);
        let mut url = format!("{}?limit={limit}", api.url("/v1/suites"));
        if let Some(after) = &after {
            url.push_str(&format!("&after={after}"));
        }
        let page: SuitePage = api.json(api.http.get(url)).await?;
        rows.extend(page.suites);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    Ok(rows)
}

/// `isotest report ID`: fetches a suite's stored report and writes and prints it as
/// `isotest run` does; exits with the code `run` would have.
///
/// # Errors
///
/// As [`status`]; a suite still running is refused by the server (409), bad input here.
pub async fn report(args: &ReportArgs) -> Result<u8, Failure> {
    let api = Api::for_suite(&args.suite)?;
    let path = format!("{}/report", suite_path(&args.suite.id)?);
    let report: Report = api.json(api.http.get(api.url(&path))).await?;
    output::write_reports(
        &report,
        args.reports.json.as_deref(),
        args.reports.junit.as_deref(),
        args.reports.ctrf.as_deref(),
    )?;
    output::print_summary(&report);
    Ok(if report.passed() {
        crate::exit::PASSED
    } else {
        crate::exit::TESTS_FAILED
    })
}

/// `/v1/suites/{id}`, for an id that is a suite id (a UUID).
fn suite_path(id: &str) -> Result<String, Failure> {
    let id = uuid::Uuid::parse_str(id.trim())
        .map_err(|_| Failure::BadInput(format!("`{id}` is not a suite id (a UUID)")))?;
    Ok(format!("/v1/suites/{id}"))
}

/// One line on a suite: its state and how far it got.
fn status_line(status: &SuiteStatus) -> String {
    let state = match status.state {
        SuiteState::Running => "running",
        SuiteState::Complete => "complete",
        SuiteState::DeadlineExceeded => "deadline exceeded",
        SuiteState::Cancelled => "cancelled",
    };
    let mut line = format!(
        "suite {} ({}): {state}, {} of {} tests done",
        status.id, status.name, status.done, status.total
    );
    if let Some(s) = &status.summary {
        line.push_str(&format!(
            "; {} passed, {} failed, {} error, {} timeout, {} lost, {} cancelled",
            s.passed, s.failed, s.errored, s.timed_out, s.lost, s.cancelled
        ));
    }
    line
}

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

/// The report of a suite interrupted before its results could be had: every test
/// `cancelled`, made by the same assembly as the server's reports.
fn cancelled_here(loaded: &LoadedSuite) -> Report {
    let now = now_ms();
    let id = uuid::Uuid::now_v7().to_string();
    let record = isotest_producer::suite::record(
        &id,
        &loaded.suite,
        now,
        isotest_producer::config::DEFAULT_DEADLINE,
    );
    isotest_report::assemble(&record, Vec::new(), SuiteState::Cancelled)
}

/// How long past the suite's deadline an outage is waited out.
const OUTAGE_GRACE: Duration = Duration::from_secs(60);
/// The longest pause between two tries during an outage.
const OUTAGE_MAX_PAUSE: Duration = Duration::from_secs(5);

/// An outage of the server being ridden out: until when, and how long to pause next.
#[derive(Debug)]
struct Outage {
    until: Instant,
    pause: Duration,
    /// Whether stderr has heard of the current outage.
    told: bool,
}

impl Outage {
    fn new(until: Instant) -> Outage {
        Outage {
            until,
            pause: POLL_EVERY,
            told: false,
        }
    }
}

/// Whether an answer may be different if asked again: the server, or a proxy before it,
/// is restarting.
fn transient_status(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// Whether a request that got no answer may get one if made again: the connection
/// failed, timed out or was cut.
fn transient_transport(e: &reqwest::Error) -> bool {
    e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()
}

/// How long a suite may wait with no worker consuming before the warning comes again.
const NO_WORKER_REPEAT: Duration = Duration::from_secs(30);

/// What the tests queue looked like, so that a CI log hears of it when it matters: once
/// at the start (how many tests wait, how many workers consume), whenever the workers
/// come or all go, and every [`NO_WORKER_REPEAT`] while none consumes.
#[derive(Debug, Default)]
struct QueueWatch {
    last: Option<(QueueState, Instant)>,
}

impl QueueWatch {
    fn line(&mut self, queue: QueueState, now: Instant) -> Option<String> {
        let due = match self.last {
            None => true,
            Some((last, at)) => {
                (last.consumers == 0) != (queue.consumers == 0)
                    || (queue.consumers == 0 && now.duration_since(at) >= NO_WORKER_REPEAT)
            }
        };
        if !due {
            return None;
        }
        self.last = Some((queue, now));
        Some(queue_line(queue))
    }
}

/// One line on the tests queue.
fn queue_line(queue: QueueState) -> String {
    let waiting = match queue.waiting {
        1 => "1 test waits".to_owned(),
        n => format!("{n} tests wait"),
    };
    match queue.consumers {
        0 => format!(
            "isotest: warning: no worker consumes the tests queue ({waiting}); start `isotest worker` with this server's AMQP_URL and ISOTEST_NAMESPACE, or the suite ends at its deadline"
        ),
        1 => format!("isotest: {waiting} in the queue, 1 worker consumes it"),
        n => format!("isotest: {waiting} in the queue, {n} workers consume it"),
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
    /// The server of a command about one suite: `--server` or the config file's.
    fn for_suite(args: &SuiteArgs) -> Result<Api, Failure> {
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

    fn new(server: &str, token: Option<&str>) -> Result<Api, Failure> {
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
    async fn json_through_outages<T: DeserializeOwned>(
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
    use super::{QueueState, QueueWatch, server_url, too_large};
    use std::time::{Duration, Instant};

    /// The queue lines a CI log gets as workers come and go.
    #[test]
    fn the_log_hears_when_no_worker_consumes() {
        let start = Instant::now();
        let q = |waiting, consumers| QueueState { waiting, consumers };
        let mut watch = QueueWatch::default();
        let polls = [
            (0, q(3, 0)),
            (1, q(3, 0)),
            (31, q(3, 0)),
            (32, q(3, 2)),
            (33, q(1, 2)),
            (40, q(0, 0)),
        ];
        let lines: Vec<String> = polls
            .iter()
            .filter_map(|(s, queue)| {
                let line = watch.line(*queue, start + Duration::from_secs(*s))?;
                Some(format!("{s:>3}s {line}"))
            })
            .collect();
        insta::assert_snapshot!(lines.join("\n"));
    }

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
