-- For comparison, not a ceiling of the current build: upload.sql as it was while the upload
-- sent its NOTIFY inside its own transaction (a pg_notify per queued order). A transaction that
-- has run NOTIFY takes a database-wide lock while it commits (PostgreSQL's async.c,
-- PreCommit_Notify), so concurrent uploads commit one at a time; bench/run.py runs this at 64
-- clients beside upload.sql to show what that lock cost.
\set uid random(:umin, :umax)
\set num random(100000000000000, 999999999999999)
WITH ins AS (
                 INSERT INTO orders (number, user_id, status, uploaded_at)
                 VALUES (:num::text, :uid::int8, 'NEW', now())
                 ON CONFLICT (number) DO NOTHING
                 RETURNING number),
             q AS (
                 INSERT INTO accrual_queue (order_number, next_attempt_at)
                 SELECT number, now() FROM ins
                 RETURNING order_number),
             n AS (SELECT pg_notify('gophermart_accrual_queue', order_number) FROM q)
             SELECT count(*) AS inserted FROM n;
