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

    /// One test reached its final verdict (`flaky`: it passed after its own failure).
    pub fn finished(&mut self, name: &str, status: Status, flaky: bool, duration_ms: u64) {
        let label = if flaky {
            format!("{} (flaky)", status.as_str())
        } else {
            status.as_str().to_owned()
        };
        match self {
            Progress::Bar(bar) => {
                bar.inc(1);
                if !status.is_success() {
                    bar.println(format!("{label:>8} {name}"));
                }
            }
            Progress::Lines { total, done, .. } => {
                *done += 1;
                eprintln!("[{done}/{total}] {label} {name} ({duration_ms} ms)");
            }
            Progress::Quiet => {}
        }
    }

    /// A line of its own on stderr, above the bar on a terminal.
    pub fn println(&self, line: &str) {
        match self {
            Progress::Bar(bar) => bar.println(line),
            Progress::Lines { .. } | Progress::Quiet => eprintln!("{line}"),
        }
    }

    /// The server says this many tests are done, and this many wait for their turn
    /// (their fair share of the workers, or their token's quota).
    pub fn set_done(&mut self, now_done: u32, waiting: Option<u32>) {
        let waiting = waiting
            .filter(|w| *w > 0)
            .map(|w| format!("{w} waiting for their turn"));
        match self {
            Progress::Bar(bar) => {
                bar.set_position(u64::from(now_done));
                bar.set_message(waiting.unwrap_or_default());
            }
            Progress::Lines { total, done, last } => {
                // Plain logs get a line when something changed, at most one a second.
                let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
                if now_done != *done && (due || now_done == *total) {
                    *done = now_done;
                    *last = Some(Instant::now());
                    match waiting {
                        Some(w) => eprintln!("isotest: {now_done}/{total} tests done, {w}"),
                        None => eprintln!("isotest: {now_done}/{total} tests done"),
                    }
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

/// Where a suite runs, for the line that announces it.
#[derive(Debug, Clone, Copy)]
pub enum Where<'a> {
    /// On a server: the absolute URL of the suite's status (and of its `DELETE`).
    Server { status_url: &'a str },
    /// On this machine, this many tests at once.
    Here { concurrency: usize },
}

/// The first line of a run, before any test ends: the suite's id, how many tests it has
/// and where to follow it, alike in both modes, so that a CI log of a job killed early
/// still names the suite.
pub fn started_line(id: &str, tests: u32, at: Where<'_>) -> String {
    let tests = match tests {
        1 => "1 test".to_owned(),
        n => format!("{n} tests"),
    };
    match at {
        Where::Server { status_url } => {
            format!("isotest: suite {id} submitted, {tests}; status: {status_url}")
        }
        Where::Here { concurrency } => {
            format!("isotest: suite {id} running here, {tests}, {concurrency} at a time")
        }
    }
}

/// Prints [`started_line`] on stderr, unless the run is quiet.
pub fn started(id: &str, tests: u32, at: Where<'_>, quiet: bool) {
    if !quiet {
        eprintln!("{}", started_line(id, tests, at));
    }
}

/// Writes the reports asked for, prints the summary, and gives the exit code.
///
/// # Errors
///
/// Returns [`Failure::BadInput`] when a report file cannot be written.
pub fn finish(report: &Report, args: &RunArgs) -> Result<u8, Failure> {
    write_reports(
        report,
        args.reports.json.as_deref(),
        args.reports.junit.as_deref(),
        args.reports.ctrf.as_deref(),
    )?;
    print_summary(report);
    print!("{}", rerun_hint(report, args));
    Ok(if report.passed() {
        exit::PASSED
    } else {
        exit::TESTS_FAILED
    })
}

/// Writes the reports asked for: JSON, JUnit XML, CTRF.
///
/// # Errors
///
/// Returns [`Failure::BadInput`] when a report file cannot be written.
pub fn write_reports(
    report: &Report,
    json: Option<&Path>,
    junit: Option<&Path>,
    ctrf: Option<&Path>,
) -> Result<(), Failure> {
    if let Some(path) = json {
        let json = serde_json::to_string_pretty(report).map_err(|e| Failure::Service(e.into()))?;
        write(path, json.as_bytes())?;
    }
    if let Some(path) = junit {
        write(path, isotest_report::junit(report).as_bytes())?;
    }
    if let Some(path) = ctrf {
        let ctrf = serde_json::to_string_pretty(&isotest_report::ctrf(report))
            .map_err(|e| Failure::Service(e.into()))?;
        write(path, ctrf.as_bytes())?;
    }
    Ok(())
}

/// Prints the summary on stdout, coloured on a terminal unless `NO_COLOR` says not.
pub fn print_summary(report: &Report) {
    let color = use_color(
        std::io::stdout().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    print!("{}", isotest_report::terminal_summary(report, color));
}

/// Whether the summary is coloured: on a terminal, unless `NO_COLOR` is set to anything
/// but the empty string (no-color.org).
fn use_color(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(std::ffi::OsStr::is_empty)
}

/// How many failing tests get a rerun command in the summary.
const RERUN_LINES: usize = 5;

/// The commands that rerun failing tests on this machine, one each.
fn rerun_hint(report: &Report, args: &RunArgs) -> String {
    let failing: Vec<&str> = report
        .tests
        .iter()
        .filter(|t| !t.status.is_success())
        .map(|t| t.name.as_str())
        .collect();
    if failing.is_empty() {
        return String::new();
    }
    let manifest = shell_quote(&args.manifest.display().to_string());
    let mut out = String::from("\nRerun a test locally:\n");
    for name in failing.iter().take(RERUN_LINES) {
        out.push_str(&format!(
            "  isotest run {manifest} --only {}\n",
            shell_quote(name)
        ));
    }
    if failing.len() > RERUN_LINES {
        out.push_str(&format!("  … and {} more\n", failing.len() - RERUN_LINES));
    }
    out
}

/// Quotes a word for a POSIX shell when it needs it.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    std::fs::write(path, bytes)
        .map_err(|e| Failure::BadInput(format!("cannot write the report {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::{Where, shell_quote, started_line, use_color};

    #[test]
    fn the_first_line_names_the_suite_in_both_modes() {
        let id = "0193a4f2-7c1e-7d2a-9b3e-5f6a7b8c9d0e";
        let status_url = format!("http://ci.example.com:8080/v1/suites/{id}");
        let lines = [
            started_line(
                id,
                3,
                Where::Server {
                    status_url: &status_url,
                },
            ),
            started_line(id, 1, Where::Here { concurrency: 4 }),
        ];
        insta::assert_snapshot!(lines.join("\n"));
    }

    #[test]
    fn no_color_turns_colour_off_unless_empty() {
        use std::ffi::OsStr;
        let cases = [
            (true, None, true),
            (true, Some(OsStr::new("1")), false),
            (true, Some(OsStr::new("")), true),
            (false, None, false),
        ];
        for (terminal, no_color, want) in cases {
            assert_eq!(
                use_color(terminal, no_color),
                want,
                "{terminal} {no_color:?}"
            );
        }
    }

    #[test]
    fn quotes_only_what_a_shell_would_split() {
        let cases = [
            ("t01", "t01"),
            ("suite.toml", "suite.toml"),
            ("has space", "'has space'"),
            ("it's", "'it'\\''s'"),
            ("", "''"),
        ];
        for (word, quoted) in cases {
            assert_eq!(shell_quote(word), quoted, "{word}");
        }
    }
}
