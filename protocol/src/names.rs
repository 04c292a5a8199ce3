//! The names of every queue, exchange and Redis key, all under one namespace so that
//! several deployments (or test runs) share a broker and a Redis without meeting.

use std::fmt;

/// A validated namespace: the prefix of every queue, exchange and key isotest uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace(String);

/// A namespace that cannot be used as a queue and key prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("namespace `{0}` is invalid: use 1 to 64 of a-z, 0-9, `-` and `_`")]
pub struct InvalidNamespace(pub String);

impl Namespace {
    /// The namespace used when none is given.
    pub const DEFAULT: &'static str = "isotest";

    /// Checks and wraps a namespace.
    ///
    /// # Errors
    ///
    /// Returns [`InvalidNamespace`] unless the name is 1 to 64 of `a-z 0-9 - _`.
    pub fn new(name: &str) -> Result<Namespace, InvalidNamespace> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if valid {
            Ok(Namespace(name.to_owned()))
        } else {
            Err(InvalidNamespace(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The durable queue holding one message per test attempt.
    pub fn tests_queue(&self) -> String {
        format!("{}.tests", self.0)
    }

    /// Where messages go that exceeded their delivery limit.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dead", self.0)
    }

    /// The queue bound to [`Namespace::dead_letter_exchange`].
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.tests.dead", self.0)
    }

    /// JSON [`crate::api::SuiteRecord`]: what the producer recorded before publishing.
    pub fn suite_key(&self, suite_id: &str) -> String {
        format!("{}:suite:{suite_id}", self.0)
    }

    /// Hash `name#attempt` → JSON [`crate::result::TestResult`], first writer wins.
    pub fn results_key(&self, suite_id: &str) -> String {
        format!("{}:suite:{suite_id}:results", self.0)
    }

    /// Set of test names whose final attempt has a result.
    pub fn done_key(&self, suite_id: &str) -> String {
        format!("{}:suite:{suite_id}:done", self.0)
    }

    /// Stream of the suite's live events (a result written, the suite ended), which the
    /// dashboard streams to browsers; bounded, and expiring a while after the deadline.
    pub fn suite_events_key(&self, suite_id: &str) -> String {
        format!("{}:suite:{suite_id}:events", self.0)
    }

    /// JSON [`crate::report::Report`], written once, when the suite completes.
    pub fn report_key(&self, suite_id: &str) -> String {
        format!("{}:suite:{suite_id}:report", self.0)
    }

    /// Sorted set of open suite ids scored by their deadline (ms since the epoch).
    pub fn open_suites_key(&self) -> String {
        format!("{}:suites:open", self.0)
    }

    /// Sorted set of suite ids whose `suite.finished` webhook is not delivered yet,
    /// scored by when an aggregator may (next) try (ms since the epoch).
    pub fn webhooks_key(&self) -> String {
        format!("{}:webhooks", self.0)
    }

    /// Sorted set of suite ids whose report is stored but not yet in the history store,
    /// scored by when the report was stored (ms since the epoch). The report's one
    /// write adds to it; an aggregator with a history store takes from it.
    pub fn history_pending_key(&self) -> String {
        format!("{}:history:pending", self.0)
    }

    /// Every Redis key of one suite's data (record, results, done set, report): what
    /// expires once the suite is in the history store.
    pub fn suite_keys(&self, suite_id: &str) -> [String; 4] {
        [
            self.suite_key(suite_id),
            self.results_key(suite_id),
            self.done_key(suite_id),
            self.report_key(suite_id),
        ]
    }

    /// Stream of result notifications, read by aggregators through a consumer group.
    pub fn results_stream(&self) -> String {
        format!("{}:results", self.0)
    }

    /// The aggregators' consumer group on [`Namespace::results_stream`].
    pub fn aggregator_group(&self) -> String {
        "aggregators".to_owned()
    }

    /// Hash sha256 hex of an API token → JSON [`crate::api::TokenRecord`].
    pub fn tokens_key(&self) -> String {
        format!("{}:tokens", self.0)
    }

    /// Hash suite id → test count of the suites a token submitted that may still be
    /// open (entries of ended suites are dropped at that token's next submission).
    pub fn token_suites_key(&self, token_name: &str) -> String {
        format!("{}:token:{token_name}:suites", self.0)
    }

    /// Sorted set of the ids of the latest suites a token (`None`: no token, on an open
    /// producer) submitted, scored by submission time: the dashboard's suite list.
    pub fn recent_suites_key(&self, token_name: Option<&str>) -> String {
        match token_name {
            Some(name) => format!("{}:token:{name}:recent", self.0),
            None => format!("{}:anonymous:recent", self.0),
        }
    }

    /// Sorted set of the ids of the latest suites of every token and none, scored by
    /// submission time: what an admin token lists (`GET /v1/suites`).
    pub fn all_recent_suites_key(&self) -> String {
        format!("{}:recent", self.0)
    }

    /// A dashboard session, under the sha256 (hex) of its cookie: the hash of the API
    /// token it was opened with.
    pub fn ui_session_key(&self, session_hash: &str) -> String {
        format!("{}:ui:session:{session_hash}", self.0)
    }

    /// Counter of the output bytes a suite's results have taken of its budget.
    pub fn output_budget_key(&self, suite_id: &str) -> String {
        format!("{}:suite:{suite_id}:output-bytes", self.0)
    }

    /// Hash sha256 hex → size of the blobs a token uploaded (its blob quota); entries
    /// of expired blobs are dropped at the token's next upload.
    pub fn token_blobs_key(&self, token_name: &str) -> String {
        format!("{}:token:{token_name}:blobs", self.0)
    }

    /// A content-addressed blob (a packed workspace).
    pub fn blob_key(&self, sha256_hex: &str) -> String {
        format!("{}:blob:{sha256_hex}", self.0)
    }

    /// Hash suite id → JSON [`crate::schedule::ScheduledSuite`]: the suites the
    /// dispatcher looks at, from submission until their report exists.
    pub fn scheduled_suites_key(&self) -> String {
        format!("{}:sched:suites", self.0)
    }

    /// List of [`crate::schedule::PendingEntry`]: the suite's tests not yet dispatched to
    /// RabbitMQ, in the order they should go (longest expected first).
    pub fn pending_key(&self, suite_id: &str) -> String {
        format!("{}:suite:{suite_id}:pending", self.0)
    }

    /// Hash test index → JSON [`crate::message::TestMessage`] of its first attempt,
    /// kept until the suite ends so that a dispatch can be made again.
    pub fn messages_key(&self, suite_id: &str) -> String {
        format!("{}:suite:{suite_id}:messages", self.0)
    }

    /// Hash test index → the dispatch token of the one copy of its message a worker
    /// may run (the fence against a copy published by a dispatcher that then died).
    pub fn dispatch_key(&self, suite_id: &str) -> String {
        format!("{}:suite:{suite_id}:dispatch", self.0)
    }

    /// Hash test index → the dispatch token a worker started.
    pub fn started_key(&self, suite_id: &str) -> String {
        format!("{}:suite:{suite_id}:started", self.0)
    }

    /// Counter of the suite's tests dispatched (claimed for RabbitMQ) so far.
    pub fn dispatched_key(&self, suite_id: &str) -> String {
        format!("{}:suite:{suite_id}:dispatched", self.0)
    }

    /// Hash `suite_id|index` → `owner|token|entry`: dispatches claimed but not yet
    /// confirmed by RabbitMQ, which a new leader checks and puts back.
    pub fn claims_key(&self) -> String {
        format!("{}:sched:claims", self.0)
    }

    /// The dispatcher lease: the id of the one producer that dispatches, with a TTL.
    pub fn dispatcher_lease_key(&self) -> String {
        format!("{}:sched:leader", self.0)
    }

    /// Hash worker id → `concurrency:expires_at_ms`: the test slots of live workers.
    pub fn worker_slots_key(&self) -> String {
        format!("{}:workers", self.0)
    }

    /// Hash test name → last duration in ms, of the tests of suites named `suite_name`.
    pub fn durations_key(&self, suite_name: &str) -> String {
        format!("{}:durations:{suite_name}", self.0)
    }
    /// A result cache entry (JSON [`crate::cache::CacheEntry`], with a TTL) under its
    /// key ([`crate::cache::cache_key`]) in its scope.
    pub fn cache_entry_key(&self, scope: &crate::cache::CacheScope, key: &str) -> String {
        match scope {
            crate::cache::CacheScope::Shared => format!("{}:cache:shared:{key}", self.0),
            crate::cache::CacheScope::Token(name) => {
                format!("{}:cache:token:{name}:{key}", self.0)
            }
        }
    }

    /// Hash environment name → the identity the workers that offer it advertise (its
    /// root, toolchain and their limits): what a result cache key covers of it.
    pub fn environments_key(&self) -> String {
        format!("{}:environments", self.0)
    }

    /// Set of the owners of a blob: the names of the tokens that uploaded its bytes
    /// ([`Namespace::ANONYMOUS_OWNER`] for uploads without a token). Only they may
    /// see it or run suites on it.
    pub fn blob_owners_key(&self, sha256_hex: &str) -> String {
        format!("{}:blob-owners:{sha256_hex}", self.0)
    }

    /// The owner of what was uploaded without a token: no token name contains `:`.
    pub const ANONYMOUS_OWNER: &str = ":anonymous";
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_prefix_safe_names_only() {
        for ok in ["isotest", "ci-7", "t_0123456789abcdef"] {
            assert!(Namespace::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Caps", "a.b", "a:b", "a b", &"x".repeat(65)] {
            assert_eq!(
                Namespace::new(bad),
                Err(InvalidNamespace(bad.to_owned())),
                "{bad}"
            );
        }
    }

    #[test]
    fn every_name_carries_the_prefix() {
        let ns = Namespace::new("t1").expect("valid");
        for name in [
            ns.tests_queue(),
            ns.dead_letter_exchange(),
            ns.dead_letter_queue(),
            ns.suite_key("s"),
            ns.results_key("s"),
            ns.done_key("s"),
            ns.report_key("s"),
            ns.open_suites_key(),
            ns.results_stream(),
            ns.blob_key("ab"),
            ns.tokens_key(),
            ns.token_suites_key("ci"),
            ns.scheduled_suites_key(),
            ns.pending_key("s"),
            ns.messages_key("s"),
            ns.dispatch_key("s"),
            ns.started_key("s"),
            ns.dispatched_key("s"),
            ns.claims_key(),
            ns.dispatcher_lease_key(),
            ns.worker_slots_key(),
            ns.durations_key("s"),
            ns.suite_events_key("s"),
            ns.recent_suites_key(Some("ci")),
            ns.recent_suites_key(None),
            ns.ui_session_key("ab"),
        ] {
            assert!(name.starts_with("t1.") || name.starts_with("t1:"), "{name}");
        }
    }
}
