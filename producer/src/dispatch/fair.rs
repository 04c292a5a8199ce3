//! The fair choice of which suites' tests to dispatch next, without I/O: strict
//! priority between classes (`high`, then `normal`, then `low`), stride scheduling
//! between the tokens of a class by weight, and an equal share between a token's
//! suites; a token at its quota is skipped. Shares are charged in expected test time,
//! so a token of long tests does not take more of the slots than its weight says.
//!
//! The passes live in the leader's memory: a new leader starts everyone level, which
//! costs a moment of unfairness, never a test.

use std::collections::HashMap;

use isotest_protocol::schedule::Priority;

/// The fixed-point scale of a pass: a test of `cost` ms advances its token's pass by
/// `cost * SCALE / weight`.
const SCALE: u64 = 1_000;

/// One suite with tests waiting, as the dispatcher read it this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub suite_id: String,
    pub token: String,
    pub weight: u32,
    pub priority: Priority,
    /// Tests of the whole token dispatched and without a final result.
    pub token_running: u64,
    pub quota: Option<u32>,
    /// The costs (expected ms) of the suite's next pending tests, in order; the
    /// suite has no more pending than this this round.
    pub costs: Vec<u64>,
    pub created_at_ms: u64,
}

/// The state of fair sharing across rounds.
#[derive(Debug, Default)]
pub struct Fair {
    token_pass: HashMap<String, u64>,
    suite_pass: HashMap<String, u64>,
    /// The pass of the token last chosen in each class: a token that comes back from
    /// idleness (or its quota) starts there, and does not cash in time it did not use.
    class_time: HashMap<Priority, u64>,
}

impl Fair {
    /// Chooses up to `budget` tests: how many of each candidate's (by position in
    /// `candidates`) to dispatch, in the order chosen.
    pub fn pick(&mut self, candidates: &[Candidate], budget: usize) -> Vec<(usize, usize)> {
        let mut taken = vec![0usize; candidates.len()];
        let mut room: HashMap<&str, u64> = HashMap::new();
        for c in candidates {
            let left = c
                .quota
                .map_or(u64::MAX, |q| u64::from(q).saturating_sub(c.token_running));
            room.insert(c.token.as_str(), left);
        }
        // A suite seen for the first time starts level with its token's busiest peer,
        // so it shares from now on rather than claiming back what it never waited for.
        for c in candidates {
            if !self.suite_pass.contains_key(&c.suite_id) {
                let level = candidates
                    .iter()
                    .filter(|o| o.token == c.token)
                    .filter_map(|o| self.suite_pass.get(&o.suite_id))
                    .min()
                    .copied()
                    .unwrap_or(0);
                self.suite_pass.insert(c.suite_id.clone(), level);
            }
        }
        let mut order = Vec::new();
        for _ in 0..budget {
            let eligible = |i: usize| {
                let c = &candidates[i];
                taken[i] < c.costs.len() && room.get(c.token.as_str()).is_some_and(|r| *r > 0)
            };
            let Some(class) = (0..candidates.len())
                .filter(|&i| eligible(i))
                .map(|i| candidates[i].priority)
                .max()
            else {
                break;
            };
            let floor = self.class_time.get(&class).copied().unwrap_or(0);
            let token_pass =
                |token: &str| self.token_pass.get(token).copied().unwrap_or(0).max(floor);
            // The token of the class with the smallest pass, then its suite with the
            // smallest pass (the oldest on a tie).
            let Some(chosen) = (0..candidates.len())
                .filter(|&i| eligible(i) && candidates[i].priority == class)
                .min_by(|&a, &b| {
                    let (ca, cb) = (&candidates[a], &candidates[b]);
                    (token_pass(&ca.token), &ca.token)
                        .cmp(&(token_pass(&cb.token), &cb.token))
                        .then_with(|| {
                            (
                                self.suite_pass[&ca.suite_id],
                                ca.created_at_ms,
                                &ca.suite_id,
                            )
                                .cmp(&(
                                    self.suite_pass[&cb.suite_id],
                                    cb.created_at_ms,
                                    &cb.suite_id,
                                ))
                        })
                })
            else {
                break;
            };
            let c = &candidates[chosen];
            let cost = c.costs[taken[chosen]].max(1);
            let start = token_pass(&c.token);
            self.class_time.insert(class, start);
            let stride = cost.saturating_mul(SCALE) / u64::from(c.weight.max(1));
            self.token_pass
                .insert(c.token.clone(), start.saturating_add(stride));
            if let Some(pass) = self.suite_pass.get_mut(&c.suite_id) {
                *pass = pass.saturating_add(cost);
            }
            if let Some(r) = room.get_mut(c.token.as_str()) {
                *r -= 1;
            }
            taken[chosen] += 1;
            match order.last_mut() {
                Some((last, n)) if *last == chosen => *n += 1,
                _ => order.push((chosen, 1)),
            }
        }
        order
    }

    /// Forgets the suites not among `live` (ended, or with nothing left to dispatch).
    pub fn retain(&mut self, live: &[&str]) {
        self.suite_pass.retain(|id, _| live.contains(&id.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(suite: &str, token: &str, weight: u32, pending: usize) -> Candidate {
        Candidate {
            suite_id: suite.into(),
            token: token.into(),
            weight,
            priority: Priority::Normal,
            token_running: 0,
            quota: None,
            costs: vec![1_000; pending],
            created_at_ms: 0,
        }
    }

    /// Tests chosen per candidate over `rounds` rounds of `budget`, the candidates'
    /// pending shrinking as they are chosen.
    fn share(mut candidates: Vec<Candidate>, rounds: usize, budget: usize) -> Vec<usize> {
        let mut fair = Fair::default();
        let mut got = vec![0; candidates.len()];
        for _ in 0..rounds {
            for (i, n) in fair.pick(&candidates, budget) {
                got[i] += n;
                candidates[i].costs.drain(..n);
            }
        }
        got
    }

    #[test]
    fn equal_weights_share_equally_and_weights_share_by_weight() {
        let cases = [
            ((1, 1), (200, 200)),
            ((3, 1), (300, 100)),
            ((1, 4), (80, 320)),
        ];
        for ((wa, wb), expected) in cases {
            let got = share(
                vec![
                    candidate("a", "ta", wa, 5_000),
                    candidate("b", "tb", wb, 5_000),
                ],
                100,
                4,
            );
            assert_eq!((got[0], got[1]), expected, "weights {wa}:{wb}");
        }
    }

    #[test]
    fn a_small_suite_is_served_at_once_beside_a_large_one() {
        let mut fair = Fair::default();
        let mut big = candidate("big", "nightly", 1, 20_000);
        for _ in 0..50 {
            fair.pick(std::slice::from_ref(&big), 4);
            big.costs.drain(..4);
        }
        let small = candidate("small", "pr", 1, 5);
        let picks = fair.pick(&[big, small], 4);
        let small_now: usize = picks.iter().filter(|(i, _)| *i == 1).map(|(_, n)| n).sum();
        assert!(small_now >= 2, "{picks:?}");
    }

    #[test]
    fn suites_of_one_token_share_it() {
        let got = share(
            vec![
                candidate("s1", "t", 1, 1_000),
                Candidate {
                    created_at_ms: 1,
                    ..candidate("s2", "t", 1, 1_000)
                },
            ],
            50,
            4,
        );
        assert_eq!(got, [100, 100]);
    }

    #[test]
    fn a_token_at_its_quota_waits_and_others_go_on() {
        let mut fair = Fair::default();
        let quota = |c: Candidate, running| Candidate {
            quota: Some(4),
            token_running: running,
            ..c
        };
        let candidates = [
            quota(candidate("q1", "q", 1, 10), 3),
            quota(candidate("q2", "q", 1, 10), 3),
            candidate("o", "other", 1, 10),
        ];
        let picks = fair.pick(&candidates, 8);
        let of = |i| -> usize { picks.iter().filter(|(c, _)| *c == i).map(|(_, n)| n).sum() };
        assert_eq!(of(0) + of(1), 1, "{picks:?}");
        assert_eq!(of(2), 7, "{picks:?}");
    }

    #[test]
    fn a_higher_priority_goes_first() {
        let mut fair = Fair::default();
        let high = Candidate {
            priority: Priority::High,
            ..candidate("h", "th", 1, 3)
        };
        let picks = fair.pick(&[candidate("n", "tn", 100, 10), high], 5);
        assert_eq!(picks, [(1, 3), (0, 2)]);
    }

    #[test]
    fn shares_are_charged_in_time() {
        // Token a's tests take 5 s, b's 1 s: with equal weights b gets five tests for
        // each of a's.
        let long = Candidate {
            costs: vec![5_000; 100],
            ..candidate("a", "ta", 1, 0)
        };
        let got = share(vec![long, candidate("b", "tb", 1, 1_000)], 10, 6);
        assert_eq!(got, [10, 50]);
    }
}
