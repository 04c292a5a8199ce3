//! Quarantine: tests whose failures do not fail their suite, each under a scope: a
//! token's suites (`token:NAME`), a repository's (`repo:NAME`), or every suite (`*`).
//! The producer (and embedded mode) looks a suite's quarantined tests up when it is
//! submitted and puts them in its record, so the report says which tests were.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::{History, HistoryError, Owner, ms, unsigned};

/// Which suites a quarantine entry applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Scope {
    /// Every suite.
    All,
    /// The suites submitted with this token (by its name).
    Token(String),
    /// The suites whose `repository` metadata is this.
    Repository(String),
}

/// A scope that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a quarantine scope: use `*`, `token:NAME` or `repo:NAME`")]
pub struct BadScope(String);

impl FromStr for Scope {
    type Err = BadScope;

    fn from_str(text: &str) -> Result<Scope, BadScope> {
        let bad = || BadScope(text.to_owned());
        if text == "*" {
            return Ok(Scope::All);
        }
        let (kind, name) = text.split_once(':').ok_or_else(bad)?;
        if name.is_empty() {
            return Err(bad());
        }
        match kind {
            "token" => Ok(Scope::Token(name.to_owned())),
            "repo" => Ok(Scope::Repository(name.to_owned())),
            _ => Err(bad()),
        }
    }
}

impl TryFrom<String> for Scope {
    type Error = BadScope;

    fn try_from(text: String) -> Result<Scope, BadScope> {
        text.parse()
    }
}

impl From<Scope> for String {
    fn from(scope: Scope) -> String {
        scope.to_string()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::All => f.write_str("*"),
            Scope::Token(name) => write!(f, "token:{name}"),
            Scope::Repository(name) => write!(f, "repo:{name}"),
        }
    }
}

/// One quarantined test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    pub scope: Scope,
    pub test: String,
    pub reason: String,
    pub added_at_ms: u64,
}

impl History {
    /// Quarantines `test` under `scope`; says whether it was not already.
    ///
    /// # Errors
    ///
    /// Returns [`HistoryError::Query`] when the database fails.
    pub async fn quarantine_add(
        &self,
        scope: &Scope,
        test: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<bool, HistoryError> {
        let added = sqlx::query(
            "INSERT INTO quarantine (scope, test, reason, added_at_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (scope, test) DO NOTHING",
        )
        .bind(scope.to_string())
        .bind(test.to_owned())
        .bind(reason.to_owned())
        .bind(ms(now_ms))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(added == 1)
    }

    /// Takes `test` out of quarantine under `scope`; says whether it was in.
    ///
    /// # Errors
    ///
    /// Returns [`HistoryError::Query`] when the database fails.
    pub async fn quarantine_remove(&self, scope: &Scope, test: &str) -> Result<bool, HistoryError> {
        let removed = sqlx::query("DELETE FROM quarantine WHERE scope = $1 AND test = $2")
            .bind(scope.to_string())
            .bind(test.to_owned())
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(removed == 1)
    }

    /// Every quarantine entry, by scope and test.
    ///
    /// # Errors
    ///
    /// Returns [`HistoryError::Query`] when the database fails.
    pub async fn quarantine_list(&self) -> Result<Vec<Quarantined>, HistoryError> {
        let rows = sqlx::query(
            "SELECT scope, test, reason, added_at_ms FROM quarantine ORDER BY scope, test",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut list = Vec::with_capacity(rows.len());
        for row in rows {
            let scope: String = row.try_get(0)?;
            // Scopes are written only through `Scope`; one that no longer parses is
            // skipped rather than failing the whole list.
            let Ok(scope) = scope.parse() else {
                continue;
            };
            list.push(Quarantined {
                scope,
                test: row.try_get(1)?,
                reason: row.try_get(2)?,
                added_at_ms: unsigned(row.try_get(3)?),
            });
        }
        Ok(list)
    }

    /// The quarantine entries that apply to `owner`'s suites: every entry for
    /// [`Owner::Any`]; else the entries for every suite (`*`), for its token, and for
    /// the repositories its suites in the store name.
    ///
    /// # Errors
    ///
    /// Returns [`HistoryError::Query`] when the database fails.
    pub async fn quarantine_visible(
        &self,
        owner: Owner<'_>,
    ) -> Result<Vec<Quarantined>, HistoryError> {
        let all = self.quarantine_list().await?;
        let repositories = match owner {
            Owner::Any => return Ok(all),
            Owner::Anonymous => sqlx::query(
                "SELECT DISTINCT ci_repository FROM suites WHERE token IS NULL AND ci_repository IS NOT NULL",
            )
            .fetch_all(&self.pool)
            .await?,
            Owner::Token(token) => sqlx::query(
                "SELECT DISTINCT ci_repository FROM suites WHERE token = $1 AND ci_repository IS NOT NULL",
            )
            .bind(token.to_owned())
            .fetch_all(&self.pool)
            .await?,
        };
        let repositories = repositories
            .iter()
            .map(|row| row.try_get::<String, _>(0))
            .collect::<Result<std::collections::BTreeSet<String>, _>>()?;
        let token = match owner {
            Owner::Token(token) => Some(token),
            Owner::Any | Owner::Anonymous => None,
        };
        Ok(all
            .into_iter()
            .filter(|entry| match &entry.scope {
                Scope::All => true,
                Scope::Token(name) => Some(name.as_str()) == token,
                Scope::Repository(repo) => repositories.contains(repo),
            })
            .collect())
    }

    /// The tests quarantined for a suite submitted with `token` for `repository`
    /// (entries of scope `*`, `token:TOKEN` and `repo:REPOSITORY`), sorted, once each.
    ///
    /// # Errors
    ///
    /// Returns [`HistoryError::Query`] when the database fails.
    pub async fn quarantined_for(
        &self,
        token: Option<&str>,
        repository: Option<&str>,
    ) -> Result<Vec<String>, HistoryError> {
        let scopes = [
            Some(Scope::All),
            token.map(|t| Scope::Token(t.to_owned())),
            repository.map(|r| Scope::Repository(r.to_owned())),
        ];
        let mut tests = Vec::new();
        for scope in scopes.into_iter().flatten() {
            let rows = sqlx::query("SELECT test FROM quarantine WHERE scope = $1")
                .bind(scope.to_string())
                .fetch_all(&self.pool)
                .await?;
            for row in rows {
                tests.push(row.try_get::<String, _>(0)?);
            }
        }
        tests.sort();
        tests.dedup();
        Ok(tests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_read_back_as_written() {
        for text in ["*", "token:ci-main", "repo:acme/shop"] {
            let scope: Scope = text.parse().expect(text);
            assert_eq!(scope.to_string(), text);
        }
        for bad in ["", "token:", "branch:main", "acme"] {
            assert!(bad.parse::<Scope>().is_err(), "{bad}");
        }
    }
}
