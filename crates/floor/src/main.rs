//! The benchmark's floor: `GET /api/user/balance` and `GET /api/user/orders` (the whole list)
//! served by the plainest server this stack allows, to measure the service against
//! (`make bench`, phase `floor`; docs/benchmarks.md).
//!
//! It does what the service does for these two reads and nothing more: the same token check
//! (HS256 with the `JWT_SECRET` setting, `exp` and `sub` required, no leeway; the token from
//! `Authorization: Bearer` or the `token` cookie), the same SQL statements as named prepared
//! statements (the service's default mode), and the same JSON bytes (money without trailing
//! zeros, times in RFC 3339 to the second in UTC, 204 for an empty list). No middleware, no
//! metrics, no logs, no request limit, no ETag; any other path is 404 and a refused token 401
//! with no body.
//!
//! Settings (environment, the service's names): `DATABASE_URI` (required), `RUN_ADDRESS`
//! (`127.0.0.1:8080`), `JWT_SECRET` (required), `DATABASE_POOL_SIZE` (16), `HTTP_WORKERS`
//! (0: one per core).

use std::fmt::Write as _;

use actix_web::{
    http::header::{self, ContentType},
    web, App, HttpRequest, HttpResponse, HttpServer,
};
use chrono::{DateTime, SecondsFormat, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rust_decimal::Decimal;
use tokio_postgres::{
    types::{FromSql, Kind, Type},
    NoTls,
};

/// The statement `LedgerRepository::balance` runs (crates/adapters-postgres/src/ledger.rs), as
/// diesel renders it: the user's id, then the limit (1), both `int8`.
const BALANCE_SQL: &str = r#"SELECT "accounts"."balance", "accounts"."withdrawn" FROM "accounts" WHERE ("accounts"."user_id" = $1) LIMIT $2"#;

/// The statement `OrderRepository::list` runs (crates/adapters-postgres/src/orders.rs), as
/// diesel renders it.
const ORDERS_SQL: &str = r#"SELECT "orders"."number", "orders"."status", "orders"."accrual", "orders"."uploaded_at" FROM "orders" WHERE ("orders"."user_id" = $1) ORDER BY "orders"."uploaded_at" DESC, "orders"."id" DESC"#;

/// The service's claims (crates/adapters-crypto/src/token.rs); only `sub` is read.
#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
}

struct State {
    pool: Pool,
    decoding: DecodingKey,
    validation: Validation,
}

/// The token as the service finds it (crates/adapters-http/src/auth.rs): `Authorization`,
/// with or without the `Bearer` scheme, else the `token` cookie.
fn token_from(req: &HttpRequest) -> Option<String> {
    if let Some(value) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let value = value.trim();
        let token = match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => value,
        };
        if !token.is_empty() {
            return Some(token.to_owned());
        }
    }
    req.cookie("token").map(|c| c.value().to_owned())
}

/// The signed-in user's id; `None`: answer 401.
fn user(req: &HttpRequest, state: &State) -> Option<i64> {
    let token = token_from(req)?;
    let data = jsonwebtoken::decode::<Claims>(&token, &state.decoding, &state.validation).ok()?;
    data.claims.sub.parse().ok()
}

/// Money as the service writes it: the decimal normalised (no trailing zeros), as a number.
fn money(out: &mut String, value: Decimal) {
    let _ = write!(out, "{}", value.normalize());
}

fn unavailable(error: &dyn std::fmt::Display) -> HttpResponse {
    eprintln!("floor: {error}");
    HttpResponse::ServiceUnavailable().finish()
}

async fn balance(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    let Some(user) = user(&req, &state) else {
        return HttpResponse::Unauthorized().finish();
    };
    let client = match state.pool.get().await {
        Ok(client) => client,
        Err(e) => return unavailable(&e),
    };
    let statement = match client.prepare_cached(BALANCE_SQL).await {
        Ok(statement) => statement,
        Err(e) => return unavailable(&e),
    };
    let row = match client.query_opt(&statement, &[&user, &1_i64]).await {
        Ok(row) => row,
        Err(e) => return unavailable(&e),
    };
    let (current, withdrawn) = row.map_or((Decimal::ZERO, Decimal::ZERO), |row| {
        (row.get::<_, Decimal>(0), row.get::<_, Decimal>(1))
    });
    let mut body = String::with_capacity(48);
    body.push_str("{\"current\":");
    money(&mut body, current);
    body.push_str(",\"withdrawn\":");
    money(&mut body, withdrawn);
    body.push('}');
    HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(body)
}

/// An `order_status` value: PostgreSQL sends an enum's label as its text.
struct Label(String);

impl<'a> FromSql<'a> for Label {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Self(std::str::from_utf8(raw)?.to_owned()))
    }

    fn accepts(ty: &Type) -> bool {
        matches!(ty.kind(), Kind::Enum(_))
    }
}

/// A JSON string, escaped as serde_json escapes it; order numbers and status labels hold
/// nothing to escape, but the floor does not rely on it.
fn string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

async fn orders(req: HttpRequest, state: web::Data<State>) -> HttpResponse {
    let Some(user) = user(&req, &state) else {
        return HttpResponse::Unauthorized().finish();
    };
    let client = match state.pool.get().await {
        Ok(client) => client,
        Err(e) => return unavailable(&e),
    };
    let statement = match client.prepare_cached(ORDERS_SQL).await {
        Ok(statement) => statement,
        Err(e) => return unavailable(&e),
    };
    let rows = match client.query(&statement, &[&user]).await {
        Ok(rows) => rows,
        Err(e) => return unavailable(&e),
    };
    drop(client);
    if rows.is_empty() {
        return HttpResponse::NoContent().finish();
    }
    let mut body = String::with_capacity(rows.len() * 96);
    body.push('[');
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str("{\"number\":");
        string(&mut body, row.get::<_, &str>(0));
        body.push_str(",\"status\":");
        string(&mut body, &row.get::<_, Label>(1).0);
        if let Some(accrual) = row.get::<_, Option<Decimal>>(2) {
            body.push_str(",\"accrual\":");
            money(&mut body, accrual);
        }
        body.push_str(",\"uploaded_at\":\"");
        let uploaded_at: DateTime<Utc> = row.get(3);
        body.push_str(&uploaded_at.to_rfc3339_opts(SecondsFormat::Secs, true));
        body.push_str("\"}");
    }
    body.push(']');
    HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(body)
}

fn setting(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn number(name: &str, default: usize) -> std::io::Result<usize> {
    setting(name).map_or(Ok(default), |v| {
        v.parse()
            .map_err(|_| std::io::Error::other(format!("{name} is not a number: {v}")))
    })
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let required = |name: &str| {
        setting(name).ok_or_else(|| std::io::Error::other(format!("{name} must be set")))
    };
    let database = required("DATABASE_URI")?;
    let secret = required("JWT_SECRET")?;
    let address = setting("RUN_ADDRESS").unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let pool_size = number("DATABASE_POOL_SIZE", 16)?;
    let workers = number("HTTP_WORKERS", 0)?;

    let config: tokio_postgres::Config = database.parse().map_err(std::io::Error::other)?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(pool_size)
        .build()
        .map_err(std::io::Error::other)?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let state = web::Data::new(State {
        pool,
        decoding: DecodingKey::from_secret(secret.as_bytes()),
        validation,
    });

    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/api/user/balance", web::get().to(balance))
            .route("/api/user/orders", web::get().to(orders))
    });
    if workers > 0 {
        server = server.workers(workers);
    }
    server.bind(address)?.run().await
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn written(text: &str) -> String {
        let mut out = String::new();
        money(&mut out, Decimal::from_str(text).expect("decimal"));
        out
    }

    /// As the service's `money` (crates/adapters-http/src/routes/json.rs) writes them.
    #[test]
    fn money_is_written_without_trailing_zeros() {
        assert_eq!(written("500.50"), "500.5");
        assert_eq!(written("42.00"), "42");
        assert_eq!(written("729.98"), "729.98");
        assert_eq!(written("999999999999999999.99"), "999999999999999999.99");
        assert_eq!(written("0.00"), "0");
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut out = String::new();
        string(&mut out, "a\"b\\c\n\u{1}");
        assert_eq!(out, r#""a\"b\\c\n\u0001""#);
    }
}
