//! Authentication: the token travels in the `Authorization: Bearer` header or in the session
//! cookie; both are handed out when a user registers or signs in.

use std::future::{ready, Ready};

use futures::future::{Either, LocalBoxFuture};

use actix_web::{
    cookie::{time::Duration as CookieDuration, Cookie, SameSite},
    dev::Payload,
    http::{header, StatusCode},
    web, FromRequest, HttpMessage, HttpRequest, HttpResponse, HttpResponseBuilder, ResponseError,
};
use application::{
    ports::security::{Token, TokenError},
    use_cases::Refusal,
};
use domain::UserId;

use crate::{
    limits::{insert_fields, retry_after_seconds, Refused},
    problem::problem,
    AppState,
};

/// The session cookie's name.
pub const TOKEN_COOKIE: &str = "token";

/// The signed-in user of a request; extracting it answers 401 when there is none, and 429
/// when the customer is over their request limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthenticatedUser(pub UserId);

/// Why a request is not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: send the token as `Authorization: Bearer <token>` or in the `{TOKEN_COOKIE}` cookie")]
    Missing,
    #[error("the token is invalid")]
    Invalid,
    #[error("the token has expired; sign in again")]
    Expired,
    #[error("too many requests: {} per {} s allowed; try again in {} s", .0.allowance.quota, .0.allowance.window_seconds, retry_seconds(.0))]
    TooManyRequests(Refusal),
}

/// How long a refusal by the request limit is held before it goes out. Refusing costs a few
/// microseconds, and a client that ignores `Retry-After` would otherwise be refused as fast as
/// the cores allow, taking them from every other customer; held, each of its connections is
/// refused at most four times a second, at no CPU cost while it waits.
pub const HELD_REFUSAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Whole seconds to wait, at least one.
fn retry_seconds(refusal: &Refusal) -> u64 {
    retry_after_seconds(refusal.retry_after)
}

impl ResponseError for AuthError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Missing | Self::Invalid | Self::Expired => StatusCode::UNAUTHORIZED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = problem(self.status_code(), self.to_string());
        if let Self::TooManyRequests(refusal) = self {
            let headers = response.headers_mut();
            headers.insert(header::RETRY_AFTER, retry_seconds(refusal).into());
            insert_fields(headers, &refusal.allowance);
            response.extensions_mut().insert(Refused::RequestLimit);
        }
        response
    }
}

fn token_from(req: &HttpRequest) -> Option<String> {
    if let Some(value) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let value = value.trim();
        let token = match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => value,
        };
        if !token.is_empty() {
            return Some(token.to_owned());
        }
    }
    req.cookie(TOKEN_COOKIE).map(|c| c.value().to_owned())
}

impl FromRequest for AuthenticatedUser {
    type Error = AuthError;
    /// Ready at once, but for a refusal by the request limit, which is held (see
    /// [`HELD_REFUSAL`]).
    type Future = Either<
        Ready<Result<Self, Self::Error>>,
        LocalBoxFuture<'static, Result<Self, Self::Error>>,
    >;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(state) = req.app_data::<web::Data<AppState>>() else {
            tracing::error!("application state missing");
            return Either::Left(ready(Err(AuthError::Invalid)));
        };
        let result = match token_from(req) {
            None => Err(AuthError::Missing),
            Some(token) => state.tokens.verify(&token).map(Self).map_err(|e| match e {
                TokenError::Invalid => AuthError::Invalid,
                TokenError::Expired => AuthError::Expired,
            }),
        };
        let result = result.and_then(|Self(user)| {
            tracing::Span::current().record("user_id", user.0);
            if let Some(limit) = &state.request_limit {
                let allowance = limit.check(user).map_err(AuthError::TooManyRequests)?;
                req.extensions_mut().insert(allowance);
            }
            Ok(Self(user))
        });
        match result {
            Err(refused @ AuthError::TooManyRequests(_)) => Either::Right(Box::pin(async move {
                actix_web::rt::time::sleep(HELD_REFUSAL).await;
                Err(refused)
            })),
            result => Either::Left(ready(result)),
        }
    }
}

/// Hands a token to the client in both the `Authorization` header and the session cookie.
pub fn with_credentials(
    mut response: HttpResponseBuilder,
    token: &Token,
    state: &AppState,
) -> HttpResponse {
    let lifetime = i64::try_from(state.token_lifetime.as_secs()).unwrap_or(i64::MAX);
    let cookie = Cookie::build(TOKEN_COOKIE, token.0.clone())
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(state.secure_cookie)
        .max_age(CookieDuration::seconds(lifetime))
        .finish();
    response
        .insert_header((header::AUTHORIZATION, format!("Bearer {}", token.0)))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .cookie(cookie)
        .finish()
}
