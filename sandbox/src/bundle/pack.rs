//! Packing a directory as a bundle: tar + zstd, in sorted order with fixed mtimes and
//! owners, so the same tree gives the same bytes.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{BundleError, io_err};

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
