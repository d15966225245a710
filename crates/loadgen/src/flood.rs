//! `loadgen flood`: whether one customer's flood takes the capacity other customers need.
//!
//! Quiet customers, each on one connection of its own with its own token, read their balance
//! and their orders in turn, in a closed loop. One flooding customer (one token) sends the
//! same reads as fast as it can over many connections and ignores `Retry-After`, as an abuser
//! does. The quiet customers are measured in windows that take turns, alone, during the
//! flood, alone, during the flood..., so that the noise of a shared machine shows between
//! windows of the same kind. The flood starts a moment before its window (at full speed when
//! measuring begins) and stops after it.
//!
//! The quiet customers run on a runtime and a thread of their own: their requests do not wait
//! behind the flooder's in one task queue, so their latency is the service's.

use std::{
    collections::{btree_map::Entry, BTreeMap},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use tokio::{io::AsyncWriteExt, net::TcpStream};

use crate::{http1, stats::OpStats};

/// How long the flood runs before its window is measured.
const RAMP: Duration = Duration::from_secs(1);
/// A request unanswered for this long counts as not answered; its connection is opened again.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The value of the current window between windows: nothing is recorded.
const BETWEEN: usize = usize::MAX;

/// What a flood run is told.
#[derive(Debug)]
pub struct Settings {
    /// `http://host:port` of the service.
    pub base: String,
    /// One quiet customer per token.
    pub quiet_tokens: Vec<String>,
    pub flood_token: String,
    pub flood_connections: usize,
    /// Measured seconds per window.
    pub seconds: f64,
    /// Pairs of windows (alone, then during the flood).
    pub rounds: usize,
    /// Unmeasured seconds of quiet customers before the first window.
    pub warmup: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Alone,
    Flood,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Alone => "alone",
            Kind::Flood => "flood",
        }
    }
}

/// The windows of `rounds` rounds: alone, flood, alone, flood...
fn schedule(rounds: usize) -> Vec<Kind> {
    (0..rounds)
        .flat_map(|_| [Kind::Alone, Kind::Flood])
        .collect()
}

/// The reads every customer makes, in turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Read {
    Balance,
    Orders,
}

impl Read {
    const BOTH: [Read; 2] = [Read::Balance, Read::Orders];

    fn path(self) -> &'static str {
        match self {
            Read::Balance => "/api/user/balance",
            Read::Orders => "/api/user/orders",
        }
    }

    /// Whether `status` is what a customer asked for: anything else, a `429` too, is a failure.
    fn served(self, status: u16) -> bool {
        match self {
            Read::Balance => status == 200,
            Read::Orders => status == 200 || status == 204,
        }
    }
}

/// One client's requests, by window, and the connections it opened.
#[derive(Debug, Default)]
struct Tally {
    windows: BTreeMap<usize, OpStats>,
    connections: u64,
}

/// A client: one connection (opened again when the service closes it), the reads of `token`
/// in turn until `stop`, each recorded in the window it started and ended in.
async fn client(
    address: String,
    token: String,
    window: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Tally> {
    let requests = Read::BOTH.map(|read| (read, http1::get(&address, read.path(), &token)));
    let mut tally = Tally::default();
    let mut buffer = Vec::with_capacity(4096);
    let mut next = 0;
    'connection: while !stop.load(Ordering::Relaxed) {
        let mut stream = TcpStream::connect(&address)
            .await
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_nodelay(true)?;
        tally.connections += 1;
        while !stop.load(Ordering::Relaxed) {
            let (read, request) = &requests[next % requests.len()];
            next += 1;
            let current = window.load(Ordering::Relaxed);
            let sent = Instant::now();
            let answer =
                tokio::time::timeout(REQUEST_TIMEOUT, exchange(&mut stream, request, &mut buffer))
                    .await;
            let took = sent.elapsed();
            let status = match answer {
                Ok(Ok(Some(status))) => Some(status),
                // Closed by the service before it answered (a keep-alive ending): not a request.
                Ok(Ok(None)) => continue 'connection,
                Ok(Err(_)) | Err(_) => None,
            };
            if current != BETWEEN && window.load(Ordering::Relaxed) == current {
                let served = status.is_some_and(|s| read.served(s));
                let stats = match tally.windows.entry(current) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(e) => e.insert(OpStats::new()?),
                };
                stats.record(took, status, served);
            }
            if status.is_none() {
                continue 'connection;
            }
        }
    }
    Ok(tally)
}

/// Sends one request and reads its answer; `None` when the connection was closed.
async fn exchange(
    stream: &mut TcpStream,
    request: &str,
    buffer: &mut Vec<u8>,
) -> anyhow::Result<Option<u16>> {
    if stream.write_all(request.as_bytes()).await.is_err() {
        return Ok(None);
    }
    http1::read_response(stream, buffer).await
}

/// Runs the windows and returns the figures.
///
/// # Errors
/// When the base address is unusable, there are no quiet tokens, or a client cannot connect.
pub async fn flood(settings: Settings) -> anyhow::Result<Value> {
    let address = http1::address(&settings.base)?;
    if settings.quiet_tokens.is_empty() {
        bail!("no quiet customers' tokens");
    }
    let plan = schedule(settings.rounds);
    let window = Arc::new(AtomicUsize::new(BETWEEN));
    let quiet_stop = Arc::new(AtomicBool::new(false));
    let quiet = {
        let (address, tokens) = (address.clone(), settings.quiet_tokens.clone());
        let (window, stop) = (window.clone(), quiet_stop.clone());
        thread::Builder::new().name("quiet".to_owned()).spawn(
            move || -> anyhow::Result<Vec<Tally>> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let tasks: Vec<_> = tokens
                        .into_iter()
                        .map(|token| {
                            tokio::spawn(client(
                                address.clone(),
                                token,
                                window.clone(),
                                stop.clone(),
                            ))
                        })
                        .collect();
                    let mut tallies = Vec::new();
                    for task in tasks {
                        tallies.push(task.await??);
                    }
                    Ok(tallies)
                })
            },
        )?
    };
    tokio::time::sleep(Duration::from_secs_f64(settings.warmup)).await;
    let mut seconds = Vec::new();
    let mut flooders = Vec::new();
    for (index, kind) in plan.iter().enumerate() {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        if *kind == Kind::Flood {
            for _ in 0..settings.flood_connections {
                tasks.push(tokio::spawn(client(
                    address.clone(),
                    settings.flood_token.clone(),
                    window.clone(),
                    stop.clone(),
                )));
            }
            tokio::time::sleep(RAMP).await;
        }
        let started = Instant::now();
        window.store(index, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs_f64(settings.seconds)).await;
        window.store(BETWEEN, Ordering::Relaxed);
        seconds.push(started.elapsed().as_secs_f64());
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            flooders.push(task.await??);
        }
    }
    quiet_stop.store(true, Ordering::Relaxed);
    let quiet = tokio::task::spawn_blocking(move || quiet.join())
        .await?
        .map_err(|_| anyhow!("the quiet customers' thread panicked"))??;
    let mut figures = report(&plan, &seconds, &quiet, &flooders)?;
    figures["quiet_clients"] = json!(settings.quiet_tokens.len());
    figures["flood_connections"] = json!(settings.flood_connections);
    figures["window_seconds"] = json!(settings.seconds);
    figures["rounds"] = json!(settings.rounds);
    figures["warmup_seconds"] = json!(settings.warmup);
    figures["ramp_seconds"] = json!(RAMP.as_secs_f64());
    Ok(figures)
}

/// The requests of `tallies` in window `index`.
fn in_window(tallies: &[Tally], index: usize) -> anyhow::Result<OpStats> {
    let mut stats = OpStats::new()?;
    for tally in tallies {
        if let Some(s) = tally.windows.get(&index) {
            stats.add(s)?;
        }
    }
    Ok(stats)
}

/// `numerator / denominator`, or `None` without a denominator.
fn ratio(numerator: f64, denominator: f64) -> Option<f64> {
    (denominator > 0.0).then(|| numerator / denominator)
}

/// The flooder's figures over `seconds`: the summary and its rate by status.
fn flooder_summary(stats: &OpStats, seconds: f64) -> Value {
    let mut summary = stats.summary(seconds);
    summary["rps_by_status"] = json!(stats.rps_by_status(seconds));
    summary
}

/// The figures of every window, of each kind over its windows, and the comparison: the quiet
/// customers' throughput during the flood over alone, their p99 during the flood over alone.
fn report(
    plan: &[Kind],
    seconds: &[f64],
    quiet: &[Tally],
    flooders: &[Tally],
) -> anyhow::Result<Value> {
    let mut windows = Vec::new();
    let mut quiet_by_kind = [OpStats::new()?, OpStats::new()?];
    let mut seconds_by_kind = [0.0, 0.0];
    let mut flooder = OpStats::new()?;
    for (index, (kind, &s)) in plan.iter().zip(seconds).enumerate() {
        let q = in_window(quiet, index)?;
        let f = in_window(flooders, index)?;
        let k = usize::from(*kind == Kind::Flood);
        quiet_by_kind[k].add(&q)?;
        seconds_by_kind[k] += s;
        flooder.add(&f)?;
        windows.push(json!({
            "kind": kind.name(),
            "seconds": s,
            "quiet": q.summary(s),
            "flooder": (*kind == Kind::Flood).then(|| flooder_summary(&f, s)),
        }));
    }
    let [alone, during] = &quiet_by_kind;
    let [alone_s, flood_s] = seconds_by_kind;
    Ok(json!({
        "windows": windows,
        "alone": alone.summary(alone_s),
        "flood": during.summary(flood_s),
        "flooder": flooder_summary(&flooder, flood_s),
        "throughput_ratio": ratio(
            during.requests() as f64 / flood_s,
            alone.requests() as f64 / alone_s,
        ),
        "p50_ratio": ratio(during.quantile_ms(0.5), alone.quantile_ms(0.5)),
        "p99_ratio": ratio(during.quantile_ms(0.99), alone.quantile_ms(0.99)),
        "quiet_429": alone.with_status("429") + during.with_status("429"),
        "quiet_connections_opened": quiet.iter().map(|t| t.connections).sum::<u64>(),
        "flood_connections_opened": flooders.iter().map(|t| t.connections).sum::<u64>(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(window: usize, requests: u32, millis: u64, status: u16) -> Tally {
        let mut stats = OpStats::new().expect("bounds");
        for _ in 0..requests {
            stats.record(
                Duration::from_millis(millis),
                Some(status),
                Read::Balance.served(status),
            );
        }
        Tally {
            windows: BTreeMap::from([(window, stats)]),
            connections: 1,
        }
    }

    #[test]
    fn windows_take_turns_alone_then_flood() {
        assert_eq!(
            schedule(2),
            [Kind::Alone, Kind::Flood, Kind::Alone, Kind::Flood]
        );
    }

    #[test]
    fn a_refusal_is_a_failure_for_a_quiet_customer() {
        assert!(!Read::Balance.served(429));
        assert!(!Read::Orders.served(429));
        assert!(Read::Orders.served(204));
        assert!(!Read::Balance.served(204));
    }

    #[test]
    fn the_report_compares_the_flood_windows_with_the_alone_ones() {
        let plan = schedule(2);
        let seconds = [10.0, 10.0, 10.0, 10.0];
        let quiet = [
            tally(0, 1000, 1, 200),
            tally(1, 500, 2, 200),
            tally(2, 1000, 1, 200),
            tally(3, 500, 2, 200),
        ];
        let flooders = [tally(1, 300, 5, 200), tally(3, 100, 5, 429)];

        let figures = report(&plan, &seconds, &quiet, &flooders).expect("figures");

        assert_eq!(figures["alone"]["requests"], 2000);
        assert_eq!(figures["flood"]["requests"], 1000);
        assert_eq!(figures["throughput_ratio"], 0.5);
        let p99 = figures["p99_ratio"].as_f64().expect("a p99 ratio");
        assert!((p99 - 2.0).abs() < 0.01, "{p99}");
        assert_eq!(figures["flooder"]["rps_by_status"]["200"], 15.0);
        assert_eq!(figures["flooder"]["rps_by_status"]["429"], 5.0);
        assert_eq!(figures["windows"][0]["flooder"], Value::Null);
        assert_eq!(figures["windows"][3]["flooder"]["requests"], 100);
        assert_eq!(figures["quiet_429"], 0);
    }

    #[test]
    fn a_quiet_customer_refused_is_counted_apart() {
        let plan = schedule(1);
        let quiet = [tally(0, 10, 1, 200), tally(1, 3, 1, 429)];

        let figures = report(&plan, &[1.0, 1.0], &quiet, &[]).expect("figures");

        assert_eq!(figures["quiet_429"], 3);
        assert_eq!(figures["flood"]["errors"], 3);
    }

    #[test]
    fn no_ratio_without_anything_to_compare_with() {
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(1.0, 4.0), Some(0.25));
    }
}
