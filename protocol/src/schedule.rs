//! What the scheduler keeps in Redis between a suite's submission and the dispatch of
//! its tests to RabbitMQ: a token's or suite's [`Priority`], the [`ScheduledSuite`]
//! entry the dispatcher reads, and the [`PendingEntry`] of one test not yet dispatched.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How urgently a token's (or a suite's) tests are dispatched: every test of a higher
/// priority that may run goes before any test of a lower one.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

impl Priority {
    /// Every priority, lowest first.
    pub const ALL: [Priority; 3] = [Priority::Low, Priority::Normal, Priority::High];

    /// The name manifests, tokens and the CLI use.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }

    /// Reads `high`, `normal` or `low`.
    pub fn parse(text: &str) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| p.as_str() == text)
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A suite with tests waiting to be dispatched, as the producer enters it under
/// [`crate::names::Namespace::scheduled_suites_key`]: whose it is and what its token
/// allows. The entry stays until the suite has a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledSuite {
    pub schema_version: u32,
    /// The token's name; empty for a suite submitted without a token.
    #[serde(default)]
    pub token: String,
    /// The token's share against other tokens of the same priority (at least 1).
    pub weight: u32,
    /// The suite's priority (at most its token's).
    pub priority: Priority,
    /// The most tests of the token that may be dispatched and unfinished at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<u32>,
    pub created_at_ms: u64,
}

/// One test waiting in a suite's pending list: its index in the suite and how long it
/// is expected to run, written `index:expected_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingEntry {
    pub index: u32,
    pub expected_ms: u64,
}

impl PendingEntry {
    /// The entry as the list holds it.
    pub fn encode(self) -> String {
        format!("{}:{}", self.index, self.expected_ms)
    }

    /// Reads an entry the producer wrote; `None` for anything else.
    pub fn decode(text: &str) -> Option<PendingEntry> {
        let (index, expected) = text.split_once(':')?;
        Some(PendingEntry {
            index: index.parse().ok()?,
            expected_ms: expected.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_order_and_read() {
        assert!(Priority::High > Priority::Normal && Priority::Normal > Priority::Low);
        for p in Priority::ALL {
            assert_eq!(Priority::parse(p.as_str()), Some(p));
            assert_eq!(
                serde_json::to_string(&p).expect("serializes"),
                format!("\"{p}\"")
            );
        }
        assert_eq!(Priority::parse("urgent"), None);
    }

    #[test]
    fn pending_entries_round_trip() {
        let entry = PendingEntry {
            index: 17,
            expected_ms: 5_000,
        };
        assert_eq!(entry.encode(), "17:5000");
        assert_eq!(PendingEntry::decode("17:5000"), Some(entry));
        for bad in ["", "17", "a:1", "1:b", "-1:3"] {
            assert_eq!(PendingEntry::decode(bad), None, "{bad}");
        }
    }
}
