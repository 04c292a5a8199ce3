//! `isotest bench suite`: a real suite run through `isotest run` and through the command
//! its users run today (`pytest -n 2`, `cargo nextest run`, `go test ./...`), alternately,
//! round after round on this machine, so both see the same load; then the median and p99
//! wall time of each, their ratio, isotest's per-test times, and (given the baseline's
//! JUnit report) whether every verdict is the same.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};

use isotest_protocol::report::{BuildStatus, Report};
use isotest_protocol::result::CaseStatus;

use super::quantile;
use crate::exit::Failure;

#[derive(Debug, clap::Args)]
pub struct SuiteArgs {
    /// The suite's manifest, as `isotest run` takes it.
    pub manifest: PathBuf,
    /// The command users run today, run with `sh -c` in `--baseline-dir`
    /// (e.g. "pytest -n 2", "cargo clean && cargo nextest run").
    #[arg(long)]
    pub baseline: String,
    /// Where the baseline runs (default: the directory of the manifest).
    #[arg(long)]
    pub baseline_dir: Option<PathBuf>,
    /// A JUnit report the baseline writes: every case's verdict is compared with isotest's.
    #[arg(long)]
    pub baseline_junit: Option<PathBuf>,
    /// Rounds, each one isotest run and one baseline run (their order alternates).
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// Give every isotest round an empty build cache, so that builds are included.
    #[arg(long)]
    pub fresh_cache: bool,
    /// Further arguments for `isotest run` (e.g. `--concurrency 2`, `--server URL`).
    #[arg(last = true)]
    pub run_args: Vec<String>,
}

/// One round's two wall times, in seconds.
struct Round {
    isotest: f64,
    baseline: f64,
}

pub async fn suite(args: SuiteArgs) -> Result<(), Failure> {
    tokio::task::spawn_blocking(move || measure(&args))
        .await
        .map_err(|e| Failure::Service(e.into()))?
        .map_err(Failure::Service)
}

fn measure(args: &SuiteArgs) -> anyhow::Result<()> {
    let me = std::env::current_exe().context("find the isotest binary")?;
    let scratch = std::env::temp_dir().join(format!("isotest-bench-suite-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let baseline_dir = match &args.baseline_dir {
        Some(dir) => dir.clone(),
        None => args
            .manifest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned(),
    };
    let mut rounds = Vec::new();
    let mut per_test: Vec<f64> = Vec::new();
    let mut last_report = None;
    let mut baseline_junit = None;
    for round in 1..=args.rounds {
        let json = scratch.join(format!("round-{round}.json"));
        let run_isotest = || -> anyhow::Result<(f64, Report)> {
            let mut cmd = Command::new(&me);
            cmd.arg("run")
                .arg(&args.manifest)
                .args(["--quiet", "--json"])
                .arg(&json)
                .args(&args.run_args);
            if args.fresh_cache {
                cmd.env("ISOTEST_CACHE_DIR", scratch.join(format!("cache-{round}")));
            }
            let started = Instant::now();
            let output = cmd.output().context("run isotest")?;
            let wall = started.elapsed().as_secs_f64();
            let report: Report =
                serde_json::from_slice(&std::fs::read(&json).with_context(|| {
                    format!(
                        "isotest wrote no report (exit {:?}): {}",
                        output.status.code(),
                        String::from_utf8_lossy(&output.stderr)
                    )
                })?)?;
            Ok((wall, report))
        };
        let run_baseline = || -> anyhow::Result<f64> {
            let started = Instant::now();
            let status = Command::new("/bin/sh")
                .args(["-c", &args.baseline])
                .current_dir(&baseline_dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .context("run the baseline")?;
            let wall = started.elapsed().as_secs_f64();
            if status.code().is_none() {
                bail!("the baseline was killed: {status}");
            }
            Ok(wall)
        };
        // Alternate which goes first, so that neither always runs on a warmer machine.
        let (isotest, baseline) = if round % 2 == 1 {
            let (i, report) = run_isotest()?;
            (i, (run_baseline()?, report))
        } else {
            let b = run_baseline()?;
            let (i, report) = run_isotest()?;
            (i, (b, report))
        };
        let (baseline, report) = baseline;
        if let Some(path) = &args.baseline_junit {
            baseline_junit = std::fs::read_to_string(baseline_dir.join(path)).ok();
        }
        per_test.extend(report.tests.iter().map(|t| t.duration_ms as f64));
        let builds: Vec<String> = report
            .builds
            .iter()
            .map(|b| {
                let how = match b.status {
                    BuildStatus::Built => "built",
                    BuildStatus::Cached => "cached",
                    BuildStatus::Failed => "FAILED",
                };
                format!(
                    "{} {how} in {:.2} s",
                    b.framework,
                    b.duration_ms as f64 / 1000.0
                )
            })
            .collect();
        println!(
            "round {round}: isotest {isotest:.2} s ({} tests, {} passed{}) · baseline {baseline:.2} s",
            report.summary.total,
            report.summary.passed,
            if builds.is_empty() {
                String::new()
            } else {
                format!("; {}", builds.join(", "))
            }
        );
        rounds.push(Round { isotest, baseline });
        last_report = Some(report);
    }
    let mut isotest: Vec<f64> = rounds.iter().map(|r| r.isotest).collect();
    let mut baseline: Vec<f64> = rounds.iter().map(|r| r.baseline).collect();
    isotest.sort_by(f64::total_cmp);
    baseline.sort_by(f64::total_cmp);
    per_test.sort_by(f64::total_cmp);
    let (im, ip) = (quantile(&isotest, 0.5), quantile(&isotest, 0.99));
    let (bm, bp) = (quantile(&baseline, 0.5), quantile(&baseline, 0.99));
    println!("isotest   wall: median {im:.2} s, p99 {ip:.2} s");
    println!(
        "baseline  wall: median {bm:.2} s, p99 {bp:.2} s  ({})",
        args.baseline
    );
    println!(
        "ratio (isotest ÷ baseline, medians): {:.2}",
        im / bm.max(f64::EPSILON)
    );
    println!(
        "isotest per test: median {:.1} ms, p99 {:.1} ms over {} runs",
        quantile(&per_test, 0.5),
        quantile(&per_test, 0.99),
        per_test.len()
    );
    if let (Some(xml), Some(report)) = (baseline_junit, last_report) {
        let (same, differ) = compare(&xml, &report)?;
        println!(
            "verdicts: {same} cases the same as the baseline's, {} differ",
            differ.len()
        );
        for (case, (theirs, ours)) in differ.iter().take(20) {
            println!("  {case}: baseline {theirs:?}, isotest {ours:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

/// Cases by name from the baseline's JUnit report and from isotest's report, compared:
/// how many agree, and those that do not (name → (baseline, isotest)).
#[expect(
    clippy::type_complexity,
    reason = "a count and a small map, read once by the caller"
)]
fn compare(
    xml: &str,
    report: &Report,
) -> anyhow::Result<(
    usize,
    BTreeMap<String, (Option<CaseStatus>, Option<CaseStatus>)>,
)> {
    let theirs: BTreeMap<String, CaseStatus> =
        isotest_worker::frameworks::parse_junit(xml.as_bytes())
            .context("read the baseline's JUnit report")?
            .into_iter()
            .map(|c| (case_key(&c.classname, &c.name), c.status))
            .collect();
    // A case libtest names alone belongs to its test's binary, as nextest classes it.
    let ours: BTreeMap<String, CaseStatus> = report
        .tests
        .iter()
        .flat_map(|t| {
            let binary = t.name.split_once(' ').map_or("", |(b, _)| b);
            t.cases.iter().map(move |c| {
                let class = if c.classname.is_empty() {
                    binary
                } else {
                    &c.classname
                };
                (case_key(class, &c.name), c.status)
            })
        })
        .collect();
    let keys: std::collections::BTreeSet<&String> = theirs.keys().chain(ours.keys()).collect();
    let mut same = 0;
    let mut differ = BTreeMap::new();
    for key in keys {
        let pair = (theirs.get(key).copied(), ours.get(key).copied());
        if pair.0 == pair.1 {
            same += 1;
        } else {
            differ.insert(key.clone(), pair);
        }
    }
    Ok((same, differ))
}

/// A case's key for comparing two runners: its class, then its name.
fn case_key(classname: &str, name: &str) -> String {
    if classname.is_empty() {
        name.to_owned()
    } else {
        format!("{classname}.{name}")
    }
}
