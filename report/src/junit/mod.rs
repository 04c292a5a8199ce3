//! The report as JUnit XML, the format every CI system reads (GitLab, Jenkins, GitHub
//! actions, Buildkite): one `<testsuite>` for the suite, one `<testcase>` per case a
//! framework reported, or per test where it reported none.

use quick_junit::{
    FlakyOrRerun, NonSuccessKind, Property, Report as JunitReport, TestCase, TestCaseStatus,
    TestRerun, TestSuite,
};

use isotest_protocol::report::{AttemptReport, Report, TestReport};
use isotest_protocol::result::{CaseResult, CaseStatus, Status};

use super::{ms_to_duration, tail_lines};

/// How many lines of output a failure's text carries; the whole output is in
/// `<system-out>` and `<system-err>`.
const FAILURE_TEXT_LINES: usize = 50;

/// The `<property>` of every `<testcase>` of a quarantined test.
pub const QUARANTINED_PROPERTY: &str = "isotest.quarantined";

/// The `<property>` of every `<testcase>` of a test served from the result cache: the
/// suite id and test name (`SUITE_ID/TEST`) of the run it repeats.
pub const CACHED_FROM_PROPERTY: &str = "isotest.cached_from";

/// Renders the report as JUnit XML.
///
/// The text holds no timestamps nor ids of its own making, so one report always gives
/// the same bytes.
pub fn junit(report: &Report) -> String {
    let mut suite = TestSuite::new(report.suite.as_str());
    suite.set_time(ms_to_duration(report.summary.wall_ms));
    for test in &report.tests {
        let mut cases = if test.cases.is_empty() {
            vec![test_case(report, test)]
        } else {
            case_test_cases(report, test)
        };
        if test.quarantined {
            // A reader that knows nothing of quarantine still sees the failure; one that
            // does reads the property and does not count it.
            for case in &mut cases {
                case.add_property(Property::new(QUARANTINED_PROPERTY, "true"));
            }
        }
        if let Some(from) = &test.cached_from {
            let value = format!("{}/{}", from.suite_id, from.test);
            for case in &mut cases {
                case.add_property(Property::new(CACHED_FROM_PROPERTY, value.as_str()));
            }
        }
        suite.add_test_cases(cases);
    }
    if let Some(builds) = builds_text(report) {
        suite.set_system_err(builds);
    }
    let mut junit = JunitReport::new(report.suite.as_str());
    junit.set_time(ms_to_duration(report.summary.wall_ms));
    junit.add_test_suite(suite);
    // Serializing into memory fails only when the writer does, and a Vec never does.
    junit.to_string().unwrap_or_else(|error| {
        tracing::error!(suite_id = %report.suite_id, %error, "Could not serialize the JUnit report.");
        String::new()
    })
}

/// The prepare stage's failed builds, once for the whole suite (its `<system-err>`): each
/// test they left unrun says so in its own error, without repeating the output.
fn builds_text(report: &Report) -> Option<String> {
    let failed: Vec<String> = report
        .builds
        .iter()
        .filter(|b| b.status == isotest_protocol::report::BuildStatus::Failed)
        .map(|b| {
            format!(
                "The {} build failed. Its output:\n{}",
                b.framework, b.output
            )
        })
        .collect();
    (!failed.is_empty()).then(|| failed.join("\n"))
}

/// The one `<testcase>` of a test that reported no cases.
fn test_case(report: &Report, test: &TestReport) -> TestCase {
    let mut case = TestCase::new(test.name.as_str(), test_status(test));
    case.set_classname(report.suite.as_str());
    case.set_time(ms_to_duration(test.duration_ms));
    set_output(&mut case, test);
    case
}

/// The `<testcase>`s of a test's cases, plus one for the test itself when its verdict
/// is worse than its cases say (a timeout or a crash after every case passed, or a flaky
/// pass under `flaky_result = "fail"`), so that no failure hides behind green cases.
fn case_test_cases(report: &Report, test: &TestReport) -> Vec<TestCase> {
    let earlier = earlier_failures(test);
    let mut cases: Vec<TestCase> = test
        .cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut status = case_status(c);
            // A flaky pass: each earlier failure goes on the case it failed, or on the
            // first case when that attempt named none (it crashed before any case ran).
            if test.status == Status::Passed {
                for attempt in &earlier {
                    let failed_here = attempt.failed_cases.contains(&c.name);
                    let nowhere = !attempt
                        .failed_cases
                        .iter()
                        .any(|n| test.cases.iter().any(|c| c.name == *n));
                    if failed_here || (nowhere && i == 0) {
                        status.add_rerun(rerun(attempt));
                    }
                }
            }
            let mut case = TestCase::new(case_name(c), status);
            // The isotest test is the class of its cases: every case says which test
            // reported it, and two tests whose frameworks name their cases alike (two
            // inline `test_it`s, one file discovered under two prefixes) stay apart.
            case.set_classname(test.name.as_str());
            if let Some(file) = &c.file {
                case.extra.insert("file".into(), file.as_str().into());
            }
            case.set_time(ms_to_duration(c.duration_ms));
            case
        })
        .collect();
    let any_case_failed = test
        .cases
        .iter()
        .any(|c| matches!(c.status, CaseStatus::Failed | CaseStatus::Error));
    if !test.status.is_success() && !any_case_failed {
        cases.push(test_case(report, test));
        return cases;
    }
    // The output belongs to the test's process, not to a case: it goes once, on the
    // first case a reader will open (the first failing one), rather than on every case.
    let target = test
        .cases
        .iter()
        .position(|c| matches!(c.status, CaseStatus::Failed | CaseStatus::Error))
        .unwrap_or(0);
    if let Some(case) = cases.get_mut(target) {
        set_output(case, test);
    }
    cases
}

/// A case's `name`: its framework's full id, the class (where the framework names one)
/// then the case, as in `tests.test_math.test_add`.
fn case_name(case: &CaseResult) -> String {
    if case.classname.is_empty() {
        case.name.clone()
    } else {
        format!("{}.{}", case.classname, case.name)
    }
}

/// The attempts before the final one that did not pass.
fn earlier_failures(test: &TestReport) -> Vec<&AttemptReport> {
    let Some((_, earlier)) = test.attempt_history.split_last() else {
        return Vec::new();
    };
    earlier
        .iter()
        .filter(|a| a.status != Status::Passed)
        .collect()
}

/// An earlier attempt as Surefire writes a rerun: `<flakyFailure>` under a pass (or a
/// flaky failure), `<rerunFailure>` under a failure; `*Error` for verdicts other than failed.
fn rerun(attempt: &AttemptReport) -> TestRerun {
    let kind = if attempt.status == Status::Failed {
        NonSuccessKind::Failure
    } else {
        NonSuccessKind::Error
    };
    let mut rerun = TestRerun::new(kind);
    rerun.set_type(attempt.status.as_str());
    rerun.set_time(ms_to_duration(attempt.duration_ms));
    rerun.set_message(attempt_message(
        attempt.status,
        attempt.reason.as_deref(),
        attempt.exit_code,
    ));
    if !attempt.stdout_excerpt.is_empty() {
        rerun.set_system_out(attempt.stdout_excerpt.as_str());
    }
    if !attempt.stderr_excerpt.is_empty() {
        rerun.set_system_err(attempt.stderr_excerpt.as_str());
    }
    rerun
}

fn set_output(case: &mut TestCase, test: &TestReport) {
    if !test.stdout.is_empty() {
        case.set_system_out(test.stdout.as_str());
    }
    if !test.stderr.is_empty() {
        case.set_system_err(test.stderr.as_str());
    }
}

/// The verdict of a test without cases; earlier failed attempts become
/// `<flakyFailure>`/`<flakyError>` under a pass or a flaky failure, and
/// `<rerunFailure>`/`<rerunError>` under a failure, as Surefire writes them.
fn test_status(test: &TestReport) -> TestCaseStatus {
    let reruns = earlier_failures(test).into_iter().map(rerun);
    match test.status {
        Status::Passed => {
            let mut status = TestCaseStatus::success();
            status.add_reruns(reruns);
            status
        }
        Status::Skipped => {
            let mut status = TestCaseStatus::skipped();
            if let Some(reason) = &test.reason {
                status.set_message(reason.as_str());
            }
            status
        }
        Status::Failed => {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
            status.set_type(if test.flaky { "flaky" } else { "failed" });
            status.set_message(attempt_message(
                test.status,
                test.reason.as_deref(),
                test.exit_code,
            ));
            let output = if test.stderr.trim().is_empty() {
                &test.stdout
            } else {
                &test.stderr
            };
            let text = tail_lines(output, FAILURE_TEXT_LINES);
            if !text.is_empty() && !test.flaky {
                status.set_description(text);
            }
            status.add_reruns(reruns);
            if test.flaky {
                status.set_rerun_kind(FlakyOrRerun::Flaky);
            }
            status
        }
        Status::Error | Status::Timeout | Status::Oom | Status::Lost | Status::Cancelled => {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Error);
            status.set_type(test.status.as_str());
            status.set_message(attempt_message(
                test.status,
                test.reason.as_deref(),
                test.exit_code,
            ));
            status.add_reruns(reruns);
            status
        }
    }
}

/// The verdict of one case, as pytest's own JUnit writer maps it: an expected failure
/// is a skip, an unexpected pass a pass.
fn case_status(case: &CaseResult) -> TestCaseStatus {
    match case.status {
        CaseStatus::Passed | CaseStatus::Xpass => TestCaseStatus::success(),
        CaseStatus::Skipped | CaseStatus::Xfail => {
            let mut status = TestCaseStatus::skipped();
            let message = match (&case.message, case.status) {
                (Some(m), _) => m.clone(),
                (None, CaseStatus::Xfail) => "expected failure".to_owned(),
                (None, _) => "skipped".to_owned(),
            };
            status.set_message(message);
            status
        }
        CaseStatus::Failed | CaseStatus::Error => {
            let (kind, ty) = if case.status == CaseStatus::Failed {
                (NonSuccessKind::Failure, "failed")
            } else {
                (NonSuccessKind::Error, "error")
            };
            let mut status = TestCaseStatus::non_success(kind);
            status.set_type(ty);
            status.set_message(case.message.clone().unwrap_or_else(|| ty.to_owned()));
            if let Some(detail) = &case.detail {
                status.set_description(detail.as_str());
            }
            status
        }
    }
}

/// A one-line message: the reason if there is one, else what the status and exit code say.
pub(crate) fn attempt_message(
    status: Status,
    reason: Option<&str>,
    exit_code: Option<i32>,
) -> String {
    match (reason, exit_code) {
        (Some(reason), _) => reason.to_owned(),
        (None, Some(code)) => format!("{} (exit code {code})", status.as_str()),
        (None, None) => status.as_str().to_owned(),
    }
}

#[cfg(test)]
mod tests;
