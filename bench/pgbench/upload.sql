-- POST /api/user/orders for a new number: the one statement OrderRepository::insert runs
-- (crates/adapters-postgres/src/orders.rs): the customer's room under MAX_PENDING_ORDERS (its
-- default, 1000, which the benchmark's service runs with), the order and its queue entry. The
-- workers are woken after the commit, outside this transaction
-- (crates/adapters-postgres/src/listener.rs).
-- The upload time the service binds as $3 is now() here. Numbers have 15 digits, unlike any
-- the HTTP benchmark sends, so bench/run.py can delete them afterwards.
\set uid random(:umin, :umax)
\set num random(100000000000000, 999999999999999)
\set pending 1000
WITH room AS (
                 SELECT :pending::int8 = 0 OR (SELECT count(*) FROM (
                     SELECT 1 FROM accrual_queue WHERE user_id = :uid::int8 LIMIT :pending::int8) p) < :pending::int8 AS ok),
             ins AS (
                 INSERT INTO orders (number, user_id, status, uploaded_at)
                 SELECT :num::text, :uid::int8, 'NEW'::order_status, now() FROM room WHERE room.ok
                 ON CONFLICT (number) DO NOTHING
                 RETURNING number),
             q AS (
                 INSERT INTO accrual_queue (order_number, next_attempt_at, user_id)
                 SELECT number, now(), :uid::int8 FROM ins
                 RETURNING order_number)
             SELECT (SELECT count(*) FROM q) AS inserted, (SELECT ok FROM room) AS room;
