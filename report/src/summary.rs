//! The report as a person reads it at the end of a CI log: counts, then what did not
//! pass and why, then one line with everything.

use std::fmt::Write as _;

use isotest_protocol::report::{Report, SuiteState, TestReport};
use isotest_protocol::result::{CaseStatus, Status};

use super::junit::attempt_message;

/// How many lines of a test's output the summary shows.
const OUTPUT_LINES: usize = 10;
/// How many failing cases of one test the summary names.
const CASE_LINES: usize = 10;
/// How many tests that did not pass the summary describes; the reports have them all.
const TESTS_SHOWN: usize = 20;

/// The statuses in the order the summary lists them.
const ORDER: [Status; 8] = Status::ALL;

/// Renders a terminal summary; `color` adds ANSI colours for a terminal.
///
/// The last line reads like `60 tests: 40 passed, 10 failed, 5 error, 5 timeout (12.3 s)`.
pub fn terminal_summary(report: &Report, color: bool) -> String {
    let paint = Painter { color };
    let mut out = String::new();
    // Writing to a String cannot fail, so the results of `writeln!` carry nothing.
    let _ = writeln!(
        out,
        "{} {} ({}): {}",
        paint.bold("Suite"),
        paint.bold(&report.suite),
        report.suite_id,
        state_name(report.state)
    );
    for status in ORDER {
        let n = count(report, status);
        if n > 0 {
            let _ = writeln!(
                out,
                "  {} {n:>6}",
                paint.status(status, &format!("{:<10}", status.as_str()))
            );
        }
    }
    if report.summary.flaky > 0 {
        let _ = writeln!(out, "  {:<10} {:>6}", "flaky", report.summary.flaky);
    }
    let _ = writeln!(out, "  {:<10} {:>6}", "total", report.summary.total);

    let failing: Vec<&TestReport> = report
        .tests
        .iter()
        .filter(|t| !t.status.is_success())
        .collect();
    for test in failing.iter().take(TESTS_SHOWN) {
        out.push('\n');
        write_test(&mut out, test, paint);
    }
    if failing.len() > TESTS_SHOWN {
        let _ = writeln!(
            out,
            "\n… and {} more tests that did not pass: the reports (--json, --junit, --ctrf) have every one",
            failing.len() - TESTS_SHOWN
        );
    }

    out.push('\n');
    out.push_str(&last_line(report, paint));
    out.push('\n');
    out
}

fn write_test(out: &mut String, test: &TestReport, paint: Painter) {
    let label = test.status.as_str().to_uppercase();
    let mut facts = vec![match test.attempts {
        0 => "no attempt reported".to_owned(),
        1 => "1 attempt".to_owned(),
        n => format!("{n} attempts"),
    }];
    if let Some(code) = test.exit_code {
        facts.push(format!("exit code {code}"));
    }
    if test.quarantined {
        facts.push("quarantined: does not fail the suite".to_owned());
    }
    if let Some(from) = &test.cached_from {
        facts.push(format!("cached from suite {}", from.suite_id));
    }
    if !test.worker.is_empty() {
        facts.push(format!("on {}", test.worker));
    }
    let _ = writeln!(
        out,
        "{} {} ({})",
        paint.status(test.status, &label),
        paint.bold(&test.name),
        facts.join(", ")
    );
    let _ = writeln!(
        out,
        "  {}",
        indent(
            &attempt_message(test.status, test.reason.as_deref(), test.exit_code),
            "  "
        )
    );
    let failing: Vec<_> = test
        .cases
        .iter()
        .filter(|c| matches!(c.status, CaseStatus::Failed | CaseStatus::Error))
        .collect();
    for case in failing.iter().take(CASE_LINES) {
        let name = if case.classname.is_empty() {
            case.name.clone()
        } else {
            format!("{}::{}", case.classname, case.name)
        };
        let message = case.message.as_deref().unwrap_or("");
        let _ = writeln!(out, "  - {name}: {}", indent(message, "    "));
    }
    if failing.len() > CASE_LINES {
        let _ = writeln!(
            out,
            "  - … {} more failing cases",
            failing.len() - CASE_LINES
        );
    }
    // stdout then stderr, as they would have interleaved on a terminal at best.
    let lines: Vec<&str> = test.stdout.lines().chain(test.stderr.lines()).collect();
    for line in lines.iter().take(OUTPUT_LINES) {
        let _ = writeln!(out, "  {} {}", paint.dim("│"), line.trim_end_matches('\r'));
    }
    if lines.len() > OUTPUT_LINES {
        let _ = writeln!(
            out,
            "  {} … {} more lines",
            paint.dim("│"),
            lines.len() - OUTPUT_LINES
        );
    }
}

/// A message of several lines, its lines after the first starting with `prefix`, so that
/// an assertion's own layout stays under the line it belongs to.
fn indent(text: &str, prefix: &str) -> String {
    let mut lines = text.trim_end().lines();
    let mut out = lines.next().unwrap_or_default().to_owned();
    for line in lines {
        out.push('\n');
        out.push_str(prefix);
        out.push_str(line.trim_end_matches('\r'));
    }
    out
}

fn last_line(report: &Report, paint: Painter) -> String {
    let parts: Vec<String> = ORDER
        .iter()
        .filter_map(|&status| {
            let n = count(report, status);
            (n > 0).then(|| {
                let mut part = paint.status(status, &format!("{n} {}", status.as_str()));
                if status == Status::Passed && report.summary.flaky > 0 {
                    part.push_str(&format!(" ({} flaky)", report.summary.flaky));
                }
                part
            })
        })
        .collect();
    let total = report.summary.total;
    let noun = if total == 1 { "test" } else { "tests" };
    // Precision loss only matters past 2^53 ms, some 285 000 years.
    #[expect(
        clippy::cast_precision_loss,
        reason = "wall times are far below 2^53 ms"
    )]
    let seconds = report.summary.wall_ms as f64 / 1000.0;
    if parts.is_empty() {
        format!("{total} {noun} ({seconds:.1} s)")
    } else {
        format!("{total} {noun}: {} ({seconds:.1} s)", parts.join(", "))
    }
}

fn count(report: &Report, status: Status) -> u32 {
    let s = &report.summary;
    match status {
        Status::Passed => s.passed,
        Status::Failed => s.failed,
        Status::Error => s.errored,
        Status::Timeout => s.timed_out,
        Status::Oom => s.oom,
        Status::Skipped => s.skipped,
        Status::Lost => s.lost,
        Status::Cancelled => s.cancelled,
    }
}

fn state_name(state: SuiteState) -> &'static str {
    match state {
        SuiteState::Running => "running",
        SuiteState::Complete => "complete",
        SuiteState::DeadlineExceeded => "deadline exceeded",
        SuiteState::Cancelled => "cancelled",
    }
}

/// Wraps text in ANSI styles, or leaves it alone when colour is off.
#[derive(Debug, Clone, Copy)]
struct Painter {
    color: bool,
}

impl Painter {
    fn wrap(self, code: &str, text: &str) -> String {
        if self.color {
            format!("\u{1b}[{code}m{text}\u{1b}[0m")
        } else {
            text.to_owned()
        }
    }

    fn bold(self, text: &str) -> String {
        self.wrap("1", text)
    }

    fn dim(self, text: &str) -> String {
        self.wrap("2", text)
    }

    fn status(self, status: Status, text: &str) -> String {
        let code = match status {
            Status::Passed => "32",
            Status::Failed | Status::Error | Status::Oom => "31",
            Status::Timeout | Status::Lost => "33",
            Status::Skipped | Status::Cancelled => "2",
        };
        self.wrap(code, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assemble;
    use crate::fixtures::{record, result};
    use isotest_protocol::result::CaseResult;

    fn mixed() -> Report {
        let mut bad = result("bad", 1, true, Status::Failed);
        bad.exit_code = Some(1);
        bad.stdout = (1..=12).map(|i| format!("line {i}\n")).collect();
        let mut slow = result("slow", 2, true, Status::Timeout);
        slow.reason = Some("exceeded its 1 s timeout".into());
        let mut cases = result("cases", 1, true, Status::Failed);
        cases.cases = vec![CaseResult {
            name: "test_sub".into(),
            classname: "tests.test_math".into(),
            file: None,
            status: CaseStatus::Failed,
            duration_ms: 3,
            message: Some("AssertionError: 3 != 4".into()),
            detail: None,
        }];
        let results = vec![
            result("ok", 1, true, Status::Passed),
            result("flaky", 1, false, Status::Failed),
            result("flaky", 2, true, Status::Passed),
            bad,
            result("slow", 1, false, Status::Timeout),
            slow,
            cases,
        ];
        assemble(
            &record(&["ok", "flaky", "bad", "slow", "cases", "gone"]),
            results,
            SuiteState::DeadlineExceeded,
        )
    }

    #[test]
    fn plain_snapshot() {
        insta::assert_snapshot!(terminal_summary(&mixed(), false));
    }

    #[test]
    fn color_only_adds_escapes() {
        let colored = terminal_summary(&mixed(), true);
        assert!(colored.contains("\u{1b}[31m"));
        let stripped = {
            let mut s = String::new();
            let mut rest = colored.as_str();
            while let Some(start) = rest.find('\u{1b}') {
                s.push_str(&rest[..start]);
                let end = rest[start..]
                    .find('m')
                    .map_or(rest.len(), |i| start + i + 1);
                rest = &rest[end..];
            }
            s.push_str(rest);
            s
        };
        assert_eq!(stripped, terminal_summary(&mixed(), false));
    }

    /// Many failures with messages of several lines: each keeps its layout under its
    /// test, and the summary stops after [`TESTS_SHOWN`] tests.
    #[test]
    fn long_messages_keep_their_indentation_and_many_failures_are_capped() {
        let names: Vec<String> = (0..25).map(|i| format!("t{i:02}")).collect();
        let results = names.iter().map(|name| {
            let mut r = result(name, 1, true, Status::Failed);
            r.reason = Some("assert left == right\n  left: 1\n right: 2".into());
            r.cases = vec![CaseResult {
                name: "test_eq".into(),
                classname: "tests".into(),
                file: None,
                status: CaseStatus::Failed,
                duration_ms: 3,
                message: Some("AssertionError: assert {'a': 1} == {'a': 2}\n  Differing items:\n  {'a': 1} != {'a': 2}".into()),
                detail: None,
            }];
            r
        });
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let report = assemble(&record(&refs), results, SuiteState::Complete);
        let text = terminal_summary(&report, false);
        assert_eq!(text.matches("FAILED t").count(), TESTS_SHOWN, "{text}");
        let first: String = text.lines().take(16).collect::<Vec<_>>().join("\n");
        let last: String = {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len() - 3..].join("\n")
        };
        insta::assert_snapshot!(format!("{first}\n[…]\n{last}"));
    }

    #[test]
    fn last_lines() {
        let table: [(&[(&str, Status)], &str); 3] = [
            (&[], "0 tests (0.0 s)"),
            (&[("a", Status::Passed)], "1 test: 1 passed (0.1 s)"),
            (
                &[
                    ("a", Status::Passed),
                    ("b", Status::Failed),
                    ("c", Status::Error),
                    ("d", Status::Timeout),
                ],
                "4 tests: 1 passed, 1 failed, 1 error, 1 timeout (0.1 s)",
            ),
        ];
        for (tests, want) in table {
            let names: Vec<&str> = tests.iter().map(|(n, _)| *n).collect();
            let results = tests.iter().map(|(n, s)| result(n, 1, true, *s));
            let report = assemble(&record(&names), results, SuiteState::Complete);
            let text = terminal_summary(&report, false);
            assert_eq!(text.lines().last(), Some(want));
        }
    }
}
