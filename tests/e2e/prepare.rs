//! The prepare stage end to end: a compiled suite built once whatever the number of its
//! tests and of the workers that run them, a broken build reported once, a toolchain from
//! rustup used through `--toolchain-dir`, and a long parametrized id run and rerun by name.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use isotest_protocol::report::{BuildStatus, Report};
use isotest_protocol::result::{Stage, Status};

use crate::support::TestEnv;

/// A copy of the cargo fixture in the test's directory, to change.
fn cargo_project(env: &TestEnv, name: &str) -> Result<PathBuf> {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/cargo");
    let to = env.dir.join(name);
    for rel in ["Cargo.toml", "Cargo.lock", "src/lib.rs", "tests/crash.rs"] {
        let target = to.join(rel);
        std::fs::create_dir_all(target.parent().context("parent")?)?;
        std::fs::copy(from.join(rel), &target)?;
    }
    Ok(to)
}

fn manifest(env: &TestEnv, label: &str, workspace: &Path, body: &str) -> PathBuf {
    env.write(
        &format!("{label}.toml"),
        &format!(
            "name = \"{label}\"\nworkspace = \"{}\"\n\n{body}",
            workspace.display()
        ),
    )
}

/// The one build of a report, checked to be the only one.
fn only_build(report: &Report) -> &isotest_protocol::report::BuildReport {
    assert_eq!(report.builds.len(), 1, "one build: {:?}", report.builds);
    &report.builds[0]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compiled_suite_is_built_once_however_many_tests_and_workers() -> Result<()> {
    let mut env = TestEnv::new().await;
    env.start(2, 2).await?;
    let project = cargo_project(&env, "built-once")?;
    let path = manifest(
        &env,
        "built-once",
        &project,
        "[[discover]]\nframework = \"cargo\"\ntimeout = \"120s\"\n",
    );
    let first = env.run_suite(&path, "built-once", true, &[]);
    let report = first.report();
    let build = only_build(report);
    assert_eq!(build.status, BuildStatus::Built, "{build:?}");
    assert_eq!(build.tests as usize, report.tests.len());
    assert!(
        report.tests.len() >= 6,
        "every test of every binary: {report:?}"
    );
    // Two workers ran them, and no test compiled anything: each ran its binary for its
    // one test (libtest's own words, no cargo's).
    let workers: std::collections::BTreeSet<&str> =
        report.tests.iter().map(|t| t.worker.as_str()).collect();
    assert_eq!(workers.len(), 2, "both workers took tests: {workers:?}");
    for test in &report.tests {
        assert!(
            test.stdout.contains("running 1 test"),
            "{}: {}",
            test.name,
            test.stdout
        );
        assert!(
            !test.stderr.contains("Compiling"),
            "{}: {}",
            test.name,
            test.stderr
        );
    }
    // The same inputs again: the build is found, not made.
    let again = env.run_suite(&path, "built-once-again", true, &[]);
    let build = only_build(again.report());
    assert_eq!(build.status, BuildStatus::Cached, "{build:?}");
    let verdicts = |r: &Report| -> Vec<(String, Status)> {
        r.tests.iter().map(|t| (t.name.clone(), t.status)).collect()
    };
    assert_eq!(verdicts(report), verdicts(again.report()));
    env.stop();
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_that_fails_is_reported_once_and_every_test_is_an_error() -> Result<()> {
    let env = TestEnv::new().await;
    let project = cargo_project(&env, "broken-build")?;
    std::fs::write(
        project.join("src/lib.rs"),
        "pub fn add(a: i32, b: i32) -> i32 { a + b + undefined_here }\n",
    )?;
    let path = manifest(
        &env,
        "broken-build",
        &project,
        "[[tests]]\nname = \"a\"\nframework = \"cargo\"\ntest_id = \"fixture tests::passes\"\n\n\
         [[tests]]\nname = \"b\"\nframework = \"cargo\"\ntest_id = \"fixture tests::fails\"\n\n\
         [[tests]]\nname = \"c\"\ncommand = [\"true\"]\n",
    );
    // Nothing is queued: the same happens with --server, before any submission.
    let run = env.run_suite(&path, "broken-build", false, &[]);
    assert_eq!(run.code(), Some(1), "{}", run.stderr());
    let report = run.report();
    let build = only_build(report);
    assert_eq!(build.status, BuildStatus::Failed);
    assert!(build.output.contains("undefined_here"), "{}", build.output);
    assert_eq!(
        build
            .output
            .matches("cannot find value `undefined_here`")
            .count(),
        1,
        "the compiler's error once: {}",
        build.output
    );
    for test in &report.tests {
        assert_eq!(test.status, Status::Error, "{test:?}");
        assert_eq!(test.stage, Some(Stage::Prepare), "{test:?}");
        assert!(
            test.stdout.is_empty() && test.stderr.is_empty(),
            "the build's output is not repeated in {}",
            test.name
        );
        let reason = test.reason.as_deref().unwrap_or_default();
        assert!(reason.contains("build failed"), "{reason}");
    }
    let junit = run.junit.as_deref().context("a JUnit report")?;
    assert_eq!(
        junit
            .matches("cannot find value `undefined_here` in this scope")
            .count(),
        1,
        "JUnit shows the build's output once: {junit}"
    );
    Ok(())
}

/// rustup's home directories on this machine (`$CARGO_HOME` and `$RUSTUP_HOME`, or under
/// `$HOME`), where CI's own toolchain comes from.
fn rustup_dirs() -> Result<(PathBuf, PathBuf)> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let cargo = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cargo"));
    let rustup = std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".rustup"));
    ensure!(
        cargo.join("bin/cargo").is_file() && rustup.join("toolchains").is_dir(),
        "this test needs a rustup toolchain (found none under {} and {})",
        cargo.display(),
        rustup.display()
    );
    Ok((cargo, rustup))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rustup_toolchain_is_used_through_toolchain_dir() -> Result<()> {
    let env = TestEnv::new().await;
    let (cargo_home, rustup_home) = rustup_dirs()?;
    // Edition 2024 needs Rust 1.85: rustup's toolchain builds it, an older system one cannot.
    let project = env.dir.join("edition-2024");
    std::fs::create_dir_all(project.join("src"))?;
    std::fs::write(
        project.join("Cargo.toml"),
        "[package]\nname = \"modern\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[workspace]\n",
    )?;
    std::fs::write(
        project.join("src/lib.rs"),
        "#[cfg(test)]\nmod tests {\n    #[test]\n    fn let_chains_work() {\n        let v = Some(2);\n        if let Some(x) = v && x > 1 {\n            return;\n        }\n        panic!(\"no\");\n    }\n}\n",
    )?;
    let path = manifest(
        &env,
        "modern",
        &project,
        "[[discover]]\nframework = \"cargo\"\npaths = [\"lib\"]\n",
    );
    let cargo_dir = cargo_home.display().to_string();
    let rustup_dir = rustup_home.display().to_string();
    let run = env.run_suite(
        &path,
        "modern",
        false,
        &[
            "--toolchain-dir",
            &cargo_dir,
            "--toolchain-dir",
            &rustup_dir,
        ],
    );
    assert_eq!(run.code(), Some(0), "{}", run.stderr());
    let report = run.report();
    assert_eq!(report.tests.len(), 1);
    assert_eq!(report.tests[0].name, "modern tests::let_chains_work");
    assert_eq!(report.tests[0].status, Status::Passed);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_parametrized_id_runs_and_reruns_by_its_own_name() -> Result<()> {
    let env = TestEnv::new().await;
    let project = env.dir.join("long-ids");
    std::fs::create_dir_all(project.join("tests"))?;
    let url = format!("https://example.com/{}/ü?q=[1]", "a".repeat(300));
    std::fs::write(
        project.join("tests/test_urls.py"),
        format!(
            "import pytest\n\n@pytest.mark.parametrize('url', [{url:?}, 'short'])\ndef test_fetch(url):\n    assert url\n"
        ),
    )?;
    let path = manifest(
        &env,
        "long-ids",
        &project,
        "[[discover]]\nframework = \"pytest\"\n",
    );
    let run = env.run_suite(&path, "long-ids", false, &[]);
    assert_eq!(run.code(), Some(0), "{}", run.stderr());
    let long = run
        .report()
        .tests
        .iter()
        .find(|t| t.name.len() > 300)
        .context("the long id is a test")?
        .name
        .clone();
    assert!(
        long.starts_with("tests/test_urls.py::test_fetch["),
        "{long}"
    );
    // pytest escapes the non-ASCII in its ids itself; isotest keeps the id as pytest gave it.
    assert!(
        long.contains("\\xfc?q=[1]"),
        "the id as pytest gives it: {long}"
    );
    let rerun = env.run_suite(&path, "long-ids-again", false, &["--only", &long]);
    assert_eq!(rerun.code(), Some(0), "{}", rerun.stderr());
    let report = rerun.report();
    assert_eq!(report.tests.len(), 1);
    assert_eq!(report.tests[0].name, long);
    assert_eq!(report.tests[0].status, Status::Passed);
    Ok(())
}
