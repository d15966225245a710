//! Conditional reads (ETag, If-None-Match → 304) and paged lists (`limit`, `before`, `Link`).

use api_tests::{order_number, spawn_app, TestApp};
use serde_json::Value;

use crate::support::{assert_problem, funded_100, header_text};

async fn get_if_none_match(app: &TestApp, path: &str, token: &str, tag: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .bearer_auth(token)
        .header("if-none-match", tag)
        .send()
        .await
        .expect("request sent")
}

/// Follows the `Link: <…>; rel="next"` headers from `first`, collecting every page's items;
/// `between` runs after each page.
async fn all_pages(
    app: &TestApp,
    token: &str,
    first: &str,
    mut between: impl FnMut(usize) -> Option<String>,
) -> (Vec<Value>, usize) {
    let mut items = Vec::new();
    let mut next = Some(first.to_owned());
    let mut pages = 0;
    while let Some(path) = next.take() {
        let answer = app.get(&path, token).await;
        assert_eq!(answer.status(), 200, "{path}");
        next = header_text(&answer, "link").map(|link| {
            assert!(link.ends_with(r#">; rel="next""#), "{link}");
            link.trim_start_matches('<')
                .split('>')
                .next()
                .expect("a target")
                .to_owned()
        });
        let page: Vec<Value> = answer.json().await.expect("json");
        items.extend(page);
        pages += 1;
        if let Some(number) = between(pages) {
            assert_eq!(app.upload(token, &number).await.status(), 202);
        }
    }
    (items, pages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_read_again_unchanged_is_answered_304_and_a_change_gives_a_new_tag() {
    let app = spawn_app().await;
    let token = app.signed_up("etag").await;
    assert_eq!(app.upload(&token, &order_number(1)).await.status(), 202);

    let first = app.get("/api/user/orders", &token).await;
    let tag = header_text(&first, "etag").expect("an ETag");
    assert_eq!(
        header_text(&first, "cache-control").as_deref(),
        Some("private, no-cache")
    );
    let unchanged = get_if_none_match(&app, "/api/user/orders", &token, &tag).await;
    assert_eq!(unchanged.status(), 304);
    assert_eq!(
        header_text(&unchanged, "etag").as_deref(),
        Some(tag.as_str())
    );
    assert!(unchanged.bytes().await.expect("body").is_empty());

    assert_eq!(app.upload(&token, &order_number(2)).await.status(), 202);
    let changed = get_if_none_match(&app, "/api/user/orders", &token, &tag).await;
    assert_eq!(changed.status(), 200);
    assert_ne!(header_text(&changed, "etag"), Some(tag));
    let items: Vec<Value> = changed.json().await.expect("json");
    assert_eq!(items.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balance_read_again_unchanged_is_answered_304() {
    let app = spawn_app().await;
    let token = app.signed_up("balance-etag").await;
    let first = app.get("/api/user/balance", &token).await;
    let tag = header_text(&first, "etag").expect("an ETag");

    let again = get_if_none_match(&app, "/api/user/balance", &token, &tag).await;
    let other = get_if_none_match(&app, "/api/user/balance", &token, "\"something-else\"").await;

    assert_eq!(again.status(), 304);
    assert_eq!(other.status(), 200);
    assert_eq!(other.json::<Value>().await.expect("json")["current"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_concatenate_to_the_whole_list_while_orders_are_added() {
    let app = spawn_app().await;
    let token = app.signed_up("pager").await;
    for seed in 0..7 {
        assert_eq!(
            app.upload(&token, &order_number(100 + seed)).await.status(),
            202
        );
    }
    let whole: Vec<Value> = app
        .get("/api/user/orders", &token)
        .await
        .json()
        .await
        .expect("json");

    // Two new orders arrive while the pages are read; they are newer than every page.
    let (paged, pages) = all_pages(&app, &token, "/api/user/orders?limit=3", |page| {
        (page <= 2).then(|| order_number(200 + page as u64))
    })
    .await;

    assert_eq!(pages, 3);
    assert_eq!(paged, whole);
    let now: Vec<Value> = app
        .get("/api/user/orders", &token)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        now.len(),
        9,
        "the whole list without parameters is as before"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawals_come_in_pages_too() {
    let funded = funded_100("pages-withdrawals").await;
    let (app, token) = (&funded.app, funded.token.as_str());
    for seed in 0..5 {
        assert_eq!(
            app.withdraw(token, &order_number(300 + seed), "1")
                .await
                .status(),
            200
        );
    }
    let whole: Vec<Value> = app
        .get("/api/user/withdrawals", token)
        .await
        .json()
        .await
        .expect("json");

    let (paged, pages) = all_pages(app, token, "/api/user/withdrawals?limit=2", |_| None).await;

    assert_eq!(pages, 3);
    assert_eq!(paged, whole);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_out_of_range_or_a_cursor_that_is_not_one_is_a_400() {
    let app = spawn_app().await;
    let token = app.signed_up("bad-pages").await;

    for path in [
        "/api/user/orders?limit=0",
        "/api/user/orders?limit=1001",
        "/api/user/orders?limit=abc",
        "/api/user/orders?limit=5&before=yesterday",
        "/api/user/withdrawals?limit=-1",
    ] {
        assert_problem(app.get(path, &token).await, 400).await;
    }
}
