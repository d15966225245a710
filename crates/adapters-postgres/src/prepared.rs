//! Statements written in SQL that stay prepared on every connection.
//!
//! diesel never caches a `sql_query` (its text could be built at run time), nor an `UPDATE`
//! built with its DSL, so each call would parse and plan the statement again, in an extra
//! round trip, and close it afterwards. The statements this crate writes in SQL are fixed
//! texts, so [`prepared_statement!`] declares each as a struct of its parameters with a static
//! query id: diesel prepares it once per connection and then only binds and executes it.
//!
//! The SQL keeps PostgreSQL's `$1`, `$2`... placeholders, numbered in the order the struct's
//! fields are declared; a placeholder may appear several times (it is bound once per
//! appearance).

/// A piece of a statement's SQL: literal text, or the placeholder of a numbered parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Piece<'s> {
    Sql(&'s str),
    Parameter(usize),
}

/// Splits SQL at its `$n` placeholders. A `$` not followed by digits is literal text.
pub(crate) fn pieces(sql: &str) -> impl Iterator<Item = Piece<'_>> {
    let mut rest = sql;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if let Some(after) = rest.strip_prefix('$') {
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            if let Ok(n) = after[..digits].parse() {
                rest = &after[digits..];
                return Some(Piece::Parameter(n));
            }
        }
        // Literal text up to the next `$` that starts a placeholder (or the end).
        let mut end = rest.len();
        for (at, _) in rest.match_indices('$').filter(|&(at, _)| at > 0) {
            if rest[at + 1..].starts_with(|c: char| c.is_ascii_digit()) {
                end = at;
                break;
            }
        }
        let (text, tail) = rest.split_at(end);
        rest = tail;
        Some(Piece::Sql(text))
    })
}

/// The error for a placeholder that names no field of the statement.
pub(crate) fn unknown_parameter(statement: &str, n: usize) -> diesel::result::Error {
    diesel::result::Error::QueryBuilderError(format!("{statement}: no parameter ${n}").into())
}

/// Declares a statement kept prepared on each connection:
///
/// ```ignore
/// prepared_statement! {
///     /// What it does.
///     struct Withdraw {
///         user: i64 => Int8,
///         sum: Decimal => Numeric,
///     }
///     "UPDATE accounts SET balance = balance - $2 WHERE user_id = $1 AND balance >= $2"
/// }
/// ```
///
/// makes a struct with those fields (`$1` is the first) that runs like any diesel query
/// (`execute`, `load`, `get_result` into a `QueryableByName` row).
macro_rules! prepared_statement {
    (
        $(#[$meta:meta])*
        struct $name:ident {
            $($field:ident: $ty:ty => $sql_type:ty),* $(,)?
        }
        $sql:expr
    ) => {
        $(#[$meta])*
        pub(crate) struct $name {
            $(pub(crate) $field: $ty,)*
        }

        impl diesel::query_builder::QueryId for $name {
            type QueryId = Self;
            const HAS_STATIC_QUERY_ID: bool = true;
        }

        impl diesel::query_builder::Query for $name {
            type SqlType = diesel::sql_types::Untyped;
        }

        impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for $name {
            fn walk_ast<'b>(
                &'b self,
                mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
            ) -> diesel::QueryResult<()> {
                for piece in $crate::prepared::pieces($sql) {
                    match piece {
                        $crate::prepared::Piece::Sql(text) => out.push_sql(text),
                        $crate::prepared::Piece::Parameter(n) => {
                            #[allow(unused_mut, unused_variables)]
                            let mut field = 0;
                            $(
                                field += 1;
                                if field == n {
                                    out.push_bind_param::<$sql_type, $ty>(&self.$field)?;
                                    continue;
                                }
                            )*
                            return Err($crate::prepared::unknown_parameter(stringify!($name), n));
                        }
                    }
                }
                Ok(())
            }
        }
    };
}

pub(crate) use prepared_statement;

#[cfg(test)]
mod tests {
    use diesel::{
        pg::Pg,
        sql_types::{Int8, Text},
    };

    use super::*;

    prepared_statement! {
        /// A statement that uses its second parameter twice.
        struct Sample {
            id: i64 => Int8,
            name: String => Text,
        }
        "SELECT $2 AS a, $1 AS b WHERE $2 <> '$x' AND cost = $$"
    }

    prepared_statement! {
        /// A statement with a placeholder it has no field for.
        struct Broken {
            id: i64 => Int8,
        }
        "SELECT $1, $2"
    }

    #[test]
    fn splits_sql_at_placeholders_only() {
        let split: Vec<_> = pieces("a = $1 AND b = $12 OR c = '$' || $x$2").collect();
        assert_eq!(
            split,
            vec![
                Piece::Sql("a = "),
                Piece::Parameter(1),
                Piece::Sql(" AND b = "),
                Piece::Parameter(12),
                Piece::Sql(" OR c = '$' || $x"),
                Piece::Parameter(2),
            ]
        );
        assert_eq!(pieces("").count(), 0);
        assert_eq!(pieces("$").collect::<Vec<_>>(), vec![Piece::Sql("$")]);
    }

    #[test]
    fn renders_each_appearance_of_a_parameter_as_its_own_bind() {
        let statement = Sample {
            id: 7,
            name: "ann".to_owned(),
        };
        let rendered = diesel::debug_query::<Pg, _>(&statement).to_string();
        assert_eq!(
            rendered,
            "SELECT $1 AS a, $2 AS b WHERE $3 <> '$x' AND cost = $$ -- binds: [\"ann\", 7, \"ann\"]"
        );
    }

    #[test]
    fn a_placeholder_without_a_field_is_an_error_not_a_wrong_bind() {
        let statement = Broken { id: 1 };
        let error = diesel::query_builder::QueryFragment::<Pg>::to_sql(
            &statement,
            &mut <Pg as diesel::backend::Backend>::QueryBuilder::default(),
            &Pg,
        )
        .expect_err("a placeholder without a field");
        assert!(
            error.to_string().contains("Broken: no parameter $2"),
            "{error}"
        );
    }

    #[test]
    fn has_a_static_query_id_so_diesel_caches_it() {
        assert!(<Sample as diesel::query_builder::QueryId>::query_id().is_some());
    }
}

#[cfg(test)]
mod on_a_database {
    use application::ports::{
        ledger::LedgerRepository, orders::OrderRepository, queue::AccrualQueue,
        security::PasswordHash, users::UserRepository,
    };
    use chrono::Utc;
    use diesel::{sql_types::Text, QueryableByName};
    use diesel_async::RunQueryDsl;
    use domain::{with_check_digit, Login, Money, OrderNumber};

    use crate::{testing::TestDatabase, PgPoolConfig, PgStore};

    #[derive(QueryableByName)]
    struct Prepared {
        #[diesel(sql_type = Text)]
        statement: String,
    }

    fn number(n: u64) -> OrderNumber {
        OrderNumber::parse(&with_check_digit(&n.to_string())).expect("valid number")
    }

    #[tokio::test]
    async fn the_statements_are_prepared_once_per_connection_and_reused() {
        let db = TestDatabase::create().await;
        let mut config = PgPoolConfig::new(db.url());
        config.max_size = 1;
        let store = PgStore::new(config.build().expect("pool"));
        let user = store
            .create(
                &Login::parse("ann").expect("login"),
                &PasswordHash("hash".into()),
            )
            .await
            .expect("user");
        let one_point = Money::new(rust_decimal::Decimal::ONE).expect("money");
        for n in 1..=3 {
            store
                .insert(user, &number(n), Utc::now(), None)
                .await
                .expect("upload");
            store
                .withdraw(user, &number(100 + n), one_point, Utc::now())
                .await
                .expect("withdraw (refused: no points)");
            store
                .claim(
                    1,
                    Utc::now(),
                    std::time::Duration::from_secs(60),
                    application::ports::queue::ClaimOrder::DueFirst,
                )
                .await
                .expect("claim");
            store.next_due(Utc::now()).await.expect("next due");
        }

        // The pool's one connection: the session that ran all of the above.
        let mut conn = store.conn().await.expect("connection");
        let prepared: Vec<Prepared> =
            diesel::sql_query("SELECT statement FROM pg_prepared_statements")
                .load(&mut conn)
                .await
                .expect("prepared statements");
        let count = |needle: &str| {
            prepared
                .iter()
                .filter(|p| p.statement.contains(needle))
                .count()
        };
        for needle in [
            "INSERT INTO orders",
            "INSERT INTO withdrawals",
            "FOR UPDATE SKIP LOCKED",
            "SELECT next_attempt_at AS due",
        ] {
            assert_eq!(count(needle), 1, "{needle}: prepared once and kept");
        }
    }
}
