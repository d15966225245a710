-- GET /api/user/balance: the one statement LedgerRepository::balance runs
-- (crates/adapters-postgres/src/ledger.rs), as diesel renders it; parameters cast to the types
-- the service binds. :umin/:umax bound the user ids (set by bench/run.py).
\set uid random(:umin, :umax)
\set lim 1
SELECT "accounts"."balance", "accounts"."withdrawn" FROM "accounts" WHERE ("accounts"."user_id" = :uid::int8) LIMIT :lim::int8;
