//! The pool against a real server: which runtime drives its connections, and what a caller
//! is told when the database goes away.

use std::{sync::mpsc, time::Duration};

use adapters_postgres::{
    testing::TestDatabase,
    testing_proxy::{Cut, OutageProxy},
    PgPoolConfig, PgStore, StatementMode,
};
use application::{ports::ledger::LedgerRepository, RepositoryError};
use domain::UserId;

/// An HTTP worker is a thread with a runtime of its own. Here one opens the pool's only
/// connection and then stops running its runtime, as a worker does while its thread is not
/// scheduled; another runtime must still be able to use that connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_opened_by_a_runtime_that_stops_running_still_serves_the_others() {
    // Arrange: a pool of one connection, driven by this test's runtime.
    let db = TestDatabase::create().await;
    let mut config = PgPoolConfig::new(db.url());
    config.max_size = 1;
    config.driver = Some(tokio::runtime::Handle::current());
    let store = PgStore::new(config.build().expect("pool"));
    let (opened_tx, opened_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let worker = {
        let store = store.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let opened = runtime.block_on(store.ping());
            opened_tx.send(opened).expect("reported");
            // The runtime lives on, but nothing runs it until the test is over.
            let _ = release_rx.recv();
            drop(runtime);
        })
    };
    tokio::task::spawn_blocking(move || opened_rx.recv())
        .await
        .expect("joined")
        .expect("reported")
        .expect("the worker's query");

    // Act: the same connection, borrowed by this runtime.
    let pinged = tokio::time::timeout(Duration::from_secs(10), store.ping()).await;

    // Assert
    release_tx.send(()).expect("released");
    worker.join().expect("worker");
    assert!(
        matches!(pinged, Ok(Ok(()))),
        "the connection opened by the stopped runtime did not answer: {pinged:?}"
    );
}

/// A pooled connection that died while idle is found out by the statement that uses it next.
/// That statement's caller is told the database is unavailable (what the service answers with
/// 503), not that it failed (500), in either statement mode; and once the database is back the
/// pool serves again.
#[tokio::test]
async fn a_connection_that_died_while_idle_reports_the_database_unavailable() {
    for mode in [StatementMode::Prepared, StatementMode::Unnamed] {
        // Arrange: a pool of one connection, opened and idle.
        let db = TestDatabase::create().await;
        let proxy = OutageProxy::start(db.url()).await;
        let mut config = PgPoolConfig::new(proxy.url());
        config.max_size = 1;
        config.statements = mode;
        let store = PgStore::new(config.build().expect("pool"));
        store.ping().await.expect("the database answers");

        // Act
        proxy.outage(Cut::OnNextRequest);
        let during = store.balance(UserId(1)).await;
        let ping_during = store.ping().await;
        proxy.restore();
        let after = store.ping().await;

        // Assert
        assert!(
            matches!(during, Err(RepositoryError::Unavailable(_))),
            "{mode:?}: a statement on the dead connection: {during:?}"
        );
        assert!(
            matches!(ping_during, Err(RepositoryError::Unavailable(_))),
            "{mode:?}: a new connection during the outage: {ping_during:?}"
        );
        assert!(after.is_ok(), "{mode:?}: after the outage: {after:?}");
    }
}
