//! Faults against real RabbitMQ, Redis and service processes: workers SIGKILLed mid-test,
//! an aggregator killed and restarted, every RabbitMQ connection closed, poison messages,
//! cancellation, a failed submission. Each time the suite ends with its report, every
//! test exactly once with its right verdict, and no sandbox process left behind.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use isotest_protocol::api::{Submitted, SuiteStatus};
use isotest_protocol::report::{Report, SuiteState};
use isotest_protocol::result::Status;
use lapin::options::{BasicConsumeOptions, BasicNackOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

use crate::support::{TestEnv, poll};

/// The pids of every live process below `root` (its children, theirs, and so on).
fn descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some((ppid, state)) = parent_and_state(pid)
            && state != 'Z'
        {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut found = Vec::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        for &child in children.get(&pid).map(Vec::as_slice).unwrap_or_default() {
            found.push(child);
            stack.push(child);
        }
    }
    found
}

/// A process's parent and state letter from `/proc/<pid>/stat`, if it still exists.
fn parent_and_state(pid: u32) -> Option<(u32, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((ppid, state))
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Whether `pid` is gone (or a zombie nobody reaped yet): a dead process.
fn is_dead(pid: u32) -> bool {
    parent_and_state(pid).is_none_or(|(_, state)| state == 'Z')
}

/// The processes of `pids` still alive, with their parent, state and name.
fn alive(pids: &[u32]) -> Vec<String> {
    pids.iter()
        .filter_map(|&p| {
            let (ppid, state) = parent_and_state(p)?;
            (state != 'Z').then(|| format!("{p} ({}, parent {ppid}, {state})", comm(p)))
        })
        .collect()
}

/// Waits until one of `workers` runs a slow test (a `sleep` below it), SIGKILLs that
/// worker, checks that every process of its sandboxes dies with it, and returns its pid.
async fn kill_worker_mid_test(workers: &[u32]) -> Result<u32> {
    let mut victim = None;
    poll(
        Duration::from_secs(30),
        "a worker to run a slow test",
        || {
            let found = workers
                .iter()
                .copied()
                .find(|&w| descendants(w).iter().any(|&p| comm(p) == "sleep"));
            victim = found;
            async move { Ok(found.is_some()) }
        },
    )
    .await?;
    let worker = victim.context("a worker running a slow test")?;
    let sandboxes = descendants(worker);
    ensure!(!sandboxes.is_empty(), "the worker runs no sandbox");
    kill(Pid::from_raw(i32::try_from(worker)?), Signal::SIGKILL)?;
    poll(
        Duration::from_secs(5),
        "the killed worker's sandboxes to die with it",
        || async { Ok(sandboxes.iter().all(|&p| is_dead(p))) },
    )
    .await
    .with_context(|| format!("orphans: {:?}", alive(&sandboxes)))?;
    Ok(worker)
}

/// A JSON manifest of `n` tests: every 10th fails, every 20th (and each of the last
/// thirty, so that a late kill still finds one however fast the rest went, even while
/// `rabbitmqctl` takes seconds on a loaded machine) sleeps long enough for a kill to
/// land mid-test; the rest pass at once. Returns it with each test's verdict.
fn suite(name: &str, n: usize) -> (serde_json::Value, BTreeMap<String, Status>) {
    let mut tests = Vec::new();
    let mut expected = BTreeMap::new();
    for i in 0..n {
        let test = format!("t{i:03}");
        let (command, status) = if i % 20 == 7 || (n > 100 && i + 30 >= n) {
            (json!(["sleep", "2"]), Status::Passed)
        } else if i % 10 == 3 {
            (json!(["false"]), Status::Failed)
        } else {
            (json!(["true"]), Status::Passed)
        };
        tests.push(json!({ "name": test, "command": command }));
        expected.insert(test, status);
    }
    let manifest = json!({
        "name": name,
        "defaults": { "timeout": "30s" },
        "tests": tests,
    });
    (manifest, expected)
}

async fn submit(env: &TestEnv, manifest: &serde_json::Value) -> Result<Submitted> {
    let url = format!(
        "{}/v1/suites",
        env.producer_url.as_deref().context("producer")?
    );
    let response = reqwest::Client::new()
        .post(url)
        .json(manifest)
        .send()
        .await?;
    let status = response.status();
    let text = response.text().await?;
    ensure!(status.as_u16() == 202, "submit answered {status}: {text}");
    Ok(serde_json::from_str(&text)?)
}

/// Polls the suite's status until it is no longer running, then fetches its report.
async fn report(env: &TestEnv, id: &str, within: Duration) -> Result<Report> {
    let base = env.producer_url.as_deref().context("producer")?;
    let status_url = format!("{base}/v1/suites/{id}");
    poll(within, "the suite's report", || async {
        let status: SuiteStatus = reqwest::get(&status_url).await?.json().await?;
        Ok(status.state != SuiteState::Running)
    })
    .await?;
    Ok(reqwest::get(format!("{base}/v1/suites/{id}/report"))
        .await?
        .json()
        .await?)
}

/// Suite done count, straight from Redis.
async fn done(env: &TestEnv, id: &str) -> Result<usize> {
    let client = redis::Client::open(env.servers.redis_url.as_str())?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    Ok(redis::cmd("SCARD")
        .arg(format!("{}:suite:{id}:done", env.ns))
        .query_async(&mut redis)
        .await?)
}

/// Publishes raw bodies to the namespace's tests queue.
async fn publish_raw(env: &TestEnv, bodies: &[Vec<u8>]) -> Result<()> {
    let conn = lapin::Connection::connect(
        &env.servers.amqp_url,
        lapin::ConnectionProperties::default(),
    )
    .await?;
    let channel = conn.create_channel().await?;
    for body in bodies {
        channel
            .basic_publish(
                "".into(),
                format!("{}.tests", env.ns).as_str().into(),
                BasicPublishOptions::default(),
                body,
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await?
            .await?;
    }
    let _ = conn.close(200, "".into()).await;
    Ok(())
}

/// Messages ready in a queue of the namespace (0 if it does not exist).
async fn ready(env: &TestEnv, queue: &str) -> Result<u32> {
    let conn = lapin::Connection::connect(
        &env.servers.amqp_url,
        lapin::ConnectionProperties::default(),
    )
    .await?;
    let channel = conn.create_channel().await?;
    let declared = channel
        .queue_declare(
            format!("{}.{queue}", env.ns).as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    let _ = conn.close(200, "".into()).await;
    Ok(declared.map_or(0, |q| q.message_count()))
}

/// Closes every connection whose name ends in `/<ns>`; gives how many it closed.
fn close_connections_of(ns: &str) -> Result<usize> {
    let output = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .context("run rabbitmqctl list_connections")?;
    ensure!(
        output.status.success(),
        "rabbitmqctl list_connections failed"
    );
    let listing = String::from_utf8_lossy(&output.stdout);
    let suffix = format!("/{ns}\"");
    let pids: Vec<&str> = listing
        .lines()
        .filter(|line| line.contains(&suffix))
        .filter_map(|line| line.split('\t').next())
        .collect();
    for pid in &pids {
        rabbitmqctl(&[
            "close_connection",
            pid,
            "isotest e2e faults: reconnect test",
        ])?;
    }
    Ok(pids.len())
}

fn rabbitmqctl(args: &[&str]) -> Result<()> {
    let output = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()?;
    ensure!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Every test once, with its expected verdict, one attempt each, and history to match.
fn check_report(report: &Report, expected: &BTreeMap<String, Status>) -> Result<()> {
    ensure!(
        report.state == SuiteState::Complete,
        "state {:?}",
        report.state
    );
    ensure!(
        report.tests.len() == expected.len(),
        "{} entries",
        report.tests.len()
    );
    let names: BTreeSet<&str> = report.tests.iter().map(|t| t.name.as_str()).collect();
    ensure!(names.len() == expected.len(), "a test appears twice");
    for test in &report.tests {
        ensure!(
            expected.get(&test.name) == Some(&test.status),
            "{}: {:?} ({:?}), expected {:?}",
            test.name,
            test.status,
            test.reason,
            expected.get(&test.name)
        );
        ensure!(
            test.attempts == 1 && test.attempt_history.len() == 1,
            "{}: {} attempts, history {:?}",
            test.name,
            test.attempts,
            test.attempt_history
        );
    }
    let passed = expected.values().filter(|s| **s == Status::Passed).count();
    ensure!(
        report.summary.total as usize == expected.len()
            && report.summary.passed as usize == passed
            && report.summary.failed as usize == expected.len() - passed,
        "summary {:?}",
        report.summary
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_300_test_suite_survives_killed_workers_a_restarted_aggregator_lost_connections_and_poison()
-> Result<()> {
    let mut env = TestEnv::new().await;
    env.start(3, 2).await?;
    let mut workers: Vec<u32> = (0..3)
        .map(|i| env.pid(&format!("worker-{i}")).context("a worker's pid"))
        .collect::<Result<_>>()?;
    let (manifest, expected) = suite("faults", 300);
    let submitted = submit(&env, &manifest).await?;
    let id = submitted.id.clone();

    // A worker SIGKILLed mid-test: its sandboxes die with it, its messages are redelivered.
    let killed = kill_worker_mid_test(&workers).await?;
    workers.retain(|&w| w != killed);
    workers.push(env.spawn("worker-3", &["worker", "--concurrency", "2"]));

    // Poison: bodies that are no isotest message, or one from the future.
    let future = json!({ "schema_version": 99, "suite_id": id, "index": 0, "attempt": 1 });
    publish_raw(
        &env,
        &[b"\xff not json".to_vec(), serde_json::to_vec(&future)?],
    )
    .await?;

    // The aggregator killed and started again, mid-suite.
    poll(Duration::from_secs(60), "a third of the suite", || async {
        Ok(done(&env, &id).await? >= 100)
    })
    .await?;
    let aggregator = env.pid("aggregator").context("the aggregator's pid")?;
    kill(Pid::from_raw(i32::try_from(aggregator)?), Signal::SIGKILL)?;
    env.spawn("aggregator-2", &["aggregator"]);

    // Every RabbitMQ connection of this deployment closed (its names end in the
    // namespace; other tests share the broker): each service reconnects and carries on.
    let closed = close_connections_of(&env.ns)?;
    ensure!(
        closed >= 3,
        "closed only {closed} connections of {}",
        env.ns
    );

    // Another worker SIGKILLed mid-test, after the reconnection.
    kill_worker_mid_test(&workers).await?;
    env.spawn("worker-4", &["worker", "--concurrency", "2"]);

    let report = report(&env, &id, Duration::from_secs(120))
        .await
        .with_context(|| format!("worker-2 log:\n{}", env.log("worker-2").join("\n")))?;
    check_report(&report, &expected)?;

    // Both poison messages went to the dead-letter queue, were logged, and left it.
    poll(
        Duration::from_secs(20),
        "the poison to be dead-lettered and logged",
        || async {
            let logged = env
                .log("aggregator-2")
                .iter()
                .chain(env.log("aggregator").iter())
                .filter(|l| l.contains("Dropping a dead letter"))
                .count();
            Ok(logged >= 2 && ready(&env, "tests.dead").await? == 0)
        },
    )
    .await?;
    let rejected = (0..5)
        .flat_map(|i| env.log(&format!("worker-{i}")))
        .filter(|l| l.contains("Rejecting a message that is not a test message"))
        .count();
    ensure!(rejected >= 2, "the workers logged {rejected} rejections");

    env.stop();
    env.cleanup().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_no_worker_can_handle_is_dead_lettered_and_reported_as_an_infrastructure_error()
-> Result<()> {
    let mut env = TestEnv::new().await;
    // No worker: this test plays one whose handling fails every time.
    env.start(0, 1).await?;
    let (manifest, _) = suite("poison", 2);
    let submitted = submit(&env, &manifest).await?;
    let conn = lapin::Connection::connect(
        &env.servers.amqp_url,
        lapin::ConnectionProperties::default(),
    )
    .await?;
    let channel = conn.create_channel().await?;
    let mut consumer = channel
        .basic_consume(
            format!("{}.tests", env.ns).as_str().into(),
            "failing-worker".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let failing = async {
        use futures_util::StreamExt;
        while let Some(delivery) = consumer.next().await {
            delivery?
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await?;
        }
        anyhow::Ok(())
    };
    let report = tokio::select! {
        report = report(&env, &submitted.id, Duration::from_secs(30)) => report?,
        failed = failing => bail!("the consumer ended: {failed:?}"),
    };
    let _ = conn.close(200, "".into()).await;
    ensure!(report.state == SuiteState::Complete, "{:?}", report.state);
    for test in &report.tests {
        ensure!(
            test.status == Status::Error,
            "{}: {:?}",
            test.name,
            test.status
        );
        let reason = test.reason.as_deref().unwrap_or_default();
        ensure!(
            reason.starts_with("infrastructure"),
            "{}: {reason}",
            test.name
        );
        ensure!(reason.contains("dead-lettered"), "{}: {reason}", test.name);
    }
    env.stop();
    env.cleanup().await?;
    Ok(())
}

/// A suite of `n` tests that sleep a minute each, on one worker running two at once.
async fn long_suite(env: &mut TestEnv, n: usize) -> Result<(u32, serde_json::Value)> {
    env.start(1, 2).await?;
    let worker = env.pid("worker-0").context("the worker's pid")?;
    let tests: Vec<serde_json::Value> = (0..n)
        .map(|i| json!({ "name": format!("long{i}"), "command": ["sleep", "60"] }))
        .collect();
    Ok((worker, json!({ "name": "long", "tests": tests })))
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_skips_queued_tests_kills_running_ones_and_reports_cancelled() -> Result<()> {
    let mut env = TestEnv::new().await;
    let (worker, manifest) = long_suite(&mut env, 6).await?;
    let submitted = submit(&env, &manifest).await?;
    let base = env.producer_url.clone().context("producer")?;
    poll(
        Duration::from_secs(30),
        "the worker to run the tests",
        || async {
            Ok(descendants(worker)
                .iter()
                .filter(|&&p| comm(p) == "sleep")
                .count()
                >= 2)
        },
    )
    .await?;
    let sandboxes = descendants(worker);
    let http = reqwest::Client::new();
    let url = format!("{base}/v1/suites/{}", submitted.id);

    let cancelled = http.delete(&url).send().await?;
    ensure!(cancelled.status().as_u16() == 200, "{}", cancelled.status());
    let status: SuiteStatus = cancelled.json().await?;
    ensure!(status.state == SuiteState::Cancelled, "{status:?}");
    ensure!(
        status.summary.as_ref().map(|s| s.cancelled) == Some(6),
        "{status:?}"
    );

    // Running tests are killed within seconds, queued ones dropped.
    poll(
        Duration::from_secs(5),
        "the running tests to be killed",
        || async { Ok(sandboxes.iter().all(|&p| is_dead(p))) },
    )
    .await
    .with_context(|| format!("still alive: {:?}", alive(&sandboxes)))?;
    poll(
        Duration::from_secs(10),
        "the queued tests to be dropped",
        || async { Ok(env.queue_state().await?.0 == 0) },
    )
    .await?;
    let report = report(&env, &submitted.id, Duration::from_secs(5)).await?;
    ensure!(report.state == SuiteState::Cancelled, "{:?}", report.state);
    ensure!(
        report.tests.iter().all(|t| t.status == Status::Cancelled),
        "{:?}",
        report.tests.iter().map(|t| t.status).collect::<Vec<_>>()
    );

    // Cancelling again: it has ended. An unknown suite: not found. Not a UUID: bad request.
    let again = http.delete(&url).send().await?;
    ensure!(again.status().as_u16() == 409, "{}", again.status());
    let unknown = http
        .delete(format!("{base}/v1/suites/{}", uuid::Uuid::now_v7()))
        .send()
        .await?;
    ensure!(unknown.status().as_u16() == 404, "{}", unknown.status());
    let bad = http.delete(format!("{base}/v1/suites/nope")).send().await?;
    ensure!(bad.status().as_u16() == 400, "{}", bad.status());
    env.stop();
    env.cleanup().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_in_isotest_run_cancels_the_suite_on_the_server() -> Result<()> {
    let mut env = TestEnv::new().await;
    let (worker, manifest) = long_suite(&mut env, 3).await?;
    let path = env.write("long.json", &serde_json::to_string(&manifest)?);
    let server = env.producer_url.clone().context("producer")?;
    let path = path.display().to_string();
    let run = env
        .command(&["run", &path, "--server", &server, "--quiet"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    poll(
        Duration::from_secs(30),
        "the worker to run a test",
        || async { Ok(descendants(worker).iter().any(|&p| comm(p) == "sleep")) },
    )
    .await?;
    kill(Pid::from_raw(i32::try_from(run.id())?), Signal::SIGINT)?;
    let output = tokio::task::spawn_blocking(move || run.wait_with_output()).await??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(!output.status.success(), "{stderr}");
    ensure!(stderr.contains("cancelled suite"), "{stderr}");
    let keys = env.suite_keys().await?;
    let report_key = keys
        .iter()
        .find(|k| k.ends_with(":report"))
        .context("no report stored")?;
    let id = report_key
        .trim_end_matches(":report")
        .rsplit(':')
        .next()
        .context("suite id")?
        .to_owned();
    let report = report(&env, &id, Duration::from_secs(5)).await?;
    ensure!(report.state == SuiteState::Cancelled, "{:?}", report.state);
    poll(
        Duration::from_secs(5),
        "the running test to be killed",
        || async { Ok(!descendants(worker).iter().any(|&p| comm(p) == "sleep")) },
    )
    .await?;
    env.stop();
    env.cleanup().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_suite_still_waiting_at_its_deadline_is_closed_and_its_waiting_tests_never_go()
-> Result<()> {
    let mut env = TestEnv::new().await;
    // No worker, and the dispatcher keeps one test ready: two of three wait in Redis.
    env.service_env
        .push(("ISOTEST_DISPATCH_MIN_READY".into(), "1".into()));
    env.start(0, 1).await?;
    let (mut manifest, _) = suite("unserved", 3);
    manifest["deadline"] = json!("2s");
    let submitted = submit(&env, &manifest).await?;
    let report = report(&env, &submitted.id, Duration::from_secs(15)).await?;
    ensure!(
        report.state == SuiteState::DeadlineExceeded,
        "{:?}",
        report.state
    );
    ensure!(
        report.tests.len() == 3 && report.tests.iter().all(|t| t.status == Status::Lost),
        "{:?}",
        report.tests
    );
    // The closed suite's waiting tests are dropped, never published.
    poll(
        Duration::from_secs(10),
        "the closed suite's schedule to be dropped",
        || async {
            Ok(!env
                .suite_keys()
                .await?
                .iter()
                .any(|k| k.ends_with(":pending")))
        },
    )
    .await?;
    ensure!(
        ready(&env, "tests").await? == 1,
        "only one test was dispatched"
    );
    env.stop();
    env.cleanup().await?;
    Ok(())
}
