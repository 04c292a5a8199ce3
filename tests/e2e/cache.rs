//! The result cache through the real path (producer, RabbitMQ, workers, Redis,
//! aggregator): a no-op rerun is served from the cache; changing any one part of the
//! key (a workspace file, an env value, the timeout, the environment, the workers'
//! environment identity, the operator's salt) gives no false hit; failures, flaky
//! passes and network tests are never cached; `--no-cache` runs everything; and an
//! entry an untrusted token wrote, even a forged one, never reaches a trusted run
//! (the class of CVE-2025-36852).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use redis::AsyncCommands;

use isotest_protocol::api::SuiteRecord;
use isotest_protocol::cache::{CacheEntry, CacheScope, cache_key};
use isotest_protocol::report::Report;
use isotest_protocol::result::Status;

use crate::support::{TestEnv, poll};

/// Tests in the suites below: enough that 99% means every one.
const TESTS: usize = 40;

/// `isotest token add NAME --cache [--trusted] [--network]`: the printed token.
fn cache_token(env: &TestEnv, name: &str, flags: &[&str]) -> Result<String> {
    let mut args = vec!["token", "add", name, "--cache"];
    args.extend(flags);
    let output = env.command(&args).output()?;
    ensure!(
        output.status.success(),
        "token add failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

/// Runs a manifest on the test's server with `token`, returning its report (JSON,
/// with the JUnit and CTRF reports beside it under `label`).
fn run(env: &TestEnv, token: &str, manifest: &Path, label: &str, extra: &[&str]) -> Result<Report> {
    let json = env.dir.join(format!("{label}.json"));
    let junit = env.dir.join(format!("{label}.xml"));
    let ctrf = env.dir.join(format!("{label}.ctrf.json"));
    let server = env.producer_url.clone().context("services started")?;
    let (manifest, json_arg, junit_arg, ctrf_arg) = (
        manifest.display().to_string(),
        json.display().to_string(),
        junit.display().to_string(),
        ctrf.display().to_string(),
    );
    let mut args = vec![
        "run", &manifest, "--server", &server, "--quiet", "--json", &json_arg, "--junit",
        &junit_arg, "--ctrf", &ctrf_arg,
    ];
    args.extend(extra);
    let output = env.command(&args).env("ISOTEST_TOKEN", token).output()?;
    let report = std::fs::read(&json)
        .ok()
        .and_then(|b| serde_json::from_slice::<Report>(&b).ok());
    report.with_context(|| {
        format!(
            "{label}: no report (exit {:?}): {}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn cached(report: &Report) -> usize {
    report
        .tests
        .iter()
        .filter(|t| t.cached_from.is_some())
        .count()
}

/// A suite of [`TESTS`] tests that read the workspace, with `defaults` (TOML lines)
/// and `extra` (more `[[tests]]`) written in.
fn suite(
    env: &TestEnv,
    label: &str,
    workspace: &str,
    defaults: &str,
    extra: &str,
) -> std::path::PathBuf {
    let mut text = format!(
        "name = \"cached\"\nworkspace = \"{}\"\n\n[defaults]\n{defaults}\n",
        env.dir.join(workspace).display()
    );
    for i in 0..TESTS {
        text.push_str(&format!(
            "\n[[tests]]\nname = \"t{i}\"\ncommand = [\"sh\", \"-c\", \"grep -q hello data.txt && echo t{i} $MODE\"]\n"
        ));
    }
    text.push_str(extra);
    env.write(&format!("{label}.toml"), &text)
}

/// Starts a producer and aggregator (with `producer_args`), and one worker with
/// `worker_args` offering the environment `alt` (the worker's own root under another
/// name), and waits until it consumes.
async fn start(env: &mut TestEnv, producer_args: &[&str], worker_args: &[&str]) -> Result<()> {
    env.producer_args = producer_args.iter().map(|s| (*s).to_owned()).collect();
    env.start(0, 4).await?;
    spawn_worker(env, "worker-0", worker_args).await
}

async fn spawn_worker(env: &mut TestEnv, name: &str, args: &[&str]) -> Result<()> {
    let mut worker = vec!["worker", "--concurrency", "4", "--environment", "alt=/"];
    worker.extend(args);
    env.spawn(name, &worker);
    poll(Duration::from_secs(30), "the worker to consume", || async {
        Ok(env.consumers().await? >= 1 && !identities(env).await?.is_empty())
    })
    .await
}

async fn redis(env: &TestEnv) -> Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(env.servers.redis_url.as_str())?
        .get_multiplexed_async_connection()
        .await?)
}

/// The environment identities the workers advertise.
async fn identities(env: &TestEnv) -> Result<std::collections::BTreeMap<String, String>> {
    Ok(redis(env)
        .await?
        .hgetall(format!("{}:environments", env.ns))
        .await?)
}

async fn cache_keys(env: &TestEnv, scope: &str) -> Result<Vec<String>> {
    Ok(redis::cmd("KEYS")
        .arg(format!("{}:cache:{scope}*", env.ns))
        .query_async(&mut redis(env).await?)
        .await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_no_op_rerun_is_served_from_the_cache_and_no_cache_runs_everything() -> Result<()> {
    let mut env = TestEnv::new().await;
    env.open = false;
    start(&mut env, &[], &[]).await?;
    let main = cache_token(&env, "main", &["--trusted"])?;
    env.write("ws/data.txt", "hello\n");
    let manifest = suite(&env, "suite", "ws", "env = { MODE = \"a\" }", "");

    let first = run(&env, &main, &manifest, "first", &[])?;
    ensure!(
        first.summary.passed as usize == TESTS,
        "{:?}",
        first.summary
    );
    ensure!(
        cached(&first) == 0,
        "nothing is cached before the first run"
    );
    ensure!(
        cache_keys(&env, "shared:").await?.len() == TESTS,
        "a trusted run writes the shared cache"
    );

    let second = run(&env, &main, &manifest, "second", &[])?;
    let hits = cached(&second);
    ensure!(hits * 100 >= TESTS * 99, "{hits} of {TESTS} cached");
    ensure!(second.summary.passed as usize == TESTS && second.summary.cached as usize == hits);
    for test in &second.tests {
        let from = test.cached_from.as_ref().context("cached")?;
        ensure!(
            from.suite_id == first.suite_id && from.test == test.name,
            "{from:?}"
        );
        ensure!(
            test.status == Status::Passed && test.worker == "cache",
            "{test:?}"
        );
    }
    let junit = std::fs::read_to_string(env.dir.join("second.xml"))?;
    ensure!(
        junit.contains(&format!(
            "name=\"isotest.cached_from\" value=\"{}/t0\"",
            first.suite_id
        )),
        "{junit}"
    );
    let ctrf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.dir.join("second.ctrf.json"))?)?;
    let t0 = &ctrf["results"]["tests"][0];
    ensure!(
        t0["extra"]["cachedFrom"]["suiteId"] == first.suite_id.as_str(),
        "{t0}"
    );
    ensure!(t0["tags"] == serde_json::json!(["cached"]), "{t0}");

    let bypassed = run(&env, &main, &manifest, "bypassed", &["--no-cache"])?;
    ensure!(cached(&bypassed) == 0, "--no-cache runs every test");
    ensure!(bypassed.summary.passed as usize == TESTS);
    ensure!(bypassed.tests.iter().all(|t| t.worker != "cache"));
    env.stop();
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread")]
async fn changing_any_one_key_component_gives_no_false_hit() -> Result<()> {
    let mut env = TestEnv::new().await;
    env.open = false;
    start(&mut env, &[], &[]).await?;
    let main = cache_token(&env, "main", &["--trusted"])?;
    env.write("ws/data.txt", "hello\n");
    env.write("ws2/data.txt", "hello, changed\n");
    let base_defaults = "env = { MODE = \"a\" }\ntimeout = \"30s\"";
    let base = suite(&env, "base", "ws", base_defaults, "");
    ensure!(cached(&run(&env, &main, &base, "warm", &[])?) == 0);
    ensure!(
        cached(&run(&env, &main, &base, "warm-again", &[])?) == TESTS,
        "the cache is warm"
    );

    let variants = [
        (
            "workspace",
            suite(&env, "workspace", "ws2", base_defaults, ""),
        ),
        (
            "env",
            suite(
                &env,
                "env",
                "ws",
                "env = { MODE = \"b\" }\ntimeout = \"30s\"",
                "",
            ),
        ),
        (
            "timeout",
            suite(
                &env,
                "timeout",
                "ws",
                "env = { MODE = \"a\" }\ntimeout = \"31s\"",
                "",
            ),
        ),
        (
            "environment",
            suite(
                &env,
                "environment",
                "ws",
                &format!("{base_defaults}\nenvironment = \"alt\""),
                "",
            ),
        ),
    ];
    for (what, manifest) in &variants {
        let report = run(&env, &main, manifest, what, &[])?;
        ensure!(
            report.summary.passed as usize == TESTS,
            "{what}: {:?}",
            report.summary
        );
        ensure!(
            cached(&report) == 0,
            "{what}: {} false hits",
            cached(&report)
        );
    }
    // One test's own variable changed: that test runs, the rest are served.
    let one = base.with_file_name("one.toml");
    let text = std::fs::read_to_string(&base)?.replace(
        "name = \"t7\"\n",
        "name = \"t7\"\nenv = { MODE = \"a\", EXTRA = \"1\" }\n",
    );
    std::fs::write(&one, text)?;
    let report = run(&env, &main, &one, "one", &[])?;
    let missed: Vec<&str> = report
        .tests
        .iter()
        .filter(|t| t.cached_from.is_none())
        .map(|t| t.name.as_str())
        .collect();
    ensure!(missed == ["t7"], "only the changed test runs: {missed:?}");

    // The workers' environment changes (here, their memory limit): every key moves.
    let before = identities(&env).await?;
    let old = env.pid("worker-0").context("worker")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(old)?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    poll(
        Duration::from_secs(30),
        "the old worker to leave",
        || async { Ok(env.consumers().await? == 0) },
    )
    .await?;
    env.spawn(
        "worker-1",
        &[
            "worker",
            "--concurrency",
            "4",
            "--environment",
            "alt=/",
            "--memory-mib",
            "900",
        ],
    );
    poll(
        Duration::from_secs(30),
        "the new worker's identity",
        || async { Ok(env.consumers().await? >= 1 && identities(&env).await? != before) },
    )
    .await?;
    let report = run(&env, &main, &base, "new-environment", &[])?;
    ensure!(report.summary.passed as usize == TESTS);
    ensure!(
        cached(&report) == 0,
        "{} false hits after the environment changed",
        cached(&report)
    );
    env.stop();

    // The operator's salt disowns the whole cache.
    let mut salted = TestEnv::new().await;
    salted.open = false;
    salted.ns.clone_from(&env.ns);
    start(
        &mut salted,
        &["--cache-salt", "rotated"],
        &["--memory-mib", "900"],
    )
    .await?;
    let main = cache_token(&salted, "main-salted", &["--trusted"])?;
    let report = run(&salted, &main, &base, "salted", &[])?;
    ensure!(
        cached(&report) == 0,
        "{} hits after the salt changed",
        cached(&report)
    );
    let report = run(&salted, &main, &base, "salted-again", &[])?;
    ensure!(cached(&report) == TESTS, "the salted cache fills again");
    salted.stop();
    salted.cleanup().await
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_flaky_passes_and_network_tests_are_never_cached() -> Result<()> {
    let mut env = TestEnv::new().await;
    env.open = false;
    env.service_env = vec![("ISOTEST_ALLOW_NETWORK".into(), "true".into())];
    start(&mut env, &[], &[]).await?;
    let main = cache_token(&env, "main", &["--trusted", "--network"])?;
    env.write("ws/data.txt", "hello\n");
    let extra = "\n[[tests]]\nname = \"fails\"\ncommand = [\"false\"]\n\
                 \n[[tests]]\nname = \"flaky\"\nretries = 1\n\
                 command = [\"sh\", \"-c\", \"test \\\"$ISOTEST_ATTEMPT\\\" -ge 2\"]\n";
    let manifest = suite(&env, "mixed", "ws", "", extra);
    for label in ["mixed-1", "mixed-2"] {
        let report = run(&env, &main, &manifest, label, &[])?;
        let status = |name: &str| {
            report
                .tests
                .iter()
                .find(|t| t.name == name)
                .map(|t| (t.status, t.flaky, t.cached_from.is_some()))
        };
        ensure!(
            status("fails") == Some((Status::Failed, false, false)),
            "{label}: {:?}",
            status("fails")
        );
        ensure!(
            status("flaky") == Some((Status::Passed, true, false)),
            "{label}: {:?}",
            status("flaky")
        );
        let expected = if label == "mixed-1" { 0 } else { TESTS };
        ensure!(
            cached(&report) == expected,
            "{label}: {} cached",
            cached(&report)
        );
    }

    let networked = env.write(
        "networked.toml",
        "name = \"networked\"\nnetwork = true\n\n[[tests]]\nname = \"online\"\ncommand = [\"true\"]\n",
    );
    for label in ["net-1", "net-2"] {
        let report = run(&env, &main, &networked, label, &[])?;
        ensure!(
            report.summary.passed == 1 && cached(&report) == 0,
            "{label}: {:?}",
            report.summary
        );
    }
    ensure!(
        cache_keys(&env, "").await?.len() == TESTS,
        "only the passing, steady, offline tests have entries"
    );
    env.stop();
    env.cleanup().await
}

/// The poisoning attack: a pull request's token (untrusted) runs first and writes its
/// entries, and then forges one that says a failing test passed, under the very key the
/// main branch's run computes. The trusted run reads none of them: it runs every test,
/// and the failing test fails. The forged entry only ever fools its own token.
#[tokio::test(flavor = "multi_thread")]
async fn an_untrusted_token_cannot_make_a_trusted_run_read_its_entry() -> Result<()> {
    let mut env = TestEnv::new().await;
    env.open = false;
    start(&mut env, &[], &[]).await?;
    let main = cache_token(&env, "main", &["--trusted"])?;
    let pr = cache_token(&env, "pr", &[])?;
    env.write("ws/data.txt", "hello\n");
    let extra = "\n[[tests]]\nname = \"broken\"\ncommand = [\"false\"]\n";
    let manifest = suite(&env, "suite", "ws", "", extra);

    let first = run(&env, &pr, &manifest, "pr-first", &[])?;
    ensure!(cached(&first) == 0);
    ensure!(
        cache_keys(&env, "shared:").await?.is_empty(),
        "an untrusted run never writes the shared cache"
    );
    ensure!(
        cache_keys(&env, "token:pr:").await?.len() == TESTS,
        "it writes its own"
    );

    // The forgery: a `passed` entry for `broken`, under its key, in the PR's scope.
    let mut conn = redis(&env).await?;
    let record: String = conn
        .get(format!("{}:suite:{}", env.ns, first.suite_id))
        .await?;
    let record: SuiteRecord = serde_json::from_str(&record)?;
    let broken = record
        .tests
        .iter()
        .position(|t| t == "broken")
        .context("broken")?;
    let identity = identities(&env)
        .await?
        .remove("default")
        .context("identity")?;
    let key = cache_key(&record.digests[broken], &identity, "");
    let forged = CacheEntry {
        schema_version: 1,
        suite_id: first.suite_id.clone(),
        test: "broken".into(),
        duration_ms: 1,
        finished_at_ms: 1,
        worker: "forged".into(),
        exit_code: Some(0),
        cases: vec![],
    };
    let ns = isotest_protocol::names::Namespace::new(&env.ns)?;
    let () = conn
        .set(
            ns.cache_entry_key(&CacheScope::Token("pr".into()), &key),
            serde_json::to_string(&forged)?,
        )
        .await?;

    let trusted = run(&env, &main, &manifest, "main", &[])?;
    ensure!(
        cached(&trusted) == 0,
        "the trusted run read {} untrusted entries",
        cached(&trusted)
    );
    let status = trusted
        .tests
        .iter()
        .find(|t| t.name == "broken")
        .map(|t| t.status);
    ensure!(
        status == Some(Status::Failed),
        "the broken test ran and failed: {status:?}"
    );

    // The untrusted token does read what it wrote, the forgery included (it fools only
    // itself), and the shared entries first once a trusted run wrote them.
    let again = run(&env, &pr, &manifest, "pr-again", &[])?;
    ensure!(cached(&again) == TESTS + 1, "{} cached", cached(&again));
    for test in again.tests.iter().filter(|t| t.name != "broken") {
        let from = test.cached_from.as_ref().context("cached")?;
        ensure!(
            from.suite_id == trusted.suite_id,
            "the shared entry first: {from:?}"
        );
    }
    env.stop();
    env.cleanup().await
}
