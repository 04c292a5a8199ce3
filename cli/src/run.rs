//! `isotest run`: load the suite, expand and prepare it in local sandboxes where it asks
//! for that, run it embedded or on a server, write the reports.

use std::sync::{Arc, OnceLock};

use isotest_protocol::report::Report;
use isotest_sandbox::Sandboxer;
use isotest_worker::prepare::{BuildCache, Preparer};

use crate::args::{RunArgs, SandboxArgs};
use crate::exit::Failure;
use crate::{client, discover, embedded, input, output, prepare};

/// Runs a suite and gives the exit code its verdict maps to.
///
/// # Errors
///
/// Returns a [`Failure`] for bad input, an unreachable server, missing isolation, or an interrupt.
pub async fn run(mut args: RunArgs) -> Result<u8, Failure> {
    if !args.embedded {
        let server =
            crate::user_config::load()?.resolve(args.server.as_deref(), args.token.as_deref());
        (args.server, args.token) = server.map_or((None, None), |s| (Some(s.url), s.token));
    }
    // A bad URL is found before any work, not after the workspace is packed.
    if let Some(server) = &args.server {
        client::server_url(server)?;
    }
    let mut unexpanded = input::read(&args.manifest)?;
    unexpanded.manifest.meta = crate::meta::merge(
        &unexpanded.manifest.meta,
        crate::meta::detect(|name| std::env::var(name).ok()),
        &args.meta,
    );
    if args.no_cache {
        unexpanded.manifest.cache = Some(false);
    }
    let local = Local::new(&args.sandbox);
    discover::expand(&mut unexpanded, &args, &local).await?;
    let mut loaded = input::only(unexpanded.validate()?, &args.only)?;
    // Only the aggregator sends webhooks: embedded mode says so rather than drop it.
    if args.server.is_none() && loaded.suite.callback_url.is_some() {
        return Err(Failure::BadInput(format!(
            "{}: callback_url: embedded mode sends no webhook (this run writes the reports \
             itself); run the suite with --server, or remove callback_url",
            args.manifest.display()
        )));
    }
    // The result cache lives in the servers' Redis: embedded mode runs every test, and says so
    // (the same manifest is meant for both, so this is a note, not an error).
    if args.server.is_none() && loaded.suite.cache == Some(true) {
        eprintln!(
            "isotest: {}: cache = true: embedded mode keeps no result cache; every test runs",
            args.manifest.display()
        );
    }
    let preparation = prepare::stage(&mut loaded, &local).await?;
    let ended = match preparation.failure() {
        Some(failure) => Ended::Finished(prepare::report_failed_build(&loaded, failure)),
        None => match &args.server {
            Some(server) => client::run(server, args.token.as_deref(), loaded, args.quiet).await?,
            None => {
                let history = embedded_history(&args).await;
                embedded::run(loaded, &args, local.sandboxer()?, &local, history.as_ref()).await
            }
        },
    };
    match ended {
        Ended::Finished(mut report) => {
            report.builds = preparation.reports();
            output::finish(&report, &args)
        }
        // A CI job's `always` step still finds the reports, marked cancelled; the exit
        // code says that the run was interrupted.
        Ended::Interrupted(mut report) => {
            report.builds = preparation.reports();
            output::finish(&report, &args)?;
            Err(Failure::Interrupted)
        }
    }
}

/// How a run ended: on its own (every test ended, or the deadline passed), or
/// interrupted by Ctrl-C or SIGTERM, with the report of what was known then, its
/// state `cancelled`.
#[derive(Debug)]
pub enum Ended {
    Finished(Report),
    Interrupted(Report),
}

/// Embedded mode's history store, unless `--no-history`. One that cannot be opened is
/// logged: a developer's run does not fail for want of its history.
async fn embedded_history(args: &RunArgs) -> Option<isotest_history::History> {
    if args.no_history {
        return None;
    }
    let opened = match args.history.url() {
        Ok(url) => isotest_history::History::open(&url)
            .await
            .map_err(|e| isotest_infra::error_chain(&e)),
        Err(failure) => Err(failure.to_string()),
    };
    match opened {
        Ok(history) => Some(history),
        Err(error) => {
            tracing::warn!(%error, "Running without history.");
            None
        }
    }
}

/// This machine's sandboxes and prepared builds, made on first use and then shared by every
/// step of the run: probing the host and starting the launcher threads is done once.
#[derive(Debug)]
pub struct Local<'a> {
    args: &'a SandboxArgs,
    sandboxer: OnceLock<Arc<Sandboxer>>,
    preparer: OnceLock<Arc<Preparer>>,
}

impl<'a> Local<'a> {
    pub fn new(args: &'a SandboxArgs) -> Self {
        Local {
            args,
            sandboxer: OnceLock::new(),
            preparer: OnceLock::new(),
        }
    }

    /// The sandboxer, made now if no step needed one before.
    ///
    /// # Errors
    ///
    /// Returns [`Failure::Isolation`] when the host cannot make sandboxes.
    pub fn sandboxer(&self) -> Result<Arc<Sandboxer>, Failure> {
        if let Some(sandboxer) = self.sandboxer.get() {
            return Ok(Arc::clone(sandboxer));
        }
        let sandboxer = Arc::new(Sandboxer::new(self.args.sandbox_config())?);
        if !sandboxer.isolation().missing.is_empty() {
            tracing::warn!(isolation = %sandboxer.isolation(), "Running with weaker isolation.");
        }
        Ok(Arc::clone(self.sandboxer.get_or_init(|| sandboxer)))
    }

    /// The preparer, if a step has needed one.
    pub fn prepared(&self) -> Option<Arc<Preparer>> {
        self.preparer.get().cloned()
    }

    /// The preparer of builds, over this machine's build cache.
    ///
    /// # Errors
    ///
    /// Returns [`Failure::Isolation`] when the host cannot make sandboxes.
    pub fn preparer(&self) -> Result<Arc<Preparer>, Failure> {
        if let Some(preparer) = self.preparer.get() {
            return Ok(Arc::clone(preparer));
        }
        let preparer = Arc::new(Preparer::new(
            self.sandboxer()?,
            BuildCache::new(BuildCache::default_root()),
            self.args.toolchain(),
            prepare::build_limits(&self.args.limits()),
        ));
        Ok(Arc::clone(self.preparer.get_or_init(|| preparer)))
    }
}
