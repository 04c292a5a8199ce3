//! Jest: one test is one test file (Jest's unit of isolation, and what it lists), run by
//! one Jest process (so a crash ends the test, as it does in CI); per-case results from its
//! `--json` report, one case per entry of `testResults[].assertionResults[]`, named by its
//! `fullName` and classed by its test file, relative to the workspace; discovery by
//! `--listTests`.

use isotest_protocol::manifest::{DiscoverEntry, TestBody, TestSpec};

use super::toolchain::path_str;
use super::verdict::{Exit, Observed, Verdict, judge_runner, require_report};
use super::{Adapter, ISOTEST_DIR, Plan, Toolchain};
use isotest_protocol::result::{CaseResult, CaseStatus};
use serde::Deserialize;

/// Where Jest is told to write its `--json` report, relative to the workspace.
pub const JEST_JSON_PATH: &str = ".isotest/jest.json";
/// The file inline `code` of a `jest` test is written to.
pub const JEST_CODE_FILE: &str = "isotest.test.js";

/// The Jest adapter.
pub(crate) struct Jest;

/// Jest, one process for the whole run, with its JSON report for isotest and the default
/// reporter for people.
fn jest_command(tools: &Toolchain) -> Vec<String> {
    vec![
        path_str(&tools.node),
        path_str(&tools.jest),
        "--ci".into(),
        "--runInBand".into(),
        "--watchman=false".into(),
        "--reporters=default".into(),
        "--json".into(),
        format!("--outputFile=/workspace/{JEST_JSON_PATH}"),
    ]
}

impl Adapter for Jest {
    fn tool_env(&self, _tools: &Toolchain, set: &mut dyn FnMut(&str, String)) {
        // The real home is not in the sandbox; Jest's cache is in the temp dir.
        set("HOME", "/tmp".into());
    }

    fn lay_out(&self, test: &TestSpec, tools: &Toolchain, plan: &mut Plan) {
        let file = match &test.body {
            TestBody::Code(code) => {
                plan.file(JEST_CODE_FILE, code.as_bytes());
                JEST_CODE_FILE.to_owned()
            }
            TestBody::TestId(file) => file.clone(),
            TestBody::Command(argv) => {
                plan.command = argv.clone();
                plan.file(&format!("{ISOTEST_DIR}/.keep"), b"");
                return;
            }
        };
        let mut argv = jest_command(tools);
        argv.extend(["--runTestsByPath".into(), file]);
        plan.command = argv;
        // Jest writes to its output file but does not make the directory.
        plan.file(&format!("{ISOTEST_DIR}/.keep"), b"");
    }

    fn report_path<'t>(&self, _test: &'t TestSpec) -> Option<&'t str> {
        Some(JEST_JSON_PATH)
    }

    fn cases(&self, seen: &Observed<'_>) -> (Vec<CaseResult>, Option<String>) {
        match &seen.report {
            Some(Ok(json)) => match parse(json) {
                Ok(cases) => (cases, None),
                Err(e) => (
                    Vec::new(),
                    Some(format!("its JSON report is unreadable: {e}")),
                ),
            },
            Some(Err(why)) => (
                Vec::new(),
                Some(format!("jest wrote no JSON report ({why})")),
            ),
            None => (Vec::new(), None),
        }
    }

    fn verdict(&self, exit: Exit, cases: &[CaseResult], problem: Option<&str>) -> Verdict {
        require_report("jest", judge_runner("jest", exit, cases, &[1]), problem)
    }

    fn listing(&self, entry: &DiscoverEntry, tools: &Toolchain) -> Vec<String> {
        // Paths are Jest's own path patterns; the filter is applied to its listing.
        let mut argv = vec![
            path_str(&tools.node),
            path_str(&tools.jest),
            "--listTests".into(),
            "--ci".into(),
            "--watchman=false".into(),
        ];
        argv.extend(entry.paths.iter().cloned());
        argv
    }

    fn parse_listing(&self, entry: &DiscoverEntry, stdout: &str) -> Vec<String> {
        // Absolute paths, one a line, in no set order.
        let mut files: Vec<String> = stdout
            .lines()
            .map(str::trim)
            .filter_map(|l| l.strip_prefix(WORKSPACE))
            .filter(|l| entry.filter.as_deref().is_none_or(|f| l.contains(f)))
            .map(str::to_owned)
            .collect();
        files.sort();
        files
    }
}

/// The most failure text kept per case.
const MAX_DETAIL: usize = 16 * 1024;
/// Where the sandbox puts the workspace; Jest reports absolute paths under it.
const WORKSPACE: &str = "/workspace/";

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
