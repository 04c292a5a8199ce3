//! `isotest run --server`: upload the workspace, submit the suite, follow its
//! progress, and fetch the report from the producer's HTTP API.
//!
//! This module holds the commands that talk to a server (`run`, `status`, `report`, the
//! suites of `history`); `api.rs` is the HTTP client they share, `follow.rs` what following a
//! running suite rides out (a restarting server) and tells the log (the tests queue).

mod api;
mod follow;

use std::time::{Duration, Instant};

use isotest_protocol::api::{Submitted, SuiteStatus};
use isotest_protocol::live::{SuitePage, SuiteRow};
use isotest_protocol::now_ms;
use isotest_protocol::report::{Report, SuiteState};

use crate::args::{ReportArgs, SuiteArgs};
use crate::exit::Failure;
use crate::input::LoadedSuite;
use crate::output::{self, Progress, Where};
use crate::run::Ended;
use crate::user_config::Server;
use api::Api;
pub use api::server_url;
use follow::{OUTAGE_GRACE, Outage, QueueWatch};

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
