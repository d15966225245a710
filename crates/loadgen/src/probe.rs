//! `loadgen probe`: closed-loop `GET /api/user/balance` clients, each on one keep-alive
//! connection of its own, that record every request (which connection, when it started, how
//! long it took) so that stalled requests can be told apart: one connection or all of them,
//! at one moment or spread out, and whether a connection was closed and opened again.
//!
//! HTTP/1.1 is spoken by hand over a `TcpStream` so that the connection a request went over is
//! known (a pooling client would hide it), as wrk does it.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// One request as the client saw it.
#[derive(Debug, Clone, Copy)]
struct Sample {
    client: usize,
    /// The client's local port: which connection it went over.
    port: u16,
    /// When it was sent, from the start of the run.
    at: Duration,
    took: Duration,
    status: u16,
}

/// A connection opened (the first, or again after the server closed one).
#[derive(Debug, Clone, Copy)]
struct Connect {
    client: usize,
    at: Duration,
    took: Duration,
}

/// Runs `clients` probe clients for `seconds` against `base` (`http://host:port`), each
/// request for one of `tokens` in turn; returns the figures with every request slower than
/// `slow_ms` listed.
///
/// # Errors
/// When the address is unusable or a client fails for another reason than a closed connection.
pub async fn probe(
    base: &str,
    tokens: Vec<String>,
    clients: usize,
    seconds: f64,
    slow_ms: f64,
) -> anyhow::Result<Value> {
    let address = base
        .strip_prefix("http://")
        .context("the base address must be http://host:port")?
        .trim_end_matches('/')
        .to_owned();
    if tokens.is_empty() {
        bail!("no tokens");
    }
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let address = address.clone();
            let tokens = tokens.clone();
            tokio::spawn(async move { run_client(client, &address, &tokens, started, until).await })
        })
        .collect();
    let mut samples = Vec::new();
    let mut connects = Vec::new();
    for task in tasks {
        let (s, c) = task.await??;
        samples.extend(s);
        connects.extend(c);
    }
    let wall = started.elapsed().as_secs_f64();
    report(&samples, &connects, wall, slow_ms)
}

async fn run_client(
    client: usize,
    address: &str,
    tokens: &[String],
    started: Instant,
    until: Instant,
) -> anyhow::Result<(Vec<Sample>, Vec<Connect>)> {
    let mut samples = Vec::new();
    let mut connects = Vec::new();
    let mut next = client;
    let mut buffer = Vec::with_capacity(4096);
    'connection: while Instant::now() < until {
        let connecting = Instant::now();
        let mut stream = TcpStream::connect(address)
            .await
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_nodelay(true)?;
        connects.push(Connect {
            client,
            at: connecting - started,
            took: connecting.elapsed(),
        });
        let port = stream.local_addr()?.port();
        while Instant::now() < until {
            let token = &tokens[next % tokens.len()];
            next += 1;
            let request = format!(
                "GET /api/user/balance HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\r\n"
            );
            let sent = Instant::now();
            if stream.write_all(request.as_bytes()).await.is_err() {
                continue 'connection;
            }
            let Some(status) = read_response(&mut stream, &mut buffer).await? else {
                continue 'connection;
            };
            samples.push(Sample {
                client,
                port,
                at: sent - started,
                took: sent.elapsed(),
                status,
            });
        }
    }
    Ok((samples, connects))
}

/// Reads one response with a `Content-Length` body; `None` when the server closed the
/// connection first.
async fn read_response(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> anyhow::Result<Option<u16>> {
    buffer.clear();
    let mut chunk = [0_u8; 4096];
    loop {
        if let Some(end) = find(buffer, b"\r\n\r\n") {
            let head = std::str::from_utf8(&buffer[..end]).context("a response head")?;
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .context("a status line")?;
            let length: usize = head
                .lines()
                .filter_map(|line| line.split_once(':'))
                .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, value)| value.trim().parse().ok())
                .context("a Content-Length")?;
            while buffer.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(None);
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            return Ok(Some(status));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

fn report(
    samples: &[Sample],
    connects: &[Connect],
    wall: f64,
    slow_ms: f64,
) -> anyhow::Result<Value> {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    for s in samples {
        histogram.saturating_record(u64::try_from(s.took.as_micros()).unwrap_or(u64::MAX).max(1));
    }
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let mut slow: Vec<&Sample> = samples
        .iter()
        .filter(|s| millis(s.took) >= slow_ms)
        .collect();
    slow.sort_by_key(|s| s.at);
    let not_ok = samples.iter().filter(|s| s.status != 200).count();
    Ok(json!({
        "requests": samples.len(),
        "seconds": wall,
        "rps": samples.len() as f64 / wall,
        "not_200": not_ok,
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
        "p999_ms": ms(0.999),
        "max_ms": histogram.max() as f64 / 1000.0,
        "connections_opened": connects.len(),
        "connects": connects.iter().map(|c| json!({
            "client": c.client, "at_ms": millis(c.at), "ms": millis(c.took),
        })).collect::<Vec<_>>(),
        "slow_ms": slow_ms,
        "slow": slow.iter().map(|s| json!({
            "client": s.client, "port": s.port, "at_ms": millis(s.at), "ms": millis(s.took),
            "status": s.status,
        })).collect::<Vec<_>>(),
    }))
}
