//! The result cache: its key (a pure function of a test's outcome digest, the identity
//! of the environment it runs in and the operator's salt), the scopes entries live in,
//! what a worker is told to write and what an entry holds. A test whose key matches an
//! entry is reported `passed`, [`CachedFrom`] the run that wrote it, and not run.
//!
//! Scopes are the defence against cache poisoning (the class of CVE-2025-36852): only
//! a trusted token's runs write the shared scope, and a trusted run reads nothing else,
//! so an entry an untrusted token wrote first under the same key never reaches it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::result::{CaseResult, Status, TestResult};

/// Where a cached result came from: the suite, and the test's run in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedFrom {
    pub suite_id: String,
    pub test: String,
    /// When that run finished, ms since the epoch.
    pub finished_at_ms: u64,
}

/// Whose cache an entry is in: the shared one, written only by trusted tokens, or one
/// token's own.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheScope {
    Shared,
    /// A token's own (the token's name; `:anonymous` for runs without a token).
    Token(String),
}

impl CacheScope {
    /// The scope a run writes: the shared one for a trusted token, else its own.
    pub fn written_by(trusted: bool, token: &str) -> CacheScope {
        if trusted {
            CacheScope::Shared
        } else {
            CacheScope::Token(token.to_owned())
        }
    }

    /// The scopes a run reads, the first hit winning: a trusted run reads only the
    /// shared scope (nothing an untrusted token wrote), any other the shared one and
    /// then its own.
    pub fn read_by(trusted: bool, token: &str) -> Vec<CacheScope> {
        if trusted {
            vec![CacheScope::Shared]
        } else {
            vec![CacheScope::Shared, CacheScope::Token(token.to_owned())]
        }
    }
}

/// What the producer tells a worker to do with a passed result: write it into the
/// cache under `key`, in `scope`, for `ttl_secs`, if it ran in the environment whose
/// identity the key was made with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheWrite {
    /// [`cache_key`], hex.
    pub key: String,
    pub scope: CacheScope,
    pub ttl_secs: u64,
    /// The identity of the test's environment the key covers (what the workers that
    /// offer it advertised); a worker whose own differs writes nothing.
    pub environment: String,
}

/// A cache entry: what a hit reports of the run that wrote it. Output is not kept (it
/// is in that run's report), so a hit costs nothing of its suite's output budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub schema_version: u32,
    pub suite_id: String,
    pub test: String,
    pub duration_ms: u64,
    pub finished_at_ms: u64,
    pub worker: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The cases the run reported, without their messages and details.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cases: Vec<CaseResult>,
}

impl CacheEntry {
    /// The entry for `result`, if it may be cached: a first attempt that passed and
    /// was final (an attempt after a failure would be a flaky pass), decided by the
    /// test and not by the infrastructure, and not itself served from the cache.
    pub fn of(result: &TestResult) -> Option<CacheEntry> {
        let cacheable = result.status == Status::Passed
            && result.attempt == 1
            && result.is_final
            && !result.infrastructure
            && result.cached_from.is_none();
        cacheable.then(|| CacheEntry {
            schema_version: crate::SCHEMA_VERSION,
            suite_id: result.suite_id.clone(),
            test: result.name.clone(),
            duration_ms: result.duration_ms,
            finished_at_ms: result.finished_at_ms,
            worker: result.worker.clone(),
            exit_code: result.exit_code,
            cases: result
                .cases
                .iter()
                .map(|c| CaseResult {
                    message: None,
                    detail: None,
                    ..c.clone()
                })
                .collect(),
        })
    }

    /// The result of a hit: attempt 1 of `msg`'s test, `passed`, from this entry.
    pub fn hit(&self, msg: &crate::message::TestMessage, now_ms: u64) -> TestResult {
        TestResult {
            schema_version: crate::SCHEMA_VERSION,
            suite_id: msg.suite_id.clone(),
            name: msg.test.name.clone(),
            index: msg.index,
            attempt: 1,
            is_final: true,
            status: Status::Passed,
            reason: Some(format!(
                "cached: passed in suite {} ({})",
                self.suite_id, self.test
            )),
            infrastructure: false,
            stage: None,
            exit_code: self.exit_code,
            duration_ms: 0,
            started_at_ms: now_ms,
            finished_at_ms: now_ms,
            worker: CACHE_WORKER.to_owned(),
            stdout: String::new(),
            stderr: String::new(),
            cases: self.cases.clone(),
            usage: crate::result::Usage::default(),
            timings: crate::result::Timings::default(),
            start: None,
            cached_from: Some(CachedFrom {
                suite_id: self.suite_id.clone(),
                test: self.test.clone(),
                finished_at_ms: self.finished_at_ms,
            }),
        }
    }

    /// Reads an entry, or nothing for one this version cannot read.
    pub fn from_json(text: &[u8]) -> Option<CacheEntry> {
        let entry: CacheEntry = serde_json::from_slice(text).ok()?;
        (entry.schema_version <= crate::SCHEMA_VERSION).then_some(entry)
    }
}

/// The `worker` of a result served from the cache.
pub const CACHE_WORKER: &str = "cache";

/// The environment a test without one runs in, as workers name it.
pub const DEFAULT_ENVIRONMENT: &str = "default";

/// The cache key of a test: the sha256 of its outcome digest
/// ([`crate::message::outcome_digest`]: its fields, workspace and network), the
/// identity of the environment it runs in (its root file system, toolchain and the
/// worker's limits, as the workers advertise it) and the operator's salt, which
/// disowns the whole cache when changed. Lengths are written before each part, so no
/// two different triples hash the same text.
pub fn cache_key(outcome_digest: &str, environment: &str, salt: &str) -> String {
    let mut hasher = Sha256::new();
    for part in ["isotest-cache-v1", outcome_digest, environment, salt] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_of_the_key_moves_it() {
        let base = cache_key("d", "e", "s");
        assert_eq!(base, cache_key("d", "e", "s"));
        for other in [
            cache_key("d2", "e", "s"),
            cache_key("d", "e2", "s"),
            cache_key("d", "e", "s2"),
            cache_key("de", "", "s"),
        ] {
            assert_ne!(other, base);
        }
    }

    #[test]
    fn a_trusted_run_reads_only_what_trusted_runs_write() {
        assert_eq!(CacheScope::read_by(true, "main"), vec![CacheScope::Shared]);
        assert_eq!(CacheScope::written_by(true, "main"), CacheScope::Shared);
        let pr = CacheScope::written_by(false, "pr");
        assert_eq!(pr, CacheScope::Token("pr".into()));
        assert!(!CacheScope::read_by(true, "main").contains(&pr));
        assert_eq!(
            CacheScope::read_by(false, "pr"),
            vec![CacheScope::Shared, CacheScope::Token("pr".into())]
        );
    }

    #[test]
    fn only_first_attempt_passes_are_cached() {
        let msg = crate::message::TestMessage {
            schema_version: crate::SCHEMA_VERSION,
            suite_id: "s".into(),
            index: 0,
            attempt: 1,
            test: crate::message::tests::spec("a"),
            workspace: None,
            network: false,
            warm: true,
            digest: String::new(),
            published_at_ms: 0,
            dispatch: None,
            cache: None,
        };
        let mut passed = TestResult::prepare_error(&msg, "w", "x".into(), 1);
        passed.status = Status::Passed;
        passed.reason = None;
        assert!(CacheEntry::of(&passed).is_some());
        let hit = CacheEntry::of(&passed).expect("cacheable").hit(&msg, 2);
        assert_eq!(hit.status, Status::Passed);
        assert!(CacheEntry::of(&hit).is_none(), "a hit is not cached again");
        type Change = fn(&mut TestResult);
        let cases: [(&str, Change); 4] = [
            ("failed", |r| r.status = Status::Failed),
            ("a retry's pass is flaky", |r| r.attempt = 2),
            ("not final", |r| r.is_final = false),
            ("infrastructure", |r| r.infrastructure = true),
        ];
        for (why, change) in cases {
            let mut result = passed.clone();
            change(&mut result);
            assert!(CacheEntry::of(&result).is_none(), "{why}");
        }
    }
}
