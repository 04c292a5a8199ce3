//! The aggregator records ended suites in a real PostgreSQL history store, once each
//! however often a suite is offered, and lets their Redis keys expire afterwards.

use std::time::Duration;

use redis::AsyncCommands;
use sqlx::Row;

use isotest_aggregator::HistorySink;
use isotest_history::History;
use isotest_history::testing::ScratchSchema;
use isotest_protocol::result::Status;

use crate::helpers::{TestEnv, poll, result};

async fn count(history: &History, table: &str) -> i64 {
    sqlx::query(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(history.pool())
        .await
        .expect("count")
        .try_get(0)
        .expect("a number")
}

async fn pending(env: &TestEnv) -> usize {
    env.redis
        .clone()
        .zcard(env.ns.history_pending_key())
        .await
        .expect("zcard")
}

#[tokio::test]
async fn two_replicas_record_a_suite_once_and_a_redelivery_adds_nothing() {
    let env = TestEnv::new().await;
    let db = ScratchSchema::create().await.expect("postgres");
    let history = History::open(&db.url).await.expect("history opens");
    let sink = HistorySink {
        history: history.clone(),
        retention: Duration::from_secs(3600),
        auto_quarantine: None,
    };
    let mut one = env.config("one");
    one.history = Some(sink.clone());
    let mut two = env.config("two");
    two.history = Some(sink);
    let (a, b) = (env.start(one).await, env.start(two).await);

    env.submit("s1", &["alpha", "beta"], Duration::from_secs(600))
        .await;
    env.record(&result("s1", "alpha", 1, true, Status::Passed))
        .await;
    env.record(&result("s1", "beta", 1, false, Status::Failed))
        .await;
    env.record(&result("s1", "beta", 2, true, Status::Passed))
        .await;
    let report = env.wait_report("s1").await;

    let row = poll("the suite in the history store", || {
        let history = history.clone();
        async move { history.suite("s1").await.expect("query") }
    })
    .await;
    assert_eq!((row.total, row.passed, row.flaky), (2, 2, 1));
    assert_eq!(history.report("s1").await.expect("read"), Some(report));
    poll("the queue emptied", || async {
        (pending(&env).await == 0).then_some(())
    })
    .await;

    // Every key of the suite now expires, within the retention time.
    for key in env.ns.suite_keys("s1") {
        let ttl: i64 = env.redis.clone().ttl(&key).await.expect("ttl");
        assert!(ttl > 0 && ttl <= 3600, "{key}: ttl {ttl}");
    }

    // A re-delivered completion (the suite queued again, as after a crash between
    // the write and the dequeue) writes nothing twice.
    let _: usize = env
        .redis
        .clone()
        .zadd(env.ns.history_pending_key(), "s1", 1)
        .await
        .expect("requeued");
    poll("the requeued suite handled", || async {
        (pending(&env).await == 0).then_some(())
    })
    .await;
    assert_eq!(count(&history, "suites").await, 1);
    assert_eq!(count(&history, "test_runs").await, 2);
    let runs = history
        .test_runs("beta", None, isotest_history::Owner::Any, 10)
        .await
        .expect("runs");
    assert_eq!(runs.len(), 1);
    assert!(runs[0].flaky && runs[0].attempts == 2, "{runs:?}");

    a.stop().await;
    b.stop().await;
    history.close().await;
    db.drop().await.expect("schema dropped");
    env.cleanup().await;
}

#[tokio::test]
async fn after_retention_the_report_is_gone_from_redis_but_kept_in_history() {
    let env = TestEnv::new().await;
    let db = ScratchSchema::create().await.expect("postgres");
    let history = History::open(&db.url).await.expect("history opens");
    let mut config = env.config("solo");
    config.history = Some(HistorySink {
        history: history.clone(),
        retention: Duration::from_secs(1),
        auto_quarantine: None,
    });
    let running = env.start(config).await;

    env.submit("s2", &["only"], Duration::from_secs(600)).await;
    env.record(&result("s2", "only", 1, true, Status::Failed))
        .await;
    let report = env.wait_report("s2").await;
    poll("the report expired from Redis", || async {
        let exists: bool = env
            .redis
            .clone()
            .exists(env.ns.report_key("s2"))
            .await
            .expect("exists");
        (!exists).then_some(())
    })
    .await;
    for key in env.ns.suite_keys("s2") {
        let exists: bool = env.redis.clone().exists(&key).await.expect("exists");
        assert!(!exists, "{key} outlived the retention");
    }
    assert_eq!(history.report("s2").await.expect("read"), Some(report));

    running.stop().await;
    history.close().await;
    db.drop().await.expect("schema dropped");
    env.cleanup().await;
}

#[tokio::test]
async fn without_a_history_store_nothing_expires() {
    let env = TestEnv::new().await;
    let running = env.start(env.config("solo")).await;
    env.submit("s3", &["only"], Duration::from_secs(600)).await;
    env.record(&result("s3", "only", 1, true, Status::Passed))
        .await;
    env.wait_report("s3").await;
    // Queued (recent entries are kept for an aggregator that has a store) ...
    assert_eq!(pending(&env).await, 1);
    running.stop().await;
    // ... and never set to expire.
    let ttl: i64 = env
        .redis
        .clone()
        .ttl(env.ns.report_key("s3"))
        .await
        .expect("ttl");
    assert_eq!(ttl, -1);
    env.cleanup().await;
}

#[tokio::test]
async fn a_test_whose_score_reaches_the_threshold_is_quarantined() {
    let env = TestEnv::new().await;
    let db = ScratchSchema::create().await.expect("postgres");
    let history = History::open(&db.url).await.expect("history opens");
    let mut config = env.config("solo");
    config.history = Some(HistorySink {
        history: history.clone(),
        retention: Duration::from_secs(3600),
        auto_quarantine: Some(0.25),
    });
    let running = env.start(config).await;

    // The same inputs pass, then fail: a flip on one digest, score 1/2.
    for (id, coin) in [("n1", Status::Passed), ("n2", Status::Failed)] {
        let mut record = env
            .submit(id, &["coin", "steady"], Duration::from_secs(600))
            .await;
        record.name = "nightly".into();
        record.digests = vec!["d-coin".into(), "d-steady".into()];
        let () = env
            .redis
            .clone()
            .set(
                env.ns.suite_key(id),
                serde_json::to_string(&record).expect("json"),
            )
            .await
            .expect("record rewritten");
        env.record(&result(id, "coin", 1, true, coin)).await;
        env.record(&result(id, "steady", 1, true, Status::Passed))
            .await;
        env.wait_report(id).await;
        poll("the suite recorded", || {
            let history = history.clone();
            async move { history.suite(id).await.expect("query") }
        })
        .await;
    }
    let quarantined = poll("`coin` quarantined", || {
        let history = history.clone();
        async move {
            let list = history.quarantine_list().await.expect("list");
            (!list.is_empty()).then_some(list)
        }
    })
    .await;
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert_eq!(quarantined[0].test, "coin");
    assert_eq!(quarantined[0].scope.to_string(), "*");
    assert!(
        quarantined[0]
            .reason
            .starts_with("automatic: flaky score 0.50"),
        "{quarantined:?}"
    );

    running.stop().await;
    history.close().await;
    db.drop().await.expect("schema dropped");
    env.cleanup().await;
}
