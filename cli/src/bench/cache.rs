//! `isotest bench cache`: a no-op rerun of a large suite through the result cache. The
//! suite is run once to fill the cache, then `isotest run --server` (this binary, as a
//! CI job runs it) is timed over several reruns of the unchanged suite, and the median
//! and p99 of their wall times are printed with the share of tests served from the
//! cache.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::args::EndpointsArgs;
use isotest_protocol::report::Report;

use super::quantile;
use super::stack::Stack;
use crate::args::SandboxArgs;
use crate::exit::Failure;

/// A no-op rerun of a large suite, served from the result cache.
#[derive(Debug, clap::Args)]
pub struct CacheArgs {
    /// RabbitMQ and Redis to use; a fresh namespace is made and removed.
    #[command(flatten)]
    pub endpoints: EndpointsArgs,
    /// Tests in the suite (`command = ["true"]`, each its own name).
    #[arg(long, default_value_t = 10_000)]
    pub tests: u32,
    /// Timed reruns after the run that fills the cache.
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// Worker instances (they run only the first, filling run).
    #[arg(long, default_value_t = 2)]
    pub workers: u16,
    /// Tests each worker runs at once.
    #[arg(long, default_value_t = 2)]
    pub concurrency: u16,
    /// Where the suite's manifest and reports are written.
    #[arg(long, default_value = "/var/tmp")]
    pub scratch: std::path::PathBuf,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// Runs the cache benchmark and prints its figures.
///
/// # Errors
///
/// Returns a [`Failure`] when the servers cannot be reached or a run fails.
pub async fn cache(args: CacheArgs) -> Result<(), Failure> {
    let stack = Stack::start(
        &args.endpoints.endpoints(),
        args.workers,
        args.concurrency,
        &args.sandbox,
    )
    .await?;
    let measured = measure(&args, &stack.base).await;
    stack.stop().await;
    print!("{}", measured?);
    Ok(())
}

async fn measure(args: &CacheArgs, base: &str) -> Result<String, Failure> {
    let dir = args
        .scratch
        .join(format!("isotest-bench-cache-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("make the scratch directory")?;
    let manifest = dir.join("suite.toml");
    let mut text = String::from("name = \"bench-cache\"\ncache = true\n");
    for i in 0..args.tests {
        text.push_str(&format!(
            "\n[[tests]]\nname = \"t{i}\"\ncommand = [\"true\"]\n"
        ));
    }
    std::fs::write(&manifest, text).context("write the manifest")?;
    let filled = Instant::now();
    let (_, first) = rerun(&manifest, &dir, base, "fill").await?;
    let fill = filled.elapsed();
    let mut walls = Vec::new();
    let mut worst_hits = 1.0_f64;
    for round in 0..args.rounds.max(1) {
        let (wall, report) = rerun(&manifest, &dir, base, &format!("round-{round}")).await?;
        let hits = f64::from(report.summary.cached) / f64::from(report.summary.total.max(1));
        worst_hits = worst_hits.min(hits);
        walls.push(wall.as_secs_f64());
    }
    let _ = std::fs::remove_dir_all(&dir);
    walls.sort_by(f64::total_cmp);
    Ok(format!(
        "isotest bench cache: {} tests (`true`), {} workers x {} concurrent, one process\n\
         fill run: {:.1} s ({} passed, {} cached)\n\
         no-op rerun (isotest run --server, {} rounds): median {:.2} s, p99 {:.2} s\n\
         cache hits: at least {:.2}% in every round\n",
        args.tests,
        args.workers,
        args.concurrency,
        fill.as_secs_f64(),
        first.summary.passed,
        first.summary.cached,
        walls.len(),
        quantile(&walls, 0.5),
        quantile(&walls, 0.99),
        worst_hits * 100.0,
    ))
}

/// Runs the suite with this binary, as a CI job would: its wall time and report.
async fn rerun(
    manifest: &std::path::Path,
    dir: &std::path::Path,
    base: &str,
    label: &str,
) -> Result<(Duration, Report), Failure> {
    let json = dir.join(format!("{label}.json"));
    let exe = std::env::current_exe().context("find this binary")?;
    let started = Instant::now();
    let output = tokio::process::Command::new(exe)
        .arg("run")
        .arg(manifest)
        .args(["--server", base, "--quiet", "--json"])
        .arg(&json)
        .env_remove("ISOTEST_TOKEN")
        .output()
        .await
        .context("run isotest")?;
    let wall = started.elapsed();
    if !output.status.success() {
        return Err(Failure::Service(anyhow::anyhow!(
            "isotest run ({label}) exited {:?}: {}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let report: Report = serde_json::from_slice(&std::fs::read(&json).context("read the report")?)
        .context("parse the report")?;
    Ok((wall, report))
}
