//! The scheduler, end to end: a small suite starts at once beside a large one, tokens
//! share the slots by weight, a token's quota queues its suites and bounds its running
//! tests, a suite's longest tests go first on its next run, and a dispatcher killed
//! with SIGKILL mid-suite loses and repeats no test.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use isotest_protocol::api::{Submitted, SuiteStatus};
use isotest_protocol::report::SuiteState;
use isotest_protocol::result::{Status, TestResult};

use crate::support::{TestEnv, free_port, poll};

/// `isotest token add NAME ARGS...`: the printed token.
fn token(env: &TestEnv, name: &str, args: &[&str]) -> Result<String> {
    let mut all = vec!["token", "add", name];
    all.extend(args);
    let output = env.command(&all).output()?;
    ensure!(
        output.status.success(),
        "token add failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

/// A JSON manifest of `n` tests named `{prefix}{i:04}`, each running `command`.
fn manifest(name: &str, prefix: &str, n: usize, command: &[&str]) -> Value {
    let tests: Vec<Value> = (0..n)
        .map(|i| json!({ "name": format!("{prefix}{i:04}"), "command": command }))
        .collect();
    json!({ "name": name, "tests": tests })
}

/// A producer's API, with a token or without.
struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    fn new(env: &TestEnv, token: Option<&str>) -> Result<Api> {
        Ok(Api {
            base: env.producer_url.clone().context("producer started")?,
            token: token.map(str::to_owned),
            http: reqwest::Client::new(),
        })
    }

    fn auth(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => request.bearer_auth(t),
            None => request,
        }
    }

    async fn submit(&self, manifest: &Value) -> Result<Submitted> {
        let response = self
            .auth(self.http.post(format!("{}/v1/suites", self.base)))
            .json(manifest)
            .send()
            .await?;
        ensure!(
            response.status().as_u16() == 202,
            "submission refused: {}",
            response.text().await?
        );
        Ok(response.json().await?)
    }

    async fn status(&self, suite: &Submitted) -> Result<SuiteStatus> {
        Ok(self
            .auth(self.http.get(format!("{}{}", self.base, suite.status_url)))
            .send()
            .await?
            .json()
            .await?)
    }

    async fn cancel(&self, suite: &Submitted) -> Result<()> {
        self.auth(
            self.http
                .delete(format!("{}{}", self.base, suite.status_url)),
        )
        .send()
        .await?;
        Ok(())
    }

    /// Waits for the suite to end, and says how.
    async fn ended(&self, suite: &Submitted, within: Duration) -> Result<SuiteStatus> {
        let deadline = Instant::now() + within;
        loop {
            let status = self.status(suite).await?;
            if status.state != SuiteState::Running {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "suite {} still running after {within:?}: {status:?}",
                suite.id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Every result the workers wrote for a suite, every attempt.
async fn results(env: &TestEnv, suite_id: &str) -> Result<Vec<TestResult>> {
    let client = redis::Client::open(env.servers.redis_url.as_str())?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    let all: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("{}:suite:{suite_id}:results", env.ns))
        .query_async(&mut redis)
        .await?;
    all.values()
        .map(|json| serde_json::from_str(json).context("a result"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_small_suite_starts_at_once_beside_a_large_one() -> Result<()> {
    let mut env = TestEnv::new().await;
    env.start(2, 2).await?;
    let api = Api::new(&env, None)?;
    // 400 tests of 0.2 s on 4 slots: 20 s of backlog in FIFO order.
    let big = api
        .submit(&manifest("nightly", "n", 400, &["sleep", "0.2"]))
        .await?;
    poll(Duration::from_secs(30), "the big suite to run", || async {
        Ok(api.status(&big).await?.done >= 8)
    })
    .await?;
    let submitted = Instant::now();
    let small = api
        .submit(&manifest("pull-request", "p", 5, &["true"]))
        .await?;
    let status = api.ended(&small, Duration::from_secs(30)).await?;
    let wall = submitted.elapsed();
    assert_eq!(status.state, SuiteState::Complete);
    let big_done = api.status(&big).await?.done;
    assert!(
        big_done < 200,
        "the big suite was mostly done ({big_done}) before the small one"
    );
    // Fair dispatch puts the small suite's tests right behind the few already ready:
    // on an idle machine it ends in well under a second; FIFO would take 20 s.
    assert!(
        wall < Duration::from_secs(5),
        "the 5-test suite took {wall:?} beside the 400-test suite"
    );
    api.cancel(&big).await?;
    env.stop();
    env.cleanup().await
}

/// Tokens `a` and `b` (weights given) each submit 300 short tests; the share of `a`
/// among the first tests to start while both had work.
async fn share_of_a(weights: (u32, u32)) -> Result<f64> {
    let mut env = TestEnv::new().await;
    env.start(2, 2).await?;
    let a = token(&env, "a", &["--weight", &weights.0.to_string()])?;
    let b = token(&env, "b", &["--weight", &weights.1.to_string()])?;
    let (api_a, api_b) = (Api::new(&env, Some(&a))?, Api::new(&env, Some(&b))?);
    let command = ["sleep", "0.05"];
    let (ma, mb) = (
        manifest("suite-a", "a", 300, &command),
        manifest("suite-b", "b", 300, &command),
    );
    let (sa, sb) = tokio::try_join!(api_a.submit(&ma), api_b.submit(&mb))?;
    poll(Duration::from_secs(60), "120 tests done", || async {
        Ok(api_a.status(&sa).await?.done + api_b.status(&sb).await?.done >= 120)
    })
    .await?;
    api_a.cancel(&sa).await?;
    api_b.cancel(&sb).await?;
    let mut starts: Vec<(u64, bool)> = results(&env, &sa.id)
        .await?
        .iter()
        .map(|r| (r.started_at_ms, true))
        .chain(
            results(&env, &sb.id)
                .await?
                .iter()
                .map(|r| (r.started_at_ms, false)),
        )
        .collect();
    starts.sort_unstable();
    // The first few were dispatched before the second suite was recorded.
    let window = &starts[12..112];
    let of_a = window.iter().filter(|(_, a)| *a).count();
    env.stop();
    env.cleanup().await?;
    Ok(of_a as f64 / window.len() as f64)
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_share_the_slots_by_weight() -> Result<()> {
    let equal = share_of_a((1, 1)).await?;
    assert!(
        (0.4..=0.6).contains(&equal),
        "equal weights gave a {equal:.2}"
    );
    let three_to_one = share_of_a((3, 1)).await?;
    assert!(
        (0.65..=0.85).contains(&three_to_one),
        "weights 3:1 gave a {three_to_one:.2}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quota_queues_two_suites_and_never_runs_more() -> Result<()> {
    let mut env = TestEnv::new().await;
    env.start(2, 4).await?;
    let quota = token(&env, "ci", &["--quota", "4"])?;
    let api = Api::new(&env, Some(&quota))?;
    let command = ["sleep", "0.3"];
    let (m1, m2) = (
        manifest("one", "o", 8, &command),
        manifest("two", "t", 8, &command),
    );
    let (one, two) = tokio::try_join!(api.submit(&m1), api.submit(&m2))?;
    let waiting =
        api.status(&one).await?.waiting.unwrap_or(0) + api.status(&two).await?.waiting.unwrap_or(0);
    assert!(waiting >= 8, "{waiting} tests waiting under the quota");
    for suite in [&one, &two] {
        let status = api.ended(suite, Duration::from_secs(60)).await?;
        assert_eq!(status.state, SuiteState::Complete);
        assert_eq!(status.summary.context("summary")?.passed, 8);
    }
    // The most of the token's tests running at any instant.
    let mut events = Vec::new();
    for suite in [&one, &two] {
        for r in results(&env, &suite.id).await? {
            events.push((r.started_at_ms, 1i32));
            events.push((r.finished_at_ms, -1));
        }
    }
    events.sort_unstable();
    let (mut running, mut most) = (0, 0);
    for (_, delta) in events {
        running += delta;
        most = most.max(running);
    }
    assert!(most <= 4, "{most} of the token's tests ran at once");
    assert!(most >= 2, "the quota's slots were used ({most})");
    env.stop();
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_suites_longest_tests_go_first_on_its_next_run() -> Result<()> {
    let mut env = TestEnv::new().await;
    env.start(1, 2).await?;
    let api = Api::new(&env, None)?;
    // The long tests come last in the manifest.
    let mut suite = manifest("timed", "s", 10, &["true"]);
    let tests = suite["tests"].as_array_mut().context("tests")?;
    for name in ["long-a", "long-b"] {
        tests.push(json!({ "name": name, "command": ["sleep", "1.5"] }));
    }
    let first = api.submit(&suite).await?;
    api.ended(&first, Duration::from_secs(60)).await?;
    let second = api.submit(&suite).await?;
    let status = api.ended(&second, Duration::from_secs(60)).await?;
    assert_eq!(status.state, SuiteState::Complete);
    let mut results = results(&env, &second.id).await?;
    results.sort_by_key(|r| r.started_at_ms);
    let first_two: Vec<&str> = results[..2].iter().map(|r| r.name.as_str()).collect();
    assert!(
        first_two.contains(&"long-a") && first_two.contains(&"long-b"),
        "the long tests did not start first: {first_two:?}"
    );
    env.stop();
    env.cleanup().await
}

/// How many times each test of a suite ran to the end, from the workers' logs.
fn runs(env: &TestEnv, workers: usize, suite_id: &str) -> HashMap<String, usize> {
    let mut runs = HashMap::new();
    for i in 0..workers {
        for line in env.log(&format!("worker-{i}")) {
            if !line.contains("Test finished.") || !line.contains(suite_id) {
                continue;
            }
            if let Some(name) = line
                .split("test=")
                .nth(1)
                .and_then(|rest| rest.split([' ', '}']).next())
            {
                *runs.entry(name.to_owned()).or_default() += 1;
            }
        }
    }
    runs
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dispatcher_killed_mid_suite_loses_and_repeats_no_test() -> Result<()> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let mut env = TestEnv::new().await;
    // A short lease, so the standby takes over soon after the kill.
    env.service_env
        .push(("ISOTEST_DISPATCH_LEASE".into(), "1s".into()));
    env.start(2, 2).await?;
    let standby = format!("127.0.0.1:{}", free_port()?);
    env.spawn("producer-b", &["producer", "--listen", &standby, "--open"]);
    let api = Api::new(&env, None)?;
    let suite = api
        .submit(&manifest("survivor", "k", 150, &["sleep", "0.05"]))
        .await?;
    poll(
        Duration::from_secs(30),
        "the suite to be under way",
        || async { Ok(api.status(&suite).await?.done >= 20) },
    )
    .await?;
    // SIGKILL whichever producer holds the lease: the dispatcher dies mid-suite.
    let client = redis::Client::open(env.servers.redis_url.as_str())?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    let leader: String = redis::cmd("GET")
        .arg(format!("{}:sched:leader", env.ns))
        .query_async(&mut redis)
        .await?;
    let pid: i32 = leader.split('/').nth(1).context("owner pid")?.parse()?;
    let (killed, survivor) = if env.pid("producer") == Some(u32::try_from(pid)?) {
        ("producer", format!("http://{standby}"))
    } else {
        ("producer-b", api.base.clone())
    };
    kill(Pid::from_raw(pid), Signal::SIGKILL)?;
    let api = Api {
        base: survivor,
        ..api
    };
    let status = api.ended(&suite, Duration::from_secs(90)).await?;
    assert_eq!(status.state, SuiteState::Complete, "killed {killed}");
    let summary = status.summary.context("summary")?;
    assert_eq!(summary.passed, 150);
    let results = results(&env, &suite.id).await?;
    assert_eq!(results.len(), 150, "one result per test, no second attempt");
    assert!(
        results
            .iter()
            .all(|r| r.status == Status::Passed && r.attempt == 1)
    );
    let runs = runs(&env, 2, &suite.id);
    assert_eq!(runs.len(), 150, "every test ran");
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "tests run more than once: {twice:?}");
    env.stop();
    env.cleanup().await
}
