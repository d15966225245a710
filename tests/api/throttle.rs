//! Sign-in throttling: passwords cannot be guessed by brute force.

use api_tests::{spawn_app_with, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_are_refused_with_429_after_repeated_failures() {
    let app = spawn_app_with(Options {
        extra_args: vec!["--login-max-failures-per-login".into(), "3".into()],
        ..Options::default()
    })
    .await;
    app.signed_up("alice").await;
    app.signed_up("bob").await;

    for _ in 0..3 {
        assert_eq!(app.login("alice", "guess").await.status(), 401);
    }
    let refused = app.login("alice", "password").await;
    let other_user = app.login("bob", "password").await;

    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=300).contains(&retry_after), "{retry_after}");
    assert_eq!(
        refused
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    assert_eq!(other_user.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_address_guessing_many_logins_is_refused() {
    let app = spawn_app_with(Options {
        extra_args: vec!["--login-max-failures-per-address".into(), "4".into()],
        ..Options::default()
    })
    .await;
    app.signed_up("carol").await;

    for i in 0..4 {
        assert_eq!(
            app.login(&format!("nobody{i}"), "guess").await.status(),
            401
        );
    }

    assert_eq!(app.login("carol", "password").await.status(), 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_sign_in_resets_the_count_of_a_login() {
    let app = spawn_app_with(Options {
        extra_args: vec!["--login-max-failures-per-login".into(), "3".into()],
        ..Options::default()
    })
    .await;
    app.signed_up("dave").await;

    for _ in 0..2 {
        assert_eq!(app.login("dave", "guess").await.status(), 401);
    }
    assert_eq!(app.login("dave", "password").await.status(), 200);
    for _ in 0..2 {
        assert_eq!(app.login("dave", "guess").await.status(), 401);
    }

    assert_eq!(app.login("dave", "password").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_sign_ins_beyond_the_hashing_queue_is_shed_with_503_not_queued() {
    // One hashing thread and hashes of a tenth of a second or more, so that about ten
    // sign-ins at most may wait.
    let app = spawn_app_with(Options {
        extra_args: vec![
            "--bcrypt-cost".into(),
            "12".into(),
            "--bcrypt-concurrency".into(),
            "1".into(),
        ],
        ..Options::default()
    })
    .await;
    let token = app.signed_up("erin").await;

    let burst: Vec<_> = (0..24).map(|_| app.login("erin", "password")).collect();
    let answers = futures::future::join_all(burst).await;

    let mut signed_in = 0;
    let mut shed = 0;
    for answer in &answers {
        match answer.status().as_u16() {
            200 => signed_in += 1,
            503 => {
                shed += 1;
                assert_eq!(
                    answer
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok()),
                    Some("1")
                );
                assert_eq!(
                    answer
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok()),
                    Some("application/problem+json")
                );
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(signed_in >= 1, "the first ones are served");
    assert!(
        shed >= 1,
        "the rest are refused (after a short pause), not queued"
    );
    // Shedding sign-ins is not a failure of the account: it signs in once the burst is over,
    // and the other requests were never held up by the queue.
    assert_eq!(app.balance(&token).await["current"], 0);
    assert_eq!(app.login("erin", "password").await.status(), 200);
}
