//! Password hashing with bcrypt and session tokens as HS256-signed JWTs.

mod password;
mod password_format;
mod priority;
mod token;

pub use password::{default_concurrency, BcryptHasher};
pub use token::JwtTokens;
