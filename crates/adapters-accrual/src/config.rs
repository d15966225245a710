//! Where the accrual system is and how patiently to talk to it.

use std::time::Duration;

use url::Url;

/// How to reach the accrual system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccrualClientConfig {
    /// The address the accrual system's API lives under, such as `http://127.0.0.1:8081/`.
    /// Order requests go to `{base_url}/api/orders/{number}`; a path prefix is kept.
    pub base_url: Url,
    /// How long establishing a TCP connection may take.
    pub connect_timeout: Duration,
    /// How long a whole request may take, from connecting to reading the last byte of the reply.
    pub request_timeout: Duration,
    /// How long to hold off after a `429` whose `Retry-After` header is missing or unreadable.
    pub default_retry_after: Duration,
    /// How many idle keep-alive connections to the accrual system are kept for reuse. This does
    /// not bound the connections in use; the caller's concurrency does.
    pub max_idle_connections_per_host: usize,
}

impl AccrualClientConfig {
    /// The default [`connect_timeout`](Self::connect_timeout): 2 s.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    /// The default [`request_timeout`](Self::request_timeout): 5 s.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
    /// The default [`default_retry_after`](Self::default_retry_after): 60 s.
    pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);
    /// The default [`max_idle_connections_per_host`](Self::max_idle_connections_per_host): 16.
    pub const DEFAULT_MAX_IDLE_CONNECTIONS_PER_HOST: usize = 16;

    /// The configuration for `base_url` with the default timeouts: connect 2 s, request 5 s,
    /// retry after 60 s when the accrual system does not say.
    #[must_use]
    pub fn new(base_url: Url) -> Self {
        Self {
            base_url,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
            default_retry_after: Self::DEFAULT_RETRY_AFTER,
            max_idle_connections_per_host: Self::DEFAULT_MAX_IDLE_CONNECTIONS_PER_HOST,
        }
    }
}

/// Why an accrual system address or client configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccrualConfigError {
    /// The address is empty or blank.
    #[error("the accrual system address is empty")]
    Empty,
    /// The address is not a URL even after completing it.
    #[error("the accrual system address {input:?} is not a valid URL: {reason}")]
    Unparsable {
        /// The address as given.
        input: String,
        /// What the URL parser objected to.
        reason: url::ParseError,
    },
    /// The address uses a scheme other than `http`.
    #[error("the accrual system address must use http, not {0:?}")]
    UnsupportedScheme(String),
    /// The address names no host, or cannot have a path.
    #[error("the accrual system address {0:?} does not name a host")]
    NoHost(String),
    /// The address carries a query or a fragment, which have no place in a base address.
    #[error("the accrual system address {0:?} must not have a query or a fragment")]
    QueryOrFragment(String),
    /// The HTTP client could not be built.
    #[error("the HTTP client for the accrual system could not be built: {0}")]
    Client(String),
}

/// Turns an accrual system address as operators write it into a base URL whose path ends with
/// `/`.
///
/// Accepts `http://host:port`, `host:port` (`http://` is prepended) and `:port` (the host is
/// `127.0.0.1`), each with or without a trailing slash and an optional path prefix. Surrounding
/// whitespace is ignored.
///
/// # Errors
/// [`AccrualConfigError`] when the address is empty, not a URL, not `http`, names no host, or
/// has a query or a fragment.
pub fn normalize_base_url(input: &str) -> Result<Url, AccrualConfigError> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(AccrualConfigError::Empty);
    }
    let completed = if trimmed.starts_with(':') {
        format!("http://127.0.0.1{trimmed}")
    } else if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("http://{trimmed}")
    };
    let mut url = Url::parse(&completed).map_err(|reason| AccrualConfigError::Unparsable {
        input: input.to_owned(),
        reason,
    })?;
    validate_base_url(&url)?;
    if !url.path().ends_with('/') {
        let with_slash = format!("{}/", url.path());
        url.set_path(&with_slash);
    }
    Ok(url)
}

/// Checks that `url` can serve as the base of order requests.
pub(crate) fn validate_base_url(url: &Url) -> Result<(), AccrualConfigError> {
    if url.scheme() != "http" {
        return Err(AccrualConfigError::UnsupportedScheme(
            url.scheme().to_owned(),
        ));
    }
    if url.cannot_be_a_base() || url.host_str().is_none_or(str::is_empty) {
        return Err(AccrualConfigError::NoHost(url.to_string()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(AccrualConfigError::QueryOrFragment(url.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(input: &str) -> String {
        normalize_base_url(input)
            .map(String::from)
            .unwrap_or_else(|e| panic!("{input:?} should be accepted: {e}"))
    }

    #[test]
    fn a_full_http_address_is_kept_with_a_trailing_slash() {
        assert_eq!(
            normalized("http://localhost:8081"),
            "http://localhost:8081/"
        );
        assert_eq!(
            normalized("http://localhost:8081/"),
            "http://localhost:8081/"
        );
    }

    #[test]
    fn a_host_and_port_get_the_http_scheme() {
        assert_eq!(normalized("localhost:8081"), "http://localhost:8081/");
        assert_eq!(normalized("accrual:8081/"), "http://accrual:8081/");
        assert_eq!(normalized("10.0.0.7:9000"), "http://10.0.0.7:9000/");
        assert_eq!(normalized("[::1]:8081"), "http://[::1]:8081/");
    }

    #[test]
    fn a_bare_port_means_the_loopback_address() {
        assert_eq!(normalized(":8081"), "http://127.0.0.1:8081/");
        assert_eq!(normalized(":8081/"), "http://127.0.0.1:8081/");
    }

    #[test]
    fn surrounding_whitespace_is_ignored() {
        assert_eq!(
            normalized("  http://localhost:8081 \n"),
            "http://localhost:8081/"
        );
    }

    #[test]
    fn a_path_prefix_is_kept_and_ends_with_a_slash() {
        assert_eq!(normalized("http://gw:80/accrual"), "http://gw/accrual/");
        assert_eq!(normalized("gw/accrual/"), "http://gw/accrual/");
    }

    #[test]
    fn an_empty_address_is_refused() {
        assert_eq!(normalize_base_url(""), Err(AccrualConfigError::Empty));
        assert_eq!(normalize_base_url("   "), Err(AccrualConfigError::Empty));
    }

    #[test]
    fn an_address_that_is_no_url_is_refused() {
        assert!(matches!(
            normalize_base_url("http://"),
            Err(AccrualConfigError::Unparsable { .. })
        ));
        assert!(matches!(
            normalize_base_url("localhost:notaport"),
            Err(AccrualConfigError::Unparsable { .. })
        ));
    }

    #[test]
    fn an_address_with_another_scheme_is_refused() {
        assert_eq!(
            normalize_base_url("https://accrual.example"),
            Err(AccrualConfigError::UnsupportedScheme("https".to_owned()))
        );
        assert_eq!(
            normalize_base_url("ftp://accrual.example"),
            Err(AccrualConfigError::UnsupportedScheme("ftp".to_owned()))
        );
    }

    #[test]
    fn an_address_with_a_query_or_fragment_is_refused() {
        assert!(matches!(
            normalize_base_url("http://localhost:8081/?a=b"),
            Err(AccrualConfigError::QueryOrFragment(_))
        ));
        assert!(matches!(
            normalize_base_url("localhost:8081#top"),
            Err(AccrualConfigError::QueryOrFragment(_))
        ));
    }

    #[test]
    fn the_default_configuration_uses_the_documented_timeouts() {
        let url = normalize_base_url(":8081").expect("a valid address");
        let config = AccrualClientConfig::new(url.clone());
        assert_eq!(config.base_url, url);
        assert_eq!(config.connect_timeout, Duration::from_secs(2));
        assert_eq!(config.request_timeout, Duration::from_secs(5));
        assert_eq!(config.default_retry_after, Duration::from_secs(60));
    }
}
