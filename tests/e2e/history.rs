//! History end to end: embedded runs kept in the default SQLite file with their CI
//! metadata, read back by `history`, `suites` and `status`, pruned; a quarantined
//! failing test that leaves the exit code 0 and is marked in JUnit and CTRF; and the
//! services recording into PostgreSQL, the report still served after Redis let it go.

use std::time::Duration;

use anyhow::{Context, Result, ensure};

use isotest_history::testing::ScratchSchema;

use crate::support::{TestEnv, poll};

const SUITE: &str = "name = \"hist\"\n\
[[tests]]\nname = \"ok\"\ncommand = [\"true\"]\n\
[[tests]]\nname = \"bad\"\ncommand = [\"false\"]\n";

/// Runs `isotest ARGS` to the end: (exit code, stdout, stderr).
fn isotest(env: &TestEnv, args: &[&str]) -> Result<(i32, String, String)> {
    let output = env.command(args).output().context("run isotest")?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_runs_keep_history_and_honour_quarantine() -> Result<()> {
    let env = TestEnv::new().await;
    let manifest = env.write("hist.toml", SUITE);

    let first = env.run_suite(&manifest, "first", false, &["--meta", "commit=abc123"]);
    assert_eq!(first.code(), Some(1), "{}", first.stderr());
    let first_id = first.report().suite_id.clone();
    // The default store: $XDG_DATA_HOME/isotest/history.sqlite.
    ensure!(
        env.dir.join("isotest/history.sqlite").exists(),
        "no SQLite history file"
    );

    let (code, out, err) = isotest(&env, &["quarantine", "add", "bad", "--reason", "known"])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Quarantined `bad`"), "{out}");

    let ctrf = env.dir.join("second.ctrf.json");
    let ctrf_arg = ctrf.display().to_string();
    let second = env.run_suite(
        &manifest,
        "second",
        false,
        &["--meta", "commit=def456", "--ctrf", &ctrf_arg],
    );
    assert_eq!(
        second.code(),
        Some(0),
        "a quarantined failure passes: {}",
        second.stderr()
    );
    let bad = &second.report().tests[1];
    assert!(
        bad.quarantined && bad.status.as_str() == "failed",
        "{bad:?}"
    );
    let junit = second.junit.clone().context("a JUnit file")?;
    assert!(
        junit.contains("<property name=\"isotest.quarantined\" value=\"true\"/>"),
        "{junit}"
    );
    let ctrf: serde_json::Value = serde_json::from_slice(&std::fs::read(&ctrf)?)?;
    assert_eq!(ctrf["results"]["tests"][1]["tags"][0], "quarantined");

    let (code, out, err) = isotest(&env, &["history", "bad"])?;
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows[0].contains("failed") && rows[0].contains("def456"),
        "{out}"
    );
    assert!(rows[1].contains("abc123"), "{out}");

    let (code, out, _) = isotest(&env, &["suites", "--last", "5"])?;
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.contains(&first_id), "{out}");

    let (code, out, _) = isotest(&env, &["status", &first_id])?;
    assert_eq!(code, 0);
    assert!(
        out.contains("Suite hist") && out.contains("commit: abc123"),
        "{out}"
    );
    let (code, _, err) = isotest(&env, &["status", "no-such-suite"])?;
    assert_eq!(code, 2);
    assert_eq!(
        err.trim(),
        "error: suite no-such-suite is not in the history store (give --server to ask a running server)"
    );

    let (code, out, _) = isotest(&env, &["history", "prune", "--older-than", "1ms"])?;
    assert_eq!(code, 0);
    assert!(out.starts_with("Pruned 2 suites"), "{out}");
    let (code, _, err) = isotest(&env, &["suites", "--history-url", "mysql://nowhere/x"])?;
    assert_eq!(code, 5, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread")]
async fn services_record_in_postgres_and_serve_reports_after_redis_expires_them() -> Result<()> {
    let db = ScratchSchema::create().await?;
    let mut env = TestEnv::new().await;
    env.service_env = vec![
        ("ISOTEST_HISTORY_URL".into(), db.url.clone()),
        ("ISOTEST_RETENTION".into(), "1s".into()),
    ];
    env.start(1, 2).await?;
    let manifest = env.write("hist.toml", SUITE);
    let run = env.run_suite(&manifest, "dist", true, &["--meta", "commit=e2e1"]);
    assert_eq!(run.code(), Some(1), "{}", run.stderr());
    let id = run.report().suite_id.clone();
    let report_key = format!("{}:suite:{id}:report", env.ns);

    let redis = redis::Client::open(env.servers.redis_url.as_str())?;
    let conn = redis.get_multiplexed_async_connection().await?;
    poll(
        Duration::from_secs(30),
        "the report to expire from Redis",
        || {
            let mut conn = conn.clone();
            let key = report_key.clone();
            async move {
                let exists: bool = redis::AsyncCommands::exists(&mut conn, &key).await?;
                Ok(!exists)
            }
        },
    )
    .await?;

    let url = format!(
        "{}/v1/suites/{id}/report",
        env.producer_url.clone().context("started")?
    );
    let served: serde_json::Value = reqwest::get(&url).await?.error_for_status()?.json().await?;
    assert_eq!(served["suite_id"], id.as_str());
    let server = env.producer_url.clone().context("started")?;
    let (code, out, err) = isotest(&env, &["status", &id, "--server", &server])?;
    // One test failed: the exit code says so, as the suite's report would.
    assert_eq!(code, 1, "{err}");
    assert!(
        out.contains("complete") && out.contains("1 passed, 1 failed"),
        "{out}"
    );
    let (code, out, err) = isotest(&env, &["history", "bad", "--history-url", &db.url])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("e2e1"), "{out}");

    env.stop();
    env.cleanup().await?;
    db.drop().await?;
    Ok(())
}
