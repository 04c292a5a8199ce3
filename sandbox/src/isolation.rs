//! What isolation this host gives a sandbox, found by probing at start, so the worker can log it
//! and refuse to run when a piece is missing.

use std::fmt;

/// How the sandbox's root user maps to a user outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UidMapping {
    /// Each concurrent sandbox gets its own unprivileged uid and gid, `base + slot`.
    PerSandbox {
        /// The first outside uid/gid.
        base: u32,
    },
    /// Not root: root inside maps to the caller's own uid.
    Caller {
        /// The caller's uid.
        uid: u32,
    },
}

/// Which cgroup hierarchy limits are enforced through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Separate v1 controller hierarchies (memory, pids, cpuacct, freezer).
    V1,
    /// The unified v2 hierarchy.
    V2,
}

/// What a [`crate::Sandboxer`] enforces on this host, and what is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolation {
    /// User, mount, pid, network, ipc and uts namespaces can be created.
    pub namespaces: bool,
    /// How root inside maps outside.
    pub uid_mapping: UidMapping,
    /// The cgroup hierarchy in use, if any.
    pub cgroup: Option<CgroupVersion>,
    /// The memory limit (and OOM detection) is enforced.
    pub memory_limit: bool,
    /// The process-count limit is enforced.
    pub pids_limit: bool,
    /// Whole-sandbox CPU time is accounted (needed for `cpu_time`).
    pub cpu_accounting: bool,
    /// The workspace is a size-limited tmpfs (needs root on the host).
    pub workspace_tmpfs: bool,
    /// Every missing piece, in words, e.g. "cgroup memory controller".
    pub missing: Vec<String>,
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut enforced = Vec::new();
        if self.namespaces {
            enforced.push("namespaces (user, mount, pid, net, ipc, uts)".to_owned());
        }
        enforced.push(match self.uid_mapping {
            UidMapping::PerSandbox { base } => format!("per-sandbox uid from {base}"),
            UidMapping::Caller { uid } => format!("root inside mapped to caller uid {uid}"),
        });
        if let Some(version) = self.cgroup {
            let mut parts = Vec::new();
            if self.memory_limit {
                parts.push("memory");
            }
            if self.pids_limit {
                parts.push("pids");
            }
            if self.cpu_accounting {
                parts.push("cpu");
            }
            enforced.push(format!("cgroup {version:?} ({})", parts.join(", ")));
        }
        if self.workspace_tmpfs {
            enforced.push("size-limited workspace tmpfs".to_owned());
        }
        enforced.push("seccomp, no_new_privs, no capabilities, rlimits".to_owned());
        write!(f, "enforced: {}", enforced.join("; "))?;
        if !self.missing.is_empty() {
            write!(f, "; missing: {}", self.missing.join(", "))?;
        }
        Ok(())
    }
}
