//! The HTTP client that asks the accrual system about orders.

use std::error::Error as _;
use std::fmt;
use std::time::{Duration, Instant};

use application::ports::accrual::{AccrualAnswer, AccrualClient, AccrualClientError};
use async_trait::async_trait;
use chrono::Utc;
use domain::OrderNumber;
use reqwest::header::{ACCEPT, RETRY_AFTER};
use reqwest::{Response, StatusCode};
use url::Url;

use crate::config::{validate_base_url, AccrualClientConfig, AccrualConfigError};
use crate::response::{parse_known, parse_per_minute, parse_retry_after};

/// The most of a reply body that is read; a `200` body beyond it is refused, other bodies are
/// cut short.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// How much of an error reply's body is quoted in an error message.
const MAX_QUOTED_CHARS: usize = 200;

/// Asks the accrual system about orders over HTTP.
///
/// Holds one connection pool (keep-alive); clone it or share it behind an `Arc` rather than
/// building several. Proxy settings from the environment are ignored and redirects are not
/// followed.
#[derive(Debug, Clone)]
pub struct HttpAccrualClient {
    http: reqwest::Client,
    base_url: Url,
    default_retry_after: Duration,
}

impl HttpAccrualClient {
    /// Builds the client and its connection pool.
    ///
    /// # Errors
    /// [`AccrualConfigError`] when the base URL is not a plain `http` address with a host and
    /// without query or fragment, or when the HTTP client cannot be built.
    pub fn new(config: AccrualClientConfig) -> Result<Self, AccrualConfigError> {
        validate_base_url(&config.base_url)?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .pool_max_idle_per_host(config.max_idle_connections_per_host)
            .tcp_nodelay(true)
            .user_agent(concat!("gophermart/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AccrualConfigError::Client(error_chain(&e)))?;
        Ok(Self {
            http,
            base_url: config.base_url,
            default_retry_after: config.default_retry_after,
        })
    }

    /// The address the accrual system's API lives under.
    #[must_use]
    pub fn base_url(&self) -> &Url {
        &self.base_url
    }

    /// `{base_url}/api/orders/{number}`, whether or not the base ends with a slash.
    fn order_url(&self, number: &OrderNumber) -> Result<Url, AccrualClientError> {
        let mut url = self.base_url.clone();
        url.path_segments_mut()
            .map_err(|()| {
                AccrualClientError::Transport(format!(
                    "{} cannot serve as a base address",
                    self.base_url
                ))
            })?
            .pop_if_empty()
            .extend(["api", "orders", number.as_str()]);
        Ok(url)
    }

    async fn ask(&self, number: &OrderNumber) -> Result<AccrualAnswer, AccrualClientError> {
        let response = self
            .http
            .get(self.order_url(number)?)
            .header(ACCEPT, "application/json")
            .send()
            .await
            .map_err(request_error)?;
        let status = response.status();
        match status {
            StatusCode::OK => {
                let body = read_body(response).await.map_err(request_error)?;
                if body.truncated {
                    return Err(AccrualClientError::InvalidAnswer(format!(
                        "the order reply is larger than {MAX_BODY_BYTES} bytes"
                    )));
                }
                parse_known(number, &body.bytes)
            }
            StatusCode::NO_CONTENT => Ok(AccrualAnswer::NotRegistered),
            StatusCode::TOO_MANY_REQUESTS => {
                let retry_after = response
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| parse_retry_after(Some(value), Utc::now()))
                    .unwrap_or(self.default_retry_after);
                let body = read_body(response).await.unwrap_or_default();
                let per_minute = parse_per_minute(&String::from_utf8_lossy(&body.bytes));
                Ok(AccrualAnswer::RateLimited {
                    retry_after,
                    per_minute,
                })
            }
            status if status.is_server_error() => {
                let body = read_body(response).await.unwrap_or_default();
                Err(AccrualClientError::Server(describe(status, &body.bytes)))
            }
            status => {
                let body = read_body(response).await.unwrap_or_default();
                Err(AccrualClientError::InvalidAnswer(format!(
                    "unexpected {}",
                    describe(status, &body.bytes)
                )))
            }
        }
    }
}

#[async_trait]
impl AccrualClient for HttpAccrualClient {
    async fn order(&self, number: &OrderNumber) -> Result<AccrualAnswer, AccrualClientError> {
        let started = Instant::now();
        let result = self.ask(number).await;
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        tracing::debug!(
            order = %number,
            outcome = %Outcome(&result),
            elapsed_ms,
            "asked the accrual system about an order"
        );
        result
    }
}

/// The start of a reply body.
#[derive(Debug, Default)]
struct Body {
    bytes: Vec<u8>,
    /// Whether the body went on beyond [`MAX_BODY_BYTES`].
    truncated: bool,
}

/// Reads at most [`MAX_BODY_BYTES`] of the body.
async fn read_body(mut response: Response) -> Result<Body, reqwest::Error> {
    let mut body = Body::default();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_BODY_BYTES - body.bytes.len();
        if chunk.len() > room {
            body.bytes
                .extend_from_slice(chunk.get(..room).unwrap_or_default());
            body.truncated = true;
            break;
        }
        body.bytes.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The status with the start of the body, for error messages.
fn describe(status: StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let quoted: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(MAX_QUOTED_CHARS)
        .collect();
    if quoted.is_empty() {
        format!("status {status}")
    } else {
        format!("status {status}: {quoted}")
    }
}

/// Sorts a failed exchange into a timeout or a transport failure.
fn request_error(error: reqwest::Error) -> AccrualClientError {
    if error.is_timeout() {
        AccrualClientError::Timeout
    } else {
        AccrualClientError::Transport(error_chain(&error))
    }
}

/// The error with all its causes, `outer: inner: innermost`.
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A call's result, as a log field.
struct Outcome<'a>(&'a Result<AccrualAnswer, AccrualClientError>);

impl fmt::Display for Outcome<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Ok(AccrualAnswer::Known { status, accrual }) => {
                write!(f, "known {status:?}")?;
                match accrual {
                    Some(amount) => write!(f, " accrual {amount}"),
                    None => Ok(()),
                }
            }
            Ok(AccrualAnswer::NotRegistered) => f.write_str("not registered"),
            Ok(AccrualAnswer::RateLimited {
                retry_after,
                per_minute,
            }) => {
                write!(
                    f,
                    "rate limited, retry after {} s",
                    retry_after.as_secs_f64()
                )?;
                match per_minute {
                    Some(limit) => write!(f, ", {limit} per minute"),
                    None => Ok(()),
                }
            }
            Err(error) => write!(f, "failed: {error}"),
        }
    }
}
