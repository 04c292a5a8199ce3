//! `isotest bench pipeline`: pushes trivial tests through producer → RabbitMQ → workers
//! → Redis → aggregator, all in this process on this machine, and prints throughput
//! and each stage's median and p99.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use redis::AsyncCommands as _;

use isotest_infra::Endpoints;
use isotest_protocol::api::{Submitted, SuiteStatus};
use isotest_protocol::report::SuiteState;
use isotest_protocol::result::TestResult;

use super::stack::Stack;
use crate::args::{EndpointsArgs, SandboxArgs};
use crate::exit::Failure;

/// Throughput and per-stage latency of the whole distributed pipeline.
#[derive(Debug, clap::Args)]
pub struct PipelineArgs {
    /// RabbitMQ and Redis to use; a fresh namespace is made and removed.
    #[command(flatten)]
    pub endpoints: EndpointsArgs,
    /// Trivial tests (`command = ["true"]`) in all.
    #[arg(long, default_value_t = 1000)]
    pub tests: u32,
    /// Suites the tests are split into (each gives one aggregation figure).
    #[arg(long, default_value_t = 5)]
    pub suites: u32,
    /// Worker instances, each with its own RabbitMQ connection.
    #[arg(long, default_value_t = 2)]
    pub workers: u16,
    /// Tests each worker runs at once.
    #[arg(long, default_value_t = 2)]
    pub concurrency: u16,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// Runs the pipeline benchmark and prints its figures.
///
/// # Errors
///
/// Returns a [`Failure`] when the servers cannot be reached or the pipeline fails.
pub async fn pipeline(args: PipelineArgs) -> Result<(), Failure> {
    let stack = Stack::start(
        &args.endpoints.endpoints(),
        args.workers,
        args.concurrency,
        &args.sandbox,
    )
    .await?;
    let measured = measure(&args, &stack.base, &stack.endpoints).await;
    stack.stop().await;
    let figures = measured?;
    print!("{figures}");
    Ok(())
}

async fn measure(
    args: &PipelineArgs,
    base: &str,
    endpoints: &Endpoints,
) -> Result<String, Failure> {
    let http = reqwest::Client::new();
    let suites = args.suites.max(1);
    let per_suite = (args.tests / suites).max(1);
    let started = Instant::now();
    let mut submitted = Vec::new();
    for s in 0..suites {
        let tests: Vec<serde_json::Value> = (0..per_suite)
            .map(|i| serde_json::json!({ "name": format!("t{i}"), "command": ["true"] }))
            .collect();
        let manifest = serde_json::json!({ "name": format!("bench-{s}"), "tests": tests });
        let answer = http
            .post(format!("{base}/v1/suites"))
            .json(&manifest)
            .send()
            .await
            .context("submit a suite")?;
        if !answer.status().is_success() {
            return Err(Failure::Service(anyhow::anyhow!(
                "the producer refused the suite: {}",
                answer.text().await.unwrap_or_default()
            )));
        }
        submitted.push(
            answer
                .json::<Submitted>()
                .await
                .context("read the submit answer")?,
        );
    }
    let mut completed_at = Vec::new();
    for suite in &submitted {
        loop {
            let status: SuiteStatus = http
                .get(format!("{base}{}", suite.status_url))
                .send()
                .await
                .context("ask a suite's status")?
                .json()
                .await
                .context("read a suite's status")?;
            if status.state != SuiteState::Running {
                if status.state != SuiteState::Complete {
                    return Err(Failure::Service(anyhow::anyhow!(
                        "suite {} ended {:?}",
                        suite.id,
                        status.state
                    )));
                }
                completed_at.push(isotest_protocol::now_ms());
                break;
            }
            if started.elapsed() > Duration::from_secs(600) {
                return Err(Failure::Service(anyhow::anyhow!(
                    "the pipeline did not finish within 10 minutes"
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let wall = started.elapsed();
    let total = per_suite * suites;

    let mut redis = isotest_infra::store::connect(&endpoints.redis_url)
        .await
        .context("connect to Redis")?;
    let ns = &endpoints.namespace;
    let mut queue_wait = Vec::new();
    let mut sandbox_start = Vec::new();
    let mut run = Vec::new();
    let mut write = Vec::new();
    let mut aggregation = Vec::new();
    let mut workers = std::collections::BTreeMap::<String, u32>::new();
    let entries: redis::streams::StreamRangeReply = redis
        .xrange_all(ns.results_stream())
        .await
        .context("read the results stream")?;
    let stream_ms: std::collections::HashMap<(String, String), u64> = entries
        .ids
        .iter()
        .filter_map(|e| {
            let ms = e.id.split('-').next()?.parse().ok()?;
            let suite: String = e.get("suite")?;
            let field: String = e.get("field")?;
            Some(((suite, field), ms))
        })
        .collect();
    for (suite, done_ms) in submitted.iter().zip(&completed_at) {
        let results: std::collections::HashMap<String, String> = redis
            .hgetall(ns.results_key(&suite.id))
            .await
            .context("read results")?;
        let mut last_write = 0;
        for (field, json) in results {
            let r: TestResult = serde_json::from_str(&json).context("parse a result")?;
            queue_wait.push(r.timings.queue_wait_ms as f64);
            sandbox_start.push(r.timings.sandbox_start_us as f64 / 1000.0);
            run.push(r.timings.run_us as f64 / 1000.0);
            *workers.entry(r.worker.clone()).or_default() += 1;
            if let Some(ms) = stream_ms.get(&(suite.id.clone(), field)) {
                write.push(ms.saturating_sub(r.finished_at_ms) as f64);
                last_write = last_write.max(*ms);
            }
        }
        aggregation.push(done_ms.saturating_sub(last_write) as f64);
    }
    if queue_wait.len() != total as usize {
        bail_service(format!(
            "expected {total} results, found {}",
            queue_wait.len()
        ))?;
    }
    let mut out = String::new();
    out.push_str(&format!(
        "isotest bench pipeline: {total} tests (`true`) in {suites} suites, {} workers x {} concurrent, one process\n",
        args.workers, args.concurrency
    ));
    out.push_str(&format!(
        "machine: {} cores, {}\n",
        crate::args::default_concurrency(),
        kernel()
    ));
    out.push_str(&format!(
        "throughput: {:.1} tests/s ({total} tests in {:.2} s, submit to last report)\n",
        f64::from(total) / wall.as_secs_f64(),
        wall.as_secs_f64()
    ));
    out.push_str("stage                     median      p99   (ms)\n");
    for (name, values) in [
        ("queue wait", &mut queue_wait),
        ("sandbox start", &mut sandbox_start),
        ("run", &mut run),
        ("result write", &mut write),
        ("aggregation (per suite)", &mut aggregation),
    ] {
        let (median, p99) = percentiles(values);
        out.push_str(&format!("{name:<24} {median:>8.2} {p99:>8.2}\n"));
    }
    out.push_str(&format!("tests per worker: {workers:?}\n"));
    Ok(out)
}

fn bail_service(message: String) -> Result<(), Failure> {
    let e: anyhow::Result<()> = (|| bail!(message))();
    e.map_err(Failure::Service)
}

/// The median and the 99th percentile (nearest rank) of the values.
pub fn percentiles(values: &mut [f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    values.sort_by(f64::total_cmp);
    let rank = |q: f64| {
        let index = (q * values.len() as f64).ceil() as usize;
        values[index.clamp(1, values.len()) - 1]
    };
    (rank(0.5), rank(0.99))
}

pub(crate) fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(
        |_| "unknown kernel".into(),
        |k| format!("Linux {}", k.trim()),
    )
}

#[cfg(test)]
mod tests {
    use super::percentiles;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentiles(&mut v), (50.0, 99.0));
        assert_eq!(percentiles(&mut [3.0]), (3.0, 3.0));
        assert_eq!(percentiles(&mut []), (0.0, 0.0));
    }
}
