//! The suite report without I/O: [`assemble`] builds it from a suite's record and its
//! results, and [`junit`], [`ctrf`] and [`terminal_summary`] render it. Embedded and
//! distributed mode both call these, so a report is the same field for field in both.

mod assemble;
mod ctrf;
mod junit;
mod summary;

pub use assemble::{CANCELLED_REASON, LOST_REASON, assemble};
pub use ctrf::ctrf;
pub use junit::junit;
pub use summary::terminal_summary;

/// The last `max` lines of `text`, for failure texts that must stay readable.
pub(crate) fn tail_lines(text: &str, max: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(max);
    lines[start..].join("\n")
}

/// Milliseconds as seconds, the unit JUnit and the terminal summary use.
pub(crate) fn ms_to_duration(ms: u64) -> std::time::Duration {
    std::time::Duration::from_millis(ms)
}

#[cfg(test)]
pub(crate) mod fixtures;
