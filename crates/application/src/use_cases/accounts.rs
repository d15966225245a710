//! Registering and signing in.

use std::{collections::HashMap, net::IpAddr, sync::Mutex};

use domain::{Login, Password};
use tokio::sync::watch;

use super::LoginThrottle;

use crate::ports::{
    security::{HashingError, PasswordHasher, Token, TokenService},
    throttle::SignInFailures,
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

/// The registrations in progress in this process, by login. A sign-up of a login that is being
/// registered waits for that registration to end and then looks the login up, instead of
/// hashing a password for a login about to be taken; simultaneous sign-ups of one login thus
/// cost one hash. Across instances the database's unique login settles a race.
#[derive(Debug, Default)]
pub struct Registrations {
    /// Each in-progress registration's login, and a receiver that ends when it does.
    in_progress: Mutex<HashMap<String, watch::Receiver<()>>>,
}

/// The claim of one registration on its login; the next waiting sign-up goes on when it is
/// dropped.
#[derive(Debug)]
pub struct Claim<'a> {
    registrations: &'a Registrations,
    login: String,
    /// Dropped after the login leaves the map, which wakes the sign-ups waiting for it.
    _done: watch::Sender<()>,
}

impl Registrations {
    /// No registration in progress.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Receiver<()>>> {
        self.in_progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Claims `login` for one registration, waiting while another registration of it runs in
    /// this process.
    pub async fn claim(&self, login: &Login) -> Claim<'_> {
        loop {
            let mut running = {
                let mut in_progress = self.lock();
                if let Some(running) = in_progress.get(login.as_str()) {
                    running.clone()
                } else {
                    let (done, running) = watch::channel(());
                    in_progress.insert(login.as_str().to_owned(), running);
                    return Claim {
                        registrations: self,
                        login: login.as_str().to_owned(),
                        _done: done,
                    };
                }
            };
            // Nothing is ever sent: this ends when the running registration's claim is dropped.
            while running.changed().await.is_ok() {}
        }
    }

    /// How many logins are being registered (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.registrations.lock().remove(&self.login);
    }
}

/// Registers a customer with an empty account and signs them in. A login that is taken, or
/// that another sign-up in this process is registering, costs no hash: the sign-up waits for
/// that one and then finds the login taken.
///
/// # Errors
/// [`RegisterError::LoginTaken`] when the login exists; [`HashingError::Busy`] when the hasher
/// cannot take the new customer soon; infrastructure failures otherwise.
#[tracing::instrument(skip_all, fields(login = %login))]
pub async fn register(
    users: &dyn UserRepository,
    hasher: &dyn PasswordHasher,
    tokens: &dyn TokenService,
    registrations: &Registrations,
    login: &Login,
    password: &Password,
) -> Result<Token, RegisterError> {
    let _claim = registrations.claim(login).await;
    if users.find_by_login(login).await?.is_some() {
        return Err(RegisterError::LoginTaken);
    }
    let hash = hasher.turn()?.hash(password).await?;
    let user = users.create(login, &hash).await.map_err(|e| match e {
        CreateUserError::LoginTaken => RegisterError::LoginTaken,
        CreateUserError::Repository(e) => RegisterError::Repository(e),
    })?;
    tracing::info!(user = %user, "registered");
    Ok(tokens.issue(user)?)
}

/// Signs a customer in. An unknown login costs the same hashing time as a wrong password.
/// A turn at the hasher is taken first (refused at once when the hasher cannot serve it soon,
/// at no database cost); then one query reads the stored hash with the failures counted
/// against this attempt, and an attempt the throttle refuses costs no hashing. A failure is
/// counted for the whole deployment before it is answered; a success forgets the failures of
/// its login from its address (a query only when there are some).
///
/// # Errors
/// [`LogInError::InvalidCredentials`] for an unknown login or a wrong password,
/// [`LogInError::Throttled`] while the throttle refuses attempts, [`HashingError::Busy`] when
/// the hasher cannot take the sign-in soon.
#[tracing::instrument(skip_all, fields(login = %login))]
pub async fn log_in(
    sign_ins: &dyn SignInFailures,
    hasher: &dyn PasswordHasher,
    tokens: &dyn TokenService,
    throttle: &LoginThrottle,
    client: IpAddr,
    login: &Login,
    password: &Password,
) -> Result<Token, LogInError> {
    let turn = hasher.turn()?;
    let record = sign_ins
        .sign_in_record(login, client, throttle.window())
        .await?;
    throttle
        .check(&record.failures)
        .map_err(|retry_after| LogInError::Throttled { retry_after })?;
    let matches = turn
        .verify(
            password,
            record.credentials.as_ref().map(|s| s.password_hash.clone()),
        )
        .await?;
    match record.credentials {
        Some(user) if matches => {
            if record.failures.login_from_address.failures > 0 {
                // Failing to forget leaves old failures to lapse with their window.
                if let Err(error) = sign_ins.forget_failures(login, client).await {
                    tracing::debug!(error = %error, "failed sign-ins not forgotten");
                }
            }
            Ok(tokens.issue(user.id)?)
        }
        _ => {
            if throttle.is_on() {
                sign_ins
                    .record_failure(login, client, throttle.window())
                    .await?;
            }
            tracing::info!(client = %client, "failed sign-in");
            Err(LogInError::InvalidCredentials)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use domain::UserId;
    use mockall::predicate::eq;

    use super::*;
    use crate::ports::{
        security::{MockHashingTurn, MockPasswordHasher, MockTokenService, PasswordHash},
        throttle::{FailureCount, MockSignInFailures, RecentFailures, SignInRecord},
        users::{MockUserRepository, StoredCredentials},
    };

    fn login() -> Login {
        Login::parse("gopher").expect("valid")
    }

    fn password() -> Password {
        Password::parse("secret").expect("valid")
    }

    fn hash() -> PasswordHash {
        PasswordHash("$2b$04$hash".into())
    }

    fn stored() -> Option<StoredCredentials> {
        Some(StoredCredentials {
            id: UserId(3),
            password_hash: hash(),
        })
    }

    fn issuing_tokens() -> MockTokenService {
        let mut tokens = MockTokenService::new();
        tokens
            .expect_issue()
            .returning(|user| Ok(Token(format!("token-{user}"))));
        tokens
    }

    /// A hasher whose every turn hashes to [`hash`].
    fn hashing() -> MockPasswordHasher {
        let mut hasher = MockPasswordHasher::new();
        hasher.expect_turn().times(1).returning(|| {
            let mut turn = MockHashingTurn::new();
            turn.expect_hash().times(1).returning(|_| Ok(hash()));
            Ok(Box::new(turn))
        });
        hasher
    }

    /// A hasher whose turns check passwords with `check` (given the stored hash, if any).
    fn verifying(
        times: usize,
        check: impl Fn(Option<PasswordHash>) -> bool + Clone + Send + 'static,
    ) -> MockPasswordHasher {
        let mut hasher = MockPasswordHasher::new();
        hasher.expect_turn().times(times).returning(move || {
            let check = check.clone();
            let mut turn = MockHashingTurn::new();
            turn.expect_verify()
                .times(1)
                .returning(move |_, stored| Ok(check(stored)));
            Ok(Box::new(turn))
        });
        hasher
    }

    /// A hasher that refuses every turn as busy.
    fn busy() -> MockPasswordHasher {
        let mut hasher = MockPasswordHasher::new();
        hasher.expect_turn().times(1).returning(|| {
            Err(HashingError::Busy {
                retry_after: Duration::from_secs(1),
            })
        });
        hasher
    }

    fn free_login(users: &mut MockUserRepository) {
        users
            .expect_find_by_login()
            .with(eq(login()))
            .times(1)
            .returning(|_| Ok(None));
    }

    #[tokio::test]
    async fn register_stores_the_hash_and_signs_the_user_in() {
        let mut users = MockUserRepository::new();
        free_login(&mut users);
        users
            .expect_create()
            .with(eq(login()), eq(hash()))
            .times(1)
            .returning(|_, _| Ok(UserId(7)));
        let registrations = Registrations::new();

        let token = register(
            &users,
            &hashing(),
            &issuing_tokens(),
            &registrations,
            &login(),
            &password(),
        )
        .await;

        assert_eq!(token.expect("registered"), Token("token-7".into()));
        assert_eq!(
            registrations.len(),
            0,
            "the claim ends with the registration"
        );
    }

    #[tokio::test]
    async fn register_of_a_taken_login_costs_one_lookup_and_no_hash() {
        let mut users = MockUserRepository::new();
        users
            .expect_find_by_login()
            .times(1)
            .returning(|_| Ok(stored()));
        users.expect_create().never();
        let mut hasher = MockPasswordHasher::new();
        hasher.expect_turn().never();
        let mut tokens = MockTokenService::new();
        tokens.expect_issue().never();

        let result = register(
            &users,
            &hasher,
            &tokens,
            &Registrations::new(),
            &login(),
            &password(),
        )
        .await;

        assert!(matches!(result, Err(RegisterError::LoginTaken)));
    }

    #[tokio::test]
    async fn register_reports_a_login_taken_meanwhile_by_another_instance() {
        let mut users = MockUserRepository::new();
        free_login(&mut users);
        users
            .expect_create()
            .returning(|_, _| Err(CreateUserError::LoginTaken));
        let mut tokens = MockTokenService::new();
        tokens.expect_issue().never();

        let result = register(
            &users,
            &hashing(),
            &tokens,
            &Registrations::new(),
            &login(),
            &password(),
        )
        .await;

        assert!(matches!(result, Err(RegisterError::LoginTaken)));
    }

    #[tokio::test]
    async fn register_passes_a_busy_hasher_through_without_creating() {
        let mut users = MockUserRepository::new();
        free_login(&mut users);
        users.expect_create().never();

        let result = register(
            &users,
            &busy(),
            &issuing_tokens(),
            &Registrations::new(),
            &login(),
            &password(),
        )
        .await;

        assert!(matches!(
            result,
            Err(RegisterError::Hashing(HashingError::Busy { .. }))
        ));
    }

    #[tokio::test]
    async fn register_passes_storage_failures_through() {
        let mut users = MockUserRepository::new();
        free_login(&mut users);
        users.expect_create().returning(|_, _| {
            Err(CreateUserError::Repository(RepositoryError::Unavailable(
                "down".into(),
            )))
        });

        let result = register(
            &users,
            &hashing(),
            &issuing_tokens(),
            &Registrations::new(),
            &login(),
            &password(),
        )
        .await;

        assert!(matches!(
            result,
            Err(RegisterError::Repository(RepositoryError::Unavailable(_)))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_claim_of_a_login_waits_for_the_first_to_end() {
        let registrations = Arc::new(Registrations::new());
        let first = registrations.claim(&login()).await;
        let second = {
            let registrations = registrations.clone();
            tokio::spawn(async move {
                let _claim = registrations.claim(&login()).await;
            })
        };
        let other = registrations
            .claim(&Login::parse("another").expect("valid"))
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;

        assert!(!second.is_finished(), "the login is being registered");
        drop(other);
        drop(first);
        second.await.expect("claimed once the first ended");
        assert_eq!(registrations.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_abandoned_while_waiting_leaves_nothing_behind() {
        let registrations = Arc::new(Registrations::new());
        let first = registrations.claim(&login()).await;
        let waiting = {
            let registrations = registrations.clone();
            tokio::spawn(async move {
                let _claim = registrations.claim(&login()).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        waiting.abort();
        let _ = waiting.await;
        drop(first);

        assert_eq!(registrations.len(), 0);
        drop(registrations.claim(&login()).await);
    }

    fn client() -> IpAddr {
        IpAddr::from([192, 0, 2, 7])
    }

    /// A store that knows `credentials` and counts `failures` against every attempt.
    fn sign_ins(
        credentials: Option<StoredCredentials>,
        failures: RecentFailures,
    ) -> MockSignInFailures {
        let mut sign_ins = MockSignInFailures::new();
        sign_ins.expect_sign_in_record().returning(move |_, _, _| {
            Ok(SignInRecord {
                credentials: credentials.clone(),
                failures,
            })
        });
        sign_ins
    }

    fn failures(login_from_address: u32) -> RecentFailures {
        RecentFailures {
            login_from_address: FailureCount {
                failures: login_from_address,
                window_left: Duration::from_secs(30),
            },
            address: FailureCount {
                failures: login_from_address,
                window_left: Duration::from_secs(30),
            },
        }
    }

    fn throttle(per_login: u32) -> LoginThrottle {
        LoginThrottle::new(super::super::ThrottleConfig {
            max_failures_per_login: per_login,
            max_failures_per_address: 0,
            window: Duration::from_secs(60),
        })
    }

    #[tokio::test]
    async fn log_in_issues_a_token_for_the_right_password() {
        let mut sign_ins = sign_ins(stored(), RecentFailures::default());
        sign_ins.expect_record_failure().never();
        sign_ins.expect_forget_failures().never();
        let hasher = verifying(1, |stored| stored == Some(hash()));

        let token = log_in(
            &sign_ins,
            &hasher,
            &issuing_tokens(),
            &throttle(10),
            client(),
            &login(),
            &password(),
        )
        .await;

        assert_eq!(token.expect("signed in"), Token("token-3".into()));
    }

    #[tokio::test]
    async fn a_successful_sign_in_forgets_the_failures_of_its_login_from_its_address() {
        let mut sign_ins = sign_ins(stored(), failures(3));
        sign_ins
            .expect_forget_failures()
            .with(eq(login()), eq(client()))
            .times(1)
            .returning(|_, _| Ok(()));

        let token = log_in(
            &sign_ins,
            &verifying(1, |_| true),
            &issuing_tokens(),
            &throttle(10),
            client(),
            &login(),
            &password(),
        )
        .await;

        assert!(token.is_ok());
    }

    #[tokio::test]
    async fn log_in_refuses_a_wrong_password_and_counts_the_failure() {
        let mut sign_ins = sign_ins(stored(), RecentFailures::default());
        sign_ins
            .expect_record_failure()
            .with(eq(login()), eq(client()), eq(Duration::from_secs(60)))
            .times(1)
            .returning(|_, _, _| Ok(()));
        let mut tokens = MockTokenService::new();
        tokens.expect_issue().never();

        let result = log_in(
            &sign_ins,
            &verifying(1, |_| false),
            &tokens,
            &throttle(10),
            client(),
            &login(),
            &password(),
        )
        .await;

        assert!(matches!(result, Err(LogInError::InvalidCredentials)));
    }

    #[tokio::test]
    async fn a_failure_that_cannot_be_counted_is_not_answered_as_a_wrong_password() {
        let mut sign_ins = sign_ins(stored(), RecentFailures::default());
        sign_ins
            .expect_record_failure()
            .returning(|_, _, _| Err(RepositoryError::Unavailable("the database is down".into())));

        let result = log_in(
            &sign_ins,
            &verifying(1, |_| false),
            &MockTokenService::new(),
            &throttle(10),
            client(),
            &login(),
            &password(),
        )
        .await;

        assert!(matches!(
            result,
            Err(LogInError::Repository(RepositoryError::Unavailable(_)))
        ));
    }

    #[tokio::test]
    async fn log_in_spends_a_hash_check_on_an_unknown_login_and_refuses_it() {
        let mut sign_ins = sign_ins(None, RecentFailures::default());
        sign_ins
            .expect_record_failure()
            .times(1)
            .returning(|_, _, _| Ok(()));
        // The dummy check is asked for (with no stored hash), whatever it answers.
        let hasher = verifying(1, |stored| stored.is_none());
        let mut tokens = MockTokenService::new();
        tokens.expect_issue().never();

        let result = log_in(
            &sign_ins,
            &hasher,
            &tokens,
            &throttle(10),
            client(),
            &login(),
            &password(),
        )
        .await;

        assert!(matches!(result, Err(LogInError::InvalidCredentials)));
    }

    #[tokio::test]
    async fn a_sign_in_the_hasher_cannot_take_costs_no_database_query() {
        let mut sign_ins = MockSignInFailures::new();
        sign_ins.expect_sign_in_record().never();
        let mut tokens = MockTokenService::new();
        tokens.expect_issue().never();

        let result = log_in(
            &sign_ins,
            &busy(),
            &tokens,
            &throttle(10),
            client(),
            &login(),
            &password(),
        )
        .await;

        assert!(matches!(
            result,
            Err(LogInError::Hashing(HashingError::Busy { .. }))
        ));
    }

    #[tokio::test]
    async fn a_throttled_sign_in_is_refused_without_hashing_or_counting() {
        let mut sign_ins = sign_ins(stored(), failures(2));
        sign_ins.expect_record_failure().never();
        let mut hasher = MockPasswordHasher::new();
        hasher.expect_turn().times(1).returning(|| {
            let mut turn = MockHashingTurn::new();
            turn.expect_verify().never();
            Ok(Box::new(turn))
        });

        let result = log_in(
            &sign_ins,
            &hasher,
            &MockTokenService::new(),
            &throttle(2),
            client(),
            &login(),
            &password(),
        )
        .await;

        assert!(matches!(
            result,
            Err(LogInError::Throttled { retry_after }) if retry_after == Duration::from_secs(30)
        ));
    }
}
