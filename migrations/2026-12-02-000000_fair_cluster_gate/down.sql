DROP TABLE accrual_gate;
DROP TABLE accrual_turns;
ALTER TABLE accrual_queue DROP COLUMN unknown_checks;
ALTER TABLE accrual_queue DROP COLUMN user_id;
