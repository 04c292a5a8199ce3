//! `isotest bench scheduling`: the scheduler's targets, measured on the whole pipeline
//! in this process: how long a 5-test suite takes beside a large one, how two tokens
//! share the slots by weight, and how close a suite with a few long tests comes to
//! max(total work ÷ slots, longest test) once an earlier run is known.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use redis::AsyncCommands as _;

use isotest_infra::Endpoints;
use isotest_protocol::SCHEMA_VERSION;
use isotest_protocol::api::{Submitted, SuiteStatus, TokenRecord};
use isotest_protocol::report::SuiteState;
use isotest_protocol::result::TestResult;
use isotest_protocol::schedule::Priority;

use super::stack::Stack;
use crate::args::{EndpointsArgs, SandboxArgs};
use crate::exit::Failure;

/// The scheduler's targets on the whole pipeline.
#[derive(Debug, clap::Args)]
pub struct SchedulingArgs {
    /// RabbitMQ and Redis to use; a fresh namespace is made and removed per scenario.
    #[command(flatten)]
    pub endpoints: EndpointsArgs,
    /// Which scenarios to run.
    #[arg(long, value_enum, default_values_t = [Scenario::Small, Scenario::Shares, Scenario::Longest])]
    pub scenario: Vec<Scenario>,
    /// Worker instances.
    #[arg(long, default_value_t = 2)]
    pub workers: u16,
    /// Tests each worker runs at once.
    #[arg(long, default_value_t = 2)]
    pub concurrency: u16,
    /// Tests of the large suite the 5-test suite is submitted beside.
    #[arg(long, default_value_t = 20_000)]
    pub large: u32,
    /// Tests each of the two tokens submits.
    #[arg(long, default_value_t = 5_000)]
    pub share_tests: u32,
    /// Tests to let finish (both tokens together) before the shares are read.
    #[arg(long, default_value_t = 400)]
    pub share_window: u32,
    /// Multiplies the long-test scenario's durations (5 s and 0.1 s at 1.0).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// One of the benchmark's measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// A 5-test suite submitted while a large one runs.
    Small,
    /// Two tokens' shares of the slots, with weights 1:1 and 3:1.
    Shares,
    /// 10 tests of 5 s and 190 of 0.1 s, run twice: wall time against the bound.
    Longest,
}

/// Runs the chosen scenarios and prints their figures.
///
/// # Errors
///
/// Returns a [`Failure`] when the servers cannot be reached or a suite fails.
pub async fn scheduling(args: SchedulingArgs) -> Result<(), Failure> {
    println!(
        "isotest bench scheduling: {} workers x {} concurrent, one process; machine: {} cores, {}, load average {}",
        args.workers,
        args.concurrency,
        crate::args::default_concurrency(),
        super::pipeline::kernel(),
        load_average()
    );
    for scenario in &args.scenario {
        let stack = Stack::start(
            &args.endpoints.endpoints(),
            args.workers,
            args.concurrency,
            &args.sandbox,
        )
        .await?;
        let client = Client::new(&stack.base);
        let measured = match scenario {
            Scenario::Small => small(&args, &client, &stack.endpoints).await,
            Scenario::Shares => shares(&args, &client, &stack.endpoints).await,
            Scenario::Longest => longest(&args, &client, &stack.endpoints).await,
        };
        stack.stop().await;
        print!("{}", measured.map_err(Failure::Service)?);
        println!("load average after: {}", load_average());
    }
    Ok(())
}

/// The producer's API, as one caller (a token or none).
struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    fn new(base: &str) -> Client {
        Client {
            base: base.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    async fn submit(
        &self,
        token: Option<&str>,
        manifest: &serde_json::Value,
    ) -> anyhow::Result<Submitted> {
        let mut request = self
            .http
            .post(format!("{}/v1/suites", self.base))
            .json(manifest);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let answer = request.send().await.context("submit a suite")?;
        if !answer.status().is_success() {
            bail!(
                "the producer refused the suite: {}",
                answer.text().await.unwrap_or_default()
            );
        }
        answer.json().await.context("read the submit answer")
    }

    async fn status(&self, token: Option<&str>, suite: &Submitted) -> anyhow::Result<SuiteStatus> {
        let mut request = self.http.get(format!("{}{}", self.base, suite.status_url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request
            .send()
            .await?
            .json()
            .await
            .context("read a suite's status")
    }

    async fn cancel(&self, token: Option<&str>, suite: &Submitted) -> anyhow::Result<()> {
        let mut request = self
            .http
            .delete(format!("{}{}", self.base, suite.status_url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.context("cancel a suite")?;
        Ok(())
    }

    /// Polls until `done(status)` or the suite ends; fails after `within`.
    async fn until(
        &self,
        token: Option<&str>,
        suite: &Submitted,
        within: Duration,
        done: impl Fn(&SuiteStatus) -> bool,
    ) -> anyhow::Result<SuiteStatus> {
        let deadline = Instant::now() + within;
        loop {
            let status = self.status(token, suite).await?;
            if done(&status) || status.state != SuiteState::Running {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("suite {} did not get there within {within:?}", suite.id);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A JSON manifest of tests `{prefix}{i}`, the `i`th running `command(i)`.
fn manifest(
    name: &str,
    prefix: &str,
    n: u32,
    command: impl Fn(u32) -> Vec<String>,
) -> serde_json::Value {
    let tests: Vec<serde_json::Value> = (0..n)
        .map(|i| serde_json::json!({ "name": format!("{prefix}{i}"), "command": command(i) }))
        .collect();
    serde_json::json!({ "name": name, "tests": tests })
}

fn trivial(_: u32) -> Vec<String> {
    vec!["true".into()]
}

/// Every result of a suite (every attempt).
async fn results(endpoints: &Endpoints, suite_id: &str) -> anyhow::Result<Vec<TestResult>> {
    let mut redis = isotest_infra::store::connect(&endpoints.redis_url).await?;
    let all: BTreeMap<String, String> = redis
        .hgetall(endpoints.namespace.results_key(suite_id))
        .await?;
    all.values()
        .map(|json| serde_json::from_str(json).context("parse a result"))
        .collect()
}

/// The 5-test suite beside a large one: its wall time, its own run time (first start
/// to last finish of its tests) and the difference, against the target of 2 s.
async fn small(
    args: &SchedulingArgs,
    client: &Client,
    endpoints: &Endpoints,
) -> anyhow::Result<String> {
    let large = client
        .submit(None, &manifest("nightly", "n", args.large, trivial))
        .await?;
    client
        .until(None, &large, Duration::from_secs(120), |s| s.done >= 20)
        .await?;
    let before = client.status(None, &large).await?;
    let submitted = Instant::now();
    let small = client
        .submit(None, &manifest("pull-request", "p", 5, trivial))
        .await?;
    let status = client
        .until(None, &small, Duration::from_secs(600), |_| false)
        .await?;
    let wall = submitted.elapsed().as_secs_f64();
    let after = client.status(None, &large).await?;
    client.cancel(None, &large).await?;
    if status.state != SuiteState::Complete {
        bail!("the 5-test suite ended {:?}", status.state);
    }
    let results = results(endpoints, &small.id).await?;
    let first = results.iter().map(|r| r.started_at_ms).min().unwrap_or(0);
    let last = results.iter().map(|r| r.finished_at_ms).max().unwrap_or(0);
    let own = last.saturating_sub(first) as f64 / 1e3;
    Ok(format!(
        "small beside large: 5 tests (`true`) submitted while a {}-test suite ran ({} done then, {} waiting; {} done when the small one ended)\n  wall {wall:.2} s, own run {own:.2} s, waited {:.2} s (target: wall <= 2 s + own run) -> {}\n",
        args.large,
        before.done,
        before.waiting.unwrap_or(0),
        after.done,
        wall - own,
        verdict(wall <= 2.0 + own),
    ))
}

/// Adds a token straight into the benchmark's Redis, as `isotest token add` does.
async fn add_token(endpoints: &Endpoints, name: &str, weight: u32) -> anyhow::Result<String> {
    let redis = isotest_infra::store::connect(&endpoints.redis_url).await?;
    let store = isotest_producer::store::Store::new(redis, endpoints.namespace.clone());
    let token = isotest_producer::auth::generate()?;
    let record = TokenRecord {
        schema_version: SCHEMA_VERSION,
        name: name.to_owned(),
        quota: None,
        admin: false,
        network: false,
        weight,
        priority: Priority::Normal,
        trusted: false,
        cache: false,
    };
    store
        .add_token(&isotest_producer::auth::hash(&token), &record)
        .await?;
    Ok(token)
}

/// Two tokens' shares of the slots while both have work, for weights 1:1 and 3:1.
async fn shares(
    args: &SchedulingArgs,
    client: &Client,
    endpoints: &Endpoints,
) -> anyhow::Result<String> {
    let mut out = format!(
        "shares: two tokens, {} tests (`true`) each, the first {} to finish (both still working)\n",
        args.share_tests, args.share_window
    );
    for (round, (wa, wb)) in [(1u32, 1u32), (3, 1)].into_iter().enumerate() {
        let a = add_token(endpoints, &format!("a{round}"), wa).await?;
        let b = add_token(endpoints, &format!("b{round}"), wb).await?;
        let (ma, mb) = (
            manifest(&format!("a{round}"), "a", args.share_tests, trivial),
            manifest(&format!("b{round}"), "b", args.share_tests, trivial),
        );
        let (sa, sb) =
            tokio::try_join!(client.submit(Some(&a), &ma), client.submit(Some(&b), &mb))?;
        let window = args.share_window;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let done =
                client.status(Some(&a), &sa).await?.done + client.status(Some(&b), &sb).await?.done;
            if done >= window {
                break;
            }
            if Instant::now() > deadline {
                bail!("{window} tests did not finish within 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        client.cancel(Some(&a), &sa).await?;
        client.cancel(Some(&b), &sb).await?;
        let mut starts: Vec<(u64, bool)> = results(endpoints, &sa.id)
            .await?
            .iter()
            .map(|r| (r.started_at_ms, true))
            .chain(
                results(endpoints, &sb.id)
                    .await?
                    .iter()
                    .map(|r| (r.started_at_ms, false)),
            )
            .collect();
        starts.sort_unstable();
        // The first few went before the second suite was recorded.
        let skip =
            (usize::from(args.workers) * usize::from(args.concurrency) * 2).min(starts.len());
        let counted = &starts[skip..];
        let of_a = counted.iter().filter(|(_, a)| *a).count() as f64 / counted.len().max(1) as f64;
        let expected = f64::from(wa) / f64::from(wa + wb);
        out.push_str(&format!(
            "  weights {wa}:{wb}: token a got {:.1}% of {} tests started (target {:.0}% +- 10) -> {}\n",
            of_a * 100.0,
            counted.len(),
            expected * 100.0,
            verdict((of_a - expected).abs() <= 0.10),
        ));
    }
    Ok(out)
}

/// A suite of 10 tests of 5 s and 190 of 0.1 s (times `--scale`), the long ones last
/// in the manifest, run once to learn the durations and then measured.
async fn longest(
    args: &SchedulingArgs,
    client: &Client,
    _endpoints: &Endpoints,
) -> anyhow::Result<String> {
    let (long, short) = (5.0 * args.scale, 0.1 * args.scale);
    let sleep = |i: u32| -> Vec<String> {
        let seconds = if i >= 190 { long } else { short };
        vec!["sleep".into(), format!("{seconds:.3}")]
    };
    let suite = manifest("timed", "t", 200, sleep);
    let slots = f64::from(args.workers) * f64::from(args.concurrency);
    let total = 10.0 * long + 190.0 * short;
    let bound = 1.1 * (total / slots).max(long);
    let mut walls = Vec::new();
    for _ in 0..2 {
        let started = Instant::now();
        let submitted = client.submit(None, &suite).await?;
        let status = client
            .until(None, &submitted, Duration::from_secs(900), |_| false)
            .await?;
        if status.state != SuiteState::Complete {
            bail!("the suite ended {:?}", status.state);
        }
        walls.push(started.elapsed().as_secs_f64());
    }
    Ok(format!(
        "longest first: 10 x {long:.2} s + 190 x {short:.2} s on {slots} slots, long tests last in the manifest\n  bound 1.1 x max({total:.1} / {slots}, {long:.2}) = {bound:.2} s; first run (nothing known) {:.2} s; next run {:.2} s -> {}\n",
        walls[0],
        walls[1],
        verdict(walls[1] <= bound),
    ))
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

/// The 1-, 5- and 15-minute load averages, as the kernel gives them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}
