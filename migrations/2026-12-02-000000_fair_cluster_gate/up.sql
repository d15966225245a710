-- Fair shares of the accrual system's budget between customers, a cluster-wide gate in front of
-- it, and a growing delay for numbers it does not know yet.
--
-- Safe while instances of the previous version run: every new column is nullable or has a
-- default, so their inserts and updates keep working. An entry queued by such an instance has
-- no owner (`user_id` NULL); the claims of this version serve those entries as one more
-- customer until the rollout is over. The previous version ignores the new tables.

-- The owner of an entry: the fair claim serves customers in turn.
ALTER TABLE accrual_queue ADD COLUMN user_id BIGINT REFERENCES users (id) ON DELETE CASCADE;
-- How many times in a row the accrual system answered that it does not know the order (204):
-- each doubles the delay before the next question, up to a cap.
ALTER TABLE accrual_queue ADD COLUMN unknown_checks INTEGER NOT NULL DEFAULT 0;

UPDATE accrual_queue q SET user_id = o.user_id FROM orders o WHERE o.number = q.order_number;

-- When each customer's queue was last served, so that the least recently served goes first.
CREATE TABLE accrual_turns (
    user_id   BIGINT      PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    served_at TIMESTAMPTZ NOT NULL
);

-- One row per accrual system: the pause after a 429 and the pace under its advertised limit,
-- shared by every instance. Times are PostgreSQL's clock, so instances need not agree on theirs.
CREATE TABLE accrual_gate (
    name            TEXT        PRIMARY KEY,
    -- No request before this (a 429's Retry-After).
    paused_until    TIMESTAMPTZ,
    -- The spacing of requests under the advertised limit, in microseconds; NULL: no limit known.
    interval_us     BIGINT      CHECK (interval_us IS NULL OR interval_us > 0),
    -- When a 429 last confirmed the limit; a pace not confirmed for a while lapses.
    paced_at        TIMESTAMPTZ,
    -- The earliest time of the next request under the pace (GCRA's theoretical arrival time).
    next_slot       TIMESTAMPTZ,
    -- Total time the cluster has been paused, in milliseconds.
    paused_total_ms BIGINT      NOT NULL DEFAULT 0,
    -- 429s recorded by every instance.
    rate_limited    BIGINT      NOT NULL DEFAULT 0
);
