//! `isotest run`: load the suite, expand it in local sandboxes where it asks for that, run
//! it embedded or on a server, write the reports.

use std::sync::Arc;

use isotest_sandbox::Sandboxer;

use crate::args::{RunArgs, SandboxArgs};
use crate::exit::Failure;
use crate::{client, discover, embedded, input, output};

/// Runs a suite and gives the exit code its verdict maps to.
///
/// # Errors
///
/// Returns a [`Failure`] for bad input, an unreachable server, missing isolation, or an interrupt.
pub async fn run(args: RunArgs) -> Result<u8, Failure> {
    let mut unexpanded = input::read(&args.manifest)?;
    let mut local = LocalSandboxes::new(&args.sandbox);
    discover::expand(&mut unexpanded, &args, &mut local).await?;
    let loaded = input::only(unexpanded.validate()?, &args.only)?;
    let report = match &args.server {
        Some(server) => client::run(server, args.token.as_deref(), loaded, args.quiet).await?,
        None => embedded::run(loaded, &args, local.get()?).await?,
    };
    output::finish(&report, &args)
}

/// This machine's sandboxes, made on first use and then shared by every step of the run:
/// probing the host and starting the launcher threads is done once.
#[derive(Debug)]
pub struct LocalSandboxes<'a> {
    args: &'a SandboxArgs,
    sandboxer: Option<Arc<Sandboxer>>,
}

impl<'a> LocalSandboxes<'a> {
    pub fn new(args: &'a SandboxArgs) -> Self {
        LocalSandboxes {
            args,
            sandboxer: None,
        }
    }

    /// The sandboxer, made now if no step needed one before.
    ///
    /// # Errors
    ///
    /// Returns [`Failure::Isolation`] when the host cannot make sandboxes.
    pub fn get(&mut self) -> Result<Arc<Sandboxer>, Failure> {
        if let Some(sandboxer) = &self.sandboxer {
            return Ok(Arc::clone(sandboxer));
        }
        let sandboxer = Arc::new(Sandboxer::new(self.args.sandbox_config())?);
        if !sandboxer.isolation().missing.is_empty() {
            tracing::warn!(isolation = %sandboxer.isolation(), "Running with weaker isolation.");
        }
        self.sandboxer = Some(Arc::clone(&sandboxer));
        Ok(sandboxer)
    }
}
