//! Jest: one test is one test file (Jest's unit of isolation, and what it lists), run by
//! one Jest process (so a crash ends the test, as it does in CI); per-case results from its
//! `--json` report, one case per entry of `testResults[].assertionResults[]`, named by its
//! `fullName` and classed by its test file, relative to the workspace (read by
//! `isotest_framework_reports::jest`); discovery by `--listTests`.

use isotest_framework_reports::jest::{WORKSPACE, parse};
use isotest_protocol::manifest::{DiscoverEntry, TestBody, TestSpec};
use isotest_protocol::result::CaseResult;

use super::toolchain::path_str;
use super::verdict::{Exit, Observed, Verdict, judge_runner, require_report};
use super::{Adapter, ISOTEST_DIR, Plan, Toolchain};

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
