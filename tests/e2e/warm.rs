//! Warm starts end to end (`tests/fixtures/warm`): the canary suite, whose every test checks
//! that it sees nothing another test did and then does all of it, passes warm in embedded
//! mode and through the services; zygotes are made per file, not per test; and coverage
//! measured warm is what it is cold.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use isotest_protocol::report::Report;
use isotest_protocol::result::{StartMode, Status};

use crate::support::TestEnv;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/warm")
}

fn manifest(env: &TestEnv, label: &str, body: &str) -> PathBuf {
    env.write(
        &format!("{label}.toml"),
        &format!(
            "name = \"{label}\"\nworkspace = \"{}\"\n\n{body}",
            fixture().display()
        ),
    )
}

const CANARY: &str =
    "[[discover]]\nframework = \"pytest\"\npaths = [\"test_canary.py\", \"test_other.py\"]\n";

/// Every test passed and started warm.
fn all_passed_warm(report: &Report) -> Result<()> {
    ensure!(report.tests.len() == 9, "the canary's 9 tests: {report:?}");
    for test in &report.tests {
        ensure!(
            test.status == Status::Passed,
            "{} {:?}: {}\n{}",
            test.name,
            test.status,
            test.stdout,
            test.stderr
        );
        let mode = test.start.as_ref().map(|s| s.mode);
        ensure!(
            mode == Some(StartMode::Warm),
            "{} started {:?}",
            test.name,
            test.start
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_canary_sees_nothing_another_warm_test_did_embedded() -> Result<()> {
    let env = TestEnv::new().await;
    let path = manifest(&env, "canary", CANARY);
    // One at a time, so that every test is forked from a zygote an earlier test used.
    let run = env.run_suite(&path, "canary", false, &["--concurrency", "1"]);
    all_passed_warm(run.report())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_canary_passes_warm_through_the_services_with_a_zygote_per_file() -> Result<()> {
    let mut env = TestEnv::new().await;
    env.start(2, 2).await?;
    let path = manifest(&env, "canary", CANARY);
    let run = env.run_suite(&path, "canary", true, &[]);
    all_passed_warm(run.report())?;
    // Each worker makes the zygotes of the files it gets tests of: 2 files, 2 workers.
    let made: usize = (0..2)
        .map(|i| {
            env.log(&format!("worker-{i}"))
                .iter()
                .filter(|line| line.contains("Starting a zygote."))
                .count()
        })
        .sum();
    ensure!(
        (2..=4).contains(&made),
        "one zygote per file per worker, not one per test: {made} for 9 tests"
    );
    Ok(())
}

/// The `TOTAL … NN%` line pytest-cov prints, as a percentage.
fn coverage(stdout: &str) -> Option<u32> {
    let line = stdout.lines().find(|l| l.starts_with("TOTAL"))?;
    line.split_whitespace()
        .last()?
        .trim_end_matches('%')
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn coverage_measured_warm_is_coverage_measured_cold() -> Result<()> {
    let env = TestEnv::new().await;
    let mut runs = Vec::new();
    for warm in [true, false] {
        let label = format!("coverage-{warm}");
        let path = manifest(
            &env,
            &label,
            &format!(
                "warm = {warm}\n[defaults]\nenv = {{ PYTEST_ADDOPTS = \"--cov=calc --cov-report=term\" }}\n\n\
                 [[discover]]\nframework = \"pytest\"\npaths = [\"test_calc.py\"]\n"
            ),
        );
        let run = env.run_suite(&path, &label, false, &[]);
        let report = run.report().clone();
        runs.push(report);
    }
    let (warm, cold) = (&runs[0], &runs[1]);
    ensure!(warm.tests.len() == 3 && cold.tests.len() == 3, "{warm:?}");
    for (w, c) in warm.tests.iter().zip(&cold.tests) {
        ensure!(w.name == c.name, "same order");
        ensure!(
            w.start.as_ref().map(|s| s.mode) == Some(StartMode::Warm),
            "{} started {:?}",
            w.name,
            w.start
        );
        let seen = (coverage(&w.stdout), coverage(&c.stdout));
        let (Some(wp), Some(cp)) = seen else {
            anyhow::bail!(
                "{}: no coverage total (is python3-pytest-cov installed? scripts/setup)\nwarm:\n{}\ncold:\n{}",
                w.name,
                w.stdout,
                c.stdout
            );
        };
        ensure!(wp.abs_diff(cp) <= 1, "{}: warm {wp}% cold {cp}%", w.name);
        ensure!(w.status == c.status, "{}: same verdict", w.name);
    }
    // Each test reaches one more branch: the totals differ, so a zygote's own coverage
    // (import time only) standing in for the test's would show.
    let totals: Vec<Option<u32>> = warm.tests.iter().map(|t| coverage(&t.stdout)).collect();
    ensure!(
        totals.windows(2).all(|w| w[0] != w[1]),
        "per-test coverage: {totals:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn warm_and_cold_give_the_same_verdicts() -> Result<()> {
    let env = TestEnv::new().await;
    let body = |warm: bool| {
        format!(
            "warm = {warm}\n[[discover]]\nframework = \"pytest\"\n\
             paths = [\"test_other.py\", \"test_calc.py\"]\n\n\
             [[tests]]\nname = \"broken\"\nframework = \"pytest\"\ntest_id = \"test_broken.py::test_never\"\n\n\
             [[tests]]\nname = \"missing\"\nframework = \"pytest\"\ntest_id = \"test_other.py::test_missing\"\n"
        )
    };
    let mut verdicts = Vec::new();
    for warm in [true, false] {
        let label = format!("verdicts-{warm}");
        let run = env.run_suite(&manifest(&env, &label, &body(warm)), &label, false, &[]);
        let report = run.report();
        let seen: Vec<(String, Status)> = report
            .tests
            .iter()
            .map(|t| (t.name.clone(), t.status))
            .collect();
        verdicts.push(seen);
    }
    ensure!(
        verdicts[0] == verdicts[1],
        "warm {:?}\ncold {:?}",
        verdicts[0],
        verdicts[1]
    );
    let broken = verdicts[0]
        .iter()
        .find(|(name, _)| name == "broken")
        .context("the broken file's test")?;
    ensure!(broken.1 == Status::Error, "{broken:?}");
    Ok(())
}
