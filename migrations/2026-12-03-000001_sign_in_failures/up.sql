-- Failed sign-ins, counted for the whole deployment: every instance reads and writes the same
-- counts, and they survive restarts. One row per key and window: a login from a client address
-- (`login` set), or a client address whatever the login (`login` = ''; no login is empty). A
-- window starts at its first failure; a failure after it ends starts a new one. Rows whose
-- window ended are removed by the failures recorded later, a few at a time, so no instance
-- has to run a cleaning job.
--
-- Safe while instances of the previous version run: they neither read nor write this table
-- and keep counting in their own memory until they are replaced.
CREATE TABLE sign_in_failures (
    address    INET        NOT NULL,
    login      TEXT        NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    failures   INTEGER     NOT NULL CHECK (failures > 0),
    PRIMARY KEY (address, login)
);

-- The oldest windows first, for the removal of those that ended.
CREATE INDEX sign_in_failures_started_at ON sign_in_failures (started_at);
