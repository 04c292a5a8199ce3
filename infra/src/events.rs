//! A suite's live events: a Redis stream per suite ([`Namespace::suite_events_key`])
//! that the dashboard streams to browsers.
//!
//! The producer opens it when it records the suite (a `submitted` entry, expiring
//! [`RETENTION`] after the suite's deadline); the one result script
//! ([`crate::results`]) appends a `result` entry with each first write of an attempt,
//! and the one report script ([`crate::reports`]) an `end` entry. Both append with
//! `NOMKSTREAM`, so a stream that has expired (or a suite recorded before streams
//! existed) is never made again without its expiry, and with `MAXLEN ~` [`MAX_EVENTS`],
//! so a stream stays bounded. An entry is small (no output): a reader fetches the output
//! of an attempt that did not pass from the results hash.

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionLike;
use redis::streams::{StreamId, StreamRangeReply, StreamReadOptions, StreamReadReply};

use isotest_protocol::names::Namespace;
use isotest_protocol::report::SuiteState;
use isotest_protocol::result::Status;

/// The most entries a suite's stream keeps (approximately: Redis trims whole nodes).
/// Enough for every first attempt of the largest suite, with room for retries; a reader
/// that falls further behind gets a snapshot from the results hash instead.
pub const MAX_EVENTS: usize = 25_000;

/// How long a suite's stream outlives the suite's deadline.
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Entry kinds, as written in the `kind` field.
pub const SUBMITTED: &str = "submitted";
pub const RESULT: &str = "result";
pub const END: &str = "end";

/// When a suite's stream expires (ms since the epoch): [`RETENTION`] after its deadline.
pub fn expires_at_ms(deadline_at_ms: u64) -> u64 {
    deadline_at_ms.saturating_add(u64::try_from(RETENTION.as_millis()).unwrap_or(u64::MAX))
}

/// An attempt's first result, as its stream entry tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultEvent {
    pub test: String,
    pub attempt: u32,
    pub status: Status,
    pub is_final: bool,
    pub duration_ms: u64,
    pub worker: String,
}

/// One entry of a suite's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SuiteEvent {
    /// The suite was recorded: the first entry, until trimming removes it.
    Submitted,
    Result(ResultEvent),
    /// The suite's report was stored.
    End(SuiteState),
    /// An entry this version cannot read (written by a newer one): skipped.
    Unknown,
}

/// An entry with its stream id (`ms-seq`), the id a browser resumes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub event: SuiteEvent,
}

fn field(entry: &StreamId, name: &str) -> Option<String> {
    entry.get::<String>(name)
}

/// Reads an entry; anything unexpected is [`SuiteEvent::Unknown`].
pub fn parse(entry: &StreamId) -> Entry {
    let event = match field(entry, "kind").as_deref() {
        Some(SUBMITTED) => SuiteEvent::Submitted,
        Some(RESULT) => parse_result(entry).map_or(SuiteEvent::Unknown, SuiteEvent::Result),
        Some(END) => field(entry, "state")
            .and_then(|s| serde_json::from_value(serde_json::Value::String(s)).ok())
            .map_or(SuiteEvent::Unknown, SuiteEvent::End),
        _ => SuiteEvent::Unknown,
    };
    Entry {
        id: entry.id.clone(),
        event,
    }
}

fn parse_result(entry: &StreamId) -> Option<ResultEvent> {
    Some(ResultEvent {
        test: field(entry, "test")?,
        attempt: field(entry, "attempt")?.parse().ok()?,
        status: serde_json::from_value(serde_json::Value::String(field(entry, "status")?)).ok()?,
        is_final: field(entry, "final")? == "1",
        duration_ms: field(entry, "duration_ms")?.parse().ok()?,
        worker: field(entry, "worker").unwrap_or_default(),
    })
}

/// A stream id as its two numbers, for ordering (`None` if it is not one).
pub fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Where a reader starts, given the stream's first entry and the last id it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Read every entry after this id: nothing after it has been trimmed.
    After(String),
    /// Entries the reader has not seen may have been trimmed: send every result from
    /// the results hash, then read after this id (the stream's last when looked at).
    Snapshot,
    /// The suite has no stream (it expired, or came before streams existed).
    NoStream,
}

/// Decides how a reader that last saw `last_seen` (none: a new reader) catches up, from
/// the stream's first entry (none: no stream).
pub fn start(first: Option<&Entry>, last_seen: Option<&str>) -> Start {
    let Some(first) = first else {
        return Start::NoStream;
    };
    // The `submitted` entry is the first until trimming removes it: while it is there,
    // nothing has been trimmed.
    if first.event == SuiteEvent::Submitted {
        return Start::After(last_seen.unwrap_or("0-0").to_owned());
    }
    match last_seen.and_then(|id| Some((id, parse_id(id)?))) {
        // Trimming removes the oldest entries only: everything after an id at or past
        // the first entry is still there.
        Some((id, seen)) if parse_id(&first.id).is_some_and(|f| seen >= f) => {
            Start::After(id.to_owned())
        }
        _ => Start::Snapshot,
    }
}

/// The first entry of the suite's stream, if it has one.
///
/// # Errors
///
/// Returns the [`redis::RedisError`] when Redis fails.
pub async fn first(
    conn: &mut (impl ConnectionLike + Send + Sync),
    ns: &Namespace,
    suite_id: &str,
) -> redis::RedisResult<Option<Entry>> {
    let reply: StreamRangeReply = conn
        .xrange_count(ns.suite_events_key(suite_id), "-", "+", 1)
        .await?;
    Ok(reply.ids.first().map(parse))
}

/// The id of the suite stream's last entry (`0-0` when it has none).
///
/// # Errors
///
/// Returns the [`redis::RedisError`] when Redis fails.
pub async fn last_id(
    conn: &mut (impl ConnectionLike + Send + Sync),
    ns: &Namespace,
    suite_id: &str,
) -> redis::RedisResult<String> {
    let reply: StreamRangeReply = conn
        .xrevrange_count(ns.suite_events_key(suite_id), "+", "-", 1)
        .await?;
    Ok(reply
        .ids
        .first()
        .map_or_else(|| "0-0".to_owned(), |e| e.id.clone()))
}

/// Up to `count` entries after `after`, waiting up to `block` for the first one. Use a
/// connection of its own when blocking: a blocked connection answers nothing else.
///
/// # Errors
///
/// Returns the [`redis::RedisError`] when Redis fails.
pub async fn read_after(
    conn: &mut (impl ConnectionLike + Send + Sync),
    ns: &Namespace,
    suite_id: &str,
    after: &str,
    block: Option<Duration>,
    count: usize,
) -> redis::RedisResult<Vec<Entry>> {
    let mut options = StreamReadOptions::default().count(count);
    if let Some(block) = block {
        options = options.block(usize::try_from(block.as_millis()).unwrap_or(usize::MAX));
    }
    let reply: Option<StreamReadReply> = conn
        .xread_options(&[ns.suite_events_key(suite_id)], &[after], &options)
        .await?;
    Ok(reply
        .into_iter()
        .flat_map(|r| r.keys)
        .flat_map(|k| k.ids)
        .map(|e| parse(&e))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, event: SuiteEvent) -> Entry {
        Entry {
            id: id.to_owned(),
            event,
        }
    }

    #[test]
    fn where_a_reader_starts() {
        let submitted = entry("10-0", SuiteEvent::Submitted);
        let trimmed = entry("50-3", SuiteEvent::End(SuiteState::Complete));
        let after = |id: &str| Start::After(id.to_owned());
        // (first entry, last seen, start)
        let cases = [
            (None, None, Start::NoStream),
            (None, Some("12-0"), Start::NoStream),
            (Some(&submitted), None, after("0-0")),
            (Some(&submitted), Some("12-0"), after("12-0")),
            (Some(&trimmed), None, Start::Snapshot),
            (Some(&trimmed), Some("50-2"), Start::Snapshot),
            (Some(&trimmed), Some("50-3"), after("50-3")),
            (Some(&trimmed), Some("51-0"), after("51-0")),
            (Some(&trimmed), Some("garbage"), Start::Snapshot),
        ];
        for (first, seen, expected) in cases {
            assert_eq!(start(first, seen), expected, "{first:?} {seen:?}");
        }
    }

    #[test]
    fn ids_order_by_time_then_sequence() {
        assert_eq!(parse_id("1700000000000-7"), Some((1_700_000_000_000, 7)));
        assert!(parse_id("9-0") < parse_id("10-0"));
        assert_eq!(parse_id("x-1"), None);
        assert_eq!(parse_id("12"), None);
    }
}
