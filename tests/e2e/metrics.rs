//! Observability: every service serves /metrics, /healthz and /readyz, and what the
//! metrics count agrees with the report of a suite that ran through them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use isotest_protocol::report::Report;

use crate::support::{TestEnv, free_port, poll};

/// Tests in the suite; every `FAIL_EVERY`th one fails.
const TESTS: usize = 300;
const FAIL_EVERY: usize = 25;

/// One sample of a scrape: its metric name and labels, and its value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the OpenMetrics text a service serves (label values here hold no quotes or commas).
fn parse(text: &str) -> Result<Vec<Sample>> {
    if !text.ends_with("# EOF\n") {
        bail!("an OpenMetrics exposition ends with `# EOF`:\n{text}");
    }
    let mut samples = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line
            .rsplit_once(' ')
            .with_context(|| format!("sample line `{line}`"))?;
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let inner = rest.trim_end_matches('}');
                let labels = inner
                    .split(',')
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once('=').context("label without `=`")?;
                        Ok((k.to_owned(), v.trim_matches('"').to_owned()))
                    })
                    .collect::<Result<BTreeMap<_, _>>>()?;
                (name, labels)
            }
            None => (series, BTreeMap::new()),
        };
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value: value
                .parse()
                .with_context(|| format!("value of `{line}`"))?,
        });
    }
    Ok(samples)
}

/// The sum of the samples named `name` whose labels include `labels`.
fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

async fn scrape(addr: &str) -> Result<Vec<Sample>> {
    let response = reqwest::get(format!("http://{addr}/metrics")).await?;
    if !response.status().is_success() {
        bail!("GET /metrics on {addr}: {}", response.status());
    }
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if !content_type.starts_with("application/openmetrics-text") {
        bail!("GET /metrics on {addr} answered {content_type}");
    }
    parse(&response.text().await?)
}

async fn is_ready(addr: &str) -> bool {
    reqwest::get(format!("http://{addr}/readyz"))
        .await
        .is_ok_and(|r| r.status().is_success())
}

fn suite() -> String {
    let mut toml = String::from("name = \"metrics\"\n\n[defaults]\ntimeout = \"20s\"\n");
    for i in 0..TESTS {
        let command = if i % FAIL_EVERY == 0 {
            "[\"false\"]"
        } else {
            "[\"true\"]"
        };
        let _ = write!(
            toml,
            "\n[[tests]]\nname = \"t{i:03}\"\ncommand = {command}\n"
        );
    }
    toml
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_follow_a_suite_from_queue_to_report() -> Result<()> {
    let mut env = TestEnv::new().await;
    // The aggregator reads the queue depth often enough to see a few seconds' backlog.
    env.service_env
        .push(("ISOTEST_QUEUE_POLL_INTERVAL".into(), "100ms".into()));
    let api = format!("127.0.0.1:{}", free_port()?);
    let aggregator = format!("127.0.0.1:{}", free_port()?);
    let workers = [
        format!("127.0.0.1:{}", free_port()?),
        format!("127.0.0.1:{}", free_port()?),
    ];
    env.spawn("producer", &["producer", "--listen", &api, "--open"]);
    env.spawn(
        "aggregator",
        &["aggregator", "--metrics-listen", &aggregator],
    );
    for (i, addr) in workers.iter().enumerate() {
        env.spawn(
            &format!("worker-{i}"),
            &["worker", "--concurrency", "2", "--metrics-listen", addr],
        );
    }
    // A worker is ready once it consumes, the aggregator once Redis answers it.
    for addr in [&api, &aggregator, &workers[0], &workers[1]] {
        let ready = poll(Duration::from_secs(30), "/readyz", || async {
            Ok(is_ready(addr).await)
        })
        .await;
        if let Err(e) = ready {
            bail!(
                "{e:#} on {addr}\naggregator log:\n{}\nworker-0 log:\n{}",
                env.log("aggregator").join("\n"),
                env.log("worker-0").join("\n")
            );
        }
    }
    for addr in [&aggregator, &workers[0]] {
        let health = reqwest::get(format!("http://{addr}/healthz")).await?;
        assert!(health.status().is_success(), "/healthz on {addr}");
    }
    env.producer_url = Some(format!("http://{api}"));

    // Consumers are read from RabbitMQ, so both workers show there.
    poll(
        Duration::from_secs(10),
        "the aggregator to see both consumers",
        || async {
            let samples = scrape(&aggregator).await?;
            Ok(sum(&samples, "isotest_tests_queue_consumers", &[]) == 2.0)
        },
    )
    .await?;
    let before = scrape(&aggregator).await?;
    let completed_before = sum(
        &before,
        "isotest_suites_completed_total",
        &[("state", "complete")],
    );

    // Submit in the background and watch the queue fill and drain.
    let manifest = env.write("metrics.toml", &suite());
    let json = env.dir.join("metrics.json");
    let server = format!("http://{api}");
    let args = [
        "run",
        manifest.to_str().context("utf-8 path")?,
        "--server",
        &server,
        "--json",
        json.to_str().context("utf-8 path")?,
        "--quiet",
    ];
    let mut run = env
        .command(&args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(env.dir.join("run.log"))?)
        .spawn()?;

    let mut peak = 0.0_f64;
    let mut in_flight_seen = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    let drained = loop {
        let samples = scrape(&aggregator).await?;
        let depth = sum(&samples, "isotest_tests_queue_messages", &[]);
        peak = peak.max(depth);
        if !in_flight_seen {
            for addr in &workers {
                let worker = scrape(addr).await?;
                in_flight_seen |= sum(&worker, "isotest_tests_in_flight", &[]) > 0.0;
            }
        }
        if peak > 0.0 && depth == 0.0 {
            break true;
        }
        if Instant::now() > deadline || run.try_wait()?.is_some() && peak == 0.0 {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        drained,
        "the queue depth rose above zero and fell back to zero (peak {peak})"
    );
    assert!(in_flight_seen, "a worker showed tests in flight");

    // The run ends once the report is stored.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = run.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = run.kill();
            bail!("isotest run did not finish in time");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let report: Report = serde_json::from_slice(&std::fs::read(&json).with_context(|| {
        format!(
            "isotest run ({status}) wrote no report:\n{}",
            std::fs::read_to_string(env.dir.join("run.log")).unwrap_or_default()
        )
    })?)?;
    let failing = TESTS.div_ceil(FAIL_EVERY);
    assert_eq!(report.summary.total as usize, TESTS);
    assert_eq!(report.summary.failed as usize, failing);
    assert_eq!(report.summary.passed as usize, TESTS - failing);
    assert_eq!(status.code(), Some(1), "failures make exit code 1");

    // Each counter is bumped just after the write it counts, so it may trail the
    // report by a moment: poll until it agrees, and show the last scrape if it never does.
    let expected = [
        ("passed", f64::from(report.summary.passed)),
        ("failed", f64::from(report.summary.failed)),
    ];
    let last = std::cell::RefCell::new(String::new());
    let agreed = poll(
        Duration::from_secs(10),
        "the workers' counters to match the report",
        || async {
            let mut written: BTreeMap<&str, f64> = BTreeMap::new();
            let mut durations = 0.0;
            let mut starts = 0.0;
            for addr in &workers {
                let samples = scrape(addr).await?;
                for (status, _) in expected {
                    *written.entry(status).or_default() += sum(
                        &samples,
                        "isotest_results_written_total",
                        &[("status", status)],
                    );
                }
                *written.entry("any").or_default() +=
                    sum(&samples, "isotest_results_written_total", &[]);
                durations += sum(&samples, "isotest_test_duration_seconds_count", &[]);
                starts += sum(&samples, "isotest_sandbox_start_seconds_count", &[]);
            }
            *last.borrow_mut() =
                format!("written {written:?}, durations {durations}, sandbox starts {starts}");
            Ok(expected.iter().all(|(s, n)| written.get(s) == Some(n))
                && written.get("any") == Some(&(TESTS as f64))
                && durations == TESTS as f64
                && starts == TESTS as f64)
        },
    )
    .await;
    assert!(agreed.is_ok(), "{agreed:?}: {}", last.borrow());
    // Failures by framework and status, in the histogram's labels.
    let mut failed_durations = 0.0;
    for addr in &workers {
        failed_durations += sum(
            &scrape(addr).await?,
            "isotest_test_duration_seconds_count",
            &[("framework", "command"), ("status", "failed")],
        );
    }
    assert_eq!(failed_durations, failing as f64);

    poll(
        Duration::from_secs(10),
        "the aggregator to count the suite completed",
        || async {
            let samples = scrape(&aggregator).await?;
            Ok(sum(
                &samples,
                "isotest_suites_completed_total",
                &[("state", "complete")],
            ) == completed_before + 1.0
                && sum(&samples, "isotest_aggregation_lag_seconds_count", &[]) >= 1.0)
        },
    )
    .await?;
    let aggregated = scrape(&aggregator).await?;
    assert_eq!(
        sum(&aggregated, "isotest_dead_letter_queue_messages", &[]),
        0.0
    );
    let produced = scrape(&api).await?;
    let worker_samples = scrape(&workers[0]).await?;
    assert_eq!(sum(&produced, "isotest_suites_submitted_total", &[]), 1.0);
    assert_eq!(
        sum(&produced, "isotest_tests_submitted_total", &[]),
        TESTS as f64
    );
    // No label carries a suite id or a test name.
    for samples in [&aggregated, &produced, &worker_samples] {
        for sample in samples.iter() {
            for value in sample.labels.values() {
                assert!(
                    !value.contains(&report.suite_id) && !value.starts_with("t0"),
                    "{sample:?}"
                );
            }
        }
    }

    // The ids ride along in the logs: the worker's span of each test and the
    // aggregator's span of the entry that completed the suite name the suite.
    let id = &report.suite_id;
    let finished = (0..workers.len())
        .flat_map(|i| env.log(&format!("worker-{i}")))
        .filter(|line| line.contains("Test finished") && line.contains(id.as_str()))
        .count();
    assert_eq!(
        finished, TESTS,
        "every `Test finished.` line names its suite"
    );
    assert!(
        env.log("aggregator")
            .iter()
            .any(|line| line.contains("Stored the suite's report") && line.contains(id.as_str())),
        "the aggregator logs the suite id with the report"
    );

    env.stop();
    env.cleanup().await?;
    Ok(())
}
