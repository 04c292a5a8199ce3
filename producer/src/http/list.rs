//! `GET /v1/suites`: the suites a caller may see, newest first, a page at a time. A
//! token lists its own suites, an admin token every token's, a caller without a token
//! (on an open producer) the suites submitted without one. The list is of the suites
//! Redis still holds (a token's latest 200); older ones are in the history store
//! (`GET /v1/history/suites`).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Query, State};
use serde::Deserialize;

use isotest_protocol::SCHEMA_VERSION;
use isotest_protocol::live::SuitePage;

use super::{ApiFailure, AppState, parse_suite_id};
use crate::auth::Caller;
use crate::store::{Store, StoreError};

/// The page size when the caller names none.
pub const DEFAULT_LIMIT: u32 = 20;
/// The largest page.
pub const MAX_LIMIT: u32 = 200;

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    /// How many suites (1 to [`MAX_LIMIT`]).
    limit: Option<u32>,
    /// The suites after this one (the previous page's `next`).
    after: Option<String>,
}

/// Pages through a sorted set newest first, atomically: the `limit` + 1 members after
/// `after` (from the newest without it), so that suites submitted while a client pages
/// neither repeat nor go missing. A cursor no longer in the set ends the list.
const PAGE_SCRIPT: &str = r"
local start = 0
if ARGV[1] ~= '' then
  local rank = redis.call('ZREVRANK', KEYS[1], ARGV[1])
  if not rank then return {} end
  start = rank + 1
end
return redis.call('ZREVRANGE', KEYS[1], start, start + tonumber(ARGV[2]))
";

/// `GET /v1/suites?limit=N&after=ID`.
pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<SuitePage>, ApiFailure> {
    let Query(query) = query.map_err(|r| ApiFailure::BadQuery(r.body_text()))?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiFailure::BadQuery(format!(
            "limit must be from 1 to {MAX_LIMIT}, not {limit}"
        )));
    }
    let after = query.after.as_deref().map(parse_suite_id).transpose()?;
    let key = match &caller {
        Caller::Token(token) if token.admin => state.store.namespace().all_recent_suites_key(),
        Caller::Token(token) => state.store.namespace().recent_suites_key(Some(&token.name)),
        Caller::Anonymous => state.store.namespace().recent_suites_key(None),
    };
    let mut ids = state.store.page(&key, after.as_deref(), limit).await?;
    let more = ids.len() > limit as usize;
    ids.truncate(limit as usize);
    let next = if more { ids.last().cloned() } else { None };
    // Suites whose keys have expired are left out of the page (their ids still page).
    let suites = state.store.suite_rows(&ids).await?;
    Ok(Json(SuitePage {
        schema_version: SCHEMA_VERSION,
        suites,
        next,
    }))
}

impl Store {
    /// Up to `limit` + 1 ids of a recent-suites set after `after`, newest first.
    ///
    /// # Errors
    ///
    /// Returns [`StoreError::Redis`] when Redis fails.
    pub async fn page(
        &self,
        key: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let mut conn = self.connection();
        Ok(redis::Script::new(PAGE_SCRIPT)
            .key(key)
            .arg(after.unwrap_or(""))
            .arg(limit)
            .invoke_async(&mut conn)
            .await?)
    }
}
