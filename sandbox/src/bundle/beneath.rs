//! File operations beneath a directory fd that never follow a link: every path is split
//! into its components and each is opened with `O_NOFOLLOW`, so a link an entry left
//! behind cannot lead a later write out of the directory.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use super::{BundleError, io_err};

/// Writes `content` at relative `path` beneath `dir`, creating parents and replacing an
/// existing regular file, never following a link.
///
/// # Errors
/// Fails on a bad path, a link in the way, or an I/O error.
pub(crate) fn write_file(
    dir: BorrowedFd<'_>,
    path: &Path,
    content: &[u8],
    owner: Option<(u32, u32)>,
) -> Result<(), BundleError> {
    let (parent, name) = parent_of(dir, path, owner)?;
    let mut file = create_file(parent.as_fd(), &name, 0o644, true, owner, path)?;
    file.write_all(content).map_err(io_err("write", path))
}

/// Creates the directory `path` and its parents beneath `dir`, never following a link.
///
/// # Errors
/// Fails on a bad path, a link or a file in the way, or an I/O error.
pub(crate) fn make_dir_all(
    dir: BorrowedFd<'_>,
    path: &Path,
    owner: Option<(u32, u32)>,
) -> Result<(), BundleError> {
    let (parent, name) = parent_of(dir, path, owner)?;
    open_or_make_dir(parent.as_fd(), &name, owner, path).map(drop)
}

/// Splits `path` into its `Normal` components, refusing absolute paths and `..`.
pub(super) fn normal_components(path: &Path) -> Result<Vec<&OsStr>, BundleError> {
    let mut out = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) | Component::ParentDir => {
                return Err(BundleError::BadPath(path.to_owned()));
            }
        }
    }
    Ok(out)
}

pub(super) fn cstring(s: &OsStr, path: &Path) -> Result<CString, BundleError> {
    CString::new(s.as_bytes()).map_err(|_| BundleError::BadPath(path.to_owned()))
}

/// Opens (creating as needed) every parent directory of `path` beneath `dir` without following
/// links, and returns the parent's fd and the final name.
pub(super) fn parent_of(
    dir: BorrowedFd<'_>,
    path: &Path,
    owner: Option<(u32, u32)>,
) -> Result<(OwnedFd, CString), BundleError> {
    let components = normal_components(path)?;
    let Some((last, parents)) = components.split_last() else {
        return Err(BundleError::BadPath(path.to_owned()));
    };
    let mut current = dup(dir, path)?;
    for component in parents {
        let name = cstring(component, path)?;
        current = open_or_make_dir(current.as_fd(), &name, owner, path)?;
    }
    Ok((current, cstring(last, path)?))
}

fn dup(fd: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd, BundleError> {
    fd.try_clone_to_owned()
        .map_err(io_err("duplicate fd for", path))
}

fn open_dir(parent: BorrowedFd<'_>, name: &CString) -> io::Result<OwnedFd> {
    // SAFETY: valid C string and directory fd; O_NOFOLLOW|O_DIRECTORY refuses a symlink.
    let fd = unsafe {
        libc::openat(
            parent.as_raw_fd(),
            name.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is fresh.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn open_or_make_dir(
    parent: BorrowedFd<'_>,
    name: &CString,
    owner: Option<(u32, u32)>,
    path: &Path,
) -> Result<OwnedFd, BundleError> {
    match open_dir(parent, name) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(io_err("open directory (not through a link)", path)(e)),
    }
    // SAFETY: valid C string and directory fd.
    if unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o755) } != 0 {
        return Err(io_err("create directory", path)(io::Error::last_os_error()));
    }
    chown_at(parent, name, owner, path)?;
    open_dir(parent, name).map_err(io_err("open directory", path))
}

pub(super) fn create_file(
    parent: BorrowedFd<'_>,
    name: &CString,
    mode: u32,
    replace: bool,
    owner: Option<(u32, u32)>,
    path: &Path,
) -> Result<File, BundleError> {
    let mode = (mode & 0o755) | 0o600;
    let exclusive = if replace { libc::O_TRUNC } else { libc::O_EXCL };
    // SAFETY: valid C string and directory fd; O_NOFOLLOW refuses a symlink as the last
    // component and O_EXCL refuses anything already there.
    let fd = unsafe {
        libc::openat(
            parent.as_raw_fd(),
            name.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | exclusive | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode,
        )
    };
    if fd < 0 {
        return Err(io_err("create file", path)(io::Error::last_os_error()));
    }
    // SAFETY: fd is fresh.
    let file = unsafe { File::from_raw_fd(fd) };
    let meta = file.metadata().map_err(io_err("stat", path))?;
    if !meta.is_file() {
        return Err(BundleError::RefusedKind {
            path: path.to_owned(),
            kind: "non-regular file in the way".into(),
        });
    }
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(io_err("chown", path))?;
    }
    Ok(file)
}

pub(super) fn chown_at(
    parent: BorrowedFd<'_>,
    name: &CString,
    owner: Option<(u32, u32)>,
    path: &Path,
) -> Result<(), BundleError> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    // SAFETY: valid C string and directory fd; AT_SYMLINK_NOFOLLOW changes a link itself.
    let ret = unsafe {
        libc::fchownat(
            parent.as_raw_fd(),
            name.as_ptr(),
            uid,
            gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if ret != 0 {
        return Err(io_err("chown", path)(io::Error::last_os_error()));
    }
    Ok(())
}
