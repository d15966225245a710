DROP TABLE accrual_queue;
DROP TABLE withdrawals;
DROP TABLE orders;
DROP TABLE accounts;
DROP TABLE users;
DROP TYPE queue_status;
DROP TYPE order_status;
