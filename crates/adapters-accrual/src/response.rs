//! Reading the accrual system's replies: the JSON body of a `200`, the `Retry-After` header and
//! the advertised rate limit of a `429`. Pure functions, free of I/O.

use std::time::Duration;

use application::ports::accrual::{AccrualAnswer, AccrualClientError};
use chrono::{DateTime, Utc};
use domain::{AccrualStatus, Money, MoneyError, OrderNumber};
use rust_decimal::Decimal;
use serde::Deserialize;

/// The body of a `200` reply.
#[derive(Debug, Deserialize)]
struct OrderReply {
    order: String,
    status: String,
    #[serde(default)]
    accrual: Option<ExactDecimal>,
}

/// A JSON number read digit for digit, without passing through a float.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
struct ExactDecimal(#[serde(with = "rust_decimal::serde::arbitrary_precision")] Decimal);

/// Interprets the body of a `200` reply about `number`.
pub(crate) fn parse_known(
    number: &OrderNumber,
    body: &[u8],
) -> Result<AccrualAnswer, AccrualClientError> {
    let reply: OrderReply = serde_json::from_slice(body)
        .map_err(|e| AccrualClientError::InvalidAnswer(format!("unreadable order reply: {e}")))?;
    if reply.order != number.as_str() {
        return Err(AccrualClientError::InvalidAnswer(format!(
            "asked about order {number} but the reply is about order {:?}",
            reply.order
        )));
    }
    let status = parse_status(&reply.status)?;
    let accrual = reply
        .accrual
        .map(|ExactDecimal(v)| to_money(v))
        .transpose()?;
    Ok(AccrualAnswer::Known { status, accrual })
}

fn parse_status(text: &str) -> Result<AccrualStatus, AccrualClientError> {
    match text {
        "REGISTERED" => Ok(AccrualStatus::Registered),
        "INVALID" => Ok(AccrualStatus::Invalid),
        "PROCESSING" => Ok(AccrualStatus::Processing),
        "PROCESSED" => Ok(AccrualStatus::Processed),
        other => Err(AccrualClientError::InvalidAnswer(format!(
            "unknown order status {other:?}"
        ))),
    }
}

/// An accrual as money: rounded half away from zero to cents, never negative.
fn to_money(value: Decimal) -> Result<Money, AccrualClientError> {
    if value.is_sign_negative() && !value.is_zero() {
        return Err(AccrualClientError::InvalidAnswer(format!(
            "negative accrual {value}"
        )));
    }
    Money::rounded(value).map_err(|e| {
        let why = match e {
            MoneyError::TooLarge => "too large",
            MoneyError::Negative => "negative",
            MoneyError::TooPrecise => "too precise",
        };
        AccrualClientError::InvalidAnswer(format!("accrual {value} is {why}"))
    })
}

/// How long a `Retry-After` header value asks to wait, measured from `now`: either whole seconds
/// or an HTTP date (a date already past means no wait). `None` when the value is missing or
/// unreadable.
pub(crate) fn parse_retry_after(value: Option<&str>, now: DateTime<Utc>) -> Option<Duration> {
    let value = value?.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let date = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (date.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

/// The limit a `429` body advertises: the first integer after "No more than" (in any letter
/// case), as in "No more than 10 requests per minute allowed".
pub(crate) fn parse_per_minute(body: &str) -> Option<u32> {
    const MARKER: &str = "no more than";
    let start = body.to_ascii_lowercase().find(MARKER)? + MARKER.len();
    let rest = body.get(start..)?;
    let digits_start = rest.find(|c: char| c.is_ascii_digit())?;
    let digits = rest.get(digits_start..)?;
    let digits_end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits.get(..digits_end)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use rust_decimal_macros::dec;

    fn order() -> OrderNumber {
        OrderNumber::parse("12345678903").expect("a valid order number")
    }

    fn known(body: &str) -> Result<AccrualAnswer, AccrualClientError> {
        parse_known(&order(), body.as_bytes())
    }

    fn accrual_of(body: &str) -> Option<Decimal> {
        match known(body) {
            Ok(AccrualAnswer::Known { accrual, .. }) => accrual.map(Money::amount),
            other => panic!("expected a known order, got {other:?}"),
        }
    }

    fn is_invalid(result: &Result<AccrualAnswer, AccrualClientError>) -> bool {
        matches!(result, Err(AccrualClientError::InvalidAnswer(_)))
    }

    #[test]
    fn an_accrual_with_two_places_is_read_exactly() {
        let body = r#"{"order":"12345678903","status":"PROCESSED","accrual":729.98}"#;
        assert_eq!(
            accrual_of(body).map(|d| d.to_string()),
            Some("729.98".to_owned())
        );
    }

    #[test]
    fn a_large_accrual_is_read_exactly() {
        let body = r#"{"order":"12345678903","status":"PROCESSED","accrual":12345678901234.56}"#;
        assert_eq!(accrual_of(body), Some(dec!(12345678901234.56)));
    }

    #[test]
    fn an_accrual_with_more_places_is_rounded_half_away_from_zero() {
        let body = r#"{"order":"12345678903","status":"PROCESSED","accrual":729.975}"#;
        assert_eq!(accrual_of(body), Some(dec!(729.98)));
    }

    #[test]
    fn an_accrual_in_exponent_notation_is_understood() {
        let body = r#"{"order":"12345678903","status":"PROCESSED","accrual":5e2}"#;
        assert_eq!(accrual_of(body), Some(dec!(500)));
    }

    #[test]
    fn a_null_accrual_means_none() {
        let body = r#"{"order":"12345678903","status":"PROCESSED","accrual":null}"#;
        assert_eq!(accrual_of(body), None);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let body = r#"{"order":"12345678903","status":"REGISTERED","extra":[1,2]}"#;
        assert_eq!(
            known(body),
            Ok(AccrualAnswer::Known {
                status: AccrualStatus::Registered,
                accrual: None
            })
        );
    }

    #[test]
    fn a_tiny_negative_accrual_is_refused_even_though_it_rounds_to_zero() {
        let body = r#"{"order":"12345678903","status":"PROCESSED","accrual":-0.001}"#;
        assert!(is_invalid(&known(body)));
    }

    #[test]
    fn an_accrual_too_large_for_money_is_refused() {
        let body = r#"{"order":"12345678903","status":"PROCESSED","accrual":1000000000000000000}"#;
        assert!(is_invalid(&known(body)));
    }

    #[test]
    fn a_reply_without_order_or_status_is_refused() {
        assert!(is_invalid(&known(r#"{"status":"PROCESSED"}"#)));
        assert!(is_invalid(&known(r#"{"order":"12345678903"}"#)));
    }

    #[test]
    fn a_lowercase_status_is_refused() {
        assert!(is_invalid(&known(
            r#"{"order":"12345678903","status":"processed"}"#
        )));
    }

    #[test]
    fn retry_after_in_seconds_is_read() {
        let now = Utc::now();
        assert_eq!(
            parse_retry_after(Some("7"), now),
            Some(Duration::from_secs(7))
        );
        assert_eq!(parse_retry_after(Some(" 0 "), now), Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_as_an_http_date_is_measured_from_now() {
        let now = Utc
            .with_ymd_and_hms(2015, 10, 21, 7, 27, 30)
            .single()
            .expect("a date");
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT"), now),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn retry_after_as_a_past_http_date_means_no_wait() {
        let now = Utc
            .with_ymd_and_hms(2015, 10, 21, 8, 0, 0)
            .single()
            .expect("a date");
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT"), now),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn an_unreadable_or_missing_retry_after_is_none() {
        let now = Utc::now();
        for value in ["", "soon", "-5", "7.5", "1e3", "99999999999999999999999"] {
            assert_eq!(parse_retry_after(Some(value), now), None, "{value:?}");
        }
        assert_eq!(parse_retry_after(None, now), None);
    }

    #[test]
    fn the_advertised_limit_is_the_first_integer_after_no_more_than() {
        assert_eq!(
            parse_per_minute("No more than 10 requests per minute allowed"),
            Some(10)
        );
        assert_eq!(
            parse_per_minute("error: no more than   250 requests per minute allowed\n"),
            Some(250)
        );
        assert_eq!(parse_per_minute("No more than: 3/min"), Some(3));
    }

    #[test]
    fn a_body_without_a_limit_advertises_none() {
        assert_eq!(parse_per_minute(""), None);
        assert_eq!(parse_per_minute("Too Many Requests"), None);
        assert_eq!(parse_per_minute("10 requests per minute"), None);
        assert_eq!(parse_per_minute("No more than ten requests"), None);
        assert_eq!(parse_per_minute("No more than 99999999999 requests"), None);
    }
}
