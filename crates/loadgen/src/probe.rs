//! `loadgen probe`: closed-loop `GET /api/user/balance` clients, each on one keep-alive
//! connection of its own, that record every request (which connection, when it started, how
//! long it took) so that stalled requests can be told apart: one connection or all of them,
//! at one moment or spread out, and whether a connection was closed and opened again.
//!
//! HTTP/1.1 is spoken by hand (`http1.rs`) so that the connection a request went over is
//! known (a pooling client would hide it).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::{io::AsyncWriteExt, net::TcpStream};

use crate::http1;

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
    let address = http1::address(base)?;
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
            let request = http1::get(address, "/api/user/balance", token);
            let sent = Instant::now();
            if stream.write_all(request.as_bytes()).await.is_err() {
                continue 'connection;
            }
            let Some(status) = http1::read_response(&mut stream, &mut buffer).await? else {
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
