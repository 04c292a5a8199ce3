//! Assembling a [`Report`] from a suite's record and whatever results it has: one entry
//! per test, deterministic, so that two replicas given the same data store the same
//! report.

use std::collections::{BTreeMap, HashMap};

use isotest_protocol::SCHEMA_VERSION;
use isotest_protocol::api::SuiteRecord;
use isotest_protocol::manifest::FlakyResult;
use isotest_protocol::report::{AttemptReport, Report, SuiteState, Summary, TestReport, excerpt};
use isotest_protocol::result::{CaseStatus, Status, TestResult, Usage};

/// The reason given to a test that had no final result when the deadline passed.
pub const LOST_REASON: &str = "no result before the suite's deadline";
/// The reason given to a test that had no final result when the suite was cancelled.
pub const CANCELLED_REASON: &str = "suite was cancelled before the test finished";

/// Builds the report of `record` from its results, as the suite ended in `state`.
///
/// Each name in `record.tests` gets one entry, in that order (a name listed twice gets
/// one entry, at its first place). An entry takes its highest final attempt's verdict
/// and output and lists every attempt seen in `attempt_history`. A final pass after an
/// earlier failure the test itself caused (not the infrastructure) is flaky, and fails
/// when the record's `flaky_result` says so. A test without a final
/// result is `cancelled` when `state` is [`SuiteState::Cancelled`], and `lost` otherwise.
///
/// Results of another suite, of names the record does not list, and a second result for
/// the same attempt (the first one wins, as with the worker's HSETNX) are ignored.
pub fn assemble(
    record: &SuiteRecord,
    results: impl IntoIterator<Item = TestResult>,
    state: SuiteState,
) -> Report {
    // BTreeMap by attempt number: the history comes out ordered whatever order Redis
    // returned the hash in.
    let mut by_name: HashMap<&str, BTreeMap<u32, TestResult>> = record
        .tests
        .iter()
        .map(|name| (name.as_str(), BTreeMap::new()))
        .collect();
    for result in results {
        if result.suite_id != record.id {
            continue;
        }
        if let Some(attempts) = by_name.get_mut(result.name.as_str()) {
            attempts.entry(result.attempt).or_insert(result);
        }
    }

    let last_finished = by_name
        .values()
        .flat_map(|attempts| attempts.values())
        .map(|r| r.finished_at_ms)
        .max();
    // Only data decides the end instant (never the clock of whoever assembles), so
    // replicas agree.
    let finished_at_ms = match state {
        SuiteState::DeadlineExceeded => last_finished.map_or(record.deadline_at_ms, |last| {
            last.max(record.deadline_at_ms)
        }),
        _ => last_finished.unwrap_or(record.created_at_ms),
    };

    let mut seen = std::collections::HashSet::new();
    let tests: Vec<TestReport> = record
        .tests
        .iter()
        .filter(|name| seen.insert(name.as_str()))
        .map(|name| {
            let attempts = by_name.remove(name.as_str()).unwrap_or_default();
            let mut test = test_report(name, attempts, state, record.flaky_result);
            test.quarantined = record.quarantined.iter().any(|q| q == name);
            test
        })
        .collect();

    let summary = summarize(&tests, finished_at_ms.saturating_sub(record.created_at_ms));
    Report {
        schema_version: SCHEMA_VERSION,
        suite_id: record.id.clone(),
        suite: record.name.clone(),
        state,
        created_at_ms: record.created_at_ms,
        finished_at_ms,
        summary,
        tests,
        builds: Vec::new(),
    }
}

/// One test's entry from its attempts, ordered by attempt number.
fn test_report(
    name: &str,
    attempts: BTreeMap<u32, TestResult>,
    state: SuiteState,
    flaky_result: FlakyResult,
) -> TestReport {
    let attempt_history: Vec<AttemptReport> = attempts
        .values()
        .map(|r| AttemptReport {
            attempt: r.attempt,
            status: r.status,
            reason: r.reason.clone(),
            duration_ms: r.duration_ms,
            worker: r.worker.clone(),
            exit_code: r.exit_code,
            stage: r.stage,
            infrastructure: r.is_infrastructure_failure(),
            failed_cases: r
                .cases
                .iter()
                .filter(|c| {
                    matches!(
                        c.status,
                        CaseStatus::Failed | CaseStatus::Error | CaseStatus::Xpass
                    )
                })
                .map(|c| c.name.clone())
                .collect(),
            stdout_excerpt: excerpt(&r.stdout),
            stderr_excerpt: excerpt(&r.stderr),
        })
        .collect();
    let count = u32::try_from(attempts.len()).unwrap_or(u32::MAX);
    let final_attempt = attempts.values().rev().find(|r| r.is_final);

    match final_attempt {
        Some(last) => {
            // Only a failure of the test's own makes it flaky: a retry after the
            // infrastructure failed an attempt says nothing about the test.
            let first_failure = attempts.values().find(|r| {
                r.attempt < last.attempt
                    && r.status.is_retryable()
                    && !r.is_infrastructure_failure()
            });
            let flaky = last.status == Status::Passed && first_failure.is_some();
            let (status, reason, stage) = match first_failure {
                Some(first) if flaky && flaky_result == FlakyResult::Fail => (
                    Status::Failed,
                    Some(format!(
                        "flaky: {} on attempt {}, passed on attempt {} (flaky_result = \"fail\")",
                        first.status.as_str(),
                        first.attempt,
                        last.attempt
                    )),
                    first.stage,
                ),
                _ => (last.status, last.reason.clone(), last.stage),
            };
            TestReport {
                name: name.to_owned(),
                status,
                flaky,
                reason,
                stage,
                duration_ms: last.duration_ms,
                attempts: count,
                worker: last.worker.clone(),
                exit_code: last.exit_code,
                stdout: last.stdout.clone(),
                stderr: last.stderr.clone(),
                cases: last.cases.clone(),
                usage: last.usage,
                attempt_history,
                start: last.start.clone(),
                quarantined: false,
                cached_from: last.cached_from.clone(),
            }
        }
        None => {
            let (status, reason) = match state {
                SuiteState::Cancelled => (Status::Cancelled, CANCELLED_REASON),
                _ => (Status::Lost, LOST_REASON),
            };
            // The output of an earlier, non-final attempt still helps explain what
            // happened, so it is kept; its verdict, cases and duration are not this
            // test's and are only in the history.
            let last = attempts.values().next_back();
            TestReport {
                name: name.to_owned(),
                status,
                flaky: false,
                reason: Some(reason.to_owned()),
                stage: None,
                duration_ms: 0,
                attempts: count,
                worker: last.map(|r| r.worker.clone()).unwrap_or_default(),
                exit_code: None,
                stdout: last.map(|r| r.stdout.clone()).unwrap_or_default(),
                stderr: last.map(|r| r.stderr.clone()).unwrap_or_default(),
                cases: Vec::new(),
                usage: Usage::default(),
                attempt_history,
                start: None,
                quarantined: false,
                cached_from: None,
            }
        }
    }
}

/// Counts over the entries.
fn summarize(tests: &[TestReport], wall_ms: u64) -> Summary {
    let mut summary = Summary {
        total: u32::try_from(tests.len()).unwrap_or(u32::MAX),
        wall_ms,
        ..Summary::default()
    };
    for test in tests {
        let counter = match test.status {
            Status::Passed => &mut summary.passed,
            Status::Failed => &mut summary.failed,
            Status::Error => &mut summary.errored,
            Status::Timeout => &mut summary.timed_out,
            Status::Oom => &mut summary.oom,
            Status::Skipped => &mut summary.skipped,
            Status::Lost => &mut summary.lost,
            Status::Cancelled => &mut summary.cancelled,
        };
        *counter += 1;
        summary.flaky += u32::from(test.flaky);
        summary.cached += u32::from(test.cached_from.is_some());
        summary.duration_ms = summary.duration_ms.saturating_add(test.duration_ms);
    }
    summary.success_rate = if summary.total == 0 {
        0.0
    } else {
        let rate = f64::from(summary.passed + summary.skipped) * 100.0 / f64::from(summary.total);
        // Two decimals are all a reader wants, and a short number reads better in JSON.
        (rate * 100.0).round() / 100.0
    };
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{record, result};

    #[test]
    fn entries_follow_the_record_and_take_the_final_attempt() {
        struct Case {
            what: &'static str,
            results: Vec<TestResult>,
            state: SuiteState,
            // (status, attempts, flaky, reason)
            want: Vec<(Status, u32, bool, Option<&'static str>)>,
        }
        let cases = [
            Case {
                what: "all passed",
                results: vec![
                    result("a", 1, true, Status::Passed),
                    result("b", 1, true, Status::Passed),
                ],
                state: SuiteState::Complete,
                want: vec![
                    (Status::Passed, 1, false, None),
                    (Status::Passed, 1, false, None),
                ],
            },
            Case {
                what: "retry passed is flaky",
                results: vec![
                    result("a", 2, true, Status::Passed),
                    result("a", 1, false, Status::Failed),
                    result("b", 1, true, Status::Failed),
                ],
                state: SuiteState::Complete,
                want: vec![
                    (Status::Passed, 2, true, None),
                    (Status::Failed, 1, false, None),
                ],
            },
            Case {
                what: "retries exhausted",
                results: vec![
                    result("a", 1, false, Status::Timeout),
                    result("a", 2, true, Status::Timeout),
                    result("b", 1, true, Status::Skipped),
                ],
                state: SuiteState::Complete,
                want: vec![
                    (Status::Timeout, 2, false, None),
                    (Status::Skipped, 1, false, None),
                ],
            },
            Case {
                what: "deadline makes missing tests lost, keeping earlier attempts",
                results: vec![result("a", 1, false, Status::Failed)],
                state: SuiteState::DeadlineExceeded,
                want: vec![
                    (Status::Lost, 1, false, Some(LOST_REASON)),
                    (Status::Lost, 0, false, Some(LOST_REASON)),
                ],
            },
            Case {
                what: "cancel makes missing tests cancelled",
                results: vec![result("b", 1, true, Status::Oom)],
                state: SuiteState::Cancelled,
                want: vec![
                    (Status::Cancelled, 0, false, Some(CANCELLED_REASON)),
                    (Status::Oom, 1, false, None),
                ],
            },
            Case {
                what: "strangers and duplicates are ignored",
                results: vec![
                    result("a", 1, true, Status::Passed),
                    TestResult {
                        stdout: "second writer".into(),
                        status: Status::Failed,
                        ..result("a", 1, true, Status::Passed)
                    },
                    result("zzz", 1, true, Status::Failed),
                    TestResult {
                        suite_id: "other".into(),
                        ..result("b", 1, true, Status::Failed)
                    },
                    result("b", 1, true, Status::Passed),
                ],
                state: SuiteState::Complete,
                want: vec![
                    (Status::Passed, 1, false, None),
                    (Status::Passed, 1, false, None),
                ],
            },
        ];
        for case in cases {
            let report = assemble(&record(&["a", "b"]), case.results, case.state);
            let got: Vec<_> = report
                .tests
                .iter()
                .map(|t| (t.status, t.attempts, t.flaky, t.reason.as_deref()))
                .collect();
            assert_eq!(got, case.want, "{}", case.what);
            assert_eq!(
                report
                    .tests
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>(),
                ["a", "b"],
                "{}",
                case.what
            );
        }
    }

    #[test]
    fn flaky_result_decides_the_verdict_of_a_flaky_pass() {
        // (flaky_result, earlier attempt, want status, want flaky)
        let infra = TestResult {
            reason: Some("infrastructure: sandbox: no space left".into()),
            infrastructure: true,
            ..result("a", 1, false, Status::Error)
        };
        let table = [
            (
                FlakyResult::Pass,
                result("a", 1, false, Status::Failed),
                Status::Passed,
                true,
            ),
            (
                FlakyResult::Fail,
                result("a", 1, false, Status::Failed),
                Status::Failed,
                true,
            ),
            (
                FlakyResult::Fail,
                result("a", 1, false, Status::Timeout),
                Status::Failed,
                true,
            ),
            (FlakyResult::Fail, infra.clone(), Status::Passed, false),
            (FlakyResult::Pass, infra, Status::Passed, false),
        ];
        for (flaky_result, first, status, flaky) in table {
            let mut rec = record(&["a"]);
            rec.flaky_result = flaky_result;
            let what = format!("{flaky_result:?} after {:?}", first.status);
            let report = assemble(
                &rec,
                [first, result("a", 2, true, Status::Passed)],
                SuiteState::Complete,
            );
            let test = &report.tests[0];
            assert_eq!((test.status, test.flaky), (status, flaky), "{what}");
            assert_eq!(report.summary.flaky, u32::from(flaky), "{what}");
            assert_eq!(report.passed(), status == Status::Passed, "{what}");
            if status == Status::Failed {
                assert_eq!(
                    test.reason.as_deref(),
                    Some(
                        format!(
                            "flaky: {} on attempt 1, passed on attempt 2 (flaky_result = \"fail\")",
                            test.attempt_history[0].status.as_str()
                        )
                        .as_str()
                    ),
                    "{what}"
                );
                assert_eq!(report.summary.failed, 1, "{what}");
            }
        }
    }

    #[test]
    fn every_attempt_keeps_its_own_evidence() {
        let mut first = result("a", 1, false, Status::Failed);
        first.exit_code = Some(1);
        first.reason = Some("1 of 2 cases failed".into());
        first.stderr = (1..=30).map(|i| format!("line {i}\n")).collect();
        first.cases = vec![isotest_protocol::result::CaseResult {
            name: "test_x".into(),
            classname: String::new(),
            file: None,
            status: CaseStatus::Failed,
            duration_ms: 1,
            message: None,
            detail: None,
        }];
        let report = assemble(
            &record(&["a"]),
            [first, result("a", 2, true, Status::Passed)],
            SuiteState::Complete,
        );
        let attempt = &report.tests[0].attempt_history[0];
        assert_eq!(attempt.exit_code, Some(1));
        assert_eq!(attempt.reason.as_deref(), Some("1 of 2 cases failed"));
        assert_eq!(attempt.failed_cases, ["test_x"]);
        assert!(
            attempt.stderr_excerpt.starts_with("line 11\n"),
            "{}",
            attempt.stderr_excerpt
        );
        assert!(attempt.stderr_excerpt.ends_with("line 30"));
        assert!(!attempt.infrastructure);
    }

    #[test]
    fn history_is_ordered_and_the_entry_carries_the_final_output() {
        let mut first = result("a", 1, false, Status::Failed);
        first.stdout = "first".into();
        first.worker = "w1".into();
        let mut second = result("a", 2, true, Status::Passed);
        second.stdout = "second".into();
        second.worker = "w2".into();
        second.exit_code = Some(0);
        let report = assemble(&record(&["a"]), [second, first], SuiteState::Complete);
        let test = &report.tests[0];
        assert_eq!(test.stdout, "second");
        assert_eq!(test.worker, "w2");
        assert_eq!(test.exit_code, Some(0));
        let history: Vec<_> = test
            .attempt_history
            .iter()
            .map(|a| (a.attempt, a.status, a.worker.as_str()))
            .collect();
        assert_eq!(
            history,
            [(1, Status::Failed, "w1"), (2, Status::Passed, "w2")]
        );
    }

    #[test]
    fn summary_counts_and_times() {
        let rec = record(&["a", "b", "c", "d", "e", "a"]);
        let results = [
            result("a", 1, true, Status::Passed),
            result("b", 1, true, Status::Error),
            result("c", 1, true, Status::Timeout),
            result("d", 1, false, Status::Failed),
            result("d", 2, true, Status::Passed),
        ];
        let report = assemble(&rec, results, SuiteState::DeadlineExceeded);
        let s = &report.summary;
        assert_eq!(report.tests.len(), 5, "a duplicated name gets one entry");
        assert_eq!(
            (s.total, s.passed, s.errored, s.timed_out, s.lost, s.flaky),
            (5, 2, 1, 1, 1, 1)
        );
        assert_eq!(s.success_rate, 40.0);
        // Fixture attempts last 100 ms each; only final ones count.
        assert_eq!(s.duration_ms, 400);
        // Past the deadline, the report ends at the deadline (later than every result).
        assert_eq!(report.finished_at_ms, rec.deadline_at_ms);
        assert_eq!(s.wall_ms, rec.deadline_at_ms - rec.created_at_ms);
    }

    #[test]
    fn empty_suite_and_no_results_do_not_divide_by_zero() {
        let report = assemble(&record(&[]), [], SuiteState::Complete);
        assert_eq!(report.summary.total, 0);
        assert_eq!(report.summary.success_rate, 0.0);
        assert_eq!(report.finished_at_ms, report.created_at_ms);
        assert_eq!(report.summary.wall_ms, 0);
    }

    #[test]
    fn input_order_does_not_change_the_report() {
        let rec = record(&["a", "b", "c"]);
        let results = vec![
            result("a", 1, false, Status::Failed),
            result("a", 2, true, Status::Passed),
            result("b", 1, true, Status::Failed),
            result("c", 1, true, Status::Skipped),
        ];
        let forward = assemble(&rec, results.clone(), SuiteState::Complete);
        let backward = assemble(&rec, results.into_iter().rev(), SuiteState::Complete);
        assert_eq!(forward, backward);
        assert_eq!(forward.finished_at_ms, 1_200, "the last result's end");
    }
}
