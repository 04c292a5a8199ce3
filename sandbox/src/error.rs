//! The error returned when a sandbox could not be created or run; anything the test itself does
//! is reported in a `RunOutcome` instead.

use std::io;

use crate::bundle::BundleError;

/// Why the sandboxer could not start or finish a sandbox (an infrastructure failure).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The host lacks isolation pieces and `allow_weaker_isolation` is off.
    #[error("isolate tests on this host: missing {}", missing.join(", "))]
    Unsupported {
        /// Every missing piece, e.g. "cgroup memory controller".
        missing: Vec<String>,
    },
    /// The uids or gids configured for sandboxes cannot be used here.
    #[error("give sandboxes {kind}s {start}..{end}: {why}")]
    IdRange {
        /// "uid" or "gid".
        kind: &'static str,
        /// The first id of the range.
        start: u64,
        /// One past its last id.
        end: u64,
        /// Why not, e.g. "200000 is not mapped in this user namespace, which maps 0..65536".
        why: String,
    },
    /// The run named an environment the config does not know.
    #[error("find environment {0:?}")]
    UnknownEnvironment(String),
    /// The run spec cannot be expressed (NUL bytes, empty command, bad path).
    #[error("accept run spec: {0}")]
    InvalidSpec(String),
    /// The workspace bundle could not be unpacked.
    #[error("unpack workspace bundle")]
    Bundle(#[source] BundleError),
    /// A host-side system call failed while preparing, running or cleaning up a sandbox.
    #[error("{what}")]
    Io {
        /// What was being done, as a lowercase fragment.
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The sandbox's own setup (between clone and exec) failed.
    #[error("set up sandbox: {step} failed with errno {errno}")]
    ChildSetup {
        /// The step that failed, e.g. "pivot_root".
        step: String,
        /// The raw errno.
        errno: i32,
    },
    /// The dedicated launcher thread is gone.
    #[error("reach the sandbox launcher thread")]
    LauncherGone,
}

impl SandboxError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        SandboxError::Io {
            what: what.into(),
            source,
        }
    }
}
