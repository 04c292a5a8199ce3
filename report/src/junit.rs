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
mod tests {
    use super::*;
    use crate::assemble;
    use crate::fixtures::{record, result};
    use isotest_protocol::report::SuiteState;
    use isotest_protocol::result::TestResult;

    fn case(name: &str, status: CaseStatus) -> CaseResult {
        CaseResult {
            name: name.to_owned(),
            classname: "tests.test_math".into(),
            file: Some("tests/test_math.py".into()),
            status,
            duration_ms: 1_500,
            message: None,
            detail: None,
        }
    }

    /// A suite with one test of every kind the XML must render.
    fn mixed_report() -> Report {
        let rec = record(&[
            "ok",
            "flaky",
            "bad",
            "slow",
            "skip",
            "cases",
            "crash-after-cases",
            "gone",
        ]);
        let mut bad = result("bad", 1, true, Status::Failed);
        bad.exit_code = Some(1);
        bad.stdout = "running bad\n".into();
        bad.stderr = "assert 1 == 2 <&>\n".into();
        let mut slow = result("slow", 1, true, Status::Timeout);
        slow.reason = Some("exceeded its 1 s timeout".into());
        let mut skip = result("skip", 1, true, Status::Skipped);
        skip.reason = Some("not on linux".into());
        let mut cases = result("cases", 1, true, Status::Failed);
        cases.cases = vec![
            case("test_add", CaseStatus::Passed),
            CaseResult {
                message: Some("AssertionError: 3 != 4".into()),
                detail: Some("Traceback ...\nAssertionError".into()),
                ..case("test_sub", CaseStatus::Failed)
            },
            case("test_mul", CaseStatus::Skipped),
            CaseResult {
                classname: String::new(),
                file: None,
                ..case("test_div", CaseStatus::Xfail)
            },
        ];
        cases.stdout = "pytest output\n".into();
        let mut crash = result("crash-after-cases", 1, true, Status::Oom);
        crash.reason = Some("killed at its 64 MiB memory limit".into());
        crash.cases = vec![case("test_alloc", CaseStatus::Passed)];
        let results: Vec<TestResult> = vec![
            result("ok", 1, true, Status::Passed),
            result("flaky", 1, false, Status::Failed),
            result("flaky", 2, true, Status::Passed),
            bad,
            slow,
            skip,
            cases,
            crash,
        ];
        assemble(&rec, results, SuiteState::DeadlineExceeded)
    }

    #[test]
    fn xml_snapshot() {
        insta::assert_snapshot!(junit(&mixed_report()));
    }

    #[test]
    fn readers_find_the_counts_and_attributes() {
        let xml = junit(&mixed_report());
        let doc = roxmltree::Document::parse(&xml).expect("well-formed XML");
        let suites: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("testsuite"))
            .collect();
        assert_eq!(suites.len(), 1);
        let suite = suites[0];
        assert_eq!(suite.attribute("name"), Some("demo"));
        let cases: Vec<_> = suite
            .children()
            .filter(|n| n.has_tag_name("testcase"))
            .collect();
        // 6 tests without cases, 4 cases, 1 case + the test itself for the OOM.
        assert_eq!(cases.len(), 12);
        assert_eq!(suite.attribute("tests"), Some("12"));
        let count = |tag: &str| {
            cases
                .iter()
                .filter(|c| c.children().any(|n| n.has_tag_name(tag)))
                .count()
        };
        assert_eq!(count("failure"), 2, "bad, test_sub");
        assert_eq!(count("error"), 3, "slow, oom, gone");
        assert_eq!(count("skipped"), 3, "skip, test_mul, test_div");
        assert_eq!(suite.attribute("failures"), Some("2"));
        assert_eq!(suite.attribute("errors"), Some("3"));
        assert_eq!(suite.attribute("skipped"), Some("3"));

        let find = |name: &str| {
            cases
                .iter()
                .find(|c| c.attribute("name") == Some(name))
                .unwrap_or_else(|| panic!("no testcase {name}"))
        };
        let sub = find("tests.test_math.test_sub");
        assert_eq!(sub.attribute("classname"), Some("cases"));
        assert_eq!(sub.attribute("file"), Some("tests/test_math.py"));
        assert_eq!(sub.attribute("time"), Some("1.500"));
        let failure = sub
            .children()
            .find(|n| n.has_tag_name("failure"))
            .expect("failure");
        assert_eq!(failure.attribute("message"), Some("AssertionError: 3 != 4"));
        assert_eq!(failure.text(), Some("Traceback ...\nAssertionError"));
        let out = sub
            .children()
            .find(|n| n.has_tag_name("system-out"))
            .expect("output on the failing case");
        assert_eq!(out.text(), Some("pytest output\n"));
        assert_eq!(find("test_div").attribute("classname"), Some("cases"));

        let slow = find("slow");
        assert_eq!(slow.attribute("classname"), Some("demo"));
        let error = slow
            .children()
            .find(|n| n.has_tag_name("error"))
            .expect("error");
        assert_eq!(error.attribute("type"), Some("timeout"));
        assert_eq!(error.attribute("message"), Some("exceeded its 1 s timeout"));
        let gone = find("gone")
            .children()
            .find(|n| n.has_tag_name("error"))
            .expect("error");
        assert_eq!(gone.attribute("type"), Some("lost"));

        let bad = find("bad");
        let err = bad
            .children()
            .find(|n| n.has_tag_name("system-err"))
            .expect("stderr");
        assert_eq!(err.text(), Some("assert 1 == 2 <&>\n"));
        let failure = bad
            .children()
            .find(|n| n.has_tag_name("failure"))
            .expect("failure");
        assert_eq!(failure.attribute("message"), Some("failed (exit code 1)"));
    }

    /// Surefire's rerun elements: which element each test gets, and how many.
    #[test]
    fn retries_render_as_surefire_reruns() {
        use isotest_protocol::manifest::FlakyResult;
        let tests = ["flaky", "exhausted", "cases"];
        let mut cases_first = result("cases", 1, false, Status::Failed);
        cases_first.cases = vec![
            case("test_a", CaseStatus::Passed),
            case("test_b", CaseStatus::Failed),
        ];
        let mut cases_last = result("cases", 2, true, Status::Passed);
        cases_last.cases = vec![
            case("test_a", CaseStatus::Passed),
            case("test_b", CaseStatus::Passed),
        ];
        let results = || {
            vec![
                result("flaky", 1, false, Status::Failed),
                result("flaky", 2, true, Status::Passed),
                result("exhausted", 1, false, Status::Failed),
                result("exhausted", 2, false, Status::Timeout),
                result("exhausted", 3, true, Status::Failed),
                cases_first.clone(),
                cases_last.clone(),
            ]
        };
        /// (child element, how many the test case must have)
        type Children<'a> = &'a [(&'a str, usize)];
        // (flaky_result, test, children)
        let table: &[(FlakyResult, &str, Children<'_>)] = &[
            (
                FlakyResult::Pass,
                "flaky",
                &[("flakyFailure", 1), ("failure", 0)],
            ),
            (
                FlakyResult::Fail,
                "flaky",
                &[("failure", 1), ("flakyFailure", 1)],
            ),
            (
                FlakyResult::Pass,
                "exhausted",
                &[("failure", 1), ("rerunFailure", 1), ("rerunError", 1)],
            ),
            (
                FlakyResult::Pass,
                "tests.test_math.test_b",
                &[("flakyFailure", 1)],
            ),
            (
                FlakyResult::Pass,
                "tests.test_math.test_a",
                &[("flakyFailure", 0)],
            ),
        ];
        for (flaky_result, name, want) in table {
            let mut rec = record(&tests);
            rec.flaky_result = *flaky_result;
            let xml = junit(&assemble(&rec, results(), SuiteState::Complete));
            let doc = roxmltree::Document::parse(&xml).expect("well-formed XML");
            let case = doc
                .descendants()
                .find(|n| n.has_tag_name("testcase") && n.attribute("name") == Some(name))
                .unwrap_or_else(|| panic!("no testcase {name}"));
            for (tag, count) in *want {
                let got = case.children().filter(|n| n.has_tag_name(*tag)).count();
                assert_eq!(got, *count, "{flaky_result:?} {name} <{tag}>\n{xml}");
            }
        }
    }

    /// Two tests whose frameworks name their cases alike (two inline `def test_it`, one
    /// file discovered under two prefixes) give testcases that name their test and do
    /// not collide.
    #[test]
    fn every_testcase_names_its_test_and_none_collide() {
        let names = [
            "login",
            "logout",
            "py311:tests/a.py::test_x",
            "py312:tests/a.py::test_x",
        ];
        let results = names.iter().enumerate().map(|(i, name)| {
            let status = if i % 2 == 0 {
                Status::Passed
            } else {
                Status::Failed
            };
            let mut r = result(name, 1, true, status);
            let case_status = if i % 2 == 0 {
                CaseStatus::Passed
            } else {
                CaseStatus::Failed
            };
            r.cases = vec![CaseResult {
                classname: "test_isotest".into(),
                file: Some("test_isotest.py".into()),
                ..case("test_it", case_status)
            }];
            r
        });
        let xml = junit(&assemble(&record(&names), results, SuiteState::Complete));
        let doc = roxmltree::Document::parse(&xml).expect("well-formed XML");
        let ids: Vec<(&str, &str)> = doc
            .descendants()
            .filter(|n| n.has_tag_name("testcase"))
            .map(|n| {
                (
                    n.attribute("classname").unwrap_or_default(),
                    n.attribute("name").unwrap_or_default(),
                )
            })
            .collect();
        let expected: Vec<(&str, &str)> =
            names.iter().map(|n| (*n, "test_isotest.test_it")).collect();
        assert_eq!(ids, expected);
    }

    #[test]
    fn control_characters_do_not_break_the_xml() {
        let mut noisy = result("noisy", 1, true, Status::Failed);
        noisy.stdout = "\u{1b}[31mred\u{1b}[0m\u{0}\u{7}bell\n".into();
        noisy.reason = Some("bad \"quote\" & <tag>".into());
        let report = assemble(&record(&["noisy"]), [noisy], SuiteState::Complete);
        let xml = junit(&report);
        let doc = roxmltree::Document::parse(&xml).expect("well-formed XML");
        let failure = doc
            .descendants()
            .find(|n| n.has_tag_name("failure"))
            .expect("failure");
        assert_eq!(failure.attribute("message"), Some("bad \"quote\" & <tag>"));
        let out = doc
            .descendants()
            .find(|n| n.has_tag_name("system-out"))
            .expect("stdout");
        assert_eq!(out.text(), Some("redbell\n"));
    }

    #[test]
    fn an_empty_suite_is_still_a_document() {
        let xml = junit(&assemble(&record(&[]), [], SuiteState::Complete));
        let doc = roxmltree::Document::parse(&xml).expect("well-formed XML");
        let suite = doc
            .descendants()
            .find(|n| n.has_tag_name("testsuite"))
            .expect("suite");
        assert_eq!(suite.attribute("tests"), Some("0"));
    }
}
