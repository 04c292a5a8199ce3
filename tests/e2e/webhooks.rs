//! Webhooks: a suite with a `callback_url` gets its summary POSTed there when it ends,
//! signed with the aggregator's secret, and retried with one delivery id until the
//! receiver accepts it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use isotest_protocol::api::SuiteFinished;
use isotest_protocol::report::SuiteState;
use sha2::Sha256;

use crate::support::{TestEnv, poll};

const SECRET: &str = "e2e-webhook-secret";

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

type Log = Arc<Mutex<Vec<Received>>>;

fn received(log: &Log) -> Vec<Received> {
    log.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// Fails the first delivery with 500 and accepts every later one.
async fn hook(State(log): State<Log>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut log = log
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    log.push(Received { headers, body });
    if log.len() == 1 {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    }
}

/// A receiver on 127.0.0.1:0, served for the rest of the test; its URL and its log.
async fn receiver() -> Result<(String, Log)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let log = Log::default();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(Arc::clone(&log));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, log))
}

fn header<'a>(request: &'a Received, name: &str) -> Option<&'a str> {
    request.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Whether `header` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`, as a
/// receiver checks it.
fn verifies(secret: &str, timestamp: &str, body: &[u8], header: &str) -> bool {
    let Some(hex_mac) = header.strip_prefix("v1=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_mac) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    // What README "Webhooks" tells a receiver to sign: "{timestamp}.{body}".
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_finished_suite_is_posted_signed_and_retried_until_accepted() -> Result<()> {
    let (url, log) = receiver().await?;
    let mut env = TestEnv::new().await;
    env.service_env
        .push(("ISOTEST_WEBHOOK_SECRET".into(), SECRET.into()));
    // The receiver listens on loopback, which callbacks may reach only when allowed.
    env.service_env
        .push(("ISOTEST_ALLOW_CALLBACK_HOSTS".into(), "127.0.0.1".into()));
    env.start(1, 2).await?;
    let manifest = env.write(
        "hooked.toml",
        &format!(
            "name = \"hooked\"\ncallback_url = \"{url}\"\n\n\
             [[tests]]\nname = \"passes\"\ncommand = [\"true\"]\n\n\
             [[tests]]\nname = \"fails\"\ncommand = [\"false\"]\n\n\
             [[tests]]\nname = \"passes-too\"\ncode = \"exit 0\"\n"
        ),
    );
    let run = env.run_suite(&manifest, "hooked", true, &[]);
    let report = run.report().clone();
    ensure!(run.code() == Some(1), "one test fails: {}", run.stderr());

    // The first try is refused with 500; the retry, a second later, is accepted.
    let waited = poll(Duration::from_secs(30), "two webhook requests", || async {
        Ok(received(&log).len() >= 2)
    })
    .await;
    if let Err(e) = waited {
        anyhow::bail!(
            "{e:#}\nreceived: {:?}\naggregator log:\n{}",
            received(&log),
            env.log("aggregator").join("\n")
        );
    }
    // The delivery is settled (off the queue in Redis) once the 2xx is in; after the
    // aggregator has stopped nothing more can come, so the count below is final.
    let client = redis::Client::open(env.servers.redis_url.as_str())?;
    let redis = client.get_multiplexed_async_connection().await?;
    let queue = format!("{}:webhooks", env.ns);
    poll(
        Duration::from_secs(10),
        "the delivery to leave the queue",
        || {
            let mut redis = redis.clone();
            let queue = queue.clone();
            async move {
                let queued: usize = redis::cmd("ZCARD")
                    .arg(&queue)
                    .query_async(&mut redis)
                    .await?;
                Ok(queued == 0)
            }
        },
    )
    .await?;
    // The event's report_url is the report's absolute URL at the producer the suite
    // was submitted to.
    let first_event: SuiteFinished = serde_json::from_slice(&received(&log)[0].body)?;
    let producer = env.producer_url.clone().context("services started")?;
    ensure!(
        first_event.report_url
            == format!(
                "{}/v1/suites/{}/report",
                producer.trim_end_matches('/'),
                report.suite_id
            ),
        "{first_event:?}"
    );
    let fetched = reqwest::get(&first_event.report_url).await?;
    ensure!(fetched.status().is_success(), "{}", fetched.status());
    let fetched: isotest_protocol::report::Report = fetched.json().await?;
    ensure!(fetched.suite_id == report.suite_id);
    env.stop();
    let requests = received(&log);
    ensure!(
        requests.len() == 2,
        "exactly one retry, nothing after the 2xx: {requests:?}"
    );

    let (first, second) = (&requests[0], &requests[1]);
    let delivery = header(first, "x-isotest-delivery").context("a delivery id")?;
    ensure!(!delivery.is_empty());
    ensure!(
        header(second, "x-isotest-delivery") == Some(delivery),
        "the retry has the first try's delivery id: {requests:?}"
    );
    for request in &requests {
        ensure!(header(request, "x-isotest-event") == Some("suite.finished"));
        ensure!(header(request, "content-type") == Some("application/json"));
        ensure!(request.body == first.body, "every try sends the same bytes");
        let signature = header(request, "x-isotest-signature").context("a signature")?;
        let timestamp = header(request, "x-isotest-timestamp").context("a timestamp")?;
        let signed_at: u64 = timestamp.parse()?;
        let now = isotest_protocol::now_ms() / 1000;
        ensure!(
            now.abs_diff(signed_at) <= 300,
            "signed at the try: {signed_at} vs now {now}"
        );
        ensure!(
            verifies(SECRET, timestamp, &request.body, signature),
            "the signature verifies with the secret"
        );
        ensure!(
            !verifies("another secret", timestamp, &request.body, signature),
            "and with no other"
        );
        let later = (signed_at + 360).to_string();
        ensure!(
            !verifies(SECRET, &later, &request.body, signature),
            "a replay under a fresh timestamp does not verify"
        );
        let mut tampered = request.body.to_vec();
        let at = tampered.len() / 2;
        tampered[at] ^= 0x01;
        ensure!(
            !verifies(SECRET, timestamp, &tampered, signature),
            "a tampered body does not verify"
        );
    }

    let event: SuiteFinished = serde_json::from_slice(&first.body)?;
    ensure!(event.event == "suite.finished");
    ensure!(event.delivery_id == delivery, "{event:?}");
    ensure!(event.suite_id == report.suite_id, "{event:?}");
    ensure!(event.name == "hooked", "{event:?}");
    ensure!(event.state == SuiteState::Complete, "{event:?}");
    ensure!(event.state == report.state, "{event:?}");
    ensure!(
        event.summary == report.summary,
        "the counts match the report: {:?} vs {:?}",
        event.summary,
        report.summary
    );
    ensure!(
        (
            event.summary.total,
            event.summary.passed,
            event.summary.failed
        ) == (3, 2, 1),
        "{:?}",
        event.summary
    );
    ensure!(event.finished_at_ms == report.finished_at_ms);
    ensure!(
        env.log("aggregator")
            .iter()
            .all(|l| !l.contains("delivered unsigned")),
        "with a secret, no warning about unsigned webhooks"
    );
    env.cleanup().await?;
    Ok(())
}
