//! Webhooks through Redis: a cancelled suite's webhook (stored by the producer) is
//! delivered by an aggregator's sweep, and a delivery abandoned by a stopping
//! aggregator is delivered by the next one, with the same delivery id.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::AsyncCommands;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use isotest_aggregator::WebhookSecret;
use isotest_infra::cancel::{Cancelled, cancel};
use isotest_protocol::api::SuiteFinished;
use isotest_protocol::report::SuiteState;
use isotest_protocol::result::Status;

use crate::helpers::{TestEnv, poll, result};

type Seen = Arc<Mutex<Vec<(String, SuiteFinished)>>>;

fn seen(log: &Seen) -> Vec<(String, SuiteFinished)> {
    log.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// A receiver on a local port: records each request's delivery id and event; leaves
/// the first `hold` requests unanswered (their connections open), answers 204 after.
async fn receiver(hold: usize) -> (String, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let log = Seen::default();
    let record = Arc::clone(&log);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = Vec::new();
            let mut buf = [0u8; 8192];
            let body = loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
                let text = String::from_utf8_lossy(&request).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .and_then(|n| n.trim().parse::<usize>().ok())
                        })
                        .unwrap_or(0);
                    if body.len() >= length {
                        break Some((head.to_ascii_lowercase(), body.to_owned()));
                    }
                }
            };
            let Some((head, body)) = body else { continue };
            let delivery = head
                .lines()
                .find_map(|l| l.strip_prefix("x-isotest-delivery: "))
                .unwrap_or_default()
                .to_owned();
            let event: SuiteFinished = serde_json::from_str(&body).expect("a suite.finished body");
            let count = {
                let mut log = record
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                log.push((delivery, event));
                log.len()
            };
            if count <= hold {
                held.push(socket);
            } else {
                let _ = socket
                    .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                    .await;
            }
        }
    });
    (url, log)
}

/// Writes a suite's record with a callback URL, as the producer does.
async fn submit_with_callback(env: &TestEnv, id: &str, tests: &[&str], url: &str) {
    let mut record = env.submit(id, tests, Duration::from_secs(600)).await;
    record.callback_url = Some(url.to_owned());
    let mut redis = env.redis.clone();
    let () = redis
        .set(
            env.ns.suite_key(id),
            serde_json::to_string(&record).expect("json"),
        )
        .await
        .expect("record written");
}

async fn queued(env: &TestEnv) -> usize {
    let mut redis = env.redis.clone();
    redis.zcard(env.ns.webhooks_key()).await.expect("zcard")
}

#[tokio::test]
async fn a_cancelled_suites_webhook_is_delivered_by_a_sweeping_aggregator() {
    let env = TestEnv::new().await;
    let (url, log) = receiver(0).await;
    submit_with_callback(&env, "s", &["a", "b"], &url).await;
    let mut redis = env.redis.clone();
    let cancelled = cancel(&mut redis, &env.ns, "s").await.expect("cancel");
    assert!(matches!(cancelled, Cancelled::Now(_)), "{cancelled:?}");
    assert_eq!(queued(&env).await, 1, "the cancel queued the webhook");

    let running = env.start(env.config("sweeper")).await;
    poll("the webhook to be delivered and settled", || async {
        (seen(&log).len() == 1 && queued(&env).await == 0).then_some(())
    })
    .await;
    running.stop().await;
    let requests = seen(&log);
    assert_eq!(requests.len(), 1, "{requests:?}");
    let (delivery, event) = &requests[0];
    assert_eq!(delivery, "s.finished");
    assert_eq!(event.state, SuiteState::Cancelled);
    assert_eq!(event.summary.cancelled, 2);
    env.cleanup().await;
}

#[tokio::test]
async fn a_delivery_abandoned_on_shutdown_is_delivered_by_the_next_aggregator() {
    let env = TestEnv::new().await;
    let (url, log) = receiver(1).await;
    submit_with_callback(&env, "s", &["a"], &url).await;
    let mut config = env.config("first");
    config.webhooks.secret = WebhookSecret::new("k");
    config.webhooks.shutdown_grace = Duration::from_millis(100);
    let first = env.start(config).await;
    env.record(&result("s", "a", 1, true, Status::Passed)).await;
    poll("the first try to reach the receiver", || async {
        (seen(&log).len() == 1).then_some(())
    })
    .await;
    // The receiver holds that request: stopping abandons it and gives it back.
    first.stop().await;
    assert_eq!(queued(&env).await, 1, "the abandoned delivery stays queued");

    let mut config = env.config("second");
    config.webhooks.secret = WebhookSecret::new("k");
    let second = env.start(config).await;
    poll("the next aggregator to deliver it", || async {
        (seen(&log).len() == 2 && queued(&env).await == 0).then_some(())
    })
    .await;
    second.stop().await;
    let requests = seen(&log);
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        requests[0].0, requests[1].0,
        "one delivery id across aggregators"
    );
    assert_eq!(requests[0].1, requests[1].1, "the same event");
    assert_eq!(requests[1].1.state, SuiteState::Complete);
    env.cleanup().await;
}
