//! Gophermart's use cases. Each use case is a function of its ports (traits implemented by the
//! adapters) and returns its own error enum, so that every caller decides explicitly what each
//! outcome means for it.

pub mod ports;
pub mod use_cases;
pub mod worker;

pub use ports::RepositoryError;
