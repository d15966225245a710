//! A customer's credentials: the login they chose and the password they sign in with.

use std::fmt;

/// The longest login accepted, in characters.
pub const MAX_LOGIN_CHARS: usize = 128;
/// The longest password accepted, in characters (Unicode scalar values, as JSON Schema's
/// `maxLength` counts them). The hasher reads every character of it, whatever the script.
pub const MAX_PASSWORD_CHARS: usize = 128;

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
    #[error("the password is longer than {MAX_PASSWORD_CHARS} characters")]
    TooLong,
}

impl Password {
    /// Accepts a non-empty password of at most [`MAX_PASSWORD_CHARS`] characters, any characters
    /// in any script.
    ///
    /// # Errors
    /// Returns the rule the input breaks.
    pub fn parse(input: &str) -> Result<Self, PasswordError> {
        if input.is_empty() {
            return Err(PasswordError::Empty);
        }
        if input.chars().count() > MAX_PASSWORD_CHARS {
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
    fn password_rules_count_characters_in_every_script() {
        assert!(Password::parse("p").is_ok());
        assert_eq!(Password::parse(""), Err(PasswordError::Empty));
        // One, two, three and four bytes per character.
        for c in ["a", "ж", "密", "🦫"] {
            for chars in [72, MAX_PASSWORD_CHARS] {
                let password = Password::parse(&c.repeat(chars)).expect("at or under the limit");
                assert_eq!(password.expose().chars().count(), chars, "{c}");
            }
            assert_eq!(
                Password::parse(&c.repeat(MAX_PASSWORD_CHARS + 1)),
                Err(PasswordError::TooLong),
                "{c}"
            );
        }
        // A combining sequence counts as its code points, as a client's `maxLength` does.
        assert_eq!(
            Password::parse(&"и\u{306}".repeat(MAX_PASSWORD_CHARS / 2 + 1)),
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
