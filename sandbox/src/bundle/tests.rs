//! The bundle's tests: round trips, hostile bundles, and every cap.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;

use super::unpack::{Caps, METADATA_PER_ENTRY, unpack_capped};
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
