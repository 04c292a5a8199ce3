-- The base schema: one row per finished suite, one per test run in it. Times are
-- milliseconds since the epoch and booleans 0/1, as BIGINT, so that the same SQL
-- runs on PostgreSQL and SQLite. `failed` counts the tests that neither passed nor were
-- skipped; `output` says where a run's output is kept (`report:tests[N]`: in the
-- suite's `report`).
CREATE TABLE suites (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    token TEXT,
    state TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    finished_at_ms BIGINT NOT NULL,
    total BIGINT NOT NULL,
    passed BIGINT NOT NULL,
    failed BIGINT NOT NULL,
    skipped BIGINT NOT NULL,
    flaky BIGINT NOT NULL,
    summary TEXT NOT NULL,
    ci_system TEXT,
    ci_repository TEXT,
    ci_branch TEXT,
    ci_commit TEXT,
    ci_job_url TEXT,
    meta TEXT NOT NULL,
    report TEXT NOT NULL
);

CREATE INDEX suites_by_finish ON suites (finished_at_ms);

CREATE TABLE test_runs (
    suite_id TEXT NOT NULL REFERENCES suites (id) ON DELETE CASCADE,
    test TEXT NOT NULL,
    suite_name TEXT NOT NULL,
    status TEXT NOT NULL,
    flaky BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    worker TEXT NOT NULL,
    digest TEXT,
    exit_code BIGINT,
    output TEXT NOT NULL,
    finished_at_ms BIGINT NOT NULL,
    PRIMARY KEY (suite_id, test)
);

CREATE INDEX test_runs_by_test ON test_runs (test, finished_at_ms);
