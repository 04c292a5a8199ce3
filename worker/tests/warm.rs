//! Warm starts through the worker's runner, where its zygotes can be counted: a zygote is
//! made once per test file and reused, never shared between suites, bounded in number (the
//! least recently used goes first), and a test whose file cannot start warm runs cold and
//! says why. They need root, user namespaces and cgroups, as on the CI machine, and Debian's
//! python3-pytest (`scripts/setup`).

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use isotest_protocol::manifest::{Format, Manifest};
use isotest_protocol::message::TestMessage;
use isotest_protocol::result::{StartMode, Status, TestResult};
use isotest_sandbox::{SandboxConfig, Sandboxer};
use isotest_worker::warm::WarmConfig;
use isotest_worker::{Runner, RunnerConfig};

fn sandboxer() -> Arc<Sandboxer> {
    static SANDBOXER: OnceLock<Arc<Sandboxer>> = OnceLock::new();
    Arc::clone(SANDBOXER.get_or_init(|| {
        let config = SandboxConfig {
            state_dir: "/run/isotest-sandbox-test-worker-warm".into(),
            ..SandboxConfig::default()
        };
        Arc::new(Sandboxer::new(config).expect("this host supports full isolation"))
    }))
}

fn runner(max_zygotes: usize) -> Runner {
    let dir = std::env::temp_dir().join(format!("isotest-warm-{}", uuid::Uuid::new_v4()));
    Runner::new(
        sandboxer(),
        RunnerConfig {
            worker_id: "warm-test".into(),
            tools: isotest_worker::frameworks::Toolchain::detect(&[]),
            limits: isotest_sandbox::Limits::default(),
            allow_network: false,
            artifact_dir: dir,
            warm: Some(WarmConfig {
                max_zygotes,
                idle: Duration::from_secs(600),
                ..WarmConfig::default()
            }),
        },
    )
}

/// The fixture's workspace, packed once.
fn workspace() -> (String, Arc<[u8]>) {
    static BUNDLE: OnceLock<(String, Arc<[u8]>)> = OnceLock::new();
    BUNDLE
        .get_or_init(|| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/warm");
            let bytes = isotest_sandbox::bundle::pack_dir(&dir).expect("pack the fixture");
            let digest = format!("sha256:{}", sha256_hex(&bytes));
            (digest, Arc::from(bytes))
        })
        .clone()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The message of a pytest test `id` of suite `suite`, as the producer would build it.
fn message(suite: &str, id: &str, warm: bool) -> Result<TestMessage> {
    let toml = format!(
        "name = \"warm\"\nwarm = {warm}\n[[tests]]\nname = \"t\"\nframework = \"pytest\"\ntest_id = \"{id}\"\n"
    );
    let parsed = Manifest::load(&toml, Format::Toml, None)?;
    let test = parsed.tests.into_iter().next().context("one test")?;
    Ok(TestMessage {
        schema_version: isotest_protocol::SCHEMA_VERSION,
        suite_id: suite.to_owned(),
        index: 0,
        attempt: 1,
        test,
        workspace: Some(workspace().0),
        network: false,
        warm,
        digest: String::new(),
        published_at_ms: 0,
        dispatch: None,
        cache: None,
    })
}

async fn run(runner: &Runner, suite: &str, id: &str) -> Result<TestResult> {
    let msg = message(suite, id, true)?;
    Ok(runner.run(&msg, Some(workspace().1), 0).await?)
}

fn started_warm(result: &TestResult) -> bool {
    result
        .start
        .as_ref()
        .is_some_and(|s| s.mode == StartMode::Warm)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zygote_per_file_is_made_once_and_reused() -> Result<()> {
    let runner = runner(8);
    for id in [
        "test_other.py::test_one",
        "test_other.py::test_two",
        "test_other.py::test_one",
    ] {
        let result = run(&runner, "suite-a", id).await?;
        ensure!(result.status == Status::Passed, "{id}: {result:?}");
        ensure!(
            started_warm(&result),
            "{id} started warm: {:?}",
            result.start
        );
    }
    let zygotes = runner.zygotes().context("warm starts on")?;
    assert_eq!(zygotes.started(), 1, "one file, one zygote");
    assert_eq!(zygotes.live(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_suites_never_share_a_zygote() -> Result<()> {
    let runner = runner(8);
    // The same file of the same workspace, in two suites (two tenants' runs).
    for suite in ["tenant-a-suite", "tenant-b-suite"] {
        let result = run(&runner, suite, "test_other.py::test_one").await?;
        ensure!(
            result.status == Status::Passed && started_warm(&result),
            "{result:?}"
        );
    }
    let zygotes = runner.zygotes().context("warm starts on")?;
    assert_eq!(zygotes.started(), 2, "one zygote per suite, never shared");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_least_recently_used_zygote_is_evicted_beyond_the_bound() -> Result<()> {
    let runner = runner(1);
    for id in [
        "test_other.py::test_one",
        "test_calc.py::test_zero",
        "test_other.py::test_two",
    ] {
        let result = run(&runner, "suite-a", id).await?;
        ensure!(
            result.status == Status::Passed && started_warm(&result),
            "{id}: {result:?}"
        );
    }
    let zygotes = runner.zygotes().context("warm starts on")?;
    // test_other.py's zygote went when test_calc.py's came, and was made again.
    assert_eq!(zygotes.started(), 3);
    assert_eq!(zygotes.live(), 1, "never more than the bound");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_test_that_cannot_start_warm_runs_cold_and_says_why() -> Result<()> {
    let runner = runner(8);
    // A file that fails to import: the cold path's verdict (a collection error), started cold.
    let broken = run(&runner, "suite-a", "test_broken.py::test_never").await?;
    assert_eq!(broken.status, Status::Error, "{broken:?}");
    let start = broken.start.as_ref().context("a start")?;
    assert_eq!(start.mode, StartMode::Cold);
    let reason = start.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("did not import and collect warm"),
        "{reason}"
    );
    assert!(
        broken.stdout.contains("this module cannot be imported"),
        "the cold run's own output: {}",
        broken.stdout
    );
    // An id its file does not have: cold too, with pytest's own verdict.
    let missing = run(&runner, "suite-a", "test_other.py::test_missing").await?;
    assert_eq!(missing.status, Status::Error, "{missing:?}");
    let start = missing.start.as_ref().context("a start")?;
    assert_eq!(start.mode, StartMode::Cold, "{start:?}");
    // A suite that opts out.
    let msg = message("suite-b", "test_other.py::test_one", false)?;
    let opted_out = runner.run(&msg, Some(workspace().1), 0).await?;
    assert_eq!(opted_out.status, Status::Passed);
    let start = opted_out.start.as_ref().context("a start")?;
    assert_eq!(start.mode, StartMode::Cold);
    assert!(
        start
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("warm = false"),
        "{start:?}"
    );
    Ok(())
}
