//! Finding where this process may make cgroups: its own cgroup on a v2 host (moved into a
//! leaf when it has processes beside controllers), or each v1 controller's own path, the
//! parent made below it, and what is missing when a controller cannot be used.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::{CGROUP_ROOT, CgroupParent, read_procs};
use crate::isolation::CgroupVersion;

pub(super) fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// The cgroup path of this process in the hierarchy whose controller list contains `controller`
/// (`""` selects the v2 line).
pub(super) fn own_path<'a>(self_cgroups: &'a str, controller: &str) -> Option<&'a str> {
    self_cgroups.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let _id = parts.next()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        let matches = if controller.is_empty() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == controller)
        };
        matches.then_some(path)
    })
}

/// Removes parents left by sandboxers whose process is gone (a crash or a test binary, whose
/// static sandboxer is never dropped): `<prefix><pid>` directories with only empty children.
fn remove_stale_parents(base: &Path, name: &str) {
    let Some((prefix, _)) = name.rsplit_once('-') else {
        return;
    };
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|n| n.strip_prefix('-'))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        if let Ok(children) = fs::read_dir(entry.path()) {
            for child in children.flatten() {
                if child.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = fs::remove_dir(child.path());
                }
            }
        }
        let _ = fs::remove_dir(entry.path());
    }
}

/// Moves every process of the cgroup `base` into a new leaf `base/isotest-worker-<pid>` (a
/// dead worker's leaf is removed by the next one, like a dead worker's sandbox parent).
fn move_into_leaf(base: &Path) -> io::Result<()> {
    let leaf_name = format!("isotest-worker-{}", std::process::id());
    let leaf = make_parent(base, "", &leaf_name).map_err(|e| {
        io::Error::new(e.kind(), format!("create {:?}: {e}", base.join(&leaf_name)))
    })?;
    let procs = leaf.join("cgroup.procs");
    for pid in read_procs(base) {
        // A process may exit meanwhile (ESRCH); anything else is an error.
        if let Err(e) = fs::write(&procs, pid.to_string())
            && e.raw_os_error() != Some(libc::ESRCH)
        {
            return Err(io::Error::new(
                e.kind(),
                format!("move process {pid} into {leaf:?}: {e}"),
            ));
        }
    }
    Ok(())
}

/// This process's cgroup below the v1 hierarchy mounted at `mount`. `/proc/self/cgroup` names
/// it from the hierarchy's root, but a container runtime on a v1 host mounts only the
/// container's own subtree there (the mount's root in `/proc/self/mountinfo`, such as
/// `/kubepods/pod…/<id>`), so that prefix comes off: the cgroup is the mount itself.
pub(super) fn own_below_mount<'a>(own: &'a str, mountinfo: &str, mount: &Path) -> &'a str {
    let root = mountinfo.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let root = fields.nth(3)?;
        let point = fields.next()?;
        (Path::new(point) == mount).then_some(root)
    });
    match root {
        Some(root) if root != "/" => own
            .strip_prefix(root)
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
            .unwrap_or(own),
        _ => own,
    }
}

fn make_parent(mount: &Path, own: &str, name: &str) -> io::Result<PathBuf> {
    remove_stale_parents(&mount.join(own.trim_start_matches('/')), name);
    let dir = mount.join(own.trim_start_matches('/')).join(name);
    match fs::DirBuilder::new().mode(0o755).create(&dir) {
        Ok(()) => Ok(dir),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(dir),
        Err(e) => Err(e),
    }
}

pub(super) fn probe_v1(
    self_cgroups: &str,
    name: &str,
    missing: &mut Vec<String>,
) -> Option<CgroupParent> {
    // The controller files exist only below the root of some hierarchies (pids.max), so check
    // the mount and this process's membership, then the file in the created parent.
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let own_in = |ctrl: &str, mount: &Path| {
        own_path(self_cgroups, ctrl).map(|own| own_below_mount(own, &mountinfo, mount))
    };
    let mut controller = |ctrl: &str, dir: &str, file: &str, words: &str| {
        let mount = Path::new(CGROUP_ROOT).join(dir);
        let usable = mount.join("cgroup.procs").exists();
        let dir = usable
            .then(|| own_in(ctrl, &mount))
            .flatten()
            .and_then(|own| make_parent(&mount, own, name).ok())
            .filter(|dir| dir.join(file).exists());
        if dir.is_none() {
            missing.push(words.to_owned());
        }
        dir
    };
    let memory = controller(
        "memory",
        "memory",
        "memory.limit_in_bytes",
        "cgroup memory controller",
    );
    let pids = controller("pids", "pids", "pids.max", "cgroup pids controller");
    let cpu = controller(
        "cpuacct",
        "cpuacct",
        "cpuacct.usage",
        "cgroup cpuacct controller",
    );
    let home = [("memory", &memory), ("pids", &pids), ("cpuacct", &cpu)]
        .into_iter()
        .filter(|(_, dir)| dir.is_some())
        .filter_map(|(ctrl, _)| {
            let mount = Path::new(CGROUP_ROOT).join(ctrl);
            let own = own_in(ctrl, &mount)?;
            let path = mount.join(own.trim_start_matches('/')).join("tasks");
            fs::OpenOptions::new().write(true).open(path).ok()
        })
        .collect();
    if memory.is_none() && pids.is_none() && cpu.is_none() {
        return None;
    }
    Some(CgroupParent {
        version: CgroupVersion::V1,
        memory,
        pids,
        cpu,
        home,
    })
}

pub(super) fn probe_v2(
    self_cgroups: &str,
    name: &str,
    missing: &mut Vec<String>,
) -> Option<CgroupParent> {
    let root = Path::new(CGROUP_ROOT);
    let required = [
        ("memory", "cgroup memory controller"),
        ("pids", "cgroup pids controller"),
    ];
    let Some(own) = own_path(self_cgroups, "") else {
        missing.extend(
            required
                .iter()
                .map(|(_, words)| format!("{words} (this process is in no cgroup v2)")),
        );
        return None;
    };
    // The sandboxes' parent goes below our own cgroup. (Joining "" would leave a trailing
    // slash, so the root is taken as it is.)
    let own = own.trim_start_matches('/');
    let base = if own.is_empty() {
        root.to_owned()
    } else {
        root.join(own)
    };
    let parent = match make_parent(&base, "", name) {
        Ok(dir) => dir,
        Err(e) => {
            missing.extend(
                required
                    .iter()
                    .map(|(_, words)| format!("{words} (create {:?}: {e})", base.join(name))),
            );
            return None;
        }
    };
    let available = fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
    // Enables `ctrl` for the children of `base`, then of the parent; says why it could not.
    let try_enable = |ctrl: &str| -> Result<(), (Option<i32>, String)> {
        if !available.split_whitespace().any(|c| c == ctrl) {
            return Err((None, format!("not available in {base:?}")));
        }
        for dir in [&base, &parent] {
            let path = dir.join("cgroup.subtree_control");
            fs::write(&path, format!("+{ctrl}"))
                .map_err(|e| (e.raw_os_error(), format!("enable in {path:?}: {e}")))?;
        }
        Ok(())
    };
    // A v2 cgroup other than the real root cannot enable controllers for its children while it
    // holds processes ("no internal processes"). Ours does when it is a systemd service's, or
    // a container's (a Kubernetes pod with `hostUsers: false`, where it is the root of a
    // private cgroup namespace but not the real root): then every process of it (the
    // service's or container's own) moves into a leaf below it, the layout systemd's
    // `Delegate=` expects, which frees it to enable them. The real root needs no move.
    let mut moved = false;
    let mut enable = |ctrl: &str| -> Result<(), String> {
        match try_enable(ctrl) {
            Err((Some(libc::EBUSY), why)) if !moved => {
                moved = true;
                move_into_leaf(&base).map_err(|e| format!("{why}; {e}"))?;
                try_enable(ctrl).map_err(|(_, why)| why)
            }
            other => other.map_err(|(_, why)| why),
        }
    };
    let mut pick = |ctrl: &str, words: &str| match enable(ctrl) {
        Ok(()) => Some(parent.clone()),
        Err(why) => {
            missing.push(format!("{words} ({why})"));
            None
        }
    };
    let memory = pick(required[0].0, required[0].1);
    let pids = pick(required[1].0, required[1].1);
    // Optional: with it each sandbox gets an equal CPU weight, but usage_usec in cpu.stat, all
    // the accounting needs, exists without it.
    let _ = enable("cpu");
    Some(CgroupParent {
        version: CgroupVersion::V2,
        memory,
        pids,
        cpu: Some(parent),
        home: Vec::new(),
    })
}
