-- POST /api/user/orders for a new number: the one statement OrderRepository::insert runs
-- (crates/adapters-postgres/src/orders.rs): the order and its queue entry. The workers are
-- woken after the commit, outside this transaction (crates/adapters-postgres/src/listener.rs).
-- The upload time the service binds as $3 is now() here. Numbers have 15 digits, unlike any
-- the HTTP benchmark sends, so bench/run.py can delete them afterwards.
\set uid random(:umin, :umax)
\set num random(100000000000000, 999999999999999)
WITH ins AS (
                 INSERT INTO orders (number, user_id, status, uploaded_at)
                 VALUES (:num::text, :uid::int8, 'NEW', now())
                 ON CONFLICT (number) DO NOTHING
                 RETURNING number),
             q AS (
                 INSERT INTO accrual_queue (order_number, next_attempt_at, user_id)
                 SELECT number, now(), :uid::int8 FROM ins
                 RETURNING order_number)
             SELECT count(*) AS inserted FROM q;
