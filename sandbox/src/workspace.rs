//! The per-sandbox workspace on the host side: created and filled before any untrusted code
//! runs, and read back only after every sandboxed process is dead, without following links.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

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

    /// Reads `rel` back, refusing links, non-regular files and files over `cap`.
    pub fn collect(&self, rel: &str, cap: usize) -> Result<Vec<u8>, CollectError> {
        collect(self.root(), rel, cap)
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
