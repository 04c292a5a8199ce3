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
        ] {
            assert!(name.starts_with("t1.") || name.starts_with("t1:"), "{name}");
        }
    }
}
