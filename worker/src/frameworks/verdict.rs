//! The shared vocabulary of judging: what a run produced ([`Observed`]), how a stage ended
//! ([`Exit`]), the resulting [`Verdict`], and the small rules several adapters share (a
//! runner whose failing exit code means "a case failed", a report that must be there).

use isotest_protocol::result::{CaseResult, CaseStatus, Stage, Status};

/// What a run produced, in the terms the adapters judge.
#[derive(Debug, Clone, Default)]
pub struct Observed<'a> {
    /// The setup stage's exit code, or `None` if there was none.
    pub setup: Option<Exit>,
    /// The test command's exit, or `None` if it never finished.
    pub command: Option<Exit>,
    pub teardown: Option<Exit>,
    pub stdout: &'a str,
    pub stderr: &'a str,
    /// The report file the framework was asked to write (JUnit XML, or Jest's JSON), or
    /// why it could not be read; `None` where the framework writes none.
    pub report: Option<Result<&'a [u8], String>>,
}

/// How a stage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// A verdict: the status, why, the stage that decided it, and the cases.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub status: Status,
    pub reason: Option<String>,
    pub stage: Option<Stage>,
    pub cases: Vec<CaseResult>,
}

/// A verdict of the test stage (no stage when it succeeded).
pub(crate) fn verdict(status: Status, reason: Option<String>) -> Verdict {
    Verdict {
        status,
        reason,
        stage: (!status.is_success()).then_some(Stage::Test),
        cases: Vec::new(),
    }
}

/// An `error` of the test stage.
pub(crate) fn errored(reason: &str) -> Verdict {
    verdict(Status::Error, Some(reason.to_owned()))
}

/// `exited with code 3`, `was killed by SIGSEGV (11)`.
pub(crate) fn describe(exit: Exit) -> String {
    match exit {
        Exit::Code(code) => format!("exited with code {code}"),
        Exit::Signal(sig) => format!("was killed by {}", signal_name(sig)),
    }
}

/// Failing cases make a failure; a run whose only problems are errors is an error.
pub(crate) fn failed_or_errored(cases: &[CaseResult]) -> Verdict {
    let failed = cases
        .iter()
        .filter(|c| matches!(c.status, CaseStatus::Failed | CaseStatus::Xpass))
        .count();
    let errors = cases
        .iter()
        .filter(|c| c.status == CaseStatus::Error)
        .count();
    match (failed, errors) {
        (0, 0) => verdict(Status::Failed, Some("exited with code 1".into())),
        (0, e) => verdict(
            Status::Error,
            Some(format!("{e} of {} cases errored", cases.len())),
        ),
        (f, _) => verdict(
            Status::Failed,
            Some(format!("{f} of {} cases failed", cases.len())),
        ),
    }
}

/// Whether there are cases and every one was skipped (or failed as expected).
pub(crate) fn all_skipped(cases: &[CaseResult]) -> bool {
    !cases.is_empty()
        && cases
            .iter()
            .all(|c| matches!(c.status, CaseStatus::Skipped | CaseStatus::Xfail))
}

/// Whether any case failed, errored or passed unexpectedly.
pub(crate) fn has_failures(cases: &[CaseResult]) -> bool {
    cases.iter().any(|c| {
        matches!(
            c.status,
            CaseStatus::Failed | CaseStatus::Error | CaseStatus::Xpass
        )
    })
}

/// A test runner whose `failing` exit codes mean "a test failed": failing cases make a
/// failure, and any other unhappy end is an error of the run (a build failure, a crash).
pub(crate) fn judge_runner(
    runner: &str,
    exit: Exit,
    cases: &[CaseResult],
    failing: &[i32],
) -> Verdict {
    match exit {
        Exit::Code(0) if all_skipped(cases) => verdict(Status::Skipped, None),
        Exit::Code(0) => verdict(Status::Passed, None),
        Exit::Code(code) if failing.contains(&code) && has_failures(cases) => {
            failed_or_errored(cases)
        }
        Exit::Code(code) if cases.is_empty() => errored(&format!(
            "{runner} exited with code {code} before running any test to a result"
        )),
        Exit::Code(code) => errored(&format!(
            "{runner} exited with code {code} though no case failed; the test process crashed"
        )),
        Exit::Signal(sig) => errored(&format!(
            "the test process crashed: killed by {}",
            signal_name(sig)
        )),
    }
}

/// A runner that was asked for a report and gave none (or an unreadable one) has not shown
/// what its cases did: a pass is not proven, and a failure says why.
pub(crate) fn require_report(runner: &str, verdict: Verdict, problem: Option<&str>) -> Verdict {
    let Some(problem) = problem else {
        return verdict;
    };
    if verdict.status.is_success() {
        Verdict {
            status: Status::Error,
            reason: Some(format!("{runner} passed but {problem}")),
            stage: Some(Stage::Test),
            cases: Vec::new(),
        }
    } else {
        append_problem(verdict, problem)
    }
}

/// Adds a report problem to a verdict's reason.
pub(crate) fn append_problem(mut verdict: Verdict, problem: &str) -> Verdict {
    let reason = verdict.reason.take().unwrap_or_default();
    verdict.reason = Some(format!("{reason}; {problem}"));
    verdict
}

/// The first line of a failed run's output that reads like an error, for the reason.
pub(crate) fn first_error_line(text: &str) -> Option<String> {
    let mut lines = text.lines().map(str::trim);
    if let Some(crash) = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("process didn't exit successfully"))
    {
        // cargo's word on a test binary that died (a signal, an exit() call).
        return Some(crash.chars().take(300).collect());
    }
    lines
        .find(|l| {
            !l.is_empty()
                && (l.contains("error")
                    || l.contains("Error")
                    || l.contains(".go:")
                    || l.contains("process didn't exit"))
        })
        .map(|l| l.chars().take(300).collect())
}

/// `SIGSEGV (11)`, or the number alone for a signal without a common name.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        31 => "SIGSYS",
        _ => return format!("signal {sig}"),
    };
    format!("{name} ({sig})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(status: CaseStatus) -> CaseResult {
        CaseResult {
            name: "c".into(),
            classname: "k".into(),
            file: None,
            status,
            duration_ms: 0,
            message: None,
            detail: None,
        }
    }

    #[test]
    fn failed_or_errored_counts_cases() {
        let v = failed_or_errored(&[
            case(CaseStatus::Passed),
            case(CaseStatus::Failed),
            case(CaseStatus::Error),
        ]);
        assert_eq!(v.status, Status::Failed);
        assert_eq!(v.reason.as_deref(), Some("1 of 3 cases failed"));
    }
}
