-- Flaky tests and quarantine: a suite where most tests failed is an outage (its runs say
-- nothing about any one test), worked out here for the suites recorded before; a test's
-- verdicts are compared per input digest, and a run the infrastructure decided is
-- marked (it never counts); quarantined tests by scope (a token or a repository).
ALTER TABLE suites ADD COLUMN outage BIGINT NOT NULL DEFAULT 0;

UPDATE suites SET outage = 1 WHERE total >= 3 AND 2 * (total - passed - skipped) > total;

ALTER TABLE test_runs ADD COLUMN infrastructure BIGINT NOT NULL DEFAULT 0;

CREATE INDEX test_runs_by_digest ON test_runs (test, digest);

CREATE TABLE quarantine (
    scope TEXT NOT NULL,
    test TEXT NOT NULL,
    reason TEXT NOT NULL,
    added_at_ms BIGINT NOT NULL,
    PRIMARY KEY (scope, test)
);
