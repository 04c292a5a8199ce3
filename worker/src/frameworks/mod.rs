//! Framework adapters: how a test of each framework is laid out in the workspace and
//! run ([`plan`]), and how its output becomes per-case results and a verdict
//! ([`judge`]). The sandbox knows nothing of frameworks; this module is all of it, and
//! [`discover`] lists a project's tests with the same commands.
//!
//! Interpreters and toolchains are called by absolute path (see [`Toolchain`]): the
//! sandbox binds the host's `/usr` but not `/root` or `/home`, so a toolchain must live
//! in `/usr` to be seen there.

pub mod discover;
mod gotest;
mod jest;
mod junit;
mod libtest;
mod unittest;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use isotest_protocol::manifest::{Framework, TestBody, TestSpec};
use isotest_protocol::result::{CaseResult, CaseStatus, Stage, Status};

pub use jest::parse as parse_jest;
pub use junit::{JunitError, parse as parse_junit};

/// Where a framework that writes JUnit XML is told to write it, relative to the workspace.
pub const JUNIT_PATH: &str = ".isotest/junit.xml";
/// The directory of [`JUNIT_PATH`].
const JUNIT_DIR: &str = ".isotest";
/// The file inline `code` is written to (pytest and unittest import it by this name).
pub const PYTHON_CODE_FILE: &str = "test_isotest.py";
/// The file inline `code` of a `command` test is written to, and run by `/bin/sh`.
pub const SHELL_CODE_FILE: &str = "isotest_test.sh";
/// The file inline `code` of a `node` test is written to.
pub const NODE_CODE_FILE: &str = "isotest.test.js";
/// Where Jest is told to write its `--json` report, relative to the workspace.
pub const JEST_JSON_PATH: &str = ".isotest/jest.json";
/// The file inline `code` of a `jest` test is written to.
pub const JEST_CODE_FILE: &str = "isotest.test.js";
/// The file inline `code` of a `go` test is written to (the module is made if missing).
pub const GO_CODE_FILE: &str = "isotest_test.go";
/// The integration test inline `code` of a `cargo` test is written to.
pub const CARGO_CODE_FILE: &str = "tests/isotest_code.rs";
/// The variable that tells a test which attempt it is (1 for the first run).
pub const ATTEMPT_VAR: &str = "ISOTEST_ATTEMPT";

/// Worker-wide settings the adapters need.
#[derive(Debug, Clone)]
pub struct Toolchain {
    /// The Python interpreter, by absolute path: a shim on PATH can cost 100 ms a start.
    pub python: PathBuf,
    /// Node.js, for `node` tests.
    pub node: PathBuf,
    /// The `go` command, for `go` tests.
    pub go: PathBuf,
    /// `cargo`, for `cargo` tests; its `rustc` is the one beside it.
    pub cargo: PathBuf,
    /// Jest's `bin/jest.js` from a global `npm install -g jest`, run by [`Self::node`].
    pub jest: PathBuf,
}

impl Default for Toolchain {
    fn default() -> Self {
        let first = |candidates: &[&str], fallback: &str| {
            candidates
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
                .unwrap_or_else(|| PathBuf::from(fallback))
        };
        Toolchain {
            python: first(&["/usr/bin/python3"], "python3"),
            node: first(&["/usr/bin/node", "/usr/local/bin/node"], "node"),
            go: first(
                &["/usr/bin/go", "/usr/lib/go/bin/go", "/usr/local/go/bin/go"],
                "go",
            ),
            cargo: first(&["/usr/bin/cargo", "/usr/local/bin/cargo"], "cargo"),
            // npm's global prefix is `/usr` for Debian's node and `/usr/local` for others.
            jest: first(
                &[
                    "/usr/lib/node_modules/jest/bin/jest.js",
                    "/usr/local/lib/node_modules/jest/bin/jest.js",
                ],
                "/usr/local/lib/node_modules/jest/bin/jest.js",
            ),
        }
    }
}

impl Toolchain {
    /// The variables a toolchain needs inside the sandbox, where only `/tmp` and the
    /// workspace are writable and there is no network: caches in `/tmp`, no downloads.
    fn env(&self, framework: Framework, env: &mut BTreeMap<String, String>) {
        let mut set = |key: &str, value: String| {
            env.entry(key.to_owned()).or_insert(value);
        };
        match framework {
            Framework::Pytest | Framework::Unittest => {
                // The root file system is read-only: spare Python the failed cache writes.
                set("PYTHONDONTWRITEBYTECODE", "1".into());
            }
            Framework::Go => {
                set("GOCACHE", "/tmp/go-build".into());
                set("GOPATH", "/tmp/go".into());
                set("GOMODCACHE", "/tmp/go/pkg/mod".into());
                set("GOPROXY", "off".into());
                set("GOTOOLCHAIN", "local".into());
                set("GOFLAGS", "-mod=mod".into());
                set("CGO_ENABLED", "0".into());
                set("HOME", "/tmp".into());
            }
            Framework::Cargo => {
                set("CARGO_HOME", "/tmp/cargo-home".into());
                set("CARGO_TARGET_DIR", "/tmp/cargo-target".into());
                set("CARGO_TERM_COLOR", "never".into());
                set("CARGO_NET_OFFLINE", "true".into());
                let rustc = self.cargo.with_file_name("rustc");
                if rustc.is_absolute() {
                    set("RUSTC", rustc.to_string_lossy().into_owned());
                }
            }
            Framework::Jest => {
                // The real home is not in the sandbox; Jest's cache is in the temp dir.
                set("HOME", "/tmp".into());
            }
            Framework::Node | Framework::Junit | Framework::Command => {}
        }
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

/// The JUnit report a test's framework writes, relative to the workspace, if any.
pub fn report_path(test: &TestSpec) -> Option<&str> {
    match test.framework {
        Framework::Pytest | Framework::Node => Some(JUNIT_PATH),
        // Not JUnit: read by the `jest` module (`Observed::junit` carries it all the same).
        Framework::Jest => Some(JEST_JSON_PATH),
        Framework::Junit => Some(test.junit_path.as_deref().unwrap_or(JUNIT_PATH)),
        Framework::Unittest | Framework::Go | Framework::Cargo | Framework::Command => None,
    }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The pytest options that make it write the JUnit report isotest reads.
fn pytest_junit_opts() -> [String; 5] {
    [
        format!("--junitxml=/workspace/{JUNIT_PATH}"),
        "-o".into(),
        "junit_family=xunit1".into(),
        "-p".into(),
        "no:cacheprovider".into(),
    ]
}

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

/// Jest, one process for the whole run (so a crash ends the test, as it does in CI),
/// with its JSON report for isotest and the default reporter for people.
pub fn jest_command(tools: &Toolchain) -> Vec<String> {
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

/// A shell line that runs `argv` after `prelude`, every word quoted.
fn sh(prelude: &str, argv: &[String]) -> Vec<String> {
    let quoted: Vec<String> = argv
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    vec![
        "/bin/sh".into(),
        "-c".into(),
        format!("{prelude}exec {}", quoted.join(" ")),
    ]
}

/// Splits a Go test id, `[package.]TestName`, into the package pattern and the name.
pub fn split_go_id(id: &str) -> (&str, &str) {
    match id.rsplit_once('.') {
        Some((pkg, name)) if !pkg.is_empty() && !name.is_empty() => (pkg, name),
        _ => ("./...", id),
    }
}

/// A regular expression matching exactly `name` (Go's `-run` splits on `/` for subtests).
fn go_run_pattern(name: &str) -> String {
    name.split('/')
        .map(|part| {
            let escaped: String = part
                .chars()
                .flat_map(|c| {
                    let special = "\\.+*?()|[]{}^$".contains(c);
                    special
                        .then_some('\\')
                        .into_iter()
                        .chain(std::iter::once(c))
                })
                .collect();
            format!("^{escaped}$")
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Lays out a test for its framework.
pub fn plan(test: &TestSpec, tools: &Toolchain) -> Plan {
    let mut files: Vec<(String, Vec<u8>)> = test
        .files
        .iter()
        .map(|f| (f.path.clone(), f.content.clone().into_bytes()))
        .collect();
    let mut env = test.env.clone();
    let python = path_str(&tools.python);
    let mut code_file = |path: &str, code: &str| {
        files.push((path.to_owned(), code.as_bytes().to_vec()));
    };
    let command = match (test.framework, &test.body) {
        (Framework::Pytest, TestBody::Code(code)) => {
            code_file(PYTHON_CODE_FILE, code);
            let mut argv: Vec<String> = vec![python, "-m".into(), "pytest".into(), "-q".into()];
            argv.extend(pytest_junit_opts());
            argv.push(PYTHON_CODE_FILE.into());
            argv
        }
        (Framework::Pytest, TestBody::TestId(id)) => {
            let mut argv: Vec<String> = vec![python, "-m".into(), "pytest".into(), "-q".into()];
            argv.extend(pytest_junit_opts());
            argv.push(id.clone());
            argv
        }
        (Framework::Pytest, TestBody::Command(argv)) => {
            // The user's own pytest invocation: extend it through the variable pytest
            // reads, so wrappers (tox, make, scripts) still produce the report.
            let junit_opts = pytest_junit_opts().join(" ");
            let addopts = match env.get("PYTEST_ADDOPTS") {
                Some(own) => format!("{own} {junit_opts}"),
                None => junit_opts,
            };
            env.insert("PYTEST_ADDOPTS".into(), addopts);
            argv.clone()
        }
        (Framework::Unittest, TestBody::Code(code)) => {
            code_file(PYTHON_CODE_FILE, code);
            vec![
                python,
                "-m".into(),
                "unittest".into(),
                "-v".into(),
                "test_isotest".into(),
            ]
        }
        (Framework::Unittest, TestBody::TestId(id)) => {
            vec![
                python,
                "-m".into(),
                "unittest".into(),
                "-v".into(),
                id.clone(),
            ]
        }
        (Framework::Command | Framework::Junit, TestBody::Code(code)) => {
            code_file(SHELL_CODE_FILE, code);
            vec!["/bin/sh".into(), SHELL_CODE_FILE.into()]
        }
        (Framework::Node, TestBody::Code(code)) => {
            code_file(NODE_CODE_FILE, code);
            let mut argv = node_test(tools);
            argv.push(NODE_CODE_FILE.into());
            argv
        }
        (Framework::Node, TestBody::TestId(file)) => {
            let mut argv = node_test(tools);
            argv.push(file.clone());
            argv
        }
        (Framework::Jest, TestBody::Code(code)) => {
            code_file(JEST_CODE_FILE, code);
            let mut argv = jest_command(tools);
            argv.extend(["--runTestsByPath".into(), JEST_CODE_FILE.into()]);
            argv
        }
        (Framework::Jest, TestBody::TestId(file)) => {
            // One test is one test file: Jest's unit of isolation, and what it lists.
            let mut argv = jest_command(tools);
            argv.extend(["--runTestsByPath".into(), file.clone()]);
            argv
        }
        (Framework::Go, TestBody::Code(code)) => {
            code_file(GO_CODE_FILE, code);
            let go = path_str(&tools.go);
            let prelude =
                format!("[ -f go.mod ] || '{go}' mod init isotest.local/code >/dev/null 2>&1; ");
            sh(
                &prelude,
                &[
                    go,
                    "test".into(),
                    "-json".into(),
                    "-count=1".into(),
                    ".".into(),
                ],
            )
        }
        (Framework::Go, TestBody::TestId(id)) => {
            let (package, name) = split_go_id(id);
            vec![
                path_str(&tools.go),
                "test".into(),
                "-json".into(),
                "-count=1".into(),
                "-run".into(),
                go_run_pattern(name),
                package.to_owned(),
            ]
        }
        (Framework::Cargo, TestBody::Code(code)) => {
            code_file(CARGO_CODE_FILE, code);
            let cargo = path_str(&tools.cargo);
            let prelude = "[ -f Cargo.toml ] || { printf '[package]\\nname = \"isotest-code\"\\nversion = \"0.0.0\"\\nedition = \"2021\"\\n[workspace]\\n' > Cargo.toml; mkdir -p src; : > src/lib.rs; }; ";
            sh(prelude, &[cargo, "test".into(), "--offline".into()])
        }
        (Framework::Cargo, TestBody::TestId(id)) => vec![
            path_str(&tools.cargo),
            "test".into(),
            "--offline".into(),
            "--".into(),
            "--exact".into(),
            id.clone(),
        ],
        (_, TestBody::Command(argv)) => argv.clone(),
        (Framework::Command | Framework::Junit, TestBody::TestId(_)) => {
            // Validation refuses this pairing; a message that carries it anyway gets a
            // verdict that says so rather than a guess.
            vec![
                "/bin/sh".into(),
                "-c".into(),
                format!(
                    "echo 'isotest: framework `{}` cannot run a test_id' >&2; exit 2",
                    test.framework
                ),
            ]
        }
    };
    if matches!(test.framework, Framework::Node | Framework::Jest) {
        // Node's reporter and Jest write to their destination but do not make the directory.
        files.push((format!("{}/.keep", JUNIT_DIR), Vec::new()));
    }
    tools.env(test.framework, &mut env);
    let collect = report_path(test).map(str::to_owned).into_iter().collect();
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
    pub stdout: &'a str,
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
    let from_junit = |what: &str| match &seen.junit {
        Some(Ok(xml)) => match parse_junit(xml) {
            Ok(cases) => (cases, None),
            Err(e) => (
                Vec::new(),
                Some(format!("its JUnit report is unreadable: {e}")),
            ),
        },
        Some(Err(why)) => (
            Vec::new(),
            Some(format!("{what} wrote no JUnit report ({why})")),
        ),
        None => (Vec::new(), None),
    };
    let (cases, report_problem) = match framework {
        Framework::Pytest => from_junit("it"),
        Framework::Junit => from_junit("the command"),
        Framework::Node => from_junit("node"),
        Framework::Jest => match &seen.junit {
            Some(Ok(json)) => match jest::parse(json) {
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
        },
        Framework::Unittest => (unittest::parse_verbose(seen.stderr), None),
        Framework::Go => (gotest::parse(seen.stdout), None),
        Framework::Cargo => (libtest::parse(seen.stdout), None),
        Framework::Command => (Vec::new(), None),
    };
    let mut verdict = match framework {
        Framework::Command => judge_command(exit),
        Framework::Pytest => judge_pytest(exit, &cases),
        Framework::Unittest => judge_unittest(exit, &cases),
        Framework::Junit => judge_junit(exit, &cases, report_problem.as_deref()),
        Framework::Node => judge_runner("node", exit, &cases, &[1]),
        Framework::Go => judge_runner("go test", exit, &cases, &[1]),
        Framework::Cargo => judge_runner("cargo test", exit, &cases, &[101]),
        Framework::Jest => judge_runner("jest", exit, &cases, &[1]),
    };
    // A runner that was asked for a report and gave none (or an unreadable one) has
    // not shown what its cases did: a pass is not proven, and a failure says why.
    if let Some(problem) = report_problem.as_deref()
        && matches!(
            framework,
            Framework::Pytest | Framework::Node | Framework::Jest
        )
    {
        if verdict.status.is_success() {
            verdict = Verdict {
                status: Status::Error,
                reason: Some(format!("{} passed but {problem}", framework.as_str())),
                stage: Some(Stage::Test),
                cases: Vec::new(),
            };
        } else {
            let reason = verdict.reason.take().unwrap_or_default();
            verdict.reason = Some(format!("{reason}; {problem}"));
        }
    } else if let Some(problem) = report_problem.as_deref()
        && framework == Framework::Junit
        && !verdict.status.is_success()
    {
        let reason = verdict.reason.take().unwrap_or_default();
        verdict.reason = Some(format!("{reason}; {problem}"));
    }
    if verdict.status == Status::Error
        && verdict
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("before running"))
        && let Some(line) = first_error_line(framework, seen)
    {
        // A build or import failure: the runner's own first words say more than we can.
        verdict.reason = Some(format!("{}: {line}", verdict.reason.unwrap_or_default()));
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

/// The first line of a failed run's output that reads like an error, for the reason.
fn first_error_line(framework: Framework, seen: &Observed<'_>) -> Option<String> {
    let text = match framework {
        Framework::Go => seen.stdout,
        _ => seen.stderr,
    };
    let go_output = gotest::package_output(text);
    let text = if framework == Framework::Go {
        go_output.as_str()
    } else {
        text
    };
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

/// A `junit` test: cases from the report it wrote, the verdict from its exit code.
fn judge_junit(exit: Exit, cases: &[CaseResult], report_problem: Option<&str>) -> Verdict {
    match (exit, report_problem) {
        (Exit::Code(0), None) if all_skipped(cases) => verdict(Status::Skipped, None),
        (Exit::Code(0), None) => verdict(Status::Passed, None),
        (Exit::Code(0), Some(problem)) => errored(&format!("the command passed but {problem}")),
        (Exit::Code(_), _) if has_failures(cases) => failed_or_errored(cases),
        (Exit::Code(code), None) if !cases.is_empty() => verdict(
            Status::Failed,
            Some(format!("exited with code {code} though no case failed")),
        ),
        (Exit::Code(code), _) => verdict(Status::Failed, Some(format!("exited with code {code}"))),
        (Exit::Signal(sig), _) => errored(&format!(
            "the command crashed: killed by {}",
            signal_name(sig)
        )),
    }
}

/// A test runner whose `failing` exit codes mean "a test failed": failing cases make a
/// failure, and any other unhappy end is an error of the run (a build failure, a crash).
fn judge_runner(runner: &str, exit: Exit, cases: &[CaseResult], failing: &[i32]) -> Verdict {
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

fn has_failures(cases: &[CaseResult]) -> bool {
    cases.iter().any(|c| {
        matches!(
            c.status,
            CaseStatus::Failed | CaseStatus::Error | CaseStatus::Xpass
        )
    })
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
            junit_path: None,
        }
    }

    fn tools() -> Toolchain {
        Toolchain {
            python: "/usr/bin/python3".into(),
            node: "/usr/bin/node".into(),
            go: "/usr/bin/go".into(),
            cargo: "/usr/bin/cargo".into(),
            jest: "/usr/lib/node_modules/jest/bin/jest.js".into(),
        }
    }

    #[test]
    fn jest_runs_one_file_and_reports_json() {
        let p = plan(
            &spec(Framework::Jest, TestBody::TestId("test/a.test.js".into())),
            &tools(),
        );
        assert_eq!(
            p.command[..2],
            ["/usr/bin/node", "/usr/lib/node_modules/jest/bin/jest.js"]
        );
        assert!(p.command.contains(&"--runInBand".to_owned()));
        assert!(
            p.command
                .contains(&format!("--outputFile=/workspace/{JEST_JSON_PATH}"))
        );
        assert_eq!(
            p.command[p.command.len() - 2..],
            ["--runTestsByPath", "test/a.test.js"]
        );
        assert_eq!(p.collect, [JEST_JSON_PATH]);
        assert!(p.files.iter().any(|(path, _)| path == ".isotest/.keep"));
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
    fn a_missing_report_is_named_in_every_verdict() {
        let missing = || Some(Err("collect file: larger than 16 bytes".to_owned()));
        for (framework, code, status) in [
            (Framework::Pytest, 0, Status::Error),
            (Framework::Pytest, 1, Status::Failed),
            (Framework::Node, 0, Status::Error),
            (Framework::Jest, 0, Status::Error),
            (Framework::Jest, 1, Status::Error),
            (Framework::Junit, 0, Status::Error),
            (Framework::Junit, 1, Status::Failed),
        ] {
            let seen = Observed {
                command: Some(Exit::Code(code)),
                junit: missing(),
                ..Default::default()
            };
            let v = judge(framework, &seen);
            assert_eq!(v.status, status, "{framework} exit {code}: {v:?}");
            let reason = v.reason.unwrap_or_default();
            assert!(
                reason.contains("larger than 16 bytes"),
                "{framework} exit {code}: {reason}"
            );
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
