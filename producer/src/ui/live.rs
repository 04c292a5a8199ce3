//! `GET /ui/api/suites/{id}/events`: a suite's live view as server-sent events, read
//! from the suite's Redis stream ([`isotest_infra::events`]).
//!
//! Every event that moves the view on carries its stream id, so a browser whose
//! connection dropped reconnects with `Last-Event-ID` and is sent exactly what came
//! after it. Events: `suite` (what the counts are out of; first on every connection),
//! `result` (an attempt's result, with the end of its output unless it passed),
//! `snapshot` (every result so far, when a replay from the stream cannot be complete)
//! and `end` (the suite's report is stored; the stream then closes).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use isotest_infra::events::{self, Entry, ResultEvent, Start, SuiteEvent};
use isotest_protocol::SCHEMA_VERSION;
use isotest_protocol::api::SuiteRecord;
use isotest_protocol::live::{LiveEnd, LiveResult, LiveSnapshot, LiveSuite};
use isotest_protocol::names::Namespace;
use isotest_protocol::report::SuiteState;
use isotest_protocol::result::{Status, result_field};

use crate::auth::Caller;
use crate::http::{ApiFailure, AppState};
use crate::store::{Store, StoreError};
use crate::ui::views::owned_suite;

/// The most live views one producer streams at once; one more is answered 503.
pub const MAX_STREAMS: usize = 256;
/// How long a read waits for the next entry before the stream sends a keep-alive.
const BLOCK: Duration = Duration::from_secs(15);
/// The most entries read at once.
const BATCH: usize = 500;
/// How soon a browser reconnects after the stream closes or drops.
const RETRY: Duration = Duration::from_secs(1);

/// What live views need besides the store: a Redis client to open each view's own
/// connection (a blocking read holds its connection), and the cap on open views.
#[derive(Debug, Clone)]
pub struct Live {
    client: redis::Client,
    permits: Arc<Semaphore>,
    /// Cancelled when the producer shuts down: a live view never ends by itself, and
    /// the server's graceful shutdown waits for every response to end.
    closing: CancellationToken,
}

impl Live {
    /// # Errors
    ///
    /// Returns the [`redis::RedisError`] of an invalid URL.
    pub fn new(redis_url: &str) -> redis::RedisResult<Live> {
        Ok(Live {
            client: redis::Client::open(redis_url)?,
            permits: Arc::new(Semaphore::new(MAX_STREAMS)),
            closing: CancellationToken::new(),
        })
    }

    /// Ends every live view (the browsers reconnect to another producer, or to this
    /// one when it is back).
    pub fn close(&self) {
        self.closing.cancel();
    }

    async fn connect(&self) -> redis::RedisResult<MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            // A blocking read answers after BLOCK at the latest.
            .set_response_timeout(Some(BLOCK + Duration::from_secs(10)));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }
}

/// The `Last-Event-ID` a reconnecting browser sends, if it is a stream id.
fn last_event_id(headers: &HeaderMap) -> Option<String> {
    let id = headers.get("last-event-id")?.to_str().ok()?.trim();
    events::parse_id(id).map(|_| id.to_owned())
}

/// `GET /ui/api/suites/{id}/events`.
pub async fn events(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiFailure> {
    let record = owned_suite(&state.store, &caller, &id).await?;
    let permit = Arc::clone(&state.live.permits)
        .try_acquire_owned()
        .map_err(|_| ApiFailure::TooManyStreams(MAX_STREAMS))?;
    let conn = state
        .live
        .connect()
        .await
        .map_err(|e| ApiFailure::Store(StoreError::Redis(e)))?;
    let reader = Reader {
        store: state.store.clone(),
        ns: state.store.ns.clone(),
        conn,
        record,
        last_seen: last_event_id(&headers),
        after: String::new(),
        pending: VecDeque::new(),
        phase: Phase::Start,
        closing: state.live.closing.clone(),
        _permit: permit,
    };
    let mut response = Sse::new(stream(reader)).into_response();
    // Proxies such as nginx would otherwise hold events back.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    Ok(response)
}

fn stream(reader: Reader) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(reader, |mut reader| async move {
        reader.next().await.map(|event| (Ok(event), reader))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Tail,
    Done,
}

/// One browser's live view: catches up (replay or snapshot), then follows the stream.
struct Reader {
    store: Store,
    ns: Namespace,
    /// This view's own connection, for blocking reads.
    conn: MultiplexedConnection,
    record: SuiteRecord,
    last_seen: Option<String>,
    /// The id after which the next read starts.
    after: String,
    pending: VecDeque<Event>,
    phase: Phase,
    closing: CancellationToken,
    _permit: OwnedSemaphorePermit,
}

fn json_event(name: &str, data: &impl Serialize) -> Event {
    // Records of strings and numbers always serialize.
    Event::default()
        .event(name)
        .data(serde_json::to_string(data).unwrap_or_default())
}

impl Reader {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.phase == Phase::Done || self.closing.is_cancelled() {
                return None;
            }
            let closing = self.closing.clone();
            let step = tokio::select! {
                () = closing.cancelled() => return None,
                step = self.step() => step,
            };
            if let Err(error) = step {
                // The browser reconnects after RETRY and resumes from its last id.
                tracing::warn!(suite_id = %self.record.id, error = %isotest_infra::error_chain(&error), "Live view failed; closing it.");
                self.phase = Phase::Done;
            }
        }
    }

    async fn step(&mut self) -> Result<(), StoreError> {
        match self.phase {
            Phase::Start => self.start().await,
            Phase::Tail => self.tail().await,
            Phase::Done => Ok(()),
        }
    }

    /// The `suite` event, then a replay from the stream or a snapshot.
    async fn start(&mut self) -> Result<(), StoreError> {
        let record = &self.record;
        self.pending.push_back(
            json_event(
                "suite",
                &LiveSuite {
                    schema_version: SCHEMA_VERSION,
                    id: record.id.clone(),
                    name: record.name.clone(),
                    total: u32::try_from(record.tests.len()).unwrap_or(u32::MAX),
                    created_at_ms: record.created_at_ms,
                    deadline_at_ms: record.deadline_at_ms,
                },
            )
            .retry(RETRY),
        );
        let first = events::first(&mut self.conn, &self.ns, &record.id).await?;
        match events::start(first.as_ref(), self.last_seen.as_deref()) {
            Start::After(id) => {
                self.after = id;
                self.phase = Phase::Tail;
            }
            Start::Snapshot => {
                // The last id is read first: a result written meanwhile is then both in
                // the snapshot and read again after it, and the browser keeps it once.
                self.after = events::last_id(&mut self.conn, &self.ns, &record.id).await?;
                let snapshot = self.snapshot().await?;
                self.pending.push_back(snapshot.id(self.after.clone()));
                // The end may be among what the snapshot stands for; it is sent again
                // if it also comes after `after`, and the browser takes it once.
                self.phase = Phase::Tail;
                if let Some(state) = self.ended().await? {
                    self.pending
                        .push_back(end_event(Some(self.after.clone()), state));
                    self.phase = Phase::Done;
                }
            }
            Start::NoStream => {
                // No stream to follow (it expired, or the suite predates streams): the
                // results as they are, then the end if there is one; else the stream
                // closes and the browser asks again after RETRY.
                let snapshot = self.snapshot().await?;
                self.pending.push_back(snapshot);
                if let Some(state) = self.ended().await? {
                    self.pending.push_back(end_event(None, state));
                }
                self.phase = Phase::Done;
            }
        }
        Ok(())
    }

    /// How the suite ended, if it has.
    async fn ended(&self) -> Result<Option<SuiteState>, StoreError> {
        let mut conn = self.store.conn.clone();
        Ok(isotest_infra::reports::stored_state(&mut conn, &self.ns, &self.record.id).await?)
    }

    async fn snapshot(&mut self) -> Result<Event, StoreError> {
        let mut conn = self.store.conn.clone();
        let mut results =
            isotest_infra::suites::load_results(&mut conn, &self.ns, &self.record.id).await?;
        results.sort_by(|a, b| {
            (a.finished_at_ms, a.index, &a.name, a.attempt).cmp(&(
                b.finished_at_ms,
                b.index,
                &b.name,
                b.attempt,
            ))
        });
        let snapshot = LiveSnapshot {
            schema_version: SCHEMA_VERSION,
            results: results.iter().map(LiveResult::of).collect(),
        };
        Ok(json_event("snapshot", &snapshot))
    }

    /// Waits for the next entries and turns them into events.
    async fn tail(&mut self) -> Result<(), StoreError> {
        let entries = events::read_after(
            &mut self.conn,
            &self.ns,
            &self.record.id,
            &self.after,
            Some(BLOCK),
            BATCH,
        )
        .await?;
        let Some(last) = entries.last() else {
            self.pending
                .push_back(Event::default().comment("keep-alive"));
            return Ok(());
        };
        self.after = last.id.clone();
        // The output of attempts that did not pass is in the results hash.
        let failed: Vec<String> = entries
            .iter()
            .filter_map(|e| match &e.event {
                SuiteEvent::Result(r) if r.status != Status::Passed => {
                    Some(result_field(&r.test, r.attempt))
                }
                _ => None,
            })
            .collect();
        let mut full = self
            .store
            .results_of(&self.record.id, &failed)
            .await?
            .into_iter();
        for Entry { id, event } in entries {
            match event {
                SuiteEvent::Result(r) => {
                    let live = if r.status == Status::Passed {
                        from_entry(r)
                    } else {
                        full.next()
                            .flatten()
                            .map_or_else(|| from_entry(r), |full| LiveResult::of(&full))
                    };
                    self.pending.push_back(json_event("result", &live).id(id));
                }
                SuiteEvent::End(state) => {
                    self.pending.push_back(end_event(Some(id), state));
                    self.phase = Phase::Done;
                    return Ok(());
                }
                SuiteEvent::Submitted | SuiteEvent::Unknown => {}
            }
        }
        Ok(())
    }
}

fn end_event(id: Option<String>, state: SuiteState) -> Event {
    let event = json_event(
        "end",
        &LiveEnd {
            schema_version: SCHEMA_VERSION,
            state,
        },
    );
    match id {
        Some(id) => event.id(id),
        None => event,
    }
}

/// The live form of a result from its stream entry alone (no reason, no output).
fn from_entry(r: ResultEvent) -> LiveResult {
    LiveResult {
        schema_version: SCHEMA_VERSION,
        test: r.test,
        attempt: r.attempt,
        is_final: r.is_final,
        status: r.status,
        duration_ms: r.duration_ms,
        worker: r.worker,
        reason: None,
        exit_code: None,
        stdout_tail: String::new(),
        stderr_tail: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn only_stream_ids_are_resumed_from() {
        for (value, expected) in [
            ("1700000000000-0", Some("1700000000000-0")),
            (" 12-3 ", Some("12-3")),
            ("", None),
            ("$", None),
            ("12", None),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert("last-event-id", HeaderValue::from_static(value));
            assert_eq!(last_event_id(&headers).as_deref(), expected, "{value:?}");
        }
        assert_eq!(last_event_id(&HeaderMap::new()), None);
    }
}
