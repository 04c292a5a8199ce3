//! The filesystem a sandbox sees: an environment's top level as scanned at start
//! ([`EnvPlan`]), the read-only skeleton built from it once per launcher, and the mounts
//! each sandbox adds on top (workspace, `/tmp`, `/dev/pts`, a `/proc` with its host files
//! masked), as [`Op`]s for the child to run.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::{cstr, path_c};
use crate::child::Op;
use crate::error::SandboxError;
use crate::sys;
use crate::workspace::Workspace;

/// The top-level entries of an environment root, listed once at start.
#[derive(Debug, Clone)]
pub(crate) struct EnvPlan {
    pub root: PathBuf,
    pub entries: Vec<EnvEntry>,
    /// Whether its launchers' mount namespaces have its skeleton as their root (as root):
    /// a child then only adds its own mounts, with no pivot_root of its own.
    pub pivoted: bool,
    /// The launchers that clone its sandboxes (indexes into the sandboxer's), used in turn.
    pub launchers: Vec<usize>,
}

#[derive(Debug, Clone)]
pub(crate) enum EnvEntry {
    Dir(OsString),
    Symlink(OsString, PathBuf),
}

/// Top-level directories never exposed: kernel and runtime state, the host's temp and home
/// directories (the sandbox gets its own /proc, /dev and /tmp).
const HIDDEN: &[&str] = &[
    "proc",
    "sys",
    "dev",
    "run",
    "tmp",
    "root",
    "home",
    "lost+found",
    "workspace",
];

impl EnvPlan {
    /// Lists `root`'s top level: directories to bind, symlinks to recreate; the rest skipped.
    ///
    /// # Errors
    /// Fails when `root` cannot be read.
    pub fn scan(root: &Path) -> io::Result<EnvPlan> {
        let mut entries = Vec::new();
        let mut names: Vec<_> = std::fs::read_dir(root)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        names.sort();
        for name in names {
            if HIDDEN.iter().any(|h| OsStr::new(h) == name) {
                continue;
            }
            let meta = std::fs::symlink_metadata(root.join(&name))?;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(root.join(&name))?;
                entries.push(EnvEntry::Symlink(name, target));
            } else if meta.is_dir() {
                entries.push(EnvEntry::Dir(name));
            }
        }
        Ok(EnvPlan {
            root: root.to_owned(),
            entries,
            pivoted: false,
            launchers: Vec::new(),
        })
    }
}

/// Devices bind-mounted from the host into the sandbox's /dev.
pub(crate) const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

fn tmpfs_op(target: CString, data: String, flags: libc::c_ulong) -> Result<Op, SandboxError> {
    Ok(Op::Mount {
        src: Some(c"tmpfs".to_owned()),
        target,
        fstype: Some(c"tmpfs".to_owned()),
        flags,
        data: Some(cstr(data)?),
    })
}

/// Ops that build an environment's read-only root skeleton at `root`: the environment's
/// top-level directories bound read-only, its top-level symlinks, mount points for the
/// per-sandbox mounts, and a read-only /dev with the host's harmless devices.
pub(crate) fn skeleton_ops(
    env: &EnvPlan,
    root: &Path,
    state_dir: &Path,
    devices: &[&str],
    expose: &[PathBuf],
) -> Result<Vec<Op>, SandboxError> {
    let at = |rel: &str| path_c(&root.join(rel));
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    let mut ops = vec![tmpfs_op(
        path_c(root)?,
        "mode=755,size=1m".into(),
        nosuid_nodev,
    )?];
    for entry in &env.entries {
        match entry {
            EnvEntry::Dir(name) => {
                let target = path_c(&root.join(name))?;
                ops.push(Op::Mkdir {
                    path: target.clone(),
                    mode: 0o755,
                });
                ops.push(Op::Mount {
                    src: Some(path_c(&env.root.join(name))?),
                    target: target.clone(),
                    fstype: None,
                    flags: libc::MS_BIND | libc::MS_REC,
                    data: None,
                });
                ops.push(Op::SetAttr {
                    path: target,
                    set: sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
                    recursive: true,
                });
            }
            EnvEntry::Symlink(name, target) => ops.push(Op::Symlink {
                target: path_c(target)?,
                path: path_c(&root.join(name))?,
            }),
        }
    }
    // Exposed toolchain directories, read-only at their own path, over whatever the
    // environment has there (their parents are made in the skeleton, empty).
    for dir in expose {
        let rel = dir.strip_prefix("/").map_err(|_| {
            SandboxError::InvalidSpec(format!("exposed directory {dir:?} is not absolute"))
        })?;
        let mut made = root.to_owned();
        for component in rel.components() {
            made.push(component);
            ops.push(Op::MkdirAll {
                path: path_c(&made)?,
                mode: 0o755,
            });
        }
        let target = path_c(&root.join(rel))?;
        ops.push(Op::Mount {
            src: Some(path_c(dir)?),
            target: target.clone(),
            fstype: None,
            flags: libc::MS_BIND | libc::MS_REC,
            data: None,
        });
        ops.push(Op::SetAttr {
            path: target,
            set: sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
            recursive: true,
        });
    }
    // If the state directory lies inside a bound directory, cover it.
    if let Ok(rel) = state_dir.strip_prefix(&env.root) {
        let first = rel.components().next().map(|c| c.as_os_str().to_owned());
        let bound = env
            .entries
            .iter()
            .any(|e| matches!(e, EnvEntry::Dir(n) if Some(n) == first.as_ref()));
        if bound {
            ops.push(tmpfs_op(
                path_c(&root.join(rel))?,
                "size=4k,mode=0".into(),
                nosuid_nodev | libc::MS_RDONLY,
            )?);
        }
    }
    for (dir, mode) in [
        ("workspace", 0o755),
        ("tmp", 0o1777),
        ("dev", 0o755),
        ("proc", 0o555),
    ] {
        ops.push(Op::Mkdir {
            path: at(dir)?,
            mode,
        });
    }
    ops.push(tmpfs_op(
        at("dev")?,
        "mode=755,size=64k".into(),
        libc::MS_NOSUID | libc::MS_NOEXEC,
    )?);
    for device in devices {
        let target = at(&format!("dev/{device}"))?;
        ops.push(Op::Touch {
            path: target.clone(),
        });
        ops.push(Op::Mount {
            src: Some(cstr(format!("/dev/{device}"))?),
            target,
            fstype: None,
            flags: libc::MS_BIND,
            data: None,
        });
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        ops.push(Op::Symlink {
            target: cstr(target)?,
            path: at(&format!("dev/{name}"))?,
        });
    }
    ops.push(Op::Mkdir {
        path: at("dev/shm")?,
        mode: 0o1777,
    });
    ops.push(Op::Mkdir {
        path: at("dev/pts")?,
        mode: 0o755,
    });
    for path in [at("dev")?, path_c(root)?] {
        ops.push(Op::SetAttr {
            path,
            set: sys::MOUNT_ATTR_RDONLY,
            recursive: false,
        });
    }
    Ok(ops)
}

/// Ops that turn a launcher thread's mount namespace into one whose root is the skeleton at
/// `skeleton`: a fresh proc mount for children to mount theirs over (a user namespace may
/// mount proc only where one is already fully visible), then pivot_root into it, detaching
/// the host's mounts. Children cloned from it start inside their environment's root.
///
/// That proc shows the host's pid namespace and stays under each sandbox's own; `hidepid`
/// makes it show a process only to whoever may ptrace it (the launcher, as root), never to a
/// sandbox, should it ever be uncovered.
pub(crate) fn enter_skeleton_ops(skeleton: &Path) -> Result<Vec<Op>, SandboxError> {
    Ok(vec![
        Op::Mount {
            src: Some(c"proc".to_owned()),
            target: path_c(&skeleton.join("proc"))?,
            fstype: Some(c"proc".to_owned()),
            flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data: Some(c"hidepid=invisible".to_owned()),
        },
        Op::Chdir {
            path: path_c(skeleton)?,
        },
        Op::PivotRoot,
    ])
}

/// Files and directories of a fresh proc that still describe the host, not the sandbox:
/// Docker's masked paths (`/sys`, the rest of that list, is not mounted at all). Docker's
/// read-only paths need nothing: they are the host root's, which a sandbox's root is not.
const MASKED_PROC_FILES: &[&str] = &[
    "kcore",
    "keys",
    "timer_list",
    "sched_debug",
    "latency_stats",
    "timer_stats",
    "interrupts",
    "sysrq-trigger",
];
const MASKED_PROC_DIRS: &[&str] = &["acpi", "asound", "scsi"];

/// The masked proc paths this kernel has, each with whether it is a directory (covered by an
/// empty read-only tmpfs; a file gets `/dev/null` bound over it). Looked up once: a mount
/// each costs every sandbox's start-up, so only those that exist are masked.
fn masked_proc_paths() -> &'static [(&'static str, bool)] {
    static PATHS: std::sync::OnceLock<Vec<(&'static str, bool)>> = std::sync::OnceLock::new();
    PATHS.get_or_init(|| {
        let files = MASKED_PROC_FILES.iter().map(|&f| (f, false));
        let dirs = MASKED_PROC_DIRS.iter().map(|&d| (d, true));
        files
            .chain(dirs)
            .filter(|(name, _)| Path::new("/proc").join(name).exists())
            .collect()
    })
}

/// Ops each sandbox runs on top of a skeleton at `root`: its workspace, private /tmp,
/// /dev/shm, /dev/pts and /proc, then (with `pivot`) pivot_root into it.
pub(super) fn sandbox_ops(
    root: &Path,
    workspace: &Workspace,
    binds: &[(&crate::spec::Bind, Option<&OwnedFd>)],
    limits: &crate::spec::Limits,
    pivot: bool,
) -> Result<Vec<Op>, SandboxError> {
    let size = limits.workspace_bytes.max(4096);
    let inodes = limits.workspace_inodes.max(1);
    let at = |rel: &str| path_c(&root.join(rel));
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    let mut ops = Vec::new();
    match workspace {
        Workspace::Tmpfs { root: fd } => ops.push(Op::MoveMount {
            fd: fd.as_raw_fd(),
            target: at("workspace")?,
        }),
        Workspace::Dir { path, .. } => ops.push(Op::Mount {
            src: Some(path_c(path)?),
            target: at("workspace")?,
            fstype: None,
            flags: libc::MS_BIND,
            data: None,
        }),
    }
    // Prepared builds over the workspace, read-only: each a detached tree made by the host
    // (as root), or the host path bound before the pivot (without root).
    for (bind, fd) in binds {
        let target = path_c(&root.join("workspace").join(&bind.target))?;
        match fd {
            Some(fd) => ops.push(Op::MoveMount {
                fd: fd.as_raw_fd(),
                target,
            }),
            None => {
                ops.push(Op::Mount {
                    src: Some(path_c(&bind.host)?),
                    target: target.clone(),
                    fstype: None,
                    flags: libc::MS_BIND | libc::MS_REC,
                    data: None,
                });
                ops.push(Op::SetAttr {
                    path: target,
                    set: sys::MOUNT_ATTR_RDONLY | sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
                    recursive: true,
                });
            }
        }
    }
    ops.push(tmpfs_op(
        at("tmp")?,
        format!("mode=1777,size={size},nr_inodes={inodes}"),
        nosuid_nodev,
    )?);
    ops.push(tmpfs_op(
        at("dev/shm")?,
        format!("mode=1777,size={size},nr_inodes={inodes}"),
        nosuid_nodev,
    )?);
    ops.push(Op::Mount {
        src: Some(c"devpts".to_owned()),
        target: at("dev/pts")?,
        fstype: Some(c"devpts".to_owned()),
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: Some(c"newinstance,ptmxmode=0666,mode=620".to_owned()),
    });
    ops.push(Op::Mount {
        src: Some(c"proc".to_owned()),
        target: at("proc")?,
        fstype: Some(c"proc".to_owned()),
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data: None,
    });
    for &(name, dir) in masked_proc_paths() {
        let target = at(&format!("proc/{name}"))?;
        ops.push(if dir {
            tmpfs_op(
                target,
                "size=4k,nr_inodes=1,mode=555".into(),
                libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            )?
        } else {
            Op::Mount {
                src: Some(at("dev/null")?),
                target,
                fstype: None,
                flags: libc::MS_BIND,
                data: None,
            }
        });
    }
    ops.push(Op::Chdir {
        path: path_c(root)?,
    });
    if pivot {
        ops.push(Op::PivotRoot);
    }
    Ok(ops)
}
