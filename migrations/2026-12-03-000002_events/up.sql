-- Each customer's event log (a transactional outbox): what the customer can see that changed,
-- an order's status or accrual and the balance, written by triggers in the transaction that
-- makes the change, so that no event is ever lost or invented, whichever instance (or tool)
-- made it. Instances read the log to stream it to the customers' apps.
--
-- `tx` is the writing transaction's id. Ids (`id`) are taken in insertion order, not commit
-- order, so a reader that went by id alone could pass over an event whose transaction commits
-- late. Readers instead take only events of transactions older than every transaction still
-- running (`pg_snapshot_xmin(pg_current_snapshot())`), all of them finished, in (tx, id)
-- order: a position once passed is never filled in later.
--
-- Rows older than the retention are removed by any instance, a batch at a time with SKIP
-- LOCKED, through the BRIN index on `created_at` (nearly free to maintain); `events_pruned`
-- keeps the newest transaction whose events were removed, so that a reader resuming from a
-- position at or before it is told that events may be missing.
--
-- Safe while instances of the previous version run: the triggers record their changes too,
-- and they never read this table.
CREATE TABLE events (
    -- Orders the events of one transaction; no index of its own (none is needed).
    id           BIGINT         NOT NULL GENERATED ALWAYS AS IDENTITY,
    tx           XID8           NOT NULL DEFAULT pg_current_xact_id(),
    user_id      BIGINT         NOT NULL,
    created_at   TIMESTAMPTZ    NOT NULL DEFAULT now(),
    -- An order's state (`order_number` set) ...
    order_number TEXT,
    status       order_status,
    accrual      NUMERIC(20, 2),
    uploaded_at  TIMESTAMPTZ,
    -- ... or the balance (`balance` set), after the change.
    balance      NUMERIC(20, 2),
    withdrawn    NUMERIC(20, 2),
    -- The account's version after the change (balance events): the order in which changes
    -- of one account happened, which for transactions that overlap can differ from `tx`'s.
    version      BIGINT,
    CONSTRAINT events_one_kind CHECK ((order_number IS NULL) <> (balance IS NULL))
);

-- A customer's events in order, for a stream that resumes.
CREATE INDEX events_user_position ON events (user_id, tx, id);
-- Every customer's newest events, for the instances' live reads.
CREATE INDEX events_position ON events (tx);
CREATE INDEX events_created_at ON events USING brin (created_at);

CREATE TABLE events_pruned (
    one     BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    through BIGINT  NOT NULL
);
INSERT INTO events_pruned (through) VALUES (0);

-- Each change of an account's balance counts one version, under the row's lock, so versions
-- follow the order in which the changes committed. Adding a column with a constant default
-- rewrites nothing.
ALTER TABLE accounts ADD COLUMN version BIGINT NOT NULL DEFAULT 0;

CREATE FUNCTION count_account_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    RETURN NEW;
END
$$;

CREATE FUNCTION record_order_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (user_id, order_number, status, accrual, uploaded_at)
    VALUES (NEW.user_id, NEW.number, NEW.status, NEW.accrual, NEW.uploaded_at);
    RETURN NULL;
END
$$;

CREATE FUNCTION record_balance_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (user_id, balance, withdrawn, version)
    VALUES (NEW.user_id, NEW.balance, NEW.withdrawn, NEW.version);
    RETURN NULL;
END
$$;

CREATE TRIGGER orders_uploaded AFTER INSERT ON orders
    FOR EACH ROW EXECUTE FUNCTION record_order_event();
CREATE TRIGGER orders_changed AFTER UPDATE OF status, accrual ON orders
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.accrual IS DISTINCT FROM NEW.accrual)
    EXECUTE FUNCTION record_order_event();
CREATE TRIGGER accounts_versioned BEFORE UPDATE OF balance, withdrawn ON accounts
    FOR EACH ROW
    WHEN (OLD.balance IS DISTINCT FROM NEW.balance OR OLD.withdrawn IS DISTINCT FROM NEW.withdrawn)
    EXECUTE FUNCTION count_account_version();
CREATE TRIGGER accounts_changed AFTER UPDATE OF balance, withdrawn ON accounts
    FOR EACH ROW
    WHEN (OLD.balance IS DISTINCT FROM NEW.balance OR OLD.withdrawn IS DISTINCT FROM NEW.withdrawn)
    EXECUTE FUNCTION record_balance_event();
