//! Logging set-up: `RUST_LOG`-style filtering, JSON in production, readable text on a terminal.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The variable holding the log filter, in `RUST_LOG` syntax.
pub const LOG_FILTER_ENV: &str = "RUST_LOG";

/// The variable choosing the log format: `json` or `text`.
pub const LOG_FORMAT_ENV: &str = "ISOTEST_LOG_FORMAT";

/// Installs the global subscriber; `ISOTEST_LOG_FORMAT=json|text` overrides the choice
/// made from whether stderr is a terminal. Safe to call twice (the second call is a no-op).
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_env(LOG_FILTER_ENV).unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = match std::env::var(LOG_FORMAT_ENV).as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // no-color.org: NO_COLOR set to anything but "" turns colour off.
        .with_ansi(
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .with_writer(std::io::stderr);
    // An error here only means a subscriber is already installed (a test, or a second service in one process).
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.compact().try_init()
    };
}
