//! Registering and signing in.

use std::net::IpAddr;

use domain::{Login, Password};

use super::LoginThrottle;

use crate::ports::{
    security::{HashingError, PasswordHasher, Token, TokenService},
    users::{CreateUserError, UserRepository},
    RepositoryError,
};

/// Why registration failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("the login is taken")]
    LoginTaken,
    #[error(transparent)]
    Hashing(#[from] HashingError),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
}

/// Why signing in failed.
#[derive(Debug, thiserror::Error)]
pub enum LogInError {
    #[error("wrong login or password")]
    InvalidCredentials,
    #[error("too many failed sign-ins; try again in {} s", retry_after.as_secs().max(1))]
    Throttled { retry_after: std::time::Duration },
    #[error(transparent)]
    Hashing(#[from] HashingError),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
}

/// Registers a customer with an empty account and signs them in.
///
/// # Errors
/// [`RegisterError::LoginTaken`] when the login exists; infrastructure failures otherwise.
#[tracing::instrument(skip_all, fields(login = %login))]
pub async fn register(
    users: &dyn UserRepository,
    hasher: &dyn PasswordHasher,
    tokens: &dyn TokenService,
    login: &Login,
    password: &Password,
) -> Result<Token, RegisterError> {
    let hash = hasher.hash(password).await?;
    let user = users.create(login, &hash).await.map_err(|e| match e {
        CreateUserError::LoginTaken => RegisterError::LoginTaken,
        CreateUserError::Repository(e) => RegisterError::Repository(e),
    })?;
    tracing::info!(user = %user, "registered");
    Ok(tokens.issue(user)?)
}

/// Signs a customer in. An unknown login costs the same hashing time as a wrong password;
/// too many failures for one login or from one address are refused before any hashing.
///
/// # Errors
/// [`LogInError::InvalidCredentials`] for an unknown login or a wrong password,
/// [`LogInError::Throttled`] while the throttle refuses attempts.
#[tracing::instrument(skip_all, fields(login = %login))]
pub async fn log_in(
    users: &dyn UserRepository,
    hasher: &dyn PasswordHasher,
    tokens: &dyn TokenService,
    throttle: &LoginThrottle,
    client: Option<IpAddr>,
    login: &Login,
    password: &Password,
) -> Result<Token, LogInError> {
    throttle
        .check(login.as_str(), client)
        .map_err(|retry_after| LogInError::Throttled { retry_after })?;
    let stored = users.find_by_login(login).await?;
    let matches = hasher
        .verify(password, stored.as_ref().map(|s| s.password_hash.clone()))
        .await?;
    match stored {
        Some(user) if matches => {
            throttle.record_success(login.as_str());
            Ok(tokens.issue(user.id)?)
        }
        _ => {
            throttle.record_failure(login.as_str(), client);
            tracing::info!(client = ?client, "failed sign-in");
            Err(LogInError::InvalidCredentials)
        }
    }
}

#[cfg(test)]
mod tests {
    use domain::UserId;
    use mockall::predicate::eq;

    use super::*;
    use crate::ports::{
        security::{MockPasswordHasher, MockTokenService, PasswordHash},
        users::{MockUserRepository, StoredCredentials},
    };

    fn login() -> Login {
        Login::parse("gopher").expect("valid")
    }

    fn password() -> Password {
        Password::parse("secret").expect("valid")
    }

    fn no_throttle() -> LoginThrottle {
        LoginThrottle::new(super::super::ThrottleConfig {
            max_failures_per_login: 0,
            max_failures_per_address: 0,
            window: std::time::Duration::from_secs(60),
        })
    }

    fn hash() -> PasswordHash {
        PasswordHash("$2b$04$hash".into())
    }

    fn issuing_tokens() -> MockTokenService {
        let mut tokens = MockTokenService::new();
        tokens
            .expect_issue()
            .returning(|user| Ok(Token(format!("token-{user}"))));
        tokens
    }

    #[tokio::test]
    async fn register_stores_the_hash_and_signs_the_user_in() {
        let mut hasher = MockPasswordHasher::new();
        hasher.expect_hash().returning(|_| Ok(hash()));
        let mut users = MockUserRepository::new();
        users
            .expect_create()
            .with(eq(login()), eq(hash()))
            .returning(|_, _| Ok(UserId(7)));

        let token = register(&users, &hasher, &issuing_tokens(), &login(), &password()).await;

        assert_eq!(token.expect("registered"), Token("token-7".into()));
    }

    #[tokio::test]
    async fn register_reports_a_taken_login() {
        let mut hasher = MockPasswordHasher::new();
        hasher.expect_hash().returning(|_| Ok(hash()));
        let mut users = MockUserRepository::new();
        users
            .expect_create()
            .returning(|_, _| Err(CreateUserError::LoginTaken));
        let mut tokens = MockTokenService::new();
        tokens.expect_issue().never();

        let result = register(&users, &hasher, &tokens, &login(), &password()).await;

        assert!(matches!(result, Err(RegisterError::LoginTaken)));
    }

    #[tokio::test]
    async fn register_passes_storage_failures_through() {
        let mut hasher = MockPasswordHasher::new();
        hasher.expect_hash().returning(|_| Ok(hash()));
        let mut users = MockUserRepository::new();
        users.expect_create().returning(|_, _| {
            Err(CreateUserError::Repository(RepositoryError::Unavailable(
                "down".into(),
            )))
        });

        let result = register(&users, &hasher, &issuing_tokens(), &login(), &password()).await;

        assert!(matches!(
            result,
            Err(RegisterError::Repository(RepositoryError::Unavailable(_)))
        ));
    }

    #[tokio::test]
    async fn log_in_issues_a_token_for_the_right_password() {
        let mut users = MockUserRepository::new();
        users.expect_find_by_login().returning(|_| {
            Ok(Some(StoredCredentials {
                id: UserId(3),
                password_hash: hash(),
            }))
        });
        let mut hasher = MockPasswordHasher::new();
        hasher
            .expect_verify()
            .withf(|_, h| h == &Some(hash()))
            .returning(|_, _| Ok(true));

        let token = log_in(
            &users,
            &hasher,
            &issuing_tokens(),
            &no_throttle(),
            None,
            &login(),
            &password(),
        )
        .await;

        assert_eq!(token.expect("signed in"), Token("token-3".into()));
    }

    #[tokio::test]
    async fn log_in_refuses_a_wrong_password() {
        let mut users = MockUserRepository::new();
        users.expect_find_by_login().returning(|_| {
            Ok(Some(StoredCredentials {
                id: UserId(3),
                password_hash: hash(),
            }))
        });
        let mut hasher = MockPasswordHasher::new();
        hasher.expect_verify().returning(|_, _| Ok(false));
        let mut tokens = MockTokenService::new();
        tokens.expect_issue().never();

        let result = log_in(
            &users,
            &hasher,
            &tokens,
            &no_throttle(),
            None,
            &login(),
            &password(),
        )
        .await;

        assert!(matches!(result, Err(LogInError::InvalidCredentials)));
    }

    #[tokio::test]
    async fn log_in_spends_a_hash_check_on_an_unknown_login_and_refuses_it() {
        let mut users = MockUserRepository::new();
        users.expect_find_by_login().returning(|_| Ok(None));
        let mut hasher = MockPasswordHasher::new();
        hasher
            .expect_verify()
            .withf(|_, h| h.is_none())
            .times(1)
            .returning(|_, _| Ok(true));
        let mut tokens = MockTokenService::new();
        tokens.expect_issue().never();

        let result = log_in(
            &users,
            &hasher,
            &tokens,
            &no_throttle(),
            None,
            &login(),
            &password(),
        )
        .await;

        assert!(matches!(result, Err(LogInError::InvalidCredentials)));
    }

    #[tokio::test]
    async fn log_in_is_refused_without_hashing_once_a_login_is_throttled() {
        let throttle = LoginThrottle::new(super::super::ThrottleConfig {
            max_failures_per_login: 2,
            max_failures_per_address: 0,
            window: std::time::Duration::from_secs(60),
        });
        let mut users = MockUserRepository::new();
        users
            .expect_find_by_login()
            .times(2)
            .returning(|_| Ok(None));
        let mut hasher = MockPasswordHasher::new();
        hasher.expect_verify().times(2).returning(|_, _| Ok(false));
        let tokens = MockTokenService::new();

        for _ in 0..2 {
            let result = log_in(
                &users,
                &hasher,
                &tokens,
                &throttle,
                None,
                &login(),
                &password(),
            )
            .await;
            assert!(matches!(result, Err(LogInError::InvalidCredentials)));
        }
        let third = log_in(
            &users,
            &hasher,
            &tokens,
            &throttle,
            None,
            &login(),
            &password(),
        )
        .await;

        assert!(matches!(third, Err(LogInError::Throttled { .. })));
    }
}
