//! A customer's credentials: the login they chose and the password they sign in with.

use std::fmt;

/// The longest login accepted, in characters.
pub const MAX_LOGIN_CHARS: usize = 128;
/// bcrypt reads at most 72 bytes of a password; longer ones are refused rather than truncated.
pub const MAX_PASSWORD_BYTES: usize = 72;

/// A login: 1 to [`MAX_LOGIN_CHARS`] characters, no control characters, no leading or trailing
/// whitespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Login(String);

/// Why a string is not a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("the login is empty")]
    Empty,
    #[error("the login is longer than {MAX_LOGIN_CHARS} characters")]
    TooLong,
    #[error("the login contains control characters or surrounding whitespace")]
    BadCharacters,
}

impl Login {
    /// Parses a login exactly as given.
    ///
    /// # Errors
    /// Returns the rule the input breaks.
    pub fn parse(input: &str) -> Result<Self, LoginError> {
        if input.is_empty() {
            return Err(LoginError::Empty);
        }
        if input.chars().count() > MAX_LOGIN_CHARS {
            return Err(LoginError::TooLong);
        }
        if input.chars().any(char::is_control) || input.trim() != input {
            return Err(LoginError::BadCharacters);
        }
        Ok(Self(input.to_owned()))
    }

    /// The login as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A password in clear text, held only long enough to hash or verify it. Its `Debug` output
/// never shows the text.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

/// Why a string is not an acceptable password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("the password is empty")]
    Empty,
    #[error("the password is longer than {MAX_PASSWORD_BYTES} bytes")]
    TooLong,
}

impl Password {
    /// Accepts a non-empty password of at most [`MAX_PASSWORD_BYTES`] bytes.
    ///
    /// # Errors
    /// Returns the rule the input breaks.
    pub fn parse(input: &str) -> Result<Self, PasswordError> {
        if input.is_empty() {
            return Err(PasswordError::Empty);
        }
        if input.len() > MAX_PASSWORD_BYTES {
            return Err(PasswordError::TooLong);
        }
        Ok(Self(input.to_owned()))
    }

    /// The clear text, for the password hasher only.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn login_rules() {
        assert!(Login::parse("gopher").is_ok());
        assert!(Login::parse("гофер@example.com").is_ok());
        assert_eq!(Login::parse(""), Err(LoginError::Empty));
        assert_eq!(Login::parse(" gopher"), Err(LoginError::BadCharacters));
        assert_eq!(Login::parse("go\u{0}pher"), Err(LoginError::BadCharacters));
        assert_eq!(
            Login::parse(&"я".repeat(MAX_LOGIN_CHARS)).map(|l| l.as_str().chars().count()),
            Ok(MAX_LOGIN_CHARS)
        );
        assert_eq!(
            Login::parse(&"a".repeat(MAX_LOGIN_CHARS + 1)),
            Err(LoginError::TooLong)
        );
    }

    #[test]
    fn password_rules_count_bytes_not_characters() {
        assert!(Password::parse("p").is_ok());
        assert_eq!(Password::parse(""), Err(PasswordError::Empty));
        assert!(Password::parse(&"a".repeat(72)).is_ok());
        assert_eq!(
            Password::parse(&"a".repeat(73)),
            Err(PasswordError::TooLong)
        );
        // 37 two-byte characters are 74 bytes.
        assert_eq!(
            Password::parse(&"я".repeat(37)),
            Err(PasswordError::TooLong)
        );
    }

    #[test]
    fn password_debug_hides_the_text() {
        let password = Password::parse("hunter2").expect("valid");
        assert!(!format!("{password:?}").contains("hunter2"));
    }

    proptest! {
        #[test]
        fn login_parse_never_panics(input in "\\PC{0,200}") {
            if let Ok(login) = Login::parse(&input) {
                prop_assert_eq!(login.as_str(), input.as_str());
            }
        }
    }
}
