//! The schemas and responses that several operations share: amounts of points, order numbers,
//! and the error answers every customer operation can give. The route modules take them from
//! here for their annotations, and [`crate::openapi`] lists the responses among the document's
//! components.

use utoipa::{
    openapi::schema::{ObjectBuilder, SchemaFormat, Type},
    ToResponse, ToSchema,
};

use crate::problem::Problem;

/// Amounts are below 10^18 points: they are stored as `NUMERIC(20, 2)`.
const MONEY_EXCLUSIVE_MAXIMUM: i64 = 1_000_000_000_000_000_000;

/// The `format` of order numbers: digits whose Luhn checksum is right. JSON Schema cannot state
/// the checksum; a validator that does not know the format ignores it, and `scripts/fuzz.sh`
/// teaches it to Schemathesis.
pub const ORDER_NUMBER_FORMAT: &str = "luhn";

/// The schema of an amount of points: an exact JSON number, at most two decimal places.
#[must_use]
pub fn money_schema() -> utoipa::openapi::schema::Object {
    ObjectBuilder::new()
        .schema_type(Type::Number)
        .minimum(Some(0))
        .exclusive_maximum(Some(MONEY_EXCLUSIVE_MAXIMUM))
        .multiple_of(Some(0.01))
        .description(Some(
            "Points, an exact decimal number with at most two decimal places (`729.98`, `42`).",
        ))
        .examples([serde_json::json!(729.98)])
        .build()
}

/// A positive amount of points, as a withdrawal's sum: exactly what `domain::Money` accepts,
/// less zero.
#[must_use]
pub fn positive_money_schema() -> utoipa::openapi::schema::Object {
    ObjectBuilder::new()
        .schema_type(Type::Number)
        .exclusive_minimum(Some(0))
        .exclusive_maximum(Some(MONEY_EXCLUSIVE_MAXIMUM))
        .multiple_of(Some(0.01))
        .description(Some(
            "Points to spend: an exact decimal number greater than zero and less than 10^18, \
            with at most two decimal places (a multiple of 0.01).",
        ))
        .examples([serde_json::json!(751)])
        .build()
}

/// A withdrawal's order number: 1 to 64 digits, exactly as given.
#[must_use]
pub fn order_number_schema() -> utoipa::openapi::schema::Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(domain::MAX_ORDER_NUMBER_LEN))
        .pattern(Some(r"^[0-9]{1,64}$"))
        .format(Some(SchemaFormat::Custom(ORDER_NUMBER_FORMAT.into())))
        .description(Some(
            "The number of the new order the points pay for: 1 to 64 digits, no spaces, whose \
            Luhn checksum is right (JSON Schema cannot state the checksum: a number that fails \
            it is refused with 422).",
        ))
        .examples([serde_json::json!("2377225624")])
        .build()
}

/// The text body of an order upload: digits, surrounding whitespace ignored.
#[derive(Debug)]
pub struct OrderNumberText;

impl utoipa::PartialSchema for OrderNumberText {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .pattern(Some(r"^\s*[0-9]{1,64}\s*$"))
            .format(Some(SchemaFormat::Custom(ORDER_NUMBER_FORMAT.into())))
            .description(Some(
                "1 to 64 digits whose Luhn checksum is right, surrounding whitespace ignored \
                (JSON Schema cannot state the checksum: a number that fails it is refused with 422).",
            ))
            .examples([serde_json::json!("12345678903")])
            .into()
    }
}

impl ToSchema for OrderNumberText {}

/// No valid credentials.
#[derive(Debug, ToResponse)]
#[response(
    description = "No valid credentials: the token is missing, forged or expired.",
    content_type = "application/problem+json",
    headers(("WWW-Authenticate" = String, description = "`Bearer`")),
    example = json!({
        "type": "about:blank",
        "title": "Unauthorized",
        "status": 401,
        "detail": "no credentials: send the token as `Authorization: Bearer <token>` or in the `token` cookie"
    })
)]
pub struct Unauthorized(pub Problem);

/// The customer sent requests faster than their limit.
#[derive(Debug, ToResponse)]
#[response(
    description = "The customer sent requests faster than their limit allows (see the \
        `RateLimit-Policy` field of any answer); nothing was done. The refusal is held a quarter \
        of a second before it is sent.",
    content_type = "application/problem+json",
    headers(
        ("Retry-After" = u64, description = "Seconds to wait before the next request."),
        ("RateLimit-Policy" = String, description = "The limit: `\"customer\";q=<requests>;w=<seconds>` (IETF draft-ietf-httpapi-ratelimit-headers)."),
        ("RateLimit" = String, description = "Where the customer stands: `\"customer\";r=<remaining>;t=<seconds until the whole quota is back>`.")
    ),
    example = json!({
        "type": "about:blank",
        "title": "Too Many Requests",
        "status": 429,
        "detail": "too many requests: 200 per 2 s allowed; try again in 1 s"
    })
)]
pub struct TooManyRequests(pub Problem);

/// The request body is over the limit.
#[derive(Debug, ToResponse)]
#[response(
    description = "The request body is larger than 64 KiB.",
    content_type = "application/problem+json",
    example = json!({
        "type": "about:blank",
        "title": "Payload Too Large",
        "status": 413,
        "detail": "JSON payload (70000 bytes) is larger than allowed (limit: 65536 bytes)."
    })
)]
pub struct PayloadTooLarge(pub Problem);

/// An internal failure.
#[derive(Debug, ToResponse)]
#[response(
    description = "An internal failure; nothing was changed. The cause is in the service's log \
        under the answer's `x-request-id`.",
    content_type = "application/problem+json",
    example = json!({"type": "about:blank", "title": "Internal Server Error", "status": 500})
)]
pub struct Internal(pub Problem);

/// The database is out of reach, or the service sheds load.
#[derive(Debug, ToResponse)]
#[response(
    description = "The database is out of reach or busy, or (registration and sign-in) too many \
        passwords are waiting to be checked. Worth retrying after `Retry-After`. A read changed \
        nothing. An upload, a withdrawal or a registration may have been stored all the same \
        when the database went away before confirming it: its outcome is unknown, and the \
        client repeats the same request. That is safe: an order number is stored once, and the \
        repeat of a stored upload or withdrawal answers 200 (a stored registration: 409).",
    content_type = "application/problem+json",
    headers(("Retry-After" = u64, description = "Seconds to wait before retrying.")),
    example = json!({"type": "about:blank", "title": "Service Unavailable", "status": 503})
)]
pub struct Unavailable(pub Problem);
