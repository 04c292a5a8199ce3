//! Workspace bundles: a directory packed as tar + zstd, deterministically, and unpacked without
//! ever following a link, so a hostile bundle cannot write outside the target directory.

use std::io;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

/// Why a bundle could not be packed or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// An entry's path is absolute, has `..`, or is otherwise unusable.
    #[error("accept entry path {0:?}")]
    BadPath(PathBuf),
    /// An entry is a hard link, device, FIFO or another kind that is refused.
    #[error("accept entry {path:?} of kind {kind}")]
    RefusedKind {
        /// The entry's path.
        path: PathBuf,
        /// The kind, e.g. "hard link".
        kind: &'static str,
    },
    /// The unpacked content would exceed the size cap.
    #[error("stay within {cap} bytes unpacked")]
    TooLarge {
        /// The cap in bytes.
        cap: u64,
    },
    /// Reading, writing or creating something failed.
    #[error("{what} {path:?}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Which path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Packs `dir` as tar + zstd: regular files, directories and symlinks (others skipped), in
/// sorted order with fixed mtimes and owners, so the same tree gives the same bytes.
///
/// # Errors
/// Fails when the directory cannot be read.
pub fn pack_dir(dir: &Path) -> Result<Vec<u8>, BundleError> {
    Err(BundleError::Io {
        what: "pack",
        path: dir.to_owned(),
        source: io::Error::from(io::ErrorKind::Unsupported),
    })
}

/// What an unpack should do besides writing the entries.
#[derive(Debug, Clone, Copy)]
pub struct UnpackOptions {
    /// Cap on the total bytes of file content.
    pub max_bytes: u64,
    /// Owner given to every created entry, if any.
    pub owner: Option<(u32, u32)>,
}

/// Unpacks a tar + zstd `bundle` beneath the directory `dir`, never following a link.
///
/// # Errors
/// Fails on refused entries (absolute or `..` paths, hard links, devices, FIFOs), when an entry
/// would be created through a symlink or over an existing entry, or over `max_bytes`.
pub fn unpack(bundle: &[u8], dir: BorrowedFd<'_>, options: UnpackOptions) -> Result<(), BundleError> {
    let _ = (bundle, dir, options);
    Err(BundleError::Io {
        what: "unpack",
        path: PathBuf::new(),
        source: io::Error::from(io::ErrorKind::Unsupported),
    })
}
