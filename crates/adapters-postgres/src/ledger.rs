//! [`LedgerRepository`] in PostgreSQL.
//!
//! A withdrawal is one statement: a conditional debit (`balance >= sum`) feeding the insert of
//! the withdrawal row. Row locking makes concurrent debits queue up and re-check the balance,
//! the `CHECK (balance >= 0)` constraint backs that up, and a clash on the order number aborts
//! the whole statement, debit included.

use application::{
    ports::{
        ledger::{LedgerRepository, WithdrawOutcome},
        Page, PageRequest,
    },
    RepositoryError,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{Int8, Numeric, Text, Timestamptz},
};
use diesel_async::RunQueryDsl;
use domain::{Balance, Money, OrderNumber, UserId, Withdrawal};
use rust_decimal::Decimal;

use crate::{
    error::{from_diesel, is_unique_violation},
    models::{money, WithdrawalRow},
    numeric::PgDecimal,
    prepared::prepared_statement,
    schema::{accounts, withdrawals},
    PgStore,
};

prepared_statement! {
    /// Debits the account when it holds the sum, and records the withdrawal.
    struct Withdraw {
        user: i64 => Int8,
        sum: Decimal => Numeric,
        order: String => Text,
        at: DateTime<Utc> => Timestamptz,
    }
    "WITH debit AS (
         UPDATE accounts
         SET balance = balance - $2, withdrawn = withdrawn + $2
         WHERE user_id = $1 AND balance >= $2
         RETURNING user_id)
     INSERT INTO withdrawals (order_number, user_id, sum, processed_at)
     SELECT $3, user_id, $2, $4 FROM debit
     RETURNING id"
}

#[derive(QueryableByName)]
struct WithdrawalId {
    #[diesel(sql_type = Int8)]
    #[allow(dead_code)]
    id: i64,
}

#[async_trait]
impl LedgerRepository for PgStore {
    async fn balance(&self, user: UserId) -> Result<Balance, RepositoryError> {
        let mut conn = self.conn().await?;
        let row: Option<(PgDecimal, PgDecimal)> = accounts::table
            .find(user.0)
            .select((accounts::balance, accounts::withdrawn))
            .first(&mut conn)
            .await
            .optional()
            .map_err(from_diesel)?;
        match row {
            Some((PgDecimal(current), PgDecimal(withdrawn))) => Ok(Balance {
                current: money(current)?,
                withdrawn: money(withdrawn)?,
            }),
            None => Ok(Balance::default()),
        }
    }

    async fn withdraw(
        &self,
        user: UserId,
        order: &OrderNumber,
        sum: Money,
        at: DateTime<Utc>,
    ) -> Result<WithdrawOutcome, RepositoryError> {
        let mut conn = self.conn().await?;
        let result: Result<Option<WithdrawalId>, _> = Withdraw {
            user: user.0,
            sum: sum.amount(),
            order: order.as_str().to_owned(),
            at,
        }
        .get_result(&mut conn)
        .await
        .optional();
        match result {
            Ok(Some(_)) => {
                self.signal.customer_changed();
                self.confirm_synchronous_standby(&mut conn).await?;
                return Ok(WithdrawOutcome::Withdrawn);
            }
            Ok(None) => {}
            Err(e) if is_unique_violation(&e, "withdrawals_order_number_key") => {}
            Err(e) => return Err(from_diesel(e)),
        }
        // Nothing was charged: either the points are short or the number was used before.
        let previous: Option<(i64, Decimal)> = withdrawals::table
            .filter(withdrawals::order_number.eq(order.as_str()))
            .select((withdrawals::user_id, withdrawals::sum))
            .first(&mut conn)
            .await
            .optional()
            .map_err(from_diesel)?;
        // "Already withdrawn" tells of a stored withdrawal too.
        self.confirm_synchronous_standby(&mut conn).await?;
        Ok(match previous {
            None => WithdrawOutcome::InsufficientFunds,
            Some((owner, previous_sum)) if owner == user.0 && previous_sum == sum.amount() => {
                WithdrawOutcome::AlreadyWithdrawn
            }
            Some(_) => WithdrawOutcome::OrderNumberTaken,
        })
    }

    async fn withdrawals(&self, user: UserId) -> Result<Vec<Withdrawal>, RepositoryError> {
        let mut conn = self.conn().await?;
        let rows: Vec<WithdrawalRow> = withdrawals::table
            .filter(withdrawals::user_id.eq(user.0))
            .order((withdrawals::processed_at.desc(), withdrawals::id.desc()))
            .select((
                withdrawals::order_number,
                withdrawals::sum,
                withdrawals::processed_at,
            ))
            .load(&mut conn)
            .await
            .map_err(from_diesel)?;
        rows.into_iter().map(Withdrawal::try_from).collect()
    }

    async fn withdrawals_page(
        &self,
        user: UserId,
        page: PageRequest,
    ) -> Result<Page<Withdrawal>, RepositoryError> {
        let mut conn = self.conn().await?;
        let mut query = withdrawals::table
            .filter(withdrawals::user_id.eq(user.0))
            .order((withdrawals::processed_at.desc(), withdrawals::id.desc()))
            .select((
                withdrawals::id,
                (
                    withdrawals::order_number,
                    withdrawals::sum,
                    withdrawals::processed_at,
                ),
            ))
            .limit(i64::from(page.limit.get()) + 1)
            .into_boxed();
        if let Some(before) = page.before {
            query = query.filter(
                withdrawals::processed_at
                    .lt(before.at)
                    .or(withdrawals::processed_at
                        .eq(before.at)
                        .and(withdrawals::id.lt(before.id))),
            );
        }
        let rows: Vec<(i64, WithdrawalRow)> = query.load(&mut conn).await.map_err(from_diesel)?;
        crate::models::page(
            rows,
            page.limit,
            |row| row.processed_at,
            Withdrawal::try_from,
        )
    }
}
