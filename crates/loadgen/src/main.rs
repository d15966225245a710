//! `loadgen`: the parts of Gophermart's benchmark that a plain HTTP load tool (wrk) cannot do.
//!
//! - `register`: signs up users and writes their tokens, one a line, for the wrk scripts.
//! - `prereg`: registers purchases in our accrual system for the order numbers the upload
//!   scripts will send, so that the accrual worker finds every uploaded order at once.
//! - `mixed`: a mixed customer workload with a latency histogram per operation.
//! - `stream`: uploads a paced stream of orders (the accrual pipeline measurements).
//! - `probe`: balance reads that record every request's connection, start and duration, to
//!   find which requests stalled and when (see `probe.rs`).
//! - `flood`: quiet customers' reads alone and while one customer floods the service, in
//!   turns (see `flood.rs`).
//!
//! Order numbers are `PREFIX`, a one-digit stream id, an 8-digit counter and the Luhn check
//! digit: `bench/wrk/common.lua` builds the same numbers.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use domain::with_check_digit;
use futures::{stream, StreamExt};
use serde_json::{json, Value};
use stats::OpStats;

mod flood;
mod http1;
mod probe;
mod stats;

#[derive(Debug, Parser)]
#[command(name = "loadgen", about = "Gophermart's benchmark driver")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Signs up COUNT users named PREFIX0, PREFIX1, ... (signing in those that exist) and
    /// writes their tokens to OUT, one a line, in that order.
    Register {
        #[arg(long)]
        base: String,
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value = "bench-password")]
        password: String,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long)]
        out: String,
    },
    /// Registers, in the accrual system, a purchase for each number PREFIX,stream,k for
    /// streams 1..=STREAMS (0 alone when STREAMS is 0) and k in 0..COUNT.
    Prereg {
        #[arg(long)]
        accrual: String,
        #[arg(long)]
        prefix: String,
        #[arg(long, default_value_t = 0)]
        streams: u32,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Runs the mixed customer workload: CLIENTS closed-loop customers, each request for a
    /// random user of TOKENS, operations drawn from a fixed mix.
    Mixed {
        #[arg(long)]
        base: String,
        #[arg(long)]
        accrual: String,
        #[arg(long)]
        tokens: String,
        #[arg(long)]
        clients: usize,
        /// Measured seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Unmeasured seconds before.
        #[arg(long, default_value_t = 2.0)]
        warmup: f64,
        /// Prefix of the uploaded numbers (registered in the accrual system first).
        #[arg(long, default_value = "6")]
        prefix: String,
        /// Numbers registered in the accrual system before the run.
        #[arg(long, default_value_t = 20_000)]
        numbers: u64,
    },
    /// Uploads COUNT pre-registered numbers for one user at RATE per second (open loop).
    Stream {
        #[arg(long)]
        base: String,
        #[arg(long)]
        accrual: String,
        #[arg(long)]
        token: String,
        #[arg(long)]
        rate: f64,
        #[arg(long)]
        count: u64,
        #[arg(long)]
        prefix: String,
        /// Skip registering the numbers in the accrual system (already done).
        #[arg(long, default_value_t = false)]
        no_prereg: bool,
    },
    /// Reads balances with CLIENTS closed-loop clients, one connection each, for DURATION
    /// seconds, and lists every request slower than SLOW_MS with its connection and start.
    Probe {
        #[arg(long)]
        base: String,
        #[arg(long)]
        tokens: String,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        #[arg(long, default_value_t = 50.0)]
        slow_ms: f64,
    },
    /// Quiet customers (one per token of QUIET_TOKENS, one connection each) read their balance
    /// and orders, in windows of SECONDS that take turns: alone, then while the customer of
    /// FLOOD_TOKEN sends the same reads flat out over FLOOD_CONNECTIONS; ROUNDS pairs.
    Flood {
        #[arg(long)]
        base: String,
        #[arg(long)]
        quiet_tokens: String,
        #[arg(long)]
        flood_token: String,
        #[arg(long, default_value_t = 64)]
        flood_connections: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Unmeasured seconds of quiet customers before the first window.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
    },
}

/// The tokens of a file, one a line.
fn read_tokens(path: &str) -> anyhow::Result<Vec<String>> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {path}"))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// The `k`-th order number of stream `stream` under `prefix`.
fn order_number(prefix: &str, stream: u32, k: u64) -> String {
    with_check_digit(&format!("{prefix}{stream}{k:08}"))
}

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()?)
}

/// Posts `body`, and again after the `Retry-After` of each 503 (the service sheds sign-ins it
/// cannot hash soon), up to a minute in all.
async fn post_until_served(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> anyhow::Result<reqwest::Response> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let response = http.post(url).json(body).send().await?;
        if response.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE
            || Instant::now() > deadline
        {
            return Ok(response);
        }
        let wait = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .map_or(Duration::from_secs(1), Duration::from_secs);
        tokio::time::sleep(wait).await;
    }
}

async fn register(
    base: &str,
    prefix: &str,
    count: usize,
    password: &str,
    concurrency: usize,
    out: &str,
) -> anyhow::Result<()> {
    let http = client()?;
    let started = Instant::now();
    let tokens: Vec<anyhow::Result<String>> = stream::iter(0..count)
        .map(|i| {
            let http = http.clone();
            let body = json!({"login": format!("{prefix}{i}"), "password": password});
            async move {
                let mut response =
                    post_until_served(&http, &format!("{base}/api/user/register"), &body).await?;
                if response.status() == reqwest::StatusCode::CONFLICT {
                    response =
                        post_until_served(&http, &format!("{base}/api/user/login"), &body).await?;
                }
                if !response.status().is_success() {
                    bail!("user {i}: {}", response.status());
                }
                let token = response
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .context("no token in the answer")?;
                Ok(token.to_owned())
            }
        })
        .buffered(concurrency.max(1))
        .collect()
        .await;
    let tokens: Vec<String> = tokens.into_iter().collect::<anyhow::Result<_>>()?;
    std::fs::write(out, tokens.join("\n") + "\n").with_context(|| format!("writing {out}"))?;
    eprintln!(
        "loadgen: {count} users {prefix}* signed in in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn ensure_rule(http: &reqwest::Client, accrual: &str) -> anyhow::Result<()> {
    let rule = http
        .post(format!("{accrual}/api/goods"))
        .json(&json!({"match": "Bench", "reward": 5, "reward_type": "%"}))
        .send()
        .await?;
    if rule.status() != 200 && rule.status() != 409 {
        bail!("registering the reward rule: {}", rule.status());
    }
    Ok(())
}

async fn prereg(
    accrual: &str,
    numbers: Vec<String>,
    concurrency: usize,
) -> anyhow::Result<std::time::Duration> {
    let http = client()?;
    ensure_rule(&http, accrual).await?;
    let started = Instant::now();
    let total = numbers.len();
    let failures: usize = stream::iter(numbers)
        .map(|number| {
            let http = http.clone();
            async move {
                let body = json!({"order": number, "goods": [{"description": "Bench item", "price": 100}]});
                match http
                    .post(format!("{accrual}/api/orders"))
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 202 || r.status() == 409 => 0,
                    _ => 1,
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .fold(0, |acc, failed| async move { acc + failed })
        .await;
    if failures > 0 {
        bail!("{failures} of {total} purchases could not be registered");
    }
    Ok(started.elapsed())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Balance,
    ListOrders,
    Upload,
    Withdrawals,
    Withdraw,
}

impl Op {
    const ALL: [Op; 5] = [
        Op::Balance,
        Op::ListOrders,
        Op::Upload,
        Op::Withdrawals,
        Op::Withdraw,
    ];

    /// Share of the mix, in percent.
    fn weight(self) -> u64 {
        match self {
            Op::Balance => 40,
            Op::ListOrders => 25,
            Op::Upload => 15,
            Op::Withdrawals => 10,
            Op::Withdraw => 10,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Op::Balance => "GET /api/user/balance",
            Op::ListOrders => "GET /api/user/orders",
            Op::Upload => "POST /api/user/orders",
            Op::Withdrawals => "GET /api/user/withdrawals",
            Op::Withdraw => "POST /api/user/balance/withdraw",
        }
    }

    fn pick(roll: u64) -> Op {
        let mut left = roll % 100;
        for op in Op::ALL {
            if left < op.weight() {
                return op;
            }
            left -= op.weight();
        }
        Op::Balance
    }
}

/// xorshift64*: a small generator each client owns (no shared state, `Send`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

struct Mixed {
    base: String,
    tokens: Vec<String>,
    prefix: String,
    registered: u64,
    next_upload: AtomicU64,
    next_withdrawal: AtomicU64,
    recording: AtomicBool,
    stop: AtomicBool,
    stats: Mutex<BTreeMap<Op, OpStats>>,
}

async fn mixed_client(shared: Arc<Mixed>, http: reqwest::Client, seed: u64) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    while !shared.stop.load(Ordering::Relaxed) {
        let op = Op::pick(rng.next());
        let len = u64::try_from(shared.tokens.len()).unwrap_or(1).max(1);
        let index = usize::try_from(rng.next() % len).unwrap_or(0);
        let token = &shared.tokens[index];
        let base = &shared.base;
        let request = match op {
            Op::Balance => http.get(format!("{base}/api/user/balance")),
            Op::ListOrders => http.get(format!("{base}/api/user/orders")),
            Op::Withdrawals => http.get(format!("{base}/api/user/withdrawals")),
            Op::Upload => {
                let k = shared.next_upload.fetch_add(1, Ordering::Relaxed);
                http.post(format!("{base}/api/user/orders"))
                    .header("content-type", "text/plain")
                    .body(order_number(&shared.prefix, 0, k))
            }
            Op::Withdraw => {
                let k = shared.next_withdrawal.fetch_add(1, Ordering::Relaxed);
                http.post(format!("{base}/api/user/balance/withdraw"))
                    .json(&json!({"order": order_number(&shared.prefix, 9, k), "sum": 1}))
            }
        }
        .bearer_auth(token);
        let recording = shared.recording.load(Ordering::Relaxed);
        let started = Instant::now();
        let outcome = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                // Read the whole body: the request is done only then.
                let body = response.bytes().await;
                Some((status, body.is_ok()))
            }
            Err(_) => None,
        };
        let elapsed = started.elapsed();
        if recording && !shared.stop.load(Ordering::Relaxed) {
            let (status, ok) = match outcome {
                Some((status, read)) => {
                    let expected = match op {
                        Op::Balance | Op::Withdraw => status == 200,
                        Op::ListOrders | Op::Withdrawals => status == 200 || status == 204,
                        Op::Upload => status == 202,
                    };
                    (Some(status), read && expected)
                }
                None => (None, false),
            };
            if let Ok(mut stats) = shared.stats.lock() {
                if let Some(entry) = stats.get_mut(&op) {
                    entry.record(elapsed, status, ok);
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn mixed(
    base: String,
    accrual: &str,
    tokens: &str,
    clients: usize,
    duration: f64,
    warmup: f64,
    prefix: String,
    numbers: u64,
) -> anyhow::Result<Value> {
    let tokens = read_tokens(tokens)?;
    if tokens.is_empty() {
        bail!("no tokens");
    }
    let wanted: Vec<String> = (0..numbers).map(|k| order_number(&prefix, 0, k)).collect();
    prereg(accrual, wanted, 32).await?;
    let mut stats = BTreeMap::new();
    for op in Op::ALL {
        stats.insert(op, OpStats::new()?);
    }
    let shared = Arc::new(Mixed {
        base,
        tokens,
        prefix,
        registered: numbers,
        next_upload: AtomicU64::new(0),
        next_withdrawal: AtomicU64::new(0),
        recording: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        stats: Mutex::new(stats),
    });
    let http = client()?;
    let mut tasks = Vec::new();
    for i in 0..clients {
        tasks.push(tokio::spawn(mixed_client(
            shared.clone(),
            http.clone(),
            u64::try_from(i).unwrap_or(0) + 1,
        )));
    }
    tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
    shared.recording.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(duration)).await;
    shared.stop.store(true, Ordering::Relaxed);
    let measured = started.elapsed().as_secs_f64();
    for task in tasks {
        task.await?;
    }
    let stats = shared
        .stats
        .lock()
        .map_err(|_| anyhow::anyhow!("statistics lock poisoned"))?;
    let mut ops = serde_json::Map::new();
    let mut total = OpStats::new()?;
    for (op, s) in stats.iter() {
        ops.insert(op.name().to_owned(), s.summary(measured));
        total.add(s)?;
    }
    let uploads = shared.next_upload.load(Ordering::Relaxed);
    Ok(json!({
        "clients": clients,
        "seconds": measured,
        "mix_percent": Op::ALL.iter().map(|op| (op.name(), op.weight())).collect::<BTreeMap<_, _>>(),
        "total": total.summary(measured),
        "ops": ops,
        "uploads_not_registered_in_accrual": uploads.saturating_sub(shared.registered),
    }))
}

async fn stream_uploads(
    base: &str,
    accrual: &str,
    token: &str,
    rate: f64,
    count: u64,
    prefix: &str,
    no_prereg: bool,
) -> anyhow::Result<Value> {
    let numbers: Vec<String> = (0..count).map(|k| order_number(prefix, 0, k)).collect();
    if !no_prereg {
        prereg(accrual, numbers.clone(), 32).await?;
    }
    let http = client()?;
    let stats = Arc::new(Mutex::new(OpStats::new()?));
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for (i, number) in numbers.into_iter().enumerate() {
        let due = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        let http = http.clone();
        let stats = stats.clone();
        let url = format!("{base}/api/user/orders");
        let token = token.to_owned();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let result = http
                .post(url)
                .bearer_auth(token)
                .header("content-type", "text/plain")
                .body(number)
                .send()
                .await;
            let status = result.as_ref().ok().map(|r| r.status().as_u16());
            if let Ok(mut s) = stats.lock() {
                s.record(t.elapsed(), status, status == Some(202));
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let summary = stats
        .lock()
        .map_err(|_| anyhow::anyhow!("statistics lock poisoned"))?
        .summary(seconds);
    Ok(json!({"uploads": summary, "seconds": seconds, "rate": rate}))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Register {
            base,
            prefix,
            count,
            password,
            concurrency,
            out,
        } => register(&base, &prefix, count, &password, concurrency, &out).await,
        Command::Prereg {
            accrual,
            prefix,
            streams,
            count,
            concurrency,
        } => {
            let ids: Vec<u32> = if streams == 0 {
                vec![0]
            } else {
                (1..=streams).collect()
            };
            let numbers: Vec<String> = ids
                .iter()
                .flat_map(|&s| {
                    let prefix = prefix.clone();
                    (0..count).map(move |k| order_number(&prefix, s, k))
                })
                .collect();
            let total = numbers.len();
            let took = prereg(&accrual, numbers, concurrency).await?;
            eprintln!(
                "loadgen: {total} purchases registered in {:.1} s",
                took.as_secs_f64()
            );
            Ok(())
        }
        Command::Mixed {
            base,
            accrual,
            tokens,
            clients,
            duration,
            warmup,
            prefix,
            numbers,
        } => {
            let result = mixed(
                base, &accrual, &tokens, clients, duration, warmup, prefix, numbers,
            )
            .await?;
            println!("{result}");
            Ok(())
        }
        Command::Stream {
            base,
            accrual,
            token,
            rate,
            count,
            prefix,
            no_prereg,
        } => {
            let result =
                stream_uploads(&base, &accrual, &token, rate, count, &prefix, no_prereg).await?;
            println!("{result}");
            Ok(())
        }
        Command::Probe {
            base,
            tokens,
            clients,
            duration,
            slow_ms,
        } => {
            let tokens = read_tokens(&tokens)?;
            let result = probe::probe(&base, tokens, clients, duration, slow_ms).await?;
            println!("{result}");
            Ok(())
        }
        Command::Flood {
            base,
            quiet_tokens,
            flood_token,
            flood_connections,
            seconds,
            rounds,
            warmup,
        } => {
            let result = flood::flood(flood::Settings {
                base,
                quiet_tokens: read_tokens(&quiet_tokens)?,
                flood_token,
                flood_connections,
                seconds,
                rounds,
                warmup,
            })
            .await?;
            println!("{result}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_digits_match_the_specs_examples() {
        assert_eq!(with_check_digit("1234567890"), "12345678903");
        assert_eq!(with_check_digit("927892347"), "9278923470");
    }

    #[test]
    fn numbers_have_a_fixed_layout() {
        let n = order_number("41", 2, 7);
        assert_eq!(n.len(), 2 + 1 + 8 + 1);
        assert!(n.starts_with("41200000007"));
    }

    #[test]
    fn the_mix_adds_up_to_a_hundred() {
        assert_eq!(Op::ALL.iter().map(|op| op.weight()).sum::<u64>(), 100);
        assert_eq!(Op::pick(0), Op::Balance);
        assert_eq!(Op::pick(99), Op::Withdraw);
    }
}
