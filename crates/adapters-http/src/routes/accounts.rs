//! `POST /api/user/register` and `POST /api/user/login`.

use std::time::Duration;

use actix_web::{
    http::{header, StatusCode},
    web, HttpResponse, ResponseError,
};
use application::{
    ports::security::HashingError,
    use_cases::{self, LogInError, RegisterError},
};
use domain::{Login, Password};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::{
    auth::with_credentials,
    client_address::ClientAddress,
    limits::{retry_after_seconds, Refused},
    problem::{error_problem, log_chain, repository_status, Problem},
    routes::json::JsonObject,
    schemas::{Internal, PayloadTooLarge, Unavailable},
    AppState,
};

/// The body of both endpoints.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"login": "alice", "password": "correct horse battery staple"}))]
pub struct CredentialsBody {
    /// 1 to 128 characters, no control characters, no surrounding whitespace.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?$",
        example = "alice"
    )]
    login: String,
    /// 1 to 128 characters (Unicode code points, as `maxLength` counts them), any characters in
    /// any script.
    #[schema(
        min_length = 1,
        max_length = 128,
        example = "correct horse battery staple"
    )]
    password: String,
}

impl CredentialsBody {
    fn try_into_domain(self) -> Result<(Login, Password), String> {
        let login = Login::parse(&self.login).map_err(|e| e.to_string())?;
        let password = Password::parse(&self.password).map_err(|e| e.to_string())?;
        Ok((login, password))
    }
}

/// Why registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterHandlerError {
    #[error("{0}")]
    Malformed(String),
    #[error(transparent)]
    UseCase(#[from] RegisterError),
}

impl ResponseError for RegisterHandlerError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::UseCase(RegisterError::LoginTaken) => StatusCode::CONFLICT,
            Self::UseCase(RegisterError::Hashing(e)) => hashing_status(e),
            Self::UseCase(RegisterError::Repository(e)) => repository_status(e),
        }
    }

    fn error_response(&self) -> HttpResponse {
        error_problem(self)
    }
}

/// Why signing in was refused.
#[derive(Debug, thiserror::Error)]
pub enum LogInHandlerError {
    #[error("{0}")]
    Malformed(String),
    #[error(transparent)]
    UseCase(#[from] LogInError),
}

impl ResponseError for LogInHandlerError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Malformed(_) => StatusCode::BAD_REQUEST,
            Self::UseCase(LogInError::InvalidCredentials) => StatusCode::UNAUTHORIZED,
            Self::UseCase(LogInError::Throttled { .. }) => StatusCode::TOO_MANY_REQUESTS,
            Self::UseCase(LogInError::Hashing(e)) => hashing_status(e),
            Self::UseCase(LogInError::Repository(e)) => repository_status(e),
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = error_problem(self);
        if let Self::UseCase(LogInError::Throttled { retry_after }) = self {
            response.extensions_mut().insert(Refused::SignInThrottle);
            response.headers_mut().insert(
                header::RETRY_AFTER,
                retry_after_seconds(*retry_after).into(),
            );
        }
        response
    }
}

/// 503 (with `Retry-After`) when too many sign-ins wait for the hasher: load shed on purpose,
/// not a failure, and not logged (a storm would flood the log; the request metrics count
/// them); 500, logged, when hashing failed.
fn hashing_status(error: &HashingError) -> StatusCode {
    match error {
        HashingError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
        HashingError::Failed(_) => {
            log_chain(error);
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// How long a sign-up or sign-in refused for want of a turn at the hasher is held before its
/// 503 goes out.
///
/// Refusing costs the service a few microseconds, and a client that ignores `Retry-After` and
/// asks again at once would otherwise be refused as fast as the cores allow: tens of thousands
/// of refusals a second from a few dozen connections, taking the cores from the hashes being
/// served and from every other request. Held, each connection is refused at most four times a
/// second, and a held request costs no CPU while it waits. A client that honours `Retry-After`
/// (one second) loses a quarter of a second more.
pub const BUSY_ANSWER_DELAY: Duration = Duration::from_millis(250);

/// Holds a refusal for want of a turn at the hasher for [`BUSY_ANSWER_DELAY`]; any other
/// outcome goes out at once.
async fn hold_busy<T, E>(
    outcome: Result<T, E>,
    hashing: impl Fn(&E) -> Option<&HashingError>,
) -> Result<T, E> {
    if let Err(error) = &outcome {
        if let Some(HashingError::Busy { .. }) = hashing(error) {
            actix_web::rt::time::sleep(BUSY_ANSWER_DELAY).await;
        }
    }
    outcome
}

/// Registers a customer and signs them in.
#[utoipa::path(
    post,
    path = "/api/user/register",
    tag = "accounts",
    operation_id = "register",
    summary = "Register a customer",
    description = "Creates the customer and signs them in: the answer carries the session token \
        both in the `Authorization` header and in the `token` cookie.",
    request_body(
        content = CredentialsBody,
        content_type = "application/json",
        example = json!({"login": "alice", "password": "correct horse battery staple"})
    ),
    responses(
        (status = 200, description = "Registered and signed in.", headers(
            ("Authorization" = String, description = "`Bearer <token>`: send it back as is."),
            ("Set-Cookie" = String, description = "`token=<token>; HttpOnly; SameSite=Strict; Path=/; Max-Age=<token lifetime>`")
        )),
        (status = 400, description = "Malformed request: not JSON, a field missing, or an unusable login or password.",
            body = Problem, content_type = "application/problem+json",
            example = json!({"type": "about:blank", "title": "Bad Request", "status": 400, "detail": "the login is empty"})),
        (status = 409, description = "The login is taken.",
            body = Problem, content_type = "application/problem+json",
            example = json!({"type": "about:blank", "title": "Conflict", "status": 409, "detail": "the login is taken"})),
        (status = 413, response = PayloadTooLarge),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    ),
    security(())
)]
#[tracing::instrument(name = "register", skip_all)]
pub async fn register(
    state: web::Data<AppState>,
    body: JsonObject<CredentialsBody>,
) -> Result<HttpResponse, RegisterHandlerError> {
    let (login, password) = body
        .0
        .try_into_domain()
        .map_err(RegisterHandlerError::Malformed)?;
    let registered = use_cases::register(
        state.users.as_ref(),
        state.hasher.as_ref(),
        state.tokens.as_ref(),
        &state.registrations,
        &login,
        &password,
    )
    .await;
    let token = hold_busy(registered, |error| match error {
        RegisterError::Hashing(error) => Some(error),
        RegisterError::LoginTaken | RegisterError::Repository(_) => None,
    })
    .await?;
    Ok(with_credentials(HttpResponse::Ok(), &token, &state))
}

/// Signs a customer in.
#[utoipa::path(
    post,
    path = "/api/user/login",
    tag = "accounts",
    operation_id = "login",
    summary = "Sign in",
    description = "Checks the login and password and hands out a session token in the \
        `Authorization` header and the `token` cookie. Repeated failures for one login or from \
        one address are refused for a while with 429.",
    request_body(
        content = CredentialsBody,
        content_type = "application/json",
        example = json!({"login": "alice", "password": "correct horse battery staple"})
    ),
    responses(
        (status = 200, description = "Signed in.", headers(
            ("Authorization" = String, description = "`Bearer <token>`: send it back as is."),
            ("Set-Cookie" = String, description = "`token=<token>; HttpOnly; SameSite=Strict; Path=/; Max-Age=<token lifetime>`")
        )),
        (status = 400, description = "Malformed request.",
            body = Problem, content_type = "application/problem+json",
            example = json!({"type": "about:blank", "title": "Bad Request", "status": 400, "detail": "Json deserialize error: missing field `password` at line 1 column 17"})),
        (status = 401, description = "Wrong login or password.",
            body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "`Bearer`")),
            example = json!({"type": "about:blank", "title": "Unauthorized", "status": 401, "detail": "wrong login or password"})),
        (status = 413, response = PayloadTooLarge),
        (status = 429, description = "Too many failed sign-ins for this login from this client address, or from this client address whatever the login, within the throttle window (counted for every instance together); other addresses are not refused.",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again.")),
            example = json!({"type": "about:blank", "title": "Too Many Requests", "status": 429, "detail": "too many failed sign-ins; try again in 300 s"})),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    ),
    security(())
)]
#[tracing::instrument(name = "login", skip_all)]
pub async fn log_in(
    state: web::Data<AppState>,
    client: ClientAddress,
    body: JsonObject<CredentialsBody>,
) -> Result<HttpResponse, LogInHandlerError> {
    let (login, password) = body
        .0
        .try_into_domain()
        .map_err(LogInHandlerError::Malformed)?;
    let signed_in = use_cases::log_in(
        state.sign_ins.as_ref(),
        state.hasher.as_ref(),
        state.tokens.as_ref(),
        &state.throttle,
        client.0,
        &login,
        &password,
    )
    .await;
    let token = hold_busy(signed_in, |error| match error {
        LogInError::Hashing(error) => Some(error),
        LogInError::InvalidCredentials
        | LogInError::Throttled { .. }
        | LogInError::Repository(_) => None,
    })
    .await?;
    Ok(with_credentials(HttpResponse::Ok(), &token, &state))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use actix_web::{test as actix_test, App};
    use application::use_cases::{LoginThrottle, Registrations};
    use application::{
        ports::{
            clock::MockClock,
            ledger::MockLedgerRepository,
            orders::MockOrderRepository,
            security::{MockHashingTurn, MockPasswordHasher, MockTokenService},
            throttle::{FailureCount, MockSignInFailures, RecentFailures, SignInRecord},
            users::MockUserRepository,
        },
        use_cases::ThrottleConfig,
    };
    use serde_json::json;
    use tokio::time::Instant;

    use super::*;
    use crate::{client_address::ClientAddressConfig, configure_api};

    /// The service's state with no user and, when `throttled`, every sign-in over the
    /// throttle's limit and a hasher that gives turns (and is never asked to check a
    /// password); otherwise a hasher that refuses every turn as busy.
    fn state(throttled: bool) -> AppState {
        let mut hasher = MockPasswordHasher::new();
        hasher.expect_turn().returning(move || {
            if throttled {
                let mut turn = MockHashingTurn::new();
                turn.expect_verify().never();
                Ok(Box::new(turn))
            } else {
                Err(HashingError::Busy {
                    retry_after: Duration::from_secs(1),
                })
            }
        });
        let mut users = MockUserRepository::new();
        users.expect_find_by_login().returning(|_| Ok(None));
        let mut sign_ins = MockSignInFailures::new();
        sign_ins.expect_sign_in_record().returning(move |_, _, _| {
            let count = FailureCount {
                failures: u32::from(throttled),
                window_left: Duration::from_secs(60),
            };
            Ok(SignInRecord {
                credentials: None,
                failures: RecentFailures {
                    login_from_address: count,
                    address: count,
                },
            })
        });
        AppState {
            users: Arc::new(users),
            orders: Arc::new(MockOrderRepository::new()),
            ledger: Arc::new(MockLedgerRepository::new()),
            hasher: Arc::new(hasher),
            tokens: Arc::new(MockTokenService::new()),
            clock: Arc::new(MockClock::new()),
            sign_ins: Arc::new(sign_ins),
            throttle: LoginThrottle::new(ThrottleConfig {
                max_failures_per_login: 1,
                max_failures_per_address: 0,
                window: Duration::from_secs(60),
            }),
            request_limit: None,
            events: Arc::new(application::use_cases::EventStreams::new(
                Arc::new(application::ports::events::MockEventLog::new()),
                application::use_cases::EventStreamsConfig::default(),
            )),
            pending_limit: None,
            client_address: ClientAddressConfig::default(),
            registrations: Arc::new(Registrations::new()),
            token_lifetime: Duration::from_secs(3600),
            secure_cookie: false,
        }
    }

    /// Posts credentials to `path`; the status, and how long the answer took on tokio's clock
    /// (paused, so it moves only when every task waits for a timer).
    async fn post(state: AppState, path: &str, login: &str) -> (StatusCode, Duration) {
        let app = actix_test::init_service(
            App::new()
                .app_data(web::Data::new(state))
                .configure(configure_api),
        )
        .await;
        let request = actix_test::TestRequest::post()
            .uri(path)
            .set_json(json!({"login": login, "password": "secret"}))
            .to_request();
        let started = Instant::now();
        let response = actix_test::call_service(&app, request).await;
        (response.status(), started.elapsed())
    }

    #[actix_web::test]
    async fn a_sign_in_refused_for_want_of_a_turn_at_the_hasher_is_answered_after_the_delay() {
        tokio::time::pause();

        let (status, took) = post(state(false), "/api/user/login", "gopher").await;

        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(took >= BUSY_ANSWER_DELAY, "answered after {took:?}");
    }

    #[actix_web::test]
    async fn a_sign_up_refused_for_want_of_a_turn_at_the_hasher_is_answered_after_the_delay() {
        tokio::time::pause();

        let (status, took) = post(state(false), "/api/user/register", "gopher").await;

        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(took >= BUSY_ANSWER_DELAY, "answered after {took:?}");
    }

    #[actix_web::test]
    async fn a_throttled_sign_in_is_answered_at_once() {
        tokio::time::pause();

        let (status, took) = post(state(true), "/api/user/login", "gopher").await;

        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(took, Duration::ZERO);
    }
}
