//! The ledger audit: the rules the stored ledger must obey whatever happened (crashes, retries,
//! several instances), read from one consistent snapshot.
//!
//! The audit runs in a `REPEATABLE READ READ ONLY` transaction: every query sees the same
//! snapshot, and, being plain reads, they take no lock that a running service's statements
//! wait for. This is the one definition of the ledger's invariants: `gophermart audit` reports
//! it to operators and the chaos test checks it.
//!
//! Of the queue, the audit reads only `accrual_queue.order_number`, so columns added to the
//! queue do not change it.

use std::fmt;

use diesel::{
    sql_types::{BigInt, Numeric, Text},
    QueryableByName,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use rust_decimal::Decimal;

/// Most violations of one invariant listed in a report; all of them are counted.
pub const EXAMPLES_PER_INVARIANT: i64 = 100;

/// A rule of the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Invariant {
    /// Each account's `balance + withdrawn` equals the accruals of its processed orders.
    BalanceMatchesAccruals,
    /// Each account's `withdrawn` equals the sum of its withdrawals.
    WithdrawnMatchesWithdrawals,
    /// No account has a negative balance.
    NoNegativeBalance,
    /// Every order not yet final has exactly one queue entry.
    UnfinishedOrderQueuedOnce,
    /// No final order (`PROCESSED` or `INVALID`) has a queue entry.
    FinishedOrderNotQueued,
}

impl Invariant {
    /// Every invariant, in report order.
    pub const ALL: [Self; 5] = [
        Self::BalanceMatchesAccruals,
        Self::WithdrawnMatchesWithdrawals,
        Self::NoNegativeBalance,
        Self::UnfinishedOrderQueuedOnce,
        Self::FinishedOrderNotQueued,
    ];

    /// A stable identifier, for machines.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::BalanceMatchesAccruals => "balance_matches_accruals",
            Self::WithdrawnMatchesWithdrawals => "withdrawn_matches_withdrawals",
            Self::NoNegativeBalance => "no_negative_balance",
            Self::UnfinishedOrderQueuedOnce => "unfinished_order_queued_once",
            Self::FinishedOrderNotQueued => "finished_order_not_queued",
        }
    }

    /// The rule in words.
    #[must_use]
    pub fn description(self) -> &'static str {
        match self {
            Self::BalanceMatchesAccruals => {
                "each account's balance + withdrawn equals the accruals of its processed orders"
            }
            Self::WithdrawnMatchesWithdrawals => {
                "each account's withdrawn equals the sum of its withdrawals"
            }
            Self::NoNegativeBalance => "no account has a negative balance",
            Self::UnfinishedOrderQueuedOnce => {
                "every order not yet PROCESSED or INVALID has exactly one accrual queue entry"
            }
            Self::FinishedOrderNotQueued => {
                "no PROCESSED or INVALID order has an accrual queue entry"
            }
        }
    }
}

/// One breach of an invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// `balance + withdrawn` differs from what the user's processed orders earned.
    Unbalanced {
        /// The account's user.
        user_id: i64,
        /// Spendable points.
        balance: Decimal,
        /// Points ever spent.
        withdrawn: Decimal,
        /// The accruals of the user's processed orders.
        accrued: Decimal,
    },
    /// `withdrawn` differs from the sum of the user's withdrawals.
    WithdrawnMismatch {
        /// The account's user.
        user_id: i64,
        /// The account's `withdrawn`.
        withdrawn: Decimal,
        /// The sum of the user's withdrawals.
        withdrawals: Decimal,
    },
    /// A negative balance.
    NegativeBalance {
        /// The account's user.
        user_id: i64,
        /// The balance.
        balance: Decimal,
    },
    /// An order not yet final without exactly one queue entry.
    UnfinishedOrderQueue {
        /// The order's number.
        number: String,
        /// Its status.
        status: String,
        /// Its queue entries.
        entries: i64,
    },
    /// A final order with queue entries.
    FinishedOrderQueued {
        /// The order's number.
        number: String,
        /// Its status.
        status: String,
        /// Its queue entries.
        entries: i64,
    },
}

impl Violation {
    /// The invariant this breaks.
    #[must_use]
    pub fn invariant(&self) -> Invariant {
        match self {
            Self::Unbalanced { .. } => Invariant::BalanceMatchesAccruals,
            Self::WithdrawnMismatch { .. } => Invariant::WithdrawnMatchesWithdrawals,
            Self::NegativeBalance { .. } => Invariant::NoNegativeBalance,
            Self::UnfinishedOrderQueue { .. } => Invariant::UnfinishedOrderQueuedOnce,
            Self::FinishedOrderQueued { .. } => Invariant::FinishedOrderNotQueued,
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unbalanced {
                user_id,
                balance,
                withdrawn,
                accrued,
            } => write!(
                f,
                "user {user_id}: balance {balance} + withdrawn {withdrawn} = {}, but processed orders accrued {accrued}",
                balance + withdrawn
            ),
            Self::WithdrawnMismatch {
                user_id,
                withdrawn,
                withdrawals,
            } => write!(
                f,
                "user {user_id}: withdrawn {withdrawn}, but withdrawals sum to {withdrawals}"
            ),
            Self::NegativeBalance { user_id, balance } => {
                write!(f, "user {user_id}: balance {balance}")
            }
            Self::UnfinishedOrderQueue {
                number,
                status,
                entries,
            }
            | Self::FinishedOrderQueued {
                number,
                status,
                entries,
            } => {
                let noun = if *entries == 1 { "entry" } else { "entries" };
                write!(f, "order {number} ({status}) has {entries} queue {noun}")
            }
        }
    }
}

/// What one invariant's check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvariantCheck {
    /// The rule.
    pub invariant: Invariant,
    /// How many rows break it.
    pub violations: i64,
    /// Up to [`EXAMPLES_PER_INVARIANT`] of them.
    pub examples: Vec<Violation>,
}

impl InvariantCheck {
    /// Whether the rule holds.
    #[must_use]
    pub fn holds(&self) -> bool {
        self.violations == 0
    }
}

/// The ledger as one snapshot saw it, and every invariant checked against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerAudit {
    /// Users (each has at most one account).
    pub users: i64,
    /// Orders stored.
    pub orders: i64,
    /// Orders not yet final.
    pub unfinished_orders: i64,
    /// Accrual queue entries.
    pub queue_entries: i64,
    /// Withdrawals stored.
    pub withdrawals: i64,
    /// The sum of all balances.
    pub total_balance: Decimal,
    /// The sum of all accounts' `withdrawn`.
    pub total_withdrawn: Decimal,
    /// The accruals of all processed orders.
    pub total_accrued: Decimal,
    /// One check per invariant, in [`Invariant::ALL`] order.
    pub checks: Vec<InvariantCheck>,
}

/// Why the audit could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// No connection to the database.
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    /// A query failed.
    #[error("cannot read the ledger: {0}")]
    Read(String),
}

impl LedgerAudit {
    /// Reads the ledger at `database_url` in one read-only snapshot and checks it.
    ///
    /// # Errors
    /// When the database cannot be reached or read.
    pub async fn run(database_url: &str) -> Result<Self, AuditError> {
        let mut conn = AsyncPgConnection::establish(database_url)
            .await
            .map_err(|error| AuditError::Connect(error.to_string()))?;
        conn.build_transaction()
            .repeatable_read()
            .read_only()
            .run(async |conn| read(conn).await)
            .await
            .map_err(|error| AuditError::Read(error.to_string()))
    }

    /// Whether every invariant holds.
    #[must_use]
    pub fn holds(&self) -> bool {
        self.checks.iter().all(InvariantCheck::holds)
    }

    /// The checks whose invariant is broken.
    pub fn violated(&self) -> impl Iterator<Item = &InvariantCheck> {
        self.checks.iter().filter(|check| !check.holds())
    }

    /// The check of one invariant.
    ///
    /// # Panics
    /// Never: every audit checks every invariant.
    #[must_use]
    pub fn check(&self, invariant: Invariant) -> &InvariantCheck {
        self.checks
            .iter()
            .find(|check| check.invariant == invariant)
            .expect("every invariant is checked")
    }
}

const FINISHED: &str = "('PROCESSED', 'INVALID')";

#[derive(QueryableByName)]
struct Totals {
    #[diesel(sql_type = BigInt)]
    users: i64,
    #[diesel(sql_type = BigInt)]
    orders: i64,
    #[diesel(sql_type = BigInt)]
    unfinished_orders: i64,
    #[diesel(sql_type = BigInt)]
    queue_entries: i64,
    #[diesel(sql_type = BigInt)]
    withdrawals: i64,
    #[diesel(sql_type = Numeric)]
    total_balance: Decimal,
    #[diesel(sql_type = Numeric)]
    total_withdrawn: Decimal,
    #[diesel(sql_type = Numeric)]
    total_accrued: Decimal,
}

#[derive(QueryableByName)]
struct UnbalancedRow {
    #[diesel(sql_type = BigInt)]
    user_id: i64,
    #[diesel(sql_type = Numeric)]
    balance: Decimal,
    #[diesel(sql_type = Numeric)]
    withdrawn: Decimal,
    #[diesel(sql_type = Numeric)]
    accrued: Decimal,
    #[diesel(sql_type = BigInt)]
    found: i64,
}

#[derive(QueryableByName)]
struct WithdrawnRow {
    #[diesel(sql_type = BigInt)]
    user_id: i64,
    #[diesel(sql_type = Numeric)]
    withdrawn: Decimal,
    #[diesel(sql_type = Numeric)]
    withdrawals: Decimal,
    #[diesel(sql_type = BigInt)]
    found: i64,
}

#[derive(QueryableByName)]
struct NegativeRow {
    #[diesel(sql_type = BigInt)]
    user_id: i64,
    #[diesel(sql_type = Numeric)]
    balance: Decimal,
    #[diesel(sql_type = BigInt)]
    found: i64,
}

#[derive(QueryableByName)]
struct QueueRow {
    #[diesel(sql_type = Text)]
    number: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = BigInt)]
    entries: i64,
    #[diesel(sql_type = BigInt)]
    found: i64,
}

fn check<R>(
    invariant: Invariant,
    rows: Vec<R>,
    found: impl Fn(&R) -> i64,
    violation: impl Fn(R) -> Violation,
) -> InvariantCheck {
    InvariantCheck {
        invariant,
        violations: rows.as_slice().first().map_or(0, &found),
        examples: rows.into_iter().map(violation).collect(),
    }
}

async fn read(conn: &mut AsyncPgConnection) -> Result<LedgerAudit, diesel::result::Error> {
    let totals: Totals = diesel::sql_query(format!(
        "SELECT (SELECT count(*) FROM users) AS users,
                (SELECT count(*) FROM orders) AS orders,
                (SELECT count(*) FROM orders WHERE status NOT IN {FINISHED}) AS unfinished_orders,
                (SELECT count(*) FROM accrual_queue) AS queue_entries,
                (SELECT count(*) FROM withdrawals) AS withdrawals,
                (SELECT COALESCE(sum(balance), 0) FROM accounts) AS total_balance,
                (SELECT COALESCE(sum(withdrawn), 0) FROM accounts) AS total_withdrawn,
                (SELECT COALESCE(sum(accrual), 0) FROM orders WHERE status = 'PROCESSED')
                    AS total_accrued"
    ))
    .get_result(conn)
    .await?;

    // A user without an account row counts as an account with nothing in it.
    let unbalanced: Vec<UnbalancedRow> = diesel::sql_query(format!(
        "SELECT u.id AS user_id, COALESCE(a.balance, 0) AS balance,
                COALESCE(a.withdrawn, 0) AS withdrawn, COALESCE(e.accrued, 0) AS accrued,
                count(*) OVER () AS found
         FROM users u
         LEFT JOIN accounts a ON a.user_id = u.id
         LEFT JOIN (SELECT user_id, sum(accrual) AS accrued FROM orders
                    WHERE status = 'PROCESSED' GROUP BY user_id) e ON e.user_id = u.id
         WHERE COALESCE(a.balance, 0) + COALESCE(a.withdrawn, 0) <> COALESCE(e.accrued, 0)
         ORDER BY u.id LIMIT {EXAMPLES_PER_INVARIANT}"
    ))
    .load(conn)
    .await?;
    let withdrawn: Vec<WithdrawnRow> = diesel::sql_query(format!(
        "SELECT u.id AS user_id, COALESCE(a.withdrawn, 0) AS withdrawn,
                COALESCE(w.spent, 0) AS withdrawals, count(*) OVER () AS found
         FROM users u
         LEFT JOIN accounts a ON a.user_id = u.id
         LEFT JOIN (SELECT user_id, sum(sum) AS spent FROM withdrawals GROUP BY user_id) w
                ON w.user_id = u.id
         WHERE COALESCE(a.withdrawn, 0) <> COALESCE(w.spent, 0)
         ORDER BY u.id LIMIT {EXAMPLES_PER_INVARIANT}"
    ))
    .load(conn)
    .await?;
    let negative: Vec<NegativeRow> = diesel::sql_query(format!(
        "SELECT user_id, balance, count(*) OVER () AS found
         FROM accounts WHERE balance < 0
         ORDER BY user_id LIMIT {EXAMPLES_PER_INVARIANT}"
    ))
    .load(conn)
    .await?;
    let unfinished: Vec<QueueRow> = diesel::sql_query(format!(
        "SELECT o.number, o.status::text AS status, count(q.order_number) AS entries,
                count(*) OVER () AS found
         FROM orders o LEFT JOIN accrual_queue q ON q.order_number = o.number
         WHERE o.status NOT IN {FINISHED}
         GROUP BY o.number, o.status
         HAVING count(q.order_number) <> 1
         ORDER BY o.number LIMIT {EXAMPLES_PER_INVARIANT}"
    ))
    .load(conn)
    .await?;
    let finished: Vec<QueueRow> = diesel::sql_query(format!(
        "SELECT o.number, o.status::text AS status, count(*) AS entries,
                count(*) OVER () AS found
         FROM orders o JOIN accrual_queue q ON q.order_number = o.number
         WHERE o.status IN {FINISHED}
         GROUP BY o.number, o.status
         ORDER BY o.number LIMIT {EXAMPLES_PER_INVARIANT}"
    ))
    .load(conn)
    .await?;

    Ok(LedgerAudit {
        users: totals.users,
        orders: totals.orders,
        unfinished_orders: totals.unfinished_orders,
        queue_entries: totals.queue_entries,
        withdrawals: totals.withdrawals,
        total_balance: totals.total_balance,
        total_withdrawn: totals.total_withdrawn,
        total_accrued: totals.total_accrued,
        checks: vec![
            check(
                Invariant::BalanceMatchesAccruals,
                unbalanced,
                |r| r.found,
                |r| Violation::Unbalanced {
                    user_id: r.user_id,
                    balance: r.balance,
                    withdrawn: r.withdrawn,
                    accrued: r.accrued,
                },
            ),
            check(
                Invariant::WithdrawnMatchesWithdrawals,
                withdrawn,
                |r| r.found,
                |r| Violation::WithdrawnMismatch {
                    user_id: r.user_id,
                    withdrawn: r.withdrawn,
                    withdrawals: r.withdrawals,
                },
            ),
            check(
                Invariant::NoNegativeBalance,
                negative,
                |r| r.found,
                |r| Violation::NegativeBalance {
                    user_id: r.user_id,
                    balance: r.balance,
                },
            ),
            check(
                Invariant::UnfinishedOrderQueuedOnce,
                unfinished,
                |r| r.found,
                |r| Violation::UnfinishedOrderQueue {
                    number: r.number,
                    status: r.status,
                    entries: r.entries,
                },
            ),
            check(
                Invariant::FinishedOrderNotQueued,
                finished,
                |r| r.found,
                |r| Violation::FinishedOrderQueued {
                    number: r.number,
                    status: r.status,
                    entries: r.entries,
                },
            ),
        ],
    })
}
