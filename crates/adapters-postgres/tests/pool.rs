//! The pool against a real server: which runtime drives its connections.

use std::{sync::mpsc, time::Duration};

use adapters_postgres::{testing::TestDatabase, PgPoolConfig, PgStore};

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
