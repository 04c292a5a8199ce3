//! Workspace bundles (tar + zstd) from anywhere: unpacking must neither panic nor write
//! outside its target directory, whatever the bytes.

#![no_main]

use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::OnceLock;

use isotest_sandbox::bundle::{UnpackOptions, unpack};
use libfuzzer_sys::fuzz_target;

/// A scratch directory per fuzzing process: `target/` is unpacked into, `canary` must never
/// change, and nothing else may appear beside them.
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("isotest-fuzz-bundle-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        std::fs::write(dir.join("canary"), b"keep").expect("write the canary");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    let target = dir.join("target");
    let _ = std::fs::remove_dir_all(&target);
    std::fs::create_dir(&target).expect("create the target");
    let root = File::open(&target).expect("open the target");
    let options = UnpackOptions {
        max_bytes: 1 << 20,
        owner: None,
    };
    let _ = unpack(data, root.as_fd(), options);
    let _ = unpack(&zstd_raw(data), root.as_fd(), options);
    assert_eq!(std::fs::read(dir.join("canary")).ok().as_deref(), Some(&b"keep"[..]));
    let mut beside: Vec<_> = std::fs::read_dir(dir)
        .expect("list the scratch directory")
        .map(|e| e.expect("an entry").file_name())
        .collect();
    beside.sort();
    assert_eq!(beside, ["canary", "target"], "wrote beside the target");
});

/// `data` as one zstd frame of raw blocks, so that the fuzzer's tar bytes reach the tar reader
/// without it having to learn zstd's format first.
fn zstd_raw(data: &[u8]) -> Vec<u8> {
    const BLOCK: usize = 128 << 10;
    let mut out = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 7 << 3];
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(BLOCK).collect()
    };
    for (i, chunk) in chunks.iter().enumerate() {
        let last = u32::from(i + 1 == chunks.len());
        let header = last | ((chunk.len() as u32) << 3);
        out.extend_from_slice(&header.to_le_bytes()[..3]);
        out.extend_from_slice(chunk);
    }
    out
}
