//! Watching a running sandbox, cold or forked from a zygote: its pid 1 waited for under the
//! wall-clock and CPU limits (SIGTERM through its pidfd, then SIGKILL after the grace), its
//! output captured up to the caps, and the stage exits a cold init reports parsed.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use crate::error::SandboxError;
use crate::outcome::{Captured, StageExit, Termination};
use crate::sys;

/// Reads a stream to its end keeping `cap` bytes and dropping the rest, so a flood never grows
/// memory; stops early once `dead` fires and the buffered bytes are drained.
pub(crate) async fn capture(
    mut rx: pipe::Receiver,
    cap: usize,
    mut dead: tokio::sync::watch::Receiver<bool>,
) -> Captured {
    let mut out = Captured::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut died = false;
    loop {
        if died {
            match rx.try_read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.push(&buf[..n], cap),
                // Bytes still held only by processes outside the namespace are not ours.
                Err(_) => break,
            }
            continue;
        }
        tokio::select! {
            read = rx.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => out.push(&buf[..n], cap),
            },
            _ = dead.wait_for(|d| *d) => died = true,
        }
    }
    out
}

/// The stage exits parsed from the init's report lines; anything malformed is ignored since a
/// test can write to that pipe too.
pub(super) fn parse_report(report: &[u8]) -> [Option<StageExit>; 3] {
    let mut stages = [None; 3];
    for line in report.split(|&b| b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        let mut parts = line.split(' ');
        let (Some(stage), Some(code), None) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(code) = code.parse::<i32>() else {
            continue;
        };
        if !(0..=255).contains(&code) {
            continue;
        }
        let index = match stage {
            "setup" => 0,
            "command" => 1,
            "teardown" => 2,
            _ => continue,
        };
        stages[index].get_or_insert(StageExit::from_shell_status(code));
    }
    stages
}

/// Waits for a sandbox's pid 1 to exit, enforcing the wall-clock and CPU limits; returns why it
/// was stopped (if it was) and what `exited` gave. `exited` resolves once the process has
/// exited: a cold sandbox's init is reaped here ([`reaped`]), a forked test by its parent, the
/// fork server, so for it the pidfd turning readable is enough.
pub(crate) async fn supervise<T>(
    pidfd: BorrowedFd<'_>,
    cgroup: Option<&crate::cgroup::SandboxCgroup>,
    limits: &crate::spec::Limits,
    exited: impl Future<Output = Result<T, SandboxError>>,
) -> Result<(Option<Termination>, T), SandboxError> {
    let deadline = tokio::time::Instant::now() + limits.timeout;
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut reason = None;
    let mut cpu_tick = tokio::time::interval(Duration::from_millis(50));
    let cpu_limit = limits
        .cpu_time
        .filter(|_| cgroup.is_some_and(|c| c.cpu_usage().is_some()));
    let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);
    let mut exited = std::pin::pin!(exited);
    loop {
        tokio::select! {
            exit = &mut exited => return exit.map(|exit| (reason, exit)),
            () = tokio::time::sleep_until(deadline), if reason.is_none() => {
                reason = Some(Termination::TimedOut);
                kill_at = Some(begin_stop(pidfd, limits));
            }
            _ = cpu_tick.tick(), if reason.is_none() && cpu_limit.is_some() => {
                let used = cgroup.and_then(|c| c.cpu_usage()).unwrap_or_default();
                if cpu_limit.is_some_and(|limit| used > limit) {
                    reason = Some(Termination::CpuTimeExceeded);
                    kill_at = Some(begin_stop(pidfd, limits));
                }
            }
            () = tokio::time::sleep_until(kill_at.unwrap_or(far)), if kill_at.is_some() => {
                kill_at = None;
                // Killing the pid namespace's init makes the kernel kill every process in it.
                let _ = sys::pidfd_send_signal(pidfd, libc::SIGKILL);
            }
        }
    }
}

/// Resolves once a cold sandbox's init has exited, with its reaped status.
pub(super) async fn reaped(pidfd: &AsyncFd<OwnedFd>) -> Result<sys::Reaped, SandboxError> {
    loop {
        let mut ready = pidfd
            .readable()
            .await
            .map_err(|e| SandboxError::io("wait for sandbox init", e))?;
        match sys::waitid_pidfd(pidfd.get_ref().as_fd()) {
            Ok(Some(reaped)) => return Ok(reaped),
            Ok(None) => ready.clear_ready(),
            Err(e) => return Err(SandboxError::io("reap sandbox init", e)),
        }
    }
}

/// Asks every process of the sandbox to stop and returns when to SIGKILL: SIGTERM to its pid 1
/// through its pidfd, which `isotest-init` (pid 1 of a cold sandbox and of a warm test alike)
/// passes on to every other process of its pid namespace. Signalling pids read from `cgroup.procs` would race with their reuse: a
/// process may exit and its pid go to a host process between the read and the kill.
fn begin_stop(pidfd: BorrowedFd<'_>, limits: &crate::spec::Limits) -> tokio::time::Instant {
    if limits.kill_grace.is_zero() || sys::pidfd_send_signal(pidfd, libc::SIGTERM).is_err() {
        return tokio::time::Instant::now();
    }
    tokio::time::Instant::now() + limits.kill_grace
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_parsing_is_defensive() {
        let [s, c, t] = parse_report(b"setup 0\ncommand 137\ngarbage\ncommand 0\nteardown x\n");
        assert_eq!(s, Some(StageExit::Code(0)));
        assert_eq!(c, Some(StageExit::Signal(9)));
        assert_eq!(t, None);
        assert_eq!(parse_report(b"command 99999\nsetup -1 2\n"), [None; 3]);
    }
}
