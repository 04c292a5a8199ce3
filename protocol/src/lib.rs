//! The wire schema of isotest, and nothing else: the suite manifest a user writes
//! ([`manifest`]), the message published for each test ([`message`]), the result a
//! worker writes back ([`result`]), the report the aggregator assembles ([`report`]),
//! the records and responses of the HTTP API ([`api`]) and of its dashboard
//! ([`live`]), the result cache's key and entries ([`cache`]), the index of a prepared build ([`artifact`]), what the scheduler keeps
//! for tests not yet dispatched ([`schedule`]), and the names of every queue and key
//! ([`names`]). No I/O happens here.
//!
//! A serialized type is a promise to every running worker: each carries
//! [`SCHEMA_VERSION`], and fields are added, never repurposed.

pub mod api;
pub mod artifact;
pub mod cache;
pub mod duration;
pub mod live;
pub mod manifest;
pub mod message;
pub mod names;
pub mod report;
pub mod result;
pub mod schedule;

/// The version of every serialized isotest type. A reader refuses anything newer.
pub const SCHEMA_VERSION: u32 = 1;

/// Milliseconds since the Unix epoch, the one clock format on the wire.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
