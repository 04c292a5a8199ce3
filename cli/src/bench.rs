//! `isotest bench`: measurements, never assertions.

/// What to measure.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

/// Runs the benchmark.
///
/// # Errors
///
/// Returns a [`crate::exit::Failure`] when the benchmark cannot run.
pub async fn bench(_args: BenchArgs) -> Result<(), crate::exit::Failure> {
    Err(crate::exit::Failure::BadInput(
        "bench: not built yet".into(),
    ))
}
