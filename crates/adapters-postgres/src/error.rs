//! Translation of pool and diesel failures into the application's [`RepositoryError`].

use application::RepositoryError;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::pooled_connection::deadpool::PoolError;

/// A pool failure: no connection in time, or none could be opened.
pub fn from_pool(error: PoolError) -> RepositoryError {
    match error {
        PoolError::Timeout(_)
        | PoolError::Backend(_)
        | PoolError::Closed
        | PoolError::NoRuntimeSpecified => RepositoryError::Unavailable(Box::new(error)),
        PoolError::PostCreateHook(_) => RepositoryError::Internal(Box::new(error)),
    }
}

/// A query failure. One that never got an answer from PostgreSQL (the connection closed under
/// it, or died while it sat idle in the pool), or a session the server ended, means the
/// database is unavailable: the pool's connection reports it as `ClosedConnection` (from its
/// SQLSTATE, in either statement mode), diesel-async's own connection (migrations) as
/// `UnableToSendCommand`.
pub fn from_diesel(error: DieselError) -> RepositoryError {
    match &error {
        DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _,
        ) => RepositoryError::Unavailable(Box::new(error)),
        _ => RepositoryError::Internal(Box::new(error)),
    }
}

/// Whether a failure is a unique-constraint violation (SQLSTATE 23505) on `constraint`.
pub fn is_unique_violation(error: &DieselError, constraint: &str) -> bool {
    matches!(
        error,
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info)
            if info.constraint_name() == Some(constraint)
    )
}

/// Stored data that breaks a rule the schema should have enforced.
pub fn corrupt(detail: String) -> RepositoryError {
    RepositoryError::Internal(detail.into())
}
