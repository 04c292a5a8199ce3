//! The history store against a real PostgreSQL (each test in a schema of its own, so
//! tests run in parallel on one database) and a real SQLite file: migrations from empty
//! and from the base schema, suites written once, reads, pruning, flaky tests and
//! quarantine.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use sqlx::Row;
use sqlx::migrate::Migrator;

use isotest_history::quarantine::Scope;
use isotest_history::{FlakyPolicy, History, Owner, Recorded, SuiteEntry};
use isotest_protocol::api::meta;
use isotest_protocol::report::{Report, SuiteState};
use isotest_protocol::result::Status;
use isotest_report::fixtures;

/// The PostgreSQL the tests use: `DATABASE_URL`, else the local one with
/// trust authentication.
fn postgres_base() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A fresh, empty PostgreSQL schema; dropped by [`Db::drop`].
struct Db {
    url: String,
    schema: Option<String>,
    file: Option<PathBuf>,
}

impl Db {
    async fn postgres() -> Result<Db> {
        sqlx::any::install_default_drivers();
        let schema = format!("isotest_{}", uuid::Uuid::new_v4().simple());
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&postgres_base())
            .await
            .context("connect to PostgreSQL")?;
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut conn)
            .await?;
        let url = format!("{}?options=-c%20search_path%3D{schema}", postgres_base());
        Ok(Db {
            url,
            schema: Some(schema),
            file: None,
        })
    }

    fn sqlite() -> Db {
        let file = std::env::temp_dir()
            .join(format!("isotest-history-{}", uuid::Uuid::new_v4().simple()))
            .join("history.sqlite");
        Db {
            url: file.display().to_string(),
            schema: None,
            file: Some(file),
        }
    }

    async fn drop(self) -> Result<()> {
        if let Some(schema) = self.schema {
            let mut conn =
                <sqlx::AnyConnection as sqlx::Connection>::connect(&postgres_base()).await?;
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&mut conn)
                .await?;
        }
        if let Some(dir) = self.file.as_ref().and_then(|f| f.parent()) {
            std::fs::remove_dir_all(dir)?;
        }
        Ok(())
    }
}

/// A finished suite `id` of suite `name`, finished at `at` ms, with `tests`: each a name
/// and its verdict; a name ending in `~` passed on a retry after failing.
fn report(id: &str, name: &str, at: u64, tests: &[(&str, Status)]) -> Report {
    let names: Vec<&str> = tests.iter().map(|(n, _)| *n).collect();
    let mut record = fixtures::record(&names);
    record.id = id.to_owned();
    record.name = name.to_owned();
    let mut results = Vec::new();
    for (test, status) in tests {
        let mut push = |attempt, is_final, status| {
            let mut r = fixtures::result(test, attempt, is_final, status);
            r.suite_id = id.to_owned();
            results.push(r);
        };
        if test.ends_with('~') {
            push(1, false, Status::Failed);
            push(2, true, *status);
        } else {
            push(1, true, *status);
        }
    }
    let mut report = isotest_report::assemble(&record, results, SuiteState::Complete);
    report.created_at_ms = at.saturating_sub(50);
    report.finished_at_ms = at;
    report
}

fn entry<'a>(
    report: &'a Report,
    meta: &'a BTreeMap<String, String>,
    digests: &'a BTreeMap<String, String>,
) -> SuiteEntry<'a> {
    SuiteEntry {
        report,
        token: Some("ci-main"),
        meta,
        digests,
    }
}

async fn count(history: &History, table: &str) -> Result<i64> {
    let row = sqlx::query(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(history.pool())
        .await?;
    Ok(row.try_get(0)?)
}

async fn each_backend<F, Fut>(test: F) -> Result<()>
where
    F: Fn(History) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    for db in [Db::postgres().await?, Db::sqlite()] {
        let history = History::open(&db.url).await.context(db.url.clone())?;
        test(history.clone())
            .await
            .with_context(|| format!("{:?}", history.backend()))?;
        history.close().await;
        db.drop().await?;
    }
    Ok(())
}

#[tokio::test]
async fn migrates_from_empty_and_reopens_without_change() -> Result<()> {
    each_backend(|history| async move {
        for table in ["suites", "test_runs", "quarantine"] {
            assert_eq!(count(&history, table).await?, 0, "{table}");
        }
        let applied = count(&history, "_sqlx_migrations").await?;
        assert_eq!(applied, 2);
        Ok(())
    })
    .await?;
    // Opening an already migrated store applies nothing and keeps its rows.
    let db = Db::sqlite();
    let history = History::open(&db.url).await?;
    let r = report("a", "demo", 1_000, &[("t", Status::Passed)]);
    let _ = history
        .record(&entry(&r, &BTreeMap::new(), &BTreeMap::new()))
        .await?;
    history.close().await;
    let again = History::open(&db.url).await?;
    assert_eq!(count(&again, "_sqlx_migrations").await?, 2);
    assert_eq!(count(&again, "test_runs").await?, 1);
    again.close().await;
    db.drop().await
}

/// A store at the base schema (migration 0001 only) with a suite in it is upgraded by
/// opening it: its rows stay, and the new columns are worked out for them.
#[tokio::test]
async fn upgrades_a_store_at_the_base_schema() -> Result<()> {
    let base_dir = std::env::temp_dir().join(format!("isotest-base-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&base_dir)?;
    let migrations = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("migrations");
    std::fs::copy(
        migrations.join("0001_base.sql"),
        base_dir.join("0001_base.sql"),
    )?;
    let base = Migrator::new(base_dir.as_path()).await?;
    for db in [Db::postgres().await?, Db::sqlite()] {
        let url = match &db.file {
            None => db.url.clone(),
            Some(file) => {
                std::fs::create_dir_all(file.parent().context("a folder")?)?;
                format!("sqlite://{}?mode=rwc", file.display())
            }
        };
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await?;
        base.run(&pool).await?;
        // An outage (3 tests, 2 failed) and a good suite, written as version one did.
        for (id, passed, failed) in [("old-outage", 1, 2), ("old-good", 3, 0)] {
            sqlx::query(
                "INSERT INTO suites (id, name, token, state, created_at_ms, finished_at_ms, \
                 total, passed, failed, skipped, flaky, summary, meta, report) \
                 VALUES ($1, 'demo', NULL, 'complete', 1, 2, 3, $2, $3, 0, 0, '{}', '{}', '{}')",
            )
            .bind(id)
            .bind(passed)
            .bind(failed)
            .execute(&pool)
            .await?;
            sqlx::query(
                "INSERT INTO test_runs (suite_id, test, suite_name, status, flaky, duration_ms, \
                 attempts, worker, digest, exit_code, output, finished_at_ms) \
                 VALUES ($1, 't', 'demo', 'passed', 0, 5, 1, 'w', 'd', 0, 'report:tests[0]', 2)",
            )
            .bind(id)
            .execute(&pool)
            .await?;
        }
        pool.close().await;

        let history = History::open(&db.url).await?;
        assert_eq!(count(&history, "_sqlx_migrations").await?, 2);
        let outage = history.suite("old-outage").await?.context("kept")?;
        let good = history.suite("old-good").await?.context("kept")?;
        assert!(outage.outage, "{outage:?}");
        assert!(!good.outage, "{good:?}");
        let runs = history.test_runs("t", None, Owner::Any, 10).await?;
        assert_eq!(runs.len(), 2);
        assert!(runs.iter().all(|r| !r.infrastructure));
        // The tables 0002 added work.
        assert!(history.quarantine_add(&Scope::All, "t", "x", 3).await?);
        history.close().await;
        db.drop().await?;
    }
    std::fs::remove_dir_all(base_dir)?;
    Ok(())
}

#[tokio::test]
async fn a_suite_offered_twice_is_written_once() -> Result<()> {
    each_backend(|history| async move {
        let r = report(
            "s-1",
            "demo",
            5_000,
            &[
                ("a", Status::Passed),
                ("b", Status::Failed),
                ("c~", Status::Passed),
            ],
        );
        let meta = BTreeMap::from([
            (meta::COMMIT.to_owned(), "abc123".to_owned()),
            (meta::BRANCH.to_owned(), "main".to_owned()),
            (meta::SYSTEM.to_owned(), "github-actions".to_owned()),
        ]);
        let digests = BTreeMap::from([("a".to_owned(), "da".to_owned())]);
        // Two offers at once (two replicas) and one later (a re-delivery).
        let offer = entry(&r, &meta, &digests);
        let (first, second) = tokio::join!(history.record(&offer), history.record(&offer));
        let mut outcomes = vec![first?, second?];
        outcomes.push(history.record(&entry(&r, &meta, &digests)).await?);
        outcomes.sort_by_key(|o| *o != Recorded::Now);
        assert_eq!(
            outcomes,
            [Recorded::Now, Recorded::Already, Recorded::Already]
        );
        assert_eq!(count(&history, "suites").await?, 1);
        assert_eq!(count(&history, "test_runs").await?, 3);

        let suite = history.suite("s-1").await?.context("recorded")?;
        assert_eq!(
            (suite.total, suite.passed, suite.failed, suite.flaky),
            (3, 2, 1, 1)
        );
        assert_eq!(suite.token.as_deref(), Some("ci-main"));
        assert_eq!(suite.meta, meta);
        let runs = history.test_runs("a", None, Owner::Any, 10).await?;
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].digest.as_deref(), Some("da"));
        assert_eq!(runs[0].commit.as_deref(), Some("abc123"));
        assert_eq!(runs[0].output, "report:tests[0]");
        let retried = history
            .test_runs("c~", Some("demo"), Owner::Token("ci-main"), 10)
            .await?;
        assert!(retried[0].flaky && retried[0].attempts == 2, "{retried:?}");
        assert_eq!(history.report("s-1").await?, Some(r));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn lists_recent_suites_and_prunes_old_ones() -> Result<()> {
    each_backend(|history| async move {
        let none = BTreeMap::new();
        for i in 1..=5u64 {
            let r = report(
                &format!("s{i}"),
                "demo",
                i * 1_000,
                &[("t", Status::Passed)],
            );
            let _ = history.record(&entry(&r, &none, &none)).await?;
        }
        let last: Vec<String> = history
            .suites(3, Owner::Any)
            .await?
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(last, ["s5", "s4", "s3"]);
        assert!(
            history
                .suites(3, Owner::Token("someone-else"))
                .await?
                .is_empty()
        );
        assert!(history.suites(3, Owner::Anonymous).await?.is_empty());
        assert_eq!(history.suites(9, Owner::Token("ci-main")).await?.len(), 5);
        assert_eq!(history.prune(3_000).await?, 2);
        assert_eq!(count(&history, "suites").await?, 3);
        assert_eq!(count(&history, "test_runs").await?, 3);
        assert_eq!(history.report("s1").await?, None);
        assert!(history.report("s3").await?.is_some());
        Ok(())
    })
    .await
}

#[tokio::test]
async fn quarantine_is_kept_per_scope() -> Result<()> {
    each_backend(|history| async move {
        let repo = Scope::Repository("acme/shop".into());
        assert!(history.quarantine_add(&repo, "slow", "flaky", 1).await?);
        assert!(!history.quarantine_add(&repo, "slow", "again", 2).await?);
        assert!(
            history
                .quarantine_add(&Scope::Token("ci-pr".into()), "net", "", 3)
                .await?
        );
        assert_eq!(
            history
                .quarantined_for(Some("ci-main"), Some("acme/shop"))
                .await?,
            ["slow"]
        );
        assert_eq!(history.quarantined_for(Some("ci-pr"), None).await?, ["net"]);
        assert_eq!(history.quarantine_list().await?.len(), 2);
        assert!(history.quarantine_remove(&repo, "slow").await?);
        assert!(!history.quarantine_remove(&repo, "slow").await?);
        assert!(
            history
                .quarantined_for(None, Some("acme/shop"))
                .await?
                .is_empty()
        );
        Ok(())
    })
    .await
}

/// A small deterministic generator (xorshift64*), so the seeded failures are the same
/// on every run.
struct Seeded(u64);

impl Seeded {
    fn chance(&mut self, percent: u64) -> bool {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) % 100 < percent
    }
}

/// Records run `i` of a suite of five tests: `coin` fails 30% of the time (seeded),
/// `steady` always passes, `broken` always fails, `changed` passes until its inputs
/// change at run 25 and fails after, and `retried` is deterministic too.
async fn record_run(history: &History, i: u64, coin_fails: bool) -> Result<()> {
    let coin = if coin_fails {
        Status::Failed
    } else {
        Status::Passed
    };
    let changed = if i < 25 {
        Status::Passed
    } else {
        Status::Failed
    };
    let r = report(
        &format!("run-{i:03}"),
        "nightly",
        10_000 + i * 1_000,
        &[
            ("coin", coin),
            ("steady", Status::Passed),
            ("broken", Status::Failed),
            ("changed", changed),
            ("other", Status::Passed),
        ],
    );
    let digests: BTreeMap<String, String> = [
        ("coin", "d-coin"),
        ("steady", "d-steady"),
        ("broken", "d-broken"),
        (
            "changed",
            if i < 25 { "d-changed-1" } else { "d-changed-2" },
        ),
        ("other", "d-other"),
    ]
    .into_iter()
    .map(|(t, d)| (t.to_owned(), d.to_owned()))
    .collect();
    let _ = history
        .record(&entry(&r, &BTreeMap::new(), &digests))
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_test_failing_30_percent_of_the_time_is_flagged_within_20_runs() -> Result<()> {
    each_backend(|history| async move {
        let mut rng = Seeded(0x5eed_1234_abcd_0001);
        let policy = FlakyPolicy::default();
        let mut flagged_at = None;
        for i in 1..=20 {
            record_run(&history, i, rng.chance(30)).await?;
            let flaky = history.flaky(0, Owner::Any, &policy).await?;
            if flaky.iter().any(|f| f.test == "coin") {
                flagged_at = Some(i);
                break;
            }
        }
        let at = flagged_at.context("`coin` was not flagged within 20 runs")?;
        let flaky = history.flaky(0, Owner::Any, &policy).await?;
        let coin = flaky.iter().find(|f| f.test == "coin").context("flagged")?;
        assert_eq!(coin.suite, "nightly");
        assert!(coin.score > 0.0 && coin.last_failure.is_some(), "{coin:?}");
        eprintln!("`coin` flagged after {at} runs");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn no_deterministic_test_is_flagged_over_50_runs() -> Result<()> {
    each_backend(|history| async move {
        let mut rng = Seeded(0x5eed_1234_abcd_0002);
        let policy = FlakyPolicy::default();
        for i in 1..=50 {
            record_run(&history, i, rng.chance(30)).await?;
            let flaky = history.flaky(0, Owner::Any, &policy).await?;
            let wrong: Vec<&str> = flaky
                .iter()
                .map(|f| f.test.as_str())
                .filter(|t| *t != "coin")
                .collect();
            assert!(wrong.is_empty(), "run {i}: flagged {wrong:?}");
        }
        // An outage (most tests failing at once) does not make a steady test flaky.
        let r = report(
            "outage",
            "nightly",
            100_000,
            &[
                ("coin", Status::Failed),
                ("steady", Status::Failed),
                ("broken", Status::Failed),
                ("changed", Status::Failed),
                ("other", Status::Failed),
            ],
        );
        let digests: BTreeMap<String, String> =
            [("steady".to_owned(), "d-steady".to_owned())].into();
        let _ = history
            .record(&entry(&r, &BTreeMap::new(), &digests))
            .await?;
        let flaky = history.flaky(0, Owner::Any, &policy).await?;
        assert!(flaky.iter().all(|f| f.test == "coin"), "{flaky:?}");
        Ok(())
    })
    .await
}
