//! Per-case results from Rust's libtest as `cargo test` (or a test binary run alone) prints
//! them: `test NAME ... ok`, `... FAILED`, `... ignored[, reason]`, then a `---- NAME stdout
//! ----` section per failure. A test whose line has no outcome was running when its binary
//! died.

use isotest_protocol::result::{CaseResult, CaseStatus};
/// The most failure text kept per case.
const MAX_DETAIL: usize = 16 * 1024;

/// Reads every binary's results from cargo's stdout.
pub fn parse(stdout: &str) -> Vec<CaseResult> {
    let mut cases: Vec<CaseResult> = Vec::new();
    let mut section: Option<(String, String)> = None;
    let flush = |cases: &mut Vec<CaseResult>, section: Option<(String, String)>| {
        if let Some((name, text)) = section
            && let Some(case) = cases
                .iter_mut()
                .rev()
                .find(|c| c.name == name && c.detail.is_none() && c.status == CaseStatus::Failed)
        {
            let text = text.trim().to_owned();
            case.message = panic_message(&text);
            case.detail = (!text.is_empty()).then(|| text.chars().take(MAX_DETAIL).collect());
        }
    };
    for line in stdout.lines() {
        if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|l| l.strip_suffix(" stdout ----"))
        {
            flush(&mut cases, section.take());
            section = Some((name.to_owned(), String::new()));
            continue;
        }
        if let Some((_, text)) = &mut section {
            if line == "failures:" || line.starts_with("test result: ") {
                flush(&mut cases, section.take());
            } else {
                text.push_str(line);
                text.push('\n');
            }
            continue;
        }
        let Some(rest) = line.strip_prefix("test ") else {
            continue;
        };
        let Some((name, outcome)) = rest.split_once(" ... ") else {
            // `test NAME ... ` with the outcome still to come: the binary died under it.
            if let Some(name) = rest.strip_suffix(" ...") {
                cases.push(case(name, CaseStatus::Error, Some(crashed())));
            }
            continue;
        };
        let outcome = outcome.trim();
        let (status, message) = match outcome {
            "ok" => (CaseStatus::Passed, None),
            "FAILED" => (CaseStatus::Failed, None),
            "" => (CaseStatus::Error, Some(crashed())),
            other => match other.strip_prefix("ignored") {
                Some(reason) => {
                    let reason = reason.trim_start_matches(',').trim();
                    (
                        CaseStatus::Skipped,
                        (!reason.is_empty()).then(|| reason.to_owned()),
                    )
                }
                // `bench`, or a line that only looks like a result.
                None => continue,
            },
        };
        cases.push(case(name, status, message));
    }
    flush(&mut cases, section.take());
    cases
}

/// The panic's message: `thread 'x' panicked at 'MESSAGE', file:line` (Rust before
/// 1.73), or the line after `thread 'x' panicked at file:line:col:`; else the first line.
fn panic_message(text: &str) -> Option<String> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut first = None;
    while let Some(line) = lines.next() {
        first.get_or_insert(line);
        if let Some((_, rest)) = line.split_once("panicked at '") {
            let message = rest.rsplit_once("', ").map_or(rest, |(m, _)| m);
            return Some(message.trim_end_matches('\'').to_owned());
        }
        if line.starts_with("thread '") && line.contains("panicked at ") {
            return lines.next().map(str::to_owned);
        }
    }
    first.map(str::to_owned)
}

fn crashed() -> String {
    "the test did not finish: its test binary exited or crashed".into()
}

fn case(name: &str, status: CaseStatus, message: Option<String>) -> CaseResult {
    // The name is the whole path libtest prints (what `--exact` takes); libtest names
    // no class, and the binary is not in its output.
    CaseResult {
        name: name.to_owned(),
        classname: String::new(),
        file: None,
        status,
        duration_ms: 0,
        message,
        detail: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "
running 4 tests
test tests::skipped ... ignored, not today
test tests::passes ... ok
test tests::fails ... FAILED
test tests::errors ... FAILED

failures:

---- tests::errors stdout ----
Error: \"broke\"

---- tests::fails stdout ----

thread 'tests::fails' panicked at src/lib.rs:16:9:
assertion `left == right` failed: arithmetic
  left: 2

failures:
    tests::errors
    tests::fails

test result: FAILED. 1 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out

running 1 test
test crashes_the_binary ... ";

    #[test]
    fn lines_and_sections_become_cases() {
        let cases = parse(OUTPUT);
        let got: Vec<(&str, CaseStatus, Option<&str>)> = cases
            .iter()
            .map(|c| (c.name.as_str(), c.status, c.message.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("tests::skipped", CaseStatus::Skipped, Some("not today")),
                ("tests::passes", CaseStatus::Passed, None),
                (
                    "tests::fails",
                    CaseStatus::Failed,
                    Some("assertion `left == right` failed: arithmetic")
                ),
                (
                    "tests::errors",
                    CaseStatus::Failed,
                    Some("Error: \"broke\"")
                ),
                (
                    "crashes_the_binary",
                    CaseStatus::Error,
                    Some("the test did not finish: its test binary exited or crashed")
                ),
            ]
        );
        let old_rust = "---- t stdout ----\nthread 't' panicked at 'assertion failed: `(left == right)`\n  left: `1`,', src/lib.rs:3:5\n";
        assert_eq!(
            panic_message(old_rust).as_deref(),
            Some("assertion failed: `(left == right)`")
        );
        assert!(
            cases[2]
                .detail
                .as_deref()
                .is_some_and(|d| d.contains("left: 2"))
        );
    }
}
