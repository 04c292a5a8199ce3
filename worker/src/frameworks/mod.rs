//! Framework adapters. Each framework is one module behind the small [`Adapter`] trait: how
//! its tests are laid out and run, which variables its tools need, which report it writes,
//! how that report becomes per-case results and a verdict, and how it lists a project's
//! tests for discovery. This file only dispatches ([`adapter`]) and holds the steps every
//! framework shares ([`plan`], [`judge`]). The sandbox knows nothing of frameworks.

mod cargo;
mod command;
pub mod discover;
mod go;
mod jest;
mod junit;
mod node;
mod pytest;
mod toolchain;
mod unittest;
mod verdict;

/// The pytest runner of a zygote (see `crate::warm`).
pub(crate) const PYTEST_ZYGOTE: &str = include_str!("pytest/zygote.py");
/// The unittest runner of a zygote.
pub(crate) const UNITTEST_ZYGOTE: &str = include_str!("unittest_zygote.py");

use std::collections::BTreeMap;

use isotest_protocol::artifact::ArtifactIndex;
use isotest_protocol::manifest::{DiscoverEntry, Framework, TestSpec};
use isotest_protocol::result::{CaseResult, Stage, Status};

use crate::prepare::{BuildPlan, Prepared};

pub use isotest_framework_reports::{JunitError, parse_jest, parse_junit};
pub use toolchain::Toolchain;
pub use verdict::{Exit, Observed, Verdict, signal_name};

use verdict::describe;

/// Where a framework that writes JUnit XML is told to write it, relative to the workspace.
pub const JUNIT_PATH: &str = ".isotest/junit.xml";
/// The directory isotest's own files go to in the workspace.
const ISOTEST_DIR: &str = ".isotest";
/// The variable that tells a test which attempt it is (1 for the first run).
pub const ATTEMPT_VAR: &str = "ISOTEST_ATTEMPT";

/// One framework: everything isotest knows of it, in one place.
pub(crate) trait Adapter: Sync {
    /// Sets the variables its tools need inside the sandbox, where only `/tmp` and the
    /// workspace are writable and there is no network (caches in `/tmp`, no downloads).
    /// `set` keeps a value the test gave itself.
    fn tool_env(&self, _tools: &Toolchain, _set: &mut dyn FnMut(&str, String)) {}

    /// Lays out one test: sets `plan.command`, and adds any file or variable it needs.
    fn lay_out(&self, test: &TestSpec, tools: &Toolchain, plan: &mut Plan);

    /// The report file it writes, relative to the workspace, if any.
    fn report_path<'t>(&self, _test: &'t TestSpec) -> Option<&'t str> {
        None
    }

    /// Per-case results from what a run produced, and why its report could not be read
    /// where it could not.
    fn cases(&self, seen: &Observed<'_>) -> (Vec<CaseResult>, Option<String>);

    /// The verdict of a command that ran to its end, from its exit and its cases.
    fn verdict(&self, exit: Exit, cases: &[CaseResult], problem: Option<&str>) -> Verdict;

    /// The output in which a run that failed before its tests explains itself.
    fn error_text(&self, seen: &Observed<'_>) -> String {
        seen.stderr.to_owned()
    }

    /// The argv that lists a project's tests for `[[discover]]` (empty: cannot discover).
    fn listing(&self, _entry: &DiscoverEntry, _tools: &Toolchain) -> Vec<String> {
        Vec::new()
    }

    /// The test ids in a successful listing's output, in order (repeats are dropped later).
    fn parse_listing(&self, _entry: &DiscoverEntry, _stdout: &str) -> Vec<String> {
        Vec::new()
    }

    /// The build its tests run from, for a framework that compiles them (the prepare stage
    /// runs it once); `env` holds the tests' own variables.
    fn build(
        &self,
        _tools: &Toolchain,
        _env: &BTreeMap<String, String>,
        _environment: Option<&str>,
    ) -> Option<BuildPlan> {
        None
    }

    /// The programs whose versions decide what its build makes (they key the build).
    fn build_tools(&self, _tools: &Toolchain) -> Vec<std::path::PathBuf> {
        Vec::new()
    }

    /// Reads what its build printed into the index of the test binaries it made; a build
    /// without binaries (a suite's own `build`) leaves only its outputs.
    fn index_build(&self, _stdout: &str, key: &str) -> Result<ArtifactIndex, String> {
        Ok(ArtifactIndex {
            schema_version: isotest_protocol::SCHEMA_VERSION,
            framework: Framework::Command,
            key: key.to_owned(),
            mounts: Vec::new(),
            binaries: Vec::new(),
            unbuilt: Vec::new(),
        })
    }

    /// The argv that lists every test of a prepared build, run with the build bound in.
    fn listing_prepared(&self, _index: &ArtifactIndex, _entry: &DiscoverEntry) -> Vec<String> {
        Vec::new()
    }

    /// The test ids in that listing's output.
    fn parse_listing_prepared(
        &self,
        _index: &ArtifactIndex,
        _entry: &DiscoverEntry,
        _stdout: &str,
    ) -> Vec<String> {
        Vec::new()
    }

    /// How a test could start warm, forked from a zygote that has imported the framework and
    /// collected the test's file; `Err` says why it cannot (it then starts cold), `Ok(None)`
    /// that this framework never starts warm.
    fn warm(
        &self,
        _test: &TestSpec,
        _tools: &Toolchain,
    ) -> Result<Option<crate::warm::WarmPlan>, String> {
        Ok(None)
    }

    /// What a warm child reported, as the report its cold run writes (`Ok(None)`: none); `Err`
    /// says why the test must run cold after all (the zygote did not collect it).
    fn warm_report<'r>(&self, report: &'r [u8]) -> Result<Option<&'r [u8]>, String> {
        Ok((!report.is_empty()).then_some(report))
    }

    /// Lays out a test to run from a prepared build: its one binary, for its one test. False
    /// when no binary of the build runs it (a doctest): it then runs the slow way.
    fn lay_out_prepared(
        &self,
        _test: &TestSpec,
        _index: &ArtifactIndex,
        _tools: &Toolchain,
        _plan: &mut Plan,
    ) -> bool {
        false
    }
}

/// The adapter of a framework: the one place a new framework is added.
pub(crate) fn adapter(framework: Framework) -> &'static dyn Adapter {
    match framework {
        Framework::Pytest => &pytest::Pytest,
        Framework::Unittest => &unittest::Unittest,
        Framework::Node => &node::Node,
        Framework::Jest => &jest::Jest,
        Framework::Go => &go::Go,
        Framework::Cargo => &cargo::Cargo,
        Framework::Junit => &junit::Junit,
        Framework::Command => &command::Command,
    }
}

/// How to run one test: what to write, what to exec, what to read back.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub files: Vec<(String, Vec<u8>)>,
    pub command: Vec<String>,
    /// Where it runs, relative to the workspace (empty: the workspace itself).
    pub workdir: String,
    /// A prepared build bound read-only into the workspace, where it runs from one.
    pub binds: Vec<isotest_sandbox::Bind>,
    pub env: BTreeMap<String, String>,
    pub collect: Vec<String>,
}

impl Plan {
    /// Adds a file to write into the workspace before the test runs.
    pub(crate) fn file(&mut self, path: &str, content: &[u8]) {
        self.files.push((path.to_owned(), content.to_vec()));
    }
}

/// The report file a test's framework writes, relative to the workspace, if any.
pub fn report_path(test: &TestSpec) -> Option<&str> {
    adapter(test.framework).report_path(test)
}

/// Lays out a test for its framework.
pub fn plan(test: &TestSpec, tools: &Toolchain) -> Plan {
    plan_from(test, tools, None)
}

/// Lays out a test for its framework, from a prepared build where one is given and one of
/// its binaries runs the test (else the slow way, as [`plan`] does).
pub fn plan_from(test: &TestSpec, tools: &Toolchain, prepared: Option<&Prepared>) -> Plan {
    let adapter = adapter(test.framework);
    let mut plan = Plan {
        files: test
            .files
            .iter()
            .map(|f| (f.path.clone(), f.content.clone().into_bytes()))
            .collect(),
        env: test.env.clone(),
        ..Plan::default()
    };
    match prepared.filter(|p| p.index.framework == test.framework) {
        // A suite's own build: the test runs its own command, with the outputs bound.
        Some(prepared) if prepared.index.binaries.is_empty() => {
            adapter.lay_out(test, tools, &mut plan);
            plan.binds = crate::prepare::binds(&prepared.dir, &prepared.index);
        }
        // A framework's build: one of its binaries runs the test, or none does (a doctest)
        // and the test runs the slow way.
        Some(prepared) if adapter.lay_out_prepared(test, &prepared.index, tools, &mut plan) => {
            plan.binds = crate::prepare::binds(&prepared.dir, &prepared.index);
        }
        _ => adapter.lay_out(test, tools, &mut plan),
    }
    tool_env(test.framework, tools, &mut plan.env);
    plan.collect = adapter
        .report_path(test)
        .map(str::to_owned)
        .into_iter()
        .collect();
    plan
}

/// Adds the variables a framework's tools need, keeping any the test set itself.
pub(crate) fn tool_env(
    framework: Framework,
    tools: &Toolchain,
    env: &mut BTreeMap<String, String>,
) {
    adapter(framework).tool_env(tools, &mut |key, value| {
        env.entry(key.to_owned()).or_insert(value);
    });
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
    let adapter = adapter(framework);
    let (cases, problem) = adapter.cases(seen);
    let mut verdict = adapter.verdict(exit, &cases, problem.as_deref());
    if verdict.status == Status::Error
        && verdict
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("before running"))
        && let Some(line) = verdict::first_error_line(&adapter.error_text(seen))
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

/// Cases from a JUnit report the framework was asked to write; `who` names the writer in
/// the problem (`it`, `the command`, `node`).
pub(crate) fn junit_cases(seen: &Observed<'_>, who: &str) -> (Vec<CaseResult>, Option<String>) {
    match &seen.report {
        Some(Ok(xml)) => match parse_junit(xml) {
            Ok(cases) => (cases, None),
            Err(e) => (
                Vec::new(),
                Some(format!("its JUnit report is unreadable: {e}")),
            ),
        },
        Some(Err(why)) => (
            Vec::new(),
            Some(format!("{who} wrote no JUnit report ({why})")),
        ),
        None => (Vec::new(), None),
    }
}

/// A shell line that runs `argv` after `prelude`, every word quoted.
pub(crate) fn sh(prelude: &str, argv: &[String]) -> Vec<String> {
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

/// The argv of a test whose framework cannot run a `test_id`: validation refuses the
/// pairing, and a message that carries it anyway gets a verdict that says so.
pub(crate) fn cannot_run_test_id(framework: Framework) -> Vec<String> {
    vec![
        "/bin/sh".into(),
        "-c".into(),
        format!("echo 'isotest: framework `{framework}` cannot run a test_id' >&2; exit 2"),
    ]
}

#[cfg(test)]
mod tests;
