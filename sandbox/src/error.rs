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
    #[error("set up sandbox: {step} failed: {}", errno_text(*errno))]
    ChildSetup {
        /// The step that failed, e.g. "pivot_root".
        step: String,
        /// The raw errno.
        errno: i32,
    },
    /// The kernel would not start the test's command for a reason of the test's own: its
    /// arguments and environment too large for `execve` (E2BIG), or, where the command itself
    /// is exec'd, a program missing (ENOENT, ENOTDIR) or not runnable (EACCES, ENOEXEC). The
    /// same test would fail the same way anywhere: not an infrastructure failure.
    #[error("exec the test's command: {}", errno_text(*errno))]
    ExecRefused {
        /// The raw errno.
        errno: i32,
    },
    /// The dedicated launcher thread is gone.
    #[error("reach the sandbox launcher thread")]
    LauncherGone,
}

/// An errno by its symbolic name and meaning, e.g. `E2BIG: argument list too long`.
pub(crate) fn errno_text(errno: i32) -> String {
    let e = nix::errno::Errno::from_raw(errno);
    if e == nix::errno::Errno::UnknownErrno {
        return format!("errno {errno}");
    }
    let desc = e.desc();
    let mut chars = desc.chars();
    let meaning: String = chars
        .next()
        .map(|first| first.to_lowercase().chain(chars).collect())
        .unwrap_or_default();
    format!("{e:?}: {meaning}")
}

impl SandboxError {
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Self {
        SandboxError::Io {
            what: what.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_are_named() {
        for (errno, text) in [
            (libc::E2BIG, "E2BIG: argument list too long"),
            (libc::EPERM, "EPERM: operation not permitted"),
            (libc::ENOENT, "ENOENT: no such file or directory"),
            (9999, "errno 9999"),
        ] {
            assert_eq!(errno_text(errno), text);
        }
        let e = SandboxError::ChildSetup {
            step: "mount on /proc".into(),
            errno: libc::EPERM,
        };
        assert_eq!(
            e.to_string(),
            "set up sandbox: mount on /proc failed: EPERM: operation not permitted"
        );
    }
}
