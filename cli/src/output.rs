//! What `isotest run` shows and writes: live progress on stderr (a bar on a terminal,
//! plain lines otherwise), the reports, and the summary.

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use isotest_protocol::report::Report;
use isotest_protocol::result::Status;

use crate::args::RunArgs;
use crate::exit::{self, Failure};

/// Live progress of one suite.
#[derive(Debug)]
pub enum Progress {
    Bar(ProgressBar),
    Lines {
        total: u32,
        done: u32,
        last: Option<Instant>,
    },
    Quiet,
}

impl Progress {
    pub fn new(total: u32, quiet: bool) -> Progress {
        if quiet {
            return Progress::Quiet;
        }
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(u64::from(total));
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(120));
            Progress::Bar(bar)
        } else {
            Progress::Lines {
                total,
                done: 0,
                last: None,
            }
        }
    }

    /// One test reached its final verdict.
    pub fn finished(&mut self, name: &str, status: Status, duration_ms: u64) {
        match self {
            Progress::Bar(bar) => {
                bar.inc(1);
                if !status.is_success() {
                    bar.println(format!("{:>8} {name}", status.as_str()));
                }
            }
            Progress::Lines { total, done, .. } => {
                *done += 1;
                eprintln!(
                    "[{done}/{total}] {} {name} ({duration_ms} ms)",
                    status.as_str()
                );
            }
            Progress::Quiet => {}
        }
    }

    /// The server says this many tests are done.
    pub fn set_done(&mut self, now_done: u32) {
        match self {
            Progress::Bar(bar) => bar.set_position(u64::from(now_done)),
            Progress::Lines { total, done, last } => {
                // Plain logs get a line when something changed, at most one a second.
                let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
                if now_done != *done && (due || now_done == *total) {
                    *done = now_done;
                    *last = Some(Instant::now());
                    eprintln!("isotest: {now_done}/{total} tests done");
                }
            }
            Progress::Quiet => {}
        }
    }

    pub fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// Writes the reports asked for, prints the summary, and gives the exit code.
///
/// # Errors
///
/// Returns [`Failure::BadInput`] when a report file cannot be written.
pub fn finish(report: &Report, args: &RunArgs) -> Result<u8, Failure> {
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(report).map_err(|e| Failure::Service(e.into()))?;
        write(path, json.as_bytes())?;
    }
    if let Some(path) = &args.junit {
        write(path, isotest_aggregator::junit(report).as_bytes())?;
    }
    if let Some(path) = &args.ctrf {
        let ctrf = serde_json::to_string_pretty(&isotest_aggregator::ctrf(report))
            .map_err(|e| Failure::Service(e.into()))?;
        write(path, ctrf.as_bytes())?;
    }
    let color = std::io::stdout().is_terminal();
    print!("{}", isotest_aggregator::terminal_summary(report, color));
    Ok(if report.passed() {
        exit::PASSED
    } else {
        exit::TESTS_FAILED
    })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    std::fs::write(path, bytes)
        .map_err(|e| Failure::BadInput(format!("cannot write the report {}: {e}", path.display())))
}
