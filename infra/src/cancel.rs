//! Cancelling a suite (the producer's `DELETE /v1/suites/{id}`): its report is stored
//! as cancelled through [`reports::store`], the same `SET NX` that completion and the
//! deadline sweep use, so exactly one of them ends the suite.

use redis::aio::ConnectionManager;

use isotest_protocol::names::Namespace;
use isotest_protocol::report::{Report, SuiteState};

use crate::reports::{self, Stored};
use crate::suites::{load_record, load_results};

/// What [`cancel`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancelled {
    /// This call stored the cancelled report.
    Now(Box<Report>),
    /// The suite had already ended; its report says how.
    AlreadyEnded(SuiteState),
    /// No such suite.
    UnknownSuite,
}

/// Cancels a suite: stores its report as [`SuiteState::Cancelled`] (tests without a
/// final result become `cancelled`) unless it already has one. Workers then drop its
/// queued messages and kill its running tests, as for any closed suite.
///
/// # Errors
///
/// Returns the [`redis::RedisError`] when Redis fails.
pub async fn cancel(
    conn: &mut ConnectionManager,
    ns: &Namespace,
    suite_id: &str,
) -> redis::RedisResult<Cancelled> {
    if let Some(state) = reports::stored_state(conn, ns, suite_id).await? {
        return Ok(Cancelled::AlreadyEnded(state));
    }
    let Some(record) = load_record(conn, ns, suite_id).await? else {
        return Ok(Cancelled::UnknownSuite);
    };
    let results = load_results(conn, ns, suite_id).await?;
    let report = isotest_report::assemble(&record, results, SuiteState::Cancelled);
    // The producer cancels, and it sends no webhooks: queue it due now, for the next
    // aggregator sweep.
    let due = record
        .callback_url
        .as_ref()
        .map(|_| isotest_protocol::now_ms());
    match reports::store(conn, ns, &report, due).await? {
        Stored::Now => Ok(Cancelled::Now(Box::new(report))),
        // Completed (or swept) between the check and the write: that report stands.
        Stored::AlreadyReported => Ok(Cancelled::AlreadyEnded(
            reports::stored_state(conn, ns, suite_id)
                .await?
                .unwrap_or(SuiteState::Complete),
        )),
    }
}
