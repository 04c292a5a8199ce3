//! The scheduler's scripts against a real Redis: a dispatcher that dies between its
//! claim and its confirm (the window a SIGKILL in an end-to-end test rarely hits) loses
//! no test and lets no second copy run, whether or not a worker had started the first.

use std::time::Duration;

use redis::AsyncTypedCommands;
use redis::aio::ConnectionManager;

use isotest_infra::schedule::{self, Claim, Claims, Lease, Start};
use isotest_protocol::names::Namespace;

async fn redis() -> (ConnectionManager, Namespace) {
    let url =
        std::env::var("REDIS_URL").unwrap_or_else(|_| isotest_infra::DEFAULT_REDIS_URL.to_owned());
    let conn = isotest_infra::store::connect(&url)
        .await
        .unwrap_or_else(|e| {
            panic!("these tests need a running Redis at {url} (set REDIS_URL): {e:?}")
        });
    let ns = Namespace::new(&format!(
        "t-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    ))
    .expect("a namespace");
    (conn, ns)
}

/// A suite of `n` pending tests, as the producer schedules it.
async fn suite(conn: &mut ConnectionManager, ns: &Namespace, id: &str, n: u32) {
    for i in 0..n {
        conn.hset(ns.messages_key(id), i, format!("{{\"index\":{i}}}"))
            .await
            .expect("HSET");
        conn.rpush(ns.pending_key(id), format!("{i}:0"))
            .await
            .expect("RPUSH");
    }
}

async fn cleanup(conn: &mut ConnectionManager, ns: &Namespace) {
    let keys: Vec<String> = conn.keys(format!("{ns}:*")).await.expect("KEYS");
    if !keys.is_empty() {
        conn.del(keys).await.expect("DEL");
    }
}

/// Waits out `a`'s lease and hands it to `b`, which puts back what `a` claimed.
async fn take_over(conn: &mut ConnectionManager, ns: &Namespace, b: &str) -> (u64, u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match schedule::hold_lease(conn, ns, b, Duration::from_secs(5))
            .await
            .expect("lease")
        {
            Lease::Taken => break,
            _ => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the lease never expired"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    schedule::put_back(conn, ns, Claims::NotOf(b))
        .await
        .expect("put back")
}

#[tokio::test]
async fn a_claim_left_by_a_dead_dispatcher_is_dispatched_again_and_its_copy_dropped() {
    let (mut conn, ns) = redis().await;
    suite(&mut conn, &ns, "s", 3).await;
    assert_eq!(
        schedule::hold_lease(&mut conn, &ns, "a", Duration::from_millis(200))
            .await
            .expect("lease"),
        Lease::Taken
    );
    let Claim::Tests(claimed) = schedule::claim(&mut conn, &ns, "a", "s", 2, "a#1")
        .await
        .expect("claim")
    else {
        panic!("a holds the lease");
    };
    assert_eq!(claimed.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [0, 1]);
    // `a` published both, a worker started test 0's copy, and `a` died unconfirmed.
    assert_eq!(
        schedule::start(&mut conn, &ns, "s", 0, "a#1")
            .await
            .expect("start"),
        Start::Run
    );

    // b may not claim while a's lease lasts.
    assert_eq!(
        schedule::claim(&mut conn, &ns, "b", "s", 1, "b#1")
            .await
            .expect("claim"),
        Claim::NotLeader
    );
    let (back, started) = take_over(&mut conn, &ns, "b").await;
    assert_eq!((back, started), (1, 1), "test 1 goes back, test 0 stands");
    let pending: Vec<String> = conn
        .lrange(ns.pending_key("s"), 0, -1)
        .await
        .expect("LRANGE");
    assert_eq!(pending, ["1:0", "2:0"], "put back at the head, in order");

    // a's copy of test 1 arrives at a worker after the take-over: dropped.
    assert_eq!(
        schedule::start(&mut conn, &ns, "s", 1, "a#1")
            .await
            .expect("start"),
        Start::Stale
    );
    // b dispatches test 1 again; its copy runs, and runs again on a redelivery.
    let Claim::Tests(again) = schedule::claim(&mut conn, &ns, "b", "s", 1, "b#1")
        .await
        .expect("claim")
    else {
        panic!("b holds the lease");
    };
    assert_eq!(again.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1]);
    assert_eq!(
        schedule::start(&mut conn, &ns, "s", 1, "b#1")
            .await
            .expect("start"),
        Start::Run
    );
    assert_eq!(
        schedule::start(&mut conn, &ns, "s", 1, "b#1")
            .await
            .expect("redelivery"),
        Start::Run
    );
    assert_eq!(
        schedule::start(&mut conn, &ns, "s", 1, "a#1")
            .await
            .expect("start"),
        Start::Stale
    );
    // Test 0's running copy, redelivered after its worker died, may run again.
    assert_eq!(
        schedule::start(&mut conn, &ns, "s", 0, "a#1")
            .await
            .expect("start"),
        Start::Run
    );
    schedule::confirm(&mut conn, &ns, "b", "b#1", &[("s".into(), 1)])
        .await
        .expect("confirm");
    assert_eq!(conn.hlen(ns.claims_key()).await.expect("HLEN"), 0);
    let dispatched: Option<u64> = redis::AsyncCommands::get(&mut conn, ns.dispatched_key("s"))
        .await
        .expect("GET");
    assert_eq!(dispatched, Some(2), "tests 0 and 1, each once");
    cleanup(&mut conn, &ns).await;
}

#[tokio::test]
async fn a_batch_rabbitmq_refused_waits_again_and_a_closed_suite_is_not_claimed() {
    let (mut conn, ns) = redis().await;
    suite(&mut conn, &ns, "s", 2).await;
    schedule::hold_lease(&mut conn, &ns, "a", Duration::from_secs(5))
        .await
        .expect("lease");
    let claim = schedule::claim(&mut conn, &ns, "a", "s", 5, "a#1")
        .await
        .expect("claim");
    assert!(
        matches!(claim, Claim::Tests(ref t) if t.len() == 2),
        "{claim:?}"
    );
    let (back, started) = schedule::put_back(&mut conn, &ns, Claims::Token("a#1"))
        .await
        .expect("put back");
    assert_eq!((back, started), (2, 0));
    assert_eq!(conn.llen(ns.pending_key("s")).await.expect("LLEN"), 2);

    conn.set(ns.report_key("s"), "{}").await.expect("SET");
    assert_eq!(
        schedule::start(&mut conn, &ns, "s", 0, "a#1")
            .await
            .expect("start"),
        Start::Closed
    );
    assert_eq!(
        schedule::claim(&mut conn, &ns, "a", "s", 5, "a#2")
            .await
            .expect("claim"),
        Claim::Closed
    );
    schedule::forget_suite(&mut conn, &ns, "s", "")
        .await
        .expect("forget");
    assert!(!conn.exists(ns.pending_key("s")).await.expect("EXISTS"));
    cleanup(&mut conn, &ns).await;
}
