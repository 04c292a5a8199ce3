//! The `isotest` command line: [`args`] parses it; [`run`] loads a suite ([`input`]),
//! expands its `[[discover]]` entries in local sandboxes ([`discover`]), builds what its
//! tests run from once ([`prepare`]), and runs it embedded ([`embedded`]) or on a server
//! ([`client`]), then writes the reports ([`output`]); [`services`] starts the producer, worker and aggregator;
//! [`tokens`] manages the producer's API tokens; [`workspace`] chooses the files a
//! workspace upload packs; [`history`] reads the history store (`history`, `suites`,
//! `status`, `flaky`, `quarantine`) and [`meta`] finds a run's CI metadata;
//! [`user_config`] reads the user's config file (server URL and token);
//! [`bench`] measures the pipeline. [`exit`] holds every exit code.

pub mod args;
pub mod bench;
pub mod client;
pub mod discover;
pub mod embedded;
pub mod exit;
pub mod history;
pub mod input;
pub mod meta;
pub mod output;
pub mod prepare;
pub mod run;
pub mod services;
pub mod tokens;
pub mod user_config;
pub mod workspace;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};
use crate::exit::Failure;

/// Parses the command line, runs the command, and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Run(_)
        | Command::Bench(_)
        | Command::Token(_)
        | Command::History(_)
        | Command::Suites(_)
        | Command::Status(_)
        | Command::Flaky(_)
        | Command::Quarantine(_)
        | Command::Report(_)
        | Command::Completions { .. } => "warn",
        _ => "info",
    };
    isotest_infra::telemetry::init(default_filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return Failure::Service(anyhow::Error::new(e).context("start the async runtime"))
                .report();
        }
    };
    let outcome = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Producer(config) => services::producer(config).await.map(|()| exit::PASSED),
            Command::Worker(args) => services::worker(args).await.map(|()| exit::PASSED),
            Command::Aggregator(args) => services::aggregator(args).await.map(|()| exit::PASSED),
            Command::Up(args) => services::up(*args).await.map(|()| exit::PASSED),
            Command::Bench(args) => bench::bench(args).await.map(|()| exit::PASSED),
            Command::Token(args) => tokens::token(args).await.map(|()| exit::PASSED),
            Command::History(args) => history::history(args).await,
            Command::Suites(args) => history::suites(args).await,
            Command::Status(args) => history::status(args).await,
            Command::Flaky(args) => history::flaky(args).await,
            Command::Quarantine(args) => history::quarantine(args).await,
            Command::Report(args) => client::report(&args).await,
            Command::Completions { shell } => {
                args::completions(shell, &mut std::io::stdout());
                Ok(exit::PASSED)
            }
        }
    });
    // Sandboxes and connections of tasks still running are torn down with the runtime.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(failure) => failure.report(),
    }
}
