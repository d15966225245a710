//! Diesel's description of the tables in `migrations/`.

/// PostgreSQL enum types.
pub mod sql_types {
    #[derive(Debug, diesel::sql_types::SqlType, diesel::query_builder::QueryId)]
    #[diesel(postgres_type(name = "order_status"))]
    pub struct OrderStatus;

    #[derive(Debug, diesel::sql_types::SqlType, diesel::query_builder::QueryId)]
    #[diesel(postgres_type(name = "queue_status"))]
    pub struct QueueStatus;
}

diesel::table! {
    users (id) {
        id -> Int8,
        login -> Text,
        password_hash -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    accounts (user_id) {
        user_id -> Int8,
        balance -> Numeric,
        withdrawn -> Numeric,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::sql_types::OrderStatus;

    orders (id) {
        id -> Int8,
        number -> Text,
        user_id -> Int8,
        status -> OrderStatus,
        accrual -> Nullable<Numeric>,
        uploaded_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    withdrawals (id) {
        id -> Int8,
        order_number -> Text,
        user_id -> Int8,
        sum -> Numeric,
        processed_at -> Timestamptz,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::sql_types::QueueStatus;

    accrual_queue (order_number) {
        order_number -> Text,
        status -> QueueStatus,
        attempts -> Int4,
        next_attempt_at -> Timestamptz,
        locked_until -> Nullable<Timestamptz>,
        last_error -> Nullable<Text>,
        updated_at -> Timestamptz,
        user_id -> Nullable<Int8>,
        unknown_checks -> Int4,
    }
}

diesel::joinable!(accounts -> users (user_id));
diesel::joinable!(orders -> users (user_id));
diesel::joinable!(withdrawals -> users (user_id));
diesel::allow_tables_to_appear_in_same_query!(users, accounts, orders, withdrawals, accrual_queue);
