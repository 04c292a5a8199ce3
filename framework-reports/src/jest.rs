//! Per-case results from Jest's `--json` report: one case per entry of
//! `testResults[].assertionResults[]`, named by its `fullName` and classed by its test file,
//! relative to the workspace.

use isotest_protocol::result::{CaseResult, CaseStatus};
use serde::Deserialize;

/// The most failure text kept per case.
const MAX_DETAIL: usize = 16 * 1024;
/// Where the sandbox puts the workspace; Jest reports absolute paths under it.
pub const WORKSPACE: &str = "/workspace/";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    #[serde(default)]
    test_results: Vec<FileResult>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileResult {
    name: String,
    #[serde(default)]
    assertion_results: Vec<Assertion>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Assertion {
    full_name: String,
    status: String,
    #[serde(default)]
    duration: Option<f64>,
    #[serde(default)]
    failure_messages: Vec<String>,
}

/// Reads the cases of a Jest `--json` report.
///
/// # Errors
///
/// Returns the JSON reader's message when the report is not Jest's JSON.
pub fn parse(json: &[u8]) -> Result<Vec<CaseResult>, String> {
    let report: Report = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    Ok(report
        .test_results
        .into_iter()
        .flat_map(|file| {
            let path = file
                .name
                .strip_prefix(WORKSPACE)
                .unwrap_or(&file.name)
                .to_owned();
            file.assertion_results.into_iter().map(move |a| {
                let status = match a.status.as_str() {
                    "passed" => CaseStatus::Passed,
                    "failed" => CaseStatus::Failed,
                    // pending (`.skip`), skipped, todo and disabled: not run.
                    _ => CaseStatus::Skipped,
                };
                let detail = a.failure_messages.join("\n");
                CaseResult {
                    name: a.full_name,
                    classname: path.clone(),
                    file: Some(path.clone()),
                    status,
                    // Jest reports whole milliseconds, or nothing for a test not run.
                    duration_ms: a.duration.unwrap_or(0.0).max(0.0) as u64,
                    message: detail
                        .lines()
                        .map(str::trim)
                        .find(|l| !l.is_empty())
                        .map(|l| l.chars().take(300).collect()),
                    detail: (!detail.is_empty()).then(|| detail.chars().take(MAX_DETAIL).collect()),
                }
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_becomes_a_case_of_its_file() {
        let json = br#"{"numFailedTests":1,"testResults":[{"name":"/workspace/test/a.test.js","status":"failed","assertionResults":[
            {"ancestorTitles":["math"],"fullName":"math passes","status":"passed","title":"passes","duration":2,"failureMessages":[]},
            {"ancestorTitles":["math"],"fullName":"math fails","status":"failed","title":"fails","duration":3,"failureMessages":["Error: expect(received).toBe(expected)\n    at x"]},
            {"ancestorTitles":[],"fullName":"later","status":"pending","title":"later","duration":null,"failureMessages":[]},
            {"ancestorTitles":[],"fullName":"some day","status":"todo","title":"some day","failureMessages":[]}
        ]},{"name":"/workspace/test/load.test.js","status":"failed","assertionResults":[],"failureMessage":"SyntaxError"}]}"#;
        let cases = parse(json).expect("parses");
        let got: Vec<(&str, &str, CaseStatus, u64)> = cases
            .iter()
            .map(|c| {
                (
                    c.classname.as_str(),
                    c.name.as_str(),
                    c.status,
                    c.duration_ms,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("test/a.test.js", "math passes", CaseStatus::Passed, 2),
                ("test/a.test.js", "math fails", CaseStatus::Failed, 3),
                ("test/a.test.js", "later", CaseStatus::Skipped, 0),
                ("test/a.test.js", "some day", CaseStatus::Skipped, 0),
            ]
        );
        assert_eq!(
            cases[1].message.as_deref(),
            Some("Error: expect(received).toBe(expected)")
        );
        assert!(cases[0].detail.is_none());
    }

    #[test]
    fn other_json_is_refused() {
        assert!(parse(b"<testsuites/>").is_err());
        assert!(parse(b"{\"testResults\": 3}").is_err());
    }
}
