//! The accrual worker.
