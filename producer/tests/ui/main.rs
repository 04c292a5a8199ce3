//! The dashboard in a real browser (headless Chromium through chromedriver): what a
//! person sees when they sign in, follow a suite live and open a test, that a live
//! view whose connection drops mid-suite loses no result, and (ignored, run by hand)
//! how soon a result written by a worker appears on the page, and the quarantine
//! beside the flaky tests.
//!
//! Skipped with a message when chromedriver is not installed, except on CI.

#[path = "../api/helpers.rs"]
#[allow(
    dead_code,
    reason = "shared with the api tests; not every helper is used here"
)]
mod helpers;

mod browser;
mod latency;
mod quarantine;

use fantoccini::Locator;

use isotest_protocol::report::SuiteState;
use isotest_protocol::result::Status;

use browser::{Browser, CuttableProxy};
use helpers::{TestEnv, manager, manifest, result};

/// Stores a suite's report as the aggregator does, through the one report script.
async fn end_suite(env: &TestEnv, suite: &str) {
    let mut conn = manager().await;
    let record = isotest_infra::suites::load_record(&mut conn, &env.ns, suite)
        .await
        .expect("Redis")
        .expect("the record");
    let results = isotest_infra::suites::load_results(&mut conn, &env.ns, suite)
        .await
        .expect("Redis");
    let report = isotest_report::assemble(&record, results, SuiteState::Complete);
    let _ = isotest_infra::reports::store(&mut conn, &env.ns, &report, None)
        .await
        .expect("store the report");
}

/// A script that answers the page's history requests with six runs of `test` (three
/// failed) and one flaky test, as the history store's routes would.
fn history_stub(suite: &str, test: &str) -> String {
    let now = isotest_protocol::now_ms();
    let runs: Vec<serde_json::Value> = (0..6u64)
        .map(|i| {
            serde_json::json!({
                "suite_id": suite, "suite_name": "checkout-service", "test": test,
                "status": if i % 2 == 0 { "failed" } else { "passed" },
                "flaky": i == 3, "duration_ms": 300 + 150 * i, "attempts": 1,
                "worker": "worker-1", "output": "report:tests[8]",
                "finished_at_ms": now - 3_600_000 * i,
                "infrastructure": false, "outage": false,
                "commit": format!("abc123{i}"), "branch": "main",
            })
        })
        .collect();
    let flaky = serde_json::json!([{
        "suite": "checkout-service", "test": test, "score": 0.666, "signals": 4, "runs": 6,
        "last_failure": runs[0],
    }]);
    format!(
        "const answers = {{ runs: {runs}, flaky: {flaky} }};
         const real = window.fetch;
         window.fetch = (url, options) => {{
           const path = String(url);
           const json = (body) => Promise.resolve(new Response(JSON.stringify(body),
             {{ status: 200, headers: {{ 'content-type': 'application/json' }} }}));
           if (path.startsWith('/v1/tests/')) return json(answers.runs);
           if (path.startsWith('/v1/flaky')) return json(answers.flaky);
           return real(url, options);
         }};
         return true;",
        runs = serde_json::Value::Array(runs.clone()),
    )
}

#[tokio::test]
async fn a_person_signs_in_follows_a_suite_live_and_opens_a_failure() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let env = TestEnv::start_with(|c| c.open = false).await;
    let mine = env.add_token("ci-main").await;
    let theirs = env.add_token("ci-other-team").await;
    let names: Vec<String> = (1..=12)
        .map(|i| format!("tests/test_checkout.py::test_{i:02}"))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut body = manifest(&refs);
    body["name"] = "checkout-service".into();
    let suite = env.submit_as(Some(&mine), &body).await;
    let mut other = manifest(&["x"]);
    other["name"] = "someone-elses-suite".into();
    let their_suite = env.submit_as(Some(&theirs), &other).await;
    let b = &browser;

    // Not signed in: the page sends the person to the login form.
    b.client.goto(&env.url("/ui")).await.expect("open /ui");
    b.wait_url(|u| u.ends_with("/ui/login")).await;
    let token_input = b
        .client
        .find(Locator::Id("token"))
        .await
        .expect("a token field");
    token_input.send_keys("itk_wrong").await.expect("type");
    b.client
        .find(Locator::Id("sign-in"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
    b.wait_text(".error", |t| t.contains("That token is not valid"))
        .await;
    let token_input = b
        .client
        .find(Locator::Id("token"))
        .await
        .expect("a token field");
    token_input.send_keys(&mine).await.expect("type");
    b.client
        .find(Locator::Id("sign-in"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");

    // Signed in: their running suite, and nobody else's.
    b.wait_text("#who", |t| t == "token ci-main").await;
    b.wait_text("table.suites", |t| t.contains("checkout-service"))
        .await;
    let text = b.page_text().await;
    assert!(text.contains("RUNNING (1)"), "{text}");
    assert!(!text.contains("someone-elses-suite"), "{text}");
    // The session cookie is out of the page's reach.
    let cookies = b.eval("return document.cookie").await;
    assert_eq!(cookies, "", "the session cookie is HttpOnly");

    // Another token's suite is not to be had, even by its address.
    b.client
        .goto(&env.url(&format!("/ui#/suites/{their_suite}")))
        .await
        .expect("open another token's suite");
    b.wait_text("#not-found", |t| t.starts_with("No such suite"))
        .await;
    b.client.goto(&env.url("/ui#/")).await.expect("back");
    b.wait_text("table.suites", |t| t.contains("checkout-service"))
        .await;

    // The live view of the suite.
    b.client
        .find(Locator::LinkText("checkout-service"))
        .await
        .expect("the suite's link")
        .click()
        .await
        .expect("click");
    b.wait_text("#suite-name", |t| t == "checkout-service")
        .await;
    b.wait_text("#connection", |t| t == "live").await;
    b.wait_text("#progress-text", |t| t == "0 / 12 done").await;
    b.wait_text("#failures", |t| t.contains("No failure so far"))
        .await;

    for name in &refs[..8] {
        env.write_result(&result(&suite, name, 1, true, Status::Passed))
            .await;
    }
    // A test that fails, and one that fails then passes on its retry.
    env.write_result(&result(&suite, refs[8], 1, true, Status::Failed))
        .await;
    env.write_result(&result(&suite, refs[9], 1, false, Status::Failed))
        .await;
    env.write_result(&result(&suite, refs[9], 2, true, Status::Passed))
        .await;

    b.wait_text("#progress-text", |t| t == "10 / 12 done").await;
    let failures = b
        .wait_text("#failures", |t| {
            t.contains("assertion failed in tests/test_checkout.py::test_09")
        })
        .await;
    assert!(failures.contains("exit 1"), "{failures}");
    assert!(
        failures.contains("test_10") && failures.contains("will retry"),
        "{failures}"
    );
    b.wait_text("#failures", |t| t.contains("passed on attempt 2"))
        .await;
    let counts = b.wait_text("#counts", |t| t.contains("9 passed")).await;
    assert!(
        counts.contains("1 failed") && counts.contains("1 passed on a retry"),
        "{counts}"
    );
    b.screenshot("dashboard-live").await;

    for name in &refs[10..] {
        env.write_result(&result(&suite, name, 1, true, Status::Passed))
            .await;
    }
    end_suite(&env, &suite).await;
    b.wait_text("#suite-state", |t| t == "complete").await;
    b.wait_text("#connection", |t| t == "ended").await;
    b.wait_text("#summary", |t| t.starts_with("11 passed, 1 failed"))
        .await;

    // The failed test's page: its attempt with the whole output.
    b.client
        .find(Locator::LinkText(refs[8]))
        .await
        .expect("the failed test's link")
        .click()
        .await
        .expect("click");
    b.wait_text("#test-name", |t| t == refs[8]).await;
    let attempts = b.wait_text("#attempts", |t| t.contains("attempt 1")).await;
    assert!(
        attempts.contains("assertion failed in tests/test_checkout.py::test_09"),
        "{attempts}"
    );
    b.wait_text("#history", |t| t.contains("keeps no test history"))
        .await;
    b.screenshot("dashboard-test").await;

    // Where the server keeps history, the page shows it: stand-ins for the history
    // store's `/v1` answers, in its shapes (runs newest first, flaky tests with their
    // last failure), put in front of the page's fetch.
    let stubbed = b.eval(&history_stub(&suite, refs[8])).await;
    assert_eq!(stubbed, true);
    b.eval("window.location.hash = '#/flaky'; return true")
        .await;
    let flaky = b.wait_text("#flaky", |t| t.contains("67%")).await;
    assert!(
        flaky.contains(refs[8]) && flaky.contains("4 of 6"),
        "{flaky}"
    );
    b.client
        .find(Locator::LinkText(refs[8]))
        .await
        .expect("the flaky test's link")
        .click()
        .await
        .expect("click");
    let history = b.wait_text("#history", |t| t.contains("abc1234")).await;
    assert!(
        history.contains("checkout-service") && history.contains("main"),
        "{history}"
    );
    let bars = b
        .eval("return document.querySelectorAll('#history svg rect').length")
        .await;
    assert_eq!(bars, 6, "one bar per run");
    b.screenshot("dashboard-history").await;

    // The retried test shows both attempts.
    b.client
        .goto(&env.url(&format!(
            "/ui#/suites/{suite}/tests/{}",
            refs[9].replace('/', "%2F")
        )))
        .await
        .expect("open the retried test");
    let attempts = b.wait_text("#attempts", |t| t.contains("attempt 2")).await;
    assert!(
        attempts.contains("attempt 1") && attempts.contains("retried"),
        "{attempts}"
    );

    // A second suite of theirs, partly done.
    let more: Vec<String> = (1..=40).map(|i| format!("test_payment_{i:02}")).collect();
    let more_refs: Vec<&str> = more.iter().map(String::as_str).collect();
    let mut body = manifest(&more_refs);
    body["name"] = "payments-api".into();
    let second = env.submit_as(Some(&mine), &body).await;
    for name in &more_refs[..15] {
        env.write_result(&result(&second, name, 1, true, Status::Passed))
            .await;
    }
    b.client
        .goto(&env.url("/ui#/"))
        .await
        .expect("the suite list");
    let text = b
        .wait_text("main", |t| {
            t.contains("RUNNING (1)") && t.contains("15 / 40") && t.contains("12 / 12")
        })
        .await;
    assert!(text.contains("payments-api") && text.contains("checkout-service"));
    b.screenshot("dashboard-suites").await;
    browser.close().await;
    env.finish().await;
}

#[tokio::test]
async fn a_connection_dropped_mid_suite_loses_no_result() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let env = TestEnv::start().await;
    let names: Vec<String> = (0..100).map(|i| format!("t{i:03}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let suite = env.submit_as(None, &manifest(&refs)).await;
    let upstream = env
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("address");
    let proxy = CuttableProxy::start(upstream).await;
    let b = &browser;
    b.client
        .goto(&format!("http://{}/ui#/suites/{suite}", proxy.addr))
        .await
        .expect("open the live view");
    b.wait_text("#connection", |t| t == "live").await;

    for name in &refs[..50] {
        env.write_result(&result(&suite, name, 1, true, Status::Passed))
            .await;
    }
    b.wait_text("#progress-text", |t| t == "50 / 100 done")
        .await;
    let cut = proxy.cut();
    assert!(cut >= 1, "the live view's connection was open");
    // Written while the browser is disconnected.
    for name in &refs[50..80] {
        let status = if *name == "t060" {
            Status::Failed
        } else {
            Status::Passed
        };
        env.write_result(&result(&suite, name, 1, true, status))
            .await;
    }
    b.wait_text("#progress-text", |t| t == "80 / 100 done")
        .await;
    for name in &refs[80..] {
        env.write_result(&result(&suite, name, 1, true, Status::Passed))
            .await;
    }
    end_suite(&env, &suite).await;
    b.wait_text("#connection", |t| t == "ended").await;
    b.wait_text("#progress-text", |t| t == "100 / 100 done")
        .await;
    b.wait_text("#failures", |t| t.contains("assertion failed in t060"))
        .await;

    let live = b.eval("return window.isotestLive").await;
    assert_eq!(live["results"], 100, "every result once: {live}");
    assert!(live["opens"].as_u64() >= Some(2), "it reconnected: {live}");
    assert!(
        live["errors"].as_u64() >= Some(1),
        "it saw the drop: {live}"
    );
    assert_eq!(
        live["snapshots"], 0,
        "resumed from Last-Event-ID, not a snapshot: {live}"
    );
    assert_eq!(live["ended"], "complete");
    browser.close().await;
    drop(proxy);
    env.finish().await;
}

#[tokio::test]
async fn a_suite_of_many_failures_shows_the_newest_and_counts_the_rest() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let env = TestEnv::start().await;
    let names: Vec<String> = (0..310).map(|i| format!("broken_{i:03}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let suite = env.submit_as(None, &manifest(&refs)).await;
    for name in &refs {
        env.write_result(&result(&suite, name, 1, true, Status::Failed))
            .await;
    }
    let b = &browser;
    b.client
        .goto(&env.url(&format!("/ui#/suites/{suite}")))
        .await
        .expect("open the live view");
    b.wait_text("#progress-text", |t| t == "310 / 310 done")
        .await;
    b.wait_text("#more-failures", |t| {
        t.starts_with("and 10 earlier failures")
    })
    .await;
    let shown = b
        .eval("return document.querySelectorAll('#failures .failure').length")
        .await;
    assert_eq!(shown, 300);
    // The newest is first.
    b.wait_text("#failures .failure", |t| t.contains("broken_309"))
        .await;
    browser.close().await;
    env.finish().await;
}
