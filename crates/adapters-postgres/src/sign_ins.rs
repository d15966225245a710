//! [`SignInFailures`] in PostgreSQL: the `sign_in_failures` table, shared by every instance.
//!
//! A sign-in reads the stored hash and both failure counts in one statement, so a login with
//! no recent failures costs the one round trip it always did. Windows run on PostgreSQL's
//! clock (`clock_timestamp()`), so instances' clocks need not agree. Each recorded failure
//! also removes a few rows whose window ended, oldest first and skipping rows another
//! statement holds, so the table keeps only what the running windows need without a cleaning
//! job. Nothing depends on the session, so it holds behind a transaction pooler.

use std::{net::IpAddr, time::Duration};

use application::{
    ports::{
        security::PasswordHash,
        throttle::{FailureCount, RecentFailures, SignInFailures, SignInRecord},
        users::StoredCredentials,
    },
    RepositoryError,
};
use async_trait::async_trait;
use diesel::{
    sql_types::{Int4, Int8, Nullable, Text},
    QueryableByName,
};
use diesel_async::RunQueryDsl;
use domain::{Login, UserId};

use crate::{error::from_diesel, prepared::prepared_statement, PgStore};

prepared_statement! {
    /// A login's stored hash, with the failures of that login from an address and of the
    /// address, within the window.
    struct ReadSignIn {
        login: String => Text,
        address: String => Text,
        window_us: i64 => Int8,
    }
    "SELECT u.id, u.password_hash,
            COALESCE(l.failures, 0) AS login_failures, COALESCE(l.left_us, 0) AS login_left_us,
            COALESCE(a.failures, 0) AS address_failures, COALESCE(a.left_us, 0) AS address_left_us
     FROM (SELECT clock_timestamp() AS now, $3 * interval '1 microsecond' AS win) c
     LEFT JOIN users u ON u.login = $1
     LEFT JOIN LATERAL (
         SELECT f.failures,
                (extract(epoch FROM f.started_at + c.win - c.now) * 1000000)::bigint AS left_us
         FROM sign_in_failures f
         WHERE f.address = $2::inet AND f.login = $1 AND f.started_at > c.now - c.win) l ON true
     LEFT JOIN LATERAL (
         SELECT f.failures,
                (extract(epoch FROM f.started_at + c.win - c.now) * 1000000)::bigint AS left_us
         FROM sign_in_failures f
         WHERE f.address = $2::inet AND f.login = '' AND f.started_at > c.now - c.win) a ON true"
}

prepared_statement! {
    /// Counts a failure of a login from an address and of the address (a count whose window
    /// ended starts again), and removes up to four other rows whose window ended.
    struct RecordFailure {
        login: String => Text,
        address: String => Text,
        window_us: i64 => Int8,
    }
    "WITH c AS (SELECT clock_timestamp() AS now, $3 * interval '1 microsecond' AS win),
     ended AS (
         DELETE FROM sign_in_failures
         WHERE (address, login) IN (
             SELECT e.address, e.login FROM sign_in_failures e, c
             WHERE e.started_at <= c.now - c.win
               AND NOT (e.address = $2::inet AND e.login IN ($1, ''))
             ORDER BY e.started_at
             LIMIT 4
             FOR UPDATE OF e SKIP LOCKED))
     INSERT INTO sign_in_failures AS f (address, login, started_at, failures)
     SELECT $2::inet, k.login, c.now, 1 FROM c, (VALUES ($1), ('')) AS k (login)
     ON CONFLICT (address, login) DO UPDATE SET
         started_at = CASE WHEN f.started_at <= EXCLUDED.started_at - $3 * interval '1 microsecond'
                           THEN EXCLUDED.started_at ELSE f.started_at END,
         failures = CASE WHEN f.started_at <= EXCLUDED.started_at - $3 * interval '1 microsecond'
                         THEN 1 ELSE f.failures + 1 END"
}

prepared_statement! {
    /// Forgets the failures of a login from an address.
    struct ForgetFailures {
        login: String => Text,
        address: String => Text,
    }
    "DELETE FROM sign_in_failures WHERE address = $2::inet AND login = $1"
}

#[derive(QueryableByName)]
struct SignInRow {
    #[diesel(sql_type = Nullable<Int8>)]
    id: Option<i64>,
    #[diesel(sql_type = Nullable<Text>)]
    password_hash: Option<String>,
    #[diesel(sql_type = Int4)]
    login_failures: i32,
    #[diesel(sql_type = Int8)]
    login_left_us: i64,
    #[diesel(sql_type = Int4)]
    address_failures: i32,
    #[diesel(sql_type = Int8)]
    address_left_us: i64,
}

fn count(failures: i32, left_us: i64) -> FailureCount {
    FailureCount {
        failures: u32::try_from(failures).unwrap_or(0),
        window_left: Duration::from_micros(u64::try_from(left_us).unwrap_or(0)),
    }
}

fn micros(window: Duration) -> i64 {
    i64::try_from(window.as_micros()).unwrap_or(i64::MAX)
}

/// The one text form of an address: an IPv4 address reached over IPv6 counts as IPv4.
fn address(client: IpAddr) -> String {
    client.to_canonical().to_string()
}

#[async_trait]
impl SignInFailures for PgStore {
    async fn sign_in_record(
        &self,
        login: &Login,
        client: IpAddr,
        window: Duration,
    ) -> Result<SignInRecord, RepositoryError> {
        let mut conn = self.conn().await?;
        let row: SignInRow = ReadSignIn {
            login: login.as_str().to_owned(),
            address: address(client),
            window_us: micros(window),
        }
        .get_result(&mut conn)
        .await
        .map_err(from_diesel)?;
        let credentials = match (row.id, row.password_hash) {
            (Some(id), Some(hash)) => Some(StoredCredentials {
                id: UserId(id),
                password_hash: PasswordHash(hash),
            }),
            _ => None,
        };
        Ok(SignInRecord {
            credentials,
            failures: RecentFailures {
                login_from_address: count(row.login_failures, row.login_left_us),
                address: count(row.address_failures, row.address_left_us),
            },
        })
    }

    async fn record_failure(
        &self,
        login: &Login,
        client: IpAddr,
        window: Duration,
    ) -> Result<(), RepositoryError> {
        let mut conn = self.conn().await?;
        RecordFailure {
            login: login.as_str().to_owned(),
            address: address(client),
            window_us: micros(window),
        }
        .execute(&mut conn)
        .await
        .map_err(from_diesel)?;
        Ok(())
    }

    async fn forget_failures(&self, login: &Login, client: IpAddr) -> Result<(), RepositoryError> {
        let mut conn = self.conn().await?;
        ForgetFailures {
            login: login.as_str().to_owned(),
            address: address(client),
        }
        .execute(&mut conn)
        .await
        .map_err(from_diesel)?;
        Ok(())
    }
}
