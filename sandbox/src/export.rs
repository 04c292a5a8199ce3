//! Copies a finished sandbox's build products out of its workspace into a host directory:
//! done only after every process of the sandbox is dead, never following a link out of the
//! workspace, never opening anything but directories and regular files, and capped in bytes.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path};

use crate::outcome::CollectError;
use crate::sys;

const RESOLVE: u64 = sys::RESOLVE_BENEATH
    | sys::RESOLVE_NO_SYMLINKS
    | sys::RESOLVE_NO_MAGICLINKS
    | sys::RESOLVE_NO_XDEV;

/// Copies each of `paths` (relative to `root`) into `into`, at the same relative path; a path
/// that does not exist is skipped. Returns the bytes copied.
///
/// # Errors
/// Fails when a path escapes the workspace, the total passes `max_bytes`, or I/O fails.
pub(crate) fn export(
    root: BorrowedFd<'_>,
    paths: &[String],
    exclude: &[String],
    into: &Path,
    max_bytes: u64,
) -> Result<u64, CollectError> {
    let mut budget = Budget {
        left: max_bytes,
        max: max_bytes,
        exclude,
    };
    for rel in paths {
        let path = Path::new(rel);
        let lexically_ok = !rel.is_empty()
            && path
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !lexically_ok {
            return Err(CollectError::Escapes);
        }
        let c_path = CString::new(rel.as_bytes()).map_err(|_| CollectError::Escapes)?;
        let probe = match sys::openat2(root, &c_path, libc::O_PATH | libc::O_NOFOLLOW, RESOLVE) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(e) => return Err(classify(e)),
        };
        let meta = File::from(probe).metadata().map_err(io)?;
        let dest = into.join(path);
        if let Some(parent) = dest.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(io)?;
        }
        if meta.is_dir() {
            let dir = sys::openat2(
                root,
                &c_path,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                RESOLVE,
            )
            .map_err(classify)?;
            copy_dir(dir, &dest, &mut budget)?;
        } else if meta.is_file() {
            let file = sys::openat2(root, &c_path, read_flags(), RESOLVE).map_err(classify)?;
            copy_file(File::from(file), meta.ino(), &dest, &mut budget)?;
        }
    }
    Ok(max_bytes - budget.left)
}

/// What is left of the byte cap, and the names left out.
struct Budget<'a> {
    left: u64,
    max: u64,
    exclude: &'a [String],
}

impl Budget<'_> {
    /// Whether `name` is one of the names left out.
    fn excludes(&self, name: &[u8]) -> bool {
        self.exclude.iter().any(|pattern| {
            let pattern = pattern.as_bytes();
            if let Some(suffix) = pattern.strip_prefix(b"*") {
                name.ends_with(suffix)
            } else if let Some(prefix) = pattern.strip_suffix(b"*") {
                name.starts_with(prefix)
            } else {
                name == pattern
            }
        })
    }

    fn take(&mut self, bytes: u64) -> Result<(), CollectError> {
        self.left = self.left.checked_sub(bytes).ok_or(CollectError::TooLarge {
            cap: usize::try_from(self.max).unwrap_or(usize::MAX),
        })?;
        Ok(())
    }
}

fn read_flags() -> i32 {
    libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY
}

fn io(e: io::Error) -> CollectError {
    CollectError::Io(e.to_string())
}

fn classify(e: io::Error) -> CollectError {
    match e.raw_os_error() {
        Some(libc::ELOOP) => CollectError::Link,
        Some(libc::ENOENT | libc::ENOTDIR) => CollectError::Missing,
        Some(libc::EXDEV) => CollectError::Escapes,
        _ => io(e),
    }
}

/// Copies the directory behind `dir` into the new host directory `dest`, recursively.
fn copy_dir(dir: OwnedFd, dest: &Path, budget: &mut Budget<'_>) -> Result<(), CollectError> {
    match std::fs::DirBuilder::new().mode(0o755).create(dest) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(e)),
    }
    let mut names = Vec::new();
    let listing =
        nix::dir::Dir::from_fd(dir.try_clone().map_err(io)?).map_err(|e| io(io::Error::from(e)))?;
    for entry in listing {
        let entry = entry.map_err(|e| io(io::Error::from(e)))?;
        let name = entry.file_name();
        if name == c"." || name == c".." || budget.excludes(name.to_bytes()) {
            continue;
        }
        names.push(name.to_owned());
    }
    for name in names {
        let dest = dest.join(OsStr::from_bytes(name.to_bytes()));
        copy_entry(dir.as_fd(), &name, &dest, budget)?;
    }
    Ok(())
}

/// Copies one entry of a workspace directory: a directory, a regular file, or a symbolic link
/// recreated as one (never followed); anything else is skipped.
fn copy_entry(
    parent: BorrowedFd<'_>,
    name: &CStr,
    dest: &Path,
    budget: &mut Budget<'_>,
) -> Result<(), CollectError> {
    let mut stat: libc::stat = unsafe_zeroed_stat();
    // SAFETY: valid directory fd, C string and out-pointer.
    let ret = unsafe {
        libc::fstatat(
            parent.as_raw_fd(),
            name.as_ptr(),
            &mut stat,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if ret != 0 {
        return Err(io(io::Error::last_os_error()));
    }
    match stat.st_mode & libc::S_IFMT {
        libc::S_IFDIR => {
            let fd = open_at(
                parent,
                name,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            )?;
            copy_dir(fd, dest, budget)
        }
        libc::S_IFREG => {
            let fd = open_at(parent, name, read_flags())?;
            copy_file(File::from(fd), stat.st_ino, dest, budget)
        }
        libc::S_IFLNK => {
            let mut buf = vec![0u8; libc::PATH_MAX as usize];
            // SAFETY: valid fd, C string and buffer of the given length.
            let len = unsafe {
                libc::readlinkat(
                    parent.as_raw_fd(),
                    name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            let len = usize::try_from(len).map_err(|_| io(io::Error::last_os_error()))?;
            budget.take(len as u64)?;
            std::os::unix::fs::symlink(OsStr::from_bytes(&buf[..len]), dest).map_err(io)
        }
        _ => Ok(()),
    }
}

fn unsafe_zeroed_stat() -> libc::stat {
    // SAFETY: a zeroed stat is a valid out-parameter for fstatat.
    unsafe { std::mem::zeroed() }
}

fn open_at(parent: BorrowedFd<'_>, name: &CStr, flags: i32) -> Result<OwnedFd, CollectError> {
    // SAFETY: valid directory fd and C string; the result is checked and owned.
    let fd = unsafe { libc::openat(parent.as_raw_fd(), name.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(classify(io::Error::last_os_error()));
    }
    // SAFETY: fd is fresh and ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Copies an opened regular file (checked again to be the one that was listed) to `dest`,
/// keeping only whether it is executable.
fn copy_file(
    file: File,
    ino: u64,
    dest: &Path,
    budget: &mut Budget<'_>,
) -> Result<(), CollectError> {
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() || meta.ino() != ino {
        return Err(CollectError::NotRegularFile);
    }
    budget.take(meta.len())?;
    let mode = if meta.mode() & 0o111 != 0 {
        0o755
    } else {
        0o644
    };
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(dest)
        .map_err(io)?;
    // The file may grow while it is copied only if something still writes it, and nothing in
    // the sandbox lives on; still, never copy more than was counted.
    let copied = io::copy(&mut file.take(meta.len()), &mut out).map_err(io)?;
    if copied != meta.len() {
        return Err(io(io::Error::other("file changed while it was copied")));
    }
    out.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("isotest-export-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn exports_files_dirs_and_links_without_following_them() {
        let src = tempdir("src");
        let dest = tempdir("dest");
        std::fs::create_dir_all(src.join("target/debug/deps")).expect("mkdir");
        std::fs::write(src.join("target/debug/deps/t-1"), b"\x7fELF").expect("write");
        std::fs::set_permissions(
            src.join("target/debug/deps/t-1"),
            std::fs::Permissions::from_mode(0o700),
        )
        .expect("chmod");
        std::fs::write(src.join("target/debug/notes.txt"), b"hello").expect("write");
        std::os::unix::fs::symlink("/etc/shadow", src.join("target/debug/escape")).expect("ln");
        std::os::unix::fs::symlink("/etc", src.join("up")).expect("ln");
        let root = File::open(&src).expect("open");
        std::fs::create_dir_all(src.join("target/debug/incremental")).expect("mkdir");
        std::fs::write(src.join("target/debug/incremental/big"), [0u8; 4096]).expect("write");
        std::fs::write(src.join("target/debug/deps/t-1.d"), b"deps").expect("write");
        let copied = export(
            root.as_fd(),
            &["target".into(), "missing".into()],
            &["incremental".into(), "*.d".into()],
            &dest,
            1 << 20,
        )
        .expect("export");
        assert!(
            !dest.join("target/debug/incremental").exists(),
            "excluded by name"
        );
        assert!(
            !dest.join("target/debug/deps/t-1.d").exists(),
            "excluded by suffix"
        );
        assert_eq!(copied, 4 + 5 + "/etc/shadow".len() as u64);
        let exe = dest.join("target/debug/deps/t-1");
        assert_eq!(std::fs::read(&exe).expect("read"), b"\x7fELF");
        let mode = std::fs::metadata(&exe).expect("meta").permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o755,
            "executables are readable and runnable by all"
        );
        let link = std::fs::read_link(dest.join("target/debug/escape")).expect("link kept");
        assert_eq!(link, Path::new("/etc/shadow"));
        // A path through a link is refused, and the cap holds.
        let err =
            export(root.as_fd(), &["up/passwd".into()], &[], &dest, 1 << 20).expect_err("refused");
        assert_eq!(err, CollectError::Link);
        let err = export(root.as_fd(), &["../x".into()], &[], &dest, 1 << 20).expect_err("refused");
        assert_eq!(err, CollectError::Escapes);
        let small = tempdir("small");
        let err = export(root.as_fd(), &["target".into()], &[], &small, 6).expect_err("refused");
        assert!(matches!(err, CollectError::TooLarge { cap: 6 }), "{err:?}");
        for dir in [src, dest, small] {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
