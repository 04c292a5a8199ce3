//! `isotest run`: load the suite, run it embedded or on a server, write the reports.

use crate::args::RunArgs;
use crate::exit::Failure;
use crate::{client, discover, embedded, input, output};

/// Runs a suite and gives the exit code its verdict maps to.
///
/// # Errors
///
/// Returns a [`Failure`] for bad input, an unreachable server, missing isolation, or an interrupt.
pub async fn run(args: RunArgs) -> Result<u8, Failure> {
    let mut unexpanded = input::read(&args.manifest)?;
    discover::expand(&mut unexpanded, &args).await?;
    let loaded = input::only(unexpanded.validate()?, &args.only)?;
    let report = match &args.server {
        Some(server) => client::run(server, args.token.as_deref(), loaded, args.quiet).await?,
        None => embedded::run(loaded, &args).await?,
    };
    output::finish(&report, &args)
}
