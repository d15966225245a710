//! `GET /api/user/events`: the customer's changes as they happen, as Server-Sent Events.

use std::{convert::Infallible, time::Duration};

use actix_web::{
    http::{header, StatusCode},
    web, HttpRequest, HttpResponse, Responder, ResponseError,
};
use actix_web_lab::sse;
use application::{
    ports::events::Change,
    use_cases::{OpenStreamError, StreamItem, StreamStart},
};
use utoipa::{
    openapi::{
        schema::{ObjectBuilder, OneOfBuilder, Schema, Type},
        Ref, RefOr,
    },
    PartialSchema, ToSchema,
};

use crate::{
    limits::Refused,
    problem::{error_problem, repository_status},
    routes::{balance::BalanceBody, orders::OrderItem},
    schemas::{Internal, TooManyRequests, Unauthorized, Unavailable},
    AppState, AuthenticatedUser,
};

/// How long a stream may stay silent before a comment is sent, so that proxies that close
/// idle connections keep it open. It is also how a client that went away is found: the
/// server learns it only when a write fails, the second after the client left, so a stream's
/// place is freed within two heartbeats.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// How soon a client is asked to reconnect after its stream ended.
const RETRY: Duration = Duration::from_secs(1);

/// The `Retry-After` of a refused stream.
const REFUSED_RETRY_AFTER_SECONDS: u32 = 10;

/// The form of a message's `id`: a [`application::ports::events::Cursor`] as it prints,
/// positions (a transaction and an event, both below 10^18) joined by dots, the first what
/// was delivered through and the others (at most 32) the transactions delivered ahead of it.
const EVENT_ID_PATTERN: &str = r"^[0-9]{1,18}-[0-9]{1,18}(\.[0-9]{1,18}-[0-9]{1,18}){0,32}$";

/// One message of the stream, as an `EventSource` client receives it: its `event` name, its
/// `id` and its `data`, a JSON document whose schema depends on the name.
#[derive(Debug)]
pub struct EventMessage;

impl EventMessage {
    /// The variant of the messages named `names`, whose data `data` describes.
    fn variant(names: &[&str], data: impl Into<RefOr<Schema>>) -> Schema {
        ObjectBuilder::new()
            .property(
                "event",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(names.iter().copied())),
            )
            .required("event")
            .property(
                "id",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(EVENT_ID_PATTERN)),
            )
            .required("id")
            .property(
                "data",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .content_media_type("application/json")
                    .content_schema(Some(data)),
            )
            .required("data")
            .into()
    }
}

impl PartialSchema for EventMessage {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(Self::variant(
                &["order"],
                Ref::from_schema_name(OrderItem::name()),
            ))
            .item(Self::variant(
                &["balance"],
                Ref::from_schema_name(BalanceBody::name()),
            ))
            .item(Self::variant(
                &["ready", "reset"],
                ObjectBuilder::new()
                    .schema_type(Type::Object)
                    .max_properties(Some(0)),
            ))
            .description(Some(
                "One message: `event` names what changed, `data` is a JSON document (the order, \
                the balance, or `{}` for `ready` and `reset`) and `id` is what to send back in \
                `Last-Event-ID`.",
            ))
            .into()
    }
}

impl ToSchema for EventMessage {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((OrderItem::name().into(), OrderItem::schema()));
        <OrderItem as ToSchema>::schemas(schemas);
        schemas.push((BalanceBody::name().into(), BalanceBody::schema()));
        <BalanceBody as ToSchema>::schemas(schemas);
    }
}

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct EventsError(#[from] OpenStreamError);

impl ResponseError for EventsError {
    fn status_code(&self) -> StatusCode {
        match &self.0 {
            OpenStreamError::CustomerLimit(_) | OpenStreamError::InstanceLimit(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            OpenStreamError::Stopping => StatusCode::SERVICE_UNAVAILABLE,
            OpenStreamError::Repository(error) => repository_status(error),
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = error_problem(self);
        // Not by `status_code`: for a database error that would log it a second time.
        if let OpenStreamError::CustomerLimit(_) | OpenStreamError::InstanceLimit(_) = &self.0 {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, REFUSED_RETRY_AFTER_SECONDS.into());
            response.extensions_mut().insert(Refused::EventStreams);
        }
        response
    }
}

/// Where the stream starts, by `Last-Event-ID`: no header or an empty one (what EventSource
/// sends after an event that cleared its id) is now, an id this endpoint sent is after it, and
/// anything else is a position the log cannot place.
fn stream_start(req: &HttpRequest) -> StreamStart {
    let Some(value) = req.headers().get("last-event-id") else {
        return StreamStart::Now;
    };
    match value.to_str() {
        Ok("") => StreamStart::Now,
        Ok(text) => text
            .parse()
            .map_or(StreamStart::Unknown, StreamStart::After),
        Err(_) => StreamStart::Unknown,
    }
}

/// An item of the stream as an SSE message.
fn message(item: StreamItem) -> sse::Event {
    let data = match item {
        StreamItem::Ready(at) => sse::Data::new("{}").event("ready").id(at.to_string()),
        StreamItem::Reset(at) => sse::Data::new("{}").event("reset").id(at.to_string()),
        StreamItem::Event(event, cursor) => {
            let id = cursor.to_string();
            let data = match event.change {
                Change::Order(order) => {
                    sse::Data::new_json(OrderItem::from(order)).map(|d| d.event("order"))
                }
                Change::Balance(balance) => {
                    sse::Data::new_json(BalanceBody::from(balance)).map(|d| d.event("balance"))
                }
            };
            match data {
                Ok(data) => data.id(id),
                // Serialising these types cannot fail; say so rather than send nothing.
                Err(error) => sse::Data::new(format!("{{\"error\":\"{error}\"}}"))
                    .event("error")
                    .id(id),
            }
        }
    };
    sse::Event::Data(data)
}

/// Streams the customer's changes.
#[utoipa::path(
    get,
    path = "/api/user/events",
    tag = "events",
    operation_id = "events",
    summary = "Follow changes as they happen",
    description = "A stream of Server-Sent Events (`text/event-stream`, e.g. a browser's \
        `EventSource`) of what changes for the customer, written with the change itself, \
        whichever instance made it:\n\n\
        - `order`: an order was uploaded, or its status or accrual changed; the data is the \
        order as `GET /api/user/orders` lists it.\n\
        - `balance`: the balance after a credit or a withdrawal; the data is what \
        `GET /api/user/balance` answers.\n\
        - `ready`: the first message of a stream opened without `Last-Event-ID`.\n\
        - `reset`: the events since `Last-Event-ID` are no longer kept (older than the \
        retention), or `Last-Event-ID` is not an id this endpoint sent: load the orders and \
        the balance again.\n\n\
        Every message has an `id`. A client that reconnects with the last one it received in \
        `Last-Event-ID` (EventSource does so by itself) gets every event it missed, then the \
        new ones, once each. An event is sent as soon as its change commits; events of \
        changes committed at nearly the same moment can arrive in either order. A comment is \
        sent after 10 s of silence. When the instance stops, its streams end; the client \
        reconnects (to another instance).",
    params(
        ("Last-Event-ID" = Option<String>, Header, nullable = false,
            description = "The `id` of the last message received, to resume after it. A value \
                that is not an id this endpoint sent opens the stream with `reset`.",
            example = "741-2051.743-2056"),
    ),
    responses(
        (status = 200, description = "The stream.", content_type = "text/event-stream", body = EventMessage,
            example = "event: ready\nid: 741-0\ndata: {}\n\nevent: order\nid: 745-2052\ndata: {\"number\":\"9278923470\",\"status\":\"PROCESSED\",\"accrual\":500,\"uploaded_at\":\"2020-12-10T12:15:45Z\"}\n\n"),
        (status = 401, response = Unauthorized),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = []), ("cookie" = []))
)]
#[tracing::instrument(name = "events", skip_all, fields(user_id = %user.0))]
pub async fn events(
    state: web::Data<AppState>,
    user: AuthenticatedUser,
    req: HttpRequest,
) -> Result<HttpResponse, EventsError> {
    let stream = state.events.open_stream(user.0, stream_start(&req)).await?;
    let messages = futures::stream::unfold(stream, |mut stream| async move {
        match stream.next().await {
            Ok(Some(item)) => Some((Ok::<_, Infallible>(message(item)), stream)),
            Ok(None) => None,
            Err(error) => {
                tracing::debug!(%error, "event stream ended: the log could not be read");
                None
            }
        }
    });
    Ok(sse::Sse::from_stream(messages)
        .with_keep_alive(HEARTBEAT)
        .with_retry_duration(RETRY)
        .respond_to(&req))
}
