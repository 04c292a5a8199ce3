//! The history commands (`history`, `suites`, `status`, `flaky`, `quarantine`) and
//! embedded mode's use of the history store: the quarantine a suite runs with, and the
//! suite recorded once it ends. They read the store at `--history-url`
//! (`ISOTEST_HISTORY_URL`), by default this user's SQLite file
//! ([`isotest_history::default_sqlite_path`]).

use std::fmt::Write as _;
use std::time::Duration;

use clap::{Args, Subcommand};

use isotest_history::quarantine::Scope;
use isotest_history::write::digests_of;
use isotest_history::{FlakyPolicy, History, Owner, SuiteEntry, SuiteRow};
use isotest_protocol::api::{SuiteRecord, meta};
use isotest_protocol::report::Report;

use crate::args::parse_age;
use crate::exit::{self, Failure};

/// Where the history is kept.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// The history store: `postgres://…`, or a SQLite file (default
    /// `$XDG_DATA_HOME/isotest/history.sqlite`, else `~/.local/share/isotest/history.sqlite`).
    #[arg(long, env = "ISOTEST_HISTORY_URL")]
    pub history_url: Option<String>,
}

impl StoreArgs {
    /// The store's URL: the one given, else the default SQLite file.
    ///
    /// # Errors
    ///
    /// Returns [`Failure::BadInput`] when none is given and there is no home folder.
    pub fn url(&self) -> Result<String, Failure> {
        match &self.history_url {
            Some(url) => Ok(url.clone()),
            None => isotest_history::default_sqlite_path()
                .map(|p| p.display().to_string())
                .ok_or_else(|| {
                    Failure::BadInput(
                        "no history store: give --history-url (ISOTEST_HISTORY_URL), or set HOME"
                            .into(),
                    )
                }),
        }
    }

    /// Opens the store.
    ///
    /// # Errors
    ///
    /// Returns [`Failure::History`] when it cannot be opened.
    pub async fn open(&self) -> Result<History, Failure> {
        let url = self.url()?;
        History::open(&url).await.map_err(store_failure)
    }
}

/// A failure of the history store, as its one line.
pub fn store_failure(error: isotest_history::HistoryError) -> Failure {
    Failure::History(isotest_infra::error_chain(&error))
}

/// `isotest history TEST_ID` or `isotest history prune --older-than 90d`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct HistoryArgs {
    #[command(subcommand)]
    pub command: Option<HistoryCommand>,
    /// The test whose last runs to show (its name in its suite).
    pub test: Option<String>,
    /// Only runs in suites of this name.
    #[arg(long)]
    pub suite: Option<String>,
    /// How many runs to show.
    #[arg(long, default_value_t = 20)]
    pub last: u32,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Subcommand)]
pub enum HistoryCommand {
    /// Delete the suites (and their test runs) that ended before a time ago.
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Delete what ended longer ago than this ("90d", "12h").
    #[arg(long, value_parser = parse_age)]
    pub older_than: Duration,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `isotest suites`.
#[derive(Debug, Args)]
pub struct SuitesArgs {
    /// How many suites to show, the most recent first.
    #[arg(long, default_value_t = 20)]
    pub last: u32,
    /// Only the suites of this API token (by name; history store only).
    #[arg(long = "token-name", conflicts_with = "server")]
    pub token_name: Option<String>,
    /// Ask this isotest server (producer) for the suites it holds that the token may
    /// see (default: the config file's, unless --history-url is given).
    #[arg(long, env = "ISOTEST_SERVER")]
    pub server: Option<String>,
    /// The API token the server asks for.
    #[arg(long, env = "ISOTEST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// The server a history command asks instead of the store: `--server`
/// (`ISOTEST_SERVER`), else the config file's unless a store is named.
fn server_of(
    server: Option<&str>,
    token: Option<&str>,
    store: &StoreArgs,
) -> Result<Option<crate::user_config::Server>, Failure> {
    if server.is_none() && store.history_url.is_some() {
        return Ok(None);
    }
    Ok(crate::user_config::load()?.resolve(server, token))
}

/// `isotest status SUITE_ID`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The suite's id.
    pub suite_id: String,
    /// Ask this isotest server (producer); without it (or the config file's), the
    /// history store.
    #[arg(long, env = "ISOTEST_SERVER")]
    pub server: Option<String>,
    /// The API token the server asks for.
    #[arg(long, env = "ISOTEST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `isotest flaky`.
#[derive(Debug, Args)]
pub struct FlakyArgs {
    /// Runs of the last this long count.
    #[arg(long, default_value = "30d", value_parser = parse_age)]
    pub since: Duration,
    /// The counted runs a score is taken over.
    #[arg(long, default_value_t = 20)]
    pub window: usize,
    /// Passes in a row that clear a test.
    #[arg(long, default_value_t = 10)]
    pub clear_after: usize,
    /// The lowest score listed (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    pub min_score: f64,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `isotest quarantine add|remove|list`.
#[derive(Debug, Args)]
pub struct QuarantineArgs {
    #[command(subcommand)]
    pub command: QuarantineCommand,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// Quarantine a test: it still runs and is reported, but its failure does not fail
    /// the suite.
    Add {
        test: String,
        #[command(flatten)]
        scope: ScopeArgs,
        /// Why, for whoever lists the quarantine.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Take a test out of quarantine.
    Remove {
        test: String,
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// List the quarantined tests.
    List,
}

/// Which suites a quarantine applies to: one token's, one repository's, or (neither
/// given) every suite.
#[derive(Debug, Args)]
pub struct ScopeArgs {
    /// Only the suites submitted with this API token (by name).
    #[arg(long = "token-name", conflicts_with = "repo")]
    pub token_name: Option<String>,
    /// Only the suites whose `repository` metadata is this.
    #[arg(long)]
    pub repo: Option<String>,
}

impl ScopeArgs {
    fn scope(&self) -> Scope {
        match (&self.token_name, &self.repo) {
            (Some(token), _) => Scope::Token(token.clone()),
            (None, Some(repo)) => Scope::Repository(repo.clone()),
            (None, None) => Scope::All,
        }
    }
}

/// `isotest history`.
///
/// # Errors
///
/// Returns [`Failure::History`] when the store fails, [`Failure::BadInput`] without a
/// test to show.
pub async fn history(args: HistoryArgs) -> Result<u8, Failure> {
    if let Some(HistoryCommand::Prune(prune)) = args.command {
        let history = prune.store.open().await?;
        let before = isotest_protocol::now_ms()
            .saturating_sub(u64::try_from(prune.older_than.as_millis()).unwrap_or(u64::MAX));
        let removed = history.prune(before).await.map_err(store_failure)?;
        println!(
            "Pruned {removed} suites that ended more than {} ago.",
            isotest_protocol::duration::format(prune.older_than)
        );
        return Ok(exit::PASSED);
    }
    let Some(test) = args.test else {
        return Err(Failure::BadInput(
            "give a test name (`isotest history TEST_ID`) or `isotest history prune --older-than 90d`".into(),
        ));
    };
    let history = args.store.open().await?;
    let runs = history
        .test_runs(&test, args.suite.as_deref(), Owner::Any, args.last)
        .await
        .map_err(store_failure)?;
    if runs.is_empty() {
        println!("No runs of `{test}` in the history.");
        return Ok(exit::PASSED);
    }
    let mut out = format!(
        "{:<24} {:<10} {:>9} {:>8}  {:<12} {:<20} {}\n",
        "FINISHED (UTC)", "STATUS", "DURATION", "ATTEMPTS", "COMMIT", "WORKER", "SUITE"
    );
    for run in &runs {
        let status = if run.flaky {
            format!("{} ~", run.status)
        } else {
            run.status.clone()
        };
        let _ = writeln!(
            out,
            "{:<24} {:<10} {:>9} {:>8}  {:<12} {:<20} {}",
            timestamp(run.finished_at_ms),
            status,
            format!("{} ms", run.duration_ms),
            run.attempts,
            short(run.commit.as_deref().unwrap_or("-"), 12),
            short(&run.worker, 20),
            run.suite_id
        );
    }
    print!("{out}");
    Ok(exit::PASSED)
}

/// `isotest suites`.
///
/// # Errors
///
/// Returns [`Failure::History`] when the store fails.
pub async fn suites(args: SuitesArgs) -> Result<u8, Failure> {
    if args.token_name.is_none()
        && let Some(server) = server_of(args.server.as_deref(), args.token.as_deref(), &args.store)?
    {
        let rows = crate::client::suites(&server, args.last).await?;
        print!("{}", server_suites(&rows));
        return Ok(exit::PASSED);
    }
    let history = args.store.open().await?;
    let suites = history
        .suites(
            args.last,
            args.token_name.as_deref().map_or(Owner::Any, Owner::Token),
        )
        .await
        .map_err(store_failure)?;
    if suites.is_empty() {
        println!("No suites in the history.");
        return Ok(exit::PASSED);
    }
    let mut out = format!(
        "{:<36}  {:<24} {:<18} {:>6} {:>6} {:>6}  {:<12} {}\n",
        "ID", "FINISHED (UTC)", "STATE", "TOTAL", "PASSED", "FAILED", "COMMIT", "NAME"
    );
    for suite in &suites {
        let _ = writeln!(
            out,
            "{:<36}  {:<24} {:<18} {:>6} {:>6} {:>6}  {:<12} {}",
            suite.id,
            timestamp(suite.finished_at_ms),
            suite.state,
            suite.total,
            suite.passed,
            suite.failed,
            short(suite.meta.get(meta::COMMIT).map_or("-", String::as_str), 12),
            suite.name
        );
    }
    print!("{out}");
    Ok(exit::PASSED)
}

/// The table of `isotest suites` from a server.
fn server_suites(rows: &[isotest_protocol::live::SuiteRow]) -> String {
    if rows.is_empty() {
        return "No suites on the server.\n".to_owned();
    }
    let mut out = format!(
        "{:<36}  {:<24} {:<18} {:>6} {:>6} {:>6} {:>6}  {}\n",
        "ID", "SUBMITTED (UTC)", "STATE", "TOTAL", "DONE", "PASSED", "FAILED", "NAME"
    );
    for row in rows {
        let (passed, failed) = row.summary.as_ref().map_or_else(
            || ("-".to_owned(), "-".to_owned()),
            |s| {
                (
                    s.passed.to_string(),
                    s.total.saturating_sub(s.passed + s.skipped).to_string(),
                )
            },
        );
        let _ = writeln!(
            out,
            "{:<36}  {:<24} {:<18} {:>6} {:>6} {:>6} {:>6}  {}",
            row.id,
            timestamp(row.created_at_ms),
            row.state.as_str(),
            row.total,
            row.done,
            passed,
            failed,
            row.name
        );
    }
    out
}

/// `isotest status SUITE_ID`: the suite's state and counts, from a server (`--server`: one
/// line, exiting as its report would) or from the history store (exit 0 when it is known).
///
/// # Errors
///
/// Returns [`Failure::BadInput`] for an unknown suite, [`Failure::Unreachable`] for a
/// server that does not answer, [`Failure::History`] when the store fails.
pub async fn status(args: StatusArgs) -> Result<u8, Failure> {
    if let Some(server) = server_of(args.server.as_deref(), args.token.as_deref(), &args.store)? {
        // The server's view, one line, exiting as the suite's report would.
        return crate::client::status(&crate::args::SuiteArgs {
            id: args.suite_id.clone(),
            server: Some(server.url),
            token: server.token,
        })
        .await;
    }
    let history = args.store.open().await?;
    let Some(suite) = history.suite(&args.suite_id).await.map_err(store_failure)? else {
        return Err(Failure::BadInput(format!(
            "suite {} is not in the history store (give --server to ask a running server)",
            args.suite_id
        )));
    };
    print!("{}", describe(&suite));
    Ok(exit::PASSED)
}

fn describe(suite: &SuiteRow) -> String {
    let mut out = format!("Suite {} ({}): {}\n", suite.name, suite.id, suite.state);
    let _ = writeln!(
        out,
        "  {} tests: {} passed, {} failed, {} skipped, {} flaky",
        suite.total, suite.passed, suite.failed, suite.skipped, suite.flaky
    );
    let _ = writeln!(
        out,
        "  submitted {}, finished {}",
        timestamp(suite.created_at_ms),
        timestamp(suite.finished_at_ms)
    );
    if let Some(token) = &suite.token {
        let _ = writeln!(out, "  token {token}");
    }
    for (key, value) in &suite.meta {
        let _ = writeln!(out, "  {key}: {value}");
    }
    out
}

/// `isotest flaky`.
///
/// # Errors
///
/// Returns [`Failure::History`] when the store fails.
pub async fn flaky(args: FlakyArgs) -> Result<u8, Failure> {
    let history = args.store.open().await?;
    let since = isotest_protocol::now_ms()
        .saturating_sub(u64::try_from(args.since.as_millis()).unwrap_or(u64::MAX));
    let policy = FlakyPolicy {
        window: args.window,
        clear_after: args.clear_after,
        min_score: args.min_score,
    };
    let flaky = history
        .flaky(since, Owner::Any, &policy)
        .await
        .map_err(store_failure)?;
    if flaky.is_empty() {
        println!("No flaky tests.");
        return Ok(exit::PASSED);
    }
    let mut out = format!(
        "{:>6} {:>8}  {:<24} {:<20} {}\n",
        "SCORE", "SIGNALS", "LAST FAILURE (UTC)", "SUITE", "TEST"
    );
    for test in &flaky {
        let _ = writeln!(
            out,
            "{:>6.2} {:>8}  {:<24} {:<20} {}",
            test.score,
            format!("{}/{}", test.signals, test.runs),
            test.last_failure
                .as_ref()
                .map_or_else(|| "-".to_owned(), |r| timestamp(r.finished_at_ms)),
            short(&test.suite, 20),
            test.test
        );
    }
    print!("{out}");
    Ok(exit::PASSED)
}

/// `isotest quarantine`.
///
/// # Errors
///
/// Returns [`Failure::History`] when the store fails.
pub async fn quarantine(args: QuarantineArgs) -> Result<u8, Failure> {
    let history = args.store.open().await?;
    match args.command {
        QuarantineCommand::Add {
            test,
            scope,
            reason,
        } => {
            let scope = scope.scope();
            let added = history
                .quarantine_add(&scope, &test, &reason, isotest_protocol::now_ms())
                .await
                .map_err(store_failure)?;
            if added {
                println!("Quarantined `{test}` for {scope}.");
            } else {
                println!("`{test}` was already quarantined for {scope}.");
            }
        }
        QuarantineCommand::Remove { test, scope } => {
            let scope = scope.scope();
            let removed = history
                .quarantine_remove(&scope, &test)
                .await
                .map_err(store_failure)?;
            if !removed {
                return Err(Failure::BadInput(format!(
                    "`{test}` is not quarantined for {scope}"
                )));
            }
            println!("`{test}` is out of quarantine for {scope}.");
        }
        QuarantineCommand::List => {
            let list = history.quarantine_list().await.map_err(store_failure)?;
            if list.is_empty() {
                println!("No test is quarantined.");
            }
            for entry in list {
                let reason = if entry.reason.is_empty() {
                    String::new()
                } else {
                    format!("  ({})", entry.reason)
                };
                println!("{:<30} {}{reason}", entry.scope.to_string(), entry.test);
            }
        }
    }
    Ok(exit::PASSED)
}

/// The tests of `record` quarantined for it (everywhere, or for its repository).
/// A store that fails is logged: the suite then runs without quarantine.
pub async fn quarantined(history: &History, record: &SuiteRecord) -> Vec<String> {
    let repository = record.meta.get(meta::REPOSITORY).map(String::as_str);
    match history
        .quarantined_for(record.owner.as_deref(), repository)
        .await
    {
        Ok(list) => list
            .into_iter()
            .filter(|t| record.tests.contains(t))
            .collect(),
        Err(error) => {
            tracing::warn!(error = %isotest_infra::error_chain(&error), "Could not read the quarantine; the suite runs without it.");
            Vec::new()
        }
    }
}

/// Records an embedded run's suite; a store that fails is logged, never fails the run.
pub async fn record(history: &History, record: &SuiteRecord, report: &Report) {
    let digests = digests_of(record);
    let entry = SuiteEntry {
        report,
        token: record.owner.as_deref(),
        meta: &record.meta,
        digests: &digests,
    };
    if let Err(error) = history.record(&entry).await {
        tracing::warn!(error = %isotest_infra::error_chain(&error), "Could not record the suite in the history store.");
    }
}

/// `text` cut to `max` characters.
fn short(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS` (UTC).
fn timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil: the proleptic Gregorian date of a day count.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_dates() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(timestamp(1_764_590_400_123), "2025-12-01 12:00:00");
    }
}
