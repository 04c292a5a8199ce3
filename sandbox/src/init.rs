//! `isotest-init`, the freestanding pid 1 of single-command sandboxes (`init/isotest-init.c`,
//! built by `build.rs`), embedded in the library and handed to each sandbox as a sealed
//! memfd, so that it needs no file on the host nor in any environment root.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{FromRawFd, OwnedFd};

/// The static executable.
const PROGRAM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/isotest-init"));

/// `MFD_EXEC` (Linux 6.3+): ask for an executable memfd even where `vm.memfd_noexec` makes
/// them non-executable by default.
const MFD_EXEC: libc::c_uint = 0x10;

/// A read-only, sealed, close-on-exec memfd holding the program; sandboxes exec it by fd.
///
/// # Errors
/// Fails when the memfd cannot be created, written or sealed.
pub(crate) fn program() -> io::Result<OwnedFd> {
    let create = |flags: libc::c_uint| {
        // SAFETY: memfd_create with a valid C string.
        let fd = unsafe { libc::memfd_create(c"isotest-init".as_ptr(), flags) };
        if fd < 0 {
            Err(io::Error::last_os_error())
        } else {
            // SAFETY: a fresh fd we own.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        }
    };
    let base = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // Kernels before 6.3 reject the unknown flag; their memfds are executable anyway.
    let fd = create(base | MFD_EXEC).or_else(|e| match e.raw_os_error() {
        Some(libc::EINVAL) => create(base),
        _ => Err(e),
    })?;
    let mut file = File::from(fd);
    file.write_all(PROGRAM)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on an fd we own.
    if unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::F_ADD_SEALS,
            seals,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(file.into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_program_is_a_static_executable() {
        let program = super::PROGRAM;
        assert_eq!(&program[..4], b"\x7fELF", "not an ELF file");
        // ET_EXEC (a position-dependent static executable), not ET_DYN needing a loader.
        assert_eq!(u16::from_le_bytes([program[16], program[17]]), 2);
        let fd = super::program().expect("memfd");
        let meta = std::fs::File::from(fd).metadata().expect("stat memfd");
        assert_eq!(meta.len(), program.len() as u64);
    }
}
