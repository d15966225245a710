//! Start-up configuration: command-line flags, each with an environment variable of the same
//! meaning (flags win over variables).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::num::NonZeroUsize;
use std::time::Duration;

use clap::Parser;

/// The address the server listens on when none is given.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:8081";

/// How long an order stays in each of `REGISTERED` and `PROCESSING` when nothing else is given.
pub const DEFAULT_PROCESSING_DELAY_MS: u64 = 100;

/// How the accrual system is run.
#[derive(Debug, Clone, PartialEq, Parser)]
#[command(
    name = "accrual",
    version,
    about = "A standalone accrual system: computes the loyalty points earned by orders.",
    long_about = "A standalone, in-memory accrual system compatible with the one Gophermart \
                  calls. Register reward rules with POST /api/goods and purchases with \
                  POST /api/orders; ask about an order with GET /api/orders/{number}."
)]
pub struct Config {
    /// Address to listen on, as host:port; ":8081" means every interface, port 8081. Port 0
    /// picks a free port.
    #[arg(
        short = 'a',
        long = "address",
        env = "RUN_ADDRESS",
        default_value = DEFAULT_ADDRESS,
        value_parser = parse_address
    )]
    pub address: SocketAddr,

    /// Database URI. Accepted for compatibility with harnesses that pass one; this
    /// implementation keeps everything in memory and does not use it.
    #[arg(
        short = 'd',
        long = "database-uri",
        env = "DATABASE_URI",
        hide_env_values = true
    )]
    pub database_uri: Option<String>,

    /// Requests per minute allowed on GET /api/orders/{number} (sliding 60-second window);
    /// further requests get 429 with Retry-After. 0 means unlimited.
    #[arg(long = "rate-limit", env = "ACCRUAL_RATE_LIMIT", default_value_t = 0)]
    pub rate_limit: u32,

    /// Fraction of GET /api/orders/{number} answers replaced by 500, from 0.0 to 1.0.
    #[arg(
        long = "fail-rate",
        env = "ACCRUAL_FAIL_RATE",
        default_value_t = 0.0,
        value_parser = parse_fail_rate
    )]
    pub fail_rate: f64,

    /// Milliseconds of latency added before every answer of GET /api/orders/{number}.
    #[arg(long = "latency-ms", env = "ACCRUAL_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,

    /// Milliseconds an order spends as REGISTERED, and again as PROCESSING, before it is
    /// final. 0 makes orders final as soon as they are registered.
    #[arg(
        long = "processing-delay-ms",
        env = "ACCRUAL_PROCESSING_DELAY_MS",
        default_value_t = DEFAULT_PROCESSING_DELAY_MS
    )]
    pub processing_delay_ms: u64,

    /// Number of HTTP worker threads; one per CPU core when not given.
    #[arg(long = "workers", env = "ACCRUAL_WORKERS")]
    pub workers: Option<NonZeroUsize>,
}

impl Default for Config {
    /// The defaults of every flag, without reading the command line or the environment.
    fn default() -> Self {
        Self {
            address: SocketAddr::from(([127, 0, 0, 1], 8081)),
            database_uri: None,
            rate_limit: 0,
            fail_rate: 0.0,
            latency_ms: 0,
            processing_delay_ms: DEFAULT_PROCESSING_DELAY_MS,
            workers: None,
        }
    }
}

impl Config {
    /// The defaults, listening on 127.0.0.1 on a port the system picks: what tests want.
    #[must_use]
    pub fn ephemeral() -> Self {
        Self {
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Self::default()
        }
    }

    /// The processing delay as a duration.
    #[must_use]
    pub fn processing_delay(&self) -> Duration {
        Duration::from_millis(self.processing_delay_ms)
    }

    /// The added latency as a duration.
    #[must_use]
    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms)
    }

    /// Checks what the flag parsers check, for a configuration built in code.
    ///
    /// # Errors
    /// A message naming the value that is out of range.
    pub fn validate(&self) -> Result<(), String> {
        check_fail_rate(self.fail_rate).map(|_| ())
    }
}

/// Parses a listening address: `host:port`, `[v6]:port`, or Go-style `:port` meaning every
/// IPv4 interface. A host name is resolved and its first address used.
///
/// # Errors
/// A message when the text is not an address or the host cannot be resolved.
pub fn parse_address(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Some(port) = text.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{port:?} is not a port number"))?;
        return Ok(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::UNSPECIFIED,
            port,
        )));
    }
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    text.to_socket_addrs()
        .map_err(|error| format!("{text:?} is not a host:port address: {error}"))?
        .next()
        .ok_or_else(|| format!("{text:?} resolves to no address"))
}

fn parse_fail_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    check_fail_rate(rate)
}

fn check_fail_rate(rate: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!(
            "the fail rate must be between 0.0 and 1.0, not {rate}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn go_style_port_means_every_interface() {
        assert_eq!(
            parse_address(":8081"),
            Ok(SocketAddr::from(([0, 0, 0, 0], 8081)))
        );
    }

    #[test]
    fn explicit_addresses_are_kept() {
        assert_eq!(
            parse_address("127.0.0.1:0"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 0)))
        );
        assert_eq!(
            parse_address("[::1]:8081"),
            Ok("[::1]:8081".parse().expect("valid"))
        );
        let resolved = parse_address("localhost:8081").expect("localhost resolves");
        assert!(resolved.ip().is_loopback());
        assert_eq!(resolved.port(), 8081);
    }

    #[test]
    fn malformed_addresses_are_rejected() {
        for text in [":", ":http", ":70000", "8081", "127.0.0.1", ""] {
            assert!(parse_address(text).is_err(), "{text:?} should be rejected");
        }
    }

    #[test]
    fn flags_set_every_field() {
        let config = Config::try_parse_from([
            "accrual",
            "-a",
            ":9000",
            "-d",
            "postgres://localhost/accrual",
            "--rate-limit",
            "5",
            "--fail-rate",
            "0.25",
            "--latency-ms",
            "7",
            "--processing-delay-ms",
            "0",
            "--workers",
            "1",
        ])
        .expect("valid flags");
        assert_eq!(
            config,
            Config {
                address: SocketAddr::from(([0, 0, 0, 0], 9000)),
                database_uri: Some("postgres://localhost/accrual".to_owned()),
                rate_limit: 5,
                fail_rate: 0.25,
                latency_ms: 7,
                processing_delay_ms: 0,
                workers: NonZeroUsize::new(1),
            }
        );
    }

    #[test]
    fn fail_rate_outside_zero_to_one_is_rejected() {
        for rate in ["1.5", "-0.1", "NaN", "often"] {
            assert!(
                Config::try_parse_from(["accrual", "--fail-rate", rate]).is_err(),
                "{rate} should be rejected"
            );
        }
        let config = Config {
            fail_rate: 2.0,
            ..Config::ephemeral()
        };
        assert!(config.validate().is_err());
        assert!(Config::ephemeral().validate().is_ok());
    }

    #[test]
    fn help_documents_every_flag() {
        let help = Config::command().render_long_help().to_string();
        for flag in [
            "--address",
            "--database-uri",
            "--rate-limit",
            "--fail-rate",
            "--latency-ms",
            "--processing-delay-ms",
            "--workers",
            "RUN_ADDRESS",
            "DATABASE_URI",
            "ACCRUAL_RATE_LIMIT",
            "ACCRUAL_FAIL_RATE",
            "ACCRUAL_LATENCY_MS",
            "ACCRUAL_PROCESSING_DELAY_MS",
        ] {
            assert!(help.contains(flag), "--help does not mention {flag}");
        }
    }

    #[test]
    fn command_definition_is_consistent() {
        Config::command().debug_assert();
    }
}
