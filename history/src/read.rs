//! Reading the history back: recent suites, one suite and its stored report, a test's
//! last runs, and pruning what is older than the operator keeps.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::any::AnyRow;

use isotest_protocol::report::Report;

use crate::{History, HistoryError, ms, unsigned};

/// A suite as the history store keeps it (its report aside).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuiteRow {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The state the suite ended in (`complete`, `deadline_exceeded`, `cancelled`).
    pub state: String,
    pub created_at_ms: u64,
    pub finished_at_ms: u64,
    pub total: u64,
    pub passed: u64,
    /// Tests that neither passed nor were skipped.
    pub failed: u64,
    pub skipped: u64,
    pub flaky: u64,
    /// Most of its tests failed: its runs do not count for flakiness.
    pub outage: bool,
    /// Its metadata: CI system, repository, branch, commit, job URL and any others.
    pub meta: BTreeMap<String, String>,
}

/// One run of one test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestRun {
    pub suite_id: String,
    pub suite_name: String,
    pub test: String,
    pub status: String,
    /// Passed on a retry after failing.
    pub flaky: bool,
    pub duration_ms: u64,
    pub attempts: u64,
    pub worker: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// Where its output is kept (`report:tests[N]`: in its suite's stored report).
    pub output: String,
    pub finished_at_ms: u64,
    /// The infrastructure decided its final attempt.
    pub infrastructure: bool,
    /// Its suite was an outage.
    pub outage: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
}

const SUITE_COLUMNS: &str = "id, name, token, state, created_at_ms, finished_at_ms, total, passed, failed, skipped, flaky, outage, meta";

const RUN_COLUMNS: &str = "r.suite_id, r.suite_name, r.test, r.status, r.flaky, r.duration_ms, r.attempts, r.worker, r.digest, r.exit_code, r.output, r.finished_at_ms, r.infrastructure, s.outage, s.ci_commit, s.ci_branch";

fn suite_row(row: &AnyRow) -> Result<SuiteRow, sqlx::Error> {
    let meta: String = row.try_get("meta")?;
    Ok(SuiteRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        token: row.try_get("token")?,
        state: row.try_get("state")?,
        created_at_ms: unsigned(row.try_get("created_at_ms")?),
        finished_at_ms: unsigned(row.try_get("finished_at_ms")?),
        total: unsigned(row.try_get("total")?),
        passed: unsigned(row.try_get("passed")?),
        failed: unsigned(row.try_get("failed")?),
        skipped: unsigned(row.try_get("skipped")?),
        flaky: unsigned(row.try_get("flaky")?),
        outage: row.try_get::<i64, _>("outage")? != 0,
        // Written by this crate from a map: a row that does not parse lost only its
        // metadata, not its counts.
        meta: serde_json::from_str(&meta).unwrap_or_default(),
    })
}

fn test_run(row: &AnyRow) -> Result<TestRun, sqlx::Error> {
    Ok(TestRun {
        suite_id: row.try_get(0)?,
        suite_name: row.try_get(1)?,
        test: row.try_get(2)?,
        status: row.try_get(3)?,
        flaky: row.try_get::<i64, _>(4)? != 0,
        duration_ms: unsigned(row.try_get(5)?),
        attempts: unsigned(row.try_get(6)?),
        worker: row.try_get(7)?,
        digest: row.try_get(8)?,
        exit_code: row.try_get(9)?,
        output: row.try_get(10)?,
        finished_at_ms: unsigned(row.try_get(11)?),
        infrastructure: row.try_get::<i64, _>(12)? != 0,
        outage: row.try_get::<i64, _>(13)? != 0,
        commit: row.try_get(14)?,
        branch: row.try_get(15)?,
    })
}

/// Whose suites a query sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner<'a> {
    /// Every suite.
    Any,
    /// Only suites submitted without a token.
    Anonymous,
    /// Only suites of this token (by name).
    Token(&'a str),
}

/// A value bound to a query.
enum Bind {
    Text(String),
    Int(i64),
}

/// A `SELECT` built of conditions, each with its `$N` parameters numbered in order.
struct Select {
    sql: String,
    conditions: Vec<String>,
    binds: Vec<Bind>,
}

impl Select {
    fn new(sql: impl Into<String>) -> Select {
        Select {
            sql: sql.into(),
            conditions: Vec::new(),
            binds: Vec::new(),
        }
    }

    /// Adds `condition`, whose `?` is the next parameter, bound to `value`.
    fn bind(&mut self, condition: &str, value: Bind) -> &mut Select {
        self.binds.push(value);
        self.conditions
            .push(condition.replace('?', &format!("${}", self.binds.len())));
        self
    }

    fn owner(&mut self, column: &str, owner: Owner<'_>) -> &mut Select {
        match owner {
            Owner::Any => {}
            Owner::Anonymous => self.conditions.push(format!("{column} IS NULL")),
            Owner::Token(token) => {
                self.bind(&format!("{column} = ?"), Bind::Text(token.to_owned()));
            }
        }
        self
    }

    /// The statement with `tail` (ORDER BY, LIMIT: its `?` the next parameter) after
    /// the conditions.
    fn finish(&mut self, tail: &str, limit: Option<i64>) -> String {
        let mut sql = self.sql.clone();
        if !self.conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&self.conditions.join(" AND "));
        }
        let mut tail = tail.to_owned();
        if let Some(limit) = limit {
            self.binds.push(Bind::Int(limit));
            tail = tail.replace('?', &format!("${}", self.binds.len()));
        }
        sql.push(' ');
        sql.push_str(&tail);
        sql
    }

    async fn fetch(
        mut self,
        pool: &sqlx::AnyPool,
        tail: &str,
        limit: Option<i64>,
    ) -> Result<Vec<AnyRow>, sqlx::Error> {
        let sql = self.finish(tail, limit);
        let mut query = sqlx::query(&sql);
        for bind in self.binds {
            query = match bind {
                Bind::Text(text) => query.bind(text),
                Bind::Int(n) => query.bind(n),
            };
        }
        query.fetch_all(pool).await
    }
}

impl History {
    /// The `last` suites that finished most recently, newest first, of `owner`.
    ///
    /// # Errors
    ///
    /// Returns [`HistoryError::Query`] when the database fails.
    pub async fn suites(&self, last: u32, owner: Owner<'_>) -> Result<Vec<SuiteRow>, HistoryError> {
        let mut select = Select::new(format!("SELECT {SUITE_COLUMNS} FROM suites"));
        select.owner("token", owner);
        let rows = select
            .fetch(
                &self.pool,
                "ORDER BY finished_at_ms DESC, id DESC LIMIT ?",
                Some(i64::from(last)),
            )
            .await?;
        Ok(rows.iter().map(suite_row).collect::<Result<_, _>>()?)
    }

    /// One suite, if the store has it.
    ///
    /// # Errors
    ///
    /// Returns [`HistoryError::Query`] when the database fails.
    pub async fn suite(&self, id: &str) -> Result<Option<SuiteRow>, HistoryError> {
        let row = sqlx::query(&format!("SELECT {SUITE_COLUMNS} FROM suites WHERE id = $1"))
            .bind(id.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(suite_row).transpose()?)
    }

    /// A suite's report exactly as it was recorded (JSON), if the store has the suite.
    ///
    /// # Errors
    ///
    /// Returns [`HistoryError::Query`] when the database fails.
    pub async fn report_json(&self, id: &str) -> Result<Option<String>, HistoryError> {
        let row = sqlx::query("SELECT report FROM suites WHERE id = $1")
            .bind(id.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("report")).transpose()?)
    }

    /// A suite's report, parsed.
    ///
    /// # Errors
    ///
    /// Returns [`HistoryError`] when the database fails or the stored report does not
    /// parse.
    pub async fn report(&self, id: &str) -> Result<Option<Report>, HistoryError> {
        let Some(json) = self.report_json(id).await? else {
            return Ok(None);
        };
        serde_json::from_str(&json)
            .map(Some)
            .map_err(|source| HistoryError::CorruptReport {
                suite_id: id.to_owned(),
                source,
            })
    }

    /// The `last` runs of the test named `test` in suites of `owner`, newest first;
    /// only in suites named `suite` when one is given.
    ///
    /// # Errors
    ///
    /// Returns [`HistoryError::Query`] when the database fails.
    pub async fn test_runs(
        &self,
        test: &str,
        suite: Option<&str>,
        owner: Owner<'_>,
        last: u32,
    ) -> Result<Vec<TestRun>, HistoryError> {
        let mut select = Select::new(format!(
            "SELECT {RUN_COLUMNS} FROM test_runs r JOIN suites s ON s.id = r.suite_id"
        ));
        select.bind("r.test = ?", Bind::Text(test.to_owned()));
        if let Some(suite) = suite {
            select.bind("r.suite_name = ?", Bind::Text(suite.to_owned()));
        }
        select.owner("s.token", owner);
        let rows = select
            .fetch(
                &self.pool,
                "ORDER BY r.finished_at_ms DESC, r.suite_id DESC LIMIT ?",
                Some(i64::from(last)),
            )
            .await?;
        Ok(rows.iter().map(test_run).collect::<Result<_, _>>()?)
    }

    /// Runs that finished since `since_ms` in suites that were no outage, of `owner`,
    /// and in suites named `suite` when one is given: what flakiness is scored on.
    pub(crate) async fn counted_runs(
        &self,
        since_ms: u64,
        suite: Option<&str>,
        owner: Owner<'_>,
    ) -> Result<Vec<TestRun>, HistoryError> {
        let mut select = Select::new(format!(
            "SELECT {RUN_COLUMNS} FROM test_runs r JOIN suites s ON s.id = r.suite_id"
        ));
        select.bind("r.finished_at_ms >= ?", Bind::Int(ms(since_ms)));
        select.conditions.push("s.outage = 0".into());
        select.conditions.push("r.infrastructure = 0".into());
        if let Some(suite) = suite {
            select.bind("r.suite_name = ?", Bind::Text(suite.to_owned()));
        }
        select.owner("s.token", owner);
        let rows = select.fetch(&self.pool, "", None).await?;
        Ok(rows.iter().map(test_run).collect::<Result<_, _>>()?)
    }

    /// Deletes every suite that finished before `before_ms`, with its test runs, and
    /// says how many suites went.
    ///
    /// # Errors
    ///
    /// Returns [`HistoryError::Query`] when the database fails; nothing is then deleted.
    pub async fn prune(&self, before_ms: u64) -> Result<u64, HistoryError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM test_runs WHERE suite_id IN \
             (SELECT id FROM suites WHERE finished_at_ms < $1)",
        )
        .bind(ms(before_ms))
        .execute(&mut *tx)
        .await?;
        let suites = sqlx::query("DELETE FROM suites WHERE finished_at_ms < $1")
            .bind(ms(before_ms))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(suites)
    }
}
