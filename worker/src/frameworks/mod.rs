//! Framework adapters: how a test of each framework is laid out in the workspace and
//! run ([`plan`]), and how its output becomes per-case results and a verdict
//! ([`judge`]). The sandbox knows nothing of frameworks; this module is all of it.

mod junit;
mod unittest;

use std::collections::BTreeMap;
use std::path::PathBuf;

use isotest_protocol::manifest::{Framework, TestBody, TestSpec};
use isotest_protocol::result::{CaseResult, CaseStatus, Stage, Status};

pub use junit::{JunitError, parse as parse_junit};

/// Where a framework that writes JUnit XML is told to write it, relative to the workspace.
pub const JUNIT_PATH: &str = ".isotest/junit.xml";
/// The file inline `code` is written to (pytest and unittest import it by this name).
pub const PYTHON_CODE_FILE: &str = "test_isotest.py";
/// The file inline `code` of a `command` test is written to, and run by `/bin/sh`.
pub const SHELL_CODE_FILE: &str = "isotest_test.sh";

/// Worker-wide settings the adapters need.
#[derive(Debug, Clone)]
pub struct Toolchain {
    /// The Python interpreter, by absolute path: a shim on PATH can cost 100 ms a start.
    pub python: PathBuf,
}

impl Default for Toolchain {
    fn default() -> Self {
        let system = PathBuf::from("/usr/bin/python3");
        let python = if system.exists() {
            system
        } else {
            PathBuf::from("python3")
        };
        Toolchain { python }
    }
}

/// How to run one test: what to write, what to exec, what to read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub files: Vec<(String, Vec<u8>)>,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub collect: Vec<String>,
}

/// Lays out a test for its framework.
pub fn plan(test: &TestSpec, tools: &Toolchain) -> Plan {
    let mut files: Vec<(String, Vec<u8>)> = test
        .files
        .iter()
        .map(|f| (f.path.clone(), f.content.clone().into_bytes()))
        .collect();
    let mut env = test.env.clone();
    let python = tools.python.to_string_lossy().into_owned();
    let mut collect = Vec::new();
    let command = match (test.framework, &test.body) {
        (Framework::Pytest, body) => {
            collect.push(JUNIT_PATH.to_owned());
            let junit_opts = format!(
                "--junitxml=/workspace/{JUNIT_PATH} -o junit_family=xunit1 -p no:cacheprovider"
            );
            match body {
                TestBody::Code(code) => {
                    files.push((PYTHON_CODE_FILE.to_owned(), code.clone().into_bytes()));
                    let mut argv: Vec<String> =
                        vec![python, "-m".into(), "pytest".into(), "-q".into()];
                    argv.extend(junit_opts.split(' ').map(str::to_owned));
                    argv.push(PYTHON_CODE_FILE.into());
                    argv
                }
                TestBody::Command(argv) => {
                    // The user's own pytest invocation: extend it through the variable pytest
                    // reads, so wrappers (tox, make, scripts) still produce the report.
                    let addopts = match env.get("PYTEST_ADDOPTS") {
                        Some(own) => format!("{own} {junit_opts}"),
                        None => junit_opts,
                    };
                    env.insert("PYTEST_ADDOPTS".into(), addopts);
                    argv.clone()
                }
            }
        }
        (Framework::Unittest, TestBody::Code(code)) => {
            files.push((PYTHON_CODE_FILE.to_owned(), code.clone().into_bytes()));
            vec![
                python,
                "-m".into(),
                "unittest".into(),
                "-v".into(),
                "test_isotest".into(),
            ]
        }
        (Framework::Command, TestBody::Code(code)) => {
            files.push((SHELL_CODE_FILE.to_owned(), code.clone().into_bytes()));
            vec!["/bin/sh".into(), SHELL_CODE_FILE.into()]
        }
        (Framework::Unittest | Framework::Command, TestBody::Command(argv)) => argv.clone(),
    };
    if test.framework != Framework::Command {
        // The root file system is read-only: spare Python the failed cache writes.
        env.entry("PYTHONDONTWRITEBYTECODE".into())
            .or_insert_with(|| "1".into());
    }
    Plan {
        files,
        command,
        env,
        collect,
    }
}

/// What a run produced, in the terms the adapters judge.
#[derive(Debug, Clone, Default)]
pub struct Observed<'a> {
    /// The setup stage's exit code, or `None` if there was none.
    pub setup: Option<Exit>,
    /// The test command's exit, or `None` if it never finished.
    pub command: Option<Exit>,
    pub teardown: Option<Exit>,
    pub stderr: &'a str,
    /// The JUnit XML the framework wrote, where it was asked to write one.
    pub junit: Option<Result<&'a [u8], String>>,
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

/// Judges a run that was not killed by a limit (timeouts and OOM are judged by the caller).
pub fn judge(framework: Framework, seen: &Observed<'_>) -> Verdict {
    if let Some(exit) = seen.setup
        && exit != Exit::Code(0)
    {
        return Verdict {
            status: Status::Error,
            reason: Some(format!("setup {}", describe(exit))),
            stage: Some(Stage::Setup),
            cases: Vec::new(),
        };
    }
    let Some(exit) = seen.command else {
        return Verdict {
            status: Status::Error,
            reason: Some("the test command did not run to completion".into()),
            stage: Some(Stage::Test),
            cases: Vec::new(),
        };
    };
    let (cases, report_problem) = match framework {
        Framework::Pytest => match &seen.junit {
            Some(Ok(xml)) => match parse_junit(xml) {
                Ok(cases) => (cases, None),
                Err(e) => (
                    Vec::new(),
                    Some(format!("its JUnit report is unreadable: {e}")),
                ),
            },
            Some(Err(why)) => (
                Vec::new(),
                Some(format!("it wrote no JUnit report ({why})")),
            ),
            None => (Vec::new(), None),
        },
        Framework::Unittest => (unittest::parse_verbose(seen.stderr), None),
        Framework::Command => (Vec::new(), None),
    };
    let mut verdict = match framework {
        Framework::Command => judge_command(exit),
        Framework::Pytest => judge_pytest(exit, &cases),
        Framework::Unittest => judge_unittest(exit, &cases),
    };
    if verdict.status == Status::Passed
        && let Some(problem) = report_problem
        && framework == Framework::Pytest
    {
        verdict = Verdict {
            status: Status::Error,
            reason: Some(format!("pytest passed but {problem}")),
            stage: Some(Stage::Test),
            cases: Vec::new(),
        };
    }
    verdict.cases = cases;
    if verdict.status.is_success()
        && let Some(exit) = seen.teardown
        && exit != Exit::Code(0)
    {
        verdict.status = Status::Error;
        verdict.reason = Some(format!("teardown {}", describe(exit)));
        verdict.stage = Some(Stage::Teardown);
    }
    verdict
}

fn judge_command(exit: Exit) -> Verdict {
    match exit {
        Exit::Code(0) => verdict(Status::Passed, None),
        Exit::Code(code) => verdict(Status::Failed, Some(format!("exited with code {code}"))),
        Exit::Signal(sig) => verdict(
            Status::Failed,
            Some(format!("killed by {}", signal_name(sig))),
        ),
    }
}

fn judge_pytest(exit: Exit, cases: &[CaseResult]) -> Verdict {
    match exit {
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
    }
}

fn judge_unittest(exit: Exit, cases: &[CaseResult]) -> Verdict {
    match exit {
        Exit::Code(0) if all_skipped(cases) => verdict(Status::Skipped, None),
        Exit::Code(0) => verdict(Status::Passed, None),
        Exit::Code(1) if cases.is_empty() => {
            errored("unittest exited with code 1 before running any test")
        }
        Exit::Code(1) => failed_or_errored(cases),
        Exit::Code(5) => errored("unittest ran no tests (exit code 5)"),
        Exit::Code(code) => errored(&format!("unittest exited with code {code}")),
        Exit::Signal(sig) => errored(&format!(
            "the interpreter crashed: killed by {}",
            signal_name(sig)
        )),
    }
}

/// Failing cases make a failure; a run whose only problems are errors is an error.
fn failed_or_errored(cases: &[CaseResult]) -> Verdict {
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

fn all_skipped(cases: &[CaseResult]) -> bool {
    !cases.is_empty()
        && cases
            .iter()
            .all(|c| matches!(c.status, CaseStatus::Skipped | CaseStatus::Xfail))
}

fn verdict(status: Status, reason: Option<String>) -> Verdict {
    Verdict {
        status,
        reason,
        stage: (!status.is_success()).then_some(Stage::Test),
        cases: Vec::new(),
    }
}

fn errored(reason: &str) -> Verdict {
    verdict(Status::Error, Some(reason.to_owned()))
}

fn describe(exit: Exit) -> String {
    match exit {
        Exit::Code(code) => format!("exited with code {code}"),
        Exit::Signal(sig) => format!("was killed by {}", signal_name(sig)),
    }
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
    use isotest_protocol::manifest::FileSpec;

    fn spec(framework: Framework, body: TestBody) -> TestSpec {
        TestSpec {
            name: "t".into(),
            body,
            framework,
            timeout_ms: 1_000,
            env: BTreeMap::from([("MINE".to_owned(), "1".to_owned())]),
            files: vec![FileSpec {
                path: "data/x.txt".into(),
                content: "x".into(),
            }],
            setup: None,
            teardown: None,
            retries: 0,
            environment: None,
        }
    }

    fn tools() -> Toolchain {
        Toolchain {
            python: "/usr/bin/python3".into(),
        }
    }

    #[test]
    fn pytest_code_is_written_and_reported_as_junit() {
        let p = plan(
            &spec(
                Framework::Pytest,
                TestBody::Code("def test_a(): pass".into()),
            ),
            &tools(),
        );
        assert_eq!(p.command[..3], ["/usr/bin/python3", "-m", "pytest"]);
        assert!(
            p.command
                .contains(&format!("--junitxml=/workspace/{JUNIT_PATH}"))
        );
        assert_eq!(p.command.last().map(String::as_str), Some(PYTHON_CODE_FILE));
        assert_eq!(p.collect, [JUNIT_PATH]);
        assert!(p.files.iter().any(|(path, _)| path == PYTHON_CODE_FILE));
        assert!(p.files.iter().any(|(path, _)| path == "data/x.txt"));
        assert_eq!(p.env.get("MINE").map(String::as_str), Some("1"));
    }

    #[test]
    fn pytest_command_keeps_the_users_argv_and_addopts() {
        let mut test = spec(
            Framework::Pytest,
            TestBody::Command(vec!["pytest".into(), "tests/".into()]),
        );
        test.env.insert("PYTEST_ADDOPTS".into(), "-x".into());
        let p = plan(&test, &tools());
        assert_eq!(p.command, ["pytest", "tests/"]);
        let addopts = p.env.get("PYTEST_ADDOPTS").expect("set");
        assert!(
            addopts.starts_with("-x ") && addopts.contains("--junitxml="),
            "{addopts}"
        );
    }

    #[test]
    fn command_code_runs_under_sh_and_command_argv_as_is() {
        let p = plan(
            &spec(Framework::Command, TestBody::Code("exit 0".into())),
            &tools(),
        );
        assert_eq!(p.command, ["/bin/sh", SHELL_CODE_FILE]);
        assert!(p.collect.is_empty());
        assert!(!p.env.contains_key("PYTHONDONTWRITEBYTECODE"));
        let p = plan(
            &spec(Framework::Command, TestBody::Command(vec!["true".into()])),
            &tools(),
        );
        assert_eq!(p.command, ["true"]);
    }

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
    fn verdicts_follow_stage_exits_and_cases() {
        let xml_pass = br#"<testsuites><testsuite><testcase classname="m" name="a" time="0.1"/></testsuite></testsuites>"#;
        let xml_skip = br#"<testsuite><testcase classname="m" name="a"><skipped message="no"/></testcase></testsuite>"#;
        let xml_fail = br#"<testsuite><testcase classname="m" name="a"><failure message="boom">tb</failure></testcase><testcase classname="m" name="b"/></testsuite>"#;
        let xml_err = br#"<testsuite><testcase classname="m" name="a"><error message="fixture">tb</error></testcase></testsuite>"#;
        let ok = |code| Some(Exit::Code(code));
        let table: Vec<(&str, Framework, Observed<'_>, Status, Option<Stage>)> = vec![
            (
                "setup fails",
                Framework::Command,
                Observed {
                    setup: ok(3),
                    command: None,
                    ..Default::default()
                },
                Status::Error,
                Some(Stage::Setup),
            ),
            (
                "command passes",
                Framework::Command,
                Observed {
                    command: ok(0),
                    ..Default::default()
                },
                Status::Passed,
                None,
            ),
            (
                "command fails",
                Framework::Command,
                Observed {
                    command: ok(1),
                    ..Default::default()
                },
                Status::Failed,
                Some(Stage::Test),
            ),
            (
                "command crashes",
                Framework::Command,
                Observed {
                    command: Some(Exit::Signal(11)),
                    ..Default::default()
                },
                Status::Failed,
                Some(Stage::Test),
            ),
            (
                "teardown fails after a pass",
                Framework::Command,
                Observed {
                    command: ok(0),
                    teardown: ok(2),
                    ..Default::default()
                },
                Status::Error,
                Some(Stage::Teardown),
            ),
            (
                "teardown fails after a failure",
                Framework::Command,
                Observed {
                    command: ok(1),
                    teardown: ok(2),
                    ..Default::default()
                },
                Status::Failed,
                Some(Stage::Test),
            ),
            (
                "never finished",
                Framework::Command,
                Observed::default(),
                Status::Error,
                Some(Stage::Test),
            ),
            (
                "pytest passes",
                Framework::Pytest,
                Observed {
                    command: ok(0),
                    junit: Some(Ok(xml_pass)),
                    ..Default::default()
                },
                Status::Passed,
                None,
            ),
            (
                "pytest all skipped",
                Framework::Pytest,
                Observed {
                    command: ok(0),
                    junit: Some(Ok(xml_skip)),
                    ..Default::default()
                },
                Status::Skipped,
                None,
            ),
            (
                "pytest fails",
                Framework::Pytest,
                Observed {
                    command: ok(1),
                    junit: Some(Ok(xml_fail)),
                    ..Default::default()
                },
                Status::Failed,
                Some(Stage::Test),
            ),
            (
                "pytest only errors",
                Framework::Pytest,
                Observed {
                    command: ok(1),
                    junit: Some(Ok(xml_err)),
                    ..Default::default()
                },
                Status::Error,
                Some(Stage::Test),
            ),
            (
                "pytest no tests",
                Framework::Pytest,
                Observed {
                    command: ok(5),
                    junit: Some(Ok(xml_pass)),
                    ..Default::default()
                },
                Status::Error,
                Some(Stage::Test),
            ),
            (
                "pytest crash",
                Framework::Pytest,
                Observed {
                    command: Some(Exit::Signal(11)),
                    junit: Some(Err("missing".into())),
                    ..Default::default()
                },
                Status::Error,
                Some(Stage::Test),
            ),
            (
                "pytest passes without report",
                Framework::Pytest,
                Observed {
                    command: ok(0),
                    junit: Some(Err("missing".into())),
                    ..Default::default()
                },
                Status::Error,
                Some(Stage::Test),
            ),
            (
                "unittest fails",
                Framework::Unittest,
                Observed {
                    command: ok(1),
                    stderr: "test_a (m.T.test_a) ... FAIL\n",
                    ..Default::default()
                },
                Status::Failed,
                Some(Stage::Test),
            ),
            (
                "unittest import error",
                Framework::Unittest,
                Observed {
                    command: ok(1),
                    stderr: "ImportError: nope\n",
                    ..Default::default()
                },
                Status::Error,
                Some(Stage::Test),
            ),
        ];
        for (what, framework, seen, status, stage) in table {
            let v = judge(framework, &seen);
            assert_eq!((v.status, v.stage), (status, stage), "{what}: {v:?}");
            if !status.is_success() {
                assert!(v.reason.is_some(), "{what} has no reason");
            }
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
