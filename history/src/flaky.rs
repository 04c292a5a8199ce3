//! Flaky tests: telling a test that passes and fails on the same inputs from one that
//! is broken. [`assess`] scores one test's runs (pure, so its rules are unit-tested);
//! [`History::flaky`] scores every test with recent runs.
//!
//! The rules: a run is a *flaky signal* when it passed on a retry after failing, or
//! when its verdict differs from the previous run with the same input digest. Runs the
//! infrastructure decided, runs of suites that were outages (most tests failed), and
//! runs without a verdict (skipped, lost, cancelled) do not count. The score is the
//! share of signals among the last [`FlakyPolicy::window`] counted runs; a test whose
//! last [`FlakyPolicy::clear_after`] counted runs all passed at the first attempt is
//! cleared, whatever its score.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::read::{Owner, TestRun};
use crate::write::is_verdict;
use crate::{History, HistoryError};

/// How flakiness is scored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlakyPolicy {
    /// The counted runs a score is taken over, newest first.
    pub window: usize,
    /// Passes in a row (at the first attempt) that clear a test.
    pub clear_after: usize,
    /// The lowest score that flags a test (one signal in a full window is
    /// `1 / window`).
    pub min_score: f64,
}

impl Default for FlakyPolicy {
    fn default() -> Self {
        FlakyPolicy {
            window: 20,
            clear_after: 10,
            min_score: 0.0,
        }
    }
}

/// A test found flaky.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlakyTest {
    pub suite: String,
    pub test: String,
    /// Signals over counted runs in the window, 0 to 1.
    pub score: f64,
    pub signals: u32,
    /// Counted runs in the window.
    pub runs: u32,
    /// The newest counted run that did not pass, if any in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<TestRun>,
}

/// One test's score from its runs (any order; the store's runs of one suite name and
/// test name): `Some` when it is flaky under `policy`.
pub fn assess(runs: &[TestRun], policy: &FlakyPolicy) -> Option<FlakyTest> {
    let mut counted: Vec<&TestRun> = runs
        .iter()
        .filter(|r| !r.infrastructure && !r.outage && is_verdict(&r.status))
        .collect();
    // Oldest first, so that "the previous run with the same digest" is the one before.
    counted.sort_by(|a, b| (a.finished_at_ms, &a.suite_id).cmp(&(b.finished_at_ms, &b.suite_id)));
    let window_start = counted.len().saturating_sub(policy.window.max(1));
    let window = &counted[window_start..];
    let first = window.first()?;

    let trailing_clean = window
        .iter()
        .rev()
        .take_while(|r| r.status == "passed" && !r.flaky)
        .count();
    if trailing_clean >= policy.clear_after.max(1) {
        return None;
    }

    // The verdict of the last run per digest, seeded from the runs before the window so
    // that the window's first run can flip too.
    let mut last_verdict: HashMap<&str, bool> = HashMap::new();
    for r in &counted[..window_start] {
        if let Some(d) = &r.digest {
            last_verdict.insert(d, r.status == "passed");
        }
    }
    let mut signals = 0u32;
    for r in window {
        let passed = r.status == "passed";
        let flipped = r
            .digest
            .as_deref()
            .and_then(|d| last_verdict.insert(d, passed))
            .is_some_and(|before| before != passed);
        if r.flaky || flipped {
            signals += 1;
        }
    }
    let runs_in_window = u32::try_from(window.len()).unwrap_or(u32::MAX);
    let score = f64::from(signals) / f64::from(runs_in_window);
    if signals == 0 || score < policy.min_score {
        return None;
    }
    Some(FlakyTest {
        suite: first.suite_name.clone(),
        test: first.test.clone(),
        score,
        signals,
        runs: runs_in_window,
        last_failure: window
            .iter()
            .rev()
            .find(|r| r.status != "passed")
            .map(|r| (*r).clone()),
    })
}

impl History {
    /// Every test flaky under `policy` among the runs that finished since `since_ms`
    /// in suites of `owner`, highest score first.
    ///
    /// # Errors
    ///
    /// Returns [`HistoryError::Query`] when the database fails.
    pub async fn flaky(
        &self,
        since_ms: u64,
        owner: Owner<'_>,
        policy: &FlakyPolicy,
    ) -> Result<Vec<FlakyTest>, HistoryError> {
        let runs = self.counted_runs(since_ms, None, owner).await?;
        Ok(score_all(runs, policy))
    }

    /// As [`History::flaky`], among the tests of suites named `suite` only (any owner).
    ///
    /// # Errors
    ///
    /// Returns [`HistoryError::Query`] when the database fails.
    pub async fn flaky_in_suite(
        &self,
        suite: &str,
        since_ms: u64,
        policy: &FlakyPolicy,
    ) -> Result<Vec<FlakyTest>, HistoryError> {
        let runs = self.counted_runs(since_ms, Some(suite), Owner::Any).await?;
        Ok(score_all(runs, policy))
    }
}

/// Scores the runs of each test (by suite name and test name), highest score first.
fn score_all(runs: Vec<TestRun>, policy: &FlakyPolicy) -> Vec<FlakyTest> {
    let mut by_test: BTreeMap<(String, String), Vec<TestRun>> = BTreeMap::new();
    for run in runs {
        by_test
            .entry((run.suite_name.clone(), run.test.clone()))
            .or_default()
            .push(run);
    }
    let mut flaky: Vec<FlakyTest> = by_test
        .values()
        .filter_map(|runs| assess(runs, policy))
        .collect();
    flaky.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| (&a.suite, &a.test).cmp(&(&b.suite, &b.test)))
    });
    flaky
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run at instant `at` with `status`, the digest `d`.
    fn run(at: u64, status: &str, digest: &str) -> TestRun {
        TestRun {
            suite_id: format!("s{at:04}"),
            suite_name: "suite".into(),
            test: "t".into(),
            status: status.into(),
            flaky: false,
            duration_ms: 1,
            attempts: 1,
            worker: "w".into(),
            digest: Some(digest.into()),
            exit_code: None,
            output: String::new(),
            finished_at_ms: at,
            infrastructure: false,
            outage: false,
            commit: None,
            branch: None,
        }
    }

    fn runs(statuses: &str, digest: &str) -> Vec<TestRun> {
        statuses
            .chars()
            .enumerate()
            .map(|(i, c)| {
                let status = if c == 'P' { "passed" } else { "failed" };
                run(i as u64, status, digest)
            })
            .collect()
    }

    #[test]
    fn scores_flips_on_the_same_digest_and_clears_after_passes_in_a_row() {
        let policy = FlakyPolicy::default();
        // (runs, flagged)
        let cases = [
            ("PPPPPPPP", false),
            ("FFFFFFFF", false),
            ("PPPPFFFF", true),
            ("PFPPPPPPPPPPP", false),
            ("PFPPPPPPP", true),
        ];
        for (statuses, flagged) in cases {
            let found = assess(&runs(statuses, "d"), &policy);
            assert_eq!(found.is_some(), flagged, "{statuses}: {found:?}");
        }
        let flaky = assess(&runs("PFPF", "d"), &policy).expect("flaky");
        assert_eq!((flaky.signals, flaky.runs), (3, 4));
        assert_eq!(flaky.last_failure.map(|r| r.finished_at_ms), Some(3));
    }

    #[test]
    fn a_new_digest_that_fails_is_broken_not_flaky() {
        let mut history = runs("PPPP", "old");
        history.extend(runs("FFFF", "new").into_iter().map(|mut r| {
            r.finished_at_ms += 10;
            r
        }));
        assert_eq!(assess(&history, &FlakyPolicy::default()), None);
    }

    #[test]
    fn passing_on_a_retry_is_a_signal_and_outages_and_infrastructure_do_not_count() {
        let mut history = runs("PPP", "d");
        history[1].flaky = true;
        assert_eq!(
            assess(&history, &FlakyPolicy::default()).map(|f| f.signals),
            Some(1)
        );

        let mut outage = runs("PFP", "d");
        outage[1].outage = true;
        assert_eq!(assess(&outage, &FlakyPolicy::default()), None);
        let mut infra = runs("PFP", "d");
        infra[1].infrastructure = true;
        infra[1].status = "error".into();
        assert_eq!(assess(&infra, &FlakyPolicy::default()), None);
    }

    #[test]
    fn a_minimum_score_leaves_rare_flips_out() {
        let policy = FlakyPolicy {
            min_score: 0.5,
            ..FlakyPolicy::default()
        };
        assert_eq!(assess(&runs("PPPPPPF", "d"), &policy), None);
        assert!(assess(&runs("PFPF", "d"), &policy).is_some());
    }
}
