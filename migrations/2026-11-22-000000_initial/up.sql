-- Gophermart's schema: users and their points accounts, uploaded orders, withdrawals, and the
-- durable queue of orders waiting for the accrual system.

CREATE TYPE order_status AS ENUM ('NEW', 'PROCESSING', 'INVALID', 'PROCESSED');

-- What the queue last learned about an entry's order.
CREATE TYPE queue_status AS ENUM ('QUEUED', 'NOT_REGISTERED', 'PROCESSING', 'RATE_LIMITED', 'FAILING');

CREATE TABLE users (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    login         TEXT        NOT NULL,
    password_hash TEXT        NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT users_login_key UNIQUE (login)
);

-- One account per user. `balance` is spendable, `withdrawn` the total ever spent.
CREATE TABLE accounts (
    user_id   BIGINT         PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    balance   NUMERIC(20, 2) NOT NULL DEFAULT 0,
    withdrawn NUMERIC(20, 2) NOT NULL DEFAULT 0,
    CONSTRAINT accounts_balance_non_negative CHECK (balance >= 0),
    CONSTRAINT accounts_withdrawn_non_negative CHECK (withdrawn >= 0)
);

CREATE TABLE orders (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    number      TEXT           NOT NULL,
    user_id     BIGINT         NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    status      order_status   NOT NULL DEFAULT 'NEW',
    accrual     NUMERIC(20, 2),
    uploaded_at TIMESTAMPTZ    NOT NULL,
    updated_at  TIMESTAMPTZ    NOT NULL DEFAULT now(),
    CONSTRAINT orders_number_key UNIQUE (number),
    CONSTRAINT orders_number_digits CHECK (number ~ '^[0-9]{1,64}$'),
    CONSTRAINT orders_accrual_non_negative CHECK (accrual IS NULL OR accrual >= 0),
    CONSTRAINT orders_accrual_only_when_processed CHECK (accrual IS NULL OR status = 'PROCESSED')
);

CREATE INDEX orders_user_newest_first ON orders (user_id, uploaded_at DESC, id DESC);

CREATE TABLE withdrawals (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_number TEXT           NOT NULL,
    user_id      BIGINT         NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    sum          NUMERIC(20, 2) NOT NULL,
    processed_at TIMESTAMPTZ    NOT NULL,
    CONSTRAINT withdrawals_order_number_key UNIQUE (order_number),
    CONSTRAINT withdrawals_order_number_digits CHECK (order_number ~ '^[0-9]{1,64}$'),
    CONSTRAINT withdrawals_sum_positive CHECK (sum > 0)
);

CREATE INDEX withdrawals_user_newest_first ON withdrawals (user_id, processed_at DESC, id DESC);

-- One entry per order that is not final. A worker claims due entries by setting a lease
-- (`locked_until`); an entry whose lease ran out (its worker died) is due again.
CREATE TABLE accrual_queue (
    order_number TEXT        PRIMARY KEY REFERENCES orders (number) ON DELETE CASCADE,
    status       queue_status NOT NULL DEFAULT 'QUEUED',
    attempts     INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    locked_until TIMESTAMPTZ,
    last_error   TEXT,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX accrual_queue_due ON accrual_queue (next_attempt_at);
