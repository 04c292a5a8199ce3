//! The producer's side of the result cache, done at submission before anything is
//! scheduled: for a suite that asks for it, each test's key
//! ([`isotest_protocol::cache::cache_key`]) is looked up in the scopes its caller reads,
//! in a few pipelined `MGET`s, and a hit is written as the test's result through the
//! one result script ([`isotest_infra::results::record_all`]) instead of running; every
//! other test's message carries where a worker keeps its result if it passes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use redis::AsyncCommands;

use isotest_protocol::api::SuiteRecord;
use isotest_protocol::cache::{CacheEntry, CacheScope, CacheWrite, DEFAULT_ENVIRONMENT, cache_key};
use isotest_protocol::manifest::Suite;
use isotest_protocol::message::TestMessage;
use isotest_protocol::names::Namespace;
use isotest_protocol::result::TestResult;

use crate::auth::Caller;
use crate::config::CacheConfig;
use crate::store::{Store, StoreError};

/// How many keys one `MGET` asks for.
const MGET_BATCH: usize = 1_000;

/// How far back the history store is asked for flaky tests, which are never cached.
const FLAKY_WINDOW: Duration = Duration::from_secs(30 * 24 * 3600);

/// Who a run is, as the cache sees it: whether it writes the shared scope, and its
/// own scope's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheUser {
    pub trusted: bool,
    pub token: String,
}

impl CacheUser {
    /// The caller's cache identity, if the suite uses the cache: as the suite says, else
    /// as its token says (`isotest token add --cache`); never for a suite with network
    /// access, whose outcome depends on more than its inputs.
    pub fn of(caller: &Caller, suite: &Suite) -> Option<CacheUser> {
        let (default, trusted, token) = match caller {
            Caller::Anonymous => (false, false, Namespace::ANONYMOUS_OWNER.to_owned()),
            Caller::Token(t) => (t.cache, t.trusted, t.name.clone()),
        };
        (suite.cache.unwrap_or(default) && !suite.network).then_some(CacheUser { trusted, token })
    }
}

/// Serves what the cache holds of a suite's tests: returns their results (passed,
/// `cached_from` the run that wrote the entry) and removes their messages from
/// `messages`; every message left is told where to keep its result
/// ([`TestMessage::cache`]). Tests in `exclude` (quarantined or flaky) and tests of an
/// environment no worker has advertised are neither looked up nor kept.
///
/// # Errors
///
/// Returns [`StoreError::Redis`] when Redis fails.
pub async fn serve(
    store: &Store,
    config: &CacheConfig,
    user: &CacheUser,
    exclude: &BTreeSet<String>,
    messages: &mut Vec<TestMessage>,
    now_ms: u64,
) -> Result<Vec<TestResult>, StoreError> {
    let mut conn = store.conn.clone();
    let environments: BTreeMap<String, String> = conn.hgetall(store.ns.environments_key()).await?;
    let keys: Vec<Option<(String, String)>> = messages
        .iter()
        .map(|msg| {
            if exclude.contains(&msg.test.name) || msg.network {
                return None;
            }
            let name = msg
                .test
                .environment
                .as_deref()
                .unwrap_or(DEFAULT_ENVIRONMENT);
            let identity = environments.get(name)?;
            Some((
                cache_key(&msg.digest, identity, &config.cache_salt),
                identity.clone(),
            ))
        })
        .collect();
    let wanted: Vec<(usize, &str)> = keys
        .iter()
        .enumerate()
        .filter_map(|(i, k)| k.as_ref().map(|(key, _)| (i, key.as_str())))
        .collect();
    let scopes = CacheScope::read_by(user.trusted, &user.token);
    let mut found: Vec<Option<CacheEntry>> = vec![None; messages.len()];
    if !wanted.is_empty() {
        let mut pipe = redis::pipe();
        for scope in &scopes {
            for batch in wanted.chunks(MGET_BATCH) {
                let redis_keys: Vec<String> = batch
                    .iter()
                    .map(|(_, key)| store.ns.cache_entry_key(scope, key))
                    .collect();
                pipe.cmd("MGET").arg(redis_keys);
            }
        }
        let answers: Vec<Vec<Option<Vec<u8>>>> = pipe.query_async(&mut conn).await?;
        // Answers come scope by scope, batch by batch; the first scope's hit wins.
        let mut answers = answers.into_iter().flatten();
        for _ in &scopes {
            for (i, _) in &wanted {
                let entry = answers.next().flatten();
                if found[*i].is_none() {
                    found[*i] = entry.as_deref().and_then(CacheEntry::from_json);
                }
            }
        }
    }
    let ttl_secs = config.cache_ttl.as_secs().max(1);
    let written = CacheScope::written_by(user.trusted, &user.token);
    let mut hits = Vec::new();
    let mut left = Vec::with_capacity(messages.len());
    for ((mut msg, key), entry) in messages.drain(..).zip(keys).zip(found) {
        match (entry, key) {
            (Some(entry), _) => hits.push(entry.hit(&msg, now_ms)),
            (None, Some((key, environment))) => {
                msg.cache = Some(CacheWrite {
                    key,
                    scope: written.clone(),
                    ttl_secs,
                    environment,
                });
                left.push(msg);
            }
            (None, None) => left.push(msg),
        }
    }
    *messages = left;
    Ok(hits)
}

/// Writes the results served from the cache of a suite already recorded: counted as
/// dispatched and started (so the scheduler's counts of running and waiting tests stay
/// whole), then written by the one result script, which marks them done and tells the
/// aggregators and the dashboard.
///
/// # Errors
///
/// Returns [`StoreError::Redis`] when Redis fails.
pub async fn record_hits(
    store: &Store,
    record: &SuiteRecord,
    hits: &[TestResult],
) -> Result<(), StoreError> {
    if hits.is_empty() {
        return Ok(());
    }
    let mut conn = store.conn.clone();
    let id = &record.id;
    let mut pipe = redis::pipe();
    pipe.atomic()
        .incr(store.ns.dispatched_key(id), hits.len())
        .ignore();
    for batch in hits.chunks(MGET_BATCH) {
        let started: Vec<(u32, &str)> = batch.iter().map(|r| (r.index, "cache")).collect();
        pipe.hset_multiple(store.ns.started_key(id), &started)
            .ignore();
    }
    pipe.query_async::<()>(&mut conn).await?;
    isotest_infra::results::record_all(&mut conn, &store.ns, hits).await?;
    Ok(())
}

/// The tests of a suite that are never served from the cache nor kept in it: those
/// quarantined for it, and those the history store finds flaky in suites of its name.
/// A history store that fails leaves only the quarantine (logged).
pub async fn excluded(
    history: Option<&isotest_history::History>,
    record: &SuiteRecord,
    now_ms: u64,
) -> BTreeSet<String> {
    let mut exclude: BTreeSet<String> = record.quarantined.iter().cloned().collect();
    let Some(history) = history else {
        return exclude;
    };
    let since = now_ms.saturating_sub(u64::try_from(FLAKY_WINDOW.as_millis()).unwrap_or(0));
    match history
        .flaky_in_suite(
            &record.name,
            since,
            &isotest_history::FlakyPolicy::default(),
        )
        .await
    {
        Ok(flaky) => exclude.extend(flaky.into_iter().map(|f| f.test)),
        Err(error) => tracing::warn!(
            error = %isotest_infra::error_chain(&error),
            "Could not read the flaky tests; only quarantined tests are kept out of the cache."
        ),
    }
    exclude
}

#[cfg(test)]
mod tests {
    use super::*;
    use isotest_protocol::api::TokenRecord;

    fn suite(cache: Option<bool>, network: bool) -> Suite {
        let body = format!(
            r#"{{"name":"s","network":{network},{}"tests":[{{"name":"a","command":["true"]}}]}}"#,
            cache.map_or(String::new(), |c| format!(r#""cache":{c},"#))
        );
        crate::suite::parse(body.as_bytes()).expect("a suite")
    }

    fn token(cache: bool, trusted: bool) -> Caller {
        Caller::Token(TokenRecord {
            schema_version: 1,
            name: "ci".into(),
            quota: None,
            admin: false,
            network: true,
            weight: 1,
            priority: Default::default(),
            trusted,
            cache,
        })
    }

    #[test]
    fn the_suite_decides_then_its_token_and_network_never_caches() {
        let user = |trusted| {
            Some(CacheUser {
                trusted,
                token: "ci".into(),
            })
        };
        let cases = [
            (token(false, false), suite(None, false), None),
            (token(true, false), suite(None, false), user(false)),
            (token(true, true), suite(None, false), user(true)),
            (token(true, true), suite(Some(false), false), None),
            (token(false, false), suite(Some(true), false), user(false)),
            (token(true, true), suite(Some(true), true), None),
            (Caller::Anonymous, suite(None, false), None),
        ];
        for (caller, suite, expected) in cases {
            assert_eq!(
                CacheUser::of(&caller, &suite),
                expected,
                "{caller:?} {suite:?}"
            );
        }
        let anonymous = CacheUser::of(&Caller::Anonymous, &suite(Some(true), false));
        assert_eq!(
            anonymous.map(|u| (u.trusted, u.token)),
            Some((false, Namespace::ANONYMOUS_OWNER.to_owned()))
        );
    }
}
