//! Discovery: lists the tests of a project the way its framework does, in a sandbox over
//! the suite's workspace, so that a `[[discover]]` entry of the manifest can become one
//! test per id. `isotest run` calls [`discover`] before it runs or submits a suite (in
//! embedded and in server mode alike); the producer and workers never see the entry.
//!
//! Each framework's listing lives with its adapter ([`super::Adapter::listing`]): pytest
//! `--collect-only -q`, a small unittest loader script, `go test -list`, `cargo test --
//! --list`, `jest --listTests`, and for node the files `node --test` would run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use isotest_protocol::manifest::{DiscoverEntry, Framework, ManifestError};
use isotest_sandbox::{Limits, RunSpec, SandboxError, Sandboxer, StageExit, Termination};

use super::{Toolchain, adapter, signal_name};
use crate::prepare::CachedBuild;

/// How many lines of the framework's output a failed discovery quotes.
const QUOTED_LINES: usize = 40;
/// What to do when the framework's program is not in the sandbox.
pub const NOT_FOUND_HINT: &str = "\nA program was not found in the sandbox, which sees the host's /usr and the directories given with --toolchain-dir (ISOTEST_TOOLCHAIN_DIRS): expose the toolchain's directory, e.g. --toolchain-dir ~/.cargo --toolchain-dir ~/.rustup for rustup, ~/.pyenv for pyenv, ~/.nvm/versions/node/<version> for nvm.";

/// A discovery that did not produce tests.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("discover[{index}]: could not make a sandbox to list the {framework} tests")]
    Sandbox {
        index: usize,
        framework: Framework,
        #[source]
        source: SandboxError,
    },
    #[error("discover[{index}]: {framework} could not list its tests ({how}):\n{output}")]
    Failed {
        index: usize,
        framework: Framework,
        how: String,
        output: String,
    },
    #[error("discover[{index}]: {framework} found no tests{under}")]
    Empty {
        index: usize,
        framework: Framework,
        under: String,
    },
}

/// The command that lists an entry's tests, and the variables it needs.
pub fn command(
    framework: Framework,
    entry: &DiscoverEntry,
    tools: &Toolchain,
) -> (Vec<String>, BTreeMap<String, String>) {
    let mut env = entry.env.clone().unwrap_or_default();
    super::tool_env(framework, tools, &mut env);
    (adapter(framework).listing(entry, tools), env)
}

/// The test ids in a successful listing's output, in order, without repeats.
pub fn parse(framework: Framework, entry: &DiscoverEntry, stdout: &str) -> Vec<String> {
    let mut seen = BTreeSet::new();
    adapter(framework)
        .parse_listing(entry, stdout)
        .into_iter()
        .filter(|id| seen.insert(id.clone()))
        .collect()
}

/// Lists the tests of `entry` (the `index`th `[[discover]]`) in a sandbox over `workspace`:
/// from the binaries of its prepared build where its framework compiles (`prepared`), else
/// with the framework's own listing.
///
/// # Errors
///
/// Returns [`DiscoverError`]: a framework that cannot discover, a sandbox that could not
/// be made, a listing that failed (with the framework's own output), or one that found
/// nothing.
#[expect(
    clippy::too_many_arguments,
    reason = "the listing's inputs, each from a different part of the run"
)]
pub async fn discover(
    sandboxer: &Sandboxer,
    index: usize,
    entry: &DiscoverEntry,
    workspace: Option<Arc<[u8]>>,
    prepared: Option<&CachedBuild>,
    tools: &Toolchain,
    limits: Limits,
    network: bool,
) -> Result<Vec<String>, DiscoverError> {
    let framework = entry.framework(index)?;
    let (command, env) = match prepared {
        Some(build) => {
            let mut env = entry.env.clone().unwrap_or_default();
            super::tool_env(framework, tools, &mut env);
            (
                adapter(framework).listing_prepared(&build.index, entry),
                env,
            )
        }
        None => command(framework, entry, tools),
    };
    let spec = RunSpec {
        environment: entry.environment.clone(),
        workspace_bundle: workspace,
        files: entry
            .files
            .iter()
            .flatten()
            .map(|f| (f.path.clone(), f.content.clone().into_bytes()))
            .collect(),
        setup: entry.setup.clone(),
        command,
        teardown: None,
        env,
        limits,
        network,
        binds: prepared
            .map(|b| crate::prepare::binds(&b.dir, &b.index))
            .unwrap_or_default(),
        ..RunSpec::default()
    };
    let outcome = sandboxer
        .run(spec)
        .await
        .map_err(|source| DiscoverError::Sandbox {
            index,
            framework,
            source,
        })?;
    let stdout = outcome.stdout.render("stdout");
    let stderr = outcome.stderr.render("stderr");
    let how = match (outcome.termination, outcome.setup, outcome.command) {
        (Termination::TimedOut | Termination::CpuTimeExceeded, _, _) => Some("timed out".into()),
        (Termination::OutOfMemory, _, _) => Some("ran out of memory".into()),
        (_, Some(StageExit::Code(c)), _) if c != 0 => Some(format!("setup exited with code {c}")),
        (_, Some(StageExit::Signal(s)), _) => {
            Some(format!("setup was killed by {}", signal_name(s)))
        }
        (_, _, Some(StageExit::Code(0))) => None,
        (_, _, Some(StageExit::Code(c))) => Some(format!("exit code {c}")),
        (_, _, Some(StageExit::Signal(s))) => Some(format!("killed by {}", signal_name(s))),
        (_, _, None) => Some("the listing did not run".into()),
    };
    if let Some(how) = how {
        let both = format!("{stdout}{stderr}");
        let lines: Vec<&str> = both.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut output = lines[lines.len().saturating_sub(QUOTED_LINES)..].join("\n");
        if how == "exit code 127" || both.contains(": not found") {
            output.push_str(NOT_FOUND_HINT);
        }
        return Err(DiscoverError::Failed {
            index,
            framework,
            how,
            output,
        });
    }
    let ids = match prepared {
        Some(build) => {
            let mut seen = BTreeSet::new();
            adapter(framework)
                .parse_listing_prepared(&build.index, entry, &stdout)
                .into_iter()
                .filter(|id| seen.insert(id.clone()))
                .collect()
        }
        None => parse(framework, entry, &stdout),
    };
    if ids.is_empty() {
        let mut under = String::new();
        if !entry.paths.is_empty() {
            under = format!(" in {}", entry.paths.join(", "));
        }
        if let Some(f) = &entry.filter {
            under.push_str(&format!(" matching `{f}`"));
        }
        return Err(DiscoverError::Empty {
            index,
            framework,
            under,
        });
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(framework: &str) -> DiscoverEntry {
        DiscoverEntry {
            framework: framework.into(),
            ..DiscoverEntry::default()
        }
    }

    #[test]
    fn listings_become_ids() {
        let table: &[(&str, &str, &[&str])] = &[
            (
                "pytest",
                "tests/test_a.py::test_x\ntests/test_a.py::T::test_y[1 2]\n\n2 tests collected in 0.01s\n",
                &["tests/test_a.py::test_x", "tests/test_a.py::T::test_y[1 2]"],
            ),
            (
                "unittest",
                "tests.test_a.T.test_x\ntests.test_a.T.test_y\n",
                &["tests.test_a.T.test_x", "tests.test_a.T.test_y"],
            ),
            (
                "go",
                "TestA\nTestB\nExampleC\nok  \texample.com/m\t0.002s\n?   \texample.com/m/none\t[no test files]\nTestD\nok  \texample.com/m/sub\t0.001s\n",
                &[
                    "example.com/m.TestA",
                    "example.com/m.TestB",
                    "example.com/m/sub.TestD",
                ],
            ),
            (
                "cargo",
                "tests::a: test\ntests::b: test\nbench_x: benchmark\n\n2 tests, 1 benchmarks\ncrash: test\ntests::a: test\n",
                &["tests::a", "tests::b", "crash"],
            ),
            (
                "node",
                "./test/b.test.js\n./lib/util.js\n./test/helpers/x.mjs\n./a_test.cjs\n./README.md\n./test-z.js\n",
                &[
                    "a_test.cjs",
                    "test-z.js",
                    "test/b.test.js",
                    "test/helpers/x.mjs",
                ],
            ),
            (
                "jest",
                "/workspace/test/b.test.js\n/workspace/src/a.spec.ts\nDetermining test suites...\n",
                &["src/a.spec.ts", "test/b.test.js"],
            ),
        ];
        for (framework, stdout, want) in table {
            let e = entry(framework);
            let fw = e.framework(0).expect("framework");
            assert_eq!(parse(fw, &e, stdout), *want, "{framework}");
        }
    }

    #[test]
    fn commands_carry_paths_and_filters() {
        let tools = Toolchain::default();
        let mut e = entry("pytest");
        e.paths = vec!["tests".into()];
        e.filter = Some("not slow".into());
        let (argv, _) = command(Framework::Pytest, &e, &tools);
        assert_eq!(argv[argv.len() - 3..], ["-k", "not slow", "tests"]);
        let (argv, env) = command(Framework::Go, &entry("go"), &tools);
        assert_eq!(argv[1..], ["test", "-list", ".", "./..."]);
        assert_eq!(env.get("GOPROXY").map(String::as_str), Some("off"));
        assert!(entry("command").framework(3).is_err());
        let mut e = entry("jest");
        e.paths = vec!["test".into()];
        let (argv, _) = command(Framework::Jest, &e, &tools);
        assert_eq!(
            argv[2..],
            ["--listTests", "--ci", "--watchman=false", "test"]
        );
    }
}
