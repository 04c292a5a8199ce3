//! Network namespaces made ahead of time. Creating one (its loopback device, sysctl tables,
//! per-protocol state) is the single most expensive step of starting a sandbox, about half of
//! `clone3`'s time here, and none of it depends on the test. A pool thread creates them one
//! at a time, each with its loopback up, and hands each out once: every sandbox still gets a
//! network namespace no other process ever used, and the launcher only joins it before cloning.
//!
//! A namespace made here belongs to the host's user namespace, not the sandbox's, so the
//! sandbox's root holds no capability over it: it cannot change interfaces, routes or
//! `/proc/sys/net`. That is stricter than a namespace the sandbox creates itself.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc;

/// How many namespaces wait ready at most (each holds a few hundred KiB of kernel memory).
pub(crate) const DEFAULT_DEPTH: usize = 2;

/// Hands out fresh network namespaces, each once; dropping it stops the pool thread.
#[derive(Debug)]
pub(crate) struct Pool {
    ready: std::sync::Mutex<mpsc::Receiver<OwnedFd>>,
}

impl Pool {
    /// Starts the pool thread once one namespace could be made, so a host where that fails
    /// (no CAP_SYS_ADMIN) gets an error here rather than a pool that never fills.
    ///
    /// # Errors
    /// Fails when a namespace cannot be created or joined, or the thread cannot start.
    pub fn start(depth: usize) -> io::Result<Pool> {
        let (tx, ready) = mpsc::sync_channel::<OwnedFd>(depth.max(1));
        let (started_tx, started) = mpsc::channel::<io::Result<()>>();
        std::thread::Builder::new()
            .name("isotest-netns-pool".to_owned())
            .spawn(move || {
                let home = match File::open("/proc/thread-self/ns/net") {
                    Ok(home) => home,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                let mut first = Some(started_tx);
                loop {
                    let made = make(&home);
                    if let Some(started) = first.take() {
                        let failed = made.is_err();
                        let _ = started.send(made.as_ref().map(|_| ()).map_err(clone_error));
                        if failed {
                            return;
                        }
                    }
                    match made {
                        // Blocks while the pool is full; fails once the pool was dropped.
                        Ok(netns) => {
                            if tx.send(netns).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "Could not make a network namespace ahead; sandboxes create their own.");
                            return;
                        }
                    }
                }
            })?;
        started
            .recv()
            .map_err(|_| io::Error::other("network namespace pool thread died while starting"))??;
        Ok(Pool {
            ready: std::sync::Mutex::new(ready),
        })
    }

    /// A fresh namespace if one is ready; never blocks (the caller then creates its own).
    pub fn take(&self) -> Option<OwnedFd> {
        self.ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_recv()
            .ok()
    }
}

fn clone_error(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

/// Creates a network namespace with `lo` up and returns to `home`.
fn make(home: &File) -> io::Result<OwnedFd> {
    // SAFETY: unshare affects only this thread's network namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let made = File::open("/proc/thread-self/ns/net").map(OwnedFd::from);
    let up = made
        .as_ref()
        .map_err(clone_error)
        .and_then(|_| loopback_up());
    // SAFETY: setns on an fd of a network namespace, affecting only this thread.
    let back = unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) };
    if back != 0 {
        // Without a way home this thread must not make more; the error ends it.
        return Err(io::Error::last_os_error());
    }
    up?;
    made
}

/// Sets `lo` up in this thread's network namespace.
fn loopback_up() -> io::Result<()> {
    // SAFETY: plain system calls on a local ifreq (the same helper the child uses).
    if unsafe { crate::child::loopback_up() } {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode(fd: &impl AsRawFd) -> u64 {
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat on an open fd with a valid out-parameter.
        assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) }, 0);
        stat.st_ino
    }

    #[test]
    fn hands_out_distinct_fresh_namespaces() {
        if !nix::unistd::geteuid().is_root() {
            // Creating a network namespace needs CAP_SYS_ADMIN; the start must say so.
            assert!(Pool::start(1).is_err());
            return;
        }
        let pool = Pool::start(2).expect("pool starts as root");
        let home = File::open("/proc/thread-self/ns/net").expect("own netns");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut seen = Vec::new();
        while seen.len() < 5 {
            assert!(std::time::Instant::now() < deadline, "pool did not refill");
            match pool.take() {
                Some(netns) => seen.push(netns),
                None => std::thread::yield_now(),
            }
        }
        let mut inodes: Vec<u64> = seen.iter().map(inode).collect();
        assert!(
            !inodes.contains(&inode(&home)),
            "handed out the host's namespace"
        );
        inodes.sort_unstable();
        inodes.dedup();
        assert_eq!(inodes.len(), 5, "a namespace was handed out twice");
        // This thread never moved.
        let now = File::open("/proc/thread-self/ns/net").expect("own netns");
        assert_eq!(inode(&now), inode(&home));
    }
}
