//! A measurement, not a test (ignored; no timing is asserted): how long after a worker
//! writes a result it appears on a live page in headless Chromium, over a 500-test
//! suite. Run it with
//!
//! ```text
//! cargo test -p isotest-producer --test ui -- --ignored --nocapture live_latency
//! ```
//!
//! Results are written through the workers' own write ([`isotest_infra::results::record`])
//! at `ISOTEST_LATENCY_RATE` per second (default 100); the page stamps each result
//! when the frame that shows it is painted (`window.isotestLive.painted`), and the
//! latency is that stamp minus the time the write was sent. Both clocks are this
//! machine's.

use std::collections::HashMap;
use std::time::Duration;

use isotest_protocol::result::Status;

use crate::browser::Browser;
use crate::helpers::{TestEnv, manager, manifest, result};

const TESTS: usize = 500;

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::test]
#[ignore = "a measurement: run by hand with --ignored --nocapture"]
async fn live_latency() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let rate: u64 = std::env::var("ISOTEST_LATENCY_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(100);
    let env = TestEnv::start().await;
    let names: Vec<String> = (0..TESTS)
        .map(|i| format!("tests/test_mod_{}.py::test_{i:03}", i % 17))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let suite = env.submit_as(None, &manifest(&refs)).await;
    browser
        .client
        .goto(&env.url(&format!("/ui#/suites/{suite}")))
        .await
        .expect("open the live view");
    browser.wait_text("#connection", |t| t == "live").await;

    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut conn = manager().await;
    let mut written: HashMap<String, u64> = HashMap::new();
    let interval = Duration::from_micros(1_000_000 / rate.max(1));
    let mut tick = tokio::time::interval(interval);
    let writing = std::time::Instant::now();
    for (i, name) in refs.iter().enumerate() {
        tick.tick().await;
        // One in twenty fails, so failures (with their output) are measured too.
        let status = if i % 20 == 7 {
            Status::Failed
        } else {
            Status::Passed
        };
        let r = result(&suite, name, 1, true, status);
        written.insert(r.field(), isotest_protocol::now_ms());
        isotest_infra::results::record(&mut conn, &env.ns, &r)
            .await
            .expect("write a result");
    }
    let wrote_in = writing.elapsed();
    browser
        .wait_text("#progress-text", |t| t == format!("{TESTS} / {TESTS} done"))
        .await;
    let painted = browser.eval("return window.isotestLive.painted").await;
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let mut latencies: Vec<u64> = written
        .iter()
        .map(|(field, at)| {
            let shown = painted[field]
                .as_u64()
                .unwrap_or_else(|| panic!("{field} was never painted"));
            shown.saturating_sub(*at)
        })
        .collect();
    latencies.sort_unstable();
    let mean = latencies.iter().sum::<u64>() as f64 / latencies.len() as f64;
    println!(
        "live latency over {} results written at {rate}/s (achieved {:.0}/s): p50 {} ms, p95 {} ms, p99 {} ms, max {} ms, mean {mean:.1} ms",
        latencies.len(),
        TESTS as f64 / wrote_in.as_secs_f64(),
        percentile(&latencies, 50.0),
        percentile(&latencies, 95.0),
        percentile(&latencies, 99.0),
        latencies[latencies.len() - 1],
    );
    println!("load average before: {}", load_before.trim());
    println!("load average after:  {}", load_after.trim());
    browser.close().await;
    env.finish().await;
}

/// How long a live view opened on a suite of 20 000 finished tests takes to catch up
/// (a replay of the whole stream), and how the page holds up: run with
/// `cargo test -p isotest-producer --test ui -- --ignored --nocapture replay`.
#[tokio::test]
#[ignore = "a measurement: run by hand with --ignored --nocapture"]
async fn replay_of_a_large_suite() {
    const LARGE: usize = 20_000;
    let Some(browser) = Browser::start().await else {
        return;
    };
    let env = TestEnv::start().await;
    let names: Vec<String> = (0..LARGE).map(|i| format!("test_{i:05}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let suite = env.submit_as(None, &manifest(&refs)).await;
    let mut conn = manager().await;
    for (i, name) in refs.iter().enumerate() {
        let status = if i % 100 == 7 {
            Status::Failed
        } else {
            Status::Passed
        };
        isotest_infra::results::record(&mut conn, &env.ns, &result(&suite, name, 1, true, status))
            .await
            .expect("write a result");
    }
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let opened = std::time::Instant::now();
    browser
        .client
        .goto(&env.url(&format!("/ui#/suites/{suite}")))
        .await
        .expect("open the live view");
    browser
        .wait_text("#progress-text", |t| t == format!("{LARGE} / {LARGE} done"))
        .await;
    let caught_up = opened.elapsed();
    let heap = browser
        .eval("return performance.memory ? performance.memory.usedJSHeapSize : null")
        .await;
    println!(
        "replay of {LARGE} results (1 in 100 failing, with output): caught up {:.2} s after opening the page; JS heap {} MB",
        caught_up.as_secs_f64(),
        heap.as_u64()
            .map_or("?".to_owned(), |b| (b / 1_000_000).to_string()),
    );
    println!("load average before: {}", load_before.trim());
    browser.close().await;
    env.finish().await;
}
