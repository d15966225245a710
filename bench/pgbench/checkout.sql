-- What the connection pool sends before every statement of the service: deadpool's default
-- recycling of a diesel-async connection (RecyclingMethod::Verified) runs `SELECT 1` on each
-- checkout (diesel-async 0.9, src/pooled_connection/mod.rs). bench/run.py prepends this to an
-- endpoint's script for the "with checkout" ceiling: two round trips, as the service makes.
\set one 1
SELECT :one::int4;
