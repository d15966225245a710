//! `GET /api/user/events`: the customer's changes as they happen, as Server-Sent Events.

use std::{convert::Infallible, time::Duration};

use actix_web::{
    http::{header, StatusCode},
    web, HttpRequest, HttpResponse, Responder, ResponseError,
};
use actix_web_lab::sse;
use application::{
    ports::events::{Change, EventPosition},
    use_cases::{OpenStreamError, StreamItem},
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

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("Last-Event-ID must be the id of an event this endpoint sent")]
    BadLastEventId,
    #[error("{0}")]
    Open(#[from] OpenStreamError),
}

impl ResponseError for EventsError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadLastEventId => StatusCode::BAD_REQUEST,
            Self::Open(OpenStreamError::CustomerLimit(_) | OpenStreamError::InstanceLimit(_)) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::Open(OpenStreamError::Stopping) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Open(OpenStreamError::Repository(error)) => repository_status(error),
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = error_problem(self);
        if let Self::Open(OpenStreamError::CustomerLimit(_) | OpenStreamError::InstanceLimit(_)) =
            self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, REFUSED_RETRY_AFTER_SECONDS.into());
            response.extensions_mut().insert(Refused::EventStreams);
        }
        response
    }
}

/// The position a reconnecting client names in `Last-Event-ID`, if any.
fn last_event_id(req: &HttpRequest) -> Result<Option<EventPosition>, EventsError> {
    let Some(value) = req.headers().get("last-event-id") else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| EventsError::BadLastEventId)?;
    if value.is_empty() {
        // What EventSource sends after an event that cleared its id: no position.
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|()| EventsError::BadLastEventId)
}

/// An item of the stream as an SSE message.
fn message(item: StreamItem) -> sse::Event {
    let data = match item {
        StreamItem::Ready(at) => sse::Data::new("{}").event("ready").id(at.to_string()),
        StreamItem::Reset(at) => sse::Data::new("{}").event("reset").id(at.to_string()),
        StreamItem::Event(event) => {
            let id = event.position.to_string();
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
        retention): load the orders and the balance again.\n\n\
        Every message has an `id`. A client that reconnects with the last one it received in \
        `Last-Event-ID` (EventSource does so by itself) gets every event it missed, then the \
        new ones, in order and once each. A comment is sent after 10 s of silence. When the \
        instance stops, its streams end; the client reconnects (to another instance).",
    params(
        ("Last-Event-ID" = Option<String>, Header,
            description = "The `id` of the last message received, to resume after it.",
            example = "741-2051"),
    ),
    responses(
        (status = 200, description = "The stream.", content_type = "text/event-stream", body = String,
            example = "event: ready\nid: 741-0\ndata: {}\n\nevent: order\nid: 745-2052\ndata: {\"number\":\"9278923470\",\"status\":\"PROCESSED\",\"accrual\":500,\"uploaded_at\":\"2020-12-10T12:15:45Z\"}\n\n"),
        (status = 400, description = "`Last-Event-ID` is not an id this endpoint sent.",
            body = crate::problem::Problem, content_type = "application/problem+json",
            example = json!({"type": "about:blank", "title": "Bad Request", "status": 400, "detail": "Last-Event-ID must be the id of an event this endpoint sent"})),
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
    let last_seen = last_event_id(&req)?;
    let stream = state.events.open_stream(user.0, last_seen).await?;
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
