//! Per-case results from `go test -json` (or `test2json` over a test binary): one JSON event
//! a line (`run`, `output`, `pass`, `fail`, `skip`), each naming its package and test. A test
//! that started and never ended (its binary exited or crashed under it) is an error.

use serde::Deserialize;

use isotest_protocol::result::{CaseResult, CaseStatus};

/// The most output kept per case, as its failure detail.
const MAX_DETAIL: usize = 16 * 1024;

#[derive(Debug, Deserialize)]
struct Event {
    #[serde(rename = "Action")]
    action: String,
    #[serde(rename = "Package", default)]
    package: String,
    #[serde(rename = "Test", default)]
    test: Option<String>,
    #[serde(rename = "Elapsed", default)]
    elapsed: Option<f64>,
    #[serde(rename = "Output", default)]
    output: Option<String>,
}

/// Reads the event stream; lines that are not events (a build error printed before
/// any, say) are skipped.
pub fn parse(stdout: &str) -> Vec<CaseResult> {
    // (case, finished, output)
    let mut cases: Vec<(CaseResult, bool, String)> = Vec::new();
    for event in stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<Event>(l).ok())
    {
        let Some(test) = event.test else {
            continue;
        };
        let index = match cases
            .iter()
            .position(|(c, _, _)| c.name == test && c.classname == event.package)
        {
            Some(i) => i,
            None => {
                cases.push((
                    CaseResult {
                        name: test.clone(),
                        classname: event.package.clone(),
                        file: None,
                        status: CaseStatus::Passed,
                        duration_ms: 0,
                        message: None,
                        detail: None,
                    },
                    false,
                    String::new(),
                ));
                cases.len() - 1
            }
        };
        let (case, finished, output) = &mut cases[index];
        let status = match event.action.as_str() {
            "output" => {
                if let Some(text) = event.output
                    && output.len() < MAX_DETAIL
                {
                    output.push_str(&text);
                }
                continue;
            }
            "pass" => CaseStatus::Passed,
            "fail" => CaseStatus::Failed,
            "skip" => CaseStatus::Skipped,
            _ => continue,
        };
        case.status = status;
        *finished = true;
        if let Some(seconds) = event.elapsed
            && seconds.is_finite()
            && seconds > 0.0
        {
            case.duration_ms = (seconds * 1000.0).round() as u64;
        }
    }
    cases
        .into_iter()
        .map(|(mut case, finished, output)| {
            // The lines a person wants: the test's own, not the runner's markers.
            let body: Vec<&str> = output
                .lines()
                .filter(|l| !l.starts_with("=== ") && !l.trim_start().starts_with("--- "))
                .collect();
            if !finished {
                case.status = CaseStatus::Error;
                case.message =
                    Some("the test did not finish: its test binary exited or crashed".into());
            } else if matches!(case.status, CaseStatus::Failed | CaseStatus::Skipped) {
                case.message = body
                    .iter()
                    .map(|l| l.trim())
                    .find(|l| !l.is_empty())
                    .map(str::to_owned);
            }
            if case.status != CaseStatus::Passed && !body.is_empty() {
                case.detail = Some(body.join("\n"));
            }
            case
        })
        .collect()
}

/// The output events that belong to no test (build errors, `FAIL pkg`), as text.
pub fn package_output(stdout: &str) -> String {
    let events = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Event>(l).ok());
    let mut text = String::new();
    let mut any = false;
    for event in events {
        any = true;
        if event.test.is_none()
            && event.action == "output"
            && let Some(out) = event.output
        {
            text.push_str(&out);
        }
    }
    if any { text } else { stdout.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENTS: &str = r#"{"Action":"run","Package":"m/p","Test":"TestA"}
{"Action":"output","Package":"m/p","Test":"TestA","Output":"=== RUN   TestA\n"}
{"Action":"output","Package":"m/p","Test":"TestA","Output":"--- PASS: TestA (0.01s)\n"}
{"Action":"pass","Package":"m/p","Test":"TestA","Elapsed":0.01}
{"Action":"run","Package":"m/p","Test":"TestB"}
{"Action":"output","Package":"m/p","Test":"TestB","Output":"    b_test.go:12: got 2, want 3\n"}
{"Action":"fail","Package":"m/p","Test":"TestB","Elapsed":0}
{"Action":"run","Package":"m/p","Test":"TestC"}
{"Action":"output","Package":"m/p","Test":"TestC","Output":"    c_test.go:3: not today\n"}
{"Action":"skip","Package":"m/p","Test":"TestC","Elapsed":0}
{"Action":"run","Package":"m/q","Test":"TestD"}
{"Action":"output","Package":"m/q","Output":"FAIL\tm/q\t0.002s\n"}
{"Action":"fail","Package":"m/q","Elapsed":0.002}
not json at all
"#;

    #[test]
    fn events_become_cases() {
        let cases = parse(EVENTS);
        let got: Vec<(&str, &str, CaseStatus, Option<&str>)> = cases
            .iter()
            .map(|c| {
                (
                    c.classname.as_str(),
                    c.name.as_str(),
                    c.status,
                    c.message.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("m/p", "TestA", CaseStatus::Passed, None),
                (
                    "m/p",
                    "TestB",
                    CaseStatus::Failed,
                    Some("b_test.go:12: got 2, want 3")
                ),
                (
                    "m/p",
                    "TestC",
                    CaseStatus::Skipped,
                    Some("c_test.go:3: not today")
                ),
                (
                    "m/q",
                    "TestD",
                    CaseStatus::Error,
                    Some("the test did not finish: its test binary exited or crashed")
                ),
            ]
        );
        assert_eq!(cases[0].duration_ms, 10);
        assert_eq!(package_output(EVENTS), "FAIL\tm/q\t0.002s\n");
    }

    #[test]
    fn garbage_gives_no_cases() {
        assert!(parse("# m/p\n./a.go:3:1: syntax error\n").is_empty());
        assert!(parse(r#"{"Action": 3}"#).is_empty());
    }
}
