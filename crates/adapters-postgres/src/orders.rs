//! [`OrderRepository`] in PostgreSQL.
//!
//! An upload inserts the order and its queue entry in one statement; a number that exists is
//! found through the unique constraint, so concurrent uploads of one number store it exactly
//! once. The workers are told after the commit (see [`crate::listener`]): a `NOTIFY` inside
//! the upload would make uploads commit one at a time.

use application::{
    ports::orders::{InsertOrderOutcome, OrderRepository},
    RepositoryError,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{Int8, Text, Timestamptz},
};
use diesel_async::RunQueryDsl;
use domain::{Order, OrderNumber, UserId};

use crate::{
    error::from_diesel, models::OrderRow, prepared::prepared_statement, schema::orders, PgStore,
};

prepared_statement! {
    /// Stores a new order with its queue entry; nothing when the number exists.
    struct InsertOrder {
        number: String => Text,
        user: i64 => Int8,
        uploaded_at: DateTime<Utc> => Timestamptz,
    }
    "WITH ins AS (
         INSERT INTO orders (number, user_id, status, uploaded_at)
         VALUES ($1, $2, 'NEW', $3)
         ON CONFLICT (number) DO NOTHING
         RETURNING number),
     q AS (
         INSERT INTO accrual_queue (order_number, next_attempt_at, user_id)
         SELECT number, $3, $2 FROM ins
         RETURNING order_number)
     SELECT count(*) AS inserted FROM q"
}

#[derive(QueryableByName)]
struct Inserted {
    #[diesel(sql_type = Int8)]
    inserted: i64,
}

#[async_trait]
impl OrderRepository for PgStore {
    async fn insert(
        &self,
        user: UserId,
        number: &OrderNumber,
        uploaded_at: DateTime<Utc>,
    ) -> Result<InsertOrderOutcome, RepositoryError> {
        let mut conn = self.conn().await?;
        let inserted: Inserted = InsertOrder {
            number: number.as_str().to_owned(),
            user: user.0,
            uploaded_at,
        }
        .get_result(&mut conn)
        .await
        .map_err(from_diesel)?;
        if inserted.inserted > 0 {
            self.signal.order_queued();
            return Ok(InsertOrderOutcome::Inserted);
        }
        let owner: i64 = orders::table
            .filter(orders::number.eq(number.as_str()))
            .select(orders::user_id)
            .first(&mut conn)
            .await
            .map_err(from_diesel)?;
        Ok(if owner == user.0 {
            InsertOrderOutcome::AlreadyOwnedBySameUser
        } else {
            InsertOrderOutcome::OwnedByAnotherUser
        })
    }

    async fn list(&self, user: UserId) -> Result<Vec<Order>, RepositoryError> {
        let mut conn = self.conn().await?;
        let rows: Vec<OrderRow> = orders::table
            .filter(orders::user_id.eq(user.0))
            .order((orders::uploaded_at.desc(), orders::id.desc()))
            .select((
                orders::number,
                orders::status,
                orders::accrual,
                orders::uploaded_at,
            ))
            .load(&mut conn)
            .await
            .map_err(from_diesel)?;
        rows.into_iter().map(Order::try_from).collect()
    }
}
