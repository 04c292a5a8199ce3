//! The per-sandbox workspace on the host side: created and filled before any untrusted code
//! runs, and read back only after every sandboxed process is dead, without following links.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use crate::bundle::{self, BundleError, UnpackOptions};
use crate::outcome::CollectError;
use crate::spec::Limits;
use crate::sys;

/// A workspace: a detached size-limited tmpfs (as root), or a plain directory under the state
/// directory (without root, where tmpfs cannot be created on the host).
#[derive(Debug)]
pub(crate) enum Workspace {
    /// The mount fd of a tmpfs attached nowhere on the host; the sandbox moves it into place,
    /// and it vanishes when the last fd and the sandbox's mount namespace are gone.
    Tmpfs { root: OwnedFd },
    /// A host directory, removed on drop.
    Dir { path: PathBuf, root: OwnedFd },
}

impl Workspace {
    /// Creates a detached tmpfs of the limits' size and inodes, owned by `uid:gid`.
    ///
    /// # Errors
    /// Fails without CAP_SYS_ADMIN.
    pub fn tmpfs(limits: &Limits, uid: u32, gid: u32) -> io::Result<Workspace> {
        let size = limits.workspace_bytes.max(4096).to_string();
        let size = CString::new(size).map_err(io::Error::other)?;
        let inodes = limits.workspace_inodes.max(1).to_string();
        let inodes = CString::new(inodes).map_err(io::Error::other)?;
        let uid = CString::new(uid.to_string()).map_err(io::Error::other)?;
        let gid = CString::new(gid.to_string()).map_err(io::Error::other)?;
        let root = sys::detached_tmpfs(
            &[
                (c"size", size.as_c_str()),
                (c"nr_inodes", inodes.as_c_str()),
                (c"mode", c"0755"),
                (c"uid", uid.as_c_str()),
                (c"gid", gid.as_c_str()),
            ],
            sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV,
        )?;
        Ok(Workspace::Tmpfs { root })
    }

    /// Creates a fresh 0700 directory at `path`.
    ///
    /// # Errors
    /// Fails when it exists or cannot be created.
    pub fn dir(path: PathBuf) -> io::Result<Workspace> {
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        let root = File::open(&path)?.into();
        Ok(Workspace::Dir { path, root })
    }

    /// The workspace's root directory.
    pub fn root(&self) -> BorrowedFd<'_> {
        match self {
            Workspace::Tmpfs { root } | Workspace::Dir { root, .. } => root.as_fd(),
        }
    }

    /// Unpacks the bundle and writes the files, owned by `owner`.
    ///
    /// # Errors
    /// Fails on a hostile or oversized bundle, or a file path that is bad or goes through a link.
    pub fn populate(
        &self,
        bundle: Option<&[u8]>,
        files: &[(String, Vec<u8>)],
        max_bytes: u64,
        owner: Option<(u32, u32)>,
    ) -> Result<(), BundleError> {
        if let Some(bundle) = bundle {
            bundle::unpack(bundle, self.root(), UnpackOptions { max_bytes, owner })?;
        }
        for (path, content) in files {
            bundle::write_file(self.root(), Path::new(path), content, owner)?;
        }
        Ok(())
    }

    /// Unpacks the bundle and writes the files as [`Workspace::populate`] does, but in a child
    /// process that first writes "0" to `entry`, joining the sandbox's memory cgroup: every
    /// page and inode of the workspace is then charged to the test and counted against its
    /// memory limit, rather than to the worker, which would carry them for as long as the test
    /// runs. A thread of the worker that joined the cgroup would not do: a page is charged to
    /// the cgroup of its process's memory owner (`mm->owner`), not of the thread writing it.
    /// The child is a fork of the worker that closes every descriptor it does not need at once
    /// (it must not hold other sandboxes' pipes open) and runs only the unpacker, which takes
    /// no lock but malloc's, which glibc's fork leaves usable.
    ///
    /// # Errors
    /// As `populate`; `Killed` when the child died of a signal (the memory cgroup's OOM killer,
    /// when the workspace does not fit in the test's memory) or outlived `deadline`.
    pub fn populate_charged(
        &self,
        entry: BorrowedFd<'_>,
        bundle: Option<&[u8]>,
        files: &[(String, Vec<u8>)],
        max_bytes: u64,
        owner: Option<(u32, u32)>,
        deadline: Duration,
    ) -> Result<(), PopulateError> {
        let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| PopulateError::Io(e.into()))?;
        let keep = [
            entry.as_raw_fd(),
            report_w.as_raw_fd(),
            self.root().as_raw_fd(),
        ];
        // SAFETY: the child runs only `populate_child`, which never returns; see above for
        // why what it runs is safe after a fork of a multi-threaded process.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(PopulateError::Io(io::Error::last_os_error()));
        }
        if pid == 0 {
            let run = || self.populate(bundle, files, max_bytes, owner);
            // SAFETY: in the freshly forked child, as `populate_child` requires.
            unsafe { populate_child(keep, entry, &report_w, run) }
        }
        drop(report_w);
        let report = read_report(report_r, pid, deadline);
        let mut status = 0;
        // SAFETY: reaping our own child with a valid status pointer.
        while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
            if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return Err(PopulateError::Io(io::Error::last_os_error()));
            }
        }
        if libc::WIFSIGNALED(status) {
            return Err(PopulateError::Killed(libc::WTERMSIG(status)));
        }
        let report = report.map_err(PopulateError::Io)?;
        if report.is_empty() && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            return Ok(());
        }
        Err(match BundleError::from_wire(&report) {
            Some(e) => PopulateError::Bundle(e),
            None => PopulateError::Io(io::Error::other(format!(
                "the unpacking process ended with status {status:#x}"
            ))),
        })
    }

    /// Creates each of `dirs` (and their parents), owned by `owner`, as mount points.
    ///
    /// # Errors
    /// Fails on a bad path or a link or file in the way.
    pub fn make_dirs(&self, dirs: &[String], owner: Option<(u32, u32)>) -> Result<(), BundleError> {
        for dir in dirs {
            bundle::make_dir_all(self.root(), Path::new(dir), owner)?;
        }
        Ok(())
    }

    /// Copies `paths` out to the host directory `into` (see [`crate::export`]).
    pub fn export(&self, export: &crate::spec::Export) -> Result<u64, CollectError> {
        crate::export::export(
            self.root(),
            &export.paths,
            &export.exclude,
            &export.into,
            export.max_bytes,
        )
    }

    /// Reads `rel` back, refusing links, non-regular files and files over `cap`.
    pub fn collect(&self, rel: &str, cap: usize) -> Result<Vec<u8>, CollectError> {
        collect(self.root(), rel, cap)
    }
}

/// Why [`Workspace::populate_charged`] failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PopulateError {
    /// The bundle or a file was refused, or could not be written.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The unpacking process died of this signal.
    #[error("unpack the workspace: killed by signal {0}")]
    Killed(i32),
    /// The unpacking process could not be started or heard from.
    #[error("unpack the workspace in a child process")]
    Io(#[source] io::Error),
}

/// The forked child of [`Workspace::populate_charged`]: closes every descriptor but `keep`,
/// joins the cgroup through `entry`, runs `populate` and writes its error, if any, to
/// `report`, then exits.
///
/// # Safety
/// Only in a child just forked, which must not return to the caller's code.
unsafe fn populate_child(
    mut keep: [RawFd; 3],
    entry: BorrowedFd<'_>,
    report: &OwnedFd,
    populate: impl FnOnce() -> Result<(), BundleError>,
) -> ! {
    keep.sort_unstable();
    let mut from = 3;
    for fd in keep {
        if fd > from {
            // SAFETY: closing descriptors this child does not use.
            unsafe { libc::syscall(libc::SYS_close_range, from as u32, (fd - 1) as u32, 0u32) };
        }
        from = from.max(fd + 1);
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, from as u32, u32::MAX, 0u32) };
    // SAFETY: plain system calls on descriptors this child holds.
    let joined = unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        libc::write(entry.as_raw_fd(), b"0".as_ptr().cast(), 1) == 1
    };
    let result = if joined {
        populate()
    } else {
        Err(BundleError::Io {
            what: "join the sandbox's memory cgroup".into(),
            path: PathBuf::new(),
            source: io::Error::last_os_error(),
        })
    };
    if let Err(e) = result {
        let bytes = e.to_wire();
        let mut sent = 0;
        while sent < bytes.len() {
            // SAFETY: writing from a live buffer to the pipe this child holds.
            let n = unsafe {
                libc::write(
                    report.as_raw_fd(),
                    bytes[sent..].as_ptr().cast(),
                    bytes.len() - sent,
                )
            };
            if n <= 0 {
                break;
            }
            sent += n as usize;
        }
    }
    // SAFETY: ends the child without running the parent's exit handlers.
    unsafe { libc::_exit(0) }
}

/// Reads the child's report (at most 64 KiB) until it closes its end, killing it if that takes
/// longer than `deadline` (it is not reaped yet, so its pid is still its own).
fn read_report(report: OwnedFd, pid: libc::pid_t, deadline: Duration) -> io::Result<Vec<u8>> {
    let until = Instant::now() + deadline;
    let mut file = File::from(report);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: poll on one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if ready == 0 {
            // SAFETY: our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("unpacking took longer than {deadline:?}"),
            ));
        }
        match file.read(&mut buf)? {
            0 => return Ok(out),
            n if out.len() < 64 << 10 => out.extend_from_slice(&buf[..n]),
            _ => {}
        }
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if let Workspace::Dir { path, .. } = self {
            // remove_dir_all does not follow symlinks.
            let _ = std::fs::remove_dir_all(&*path);
        }
    }
}

const RESOLVE: u64 = sys::RESOLVE_BENEATH
    | sys::RESOLVE_NO_SYMLINKS
    | sys::RESOLVE_NO_MAGICLINKS
    | sys::RESOLVE_NO_XDEV;

fn classify(e: io::Error) -> CollectError {
    match e.raw_os_error() {
        Some(libc::ELOOP) => CollectError::Link,
        Some(libc::ENOENT | libc::ENOTDIR) => CollectError::Missing,
        Some(libc::EXDEV) => CollectError::Escapes,
        _ => CollectError::Io(e.to_string()),
    }
}

/// Reads regular file `rel` beneath `root`: no symlink anywhere on the path, no leaving `root`,
/// nothing but a regular file (a FIFO or device is never opened for reading), at most `cap`.
pub(crate) fn collect(
    root: BorrowedFd<'_>,
    rel: &str,
    cap: usize,
) -> Result<Vec<u8>, CollectError> {
    let path = Path::new(rel);
    let lexically_ok = !rel.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !lexically_ok {
        return Err(CollectError::Escapes);
    }
    let c_path = CString::new(rel).map_err(|_| CollectError::Escapes)?;
    // First an O_PATH open, which never opens a device or blocks on a FIFO, to check the kind.
    let probe =
        sys::openat2(root, &c_path, libc::O_PATH | libc::O_NOFOLLOW, RESOLVE).map_err(classify)?;
    let meta = File::from(probe)
        .metadata()
        .map_err(|e| CollectError::Io(e.to_string()))?;
    if meta.file_type().is_symlink() {
        return Err(CollectError::Link);
    }
    if !meta.is_file() {
        return Err(CollectError::NotRegularFile);
    }
    if meta.len() > cap as u64 {
        return Err(CollectError::TooLarge { cap });
    }
    let fd = sys::openat2(
        root,
        &c_path,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
        RESOLVE,
    )
    .map_err(classify)?;
    let file = File::from(fd);
    let again = file
        .metadata()
        .map_err(|e| CollectError::Io(e.to_string()))?;
    use std::os::unix::fs::MetadataExt;
    if !again.is_file() || again.ino() != meta.ino() || again.dev() != meta.dev() {
        return Err(CollectError::NotRegularFile);
    }
    let mut data = Vec::with_capacity(again.len().min(cap as u64) as usize);
    file.take(cap as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| CollectError::Io(e.to_string()))?;
    if data.len() > cap {
        return Err(CollectError::TooLarge { cap });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collect_refuses_links_fifos_devices_and_escapes() {
        let dir = std::env::temp_dir().join(format!("isotest-collect-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
        std::fs::write(dir.join("ok.xml"), b"<ok/>").expect("write");
        std::fs::write(dir.join("big"), vec![0u8; 100]).expect("write");
        std::os::unix::fs::symlink("/etc/hostname", dir.join("link")).expect("symlink");
        std::os::unix::fs::symlink("/etc", dir.join("dirlink")).expect("symlink");
        nix::unistd::mkfifo(
            &dir.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .expect("mkfifo");
        let have_dev = nix::sys::stat::mknod(
            &dir.join("null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .is_ok();
        let root = File::open(&dir).expect("open");
        let root = root.as_fd();
        let cases: &[(&str, Result<&[u8], CollectError>)] = &[
            ("ok.xml", Ok(b"<ok/>")),
            ("./ok.xml", Ok(b"<ok/>")),
            ("missing", Err(CollectError::Missing)),
            ("sub", Err(CollectError::NotRegularFile)),
            ("big", Err(CollectError::TooLarge { cap: 50 })),
            ("link", Err(CollectError::Link)),
            ("dirlink/hostname", Err(CollectError::Link)),
            ("fifo", Err(CollectError::NotRegularFile)),
            ("../etc/passwd", Err(CollectError::Escapes)),
            ("/etc/passwd", Err(CollectError::Escapes)),
            ("", Err(CollectError::Escapes)),
        ];
        for (path, want) in cases {
            let got = collect(root, path, 50);
            assert_eq!(got.as_deref().map_err(Clone::clone), want.clone(), "{path}");
        }
        if have_dev {
            assert_eq!(collect(root, "null", 50), Err(CollectError::NotRegularFile));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
