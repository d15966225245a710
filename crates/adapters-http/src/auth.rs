//! Authentication: the token travels in the `Authorization: Bearer` header or in the session
//! cookie; both are handed out when a user registers or signs in.

use std::future::{ready, Ready};

use actix_web::{
    cookie::{time::Duration as CookieDuration, Cookie, SameSite},
    dev::Payload,
    http::{header, StatusCode},
    web, FromRequest, HttpRequest, HttpResponse, HttpResponseBuilder, ResponseError,
};
use application::ports::security::{Token, TokenError};
use domain::UserId;

use crate::{problem::problem, AppState};

/// The session cookie's name.
pub const TOKEN_COOKIE: &str = "token";

/// The signed-in user of a request; extracting it answers 401 when there is none.
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
}

impl ResponseError for AuthError {
    fn status_code(&self) -> StatusCode {
        StatusCode::UNAUTHORIZED
    }

    fn error_response(&self) -> HttpResponse {
        problem(self.status_code(), self.to_string())
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
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(state) = req.app_data::<web::Data<AppState>>() else {
            tracing::error!("application state missing");
            return ready(Err(AuthError::Invalid));
        };
        let result = match token_from(req) {
            None => Err(AuthError::Missing),
            Some(token) => state.tokens.verify(&token).map(Self).map_err(|e| match e {
                TokenError::Invalid => AuthError::Invalid,
                TokenError::Expired => AuthError::Expired,
            }),
        };
        if let Ok(Self(user)) = &result {
            tracing::Span::current().record("user_id", user.0);
        }
        ready(result)
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
