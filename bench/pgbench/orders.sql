-- GET /api/user/orders: the one statement OrderRepository::list runs
-- (crates/adapters-postgres/src/orders.rs), as diesel renders it.
\set uid random(:umin, :umax)
SELECT "orders"."number", "orders"."status", "orders"."accrual", "orders"."uploaded_at" FROM "orders" WHERE ("orders"."user_id" = :uid::int8) ORDER BY "orders"."uploaded_at" DESC, "orders"."id" DESC;
