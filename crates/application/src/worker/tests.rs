//! The worker against mocks of its ports.

use std::sync::Mutex;

use chrono::TimeZone;
use domain::{Money, OrderNumber};
use mockall::predicate::eq;
use rust_decimal_macros::dec;

use super::{
    apply::{Applier, Outcome},
    *,
};
use crate::ports::{
    accrual::{AccrualClientError, MockAccrualClient},
    clock::MockClock,
    queue::MockAccrualQueue,
};

fn order() -> OrderNumber {
    OrderNumber::parse("12345678903").expect("valid")
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 5, 1, 12, 0, 0)
        .single()
        .expect("date")
}

fn clock() -> Arc<MockClock> {
    let mut clock = MockClock::new();
    clock.expect_now().returning(now);
    Arc::new(clock)
}

fn config() -> WorkerConfig {
    WorkerConfig {
        recheck_delay: Duration::from_millis(500),
        backoff_base: Duration::from_secs(1),
        backoff_cap: Duration::from_secs(60),
        ..WorkerConfig::default()
    }
}

fn client_answering(answer: Result<AccrualAnswer, AccrualClientError>) -> Arc<MockAccrualClient> {
    let mut client = MockAccrualClient::new();
    client
        .expect_order()
        .with(eq(order()))
        .times(1)
        .returning(move |_| answer.clone());
    Arc::new(client)
}

fn worker(queue: MockAccrualQueue, client: Arc<MockAccrualClient>) -> AccrualWorker {
    AccrualWorker::new(Arc::new(queue), client, clock(), config())
}

fn entry(attempts: u32) -> QueueEntry {
    QueueEntry {
        order: order(),
        attempts,
        unknown_checks: 0,
    }
}

#[tokio::test]
async fn a_processed_answer_credits_the_order() {
    let accrual = Money::new(dec!(729.98)).expect("money");
    let mut queue = MockAccrualQueue::new();
    queue
        .expect_finish_many()
        .withf(move |outcomes| outcomes == [(order(), FinalOutcome::Processed(Some(accrual)))])
        .times(1)
        .returning(|_| Ok(vec![true]));
    let worker = worker(
        queue,
        client_answering(Ok(AccrualAnswer::Known {
            status: AccrualStatus::Processed,
            accrual: Some(accrual),
        })),
    );

    worker.handle(entry(0), CancellationToken::new()).await;

    assert_eq!(worker.stats().orders_credited(), 1);
    assert_eq!(worker.stats().points_credited(), accrual);
}

#[tokio::test]
async fn a_processed_answer_for_an_order_already_final_counts_no_credit() {
    let mut queue = MockAccrualQueue::new();
    queue
        .expect_finish_many()
        .times(1)
        .returning(|_| Ok(vec![false]));
    let worker = worker(
        queue,
        client_answering(Ok(AccrualAnswer::Known {
            status: AccrualStatus::Processed,
            accrual: None,
        })),
    );

    worker.handle(entry(0), CancellationToken::new()).await;

    assert_eq!(worker.stats().orders_credited(), 0);
    assert_eq!(worker.stats().answers(AnswerKind::Processed), 1);
}

#[tokio::test]
async fn an_invalid_answer_marks_the_order_invalid() {
    let mut queue = MockAccrualQueue::new();
    queue
        .expect_finish_many()
        .withf(move |outcomes| outcomes == [(order(), FinalOutcome::Invalid)])
        .times(1)
        .returning(|_| Ok(vec![true]));
    let worker = worker(
        queue,
        client_answering(Ok(AccrualAnswer::Known {
            status: AccrualStatus::Invalid,
            accrual: None,
        })),
    );

    worker.handle(entry(0), CancellationToken::new()).await;

    assert_eq!(worker.stats().answers(AnswerKind::Invalid), 1);
}

#[tokio::test]
async fn registered_and_processing_answers_ask_again_after_the_recheck_delay() {
    for status in [AccrualStatus::Registered, AccrualStatus::Processing] {
        let mut queue = MockAccrualQueue::new();
        queue
            .expect_retry_many()
            .withf(|retries| {
                retries
                    == [Retry {
                        order: order(),
                        due_at: now() + chrono::Duration::milliseconds(500),
                        reason: RetryReason::StillProcessing,
                    }]
            })
            .times(1)
            .returning(|_| Ok(()));
        queue.expect_finish_many().never();
        let worker = worker(
            queue,
            client_answering(Ok(AccrualAnswer::Known {
                status,
                accrual: None,
            })),
        );

        worker.handle(entry(0), CancellationToken::new()).await;
    }
}

#[tokio::test]
async fn an_unregistered_order_is_asked_about_again_later() {
    let mut queue = MockAccrualQueue::new();
    queue
        .expect_retry_many()
        .withf(|retries| {
            retries
                == [Retry {
                    order: order(),
                    due_at: now() + chrono::Duration::milliseconds(500),
                    reason: RetryReason::NotRegistered,
                }]
        })
        .times(1)
        .returning(|_| Ok(()));
    let worker = worker(queue, client_answering(Ok(AccrualAnswer::NotRegistered)));

    worker.handle(entry(0), CancellationToken::new()).await;
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_pauses_every_request_and_paces_the_next_ones() {
    let mut queue = MockAccrualQueue::new();
    queue
        .expect_retry_many()
        .withf(|retries| {
            retries
                == [Retry {
                    order: order(),
                    due_at: now() + chrono::Duration::seconds(7),
                    reason: RetryReason::RateLimited,
                }]
        })
        .times(1)
        .returning(|_| Ok(()));
    let worker = worker(
        queue,
        client_answering(Ok(AccrualAnswer::RateLimited {
            retry_after: Duration::from_secs(7),
            per_minute: Some(60),
        })),
    );

    worker.handle(entry(0), CancellationToken::new()).await;

    let gate = worker.gate();
    assert!(gate.is_paused());
    let start = tokio::time::Instant::now();
    gate.acquire().await;
    gate.acquire().await;
    // The pause (7 s), then one paced interval (60/60 s with a 2% margin).
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(7) + Duration::from_millis(1020)
    );
    assert_eq!(worker.stats().answers(AnswerKind::RateLimited), 1);
}

#[tokio::test]
async fn a_failure_is_retried_with_backoff_and_recorded() {
    let recorded = Arc::new(Mutex::new(None));
    let mut queue = MockAccrualQueue::new();
    let sink = recorded.clone();
    queue
        .expect_retry_many()
        .times(1)
        .returning(move |retries| {
            let [retry] = retries else {
                panic!("one entry back: {retries:?}")
            };
            *sink.lock().expect("lock") = Some((retry.due_at, retry.reason.clone()));
            Ok(())
        });
    queue.expect_finish_many().never();
    let worker = worker(
        queue,
        client_answering(Err(AccrualClientError::Server("status 500".into()))),
    );

    worker.handle(entry(2), CancellationToken::new()).await;

    let (due, reason) = recorded.lock().expect("lock").clone().expect("retried");
    // Third attempt: 4 s base, jittered between 2 and 4 s.
    let delay = (due - now()).to_std().expect("future");
    assert!(
        delay >= Duration::from_secs(2) && delay <= Duration::from_secs(4),
        "{delay:?}"
    );
    assert_eq!(
        reason,
        RetryReason::Failed("the accrual system failed: status 500".into())
    );
}

#[tokio::test]
async fn timeouts_and_garbage_never_make_an_order_invalid() {
    for error in [
        AccrualClientError::Timeout,
        AccrualClientError::InvalidAnswer("garbage".into()),
        AccrualClientError::Transport("refused".into()),
    ] {
        let mut queue = MockAccrualQueue::new();
        queue.expect_finish_many().never();
        queue
            .expect_retry_many()
            .withf(|retries| {
                matches!(
                    retries,
                    [Retry {
                        reason: RetryReason::Failed(_),
                        ..
                    }]
                )
            })
            .times(1)
            .returning(|_| Ok(()));
        let worker = worker(queue, client_answering(Err(error)));

        worker.handle(entry(0), CancellationToken::new()).await;
    }
}

#[test]
fn backoff_doubles_per_attempt_up_to_the_cap() {
    let config = config();
    let full: Vec<Duration> = (1..=9).map(|a| backoff(&config, a, 1.0)).collect();

    assert_eq!(
        full,
        [1, 2, 4, 8, 16, 32, 60, 60, 60]
            .map(Duration::from_secs)
            .to_vec()
    );
    assert_eq!(backoff(&config, 3, 0.0), Duration::from_secs(2));
    assert_eq!(backoff(&config, u32::MAX, 1.0), Duration::from_secs(60));
}

#[tokio::test(start_paused = true)]
async fn an_entry_meeting_a_long_pause_goes_back_to_the_queue_unasked() {
    let mut queue = MockAccrualQueue::new();
    queue
        .expect_retry_many()
        .withf(|retries| {
            retries
                == [Retry {
                    order: order(),
                    due_at: now() + chrono::Duration::seconds(3600),
                    reason: RetryReason::RateLimited,
                }]
        })
        .times(1)
        .returning(|_| Ok(()));
    let mut client = MockAccrualClient::new();
    client.expect_order().never();
    let worker = worker(queue, Arc::new(client));
    worker.gate().pause_for(Duration::from_secs(3600));

    worker.handle(entry(0), CancellationToken::new()).await;
}

#[tokio::test(start_paused = true)]
async fn an_entry_waiting_briefly_at_the_gate_is_released_on_shutdown() {
    let mut queue = MockAccrualQueue::new();
    queue
        .expect_release()
        .withf(|orders| orders == [order()])
        .times(1)
        .returning(|_| Ok(()));
    let mut client = MockAccrualClient::new();
    client.expect_order().never();
    let worker = worker(queue, Arc::new(client));
    worker.gate().pause_for(Duration::from_secs(5));
    let stop = CancellationToken::new();
    stop.cancel();

    worker.handle(entry(0), stop).await;
}

#[tokio::test(start_paused = true)]
async fn an_entry_meeting_a_short_pause_waits_for_it_and_is_asked() {
    let mut queue = MockAccrualQueue::new();
    queue
        .expect_finish_many()
        .times(1)
        .returning(|_| Ok(vec![true]));
    let worker = worker(
        queue,
        client_answering(Ok(AccrualAnswer::Known {
            status: AccrualStatus::Invalid,
            accrual: None,
        })),
    );
    worker.gate().pause_for(Duration::from_secs(5));
    let start = tokio::time::Instant::now();

    worker.handle(entry(0), CancellationToken::new()).await;

    assert_eq!(start.elapsed(), Duration::from_secs(5));
}

#[tokio::test]
async fn the_run_loop_works_through_claimed_entries_and_stops_cleanly() {
    let mut queue = MockAccrualQueue::new();
    let claims = Arc::new(Mutex::new(0));
    let counter = claims.clone();
    queue.expect_claim().returning(move |limit, _, lease, _| {
        assert_eq!(lease, Duration::from_secs(30));
        let mut n = counter.lock().expect("lock");
        *n += 1;
        Ok(if *n == 1 {
            assert!(limit >= 1);
            vec![entry(0)]
        } else {
            vec![]
        })
    });
    queue.expect_next_due().returning(|_| Ok(None));
    let finished = Arc::new(Notify::new());
    let signal = finished.clone();
    queue.expect_finish_many().times(1).returning(move |_| {
        signal.notify_one();
        Ok(vec![true])
    });
    let client = client_answering(Ok(AccrualAnswer::Known {
        status: AccrualStatus::Processed,
        accrual: None,
    }));
    let worker = worker(queue, client);
    let stop = CancellationToken::new();
    let wake = Arc::new(Notify::new());

    let running = tokio::spawn(worker.clone().run(wake, stop.clone()));
    tokio::time::timeout(Duration::from_secs(5), finished.notified())
        .await
        .expect("the claimed order is finished");
    stop.cancel();

    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the worker stops")
        .expect("no panic");
    assert_eq!(worker.stats().orders_credited(), 1);
}

/// An accrual system that answers only when told to.
struct HeldAnswer {
    release: Arc<Notify>,
}

#[async_trait::async_trait]
impl AccrualClient for HeldAnswer {
    async fn order(&self, _: &OrderNumber) -> Result<AccrualAnswer, AccrualClientError> {
        self.release.notified().await;
        Ok(AccrualAnswer::Known {
            status: AccrualStatus::Processed,
            accrual: None,
        })
    }
}

#[tokio::test]
async fn with_every_request_slot_busy_wakes_do_not_make_the_worker_poll_the_queue() {
    let mut queue = MockAccrualQueue::new();
    let claims = Arc::new(Mutex::new(0));
    let counter = claims.clone();
    queue.expect_claim().returning(move |_, _, _, order| {
        assert_eq!(order, ClaimOrder::FairShares, "under a pace");
        let mut n = counter.lock().expect("lock");
        *n += 1;
        Ok(if *n == 1 { vec![entry(0)] } else { vec![] })
    });
    // Something is always due; polls after the first claim are counted.
    let polls = Arc::new(Mutex::new(0));
    let polled = polls.clone();
    let claimed = claims.clone();
    queue.expect_next_due().returning(move |_| {
        if *claimed.lock().expect("lock") > 0 {
            *polled.lock().expect("lock") += 1;
        }
        Ok(Some(now()))
    });
    let finished = Arc::new(Notify::new());
    let signal = finished.clone();
    queue.expect_finish_many().times(1).returning(move |_| {
        signal.notify_one();
        Ok(vec![true])
    });
    let release = Arc::new(Notify::new());
    let worker = AccrualWorker::new(
        Arc::new(queue),
        Arc::new(HeldAnswer {
            release: release.clone(),
        }),
        clock(),
        WorkerConfig {
            concurrency: 1,
            ..config()
        },
    );
    // Under a pace the worker claims one entry at a time and goes round at once.
    worker.gate().pace(6000);
    let stop = CancellationToken::new();
    let wake = Arc::new(Notify::new());
    let running = tokio::spawn(worker.clone().run(wake.clone(), stop.clone()));

    // The one slot is taken by the held request; uploads keep waking the worker meanwhile.
    while *claims.lock().expect("lock") == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..10 {
        wake.notify_one();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(*polls.lock().expect("lock"), 0, "no queue polls while full");
    assert_eq!(*claims.lock().expect("lock"), 1, "no claims while full");

    release.notify_one();
    tokio::time::timeout(Duration::from_secs(5), finished.notified())
        .await
        .expect("the held order is finished");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the worker stops")
        .expect("no panic");
}

#[test]
fn unknown_orders_are_asked_again_after_a_doubling_delay_up_to_the_cap() {
    let config = WorkerConfig {
        recheck_delay: Duration::from_millis(500),
        unknown_recheck_cap: Duration::from_secs(600),
        ..WorkerConfig::default()
    };

    let delays: Vec<Duration> = (1..=13).map(|n| unknown_recheck(&config, n)).collect();

    assert_eq!(
        delays,
        [
            500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 512_000,
            600_000, 600_000
        ]
        .map(Duration::from_millis)
        .to_vec()
    );
    assert_eq!(unknown_recheck(&config, u32::MAX), Duration::from_secs(600));
}

#[tokio::test]
async fn an_order_unknown_for_the_fourth_time_waits_eight_times_the_recheck_delay() {
    let mut queue = MockAccrualQueue::new();
    queue
        .expect_retry_many()
        .withf(|retries| {
            retries
                == [Retry {
                    order: order(),
                    due_at: now() + chrono::Duration::seconds(4),
                    reason: RetryReason::NotRegistered,
                }]
        })
        .times(1)
        .returning(|_| Ok(()));
    let worker = worker(queue, client_answering(Ok(AccrualAnswer::NotRegistered)));
    let known_unknown = QueueEntry {
        unknown_checks: 3,
        ..entry(0)
    };

    worker.handle(known_unknown, CancellationToken::new()).await;
}

#[tokio::test]
async fn answers_that_arrive_together_are_written_in_one_batch() {
    // A current-thread runtime: the writer runs only once all three are handed over.
    let mut queue = MockAccrualQueue::new();
    let batches = Arc::new(Mutex::new(Vec::new()));
    let seen = batches.clone();
    queue.expect_finish_many().returning(move |outcomes| {
        seen.lock().expect("lock").push(outcomes.len());
        Ok(vec![true; outcomes.len()])
    });
    let stats = Arc::new(WorkerStats::default());
    let (applier, writing) = Applier::start(Arc::new(queue), stats.clone());
    let number = |n: u64| OrderNumber::parse(&domain::with_check_digit(&n.to_string())).expect("n");
    let credit = Outcome::Final(FinalOutcome::Processed(Some(
        Money::new(dec!(10)).expect("money"),
    )));

    tokio::join!(
        applier.apply(number(1), credit.clone()),
        applier.apply(number(2), credit.clone()),
        applier.apply(number(3), credit.clone()),
    );
    drop(applier);
    writing.await.expect("the writer ends");

    assert_eq!(*batches.lock().expect("lock"), vec![3]);
    assert_eq!(stats.orders_credited(), 3);
    assert_eq!(
        stats.points_credited(),
        Money::new(dec!(30)).expect("money")
    );
}

/// The claims a queue was asked for: limit and order, in turn.
type Claims = Arc<Mutex<Vec<(u32, ClaimOrder)>>>;

/// A queue with nothing due that records every claim.
fn empty_queue_recording_claims() -> (MockAccrualQueue, Claims) {
    let mut queue = MockAccrualQueue::new();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let seen = asked.clone();
    queue.expect_claim().returning(move |limit, _, _, order| {
        seen.lock().expect("lock").push((limit, order));
        Ok(vec![])
    });
    queue.expect_next_due().returning(|_| Ok(None));
    (queue, asked)
}

/// Runs `worker` until it has claimed `claims` times, then stops it.
async fn run_until_claimed(worker: AccrualWorker, asked: &Claims, claims: usize) {
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(Arc::new(Notify::new()), stop.clone()));
    while asked.lock().expect("lock").len() < claims {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    running.await.expect("no panic");
}

#[tokio::test(start_paused = true)]
async fn without_a_known_limit_the_loop_claims_as_many_as_it_has_open_slots_earliest_due_first() {
    let (queue, asked) = empty_queue_recording_claims();
    let worker = AccrualWorker::new(
        Arc::new(queue),
        Arc::new(MockAccrualClient::new()),
        clock(),
        WorkerConfig {
            concurrency: 6,
            ..config()
        },
    );
    // Nothing is due: the worker looks again after its poll interval.
    run_until_claimed(worker, &asked, 2).await;

    // One slot open at first (slow start), all six a poll interval later.
    assert_eq!(
        asked.lock().expect("lock")[..2],
        [(1, ClaimOrder::DueFirst), (6, ClaimOrder::DueFirst)]
    );
}

#[tokio::test(start_paused = true)]
async fn after_a_pause_the_slots_open_gradually_again() {
    let (queue, asked) = empty_queue_recording_claims();
    let worker = AccrualWorker::new(
        Arc::new(queue),
        Arc::new(MockAccrualClient::new()),
        clock(),
        WorkerConfig {
            concurrency: 6,
            poll_interval: Duration::from_millis(20),
            ..config()
        },
    );
    // All six slots are open by the time a 429 pauses every request for two seconds.
    tokio::time::advance(Duration::from_secs(1)).await;
    worker.gate().pause_for(Duration::from_secs(2));
    run_until_claimed(worker, &asked, 4).await;

    // Nothing is claimed during the pause; then one slot, two, four...
    let limits: Vec<u32> = asked
        .lock()
        .expect("lock")
        .iter()
        .map(|(limit, _)| *limit)
        .collect();
    assert_eq!(limits[..4], [1, 1, 1, 2]);
}

/// A queue of a few entries whose first write of final outcomes is held until released.
struct HeldFirstWrite {
    due: Mutex<Vec<QueueEntry>>,
    writes: Mutex<usize>,
    written: Mutex<Vec<OrderNumber>>,
    release: Arc<Notify>,
}

#[async_trait::async_trait]
impl AccrualQueue for HeldFirstWrite {
    async fn claim(
        &self,
        limit: u32,
        _: DateTime<Utc>,
        _: Duration,
        _: ClaimOrder,
    ) -> Result<Vec<QueueEntry>, crate::RepositoryError> {
        let mut due = self.due.lock().expect("lock");
        let take = due.len().min(limit as usize);
        Ok(due.drain(..take).collect())
    }

    async fn finish(
        &self,
        order: &OrderNumber,
        outcome: FinalOutcome,
    ) -> Result<bool, crate::RepositoryError> {
        let applied = self.finish_many(&[(order.clone(), outcome)]).await?;
        Ok(applied[0])
    }

    async fn finish_many(
        &self,
        outcomes: &[(OrderNumber, FinalOutcome)],
    ) -> Result<Vec<bool>, crate::RepositoryError> {
        let first = {
            let mut writes = self.writes.lock().expect("lock");
            *writes += 1;
            *writes == 1
        };
        if first {
            self.release.notified().await;
        }
        self.written
            .lock()
            .expect("lock")
            .extend(outcomes.iter().map(|(order, _)| order.clone()));
        Ok(vec![true; outcomes.len()])
    }

    async fn retry_later(
        &self,
        _: &OrderNumber,
        _: DateTime<Utc>,
        _: RetryReason,
    ) -> Result<(), crate::RepositoryError> {
        Ok(())
    }

    async fn retry_many(&self, _: &[Retry]) -> Result<(), crate::RepositoryError> {
        Ok(())
    }

    async fn release(&self, _: &[OrderNumber]) -> Result<(), crate::RepositoryError> {
        Ok(())
    }

    async fn next_due(
        &self,
        _: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, crate::RepositoryError> {
        Ok(None)
    }
}

#[tokio::test]
async fn a_request_slot_is_free_again_once_its_answer_arrives_not_once_it_is_written() {
    let number = |n: u64| OrderNumber::parse(&domain::with_check_digit(&n.to_string())).expect("n");
    let release = Arc::new(Notify::new());
    let queue = Arc::new(HeldFirstWrite {
        due: Mutex::new(vec![
            QueueEntry {
                order: number(1),
                attempts: 0,
                unknown_checks: 0,
            },
            QueueEntry {
                order: number(2),
                attempts: 0,
                unknown_checks: 0,
            },
        ]),
        writes: Mutex::new(0),
        written: Mutex::new(Vec::new()),
        release: release.clone(),
    });
    let asked = Arc::new(Mutex::new(Vec::new()));
    let mut client = MockAccrualClient::new();
    let seen = asked.clone();
    client.expect_order().returning(move |order| {
        seen.lock().expect("lock").push(order.clone());
        Ok(AccrualAnswer::Known {
            status: AccrualStatus::Processed,
            accrual: None,
        })
    });
    let worker = AccrualWorker::new(
        queue.clone(),
        Arc::new(client),
        clock(),
        WorkerConfig {
            concurrency: 1,
            ..config()
        },
    );
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(Arc::new(Notify::new()), stop.clone()));

    // One request slot, and the first answer's write is held: the second order is asked
    // about all the same.
    tokio::time::timeout(Duration::from_secs(5), async {
        while asked.lock().expect("lock").len() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the second order is asked about while the first answer is being written");
    assert!(
        !queue.written.lock().expect("lock").contains(&number(1)),
        "the first answer's write is still held"
    );

    release.notify_one();
    tokio::time::timeout(Duration::from_secs(5), async {
        while queue.written.lock().expect("lock").len() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("both answers are written");
    stop.cancel();
    running.await.expect("no panic");
}

#[tokio::test(start_paused = true)]
async fn entries_leased_beyond_what_was_asked_for_are_released_at_once() {
    let mut queue = MockAccrualQueue::new();
    let claims = Arc::new(Mutex::new(0));
    let counted = claims.clone();
    // The first claim, for one entry (slow start), comes back with three.
    queue.expect_claim().returning(move |limit, _, _, _| {
        let mut claims = counted.lock().expect("lock");
        *claims += 1;
        if *claims > 1 {
            return Ok(vec![]);
        }
        assert_eq!(limit, 1);
        Ok((0..3)
            .map(|k| QueueEntry {
                order: OrderNumber::parse(&domain::with_check_digit(&format!("4000{k}")))
                    .expect("valid"),
                attempts: 0,
                unknown_checks: 0,
            })
            .collect())
    });
    let released = Arc::new(Mutex::new(Vec::new()));
    let seen = released.clone();
    queue.expect_release().returning(move |orders| {
        seen.lock().expect("lock").extend_from_slice(orders);
        Ok(())
    });
    queue.expect_next_due().returning(|_| Ok(None));
    queue
        .expect_finish_many()
        .returning(|outcomes| Ok(vec![true; outcomes.len()]));
    let mut client = MockAccrualClient::new();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let seen = asked.clone();
    client.expect_order().returning(move |order| {
        seen.lock().expect("lock").push(order.clone());
        Ok(AccrualAnswer::Known {
            status: AccrualStatus::Invalid,
            accrual: None,
        })
    });
    let worker = AccrualWorker::new(Arc::new(queue), Arc::new(client), clock(), config());
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(Arc::new(Notify::new()), stop.clone()));
    while *claims.lock().expect("lock") < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    running.await.expect("no panic");

    let asked = asked.lock().expect("lock").clone();
    let released = released.lock().expect("lock").clone();
    assert_eq!(asked.len(), 1, "one request slot, one request: {asked:?}");
    assert_eq!(released.len(), 2, "the other two go back: {released:?}");
    assert!(!released.contains(&asked[0]));
}
