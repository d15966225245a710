//! Chaos: three Gophermart instances on one database, an accrual system that fails, lags and
//! rate-limits, many clients registering, uploading and withdrawing, and instances killed with
//! SIGKILL and restarted at random moments. Once the faults stop and the queue drains, the
//! ledger must be exact: every acknowledged order and withdrawal exists, nothing else does,
//! every account holds exactly what its processed orders earned, no balance is negative; and
//! the customers' event log holds every upload, final status, credit and withdrawal once, in
//! an order that steps each balance from zero to what it is.
//!
//! `CHAOS_SECONDS` sets the length of the faulty phase (default 15; `make chaos` runs longer)
//! and `CHAOS_RATE_LIMIT` the accrual system's limit per minute during it (default 0, none).

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use adapters_postgres::testing::{LedgerAudit, TestDatabase};
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;

use support::{balance, free_port, register, register_purchase, start_accrual, Instance};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the clients were told.
#[derive(Debug, Default)]
struct Ledger {
    /// Order number → (user index, points it earns), for uploads answered 202 or 200.
    acknowledged_orders: BTreeMap<String, (usize, Decimal)>,
    /// Uploads whose answer never came (the instance died): they may or may not exist.
    uncertain_orders: BTreeMap<String, (usize, Decimal)>,
    /// Withdrawals answered 200.
    acknowledged_withdrawals: BTreeSet<String>,
    /// Withdrawals whose answer never came.
    uncertain_withdrawals: BTreeSet<String>,
}

struct Cluster {
    db_url: String,
    accrual: String,
    bases: Mutex<Vec<String>>,
}

impl Cluster {
    fn base(&self, i: usize) -> String {
        let bases = self.bases.lock().expect("lock");
        bases[i % bases.len()].clone()
    }
}

const INSTANCE_ARGS: &[&str] = &[
    "--accrual-concurrency",
    "4",
    "--database-timeout-ms",
    "2000",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_ledger_stays_exact_through_kills_and_accrual_faults() {
    let chaos = Duration::from_secs(env_or("CHAOS_SECONDS", 15));
    let rate_limit = u32::try_from(env_or("CHAOS_RATE_LIMIT", 0)).unwrap_or(0);
    let seed = env_or("CHAOS_SEED", 20_261_122);
    let db = TestDatabase::create().await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let accrual_address: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let accrual_url = format!("http://{accrual_address}");
    let faulty = start_accrual(accrual_address, |c| {
        c.fail_rate = 0.2;
        c.latency_ms = 20;
        c.rate_limit = rate_limit;
    })
    .await;

    let mut instances: Vec<Instance> = (0..3)
        .map(|_| Instance::start(&db, &accrual_url, INSTANCE_ARGS))
        .collect();
    for instance in &instances {
        instance.wait_ready(&client).await;
    }
    let cluster = Arc::new(Cluster {
        db_url: db.url().to_owned(),
        accrual: accrual_url.clone(),
        bases: Mutex::new(instances.iter().map(|i| i.base.clone()).collect()),
    });
    let mut tokens = Vec::new();
    for u in 0..8 {
        tokens.push(register(&client, &cluster.base(u), &format!("chaos{u}")).await);
    }
    let tokens = Arc::new(tokens);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let requests = Arc::new(AtomicU64::new(0));
    let next_number = Arc::new(AtomicU64::new(10_000_000));
    let deadline = Instant::now() + chaos;

    // Clients.
    let mut clients = Vec::new();
    for c in 0..8u64 {
        let (client, cluster, tokens, ledger, requests, next_number) = (
            client.clone(),
            cluster.clone(),
            tokens.clone(),
            ledger.clone(),
            requests.clone(),
            next_number.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed + c);
            while Instant::now() < deadline {
                let user = rng.random_range(0..tokens.len());
                let base = cluster.base(rng.random_range(0..3));
                let number = domain::with_check_digit(
                    &next_number.fetch_add(1, Ordering::Relaxed).to_string(),
                );
                requests.fetch_add(1, Ordering::Relaxed);
                if rng.random_bool(0.65) {
                    let points = Decimal::new(rng.random_range(0..5_000), 2);
                    register_purchase(&client, &cluster.accrual, &number, points).await;
                    let sent = client
                        .post(format!("{base}/api/user/orders"))
                        .bearer_auth(&tokens[user])
                        .header("content-type", "text/plain")
                        .body(number.clone())
                        .send()
                        .await;
                    let mut ledger = ledger.lock().expect("lock");
                    match sent.map(|r| r.status().as_u16()) {
                        Ok(202 | 200) => {
                            ledger.acknowledged_orders.insert(number, (user, points));
                        }
                        Ok(503 | 500) | Err(_) => {
                            ledger.uncertain_orders.insert(number, (user, points));
                        }
                        // Refused by a limit (requests or pending orders per customer): it
                        // must not exist, as any order never acknowledged.
                        Ok(429) => {}
                        Ok(other) => panic!("upload answered {other}"),
                    }
                } else {
                    let sum = Decimal::new(rng.random_range(1..1_500), 2);
                    let sent = client
                        .post(format!("{base}/api/user/balance/withdraw"))
                        .bearer_auth(&tokens[user])
                        .header("content-type", "application/json")
                        .body(format!(r#"{{"order":"{number}","sum":{sum}}}"#))
                        .send()
                        .await;
                    let mut ledger = ledger.lock().expect("lock");
                    match sent.map(|r| r.status().as_u16()) {
                        Ok(200) => {
                            ledger.acknowledged_withdrawals.insert(number);
                        }
                        Ok(402 | 429) => {}
                        Ok(503 | 500) | Err(_) => {
                            ledger.uncertain_withdrawals.insert(number);
                        }
                        Ok(other) => panic!("withdraw answered {other}"),
                    }
                }
            }
        }));
    }

    // The killer: SIGKILL a random instance now and then, and start a new one in its place.
    let mut kills = 0;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while Instant::now() + Duration::from_secs(2) < deadline {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..3_000))).await;
        let victim = rng.random_range(0..instances.len());
        instances[victim].kill();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..500))).await;
        let replacement = Instance::start(&db, &accrual_url, INSTANCE_ARGS);
        replacement.wait_ready(&client).await;
        cluster.bases.lock().expect("lock")[victim] = replacement.base.clone();
        instances[victim] = replacement;
    }
    for client in clients {
        client.await.expect("client task");
    }
    let faulty_stats = faulty.stats();
    faulty.stop().await.expect("faulty accrual stops");

    // Faults stop: a healthy accrual system that knows every purchase, then the queue drains.
    let healthy = start_accrual(accrual_address, |_| {}).await;
    let purchases: Vec<(String, Decimal)> = {
        let ledger = ledger.lock().expect("lock");
        ledger
            .acknowledged_orders
            .iter()
            .chain(ledger.uncertain_orders.iter())
            .map(|(n, (_, p))| (n.clone(), *p))
            .collect()
    };
    for (number, points) in &purchases {
        register_purchase(&client, &accrual_url, number, *points).await;
    }
    // A graceful restart of every instance: it must stop cleanly in the middle of the backlog,
    // and the new processes start without the pace the faulty system's 429s imposed.
    for (i, instance) in instances.iter_mut().enumerate() {
        instance.terminate();
        let replacement = Instance::start(&db, &accrual_url, INSTANCE_ARGS);
        replacement.wait_ready(&client).await;
        cluster.bases.lock().expect("lock")[i] = replacement.base.clone();
        *instance = replacement;
    }
    let drain_deadline = Instant::now() + Duration::from_secs(150) + chaos * 2;
    let audit = loop {
        let audit = LedgerAudit::read(&cluster.db_url).await;
        if audit.unfinished_orders == 0 && audit.queue_entries == 0 {
            break audit;
        }
        assert!(
            Instant::now() < drain_deadline,
            "the queue did not drain: {audit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Invariants. Every client has finished, so the ledger is complete.
    let ledger = std::mem::take(&mut *ledger.lock().expect("lock"));
    let (stored_orders, stored_withdrawals) = LedgerAudit::numbers(&cluster.db_url).await;
    let stored_orders: BTreeSet<String> = stored_orders.into_iter().collect();
    let stored_withdrawals: BTreeSet<String> = stored_withdrawals.into_iter().collect();
    let mut violations = Vec::new();
    for number in ledger.acknowledged_orders.keys() {
        if !stored_orders.contains(number) {
            violations.push(format!("acknowledged order {number} is missing"));
        }
    }
    for number in &stored_orders {
        if !ledger.acknowledged_orders.contains_key(number)
            && !ledger.uncertain_orders.contains_key(number)
        {
            violations.push(format!("order {number} was never uploaded"));
        }
    }
    for number in &ledger.acknowledged_withdrawals {
        if !stored_withdrawals.contains(number) {
            violations.push(format!("acknowledged withdrawal {number} is missing"));
        }
    }
    for number in &stored_withdrawals {
        if !ledger.acknowledged_withdrawals.contains(number)
            && !ledger.uncertain_withdrawals.contains(number)
        {
            violations.push(format!(
                "withdrawal {number} was refused or never made, yet exists"
            ));
        }
    }
    if !audit.is_clean() {
        violations.push(format!("ledger audit: {audit:?}"));
    }
    // Every credit and withdrawal is in the customers' event log once, in order.
    violations.extend(LedgerAudit::event_log_violations(&cluster.db_url).await);
    // Every user's balance, through the API, equals what their stored orders earned.
    let healthy_base = cluster.base(0);
    for (user, token) in tokens.iter().enumerate() {
        let earned: Decimal = ledger
            .acknowledged_orders
            .iter()
            .chain(ledger.uncertain_orders.iter())
            .filter(|(n, (u, _))| *u == user && stored_orders.contains(*n))
            .map(|(_, (_, p))| *p)
            .sum();
        let (current, withdrawn) = balance(&client, &healthy_base, token).await;
        if current + withdrawn != earned || current < Decimal::ZERO {
            violations.push(format!(
                "user {user}: current {current} + withdrawn {withdrawn} != earned {earned}"
            ));
        }
    }
    let healthy_stats = healthy.stats();
    if healthy_stats.asked_after_final > 0 {
        violations.push(format!("asked about finished orders: {healthy_stats:?}"));
    }
    eprintln!(
        "chaos: {} s faulty phase, kills survived {kills}, client requests {}, orders {} ({} uncertain), \
         withdrawals {} ({} uncertain), accrual answers during faults {faulty_stats:?}, after {healthy_stats:?}, \
         violations {}",
        chaos.as_secs(),
        requests.load(Ordering::Relaxed),
        audit.orders,
        ledger.uncertain_orders.len(),
        audit.withdrawals,
        ledger.uncertain_withdrawals.len(),
        violations.len()
    );
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(kills > 0 || chaos < Duration::from_secs(4));
    for instance in &mut instances {
        instance.terminate();
    }
}
