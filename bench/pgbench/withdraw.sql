-- POST /api/user/balance/withdraw with enough points: the one statement
-- LedgerRepository::withdraw runs (crates/adapters-postgres/src/ledger.rs): the conditional
-- debit feeding the insert of the withdrawal. The processing time the service binds as $4 is
-- now() here; numbers have 15 digits, unlike any the HTTP benchmark sends.
\set uid random(:umin, :umax)
\set num random(100000000000000, 999999999999999)
\set sum 1
WITH debit AS (
                 UPDATE accounts
                 SET balance = balance - :sum::numeric, withdrawn = withdrawn + :sum::numeric
                 WHERE user_id = :uid::int8 AND balance >= :sum::numeric
                 RETURNING user_id)
             INSERT INTO withdrawals (order_number, user_id, sum, processed_at)
             SELECT :num::text, user_id, :sum::numeric, now() FROM debit
             RETURNING id;
