//! What came out of one sandboxed run: stage exits, why it ended, output, files and usage.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// The result of a run whose sandbox was created; everything the test did is in here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    /// The setup stage's exit; `None` if it did not run or did not finish.
    pub setup: Option<StageExit>,
    /// The command's exit; `None` if it did not run or did not finish.
    pub command: Option<StageExit>,
    /// The teardown stage's exit; `None` if it did not run or did not finish.
    pub teardown: Option<StageExit>,
    /// Why the sandbox ended.
    pub termination: Termination,
    /// Captured stdout of all stages.
    pub stdout: Captured,
    /// Captured stderr of all stages.
    pub stderr: Captured,
    /// Each requested path, read back after every process of the sandbox was dead.
    pub collected: BTreeMap<String, Result<Vec<u8>, CollectError>>,
    /// The bytes copied out by the spec's `export`, or why it failed; `None` without one.
    pub exported: Option<Result<u64, CollectError>>,
    /// Resources the sandbox used.
    pub usage: Usage,
    /// From `run()` entry until the sandbox exec'd its first program.
    pub startup: Duration,
}

/// How one stage ended.
///
/// Stages run under `/bin/sh`, which reports a death by signal N as status 128+N; a status above
/// 128 that names a signal is reported as `Signal`, so a program that exits with such a code on
/// its own is indistinguishable from one killed by that signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageExit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl StageExit {
    /// Whether the stage exited with code 0.
    pub fn success(self) -> bool {
        self == StageExit::Code(0)
    }

    /// Decodes a status as `/bin/sh` reports it in `$?`.
    pub(crate) fn from_shell_status(status: i32) -> StageExit {
        if (129..=128 + 64).contains(&status) {
            StageExit::Signal(status - 128)
        } else {
            StageExit::Code(status)
        }
    }
}

/// Why the sandbox ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// All stages ran to their end (whatever their exit codes).
    Exited,
    /// The wall-clock timeout expired and the sandbox was killed.
    TimedOut,
    /// The CPU time limit was exceeded and the sandbox was killed.
    CpuTimeExceeded,
    /// The kernel OOM-killed a process of the sandbox (the memory limit was hit).
    OutOfMemory,
}

/// Captured output of one stream, capped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// The first bytes, up to the cap.
    pub data: Vec<u8>,
    /// How many bytes beyond the cap were read and dropped.
    pub dropped_bytes: u64,
}

impl Captured {
    /// Lossy UTF-8 text of the capture plus a marker line when bytes were dropped; `stream`
    /// names the stream in the marker, e.g. `"stdout"`.
    pub fn render(&self, stream: &str) -> String {
        let mut text = String::from_utf8_lossy(&self.data).into_owned();
        if self.dropped_bytes > 0 {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!(
                "[isotest: {} bytes of {stream} dropped]\n",
                self.dropped_bytes
            ));
        }
        text
    }

    /// Appends a chunk, keeping at most `cap` bytes and counting the rest as dropped.
    pub(crate) fn push(&mut self, chunk: &[u8], cap: usize) {
        let room = cap.saturating_sub(self.data.len());
        let kept = room.min(chunk.len());
        self.data.extend_from_slice(&chunk[..kept]);
        self.dropped_bytes += (chunk.len() - kept) as u64;
    }
}

/// Why a requested file could not be collected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollectError {
    /// Nothing at that path.
    #[error("collect file: missing")]
    Missing,
    /// The path is a directory, FIFO, device, socket, etc.
    #[error("collect file: not a regular file")]
    NotRegularFile,
    /// The file is larger than the cap.
    #[error("collect file: larger than {cap} bytes")]
    TooLarge {
        /// The cap in bytes.
        cap: usize,
    },
    /// The path is absolute, has `..`, or otherwise leaves the workspace.
    #[error("collect file: path escapes the workspace")]
    Escapes,
    /// The path or one of its parents is a symbolic link.
    #[error("collect file: path goes through a symbolic link")]
    Link,
    /// Reading failed.
    #[error("collect file: {0}")]
    Io(String),
}

/// Resources one sandbox used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Peak memory of the sandbox's cgroup (includes page cache and tmpfs it charged).
    pub max_rss_bytes: u64,
    /// CPU time of all its processes.
    pub cpu: Duration,
    /// Wall time from exec of the first stage until the sandbox was dead.
    pub wall: Duration,
}

impl fmt::Display for Termination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Termination::Exited => "exited",
            Termination::TimedOut => "timed out",
            Termination::CpuTimeExceeded => "cpu time exceeded",
            Termination::OutOfMemory => "out of memory",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_status_decodes_signals_and_codes() {
        for (status, want) in [
            (0, StageExit::Code(0)),
            (1, StageExit::Code(1)),
            (127, StageExit::Code(127)),
            (128, StageExit::Code(128)),
            (137, StageExit::Signal(9)),
            (143, StageExit::Signal(15)),
            (255, StageExit::Code(255)),
        ] {
            assert_eq!(
                StageExit::from_shell_status(status),
                want,
                "status {status}"
            );
        }
    }

    #[test]
    fn capture_keeps_cap_and_counts_dropped() {
        let mut c = Captured::default();
        c.push(b"hello", 8);
        c.push(b"world", 8);
        assert_eq!(c.data, b"hellowor");
        assert_eq!(c.dropped_bytes, 2);
        assert_eq!(
            c.render("stdout"),
            "hellowor\n[isotest: 2 bytes of stdout dropped]\n"
        );
        let whole = Captured {
            data: b"ok\n".to_vec(),
            dropped_bytes: 0,
        };
        assert_eq!(whole.render("stderr"), "ok\n");
    }
}
