//! Recording a finished suite: its row and one row per test run, in one transaction,
//! exactly once. The suite's id is the key: a second offer of the same suite (a
//! re-delivered completion, two aggregator replicas) writes nothing.

use std::collections::BTreeMap;

use isotest_protocol::api::{SuiteRecord, meta};
use isotest_protocol::report::{Report, TestReport};
use isotest_protocol::result::Status;

use crate::{History, HistoryError, ms};

/// What a suite is recorded from: its report, and what its record adds (the token that
/// submitted it, its metadata, each test's input digest).
#[derive(Debug, Clone, Copy)]
pub struct SuiteEntry<'a> {
    pub report: &'a Report,
    pub token: Option<&'a str>,
    pub meta: &'a BTreeMap<String, String>,
    /// Each test's input digest by name; a test without one is recorded without.
    pub digests: &'a BTreeMap<String, String>,
}

/// Each test's digest by name, from a record whose `digests` follow its `tests`.
pub fn digests_of(record: &SuiteRecord) -> BTreeMap<String, String> {
    record
        .tests
        .iter()
        .cloned()
        .zip(record.digests.iter().cloned())
        .collect()
}

/// What [`History::record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Recorded {
    /// This call wrote the suite and its test runs.
    Now,
    /// The suite was already in the store; nothing was written.
    Already,
}

/// Whether a suite's results say more about the infrastructure than about its tests:
/// at least three tests, and more than half of them neither passed nor were skipped.
/// The flaky-test detector ignores the runs of such a suite. (Migration 0002 applies the
/// same rule to suites recorded before it.)
pub fn is_outage(total: u64, succeeded: u64) -> bool {
    total >= 3 && 2 * total.saturating_sub(succeeded) > total
}

/// Where a test run's output is kept: in its suite's stored report, at `tests[INDEX]`.
pub fn output_location(index: usize) -> String {
    format!("report:tests[{index}]")
}

/// Test runs inserted per statement: 13 parameters each stays far below both
/// databases' limits on parameters.
const ROWS_PER_INSERT: usize = 500;
const TEST_RUN_COLUMNS: &str = "suite_id, test, suite_name, status, flaky, duration_ms, attempts, worker, digest, exit_code, output, finished_at_ms, infrastructure";
const TEST_RUN_PARAMS: usize = 13;

impl History {
    /// Records a finished suite and its test runs, unless the store has it already.
    ///
    /// # Errors
    ///
    /// Returns [`HistoryError::Query`] when the database fails; nothing is then written.
    pub async fn record(&self, entry: &SuiteEntry<'_>) -> Result<Recorded, HistoryError> {
        let report = entry.report;
        let summary = &report.summary;
        let succeeded = u64::from(summary.passed) + u64::from(summary.skipped);
        let total = u64::from(summary.total);
        let failed = total.saturating_sub(succeeded);
        // A report of strings and numbers always serializes.
        let report_json = serde_json::to_string(report).unwrap_or_default();
        let summary_json = serde_json::to_string(summary).unwrap_or_default();
        let meta_json = serde_json::to_string(entry.meta).unwrap_or_default();
        let ci = |key: &str| entry.meta.get(key).cloned();

        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO suites (id, name, token, state, created_at_ms, finished_at_ms, \
             total, passed, failed, skipped, flaky, summary, ci_system, ci_repository, \
             ci_branch, ci_commit, ci_job_url, meta, report, outage) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
             $17, $18, $19, $20) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&report.suite_id)
        .bind(&report.suite)
        .bind(entry.token.map(str::to_owned))
        .bind(state_name(report))
        .bind(ms(report.created_at_ms))
        .bind(ms(report.finished_at_ms))
        .bind(ms(total))
        .bind(i64::from(summary.passed))
        .bind(ms(failed))
        .bind(i64::from(summary.skipped))
        .bind(i64::from(summary.flaky))
        .bind(summary_json)
        .bind(ci(meta::SYSTEM))
        .bind(ci(meta::REPOSITORY))
        .bind(ci(meta::BRANCH))
        .bind(ci(meta::COMMIT))
        .bind(ci(meta::JOB_URL))
        .bind(meta_json)
        .bind(report_json)
        .bind(i64::from(is_outage(total, succeeded)))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(Recorded::Already);
        }

        let runs: Vec<(usize, &TestReport)> = report.tests.iter().enumerate().collect();
        for chunk in runs.chunks(ROWS_PER_INSERT) {
            let sql = insert_runs_sql(chunk.len());
            let mut query = sqlx::query(&sql);
            for (index, test) in chunk {
                let infrastructure = test
                    .attempt_history
                    .last()
                    .is_some_and(|a| a.infrastructure);
                query = query
                    .bind(&report.suite_id)
                    .bind(&test.name)
                    .bind(&report.suite)
                    .bind(test.status.as_str())
                    .bind(i64::from(test.flaky))
                    .bind(ms(test.duration_ms))
                    .bind(i64::from(test.attempts))
                    .bind(&test.worker)
                    .bind(entry.digests.get(&test.name).cloned())
                    .bind(test.exit_code.map(i64::from))
                    .bind(output_location(*index))
                    .bind(ms(report.finished_at_ms))
                    .bind(i64::from(infrastructure));
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        tracing::debug!(
            suite_id = %report.suite_id,
            tests = report.tests.len(),
            backend = ?self.backend,
            "Recorded the suite in the history store."
        );
        Ok(Recorded::Now)
    }
}

/// `INSERT INTO test_runs` of `rows` rows, numbered `$1…` (SQLite reads `$N` as the
/// N-th parameter too).
fn insert_runs_sql(rows: usize) -> String {
    let mut sql = format!("INSERT INTO test_runs ({TEST_RUN_COLUMNS}) VALUES ");
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..TEST_RUN_PARAMS {
            if column > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("${}", row * TEST_RUN_PARAMS + column + 1));
        }
        sql.push(')');
    }
    sql
}

/// The suite state's wire name.
fn state_name(report: &Report) -> String {
    serde_json::to_value(report.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Whether a verdict counts for flakiness: it passed or failed by the test's own doing
/// (not skipped, lost or cancelled).
pub(crate) fn is_verdict(status: &str) -> bool {
    [
        Status::Passed,
        Status::Failed,
        Status::Error,
        Status::Timeout,
        Status::Oom,
    ]
    .iter()
    .any(|s| s.as_str() == status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_are_most_tests_failing_in_suites_of_three_or_more() {
        let cases = [
            (1, 0, false),
            (2, 0, false),
            (3, 1, true),
            (3, 2, false),
            (4, 2, false),
            (10, 4, true),
            (10, 5, false),
        ];
        for (total, succeeded, outage) in cases {
            assert_eq!(is_outage(total, succeeded), outage, "{total} {succeeded}");
        }
    }

    #[test]
    fn inserts_number_every_parameter_once() {
        let sql = insert_runs_sql(2);
        assert!(
            sql.ends_with(
                "$13), ($14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26)"
            ),
            "{sql}"
        );
    }
}
