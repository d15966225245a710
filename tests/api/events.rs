//! `GET /api/user/events`: changes as Server-Sent Events, resumable with `Last-Event-ID`.

use std::time::Duration;

use api_tests::{order_number, spawn_accrual, spawn_app_with, spawn_instance, Options, TestApp};
use eventsource_stream::{Event, Eventsource};
use futures::{stream::BoxStream, StreamExt};
use serde_json::{json, Value};

use crate::support::{assert_problem, funded_100, header_text, sample, scrape};

/// An open stream of events.
struct Stream {
    events: BoxStream<'static, Result<Event, String>>,
}

impl Stream {
    /// The next event (comments are skipped by the parser), within 10 s.
    async fn next(&mut self) -> Event {
        tokio::time::timeout(Duration::from_secs(10), self.events.next())
            .await
            .expect("an event within 10 s")
            .expect("the stream goes on")
            .expect("a well-formed event")
    }

    /// Whether the stream ends (the server closed it) within 10 s.
    async fn ends(&mut self) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.events.next()).await,
            Ok(None | Some(Err(_)))
        )
    }
}

async fn open(base: &str, token: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .get(format!("{base}/api/user/events"))
        .bearer_auth(token);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    request.send().await.expect("request sent")
}

async fn stream(base: &str, token: &str, last_event_id: Option<&str>) -> Stream {
    let response = open(base, token, last_event_id).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header_text(&response, "content-type").as_deref(),
        Some("text/event-stream")
    );
    Stream {
        events: response
            .bytes_stream()
            .eventsource()
            .map(|event| event.map_err(|e| e.to_string()))
            .boxed(),
    }
}

/// The positions an event id names: what the stream delivered through, then the later
/// transactions it delivered ahead (each through the event given).
fn cursor(id: &str) -> Vec<(u64, i64)> {
    id.split('.')
        .map(|part| {
            let (tx, n) = part.split_once('-').expect("tx-id");
            (tx.parse().expect("tx"), n.parse().expect("id"))
        })
        .collect()
}

/// Whether the stream had delivered more at id `later` than at id `earlier`: everything the
/// earlier one covers, and something else.
fn beyond(later: &str, earlier: &str) -> bool {
    let (later, earlier) = (cursor(later), cursor(earlier));
    let covered = |&(tx, n): &(u64, i64)| {
        (tx, n) <= later[0] || later[1..].iter().any(|&(t, m)| t == tx && n <= m)
    };
    later != earlier && earlier.iter().all(covered)
}

fn data(event: &Event) -> Value {
    serde_json::from_str(&event.data).expect("JSON data")
}

/// Opens a stream with no `Last-Event-ID`: it starts with `ready`; returns it and its id.
async fn ready(base: &str, token: &str) -> (Stream, String) {
    let mut events = stream(base, token, None).await;
    let first = events.next().await;
    assert_eq!(first.event, "ready");
    assert!(!first.id.is_empty(), "ready carries an id");
    (events, first.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_its_processing_and_its_credit_arrive_as_the_lists_show_them() {
    let accrual = spawn_accrual(|_| {}).await;
    let client = reqwest::Client::new();
    let number = order_number(4242);
    for (path, body) in [
        (
            "/api/goods",
            json!({"match": "Gadget", "reward": 100, "reward_type": "pt"}),
        ),
        (
            "/api/orders",
            json!({"order": number, "goods": [{"description": "Gadget", "price": 5000}]}),
        ),
    ] {
        let sent = client
            .post(format!("{}{path}", accrual.base_url()))
            .json(&body)
            .send()
            .await
            .expect("sent");
        assert!(sent.status().is_success(), "{path}: {}", sent.status());
    }
    let app = spawn_app_with(Options {
        accrual_address: accrual.base_url(),
        ..Options::default()
    })
    .await;
    let token = app.signed_up("streamer").await;
    let (mut events, start) = ready(&app.address, &token).await;

    assert_eq!(app.upload(&token, &number).await.status(), 202);

    let uploaded = events.next().await;
    assert_eq!(uploaded.event, "order");
    assert_eq!(data(&uploaded)["number"], number);
    assert_eq!(data(&uploaded)["status"], "NEW");
    let mut ids = vec![start, uploaded.id.clone()];
    let (mut processed, mut credited) = (None, None);
    while processed.is_none() || credited.is_none() {
        let event = events.next().await;
        ids.push(event.id.clone());
        match event.event.as_str() {
            "order" if data(&event)["status"] == "PROCESSED" => processed = Some(data(&event)),
            "order" => assert_eq!(data(&event)["status"], "PROCESSING"),
            "balance" => credited = Some(data(&event)),
            other => panic!("unexpected event {other}"),
        }
    }
    // The same JSON the list and the balance answer.
    let listed: Vec<Value> = app
        .get("/api/user/orders", &token)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(processed, Some(listed[0].clone()));
    assert_eq!(credited, Some(app.balance(&token).await));
    assert_eq!(credited, Some(json!({"current": 100, "withdrawn": 0})));
    let mut distinct = ids.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), ids.len(), "each id once: {ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_is_an_event_and_a_refused_one_is_none() {
    let funded = funded_100("spender").await;
    let (app, token) = (&funded.app, &funded.token);
    let (mut events, _) = ready(&app.address, token).await;

    assert_eq!(
        app.withdraw(token, &order_number(111), "30").await.status(),
        200
    );
    assert_eq!(
        app.withdraw(token, &order_number(112), "1000")
            .await
            .status(),
        402
    );
    assert_eq!(
        app.withdraw(token, &order_number(113), "10").await.status(),
        200
    );

    // The funding order's events may come first: they are after the stream's start when the
    // log could not yet be read past them as it opened.
    let mut balances = Vec::new();
    while balances.len() < 2 {
        let event = events.next().await;
        if event.event == "balance" && data(&event)["withdrawn"] != 0 {
            balances.push(data(&event));
        }
    }
    assert_eq!(
        balances,
        vec![
            json!({"current": 70, "withdrawn": 30}),
            json!({"current": 60, "withdrawn": 40})
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_another_instance_and_after_a_restart_missing_nothing() {
    let app = spawn_app_with(Options::default()).await;
    let token = app.signed_up("roamer").await;
    let (events, start) = ready(&app.address, &token).await;
    drop(events);

    // Made while the client is away, on the first instance.
    let away = [order_number(501), order_number(502)];
    for number in &away {
        assert_eq!(app.upload(&token, number).await.status(), 202);
    }
    let mut other = spawn_instance(app.db.url(), Options::default()).await;
    let mut resumed = stream(&other.address, &token, Some(&start)).await;
    for number in &away {
        let event = resumed.next().await;
        assert_eq!(event.event, "order");
        assert_eq!(data(&event)["number"], *number);
    }
    // Live: an upload on the first instance reaches the stream on the other.
    let live = order_number(503);
    assert_eq!(app.upload(&token, &live).await.status(), 202);
    let event = resumed.next().await;
    assert_eq!(data(&event)["number"], live);
    let last = event.id.clone();

    // The instance stops: its stream ends, so that the client reconnects elsewhere.
    other.stop().await;
    assert!(
        resumed.ends().await,
        "the stream ends when its instance stops"
    );

    let after = order_number(504);
    assert_eq!(app.upload(&token, &after).await.status(), 202);
    let restarted = spawn_instance(app.db.url(), Options::default()).await;
    let mut again = stream(&restarted.address, &token, Some(&last)).await;
    let event = again.next().await;
    assert_eq!(event.event, "order");
    assert_eq!(data(&event)["number"], after, "only what was missed, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_arrives_while_an_older_transaction_runs_and_a_resume_gets_exactly_the_rest() {
    let app = spawn_app_with(Options::default()).await;
    let token = app.signed_up("quick").await;
    let (mut events, _) = ready(&app.address, &token).await;
    // An older transaction, still running, changes the customer's balance.
    let slow = app
        .db
        .begin("UPDATE accounts SET balance = 5 WHERE user_id = (SELECT id FROM users WHERE login = 'quick')")
        .await;
    let number = order_number(901);
    assert_eq!(app.upload(&token, &number).await.status(), 202);
    let uploaded = events.next().await;
    assert_eq!(
        uploaded.event, "order",
        "delivered while the older one runs"
    );
    assert_eq!(data(&uploaded)["number"], number);
    drop(events);
    slow.commit().await;

    // From the upload's id: the older transaction's change, and the upload not again.
    let mut resumed = stream(&app.address, &token, Some(&uploaded.id)).await;
    let later = order_number(902);
    assert_eq!(app.upload(&token, &later).await.status(), 202);
    let mut balances = Vec::new();
    let mut last = uploaded.id.clone();
    loop {
        let event = resumed.next().await;
        assert!(beyond(&event.id, &last), "{} after {last}", event.id);
        last = event.id.clone();
        if event.event == "balance" {
            balances.push(data(&event));
            continue;
        }
        assert_ne!(data(&event), data(&uploaded), "the upload once");
        if data(&event)["number"] == later {
            break;
        }
    }
    assert_eq!(balances, vec![json!({"current": 5, "withdrawn": 0})]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_away_longer_than_the_retention_is_told_to_reset() {
    let app: TestApp = spawn_app_with(Options::default()).await;
    let token = app.signed_up("sleeper").await;
    let (events, start) = ready(&app.address, &token).await;
    drop(events);
    assert_eq!(app.upload(&token, &order_number(601)).await.status(), 202);
    // The retention removed events after the client's position.
    app.db
        .execute("UPDATE events_pruned SET through = (SELECT max(tx::text::int8) FROM events)")
        .await;

    let mut resumed = stream(&app.address, &token, Some(&start)).await;
    let reset = resumed.next().await;
    assert_eq!(reset.event, "reset");
    // Live events follow the reset, after its id (the earlier upload's too, when the log could
    // not yet be read past it as the stream opened).
    let live = order_number(602);
    assert_eq!(app.upload(&token, &live).await.status(), 202);
    loop {
        let event = resumed.next().await;
        assert!(
            beyond(&event.id, &reset.id),
            "{} after {}",
            event.id,
            reset.id
        );
        if data(&event)["number"] == live {
            break;
        }
        assert_eq!(data(&event)["number"], order_number(601));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_customers_limit_answer_429() {
    let app = spawn_app_with(Options {
        extra_args: vec!["--event-streams-per-customer".into(), "2".into()],
        ..Options::default()
    })
    .await;
    let token = app.signed_up("hoarder").await;
    let (first, _) = ready(&app.address, &token).await;
    let (_second, _) = ready(&app.address, &token).await;

    let refused = open(&app.address, &token, None).await;
    assert_eq!(refused.status(), 429);
    assert!(header_text(&refused, "retry-after").is_some());
    assert_problem(refused, 429).await;
    // Another customer is not affected.
    let other = app.signed_up("neighbour").await;
    let (_theirs, _) = ready(&app.address, &other).await;
    assert_eq!(
        sample(&scrape(&app).await, "gophermart_event_streams_open"),
        Some(3.0),
        "the open streams are counted"
    );

    // The server learns that a client went away when a write to it fails: the second
    // heartbeat (10 s each) after it left at the latest.
    drop(first);
    let mut reopened = None;
    for _ in 0..300 {
        let response = open(&app.address, &token, None).await;
        if response.status() == 200 {
            reopened = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(reopened.is_some(), "a closed stream frees its place");

    let anonymous = reqwest::get(app.url("/api/user/events"))
        .await
        .expect("sent");
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_event_id_that_is_no_id_sent_opens_with_reset_and_an_empty_one_with_ready() {
    let app = spawn_app_with(Options {
        extra_args: vec!["--event-streams-per-customer".into(), "20".into()],
        ..Options::default()
    })
    .await;
    let token = app.signed_up("forgetful").await;
    let mut opened = Vec::new();
    for bad in [
        "yesterday",
        "12",
        "1-2-3-x",
        "-",
        "null",
        "99999999999999999999-1",
    ] {
        let mut events = stream(&app.address, &token, Some(bad)).await;
        let first = events.next().await;
        assert_eq!(first.event, "reset", "Last-Event-ID {bad:?}");
        assert_eq!(data(&first), json!({}));
        cursor(&first.id);
        opened.push((events, first.id));
    }
    let mut fresh = stream(&app.address, &token, Some("")).await;
    assert_eq!(fresh.next().await.event, "ready");

    // Each stream goes on from its reset: the next change arrives after it.
    let number = order_number(77);
    assert_eq!(app.upload(&token, &number).await.status(), 202);
    for (events, reset) in &mut opened {
        let uploaded = events.next().await;
        assert_eq!(uploaded.event, "order");
        assert_eq!(data(&uploaded)["number"], number);
        assert!(beyond(&uploaded.id, reset));
    }
}
