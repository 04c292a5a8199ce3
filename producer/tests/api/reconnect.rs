//! The producer survives RabbitMQ closing its connection: the next request, or the
//! next readiness probe, reconnects. Closing a connection needs `rabbitmqctl` on the
//! broker's machine; without it the test says so and passes.

use std::time::{Duration, Instant};

use isotest_producer::publisher::connection_name;

use crate::helpers::{TestEnv, manifest};

/// `rabbitmqctl` output, or `None` where it cannot be run.
async fn rabbitmqctl(args: &[&str]) -> Option<String> {
    let output = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .await
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The broker's pid of the producer's connection, if it has one.
async fn connection_pid(env: &TestEnv) -> Option<String> {
    let name = format!("\"{}\"", connection_name(&env.ns));
    let listing = rabbitmqctl(&["-q", "list_connections", "pid", "client_properties"]).await?;
    listing
        .lines()
        .find(|line| line.contains(&name))
        .and_then(|line| line.split('\t').next())
        .map(str::to_owned)
}

async fn close(pid: &str) {
    rabbitmqctl(&["close_connection", pid, "reconnection test"])
        .await
        .expect("rabbitmqctl close_connection");
}

/// Runs `attempt` until the producer holds a connection other than `old` and `attempt`
/// succeeds, for at most fifteen seconds.
async fn until_reconnected<F, Fut>(env: &TestEnv, old: &str, mut attempt: F) -> String
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if attempt().await
            && let Some(pid) = connection_pid(env).await
            && pid != old
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "the producer did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_closed_connection_is_reopened_by_the_next_request_or_probe() {
    let env = TestEnv::start().await;
    let Some(first) = connection_pid(&env).await else {
        eprintln!("rabbitmqctl is not available here; skipping the reconnection test");
        env.finish().await;
        return;
    };

    // A submission racing the close may still be refused (503, its suite left to the
    // sweeper); the one after must go through on a new connection.
    close(&first).await;
    let body = manifest(&["a"]).to_string();
    let second = until_reconnected(&env, &first, || async {
        env.post_suite(body.clone()).await.status().as_u16() == 202
    })
    .await;
    assert!(!env.take_tests(1).await.is_empty());

    close(&second).await;
    until_reconnected(&env, &second, || async {
        env.get("/readyz").await.status().as_u16() == 200
    })
    .await;
    env.finish().await;
}
