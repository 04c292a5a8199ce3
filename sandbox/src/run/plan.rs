//! The child's plan of one run: its mounts (from `root.rs`), the argv of
//! `isotest-init` with the test's stages, its environment, rlimits, working directory and
//! the capabilities a fork server keeps.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use super::root::{EnvPlan, sandbox_ops, skeleton_ops};
use super::{cstr, path_c};
use crate::child::{ChildFds, ChildPlan};
use crate::error::SandboxError;
use crate::spec::{Privilege, RunSpec};
use crate::workspace::Workspace;
use crate::{Inner, UidMapping};

/// What a fork server keeps: mounts and namespaces (`CAP_SYS_ADMIN`; overlayfs also wants
/// `CAP_DAC_OVERRIDE` of its mounter, which in the sandbox's user namespace reaches only files
/// of ids mapped there, the sandbox's own), a fresh network namespace's loopback
/// (`CAP_NET_ADMIN`), and dropping capabilities from a forked test's bounding set
/// (`CAP_SETPCAP`), all in its sandbox's own user namespace.
const FORK_SERVER_CAPS: u64 = {
    // linux/capability.h
    const CAP_DAC_OVERRIDE: u64 = 1;
    const CAP_SETPCAP: u64 = 8;
    const CAP_NET_ADMIN: u64 = 12;
    const CAP_SYS_ADMIN: u64 = 21;
    (1 << CAP_DAC_OVERRIDE) | (1 << CAP_SYS_ADMIN) | (1 << CAP_NET_ADMIN) | (1 << CAP_SETPCAP)
};

/// The per-run fds and workspace the plan refers to.
pub(super) struct PlanInputs<'a> {
    pub(super) env: &'a EnvPlan,
    pub(super) workspace: &'a Workspace,
    /// One per `spec.binds`: the detached read-only tree to move into place (as root), or
    /// `None` where the child binds the host path itself (without root, before its pivot).
    pub(super) binds: &'a [Option<OwnedFd>],
    pub(super) fds: ChildFds,
    pub(super) spec: &'a RunSpec,
}

pub(super) fn build_plan(inner: &Inner, input: PlanInputs<'_>) -> Result<ChildPlan, SandboxError> {
    let spec = input.spec;
    let binds: Vec<_> = spec
        .binds
        .iter()
        .zip(input.binds.iter().map(Option::as_ref))
        .collect();
    let ops = if input.env.pivoted {
        // The child's mount namespace is a copy of its launcher's, whose root already is the
        // environment's skeleton: only the per-sandbox mounts are left to add.
        sandbox_ops(Path::new("/"), input.workspace, &binds, &spec.limits, false)?
    } else {
        let mut ops = skeleton_ops(
            input.env,
            &inner.new_root,
            &inner.config.state_dir,
            &inner.devices,
            &inner.config.expose,
        )?;
        ops.extend(sandbox_ops(
            &inner.new_root,
            input.workspace,
            &binds,
            &spec.limits,
            true,
        )?);
        ops
    };

    // Every run's pid 1 is `isotest-init`: with stages, an empty first argument, which names
    // no program, then which stages follow, then the stages' scripts (see the program's usage).
    let mut argv = vec![c"isotest-init".to_owned()];
    if spec.setup.is_some() || spec.teardown.is_some() {
        let stages = match (&spec.setup, &spec.teardown) {
            (Some(_), Some(_)) => c"st",
            (Some(_), None) => c"s",
            _ => c"t",
        };
        argv.extend([c"".to_owned(), stages.to_owned()]);
        for script in [&spec.setup, &spec.teardown].into_iter().flatten() {
            argv.push(cstr(script)?);
        }
    }
    for arg in &spec.command {
        argv.push(cstr(arg)?);
    }
    let home = "/workspace";
    let mut env: BTreeMap<&str, &str> = [
        ("PATH", inner.path.as_str()),
        ("HOME", home),
        ("LANG", "C.UTF-8"),
        ("TMPDIR", "/tmp"),
    ]
    .into_iter()
    .collect();
    for (key, value) in &spec.env {
        if key.is_empty() || key.contains('=') {
            return Err(SandboxError::InvalidSpec(format!(
                "environment variable name {key:?}"
            )));
        }
        env.insert(key, value);
    }
    let envp = env
        .into_iter()
        .map(|(k, v)| cstr(format!("{k}={v}")))
        .collect::<Result<_, _>>()?;

    Ok(ChildPlan {
        ops,
        fds: input.fds,
        make_private: !input.env.pivoted,
        set_groups: matches!(inner.isolation.uid_mapping, UidMapping::PerSandbox { .. }),
        loopback_up: !spec.network,
        rlimits: rlimits(&spec.limits),
        cap_last: inner.cap_last,
        workdir: workdir(&spec.workdir)?,
        program: c"/bin/sh".to_owned(),
        argv,
        envp,
        init: Some(inner.init_program.as_raw_fd()),
        keep_caps: match spec.privilege {
            Privilege::Test => 0,
            Privilege::ForkServer => FORK_SERVER_CAPS,
        },
        control: spec.control.as_ref().map(|fd| fd.as_raw_fd()),
        filters: match spec.privilege {
            Privilege::Test => None,
            Privilege::ForkServer => Some(Arc::clone(&inner.fork_server_filters)),
        },
    })
}

/// Soft limit on open files: what `select` can handle. Go, the JVM and Node.js raise their own
/// soft limit to the hard one at start.
const NOFILE_SOFT: u64 = 1024;
/// Hard limit on open files per process (their kernel memory is charged to the memory cgroup;
/// this bounds one process's descriptor table).
const NOFILE_HARD: u64 = 65536;

/// The rlimits of a sandbox, as nsjail sets them where they make sense: no core dumps, a file
/// size cap, open files, processes and threads (a backstop to the pids cgroup: counted per
/// user, and each sandbox has its own), and no real-time or raised CPU priority (a real-time
/// busy loop would starve the host). Not the address space: Go, the JVM and V8 reserve
/// gigabytes they never use, and the memory cgroup counts what is used. Each is clamped to the
/// worker's own hard limit, which a sandbox cannot raise.
fn rlimits(limits: &crate::spec::Limits) -> Vec<(libc::__rlimit_resource_t, u64, u64)> {
    [
        (libc::RLIMIT_CORE, 0, 0),
        (
            libc::RLIMIT_FSIZE,
            limits.file_size_bytes,
            limits.file_size_bytes,
        ),
        (libc::RLIMIT_NOFILE, NOFILE_SOFT, NOFILE_HARD),
        (libc::RLIMIT_NPROC, limits.pids, limits.pids),
        (libc::RLIMIT_RTPRIO, 0, 0),
        (libc::RLIMIT_NICE, 0, 0),
    ]
    .into_iter()
    .map(|(resource, soft, hard)| {
        let mut own = libc::rlimit {
            rlim_cur: 0,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: getrlimit writes the struct it is given.
        unsafe { libc::getrlimit(resource, &mut own) };
        let hard = hard.min(own.rlim_max);
        (resource, soft.min(hard), hard)
    })
    .collect()
}

/// The absolute directory the stages run in: the workspace, or a relative path beneath it.
fn workdir(rel: &str) -> Result<CString, SandboxError> {
    let path = Path::new(rel);
    if !path.components().all(|c| {
        matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    }) {
        return Err(SandboxError::InvalidSpec(format!(
            "working directory {rel:?} is not a relative path inside the workspace"
        )));
    }
    path_c(&Path::new("/workspace").join(path))
}
