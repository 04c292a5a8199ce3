//! pytest: inline `code` as `test_isotest.py`, one node id, or the user's own argv; per-case
//! results from the JUnit XML pytest is asked to write; discovery by `--collect-only -q`.

use isotest_protocol::manifest::{DiscoverEntry, TestBody, TestSpec};
use isotest_protocol::result::{CaseResult, Status};

use super::toolchain::path_str;
use super::verdict::{
    Exit, Observed, Verdict, all_skipped, errored, failed_or_errored, require_report, signal_name,
    verdict,
};
use super::{Adapter, JUNIT_PATH, Plan, Toolchain, junit_cases};
use crate::warm::WarmPlan;

/// The file inline `code` is written to (pytest and unittest import it by this name).
pub const PYTHON_CODE_FILE: &str = "test_isotest.py";

/// The pytest adapter.
pub(crate) struct Pytest;

/// The pytest options that make it write the JUnit report isotest reads.
pub(crate) fn junit_opts() -> [String; 5] {
    [
        format!("--junitxml=/workspace/{JUNIT_PATH}"),
        "-o".into(),
        "junit_family=xunit1".into(),
        "-p".into(),
        "no:cacheprovider".into(),
    ]
}

/// `python -m pytest -q` with the JUnit options, then `target`.
fn pytest_argv(tools: &Toolchain, target: &str) -> Vec<String> {
    let mut argv: Vec<String> = vec![
        path_str(&tools.python),
        "-m".into(),
        "pytest".into(),
        "-q".into(),
    ];
    argv.extend(junit_opts());
    argv.push(target.to_owned());
    argv
}

impl Adapter for Pytest {
    fn tool_env(&self, _tools: &Toolchain, set: &mut dyn FnMut(&str, String)) {
        // The root file system is read-only: spare Python the failed cache writes.
        set("PYTHONDONTWRITEBYTECODE", "1".into());
    }

    fn lay_out(&self, test: &TestSpec, tools: &Toolchain, plan: &mut Plan) {
        plan.command = match &test.body {
            TestBody::Code(code) => {
                plan.file(PYTHON_CODE_FILE, code.as_bytes());
                pytest_argv(tools, PYTHON_CODE_FILE)
            }
            TestBody::TestId(id) => pytest_argv(tools, id),
            TestBody::Command(argv) => {
                // The user's own pytest invocation: extend it through the variable pytest
                // reads, so wrappers (tox, make, scripts) still produce the report.
                let junit = junit_opts().join(" ");
                let addopts = match plan.env.get("PYTEST_ADDOPTS") {
                    Some(own) => format!("{own} {junit}"),
                    None => junit,
                };
                plan.env.insert("PYTEST_ADDOPTS".into(), addopts);
                argv.clone()
            }
        };
    }

    fn report_path<'t>(&self, _test: &'t TestSpec) -> Option<&'t str> {
        Some(JUNIT_PATH)
    }

    fn cases(&self, seen: &Observed<'_>) -> (Vec<CaseResult>, Option<String>) {
        junit_cases(seen, "it")
    }

    fn verdict(&self, exit: Exit, cases: &[CaseResult], problem: Option<&str>) -> Verdict {
        let judged = match exit {
            Exit::Code(0) if all_skipped(cases) => verdict(Status::Skipped, None),
            Exit::Code(0) => verdict(Status::Passed, None),
            Exit::Code(1) => failed_or_errored(cases),
            Exit::Code(2) => {
                errored("pytest was interrupted (exit code 2: a collection or usage error)")
            }
            Exit::Code(3) => errored("pytest hit an internal error (exit code 3)"),
            Exit::Code(4) => errored("pytest was called wrongly (exit code 4)"),
            Exit::Code(5) => errored("pytest collected no tests (exit code 5)"),
            Exit::Code(code) => errored(&format!("pytest exited with code {code}")),
            Exit::Signal(sig) => errored(&format!(
                "the interpreter crashed: killed by {}",
                signal_name(sig)
            )),
        };
        require_report("pytest", judged, problem)
    }

    fn warm(&self, test: &TestSpec, tools: &Toolchain) -> Result<Option<WarmPlan>, String> {
        let TestBody::TestId(id) = &test.body else {
            return Err("only a test id starts warm (inline code and commands start cold)".into());
        };
        // A node id is its file, then `::` and the test's path in it.
        let Some((file, _)) = id.split_once("::") else {
            return Err(format!("`{id}` names no test inside a file"));
        };
        let mut command = vec![
            path_str(&tools.python),
            "-c".into(),
            crate::warm::program(super::PYTEST_ZYGOTE),
            "-q".into(),
        ];
        command.extend(junit_opts());
        command.push(file.to_owned());
        Ok(Some(WarmPlan {
            group: file.to_owned(),
            command,
            request: serde_json::json!({ "test_id": id }),
        }))
    }

    fn warm_report<'r>(&self, report: &'r [u8]) -> Result<Option<&'r [u8]>, String> {
        if report.starts_with(b"not collected") {
            return Err("the warm interpreter did not collect this id".into());
        }
        Ok(Some(report))
    }

    fn listing(&self, entry: &DiscoverEntry, tools: &Toolchain) -> Vec<String> {
        let mut argv = vec![
            path_str(&tools.python),
            "-m".into(),
            "pytest".into(),
            "--collect-only".into(),
            "-q".into(),
            "-p".into(),
            "no:cacheprovider".into(),
        ];
        if let Some(f) = &entry.filter {
            argv.extend(["-k".into(), f.clone()]);
        }
        argv.extend(entry.paths.iter().cloned());
        argv
    }

    fn parse_listing(&self, _entry: &DiscoverEntry, stdout: &str) -> Vec<String> {
        // Ids first, then a blank line and the count.
        stdout
            .lines()
            .take_while(|l| !l.trim().is_empty())
            .filter(|l| l.contains("::"))
            .map(str::to_owned)
            .collect()
    }
}
