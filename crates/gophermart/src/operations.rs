//! What the operational endpoints report about this service: readiness (the database answers
//! and every migration is applied) and the metrics read at scrape time: the database pool, the
//! accrual queue by state, and what the accrual worker has done.

use std::{sync::Arc, time::Duration};

use adapters_http::{DatabaseModes, ServiceStatus};
use adapters_postgres::{pending_migrations, PgStore, StatementMode};
use application::{
    ports::clock::Clock,
    use_cases::EventStreams,
    worker::{AnswerKind, RateGate, WorkerStats},
};
use async_trait::async_trait;
use prometheus::{
    core::{Collector, Desc, Describer},
    proto::MetricFamily,
    Counter, CounterVec, Gauge, IntCounter, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Longest wait for the database when answering `/readyz` or `/metrics`: well under the
/// timeouts of probes and scrapes.
const DATABASE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How the accrual worker learns of orders queued by other instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wakeups {
    /// A `LISTEN` session wakes it.
    Listen,
    /// It polls.
    Poll,
}

/// How this instance reaches PostgreSQL.
#[derive(Debug, Clone, Copy)]
pub struct Modes {
    pub statements: StatementMode,
    pub wakeups: Wakeups,
}

impl Modes {
    fn wakeups(self) -> &'static str {
        match self.wakeups {
            Wakeups::Listen => "listen",
            Wakeups::Poll => "poll",
        }
    }
}

/// Readiness and scrape-time metrics from PostgreSQL and the accrual worker.
pub struct PgServiceStatus {
    modes: Modes,
    store: PgStore,
    clock: Arc<dyn Clock>,
    pool_max_size: IntGauge,
    pool_size: IntGauge,
    pool_available: IntGauge,
    pool_waiting: IntGauge,
    server: IntGaugeVec,
    reachable: IntGauge,
    queue: IntGaugeVec,
    queue_leased: IntGauge,
    queue_read_errors: IntCounter,
    gate: Arc<RateGate>,
    paused: IntGauge,
    paced: IntGauge,
    oldest_due: Gauge,
    events: Arc<EventStreams>,
    event_streams: IntGauge,
}

impl std::fmt::Debug for PgServiceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgServiceStatus")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

fn registered<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> prometheus::Result<M> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

impl PgServiceStatus {
    /// Registers the metrics of the database pool, the accrual queue and the worker in
    /// `registry`.
    ///
    /// # Errors
    /// When a metric is already registered.
    pub fn new(
        store: PgStore,
        clock: Arc<dyn Clock>,
        stats: Arc<WorkerStats>,
        gate: Arc<RateGate>,
        events: Arc<EventStreams>,
        registry: &Registry,
        modes: Modes,
    ) -> prometheus::Result<Self> {
        let gauge = |name: &str, help: &str| registered(registry, IntGauge::new(name, help)?);
        let status = Self {
            modes,
            pool_max_size: gauge("db_pool_max_size", "Most database connections the pool opens.")?,
            pool_size: gauge("db_pool_size", "Database connections open now.")?,
            pool_available: gauge(
                "db_pool_available",
                "Open database connections not in use now.",
            )?,
            pool_waiting: gauge(
                "db_pool_waiting",
                "Requests waiting for a database connection now.",
            )?,
            server: registered(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "db_server",
                        "The database server the last connection opened reached (server=address:port; with several hosts and target_session_attrs=read-write, the primary); always 1.",
                    ),
                    &["server"],
                )?,
            )?,
            reachable: gauge(
                "db_reachable",
                "1 while the database answers, 0 from the first failure of an outage until it answers again.",
            )?,
            queue: registered(
                registry,
                IntGaugeVec::new(
                    Opts::new(
                        "accrual_queue_entries",
                        "Orders waiting for an answer of the accrual system, by the state of their queue entry (all instances).",
                    ),
                    &["state"],
                )?,
            )?,
            queue_leased: gauge(
                "accrual_queue_leased",
                "Queue entries claimed by a worker right now (all instances).",
            )?,
            queue_read_errors: registered(
                registry,
                IntCounter::new(
                    "accrual_queue_read_errors_total",
                    "Scrapes that could not read the queue depth from the database.",
                )?,
            )?,
            paused: gauge(
                "accrual_paused",
                "1 while requests to the accrual system are paused after a 429 (seen by any instance), 0 otherwise.",
            )?,
            paced: gauge(
                "accrual_paced",
                "1 while requests to the accrual system take turns under its advertised limit (shared by every instance), 0 otherwise.",
            )?,
            oldest_due: registered(
                registry,
                Gauge::new(
                    "accrual_oldest_due_seconds",
                    "How long the longest-waiting claimable queue entry has been due (all instances); 0 when none is.",
                )?,
            )?,
            event_streams: gauge(
                "event_streams_open",
                "Event streams (GET /api/user/events) open on this instance now; a client that went away counts until a write to it fails (within two heartbeats).",
            )?,
            events,
            store,
            clock,
            gate: gate.clone(),
        };
        registry.register(Box::new(WorkerCollector::new(stats, gate)?))?;
        let build = IntGauge::with_opts(
            Opts::new("build_info", "The running build; always 1.")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )?;
        build.set(1);
        registry.register(Box::new(build))?;
        let statement_mode = IntGauge::with_opts(
            Opts::new(
                "db_statement_mode",
                "How statements reach PostgreSQL: mode=prepared (named, kept per connection) or mode=unnamed (for a transaction pooler); always 1.",
            )
            .const_label("mode", modes.statements.as_str()),
        )?;
        statement_mode.set(1);
        registry.register(Box::new(statement_mode))?;
        let wakeup_mode = IntGauge::with_opts(
            Opts::new(
                "accrual_wakeup_mode",
                "How the worker learns of orders queued by other instances: mode=listen (LISTEN/NOTIFY) or mode=poll; always 1.",
            )
            .const_label("mode", modes.wakeups()),
        )?;
        wakeup_mode.set(1);
        registry.register(Box::new(wakeup_mode))?;
        Ok(status)
    }

    fn refresh_pool(&self) {
        let pool = self.store.status();
        let set = |gauge: &IntGauge, value: usize| {
            gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        set(&self.pool_max_size, pool.max_size);
        set(&self.pool_size, pool.size);
        set(&self.pool_available, pool.available);
        set(&self.pool_waiting, pool.waiting);
        self.reachable
            .set(i64::from(self.store.database_reachable()));
        if let Some(server) = self.store.primary() {
            if self.server.with_label_values(&[server.as_str()]).get() != 1 {
                self.server.reset();
                self.server.with_label_values(&[server.as_str()]).set(1);
            }
        }
    }

    async fn refresh_queue(&self) {
        let depth = tokio::time::timeout(
            DATABASE_CHECK_TIMEOUT,
            self.store.queue_depth(self.clock.now()),
        )
        .await;
        match depth {
            Ok(Ok(depth)) => {
                for (state, count) in [
                    ("queued", depth.queued),
                    ("not_registered", depth.not_registered),
                    ("processing", depth.processing),
                    ("rate_limited", depth.rate_limited),
                    ("failing", depth.failing),
                ] {
                    self.queue.with_label_values(&[state]).set(count);
                }
                self.queue_leased.set(depth.in_flight);
                self.oldest_due.set(depth.oldest_due.as_secs_f64());
            }
            Ok(Err(error)) => self.queue_unknown(&error.to_string()),
            Err(_) => self.queue_unknown("no answer in time"),
        }
    }

    /// Drops the queue's series rather than show stale numbers.
    fn queue_unknown(&self, reason: &str) {
        tracing::warn!(
            reason,
            "could not read the accrual queue depth for the metrics"
        );
        self.queue.reset();
        self.queue_read_errors.inc();
    }
}

#[async_trait]
impl ServiceStatus for PgServiceStatus {
    async fn readiness(&self) -> Result<(), String> {
        match tokio::time::timeout(DATABASE_CHECK_TIMEOUT, pending_migrations(&self.store)).await {
            Ok(Ok(0)) => Ok(()),
            Ok(Ok(pending)) => Err(format!("{pending} database migrations pending")),
            Ok(Err(error)) => Err(format!("database: {}", chain(&error))),
            Err(_) => Err(format!(
                "database: no answer within {} s",
                DATABASE_CHECK_TIMEOUT.as_secs()
            )),
        }
    }

    fn database_modes(&self) -> Option<DatabaseModes> {
        Some(DatabaseModes {
            statements: self.modes.statements.as_str(),
            wakeups: self.modes.wakeups(),
            server: self.store.primary(),
        })
    }

    async fn refresh_metrics(&self) {
        self.refresh_pool();
        self.gate.sync().await;
        self.paused.set(i64::from(self.gate.is_paused()));
        self.paced.set(i64::from(self.gate.is_paced()));
        self.event_streams
            .set(i64::try_from(self.events.open()).unwrap_or(i64::MAX));
        self.refresh_queue().await;
    }
}

/// An error with its causes, `outer: inner: innermost`.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The accrual worker's counters, read when the registry is gathered. The worker keeps the
/// totals; each gather reports them through fresh metrics with the registered descriptions.
struct WorkerCollector {
    stats: Arc<WorkerStats>,
    gate: Arc<RateGate>,
    answers: Opts,
    orders_credited: Opts,
    points_credited: Opts,
    paused_seconds: Opts,
    cluster_rate_limited: Opts,
    descs: Vec<Desc>,
}

impl WorkerCollector {
    fn new(stats: Arc<WorkerStats>, gate: Arc<RateGate>) -> prometheus::Result<Self> {
        let answers = Opts::new(
            "accrual_answers_total",
            "Answers from the accrual system, by kind: processed, invalid, processing, not_registered, rate_limited (429), failed (5xx, timeouts, unreadable answers).",
        );
        let orders_credited = Opts::new(
            "accrual_orders_credited_total",
            "Orders this process credited with their final accrual.",
        );
        let points_credited = Opts::new(
            "accrual_points_credited_total",
            "Points this process credited to customers.",
        );
        let paused_seconds = Opts::new(
            "accrual_paused_seconds_total",
            "Time requests to the accrual system were paused by its 429 answers: the whole cluster's with a shared gate.",
        );
        let cluster_rate_limited = Opts::new(
            "accrual_cluster_rate_limited_total",
            "429 answers of the accrual system recorded by every instance sharing the gate.",
        );
        let descs = [
            answers.clone().variable_label("kind"),
            orders_credited.clone(),
            points_credited.clone(),
            paused_seconds.clone(),
            cluster_rate_limited.clone(),
        ]
        .iter()
        .map(Describer::describe)
        .collect::<prometheus::Result<Vec<Desc>>>()?;
        Ok(Self {
            stats,
            gate,
            answers,
            orders_credited,
            points_credited,
            paused_seconds,
            cluster_rate_limited,
            descs,
        })
    }

    fn totals(&self) -> prometheus::Result<Vec<MetricFamily>> {
        let answers = CounterVec::new(self.answers.clone(), &["kind"])?;
        for kind in AnswerKind::ALL {
            // Counts below 2^53 are exact in an f64.
            let count = self.stats.answers(kind) as f64;
            answers.with_label_values(&[kind.as_str()]).inc_by(count);
        }
        let counter = |opts: &Opts, value: f64| -> prometheus::Result<Vec<MetricFamily>> {
            let counter = Counter::with_opts(opts.clone())?;
            counter.inc_by(value.max(0.0));
            Ok(counter.collect())
        };
        let orders = self.stats.orders_credited() as f64;
        let points = self
            .stats
            .points_credited()
            .amount()
            .to_string()
            .parse::<f64>()
            .unwrap_or(0.0);
        let mut families = answers.collect();
        families.extend(counter(&self.orders_credited, orders)?);
        families.extend(counter(&self.points_credited, points)?);
        families.extend(counter(
            &self.paused_seconds,
            self.gate.paused_total().as_secs_f64(),
        )?);
        // Counts below 2^53 are exact in an f64.
        let cluster_429s = self.gate.cluster_rate_limited().unwrap_or(0) as f64;
        families.extend(counter(&self.cluster_rate_limited, cluster_429s)?);
        Ok(families)
    }
}

impl Collector for WorkerCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.totals().unwrap_or_else(|error| {
            tracing::warn!(%error, "could not report the accrual worker's counters");
            Vec::new()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_counters_show_the_totals_at_gather_time() {
        let stats = Arc::new(WorkerStats::default());
        let gate = Arc::new(RateGate::new());
        let registry = Registry::new_custom(Some("gophermart".into()), None).expect("registry");
        registry
            .register(Box::new(
                WorkerCollector::new(stats.clone(), gate).expect("collector"),
            ))
            .expect("registered");
        stats.record(AnswerKind::Processed);
        stats.record(AnswerKind::Processed);
        stats.record(AnswerKind::RateLimited);
        stats.record_credit(Some(domain_money("12.5")));

        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("text");

        assert!(
            text.contains(r#"gophermart_accrual_answers_total{kind="processed"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"gophermart_accrual_answers_total{kind="rate_limited"} 1"#));
        assert!(text.contains(r#"gophermart_accrual_answers_total{kind="failed"} 0"#));
        assert!(text.contains("gophermart_accrual_orders_credited_total 1"));
        assert!(text.contains("gophermart_accrual_points_credited_total 12.5"));
        assert!(text.contains("gophermart_accrual_paused_seconds_total 0"));
    }

    fn domain_money(text: &str) -> domain::Money {
        domain::Money::new(text.parse().expect("decimal")).expect("money")
    }
}
