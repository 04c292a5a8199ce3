//! The order of a suite's tests inside the suite: longest expected first, so the
//! suite's wall time approaches max(total work ÷ slots, longest test) instead of being
//! set by a long test that happens to come last. Pure, so every case is tested here.

use isotest_protocol::schedule::PendingEntry;

/// What a test costs the scheduler's fair share when nothing is known of its suite:
/// every such test counts the same, so shares are by test count until a run is known.
pub const UNKNOWN_COST_MS: u64 = 1_000;

/// One test as the order sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    /// The test's timeout, the only hint when the suite has never run.
    pub timeout_ms: u64,
    /// Its duration in the last run that gave it a verdict.
    pub last_ms: Option<u64>,
}

/// The suite's pending entries in dispatch order. A test's expected time is its last
/// duration; a test never seen counts as the median of the suite's known tests; when
/// none is known, the expected time is 0 (unknown) and the order is by timeout, longest
/// first. Ties keep manifest order.
pub fn order(tests: &[Known]) -> Vec<PendingEntry> {
    let mut known: Vec<u64> = tests.iter().filter_map(|t| t.last_ms).collect();
    known.sort_unstable();
    let median = (!known.is_empty()).then(|| known[known.len() / 2]);
    let mut entries: Vec<(PendingEntry, u64)> = tests
        .iter()
        .enumerate()
        .map(|(index, test)| {
            let expected_ms = test.last_ms.or(median).unwrap_or(0);
            let key = if median.is_some() {
                expected_ms
            } else {
                test.timeout_ms
            };
            (
                PendingEntry {
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    expected_ms,
                },
                key,
            )
        })
        .collect();
    // Stable: equal keys keep manifest order.
    entries.sort_by_key(|e| std::cmp::Reverse(e.1));
    entries.into_iter().map(|(entry, _)| entry).collect()
}

/// What dispatching an entry costs its token's share, in expected ms.
pub fn cost(entry: PendingEntry) -> u64 {
    if entry.expected_ms == 0 {
        UNKNOWN_COST_MS
    } else {
        entry.expected_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(timeout_ms: u64, last_ms: Option<u64>) -> Known {
        Known {
            timeout_ms,
            last_ms,
        }
    }

    fn indexes(entries: &[PendingEntry]) -> Vec<u32> {
        entries.iter().map(|e| e.index).collect()
    }

    #[test]
    fn longest_known_first_unknown_as_the_median() {
        let tests = [
            known(60_000, Some(100)),
            known(60_000, Some(5_000)),
            known(60_000, None),
            known(60_000, Some(300)),
            known(60_000, Some(2_000)),
        ];
        let entries = order(&tests);
        // Known: 100, 300, 2000, 5000 → median (upper) 2000; the unknown test ties with
        // test 4 and comes after it only by manifest order (it is index 2, before 4).
        assert_eq!(indexes(&entries), [1, 2, 4, 3, 0]);
        assert_eq!(entries[1].expected_ms, 2_000);
    }

    #[test]
    fn nothing_known_orders_by_timeout() {
        let tests = [
            known(1_000, None),
            known(30_000, None),
            known(1_000, None),
            known(10_000, None),
        ];
        let entries = order(&tests);
        assert_eq!(indexes(&entries), [1, 3, 0, 2]);
        assert!(entries.iter().all(|e| e.expected_ms == 0));
        assert_eq!(cost(entries[0]), UNKNOWN_COST_MS);
    }

    #[test]
    fn ten_long_tests_of_two_hundred_go_first() {
        let tests: Vec<Known> = (0..200)
            .map(|i| known(60_000, Some(if i >= 190 { 5_000 } else { 100 })))
            .collect();
        let entries = order(&tests);
        assert_eq!(indexes(&entries[..10]), (190..200).collect::<Vec<_>>());
        assert_eq!(cost(entries[10]), 100);
    }
}
