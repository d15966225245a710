//! JSON conventions shared by the endpoints: request bodies that must be JSON objects, money as
//! exact JSON numbers, RFC 3339 times, and problem bodies for request bodies that cannot be read.

use std::{future::Future, pin::Pin};

use actix_web::{
    dev::Payload, error::JsonPayloadError, http::StatusCode, web, FromRequest, HttpRequest,
};
use chrono::{DateTime, SecondsFormat, Utc};
use domain::Money;
use rust_decimal::Decimal;
use serde::{de::DeserializeOwned, Serializer};
use serde_json::{Map, Value};

use crate::problem::problem;

/// The largest request body accepted, compressed or not.
pub const BODY_LIMIT: usize = 64 * 1024;

/// A request body that must be a JSON object (sent as `application/json`), read into `T`.
/// serde alone would also fill a struct from a JSON array, by position.
#[derive(Debug)]
pub struct JsonObject<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for JsonObject<T> {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let object = web::Json::<Map<String, Value>>::from_request(req, payload);
        let req = req.clone();
        Box::pin(async move {
            let web::Json(object) = object.await?;
            serde_json::from_value(Value::Object(object))
                .map(JsonObject)
                .map_err(|e| json_error(JsonPayloadError::Deserialize(e), &req))
        })
    }
}

/// Amounts with fewer hundredths than this (below 10¹³ points) have at most 15 significant
/// digits, which a binary64 float holds exactly enough to give them back (`f64::DIGITS`).
const HUNDREDTHS_WRITTEN_AS_FLOAT: i128 = 1_000_000_000_000_000;

/// Writes money as a JSON number with no superfluous zeros: `500.5`, `42`, `729.98`.
///
/// Whole amounts are written as integers. An amount with a fraction and at most 15
/// significant digits is written through `f64`, without a text round trip: its hundredths are
/// exact in an `f64` (below 2⁵³), the division by 100 rounds correctly to the float nearest
/// the amount, and serde_json writes a float as the shortest digits that read back as it
/// (ryu). The amount's own digits are such a string, and no other string of at most 15
/// significant digits reads as the same float, so the digits written are the amount's. Larger
/// amounts go through their exact text.
///
/// # Errors
/// As the serializer's.
pub fn money<S: Serializer>(value: &Money, serializer: S) -> Result<S::Ok, S::Error> {
    // An amount always has scale 2: its mantissa counts hundredths.
    let hundredths = value.amount().mantissa();
    if hundredths % 100 == 0 {
        if let Ok(whole) = u64::try_from(hundredths / 100) {
            return serializer.serialize_u64(whole);
        }
    } else if (0..HUNDREDTHS_WRITTEN_AS_FLOAT).contains(&hundredths) {
        #[allow(clippy::cast_precision_loss)] // exact: below 2^53
        return serializer.serialize_f64(hundredths as f64 / 100.0);
    }
    rust_decimal::serde::arbitrary_precision::serialize(&value.amount().normalize(), serializer)
}

/// Writes optional money; pair with `skip_serializing_if = "Option::is_none"`.
///
/// # Errors
/// As the serializer's.
pub fn optional_money<S: Serializer>(
    value: &Option<Money>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => money(value, serializer),
        None => serializer.serialize_none(),
    }
}

/// Writes a time in RFC 3339 with second precision, in UTC.
///
/// # Errors
/// As the serializer's.
pub fn rfc3339<S: Serializer>(value: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&value.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// Reads an exact decimal out of a JSON number (kept verbatim by serde_json's arbitrary
/// precision), including exponent forms such as `1e2`.
pub fn decimal(number: &serde_json::Number) -> Option<Decimal> {
    let text = number.to_string();
    Decimal::from_str_exact(&text)
        .ok()
        .or_else(|| Decimal::from_scientific(&text).ok())
}

/// Answers a body that is not the JSON expected: 413 when too large, 400 otherwise.
pub fn json_error(error: JsonPayloadError, _: &HttpRequest) -> actix_web::Error {
    let status = match &error {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        _ => StatusCode::BAD_REQUEST,
    };
    let detail = error.to_string();
    actix_web::error::InternalError::from_response(error, problem(status, detail)).into()
}

#[cfg(test)]
mod tests {
    use rust_decimal_macros::dec;

    use super::*;

    #[derive(serde::Serialize)]
    struct Amount {
        #[serde(serialize_with = "money")]
        value: Money,
    }

    fn json(value: Decimal) -> String {
        serde_json::to_string(&Amount {
            value: Money::new(value).expect("valid"),
        })
        .expect("json")
    }

    #[test]
    fn money_is_written_as_an_exact_number_without_trailing_zeros() {
        assert_eq!(json(dec!(500.50)), r#"{"value":500.5}"#);
        assert_eq!(json(dec!(42.00)), r#"{"value":42}"#);
        assert_eq!(json(dec!(729.98)), r#"{"value":729.98}"#);
        assert_eq!(
            json(dec!(999999999999999999.99)),
            r#"{"value":999999999999999999.99}"#
        );
        assert_eq!(json(dec!(0)), r#"{"value":0}"#);
    }

    /// Every amount is written as its exact text would be, whichever way it is written.
    #[test]
    fn money_is_written_as_its_exact_text() {
        fn exact(value: Decimal) -> String {
            format!(r#"{{"value":{}}}"#, value.normalize())
        }
        let boundary = Decimal::from_i128_with_scale(HUNDREDTHS_WRITTEN_AS_FLOAT, 2);
        let around = [-2i128, -1, 0, 1, 2]
            .into_iter()
            .map(|step| boundary + Decimal::from_i128_with_scale(step, 2));
        let chosen = [
            dec!(0.01),
            dec!(0.1),
            dec!(0.99),
            dec!(1.01),
            dec!(9999999999999.99),
            dec!(9999999999999.9),
            dec!(1234567890123.45),
            dec!(4503599627370.49),
            dec!(999999999999999999.99),
            dec!(100000000000000000),
            Decimal::ZERO,
        ];
        for value in chosen.into_iter().chain(around) {
            assert_eq!(json(value), exact(value), "{value}");
        }
        proptest::proptest!(|(hundredths in 0i128..100_000_000_000_000_000_000)| {
            let value = Decimal::from_i128_with_scale(hundredths, 2);
            proptest::prop_assert_eq!(json(value), exact(value));
        });
        proptest::proptest!(|(hundredths in 0i128..2 * HUNDREDTHS_WRITTEN_AS_FLOAT)| {
            let value = Decimal::from_i128_with_scale(hundredths, 2);
            proptest::prop_assert_eq!(json(value), exact(value));
        });
    }

    #[test]
    fn numbers_are_read_exactly() {
        let read = |text: &str| {
            decimal(&serde_json::from_str::<serde_json::Number>(text).expect("number"))
        };
        assert_eq!(read("751"), Some(dec!(751)));
        assert_eq!(read("0.1"), Some(dec!(0.1)));
        assert_eq!(
            read("123456789012345678.99"),
            Some(dec!(123456789012345678.99))
        );
        assert_eq!(read("1e2"), Some(dec!(100)));
        assert_eq!(read("-5"), Some(dec!(-5)));
    }
}
