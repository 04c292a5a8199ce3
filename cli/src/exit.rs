//! Every way `isotest` can end, each with its documented exit code and one clear line.

use std::process::ExitCode;

/// Exit code: every test passed (or was skipped).
pub const PASSED: u8 = 0;
/// Exit code: at least one test failed, errored, timed out, ran out of memory, was lost or cancelled.
pub const TESTS_FAILED: u8 = 1;
/// Exit code: bad input (manifest, workspace, arguments) or an unreachable server.
pub const BAD_INPUT: u8 = 2;
/// Exit code: this host cannot give the sandbox isolation asked for.
pub const ISOLATION_UNAVAILABLE: u8 = 3;
/// Exit code: a service failed while running (lost its broker or store, say).
pub const SERVICE_FAILED: u8 = 4;
/// Exit code: the history store (`--history-url`) cannot be opened or read.
pub const HISTORY_UNAVAILABLE: u8 = 5;
/// Exit code: interrupted by Ctrl-C or SIGTERM before the suite finished.
pub const INTERRUPTED: u8 = 130;

/// A failure that ends the command, classified for its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{0}")]
    BadInput(String),
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Isolation(String),
    #[error("{0:#}")]
    Service(anyhow::Error),
    #[error("the history store failed: {0}")]
    History(String),
    #[error("interrupted")]
    Interrupted,
}

impl Failure {
    pub fn code(&self) -> u8 {
        match self {
            Failure::BadInput(_) | Failure::Unreachable(_) => BAD_INPUT,
            Failure::Isolation(_) => ISOLATION_UNAVAILABLE,
            Failure::Service(_) => SERVICE_FAILED,
            Failure::History(_) => HISTORY_UNAVAILABLE,
            Failure::Interrupted => INTERRUPTED,
        }
    }

    /// Prints the one line and gives the exit code.
    pub fn report(&self) -> ExitCode {
        eprintln!("error: {self}");
        ExitCode::from(self.code())
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Service(e)
    }
}

impl From<isotest_sandbox::SandboxError> for Failure {
    fn from(e: isotest_sandbox::SandboxError) -> Self {
        match e {
            isotest_sandbox::SandboxError::Unsupported { .. } => Failure::Isolation(format!(
                "{e}; run as root on a host with user namespaces and cgroups, or pass --allow-weaker-isolation"
            )),
            other => Failure::Service(anyhow::Error::new(other)),
        }
    }
}
