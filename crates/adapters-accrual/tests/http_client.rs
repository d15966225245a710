//! The HTTP accrual client against a real HTTP server (wiremock) playing the accrual system.

use std::net::TcpListener;
use std::time::Duration;

use adapters_accrual::{normalize_base_url, AccrualClientConfig, HttpAccrualClient};
use application::ports::accrual::{AccrualAnswer, AccrualClient, AccrualClientError};
use domain::{AccrualStatus, Money, OrderNumber};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const ORDER: &str = "12345678903";
const ORDER_PATH: &str = "/api/orders/12345678903";

fn order() -> OrderNumber {
    OrderNumber::parse(ORDER).expect("a valid order number")
}

fn config_for(base: &str) -> AccrualClientConfig {
    AccrualClientConfig::new(normalize_base_url(base).expect("a valid base address"))
}

fn client_for(config: AccrualClientConfig) -> HttpAccrualClient {
    HttpAccrualClient::new(config).expect("a client")
}

/// Starts a server that answers the request about [`ORDER`] once with `reply`.
async fn server_replying(reply: ResponseTemplate) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(ORDER_PATH))
        .respond_with(reply)
        .expect(1)
        .mount(&server)
        .await;
    server
}

/// Asks about [`ORDER`] a server that replies with `reply`.
async fn ask(reply: ResponseTemplate) -> Result<AccrualAnswer, AccrualClientError> {
    let server = server_replying(reply).await;
    let client = client_for(config_for(&server.uri()));
    client.order(&order()).await
}

fn json(body: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(body.as_bytes().to_vec(), "application/json")
}

fn known(status: AccrualStatus, accrual: Option<Decimal>) -> AccrualAnswer {
    AccrualAnswer::Known {
        status,
        accrual: accrual.map(|a| Money::new(a).expect("a valid amount")),
    }
}

fn invalid_answer_detail(result: Result<AccrualAnswer, AccrualClientError>) -> String {
    match result {
        Err(AccrualClientError::InvalidAnswer(detail)) => detail,
        other => panic!("expected an invalid answer, got {other:?}"),
    }
}

#[tokio::test]
async fn a_registered_order_is_known_as_registered() {
    let reply = json(r#"{"order":"12345678903","status":"REGISTERED"}"#);

    let answer = ask(reply).await;

    assert_eq!(answer, Ok(known(AccrualStatus::Registered, None)));
}

#[tokio::test]
async fn an_invalid_order_is_known_as_invalid() {
    let reply = json(r#"{"order":"12345678903","status":"INVALID"}"#);

    let answer = ask(reply).await;

    assert_eq!(answer, Ok(known(AccrualStatus::Invalid, None)));
}

#[tokio::test]
async fn an_order_in_processing_is_known_as_processing() {
    let reply = json(r#"{"order":"12345678903","status":"PROCESSING"}"#);

    let answer = ask(reply).await;

    assert_eq!(answer, Ok(known(AccrualStatus::Processing, None)));
}

#[tokio::test]
async fn a_processed_order_with_an_accrual_is_known_with_that_accrual() {
    let reply = json(r#"{"order":"12345678903","status":"PROCESSED","accrual":500}"#);

    let answer = ask(reply).await;

    assert_eq!(answer, Ok(known(AccrualStatus::Processed, Some(dec!(500)))));
}

#[tokio::test]
async fn a_processed_order_without_an_accrual_is_known_with_none() {
    let reply = json(r#"{"order":"12345678903","status":"PROCESSED"}"#);

    let answer = ask(reply).await;

    assert_eq!(answer, Ok(known(AccrualStatus::Processed, None)));
}

#[tokio::test]
async fn an_accrual_with_cents_keeps_its_exact_decimal_value() {
    let reply = json(r#"{"order":"12345678903","status":"PROCESSED","accrual":729.98}"#);

    let answer = ask(reply).await;

    let Ok(AccrualAnswer::Known {
        accrual: Some(amount),
        ..
    }) = answer
    else {
        panic!("expected a known order with an accrual, got {answer:?}");
    };
    assert_eq!(amount.amount().to_string(), "729.98");
}

#[tokio::test]
async fn a_large_accrual_keeps_every_digit() {
    let reply = json(r#"{"order":"12345678903","status":"PROCESSED","accrual":12345678901234.56}"#);

    let answer = ask(reply).await;

    assert_eq!(
        answer,
        Ok(known(
            AccrualStatus::Processed,
            Some(dec!(12345678901234.56))
        ))
    );
}

#[tokio::test]
async fn an_accrual_with_three_places_is_rounded_to_cents() {
    let reply = json(r#"{"order":"12345678903","status":"PROCESSED","accrual":14.745}"#);

    let answer = ask(reply).await;

    assert_eq!(
        answer,
        Ok(known(AccrualStatus::Processed, Some(dec!(14.75))))
    );
}

#[tokio::test]
async fn a_json_reply_without_a_json_content_type_is_still_read() {
    let reply = ResponseTemplate::new(200)
        .set_body_string(r#"{"order":"12345678903","status":"PROCESSED","accrual":1.5}"#);

    let answer = ask(reply).await;

    assert_eq!(
        answer,
        Ok(known(AccrualStatus::Processed, Some(dec!(1.50))))
    );
}

#[tokio::test]
async fn no_content_means_the_order_is_not_registered() {
    let reply = ResponseTemplate::new(204);

    let answer = ask(reply).await;

    assert_eq!(answer, Ok(AccrualAnswer::NotRegistered));
}

#[tokio::test]
async fn too_many_requests_reports_the_wait_and_the_advertised_limit() {
    let reply = ResponseTemplate::new(429)
        .insert_header("Retry-After", "7")
        .set_body_string("No more than 10 requests per minute allowed");

    let answer = ask(reply).await;

    assert_eq!(
        answer,
        Ok(AccrualAnswer::RateLimited {
            retry_after: Duration::from_secs(7),
            per_minute: Some(10),
        })
    );
}

#[tokio::test]
async fn too_many_requests_without_retry_after_waits_the_configured_default() {
    let server = server_replying(
        ResponseTemplate::new(429).set_body_string("No more than 10 requests per minute allowed"),
    )
    .await;
    let client = client_for(AccrualClientConfig {
        default_retry_after: Duration::from_secs(42),
        ..config_for(&server.uri())
    });

    let answer = client.order(&order()).await;

    assert_eq!(
        answer,
        Ok(AccrualAnswer::RateLimited {
            retry_after: Duration::from_secs(42),
            per_minute: Some(10),
        })
    );
}

#[tokio::test]
async fn too_many_requests_with_an_unreadable_retry_after_waits_sixty_seconds_by_default() {
    let reply = ResponseTemplate::new(429)
        .insert_header("Retry-After", "whenever you like")
        .set_body_string("slow down");

    let answer = ask(reply).await;

    assert_eq!(
        answer,
        Ok(AccrualAnswer::RateLimited {
            retry_after: Duration::from_secs(60),
            per_minute: None,
        })
    );
}

#[tokio::test]
async fn too_many_requests_with_an_http_date_waits_until_that_date() {
    let in_half_a_minute = (chrono::Utc::now() + chrono::TimeDelta::seconds(30))
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    let reply = ResponseTemplate::new(429).insert_header("Retry-After", in_half_a_minute.as_str());

    let answer = ask(reply).await;

    let Ok(AccrualAnswer::RateLimited { retry_after, .. }) = answer else {
        panic!("expected a rate limit, got {answer:?}");
    };
    assert!(
        (Duration::from_secs(25)..=Duration::from_secs(30)).contains(&retry_after),
        "retry after {retry_after:?}"
    );
}

#[tokio::test]
async fn an_internal_server_error_is_a_server_failure_naming_the_status() {
    let reply = ResponseTemplate::new(500).set_body_string("database is down");

    let answer = ask(reply).await;

    match answer {
        Err(AccrualClientError::Server(detail)) => {
            assert!(detail.contains("500"), "{detail}");
            assert!(detail.contains("database is down"), "{detail}");
        }
        other => panic!("expected a server failure, got {other:?}"),
    }
}

#[tokio::test]
async fn service_unavailable_is_a_server_failure_naming_the_status() {
    let reply = ResponseTemplate::new(503);

    let answer = ask(reply).await;

    match answer {
        Err(AccrualClientError::Server(detail)) => assert!(detail.contains("503"), "{detail}"),
        other => panic!("expected a server failure, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unexpected_status_is_an_invalid_answer() {
    let reply = ResponseTemplate::new(404);

    let answer = ask(reply).await;

    assert!(invalid_answer_detail(answer).contains("404"));
}

#[tokio::test]
async fn a_redirect_is_not_followed_but_is_an_invalid_answer() {
    let reply = ResponseTemplate::new(302).insert_header("Location", "http://127.0.0.1:1/");

    let answer = ask(reply).await;

    assert!(invalid_answer_detail(answer).contains("302"));
}

#[tokio::test]
async fn malformed_json_is_an_invalid_answer() {
    let reply = json(r#"{"order":"12345678903","status":"#);

    let answer = ask(reply).await;

    invalid_answer_detail(answer);
}

#[tokio::test]
async fn an_unknown_status_is_an_invalid_answer() {
    let reply = json(r#"{"order":"12345678903","status":"CANCELLED"}"#);

    let answer = ask(reply).await;

    assert!(invalid_answer_detail(answer).contains("CANCELLED"));
}

#[tokio::test]
async fn a_reply_about_another_order_is_an_invalid_answer() {
    let reply = json(r#"{"order":"79927398713","status":"PROCESSED","accrual":500}"#);

    let answer = ask(reply).await;

    assert!(invalid_answer_detail(answer).contains("79927398713"));
}

#[tokio::test]
async fn a_negative_accrual_is_an_invalid_answer() {
    let reply = json(r#"{"order":"12345678903","status":"PROCESSED","accrual":-5}"#);

    let answer = ask(reply).await;

    assert!(invalid_answer_detail(answer).contains("negative"));
}

#[tokio::test]
async fn an_oversized_reply_is_an_invalid_answer() {
    let padding = " ".repeat(100 * 1024);
    let reply = json(&format!(
        r#"{{"order":"12345678903","status":"PROCESSED"{padding}}}"#
    ));

    let answer = ask(reply).await;

    assert!(invalid_answer_detail(answer).contains("larger"));
}

#[tokio::test]
async fn a_reply_slower_than_the_request_timeout_is_a_timeout() {
    let server = server_replying(
        json(r#"{"order":"12345678903","status":"PROCESSED"}"#).set_delay(Duration::from_secs(3)),
    )
    .await;
    let client = client_for(AccrualClientConfig {
        request_timeout: Duration::from_millis(200),
        ..config_for(&server.uri())
    });

    let answer = client.order(&order()).await;

    assert_eq!(answer, Err(AccrualClientError::Timeout));
}

#[tokio::test]
async fn a_closed_port_is_a_transport_failure() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener.local_addr().expect("a bound address").port()
    };
    let client = client_for(config_for(&format!(":{port}")));

    let answer = client.order(&order()).await;

    assert!(
        matches!(answer, Err(AccrualClientError::Transport(_))),
        "expected a transport failure, got {answer:?}"
    );
}

/// The path of the one request `server` received.
async fn only_request_path(server: &MockServer) -> String {
    let requests = server
        .received_requests()
        .await
        .expect("request recording is on");
    assert_eq!(requests.len(), 1, "exactly one request");
    requests
        .first()
        .map(|r| r.url.path().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn the_request_path_is_exact_for_a_base_without_a_trailing_slash() {
    let server = server_replying(ResponseTemplate::new(204)).await;
    let client = client_for(config_for(server.uri().trim_end_matches('/')));

    client.order(&order()).await.expect("an answer");

    assert_eq!(only_request_path(&server).await, ORDER_PATH);
}

#[tokio::test]
async fn the_request_path_is_exact_for_a_base_with_a_trailing_slash() {
    let server = server_replying(ResponseTemplate::new(204)).await;
    let client = client_for(config_for(&format!("{}/", server.uri())));

    client.order(&order()).await.expect("an answer");

    assert_eq!(only_request_path(&server).await, ORDER_PATH);
}

#[tokio::test]
async fn the_request_path_is_exact_for_an_unnormalized_base_url() {
    let server = server_replying(ResponseTemplate::new(204)).await;
    let base = url::Url::parse(&server.uri()).expect("a URL");
    let client = client_for(AccrualClientConfig::new(base));

    client.order(&order()).await.expect("an answer");

    assert_eq!(only_request_path(&server).await, ORDER_PATH);
}

#[tokio::test]
async fn a_path_prefix_in_the_base_url_is_kept() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/accrual/api/orders/12345678903"))
        .respond_with(ResponseTemplate::new(204))
        .expect(2)
        .mount(&server)
        .await;
    let without_slash = client_for(AccrualClientConfig::new(
        url::Url::parse(&format!("{}/accrual", server.uri())).expect("a URL"),
    ));
    let with_slash = client_for(config_for(&format!("{}/accrual/", server.uri())));

    let answers = (
        without_slash.order(&order()).await,
        with_slash.order(&order()).await,
    );

    assert_eq!(
        answers,
        (
            Ok(AccrualAnswer::NotRegistered),
            Ok(AccrualAnswer::NotRegistered)
        )
    );
}

#[tokio::test]
async fn one_client_answers_many_calls_in_a_row() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(ORDER_PATH))
        .respond_with(ResponseTemplate::new(204))
        .expect(5)
        .mount(&server)
        .await;
    let client = client_for(config_for(&server.uri()));

    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(client.order(&order()).await);
    }

    assert!(answers
        .iter()
        .all(|a| *a == Ok(AccrualAnswer::NotRegistered)));
}

#[test]
fn a_client_for_an_https_address_is_refused_because_tls_is_not_built_in() {
    let config =
        AccrualClientConfig::new(url::Url::parse("https://accrual.example").expect("a URL"));

    let result = HttpAccrualClient::new(config);

    assert!(matches!(
        result,
        Err(adapters_accrual::AccrualConfigError::UnsupportedScheme(_))
    ));
}
