//! The `command` framework: any argv, or inline `code` under `/bin/sh`, run in the
//! workspace; judged by its exit code alone.

use isotest_protocol::manifest::{TestBody, TestSpec};
use isotest_protocol::result::{CaseResult, Status};

use super::verdict::{Exit, Observed, Verdict, signal_name, verdict};
use super::{Adapter, Plan, Toolchain, cannot_run_test_id};

/// The file inline `code` of a `command` test is written to, and run by `/bin/sh`.
pub const SHELL_CODE_FILE: &str = "isotest_test.sh";

/// The `command` adapter.
pub(crate) struct Command;

impl Adapter for Command {
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

    fn cases(&self, _seen: &Observed<'_>) -> (Vec<CaseResult>, Option<String>) {
        (Vec::new(), None)
    }

    fn verdict(&self, exit: Exit, _cases: &[CaseResult], _problem: Option<&str>) -> Verdict {
        match exit {
            Exit::Code(0) => verdict(Status::Passed, None),
            Exit::Code(code) => verdict(Status::Failed, Some(format!("exited with code {code}"))),
            Exit::Signal(sig) => verdict(
                Status::Failed,
                Some(format!("killed by {}", signal_name(sig))),
            ),
        }
    }
}
