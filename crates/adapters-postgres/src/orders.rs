//! [`OrderRepository`] in PostgreSQL.
//!
//! An upload inserts the order and its queue entry in one statement; a number that exists is
//! found through the unique constraint, so concurrent uploads of one number store it exactly
//! once. The workers are told after the commit (see [`crate::listener`]): a `NOTIFY` inside
//! the upload would make uploads commit one at a time.

use application::{
    ports::{
        orders::{InsertOrderOutcome, OrderRepository},
        Page, PageRequest,
    },
    RepositoryError,
};
use std::num::NonZeroU32;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{Bool, Int8, Text, Timestamptz},
};
use diesel_async::RunQueryDsl;
use domain::{Order, OrderNumber, UserId};

use crate::{
    error::from_diesel, models::OrderRow, prepared::prepared_statement, schema::orders, PgStore,
};

prepared_statement! {
    /// Stores a new order with its queue entry; nothing when the number exists, or when the
    /// user has `pending_limit` (unless 0) entries in the queue, which holds exactly the
    /// orders that are not final. The count stops at the limit, through the queue's
    /// (user_id, next_attempt_at) index, so it costs a customer in proportion to their own
    /// backlog, at most the limit.
    struct InsertOrder {
        number: String => Text,
        user: i64 => Int8,
        uploaded_at: DateTime<Utc> => Timestamptz,
        pending_limit: i64 => Int8,
    }
    "WITH room AS (
         SELECT $4 = 0 OR (SELECT count(*) FROM (
             SELECT 1 FROM accrual_queue WHERE user_id = $2 LIMIT $4) p) < $4 AS ok),
     ins AS (
         INSERT INTO orders (number, user_id, status, uploaded_at)
         SELECT $1, $2, 'NEW'::order_status, $3 FROM room WHERE room.ok
         ON CONFLICT (number) DO NOTHING
         RETURNING number),
     q AS (
         INSERT INTO accrual_queue (order_number, next_attempt_at, user_id)
         SELECT number, $3, $2 FROM ins
         RETURNING order_number)
     SELECT (SELECT count(*) FROM q) AS inserted, (SELECT ok FROM room) AS room"
}

#[derive(QueryableByName)]
struct Inserted {
    #[diesel(sql_type = Int8)]
    inserted: i64,
    #[diesel(sql_type = Bool)]
    room: bool,
}

#[async_trait]
impl OrderRepository for PgStore {
    async fn insert(
        &self,
        user: UserId,
        number: &OrderNumber,
        uploaded_at: DateTime<Utc>,
        pending_limit: Option<NonZeroU32>,
    ) -> Result<InsertOrderOutcome, RepositoryError> {
        let mut conn = self.conn().await?;
        let inserted: Inserted = InsertOrder {
            number: number.as_str().to_owned(),
            user: user.0,
            uploaded_at,
            pending_limit: pending_limit.map_or(0, |limit| i64::from(limit.get())),
        }
        .get_result(&mut conn)
        .await
        .map_err(from_diesel)?;
        // Whether stored now or before, the answer says the order is stored.
        self.confirm_synchronous_standby(&mut conn).await?;
        if inserted.inserted > 0 {
            self.signal.order_queued();
            return Ok(InsertOrderOutcome::Inserted);
        }
        // Not inserted: the number exists, or (without room) it may not; a number the user
        // uploaded before is answered as such even at the limit.
        let owner: Option<i64> = orders::table
            .filter(orders::number.eq(number.as_str()))
            .select(orders::user_id)
            .first(&mut conn)
            .await
            .optional()
            .map_err(from_diesel)?;
        Ok(match owner {
            Some(owner) if owner == user.0 => InsertOrderOutcome::AlreadyOwnedBySameUser,
            Some(_) => InsertOrderOutcome::OwnedByAnotherUser,
            None if !inserted.room => InsertOrderOutcome::PendingLimitReached,
            None => {
                return Err(RepositoryError::Internal(
                    "an order was neither stored nor found".into(),
                ))
            }
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

    async fn list_page(
        &self,
        user: UserId,
        page: PageRequest,
    ) -> Result<Page<Order>, RepositoryError> {
        let mut conn = self.conn().await?;
        let mut query = orders::table
            .filter(orders::user_id.eq(user.0))
            .order((orders::uploaded_at.desc(), orders::id.desc()))
            .select((
                orders::id,
                (
                    orders::number,
                    orders::status,
                    orders::accrual,
                    orders::uploaded_at,
                ),
            ))
            .limit(i64::from(page.limit.get()) + 1)
            .into_boxed();
        if let Some(before) = page.before {
            query = query.filter(
                orders::uploaded_at.lt(before.at).or(orders::uploaded_at
                    .eq(before.at)
                    .and(orders::id.lt(before.id))),
            );
        }
        let rows: Vec<(i64, OrderRow)> = query.load(&mut conn).await.map_err(from_diesel)?;
        crate::models::page(rows, page.limit, |row| row.uploaded_at, Order::try_from)
    }
}
