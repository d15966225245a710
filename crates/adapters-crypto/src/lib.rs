//! Password hashing with bcrypt and session tokens as HS256-signed JWTs.

mod password;
mod token;

pub use password::BcryptHasher;
pub use token::JwtTokens;
