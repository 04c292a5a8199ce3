//! The JUnit rendering checked as CI readers read it: a snapshot of a mixed report, the
//! counts and attributes readers find, retries as Surefire reruns, unique names, control
//! characters and an empty suite.

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
    let expected: Vec<(&str, &str)> = names.iter().map(|n| (*n, "test_isotest.test_it")).collect();
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
