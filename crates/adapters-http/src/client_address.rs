//! The client's address. Behind a reverse proxy, a load balancer or a NAT every connection
//! comes from the proxy, so the address a request was sent from is read from the header the
//! proxy adds, but only when the connection comes from a proxy named in [`TrustedProxies`]:
//! the client address is the rightmost address of the chain that is not a trusted proxy.
//! Anything to its left was written by the client, or by proxies the client chose, and is
//! ignored, so a client cannot pick its own address. Only the one header the proxies set
//! ([`ForwardedHeader`]) is read: a proxy passes the other through from the client unchanged.
//! Logs, the sign-in throttle and every limit by address use this address.

use std::{
    future::{ready, Ready},
    net::{IpAddr, Ipv6Addr},
    str::FromStr,
};

use actix_web::{
    body::MessageBody,
    dev::{Payload, ServiceRequest, ServiceResponse},
    http::header::{HeaderMap, HeaderName},
    web, Error, FromRequest, HttpMessage, HttpRequest,
};
use forwarded_header_value::ForwardedStanza;
use ipnet::IpNet;
use tracing::Span;
use tracing_actix_web::{DefaultRootSpanBuilder, RequestId, RootSpanBuilder};

use crate::AppState;

/// The proxies whose forwarding header is believed: addresses and CIDR blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

/// Why a list of trusted proxies could not be read.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is neither an IP address nor a CIDR block (such as 10.0.0.0/8)")]
pub struct TrustedProxiesError(String);

impl FromStr for TrustedProxies {
    type Err = TrustedProxiesError;

    /// A comma-separated list; empty trusts nobody.
    fn from_str(list: &str) -> Result<Self, Self::Err> {
        list.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| TrustedProxiesError(entry.to_owned()))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl TrustedProxies {
    /// Whether `address` is one of the trusted proxies.
    #[must_use]
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        self.0.iter().any(|net| net.contains(&address))
    }

    /// Whether no proxy is trusted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The header trusted proxies add the address of their client to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx, HAProxy, every cloud load balancer).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

/// Why a forwarding header's name could not be read.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a forwarding header: use x-forwarded-for or forwarded")]
pub struct ForwardedHeaderError(String);

impl FromStr for ForwardedHeader {
    type Err = ForwardedHeaderError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(Self::XForwardedFor),
            "forwarded" => Ok(Self::Forwarded),
            _ => Err(ForwardedHeaderError(name.to_owned())),
        }
    }
}

impl ForwardedHeader {
    fn name(self) -> HeaderName {
        match self {
            Self::XForwardedFor => HeaderName::from_static("x-forwarded-for"),
            Self::Forwarded => HeaderName::from_static("forwarded"),
        }
    }

    /// The address one element of the header names, if it is an address.
    fn element(self, element: &str) -> Option<IpAddr> {
        match self {
            Self::XForwardedFor => element
                .parse::<IpAddr>()
                .ok()
                .or_else(|| element.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())),
            Self::Forwarded => element
                .parse::<ForwardedStanza>()
                .ok()
                .and_then(|stanza| stanza.forwarded_for_ip()),
        }
    }
}

/// How the client address is found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientAddressConfig {
    pub trusted_proxies: TrustedProxies,
    pub header: ForwardedHeader,
}

/// Stands for the address of a request whose peer is unknown (not over TCP).
const UNKNOWN: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

impl ClientAddressConfig {
    /// The client address of a request that came from `peer` with `headers`.
    #[must_use]
    pub fn client_address(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> IpAddr {
        let Some(peer) = peer.map(|peer| peer.to_canonical()) else {
            return UNKNOWN;
        };
        if !self.trusted_proxies.contains(peer) {
            return peer;
        }
        // Several header lines form one list, in order.
        let elements: Vec<&str> = headers
            .get_all(self.header.name())
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .filter(|element| !element.is_empty())
            .collect();
        let mut client = peer;
        for element in elements.into_iter().rev() {
            match self.header.element(element) {
                Some(address) => {
                    client = address.to_canonical();
                    if !self.trusted_proxies.contains(client) {
                        break;
                    }
                }
                // A trusted proxy wrote something that is not an address (`unknown`, an
                // obfuscated name): the nearest proxy is all that is known.
                None => break,
            }
        }
        client
    }
}

/// The client address of a request, as found by [`ClientAddressConfig`] when the request came
/// in (see [`ClientAddressSpan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

impl ClientAddress {
    fn of(req: &HttpRequest) -> Self {
        if let Some(found) = req.extensions().get::<Self>() {
            return *found;
        }
        let peer = req.peer_addr().map(|a| a.ip());
        let address = req.app_data::<web::Data<AppState>>().map_or_else(
            || peer.map_or(UNKNOWN, |peer| peer.to_canonical()),
            |state| state.client_address.client_address(peer, req.headers()),
        );
        Self(address)
    }
}

impl FromRequest for ClientAddress {
    type Error = Error;
    type Future = Ready<Result<Self, Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Ok(Self::of(req)))
    }
}

/// The root span of every request, as tracing-actix-web's, with the client address found by
/// [`ClientAddressConfig`] as `http.client_ip` instead of whatever the request's headers say.
/// Without tracing-actix-web's `otel.*` fields: nothing exports spans to OpenTelemetry, and in
/// the logs they repeated the method, the route and the status. The log layer formats every
/// field of this span on every request, logged or not, so each one costs each request; the
/// customer (`user_id`) is recorded here by the authentication extractor, so the handlers
/// open no span of their own to carry it.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddressSpan;

impl RootSpanBuilder for ClientAddressSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        let address = ClientAddress::of(request.request());
        request.extensions_mut().insert(address);
        let route = request.match_pattern().unwrap_or_else(|| "default".into());
        let request_id = request.extensions().get::<RequestId>().copied();
        tracing::info_span!(
            "HTTP request",
            http.method = %request.method(),
            http.route = %route,
            http.client_ip = %address.0,
            http.target = %request.uri().path_and_query().map_or("", |p| p.as_str()),
            http.status_code = tracing::field::Empty,
            request_id = request_id.map(tracing::field::display),
            user_id = tracing::field::Empty,
            exception.message = tracing::field::Empty,
            exception.details = tracing::field::Empty,
        )
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::HeaderValue;

    use super::*;

    fn config(trusted: &str, header: ForwardedHeader) -> ClientAddressConfig {
        ClientAddressConfig {
            trusted_proxies: trusted.parse().expect("a list"),
            header,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    fn headers(name: &'static str, values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        headers
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client_whatever_the_headers_say() {
        let config = config("", ForwardedHeader::XForwardedFor);
        let spoofed = headers("x-forwarded-for", &["203.0.113.9"]);

        assert_eq!(
            config.client_address(Some(ip("198.51.100.4")), &spoofed),
            ip("198.51.100.4")
        );
    }

    #[test]
    fn a_trusted_proxys_header_names_the_client() {
        let config = config("10.0.0.0/8", ForwardedHeader::XForwardedFor);
        let forwarded = headers("x-forwarded-for", &["203.0.113.9"]);

        assert_eq!(
            config.client_address(Some(ip("10.1.2.3")), &forwarded),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn an_untrusted_peers_header_is_ignored() {
        let config = config("10.0.0.0/8", ForwardedHeader::XForwardedFor);
        let spoofed = headers("x-forwarded-for", &["203.0.113.9"]);

        assert_eq!(
            config.client_address(Some(ip("192.0.2.50")), &spoofed),
            ip("192.0.2.50")
        );
    }

    #[test]
    fn addresses_a_client_put_left_of_its_own_are_ignored() {
        let config = config("10.0.0.1, 10.0.0.2", ForwardedHeader::XForwardedFor);
        // The client claimed 1.1.1.1; the outer proxy appended the client's real address, the
        // inner one the outer proxy's.
        let chain = headers("x-forwarded-for", &["1.1.1.1, 203.0.113.9, 10.0.0.1"]);

        assert_eq!(
            config.client_address(Some(ip("10.0.0.2")), &chain),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn several_header_lines_form_one_chain() {
        let config = config("10.0.0.0/8", ForwardedHeader::XForwardedFor);
        let chain = headers("x-forwarded-for", &["1.1.1.1", "203.0.113.9, 10.0.0.7"]);

        assert_eq!(
            config.client_address(Some(ip("10.0.0.1")), &chain),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn the_forwarded_header_is_read_when_it_is_the_one_the_proxies_set() {
        let config = config("10.0.0.0/8", ForwardedHeader::Forwarded);
        let chain = headers(
            "forwarded",
            &[r#"for=1.1.1.1, for="[2001:db8::7]:4711";proto=https, for=10.0.0.9"#],
        );
        let ignored = headers("x-forwarded-for", &["203.0.113.9"]);

        assert_eq!(
            config.client_address(Some(ip("10.0.0.1")), &chain),
            ip("2001:db8::7")
        );
        assert_eq!(
            config.client_address(Some(ip("10.0.0.1")), &ignored),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn what_is_not_an_address_stops_the_walk_at_the_nearest_proxy() {
        let config = config("10.0.0.0/8", ForwardedHeader::Forwarded);
        let chain = headers("forwarded", &["for=unknown, for=10.0.0.9"]);

        assert_eq!(
            config.client_address(Some(ip("10.0.0.1")), &chain),
            ip("10.0.0.9")
        );
    }

    #[test]
    fn an_ipv4_peer_reached_over_ipv6_is_matched_as_ipv4() {
        let config = config("127.0.0.1", ForwardedHeader::XForwardedFor);
        let forwarded = headers("x-forwarded-for", &["203.0.113.9"]);

        assert_eq!(
            config.client_address(Some(ip("::ffff:127.0.0.1")), &forwarded),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn a_malformed_list_names_the_entry() {
        let error = "10.0.0.0/8, proxy.local"
            .parse::<TrustedProxies>()
            .expect_err("not an address");

        assert!(error.to_string().contains("proxy.local"), "{error}");
    }
}
