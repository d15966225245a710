DROP INDEX IF EXISTS accrual_queue_owner_due;
