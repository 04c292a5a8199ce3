//! The dashboard's server side: logging in with a token gives an HttpOnly, SameSite
//! cookie that sees only that token's suites, and a suite's live view streams every
//! result once, resuming after a dropped connection from `Last-Event-ID` (or from a
//! snapshot when the stream was trimmed past it).

use std::collections::BTreeSet;

use redis::AsyncTypedCommands;
use serde_json::Value;

use isotest_protocol::live::{LiveResult, LiveSnapshot, SuiteList};
use isotest_protocol::report::SuiteState;
use isotest_protocol::result::Status;

use crate::helpers::{Sse, SseEvent, TestEnv, manager, manifest, result};

/// Logs in; returns the `Cookie` header value of the session.
async fn login(env: &TestEnv, token: &str) -> String {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let response = client
        .post(env.url("/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", token))
        .send()
        .await
        .expect("POST /ui/login");
    assert_eq!(
        response.status().as_u16(),
        303,
        "redirected to the dashboard"
    );
    assert_eq!(
        response.headers().get("location").map(|v| v.as_bytes()),
        Some(&b"/ui"[..])
    );
    let cookie = response
        .headers()
        .get("set-cookie")
        .expect("a session cookie")
        .to_str()
        .expect("ASCII")
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }
    cookie.split(';').next().expect("name=value").to_owned()
}

async fn get_with(env: &TestEnv, path: &str, cookie: &str) -> reqwest::Response {
    env.client
        .get(env.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

#[tokio::test]
async fn a_session_sees_its_own_tokens_suites_only() {
    let env = TestEnv::start_with(|c| c.open = false).await;
    let mine = env.add_token("team-a").await;
    let theirs = env.add_token("team-b").await;
    let my_suite = env.submit_as(Some(&mine), &manifest(&["a", "b"])).await;
    let their_suite = env.submit_as(Some(&theirs), &manifest(&["c"])).await;

    // The page itself holds no data; its JSON needs a session.
    assert_eq!(env.get("/ui").await.status().as_u16(), 200);
    assert_eq!(env.get("/ui/api/suites").await.status().as_u16(), 401);
    let refused = env
        .client
        .post(env.url("/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={}", "itk_not-a-token"))
        .send()
        .await
        .expect("POST /ui/login");
    assert_eq!(refused.status().as_u16(), 401);
    assert!(refused.headers().get("set-cookie").is_none());
    let page = refused.text().await.expect("a page");
    assert!(page.contains("That token is not valid"), "{page}");

    let cookie = login(&env, &mine).await;
    let list: SuiteList = get_with(&env, "/ui/api/suites", &cookie)
        .await
        .json()
        .await
        .expect("SuiteList");
    assert_eq!(list.viewer.token.as_deref(), Some("team-a"));
    let ids: Vec<&str> = list.suites.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, [my_suite.as_str()]);
    assert_eq!((list.suites[0].total, list.suites[0].done), (2, 0));
    assert_eq!(list.suites[0].state, SuiteState::Running);

    // Another token's suite is not there, by any route of the dashboard.
    for path in [
        format!("/ui/api/suites/{their_suite}"),
        format!("/ui/api/suites/{their_suite}/events"),
        format!("/ui/api/suites/{their_suite}/attempts?test=c"),
    ] {
        let response = get_with(&env, &path, &cookie).await;
        assert_eq!(response.status().as_u16(), 404, "{path}");
    }
    let response = get_with(&env, &format!("/ui/api/suites/{my_suite}"), &cookie).await;
    assert_eq!(response.status().as_u16(), 200);

    // The cookie reads /v1 (the history store's views plug in so), but never writes.
    let response = get_with(&env, &format!("/v1/suites/{my_suite}"), &cookie).await;
    assert_eq!(response.status().as_u16(), 200);
    let response = env
        .client
        .post(env.url("/v1/suites"))
        .header("cookie", &cookie)
        .json(&manifest(&["x"]))
        .send()
        .await
        .expect("POST /v1/suites");
    assert_eq!(response.status().as_u16(), 401);
    let response = env
        .client
        .delete(env.url(&format!("/v1/suites/{my_suite}")))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status().as_u16(), 401);

    // A form from another site cannot log a browser in.
    let response = env
        .client
        .post(env.url("/ui/login"))
        .header("origin", "http://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={mine}"))
        .send()
        .await
        .expect("POST /ui/login");
    assert_eq!(response.status().as_u16(), 403);

    // Revoking the token ends its sessions.
    let store = isotest_producer::store::Store::new(manager().await, env.ns.clone());
    assert!(store.revoke_token("team-a").await.expect("revoke"));
    let response = get_with(&env, "/ui/api/suites", &cookie).await;
    assert_eq!(response.status().as_u16(), 401);
    env.finish().await;
}

#[tokio::test]
async fn logging_out_ends_the_session() {
    let env = TestEnv::start_with(|c| c.open = false).await;
    let token = env.add_token("team-a").await;
    let cookie = login(&env, &token).await;
    assert_eq!(
        get_with(&env, "/ui/api/me", &cookie)
            .await
            .status()
            .as_u16(),
        200
    );
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .post(env.url("/ui/logout"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("POST /ui/logout");
    assert_eq!(response.status().as_u16(), 303);
    let cleared = response
        .headers()
        .get("set-cookie")
        .expect("the cookie cleared")
        .to_str()
        .expect("ASCII");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert_eq!(
        get_with(&env, "/ui/api/me", &cookie)
            .await
            .status()
            .as_u16(),
        401
    );
    env.finish().await;
}

/// Opens the live view of a suite on an open producer, resuming after `last_id`.
async fn live(env: &TestEnv, suite: &str, last_id: Option<&str>) -> Sse {
    let mut request = env
        .client
        .get(env.url(&format!("/ui/api/suites/{suite}/events")));
    if let Some(id) = last_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.expect("GET events");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.headers().get("content-type").map(|v| v.as_bytes()),
        Some(&b"text/event-stream"[..])
    );
    Sse::new(response)
}

/// Reads events until `results` results have come; returns them and the last id.
async fn read_results(sse: &mut Sse, results: usize) -> (Vec<LiveResult>, Option<String>) {
    let mut got = Vec::new();
    let mut last = None;
    while got.len() < results {
        let SseEvent { id, event, data } = sse.next().await.expect("the stream goes on");
        match event.as_str() {
            "suite" => {}
            "result" => {
                got.push(serde_json::from_str(&data).expect("a LiveResult"));
                last = id;
            }
            other => panic!("unexpected {other} event: {data}"),
        }
    }
    (got, last)
}

fn names(results: &[LiveResult]) -> Vec<String> {
    results
        .iter()
        .map(|r| format!("{}#{}", r.test, r.attempt))
        .collect()
}

#[tokio::test]
async fn a_dropped_live_view_resumes_from_its_last_event_without_a_loss() {
    let env = TestEnv::start().await;
    let tests: Vec<String> = (0..30).map(|i| format!("t{i:02}")).collect();
    let refs: Vec<&str> = tests.iter().map(String::as_str).collect();
    let suite = env.submit_as(None, &manifest(&refs)).await;

    for name in &refs[..10] {
        env.write_result(&result(&suite, name, 1, true, Status::Passed))
            .await;
    }
    let mut first = live(&env, &suite, None).await;
    let suite_event = first.next().await.expect("the suite event");
    assert_eq!(suite_event.event, "suite");
    let info: Value = serde_json::from_str(&suite_event.data).expect("JSON");
    assert_eq!(info["total"], 30);
    let (seen, last_id) = read_results(&mut first, 10).await;
    // The connection drops mid-suite; results keep coming meanwhile.
    drop(first);
    for name in &refs[10..20] {
        let status = if *name == "t15" {
            Status::Failed
        } else {
            Status::Passed
        };
        env.write_result(&result(&suite, name, 1, true, status))
            .await;
    }

    let mut second = live(&env, &suite, last_id.as_deref()).await;
    let (resumed, _) = read_results(&mut second, 10).await;
    let failure = resumed
        .iter()
        .find(|r| r.test == "t15")
        .expect("the failure is streamed");
    assert_eq!(failure.status, Status::Failed);
    assert!(
        failure.stderr_tail.contains("assertion failed in t15"),
        "{failure:?}"
    );
    assert_eq!(failure.exit_code, Some(1));

    for name in &refs[20..] {
        env.write_result(&result(&suite, name, 1, true, Status::Passed))
            .await;
    }
    let (rest, _) = read_results(&mut second, 10).await;
    // The suite ends: its report is stored through the one report script.
    let mut conn = manager().await;
    let record = isotest_infra::suites::load_record(&mut conn, &env.ns, &suite)
        .await
        .expect("Redis")
        .expect("the record");
    let results = isotest_infra::suites::load_results(&mut conn, &env.ns, &suite)
        .await
        .expect("Redis");
    let report = isotest_report::assemble(&record, results, SuiteState::Complete);
    let _ = isotest_infra::reports::store(&mut conn, &env.ns, &report, None)
        .await
        .expect("store the report");
    let end = second.next().await.expect("the end event");
    assert_eq!(end.event, "end", "{end:?}");
    assert!(end.data.contains("\"complete\""), "{end:?}");
    assert_eq!(second.next().await, None, "the stream closes after the end");

    let all: Vec<String> = [names(&seen), names(&resumed), names(&rest)].concat();
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 30, "every result once: {all:?}");
    assert_eq!(unique.len(), 30, "no result twice: {all:?}");
    env.finish().await;
}

#[tokio::test]
async fn a_view_behind_a_trimmed_stream_gets_a_snapshot() {
    let env = TestEnv::start().await;
    let suite = env.submit_as(None, &manifest(&["a", "b", "c"])).await;
    // Finished in this order, which the snapshot keeps.
    let at = |mut r: isotest_protocol::result::TestResult, ms: u64| {
        r.finished_at_ms = ms;
        r
    };
    env.write_result(&at(result(&suite, "a", 1, true, Status::Passed), 1))
        .await;
    let mut first = live(&env, &suite, None).await;
    let (_, last_id) = read_results(&mut first, 1).await;
    drop(first);
    env.write_result(&at(result(&suite, "b", 1, false, Status::Failed), 2))
        .await;
    env.write_result(&at(result(&suite, "b", 2, true, Status::Passed), 3))
        .await;
    // As the bound does to a long suite: the entries after `last_id` are gone.
    let mut redis = env.redis.clone();
    redis
        .xtrim(
            env.ns.suite_events_key(&suite),
            redis::streams::StreamMaxlen::Equals(0),
        )
        .await
        .expect("XTRIM");
    env.write_result(&at(result(&suite, "c", 1, true, Status::Timeout), 4))
        .await;

    let mut second = live(&env, &suite, last_id.as_deref()).await;
    assert_eq!(second.next().await.expect("suite").event, "suite");
    let snapshot = second.next().await.expect("a snapshot");
    assert_eq!(snapshot.event, "snapshot");
    assert!(
        snapshot.id.is_some(),
        "a snapshot carries the id to resume from"
    );
    let snapshot: LiveSnapshot = serde_json::from_str(&snapshot.data).expect("LiveSnapshot");
    assert_eq!(
        names(&snapshot.results),
        ["a#1", "b#1", "b#2", "c#1"],
        "every result, in the order they finished"
    );
    let failed = &snapshot.results[1];
    assert!(failed.stderr_tail.contains("assertion failed in b"));
    assert!(snapshot.results[0].stdout_tail.is_empty());
    drop(second);

    // Ended, and trimmed past its end too: a snapshot, then the end.
    let mut conn = manager().await;
    let record = isotest_infra::suites::load_record(&mut conn, &env.ns, &suite)
        .await
        .expect("Redis")
        .expect("the record");
    let results = isotest_infra::suites::load_results(&mut conn, &env.ns, &suite)
        .await
        .expect("Redis");
    let report = isotest_report::assemble(&record, results, SuiteState::Complete);
    let _ = isotest_infra::reports::store(&mut conn, &env.ns, &report, None)
        .await
        .expect("store the report");
    // Only the end is left: the view must not wait for entries after it.
    let _: usize = redis
        .xtrim(
            env.ns.suite_events_key(&suite),
            redis::streams::StreamMaxlen::Equals(1),
        )
        .await
        .expect("XTRIM");
    let mut third = live(&env, &suite, last_id.as_deref()).await;
    let kinds = [
        third.next().await.expect("suite").event,
        third.next().await.expect("snapshot").event,
        third.next().await.expect("end").event,
    ];
    assert_eq!(kinds, ["suite", "snapshot", "end"]);
    assert_eq!(third.next().await, None, "the stream closes after the end");
    env.finish().await;
}

#[tokio::test]
async fn a_suites_event_stream_expires_after_it_and_is_never_made_again() {
    let env = TestEnv::start().await;
    let suite = env.submit_as(None, &manifest(&["a", "b"])).await;
    let key = env.ns.suite_events_key(&suite);
    let mut redis = env.redis.clone();
    let record: isotest_protocol::api::SuiteRecord = serde_json::from_str(
        &redis
            .get(env.ns.suite_key(&suite))
            .await
            .expect("GET")
            .expect("the record"),
    )
    .expect("a record");
    let expires_at: i64 = redis::cmd("PEXPIRETIME")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .expect("PEXPIRETIME");
    assert_eq!(
        u64::try_from(expires_at).expect("an expiry"),
        isotest_infra::events::expires_at_ms(record.deadline_at_ms),
        "the stream expires a retention after the deadline"
    );

    // Once it has expired, a late result (a worker's retry, a dead letter) and the
    // report do not make it again, without an expiry.
    redis.del(&key).await.expect("DEL");
    env.write_result(&result(&suite, "a", 1, true, Status::Passed))
        .await;
    let mut conn = manager().await;
    let report = isotest_report::assemble(
        &record,
        isotest_infra::suites::load_results(&mut conn, &env.ns, &suite)
            .await
            .expect("Redis"),
        SuiteState::Cancelled,
    );
    let _ = isotest_infra::reports::store(&mut conn, &env.ns, &report, None)
        .await
        .expect("store the report");
    assert!(
        !redis.exists(&key).await.expect("EXISTS"),
        "no stream made again"
    );

    // Its live view still shows what there is, then the end.
    let mut view = live(&env, &suite, None).await;
    assert_eq!(view.next().await.expect("suite").event, "suite");
    let snapshot = view.next().await.expect("a snapshot");
    assert_eq!(snapshot.event, "snapshot");
    assert!(snapshot.data.contains("\"test\":\"a\""), "{snapshot:?}");
    let end = view.next().await.expect("the end");
    assert_eq!((end.event.as_str(), end.id), ("end", None));
    assert_eq!(view.next().await, None);
    env.finish().await;
}

#[tokio::test]
async fn a_results_event_carries_its_verdict_and_a_failures_output_tail() {
    let env = TestEnv::start().await;
    let suite = env.submit_as(None, &manifest(&["big"])).await;
    let mut failed = result(&suite, "big", 1, true, Status::Failed);
    failed.stdout = format!("{}THE END", "x".repeat(100_000));
    failed.reason = Some("exit code 1".into());
    env.write_result(&failed).await;
    let mut view = live(&env, &suite, None).await;
    let (got, id) = read_results(&mut view, 1).await;
    let got = &got[0];
    assert!(id.is_some(), "a result carries its stream id");
    assert_eq!(
        (got.status, got.is_final, got.attempt),
        (Status::Failed, true, 1)
    );
    assert_eq!(got.reason.as_deref(), Some("exit code 1"));
    assert_eq!(got.duration_ms, failed.duration_ms);
    assert_eq!(
        got.stdout_tail.len(),
        isotest_protocol::live::OUTPUT_TAIL_BYTES,
        "only the end of a long output"
    );
    assert!(got.stdout_tail.ends_with("THE END"));
    env.finish().await;
}
