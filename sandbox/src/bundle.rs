//! Workspace bundles: a directory packed as tar + zstd, deterministically, and unpacked without
//! ever following a link, so a hostile bundle cannot write outside the target directory.

use std::borrow::Cow;
use std::cell::Cell;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

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

/// Packs `dir` as tar + zstd: regular files, directories and symlinks (others skipped), in
/// sorted order with fixed mtimes and owners, so the same tree gives the same bytes.
///
/// # Errors
/// Fails when the directory cannot be read.
pub fn pack_dir(dir: &Path) -> Result<Vec<u8>, BundleError> {
    pack_dir_only(dir, &|_| true)
}

/// Packs `dir` as [`pack_dir`] does, with only the entries whose path relative to `dir`
/// `keep` accepts (a directory it refuses is left out with all it holds).
///
/// # Errors
/// Fails when the directory cannot be read.
pub fn pack_dir_only(dir: &Path, keep: &dyn Fn(&Path) -> bool) -> Result<Vec<u8>, BundleError> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    pack_into(&mut builder, dir, Path::new(""), keep)?;
    let tar = builder
        .into_inner()
        .map_err(io_err("finish tar for", dir))?;
    zstd::encode_all(tar.as_slice(), 3).map_err(io_err("compress bundle of", dir))
}

fn pack_into(
    builder: &mut tar::Builder<Vec<u8>>,
    dir: &Path,
    rel: &Path,
    keep: &dyn Fn(&Path) -> bool,
) -> Result<(), BundleError> {
    let mut entries = std::fs::read_dir(dir)
        .map_err(io_err("read directory", dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err("read directory", dir))?;
    entries.sort();
    for name in entries {
        let path = dir.join(&name);
        let rel = rel.join(&name);
        if !keep(&rel) {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            append_symlink(builder, &path, &rel, &meta).map_err(io_err("pack", &path))?;
        } else if kind.is_file() || kind.is_dir() {
            let name = header_name(builder, &rel).map_err(io_err("pack", &path))?;
            builder
                .append_path_with_name(&path, name)
                .map_err(io_err("pack", &path))?;
        }
        if kind.is_dir() {
            pack_into(builder, &path, &rel, keep)?;
        }
    }
    Ok(())
}

/// The name to give the tar crate for `rel`. A long path is written in a GNU long-name entry
/// before its header; the tar crate does that itself, but refuses a path whose first 100 bytes
/// start with bytes that are not UTF-8 (it keeps a UTF-8 prefix in the header), so such a path
/// gets its long-name entry here and the header a placeholder, which readers ignore.
fn header_name<'a>(builder: &mut tar::Builder<Vec<u8>>, rel: &'a Path) -> io::Result<&'a Path> {
    const NAME_FIELD: usize = 100;
    let bytes = rel.as_os_str().as_bytes();
    if bytes.len() < NAME_FIELD || std::str::from_utf8(bytes).is_ok() {
        return Ok(rel);
    }
    append_long(builder, tar::EntryType::GNULongName, bytes)?;
    Ok(Path::new("@LongName"))
}

/// Appends a GNU long-name or long-link entry holding `bytes`, which applies to the next
/// header.
fn append_long(
    builder: &mut tar::Builder<Vec<u8>>,
    kind: tar::EntryType,
    bytes: &[u8],
) -> io::Result<()> {
    let mut long = bytes.to_vec();
    long.push(0);
    let mut header = tar::Header::new_gnu();
    header.set_path("././@LongLink")?;
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(long.len() as u64);
    header.set_cksum();
    builder.append(&header, long.as_slice())
}

/// Appends the symlink at `path` as the entry `rel`, its target stored byte for byte as
/// `readlink` gives it. The tar crate stores a target through `Path::components`, which
/// rewrites it: `a/.` becomes `a` (another link where `a` is not a directory) and `/.` becomes
/// `/`, which it then writes as `//`, so unpacking and packing again gave other bytes.
fn append_symlink(
    builder: &mut tar::Builder<Vec<u8>>,
    path: &Path,
    rel: &Path,
    meta: &std::fs::Metadata,
) -> io::Result<()> {
    let target = std::fs::read_link(path)?;
    let target = target.as_os_str().as_bytes();
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(meta, tar::HeaderMode::Deterministic);
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    let field = &mut header.as_old_mut().linkname;
    if target.len() < field.len() {
        field[..target.len()].copy_from_slice(target);
    } else {
        append_long(builder, tar::EntryType::GNULongLink, target)?;
    }
    let name = header_name(builder, rel)?;
    builder.append_data(&mut header, name, io::empty())
}

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
const METADATA_PER_ENTRY: u64 = 1024;

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
struct Caps {
    entries: u64,
    long_name: u64,
    pax_header: u64,
}

impl Caps {
    const DEFAULT: Caps = Caps {
        entries: MAX_ENTRIES,
        long_name: MAX_LONG_NAME,
        pax_header: MAX_PAX_HEADER,
    };
}

fn unpack_capped(
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

/// Copies at most `cap + 1` bytes so the caller can tell "over the cap" apart.
fn copy_capped(reader: &mut impl Read, mut file: &File, cap: u64) -> io::Result<u64> {
    io::copy(&mut reader.take(cap.saturating_add(1)), &mut file)
}

/// Splits `path` into its `Normal` components, refusing absolute paths and `..`.
fn normal_components(path: &Path) -> Result<Vec<&OsStr>, BundleError> {
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

fn cstring(s: &OsStr, path: &Path) -> Result<CString, BundleError> {
    CString::new(s.as_bytes()).map_err(|_| BundleError::BadPath(path.to_owned()))
}

/// Opens (creating as needed) every parent directory of `path` beneath `dir` without following
/// links, and returns the parent's fd and the final name.
fn parent_of(
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

fn open_or_make_dir(
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

fn create_file(
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

fn chown_at(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "isotest-bundle-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    fn open(dir: &Path) -> File {
        File::open(dir).expect("open dir")
    }

    /// Builds a raw tar (zstd-compressed) with hand-written headers, bypassing the tar crate's
    /// own path checks so hostile names can be tested.
    fn hostile(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, link, data) in entries {
            let mut header = tar::Header::new_gnu();
            let bytes = header.as_mut_bytes();
            bytes[..name.len()].copy_from_slice(name.as_bytes());
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            if !link.is_empty() {
                header.as_mut_bytes()[157..157 + link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_cksum();
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        zstd::encode_all(out.as_slice(), 1).expect("compress")
    }

    const OPTS: UnpackOptions = UnpackOptions {
        max_bytes: 1 << 20,
        owner: None,
    };

    #[test]
    fn pack_is_deterministic_and_round_trips() {
        let src = tempdir("src");
        std::fs::create_dir_all(src.join("a/b")).expect("mkdir");
        std::fs::write(src.join("a/b/f.txt"), b"hello").expect("write");
        std::fs::write(src.join("top"), b"x").expect("write");
        std::os::unix::fs::symlink("a/b/f.txt", src.join("link")).expect("symlink");
        let one = pack_dir(&src).expect("pack");
        // Touch mtimes: the bytes must not change.
        std::fs::write(src.join("top"), b"x").expect("rewrite");
        let two = pack_dir(&src).expect("pack again");
        assert_eq!(one, two);

        let dst = tempdir("dst");
        unpack(&one, open(&dst).as_fd(), OPTS).expect("unpack");
        assert_eq!(
            std::fs::read(dst.join("a/b/f.txt")).expect("read"),
            b"hello"
        );
        assert_eq!(
            std::fs::read_link(dst.join("link")).expect("readlink"),
            Path::new("a/b/f.txt")
        );
        let _ = std::fs::remove_dir_all(src);
        let _ = std::fs::remove_dir_all(dst);
    }

    #[test]
    fn symlink_targets_are_kept_byte_for_byte() {
        let long = format!("{}/./x/", "d".repeat(120));
        let targets = ["/.", "/", "a/.", "a//b", "dir/", "./x", "..", long.as_str()];
        let src = tempdir("links-src");
        for (i, target) in targets.iter().enumerate() {
            std::os::unix::fs::symlink(target, src.join(format!("l{i}"))).expect("symlink");
        }
        let bundle = pack_dir(&src).expect("pack");
        let dst = tempdir("links-dst");
        unpack(&bundle, open(&dst).as_fd(), OPTS).expect("unpack");
        for (i, target) in targets.iter().enumerate() {
            let got = std::fs::read_link(dst.join(format!("l{i}"))).expect("readlink");
            assert_eq!(got.as_os_str().as_bytes(), target.as_bytes(), "{target}");
        }
        assert_eq!(pack_dir(&dst).expect("repack"), bundle);
        let _ = std::fs::remove_dir_all(src);
        let _ = std::fs::remove_dir_all(dst);
    }

    #[test]
    fn hostile_bundles_are_refused() {
        let outside = tempdir("outside");
        let outside_file = outside.join("pwned");
        let through_link = format!("{}", outside.display());
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "dotdot",
                hostile(&[("../pwned", tar::EntryType::Regular, "", b"x")]),
            ),
            (
                "nested dotdot",
                hostile(&[("a/../../pwned", tar::EntryType::Regular, "", b"x")]),
            ),
            (
                "absolute",
                hostile(&[("/tmp/pwned-abs", tar::EntryType::Regular, "", b"x")]),
            ),
            (
                "symlink then file through it",
                hostile(&[
                    ("evil", tar::EntryType::Symlink, &through_link, b""),
                    ("evil/pwned", tar::EntryType::Regular, "", b"x"),
                ]),
            ),
            (
                "symlink then file over it",
                hostile(&[
                    (
                        "evil2",
                        tar::EntryType::Symlink,
                        &outside_file.display().to_string(),
                        b"",
                    ),
                    ("evil2", tar::EntryType::Regular, "", b"x"),
                ]),
            ),
            (
                "hard link",
                hostile(&[("h", tar::EntryType::Link, "/etc/shadow", b"")]),
            ),
            ("fifo", hostile(&[("p", tar::EntryType::Fifo, "", b"")])),
            ("device", hostile(&[("d", tar::EntryType::Char, "", b"")])),
        ];
        for (name, bundle) in cases {
            let dst = tempdir("hostile");
            let result = unpack(&bundle, open(&dst).as_fd(), OPTS);
            assert!(result.is_err(), "{name}: accepted");
            assert!(!outside_file.exists(), "{name}: wrote outside");
            assert!(
                !Path::new("/tmp/pwned-abs").exists(),
                "{name}: wrote absolute"
            );
            let _ = std::fs::remove_dir_all(dst);
        }
        let _ = std::fs::remove_dir_all(outside);
    }

    /// A zstd frame holding `prefix`, then `zeros` zero bytes as run-length blocks of 128 KiB:
    /// four bytes each, so gigabytes take a few hundred kilobytes, as in a real bomb.
    fn zstd_zeros(prefix: &[u8], zeros: u64) -> Vec<u8> {
        const BLOCK: u64 = 128 << 10;
        // Magic; no content size, no checksum; a 128 KiB window (Window_Log 17).
        let mut out = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 7 << 3];
        let mut block = |kind: u32, size: u64, last: bool, body: &[u8]| {
            let header = u32::from(last) | (kind << 1) | ((size as u32) << 3);
            out.extend_from_slice(&header.to_le_bytes()[..3]);
            out.extend_from_slice(body);
        };
        block(0, prefix.len() as u64, zeros == 0, prefix);
        let mut left = zeros;
        while left > 0 {
            let size = left.min(BLOCK);
            left -= size;
            block(1, size, left == 0, &[0]);
        }
        out
    }

    fn record_header(kind: tar::EntryType, size: u64) -> Vec<u8> {
        let mut header = tar::Header::new_gnu();
        header.set_path("././@LongLink").expect("path");
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_size(size);
        header.set_cksum();
        header.as_bytes().to_vec()
    }

    #[test]
    fn huge_records_are_refused_before_they_are_read() {
        const EIGHT_GIB: u64 = 8 << 30;
        for (kind, what) in [
            (tar::EntryType::GNULongName, "GNU long name"),
            (tar::EntryType::GNULongLink, "GNU long link"),
            (tar::EntryType::XHeader, "PAX header"),
            (tar::EntryType::XGlobalHeader, "PAX global header"),
        ] {
            let bomb = zstd_zeros(&record_header(kind, EIGHT_GIB), EIGHT_GIB);
            assert!(bomb.len() < 300 << 10, "{} bytes", bomb.len());
            let dst = tempdir("bomb");
            let started = std::time::Instant::now();
            let got = unpack(&bomb, open(&dst).as_fd(), OPTS);
            assert!(
                matches!(&got, Err(BundleError::RecordTooLarge { what: w, size: EIGHT_GIB, .. }) if w == what),
                "{what}: {got:?}"
            );
            assert!(started.elapsed() < std::time::Duration::from_secs(5));
            let _ = std::fs::remove_dir_all(dst);
        }
    }

    #[test]
    fn the_decompressed_stream_is_capped() {
        // A directory entry whose data (skipped, never written) is a gigabyte of zeros.
        let mut header = tar::Header::new_gnu();
        header.set_path("d").expect("path");
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(1 << 30);
        header.set_cksum();
        let bomb = zstd_zeros(header.as_bytes(), 1 << 30);
        let caps = Caps {
            entries: 16,
            ..Caps::DEFAULT
        };
        let dst = tempdir("stream");
        let got = unpack_capped(&bomb, open(&dst).as_fd(), OPTS, caps);
        let cap = OPTS.max_bytes + 16 * METADATA_PER_ENTRY;
        assert!(
            matches!(got, Err(BundleError::StreamTooLarge { cap: c }) if c == cap),
            "{got:?}"
        );
        let _ = std::fs::remove_dir_all(dst);
    }

    #[test]
    fn entries_are_counted() {
        let src = tempdir("count-src");
        for i in 0..20 {
            std::fs::write(src.join(format!("f{i}")), b"x").expect("write");
        }
        let bundle = pack_dir(&src).expect("pack");
        let caps = |entries| Caps {
            entries,
            ..Caps::DEFAULT
        };
        let dst = tempdir("count-dst");
        let got = unpack_capped(&bundle, open(&dst).as_fd(), OPTS, caps(19));
        assert!(
            matches!(got, Err(BundleError::TooManyEntries { cap: 19 })),
            "{got:?}"
        );
        let _ = std::fs::remove_dir_all(&dst);
        let dst = tempdir("count-dst");
        unpack_capped(&bundle, open(&dst).as_fd(), OPTS, caps(20)).expect("20 entries");
        // Records alone, endlessly: refused once they pass four per allowed entry.
        let mut records = Vec::new();
        for _ in 0..100 {
            records.extend(record_header(tar::EntryType::XGlobalHeader, 0));
        }
        records.resize(records.len() + 1024, 0);
        let got = unpack_capped(
            &zstd::encode_all(records.as_slice(), 1).expect("compress"),
            open(&dst).as_fd(),
            OPTS,
            caps(10),
        );
        assert!(
            matches!(got, Err(BundleError::TooManyEntries { cap: 10 })),
            "{got:?}"
        );
        let _ = std::fs::remove_dir_all(src);
        let _ = std::fs::remove_dir_all(dst);
    }

    #[test]
    fn pax_paths_apply_and_pax_sizes_are_refused() {
        let pax = |records: &[(&str, &str)], then: &[u8]| {
            let mut body = Vec::new();
            for (k, v) in records {
                let line_len = k.len() + v.len() + 3;
                let mut len = line_len + line_len.to_string().len();
                if len.to_string().len() != line_len.to_string().len() {
                    len += 1;
                }
                body.extend(format!("{len} {k}={v}\n").into_bytes());
            }
            let mut tar = record_header(tar::EntryType::XHeader, body.len() as u64);
            tar.extend(&body);
            tar.resize(tar.len().div_ceil(512) * 512, 0);
            tar.extend(then);
            tar.resize(tar.len() + 1024, 0);
            zstd::encode_all(tar.as_slice(), 1).expect("compress")
        };
        let mut link = tar::Header::new_gnu();
        link.set_path("short").expect("path");
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        link.set_cksum();
        let dst = tempdir("pax");
        let bundle = pax(
            &[("path", "from-pax"), ("linkpath", "target/of/pax")],
            link.as_bytes(),
        );
        unpack(&bundle, open(&dst).as_fd(), OPTS).expect("unpack");
        assert_eq!(
            std::fs::read_link(dst.join("from-pax")).expect("readlink"),
            Path::new("target/of/pax")
        );
        let bundle = pax(&[("size", "0")], link.as_bytes());
        let got = unpack(&bundle, open(&dst).as_fd(), OPTS);
        assert!(matches!(got, Err(BundleError::Malformed { .. })), "{got:?}");
        let _ = std::fs::remove_dir_all(dst);
    }

    /// An error sent back by the process that unpacks reads the same on this side.
    #[test]
    fn errors_cross_the_wire_unchanged() {
        let path = PathBuf::from(OsStr::from_bytes(b"a/\xffb"));
        let errors = [
            BundleError::BadPath(path.clone()),
            BundleError::RefusedKind {
                path: path.clone(),
                kind: "hard link".into(),
            },
            BundleError::TooLarge { cap: 7 },
            BundleError::StreamTooLarge { cap: 8 },
            BundleError::TooManyEntries { cap: 9 },
            BundleError::RecordTooLarge {
                what: "PAX header".into(),
                size: u64::MAX,
                cap: 1,
            },
            BundleError::Malformed {
                why: "a PAX size record".into(),
            },
            BundleError::OutOfMemory { limit: 64 << 20 },
            io_err("create file", &path)(io::Error::from_raw_os_error(libc::ENOSPC)),
            io_err("read tar", &path)(io::Error::other("archive header checksum mismatch")),
        ];
        for error in errors {
            let back = BundleError::from_wire(&error.to_wire()).expect("decodes");
            assert_eq!(format!("{back:?}"), format!("{error:?}"));
        }
        assert!(BundleError::from_wire(b"no such tag\0").is_none());
        assert!(BundleError::from_wire(b"size\0not a number\0").is_none());
    }

    #[test]
    fn size_cap_is_enforced() {
        let bundle = hostile(&[("big", tar::EntryType::Regular, "", &[7u8; 4096])]);
        let dst = tempdir("cap");
        let small = UnpackOptions {
            max_bytes: 1000,
            owner: None,
        };
        assert!(matches!(
            unpack(&bundle, open(&dst).as_fd(), small),
            Err(BundleError::TooLarge { .. })
        ));
        let _ = std::fs::remove_dir_all(dst);
    }
}
