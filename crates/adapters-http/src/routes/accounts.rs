//! `POST /api/user/register` and `POST /api/user/login`.

use actix_web::{
    http::{header, StatusCode},
    web, HttpRequest, HttpResponse, ResponseError,
};
use application::{
    ports::security::HashingError,
    use_cases::{self, LogInError, RegisterError},
};
use domain::{Login, Password};
use serde::Deserialize;

use crate::{
    auth::with_credentials,
    problem::{log_chain, problem, repository_status},
    AppState,
};

/// The body of both endpoints.
#[derive(Debug, Deserialize)]
pub struct CredentialsBody {
    login: String,
    password: String,
}

impl CredentialsBody {
    fn try_into_domain(self) -> Result<(Login, Password), String> {
        let login = Login::parse(&self.login).map_err(|e| e.to_string())?;
        let password = Password::parse(&self.password).map_err(|e| e.to_string())?;
        Ok((login, password))
    }
}

impl std::fmt::Debug for RegisterHandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Why registration was refused.
#[derive(thiserror::Error)]
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
        let status = self.status_code();
        let detail = status.is_client_error().then(|| self.to_string());
        problem(status, detail)
    }
}

/// Why signing in was refused.
#[derive(thiserror::Error)]
pub enum LogInHandlerError {
    #[error("{0}")]
    Malformed(String),
    #[error(transparent)]
    UseCase(#[from] LogInError),
}

impl std::fmt::Debug for LogInHandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
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
        let status = self.status_code();
        let detail = status.is_client_error().then(|| self.to_string());
        let mut response = problem(status, detail);
        if let Self::UseCase(LogInError::Throttled { retry_after }) = self {
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            if let Ok(value) = header::HeaderValue::from_str(&seconds.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

fn hashing_status(error: &HashingError) -> StatusCode {
    log_chain(error);
    StatusCode::INTERNAL_SERVER_ERROR
}

/// Registers a customer and signs them in.
#[tracing::instrument(name = "register", skip_all)]
pub async fn register(
    state: web::Data<AppState>,
    body: web::Json<CredentialsBody>,
) -> Result<HttpResponse, RegisterHandlerError> {
    let (login, password) = body
        .into_inner()
        .try_into_domain()
        .map_err(RegisterHandlerError::Malformed)?;
    let token = use_cases::register(
        state.users.as_ref(),
        state.hasher.as_ref(),
        state.tokens.as_ref(),
        &login,
        &password,
    )
    .await?;
    Ok(with_credentials(HttpResponse::Ok(), &token, &state))
}

/// Signs a customer in.
#[tracing::instrument(name = "login", skip_all)]
pub async fn log_in(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<CredentialsBody>,
) -> Result<HttpResponse, LogInHandlerError> {
    let (login, password) = body
        .into_inner()
        .try_into_domain()
        .map_err(LogInHandlerError::Malformed)?;
    let token = use_cases::log_in(
        state.users.as_ref(),
        state.hasher.as_ref(),
        state.tokens.as_ref(),
        &state.throttle,
        req.peer_addr().map(|a| a.ip()),
        &login,
        &password,
    )
    .await?;
    Ok(with_credentials(HttpResponse::Ok(), &token, &state))
}
