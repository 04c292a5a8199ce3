//! The `junit` framework: any command (an argv, or inline `code` under `/bin/sh`) that writes
//! JUnit XML to `junit_path`; the cases come from that file, the verdict from the exit code.

use isotest_protocol::manifest::{TestBody, TestSpec};
use isotest_protocol::result::{CaseResult, Status};

use super::command::SHELL_CODE_FILE;
use super::verdict::{
    Exit, Observed, Verdict, all_skipped, append_problem, errored, failed_or_errored, has_failures,
    signal_name, verdict,
};
use super::{Adapter, JUNIT_PATH, Plan, Toolchain, cannot_run_test_id, junit_cases};

/// The `junit` adapter.
pub(crate) struct Junit;

impl Adapter for Junit {
    fn lay_out(&self, test: &TestSpec, _tools: &Toolchain, plan: &mut Plan) {
        plan.command = match &test.body {
            TestBody::Code(code) => {
                plan.file(SHELL_CODE_FILE, code.as_bytes());
                vec!["/bin/sh".into(), SHELL_CODE_FILE.into()]
            }
            TestBody::Command(argv) => argv.clone(),
            TestBody::TestId(_) => cannot_run_test_id(test.framework),
        };
    }

    fn report_path<'t>(&self, test: &'t TestSpec) -> Option<&'t str> {
        Some(test.junit_path.as_deref().unwrap_or(JUNIT_PATH))
    }

    fn cases(&self, seen: &Observed<'_>) -> (Vec<CaseResult>, Option<String>) {
        junit_cases(seen, "the command")
    }

    fn verdict(&self, exit: Exit, cases: &[CaseResult], problem: Option<&str>) -> Verdict {
        let judged = match (exit, problem) {
            (Exit::Code(0), None) if all_skipped(cases) => verdict(Status::Skipped, None),
            (Exit::Code(0), None) => verdict(Status::Passed, None),
            (Exit::Code(0), Some(problem)) => errored(&format!("the command passed but {problem}")),
            (Exit::Code(_), _) if has_failures(cases) => failed_or_errored(cases),
            (Exit::Code(code), None) if !cases.is_empty() => verdict(
                Status::Failed,
                Some(format!("exited with code {code} though no case failed")),
            ),
            (Exit::Code(code), _) => {
                verdict(Status::Failed, Some(format!("exited with code {code}")))
            }
            (Exit::Signal(sig), _) => errored(&format!(
                "the command crashed: killed by {}",
                signal_name(sig)
            )),
        };
        match problem {
            Some(problem) if !judged.status.is_success() => append_problem(judged, problem),
            _ => judged,
        }
    }
}
