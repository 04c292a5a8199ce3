//! Unpacking a bundle into a directory, never following a link, under caps on the
//! content, the entries, the long-name and PAX records and the decompressed stream, so a
//! hostile bundle can neither write outside the directory nor make the reader work
//! through gigabytes.

use std::cell::Cell;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::beneath::{
    chown_at, create_file, cstring, normal_components, open_or_make_dir, parent_of,
};
use super::{BundleError, io_err};

/// What an unpack should do besides writing the entries.
#[derive(Debug, Clone, Copy)]
pub struct UnpackOptions {
    /// Cap on the total bytes of file content.
    pub max_bytes: u64,
    /// Owner (uid, gid) given to every created entry, if any.
    pub owner: Option<(u32, u32)>,
}

/// At most this many entries (files, directories, links) in a bundle; the workspace tmpfs caps
/// inodes too (`Limits::workspace_inodes`).
pub const MAX_ENTRIES: u64 = 1 << 20;
/// At most this many bytes in a GNU long-name or long-link entry: a path of `PATH_MAX` (4096,
/// with its NUL) is the longest any file system takes.
pub const MAX_LONG_NAME: u64 = 4096;
/// At most this many bytes in a PAX extended header, local or global.
pub const MAX_PAX_HEADER: u64 = 64 << 10;
/// Decompressed bytes allowed per entry beyond file content: a header and padding take at most
/// 1023 bytes, so this leaves room for long names on many entries, not on every one.
pub(super) const METADATA_PER_ENTRY: u64 = 1024;

/// Reads the decompressed stream, failing once more than `left` bytes came out of it: without
/// a cap, a few hundred kilobytes of zstd (one run-length block per 128 KiB of zeros) decode to
/// gigabytes that the tar reader would read through, even without keeping them.
struct Capped<'a, R> {
    inner: R,
    left: u64,
    /// Set when the cap was hit, so the error the tar reader wraps it in can be told apart.
    hit: &'a Cell<bool>,
}

impl<R: Read> Read for Capped<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = usize::try_from(self.left.saturating_add(1))
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            self.hit.set(true);
            return Err(io::Error::other("decompressed bundle over its cap"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// GNU long-name, long-link and PAX records seen since the last entry, which apply to the next.
#[derive(Default)]
struct Pending {
    name: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.name.is_none() && self.link.is_none()
    }
}

/// Unpacks a tar + zstd `bundle` beneath the directory `dir`, never following a link.
///
/// The tar crate's own reader would load GNU long-name, long-link and PAX records whole into
/// memory, however large they say they are, so entries are read raw here and those records
/// capped ([`MAX_LONG_NAME`], [`MAX_PAX_HEADER`]) before a byte of them is read; so are the
/// entries ([`MAX_ENTRIES`]) and the decompressed stream (`max_bytes` plus 1 KiB an entry).
///
/// # Errors
/// Fails on refused entries (absolute or `..` paths, hard links, devices, FIFOs), when an entry
/// would be created through a symlink or over an existing entry, over `max_bytes` of content,
/// or over any of the caps above.
pub fn unpack(
    bundle: &[u8],
    dir: BorrowedFd<'_>,
    options: UnpackOptions,
) -> Result<(), BundleError> {
    unpack_capped(bundle, dir, options, Caps::DEFAULT)
}

/// The caps of [`unpack`] other than the content size, smaller in tests.
#[derive(Debug, Clone, Copy)]
pub(super) struct Caps {
    pub(super) entries: u64,
    pub(super) long_name: u64,
    pub(super) pax_header: u64,
}

impl Caps {
    pub(super) const DEFAULT: Caps = Caps {
        entries: MAX_ENTRIES,
        long_name: MAX_LONG_NAME,
        pax_header: MAX_PAX_HEADER,
    };
}

pub(super) fn unpack_capped(
    bundle: &[u8],
    dir: BorrowedFd<'_>,
    options: UnpackOptions,
    caps: Caps,
) -> Result<(), BundleError> {
    let decoder = zstd::Decoder::new(bundle).map_err(io_err("decompress", Path::new("")))?;
    let hit = Cell::new(false);
    let stream_cap = options
        .max_bytes
        .saturating_add(caps.entries.saturating_mul(METADATA_PER_ENTRY));
    let capped = Capped {
        inner: decoder,
        left: stream_cap,
        hit: &hit,
    };
    let mut archive = tar::Archive::new(capped);
    let over_cap = |e: BundleError| {
        if hit.get() {
            BundleError::StreamTooLarge { cap: stream_cap }
        } else {
            e
        }
    };
    let entries = archive
        .entries()
        .map_err(io_err("read tar", Path::new("")))?
        .raw(true);
    let mut unpacker = Unpacker {
        dir,
        options,
        caps,
        written: 0,
        pending: Pending::default(),
        records: 0,
        entries: 0,
    };
    for entry in entries {
        let entry = entry
            .map_err(io_err("read tar entry", Path::new("")))
            .map_err(over_cap)?;
        unpacker.entry(entry).map_err(over_cap)?;
    }
    if !unpacker.pending.is_empty() {
        return Err(BundleError::Malformed {
            why: "a long name or PAX record with no entry after it".into(),
        });
    }
    Ok(())
}

/// The state of one unpack.
struct Unpacker<'a> {
    dir: BorrowedFd<'a>,
    options: UnpackOptions,
    caps: Caps,
    /// Bytes of file content written so far.
    written: u64,
    pending: Pending,
    /// Raw entries read so far, records included.
    records: u64,
    /// Entries read so far, records not included.
    entries: u64,
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), BundleError> {
        // Records count too, so that a stream of nothing but records ends about where one of
        // real entries would (at most three records apply to one entry).
        self.records += 1;
        if self.records > self.caps.entries.saturating_mul(4) {
            return Err(BundleError::TooManyEntries {
                cap: self.caps.entries,
            });
        }
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::GNULongName | tar::EntryType::GNULongLink => {
                let long_name = kind == tar::EntryType::GNULongName;
                let what = if long_name {
                    "GNU long name"
                } else {
                    "GNU long link"
                };
                let mut bytes = read_record(&mut entry, what, self.caps.long_name + 1)?;
                while bytes.last() == Some(&0) {
                    bytes.pop();
                }
                let slot = if long_name {
                    &mut self.pending.name
                } else {
                    &mut self.pending.link
                };
                if slot.replace(bytes).is_some() {
                    return Err(BundleError::Malformed {
                        why: "two long names or links for one entry".into(),
                    });
                }
                return Ok(());
            }
            tar::EntryType::XHeader => {
                let data = read_record(&mut entry, "PAX header", self.caps.pax_header)?;
                for record in tar::PaxExtensions::new(&data) {
                    let record = record.map_err(io_err("read PAX header", Path::new("")))?;
                    let slot = match record.key_bytes() {
                        b"path" => &mut self.pending.name,
                        b"linkpath" => &mut self.pending.link,
                        // Raw entries are framed by their headers alone, so a size given here
                        // would make this reader and others see different entries.
                        b"size" => {
                            return Err(BundleError::Malformed {
                                why: "a PAX size record".into(),
                            });
                        }
                        _ => continue,
                    };
                    *slot = Some(record.value_bytes().to_vec());
                }
                return Ok(());
            }
            tar::EntryType::XGlobalHeader => {
                // Nothing in it applies to a workspace; it is read only to bound it.
                read_record(&mut entry, "PAX global header", self.caps.pax_header)?;
                return Ok(());
            }
            _ => {}
        }
        self.entries += 1;
        if self.entries > self.caps.entries {
            return Err(BundleError::TooManyEntries {
                cap: self.caps.entries,
            });
        }
        let pending = std::mem::take(&mut self.pending);
        let path = pending
            .name
            .unwrap_or_else(|| entry.path_bytes().into_owned());
        let path = PathBuf::from(OsStr::from_bytes(&path));
        let link = pending
            .link
            .or_else(|| entry.link_name_bytes().map(std::borrow::Cow::into_owned));
        self.write(entry, kind, &path, link)
    }

    /// Creates one entry beneath the target directory.
    fn write<R: Read>(
        &mut self,
        mut entry: tar::Entry<'_, R>,
        kind: tar::EntryType,
        path: &Path,
        link: Option<Vec<u8>>,
    ) -> Result<(), BundleError> {
        let (dir, options) = (self.dir, self.options);
        let refuse = |kind: &'static str| BundleError::RefusedKind {
            path: path.to_owned(),
            kind: kind.into(),
        };
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mode = entry.header().mode().unwrap_or(0o644);
                let size = entry.header().size().unwrap_or(0);
                if self.written.saturating_add(size) > options.max_bytes {
                    return Err(BundleError::TooLarge {
                        cap: options.max_bytes,
                    });
                }
                let remaining = options.max_bytes - self.written;
                let (parent, name) = parent_of(dir, path, options.owner)?;
                let file = create_file(parent.as_fd(), &name, mode, false, options.owner, path)?;
                let copied =
                    copy_capped(&mut entry, &file, remaining).map_err(io_err("write", path))?;
                if copied > remaining {
                    return Err(BundleError::TooLarge {
                        cap: options.max_bytes,
                    });
                }
                self.written += copied;
            }
            tar::EntryType::Directory => {
                if normal_components(path)?.is_empty() {
                    return Ok(());
                }
                let (parent, name) = parent_of(dir, path, options.owner)?;
                open_or_make_dir(parent.as_fd(), &name, options.owner, path)?;
            }
            tar::EntryType::Symlink => {
                let target = link.ok_or_else(|| BundleError::BadPath(path.to_owned()))?;
                let target = cstring(OsStr::from_bytes(&target), path)?;
                let (parent, name) = parent_of(dir, path, options.owner)?;
                // SAFETY: valid C strings and a directory fd we hold.
                let ret =
                    unsafe { libc::symlinkat(target.as_ptr(), parent.as_raw_fd(), name.as_ptr()) };
                if ret != 0 {
                    return Err(io_err("create symlink", path)(io::Error::last_os_error()));
                }
                chown_at(parent.as_fd(), &name, options.owner, path)?;
            }
            tar::EntryType::Link => return Err(refuse("hard link")),
            tar::EntryType::Char | tar::EntryType::Block => return Err(refuse("device")),
            tar::EntryType::Fifo => return Err(refuse("fifo")),
            _ => return Err(refuse("unknown")),
        }
        Ok(())
    }
}

/// Reads a long-name, long-link or PAX record of at most `cap` bytes, refusing a larger one
/// before reading any of it.
fn read_record<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    what: &'static str,
    cap: u64,
) -> Result<Vec<u8>, BundleError> {
    let size = entry.header().entry_size().unwrap_or(u64::MAX);
    if size > cap {
        return Err(BundleError::RecordTooLarge {
            what: what.into(),
            size,
            cap,
        });
    }
    let mut data = Vec::with_capacity(size as usize);
    entry
        .take(cap)
        .read_to_end(&mut data)
        .map_err(io_err("read tar record", Path::new("")))?;
    Ok(data)
}

/// Copies at most `cap + 1` bytes so the caller can tell "over the cap" apart.
fn copy_capped(reader: &mut impl Read, mut file: &File, cap: u64) -> io::Result<u64> {
    io::copy(&mut reader.take(cap.saturating_add(1)), &mut file)
}
