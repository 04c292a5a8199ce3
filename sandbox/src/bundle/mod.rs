//! Workspace bundles: a directory packed as tar + zstd, deterministically, and unpacked without
//! ever following a link, so a hostile bundle cannot write outside the target directory.
//!
//! `pack.rs` makes a bundle; `unpack.rs` reads one under caps on its entries, records and
//! decompressed stream; `beneath.rs` holds the file operations both unpacking and the
//! workspace's own files use, which never follow a link out of the target directory. This
//! module holds their error, which also crosses a pipe from a process that unpacks for
//! another.

mod beneath;
mod pack;
mod unpack;

use std::borrow::Cow;
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub(crate) use beneath::{make_dir_all, write_file};
pub use pack::{pack_dir, pack_dir_only};
pub use unpack::{MAX_ENTRIES, MAX_LONG_NAME, MAX_PAX_HEADER, UnpackOptions, unpack};

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
        kind: Cow<'static, str>,
    },
    /// The unpacked content would exceed the size cap.
    #[error("stay within {cap} bytes unpacked")]
    TooLarge {
        /// The cap in bytes.
        cap: u64,
    },
    /// The decompressed stream is longer than its cap (the content cap plus room for headers).
    #[error("stay within {cap} bytes decompressed")]
    StreamTooLarge {
        /// The cap in bytes.
        cap: u64,
    },
    /// The bundle has more entries than allowed.
    #[error("stay within {cap} entries")]
    TooManyEntries {
        /// The cap.
        cap: u64,
    },
    /// A long-name, long-link or PAX record says it is larger than allowed.
    #[error("accept a {what} of {size} bytes (at most {cap})")]
    RecordTooLarge {
        /// Which record, e.g. "GNU long name".
        what: Cow<'static, str>,
        /// The size its header gives.
        size: u64,
        /// The cap in bytes.
        cap: u64,
    },
    /// The archive is not one this reader takes.
    #[error("read tar: {why}")]
    Malformed {
        /// What is wrong, e.g. "two long names or links for one entry".
        why: Cow<'static, str>,
    },
    /// The unpacked workspace, charged to the test's memory cgroup, would not fit in it.
    #[error("fit the workspace in the test's memory limit of {limit} bytes")]
    OutOfMemory {
        /// The test's memory limit in bytes.
        limit: u64,
    },
    /// Reading, writing or creating something failed (including refusing to go through a link).
    #[error("{what} {path:?}")]
    Io {
        /// What was being done.
        what: Cow<'static, str>,
        /// Which path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BundleError {
    let path = path.to_owned();
    move |source| BundleError::Io {
        what: what.into(),
        path,
        source,
    }
}

impl BundleError {
    /// The error as bytes for a process that unpacks for another (see `workspace`): a tag and
    /// the fields, each ended by a NUL, which no path and no message holds.
    pub(crate) fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut put = |field: &[u8]| {
            out.extend(field.iter().filter(|&&b| b != 0));
            out.push(0);
        };
        let path = |p: &Path| p.as_os_str().as_bytes().to_vec();
        let num = |n: &u64| n.to_string().into_bytes();
        let fields: Vec<Vec<u8>> = match self {
            BundleError::BadPath(p) => vec![b"path".to_vec(), path(p)],
            BundleError::RefusedKind { path: p, kind } => {
                vec![b"kind".to_vec(), path(p), kind.as_bytes().to_vec()]
            }
            BundleError::TooLarge { cap } => vec![b"size".to_vec(), num(cap)],
            BundleError::StreamTooLarge { cap } => vec![b"stream".to_vec(), num(cap)],
            BundleError::TooManyEntries { cap } => vec![b"entries".to_vec(), num(cap)],
            BundleError::RecordTooLarge { what, size, cap } => vec![
                b"record".to_vec(),
                what.as_bytes().to_vec(),
                num(size),
                num(cap),
            ],
            BundleError::Malformed { why } => vec![b"malformed".to_vec(), why.as_bytes().to_vec()],
            BundleError::OutOfMemory { limit } => vec![b"memory".to_vec(), num(limit)],
            BundleError::Io {
                what,
                path: p,
                source,
            } => vec![
                b"io".to_vec(),
                what.as_bytes().to_vec(),
                path(p),
                source.raw_os_error().unwrap_or(0).to_string().into_bytes(),
                source.to_string().into_bytes(),
            ],
        };
        for field in &fields {
            put(field);
        }
        out
    }

    /// Reads back what [`BundleError::to_wire`] wrote; `None` if it is not such bytes.
    pub(crate) fn from_wire(bytes: &[u8]) -> Option<BundleError> {
        let fields: Vec<&[u8]> = bytes.strip_suffix(&[0])?.split(|&b| b == 0).collect();
        let text = |i: usize| -> Option<Cow<'static, str>> {
            Some(String::from_utf8_lossy(fields.get(i)?).into_owned().into())
        };
        let path = |i: usize| Some(PathBuf::from(OsStr::from_bytes(fields.get(i)?)));
        let num =
            |i: usize| -> Option<u64> { std::str::from_utf8(fields.get(i)?).ok()?.parse().ok() };
        Some(match *fields.first()? {
            b"path" => BundleError::BadPath(path(1)?),
            b"kind" => BundleError::RefusedKind {
                path: path(1)?,
                kind: text(2)?,
            },
            b"size" => BundleError::TooLarge { cap: num(1)? },
            b"stream" => BundleError::StreamTooLarge { cap: num(1)? },
            b"entries" => BundleError::TooManyEntries { cap: num(1)? },
            b"record" => BundleError::RecordTooLarge {
                what: text(1)?,
                size: num(2)?,
                cap: num(3)?,
            },
            b"malformed" => BundleError::Malformed { why: text(1)? },
            b"memory" => BundleError::OutOfMemory { limit: num(1)? },
            b"io" => BundleError::Io {
                what: text(1)?,
                path: path(2)?,
                source: match num(3)? {
                    0 => io::Error::other(text(4)?.into_owned()),
                    errno => io::Error::from_raw_os_error(i32::try_from(errno).ok()?),
                },
            },
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests;
