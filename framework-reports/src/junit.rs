//! Per-case results from a JUnit XML report (pytest's `--junitxml`, and any framework
//! that writes the same shape). The report is untrusted input: it is size-capped
//! before it gets here, and DTDs (the road to entity-expansion bombs) are refused.

use isotest_protocol::result::{CaseResult, CaseStatus};

/// A JUnit report that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JunitError {
    #[error("report is not UTF-8")]
    Encoding(#[source] std::str::Utf8Error),
    #[error("report is not well-formed XML")]
    Xml(#[source] roxmltree::Error),
    #[error("report has no <testsuite> or <testsuites> root, but <{0}>")]
    Root(String),
}

/// The longest message or detail text kept per case.
const MAX_TEXT: usize = 64 * 1024;

/// Parses every `<testcase>` of the report.
///
/// # Errors
///
/// Returns [`JunitError`] for a report that is not UTF-8, not XML (or has a DTD), or
/// whose root is not a test suite.
pub fn parse(xml: &[u8]) -> Result<Vec<CaseResult>, JunitError> {
    let text = std::str::from_utf8(xml).map_err(JunitError::Encoding)?;
    let options = roxmltree::ParsingOptions {
        allow_dtd: false,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(text, options).map_err(JunitError::Xml)?;
    let root = doc.root_element();
    if !matches!(root.tag_name().name(), "testsuites" | "testsuite") {
        return Err(JunitError::Root(root.tag_name().name().to_owned()));
    }
    Ok(root
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .map(|case| {
            let mut status = CaseStatus::Passed;
            let mut message = None;
            let mut detail = None;
            for child in case.children().filter(roxmltree::Node::is_element) {
                let (s, keep) = match child.tag_name().name() {
                    "failure" => (CaseStatus::Failed, true),
                    "error" => (CaseStatus::Error, true),
                    "skipped" if child.attribute("type") == Some("pytest.xfail") => {
                        (CaseStatus::Xfail, true)
                    }
                    "skipped" => (CaseStatus::Skipped, true),
                    _ => (status, false),
                };
                if keep {
                    // A failure outranks a skip; an error in teardown after a failure keeps the failure.
                    if rank(s) > rank(status) {
                        status = s;
                        message = child.attribute("message").map(cap);
                        detail = child
                            .text()
                            .map(str::trim)
                            .filter(|t| !t.is_empty())
                            .map(cap);
                    }
                }
            }
            let seconds: f64 = case
                .attribute("time")
                .and_then(|t| t.parse().ok())
                .unwrap_or(0.0);
            CaseResult {
                name: case.attribute("name").unwrap_or_default().to_owned(),
                classname: case.attribute("classname").unwrap_or_default().to_owned(),
                file: case.attribute("file").map(str::to_owned),
                status,
                duration_ms: seconds_to_ms(seconds),
                message,
                detail,
            }
        })
        .collect())
}

fn rank(status: CaseStatus) -> u8 {
    match status {
        CaseStatus::Passed => 0,
        CaseStatus::Skipped | CaseStatus::Xfail => 1,
        CaseStatus::Error => 2,
        CaseStatus::Failed | CaseStatus::Xpass => 3,
    }
}

fn seconds_to_ms(seconds: f64) -> u64 {
    if seconds.is_finite() && seconds > 0.0 {
        // Saturating: `as` clamps out-of-range floats, which is what a bogus time deserves.
        (seconds * 1000.0).round() as u64
    } else {
        0
    }
}

fn cap(text: &str) -> String {
    if text.len() <= MAX_TEXT {
        return text.to_owned();
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}\n[isotest: {} bytes cut]",
        &text[..end],
        text.len() - end
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PYTEST: &str = r#"<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="1" failures="1" skipped="2" tests="5" time="0.05"><testcase classname="test_isotest" name="test_ok" file="test_isotest.py" line="1" time="0.001" /><testcase classname="test_isotest" name="test_bad" file="test_isotest.py" line="4" time="0.002"><failure message="assert 1 == 2">def test_bad():
&gt;       assert 1 == 2
E       assert 1 == 2</failure></testcase><testcase classname="test_isotest" name="test_skip" time="0.000"><skipped type="pytest.skip" message="later">skip</skipped></testcase><testcase classname="test_isotest" name="test_xf" time="0.000"><skipped type="pytest.xfail" message="known" /></testcase><testcase classname="test_isotest" name="test_fix" time="0.000"><error message="failed on setup with &quot;boom&quot;">E boom</error></testcase></testsuite></testsuites>"#;

    #[test]
    fn reads_pytest_reports() {
        let cases = parse(PYTEST.as_bytes()).expect("valid report");
        let got: Vec<(&str, CaseStatus)> =
            cases.iter().map(|c| (c.name.as_str(), c.status)).collect();
        assert_eq!(
            got,
            [
                ("test_ok", CaseStatus::Passed),
                ("test_bad", CaseStatus::Failed),
                ("test_skip", CaseStatus::Skipped),
                ("test_xf", CaseStatus::Xfail),
                ("test_fix", CaseStatus::Error),
            ]
        );
        assert_eq!(cases[0].file.as_deref(), Some("test_isotest.py"));
        assert_eq!(cases[0].classname, "test_isotest");
        assert_eq!(cases[1].duration_ms, 2);
        assert_eq!(cases[1].message.as_deref(), Some("assert 1 == 2"));
        assert!(
            cases[1]
                .detail
                .as_deref()
                .is_some_and(|d| d.contains("E       assert"))
        );
        assert_eq!(
            cases[4].message.as_deref(),
            Some("failed on setup with \"boom\"")
        );
    }

    #[test]
    fn refuses_what_is_not_a_report() {
        let bomb = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><testsuite>&lol2;</testsuite>"#;
        assert!(matches!(parse(bomb.as_bytes()), Err(JunitError::Xml(_))));
        assert!(matches!(parse(b"<testsuite>"), Err(JunitError::Xml(_))));
        assert!(matches!(parse(b"\xff\xfe"), Err(JunitError::Encoding(_))));
        assert!(matches!(parse(b"<html/>"), Err(JunitError::Root(_))));
        assert_eq!(parse(b"<testsuite/>").expect("empty suite").len(), 0);
    }

    #[test]
    fn caps_huge_messages_and_odd_times() {
        let huge = "x".repeat(MAX_TEXT * 2);
        let xml = format!(
            r#"<testsuite><testcase name="a" time="NaN"><failure message="{huge}"/></testcase></testsuite>"#
        );
        let cases = parse(xml.as_bytes()).expect("valid");
        assert!(
            cases[0]
                .message
                .as_deref()
                .is_some_and(|m| m.len() < MAX_TEXT + 100)
        );
        assert_eq!(cases[0].duration_ms, 0);
    }
}
