-- The index the fair claim walks: it finds the customers with queue entries by a skip scan
-- (one probe per customer) and each customer's earliest due entries, so that the size of one
-- customer's backlog costs a claim nothing. Without it every probe scans the whole queue.
--
-- Safe while instances of the previous version run: they neither need nor notice it. Building
-- it holds back writes to the queue (uploads, claims, answers) for as long as it takes; the
-- queue holds only orders that are not final yet, a fraction of a second's work at 100,000
-- entries, and nothing fails meanwhile.
CREATE INDEX IF NOT EXISTS accrual_queue_owner_due ON accrual_queue (user_id, next_attempt_at);
