//! `isotest bench`: measurements, never assertions. [`pipeline`] pushes trivial tests
//! through the whole distributed pipeline; [`suite`] runs a real suite through isotest and
//! the command its users run today, alternately, on the same machine, and compares them;
//! [`scheduling`] measures the scheduler's fairness and order against its targets;
//! [`cache`] times a no-op rerun of a large suite served from the result cache. The
//! pipeline benchmarks start their services through [`stack`].

mod cache;
mod pipeline;
mod scheduling;
mod stack;
mod suite;

pub use cache::CacheArgs;
pub use pipeline::PipelineArgs;
pub use scheduling::SchedulingArgs;
pub use suite::SuiteArgs;

use crate::exit::Failure;

/// What to measure.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchKind,
}

#[derive(Debug, clap::Subcommand)]
pub enum BenchKind {
    /// Throughput and per-stage latency of the whole distributed pipeline.
    Pipeline(PipelineArgs),
    /// A real suite through isotest beside its users' own runner, round by round.
    Suite(SuiteArgs),
    /// The scheduler: a small suite beside a large one, shares by weight, longest first.
    Scheduling(SchedulingArgs),
    /// A no-op rerun of a large suite through the result cache: median and p99.
    Cache(CacheArgs),
}

/// Runs a benchmark and prints its figures.
///
/// # Errors
///
/// Returns a [`Failure`] when the servers cannot be reached, a run fails, or the baseline
/// cannot be run.
pub async fn bench(args: BenchArgs) -> Result<(), Failure> {
    match args.what {
        BenchKind::Pipeline(args) => pipeline::pipeline(args).await,
        BenchKind::Suite(args) => suite::suite(args).await,
        BenchKind::Scheduling(args) => scheduling::scheduling(args).await,
        BenchKind::Cache(args) => cache::cache(args).await,
    }
}

/// The value at quantile `q` (nearest rank) of sorted `values`.
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
