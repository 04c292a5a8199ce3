//! Builds `init/isotest-init.c`, the freestanding pid 1 of single-command sandboxes, into a
//! static executable the library embeds (see `init.rs`). The `cc` crate only finds the C
//! compiler (honouring `CC` and cross-compilation settings); the link is a plain
//! `-static -nostdlib` one, since the program uses no libc at all.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "init/isotest-init.c";
    println!("cargo:rerun-if-changed={source}");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let binary = out.join("isotest-init");
    let compiler = cc::Build::new()
        .opt_level(2)
        .cargo_metadata(false)
        .get_compiler();
    let status = Command::new(compiler.path())
        .args([
            "-O2",
            "-static",
            "-nostdlib",
            "-ffreestanding",
            "-fno-stack-protector",
            "-fno-pie",
            "-no-pie",
            "-fno-asynchronous-unwind-tables",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-o",
        ])
        .arg(&binary)
        .arg(source)
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {:?}: {e}", compiler.path()));
    assert!(status.success(), "building {source} failed: {status}");
}
