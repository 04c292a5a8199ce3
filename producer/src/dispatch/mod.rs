//! The dispatcher: the task that moves tests from Redis, where a submission leaves them
//! waiting, to RabbitMQ, a few ahead of the workers and in fair order. Every producer
//! runs one; the holder of a Redis lease dispatches and the others stand by, so
//! replicas are safe side by side. Each round it reads the scheduled suites, keeps the
//! tests queue at about the workers' slots times [`DispatchConfig::ahead`], lets
//! [`fair`] choose whose tests go, and claims, publishes and confirms them through
//! [`isotest_infra::schedule`], whose scripts make a dispatcher killed at any point
//! lose or duplicate nothing. [`order`] sets the order inside a suite at submission.

pub mod fair;
pub mod order;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use isotest_infra::error_chain as chain;
use isotest_infra::schedule::{self, Claim, Claims, Lease};
use isotest_protocol::message::TestMessage;
use isotest_protocol::names::Namespace;
use isotest_protocol::schedule::{PendingEntry, ScheduledSuite};

use crate::publisher::Publisher;
use fair::{Candidate, Fair};

/// How often the dispatcher looks again when nothing woke it.
const ROUND: Duration = Duration::from_millis(10);
/// How often the workers' registered slots are read again.
const SLOTS_EVERY: Duration = Duration::from_secs(1);
/// How often the suites are read while the queue is full (to drop ended ones).
const SCAN_EVERY: Duration = Duration::from_secs(1);
/// The pause after a failed round, so an outage is not hammered.
const FAILED_PAUSE: Duration = Duration::from_millis(500);
/// How long RabbitMQ may take to answer a look at the queue or to confirm a batch:
/// a connection closed under a call can leave its answer pending for good.
const AMQP_TIMEOUT: Duration = Duration::from_secs(5);

/// How the dispatcher keeps the queue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DispatchConfig {
    /// Tests kept ready in RabbitMQ per worker slot (slots: the live workers'
    /// concurrency, or the queue's consumers if more). Small keeps the order fair;
    /// at least 1 keeps every free slot fed.
    pub ahead: f64,
    /// The fewest tests kept ready, whatever the slots.
    pub min_ready: u32,
    /// How long the dispatcher lease lasts without renewal: how soon a standby producer
    /// takes over from one that died.
    pub lease: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            ahead: 2.0,
            min_ready: 4,
            lease: Duration::from_secs(3),
        }
    }
}

/// Why a round stopped early.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("could not use Redis")]
    Redis(#[from] redis::RedisError),
    #[error("could not read the tests queue")]
    Queue(#[source] crate::publisher::PublishError),
    #[error("RabbitMQ did not answer within {}s", AMQP_TIMEOUT.as_secs())]
    Timeout,
}

/// One producer's dispatcher.
#[derive(Debug)]
pub struct Dispatcher {
    conn: ConnectionManager,
    ns: Namespace,
    publisher: Arc<Publisher>,
    config: DispatchConfig,
    /// This process's name in the lease and its claims (`host/pid/random`).
    owner: String,
    leader: bool,
    next_lease: Instant,
    slots: u64,
    next_slots: Instant,
    fair: Fair,
    batch: u64,
    /// Tests kept ready beyond slots × ahead: grown when a round finds the queue empty
    /// (the workers drain it faster than a round refills it, as with trivial tests),
    /// shrunk while it stays fed, so that only fast tests get a longer queue.
    extra: u64,
    /// Tests waiting when the suites were last read.
    waiting: u64,
    /// When the suites are read next even if the queue is full.
    next_scan: Instant,
}

/// A scheduled suite as one round reads it.
struct Scheduled {
    id: String,
    entry: ScheduledSuite,
    pending: u64,
    running: u64,
}

impl Dispatcher {
    pub fn new(
        conn: ConnectionManager,
        ns: Namespace,
        publisher: Arc<Publisher>,
        config: DispatchConfig,
    ) -> Dispatcher {
        let now = Instant::now();
        Dispatcher {
            conn,
            ns,
            publisher,
            config,
            owner: owner_id(),
            leader: false,
            next_lease: now,
            slots: 0,
            next_slots: now,
            fair: Fair::default(),
            batch: 0,
            extra: 0,
            waiting: 0,
            next_scan: now,
        }
    }

    /// Dispatches, or stands by, until `stop`; a submission in this process wakes it
    /// through `wake`. Gives the lease up on the way out.
    pub async fn run(mut self, wake: Arc<Notify>, stop: CancellationToken) {
        tracing::info!(owner = %self.owner, "Dispatcher started.");
        loop {
            let pause = match self.round().await {
                Ok(()) => ROUND,
                Err(error) => {
                    tracing::warn!(error = %chain(&error), "Dispatch round failed; trying again.");
                    FAILED_PAUSE
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = wake.notified() => {}
                () = stop.cancelled() => break,
            }
        }
        if self.leader
            && let Err(error) = schedule::release_lease(&mut self.conn, &self.ns, &self.owner).await
        {
            tracing::warn!(error = %chain(&error), "Could not give the dispatcher lease up.");
        }
        tracing::info!("Dispatcher stopped.");
    }

    /// Renews (or takes) the lease when due; a new leader puts back what earlier
    /// leaders claimed and never confirmed.
    async fn lead(&mut self) -> Result<(), RoundError> {
        let now = Instant::now();
        if now < self.next_lease {
            return Ok(());
        }
        self.next_lease = now + self.config.lease / 3;
        let lease =
            schedule::hold_lease(&mut self.conn, &self.ns, &self.owner, self.config.lease).await?;
        match lease {
            Lease::Taken => {
                self.fair = Fair::default();
                let (back, started) =
                    schedule::put_back(&mut self.conn, &self.ns, Claims::NotOf(&self.owner))
                        .await?;
                tracing::info!(
                    put_back = back,
                    already_started = started,
                    "Took the dispatcher lease."
                );
                self.leader = true;
            }
            Lease::Renewed => self.leader = true,
            Lease::Elsewhere => {
                if self.leader {
                    tracing::warn!("Lost the dispatcher lease; standing by.");
                }
                self.leader = false;
            }
        }
        Ok(())
    }

    /// One round. Cheap when there is nothing to do: idle, it reads one count; busy,
    /// it looks at the queue first and reads the suites only when the queue is short.
    async fn round(&mut self) -> Result<(), RoundError> {
        self.lead().await?;
        if !self.leader {
            return Ok(());
        }
        if self.waiting == 0 {
            let scheduled: u64 =
                redis::AsyncCommands::hlen(&mut self.conn, self.ns.scheduled_suites_key()).await?;
            if scheduled == 0 {
                isotest_infra::metrics::producer().tests_waiting.set(0);
                return Ok(());
            }
        }
        let (ready, consumers) =
            match tokio::time::timeout(AMQP_TIMEOUT, self.publisher.depth()).await {
                Ok(state) => state.map_err(RoundError::Queue)?,
                Err(_) => {
                    self.publisher.reset().await;
                    return Err(RoundError::Timeout);
                }
            };
        if Instant::now() >= self.next_slots {
            self.next_slots = Instant::now() + SLOTS_EVERY;
            self.slots = schedule::live_slots(&mut self.conn, &self.ns).await?;
        }
        let slots = self.slots.max(u64::from(consumers));
        let base = ((slots as f64 * self.config.ahead).ceil() as u64)
            .max(u64::from(self.config.min_ready));
        if self.waiting > 0 {
            self.extra = next_extra(self.extra, u64::from(ready), base, slots);
        }
        let target = base + self.extra;
        let budget = usize::try_from(target.saturating_sub(u64::from(ready))).unwrap_or(0);
        // With the queue full, the suites are read only now and then, to drop the
        // schedules of suites that ended.
        if budget == 0 && self.waiting > 0 && Instant::now() < self.next_scan {
            return Ok(());
        }
        self.next_scan = Instant::now() + SCAN_EVERY;
        let suites = self.scheduled().await?;
        self.waiting = suites.iter().map(|s| s.pending).sum();
        isotest_infra::metrics::producer()
            .tests_waiting
            .set(i64::try_from(self.waiting).unwrap_or(i64::MAX));
        if self.waiting == 0 || budget == 0 {
            return Ok(());
        }
        let candidates = self.candidates(&suites, budget).await?;
        let picks = self.fair.pick(&candidates, budget);
        if picks.is_empty() {
            return Ok(());
        }
        self.dispatch(&candidates, &picks).await
    }

    /// The scheduled suites with their pending and running counts; ended suites are
    /// forgotten here.
    async fn scheduled(&mut self) -> Result<Vec<Scheduled>, RoundError> {
        let ns = &self.ns;
        let entries: HashMap<String, String> =
            redis::AsyncCommands::hgetall(&mut self.conn, ns.scheduled_suites_key()).await?;
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let mut suites = Vec::new();
        for (id, json) in entries {
            match serde_json::from_str::<ScheduledSuite>(&json) {
                Ok(entry) => suites.push(Scheduled {
                    id,
                    entry,
                    pending: 0,
                    running: 0,
                }),
                Err(error) => {
                    tracing::error!(suite_id = %id, %error, "A scheduled suite's entry is not valid; leaving it.");
                }
            }
        }
        let mut pipe = redis::pipe();
        for s in &suites {
            pipe.llen(ns.pending_key(&s.id))
                .get(ns.dispatched_key(&s.id))
                .scard(ns.done_key(&s.id))
                .exists(ns.report_key(&s.id));
        }
        let counts: Vec<(u64, Option<u64>, u64, bool)> = {
            let flat: Vec<redis::Value> = pipe.query_async(&mut self.conn).await?;
            flat.chunks(4)
                .map(|c| {
                    let n = |v: &redis::Value| {
                        redis::from_redis_value::<Option<u64>>(v.clone())
                            .ok()
                            .flatten()
                    };
                    (
                        n(&c[0]).unwrap_or(0),
                        n(&c[1]),
                        n(&c[2]).unwrap_or(0),
                        redis::from_redis_value::<bool>(c[3].clone()).unwrap_or(false),
                    )
                })
                .collect()
        };
        let mut open = Vec::new();
        for (mut s, (pending, dispatched, done, closed)) in suites.into_iter().zip(counts) {
            if closed {
                schedule::forget_suite(&mut self.conn, ns, &s.id, &s.entry.token).await?;
                continue;
            }
            s.pending = pending;
            s.running = dispatched.unwrap_or(0).saturating_sub(done);
            open.push(s);
        }
        let live: Vec<&str> = open
            .iter()
            .filter(|s| s.pending > 0)
            .map(|s| s.id.as_str())
            .collect();
        self.fair.retain(&live);
        Ok(open)
    }

    /// The suites with tests pending, with the costs of their next `budget` tests.
    async fn candidates(
        &mut self,
        suites: &[Scheduled],
        budget: usize,
    ) -> Result<Vec<Candidate>, RoundError> {
        let mut token_running: HashMap<&str, u64> = HashMap::new();
        for s in suites {
            *token_running.entry(s.entry.token.as_str()).or_default() += s.running;
        }
        let waiting: Vec<&Scheduled> = suites.iter().filter(|s| s.pending > 0).collect();
        let mut pipe = redis::pipe();
        for s in &waiting {
            pipe.lrange(
                self.ns.pending_key(&s.id),
                0,
                isize::try_from(budget).unwrap_or(isize::MAX) - 1,
            );
        }
        let heads: Vec<Vec<String>> = pipe.query_async(&mut self.conn).await?;
        Ok(waiting
            .iter()
            .zip(heads)
            .map(|(s, head)| Candidate {
                suite_id: s.id.clone(),
                token: s.entry.token.clone(),
                weight: s.entry.weight,
                priority: s.entry.priority,
                token_running: token_running
                    .get(s.entry.token.as_str())
                    .copied()
                    .unwrap_or(0),
                quota: s.entry.quota,
                costs: head
                    .iter()
                    .map(|e| PendingEntry::decode(e).map_or(order::UNKNOWN_COST_MS, order::cost))
                    .collect(),
                created_at_ms: s.entry.created_at_ms,
            })
            .collect())
    }

    /// Claims the chosen tests, publishes them as one confirmed batch and confirms the
    /// claims; a batch RabbitMQ did not take goes back to the head of its suites.
    async fn dispatch(
        &mut self,
        candidates: &[Candidate],
        picks: &[(usize, usize)],
    ) -> Result<(), RoundError> {
        self.batch += 1;
        let token = format!("{}#{}", self.owner, self.batch);
        let now = isotest_protocol::now_ms();
        let mut messages = Vec::new();
        let mut claimed = Vec::new();
        for &(i, count) in picks {
            let suite_id = &candidates[i].suite_id;
            match schedule::claim(
                &mut self.conn,
                &self.ns,
                &self.owner,
                suite_id,
                count,
                &token,
            )
            .await?
            {
                Claim::NotLeader => {
                    self.leader = false;
                    break;
                }
                Claim::Closed => {}
                Claim::Tests(tests) => {
                    for (index, json) in tests {
                        match TestMessage::from_bytes(json.as_bytes()) {
                            Ok(mut message) => {
                                message.dispatch = Some(token.clone());
                                message.published_at_ms = now;
                                messages.push(message);
                                claimed.push((suite_id.clone(), index));
                            }
                            // Written by a producer of this or an older version: only
                            // a newer one could write what this cannot read.
                            Err(error) => tracing::error!(
                                suite_id = %suite_id, index, error = %chain(&error),
                                "Cannot read a scheduled test message; leaving its claim to a newer producer."
                            ),
                        }
                    }
                }
            }
        }
        if messages.is_empty() {
            return Ok(());
        }
        let published =
            match tokio::time::timeout(AMQP_TIMEOUT, self.publisher.publish_all(&messages)).await {
                Ok(published) => published.map_err(|e| isotest_infra::error_chain(&e)),
                Err(_) => {
                    self.publisher.reset().await;
                    Err(RoundError::Timeout.to_string())
                }
            };
        match published {
            Ok(()) => {
                schedule::confirm(&mut self.conn, &self.ns, &self.owner, &token, &claimed).await?;
                isotest_infra::metrics::producer()
                    .tests_dispatched
                    .inc_by(messages.len() as u64);
                tracing::debug!(tests = messages.len(), "Dispatched tests.");
                Ok(())
            }
            Err(error) => {
                let (back, _) =
                    schedule::put_back(&mut self.conn, &self.ns, Claims::Token(&token)).await?;
                tracing::warn!(%error, put_back = back, "RabbitMQ did not take a batch of tests; they wait again.");
                Ok(())
            }
        }
    }
}

/// The next [`Dispatcher::extra`]: doubled (plus the slots) when the queue ran dry,
/// by an eighth less while more than half the base target waits, at most 32 per slot.
fn next_extra(extra: u64, ready: u64, base: u64, slots: u64) -> u64 {
    if ready == 0 {
        (extra * 2 + slots.max(1)).min(slots.max(1) * 32)
    } else if ready > base / 2 {
        extra.saturating_sub((extra / 8).max(1))
    } else {
        extra
    }
}

/// `host/pid/random`: unique per process, and tells an operator which one leads.
fn owner_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let host: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .collect();
    let mut random = [0u8; 4];
    let _ = getrandom::fill(&mut random);
    format!("{host}/{}/{}", std::process::id(), hex::encode(random))
}

#[cfg(test)]
mod tests {
    use super::next_extra;

    #[test]
    fn the_queue_grows_only_while_the_workers_drain_it() {
        // (extra, ready, base 8, slots 4) → next extra
        let cases = [
            (0, 0, 4),
            (4, 0, 12),
            (100, 0, 128),
            (128, 0, 128),
            (16, 5, 14),
            (3, 5, 2),
            (0, 5, 0),
            (16, 2, 16),
        ];
        for (extra, ready, expected) in cases {
            assert_eq!(next_extra(extra, ready, 8, 4), expected, "{extra} {ready}");
        }
    }
}
