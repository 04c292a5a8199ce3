//! Node's built-in runner: `node --test` on inline `code` or one test file, with a JUnit
//! report for isotest and the spec reporter for people; discovery lists the files `node
//! --test` would run.

use isotest_protocol::manifest::{DiscoverEntry, TestBody, TestSpec};
use isotest_protocol::result::CaseResult;

use super::toolchain::path_str;
use super::verdict::{Exit, Observed, Verdict, judge_runner, require_report};
use super::{Adapter, ISOTEST_DIR, JUNIT_PATH, Plan, Toolchain, junit_cases};

/// The file inline `code` of a `node` test is written to.
pub const NODE_CODE_FILE: &str = "isotest.test.js";

/// The Node adapter.
pub(crate) struct Node;

/// `node --test` with a JUnit report for isotest and the spec reporter for people.
fn node_test(tools: &Toolchain) -> Vec<String> {
    vec![
        path_str(&tools.node),
        "--test".into(),
        "--test-reporter=junit".into(),
        format!("--test-reporter-destination=/workspace/{JUNIT_PATH}"),
        "--test-reporter=spec".into(),
        "--test-reporter-destination=stdout".into(),
    ]
}

impl Adapter for Node {
    fn lay_out(&self, test: &TestSpec, tools: &Toolchain, plan: &mut Plan) {
        plan.command = match &test.body {
            TestBody::Code(code) => {
                plan.file(NODE_CODE_FILE, code.as_bytes());
                let mut argv = node_test(tools);
                argv.push(NODE_CODE_FILE.into());
                argv
            }
            TestBody::TestId(file) => {
                let mut argv = node_test(tools);
                argv.push(file.clone());
                argv
            }
            TestBody::Command(argv) => argv.clone(),
        };
        // Node's reporter writes to its destination but does not make the directory.
        plan.file(&format!("{ISOTEST_DIR}/.keep"), b"");
    }

    fn report_path<'t>(&self, _test: &'t TestSpec) -> Option<&'t str> {
        Some(JUNIT_PATH)
    }

    fn cases(&self, seen: &Observed<'_>) -> (Vec<CaseResult>, Option<String>) {
        junit_cases(seen, "node")
    }

    fn verdict(&self, exit: Exit, cases: &[CaseResult], problem: Option<&str>) -> Verdict {
        require_report("node", judge_runner("node", exit, cases, &[1]), problem)
    }

    fn listing(&self, entry: &DiscoverEntry, _tools: &Toolchain) -> Vec<String> {
        let mut argv = vec!["/usr/bin/find".into()];
        if entry.paths.is_empty() {
            argv.push(".".into());
        }
        argv.extend(entry.paths.iter().cloned());
        argv.extend(
            ["-type", "f", "-not", "-path", "*/node_modules/*"]
                .into_iter()
                .map(str::to_owned),
        );
        argv
    }

    fn parse_listing(&self, entry: &DiscoverEntry, stdout: &str) -> Vec<String> {
        let mut files: Vec<String> = stdout
            .lines()
            .map(|l| l.strip_prefix("./").unwrap_or(l))
            .filter(|l| node_runs(l))
            .filter(|l| entry.filter.as_deref().is_none_or(|f| l.contains(f)))
            .map(str::to_owned)
            .collect();
        files.sort();
        files
    }
}

/// Whether `node --test` (Node 20) runs this file when given a directory: a `.js`,
/// `.cjs` or `.mjs` file named `*.test.*`, `*-test.*`, `*_test.*`, `test-*.*` or
/// `test.*`, or any such file under a `test` directory.
pub fn node_runs(path: &str) -> bool {
    let mut parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let Some(file) = parts.pop() else {
        return false;
    };
    let Some((stem, ext)) = file.rsplit_once('.') else {
        return false;
    };
    if !matches!(ext, "js" | "cjs" | "mjs") {
        return false;
    }
    parts.contains(&"test")
        || stem == "test"
        || stem.ends_with(".test")
        || stem.ends_with("-test")
        || stem.ends_with("_test")
        || stem.starts_with("test-")
}
