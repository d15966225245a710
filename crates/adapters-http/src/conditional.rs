//! Conditional reads and paged lists.
//!
//! **ETags.** The balance and both lists carry an `ETag`, a hash of what the body says, taken
//! from the items before they are written as JSON; a request whose `If-None-Match` names it is
//! answered `304 Not Modified` with no body. Every instance of one build computes the same tag
//! for the same content (foldhash's quality hash with a fixed seed: the tag only tells one state
//! of a customer's own data from the next, so a fast 64-bit hash serves, at a third of what
//! SipHash cost a list); after an upgrade a client may get one 200 where a 304 would have done.
//! `Cache-Control: private, no-cache`: no shared cache keeps a customer's data, and a browser
//! asks again each time, conditionally.
//!
//! **Pages.** With no parameters a list is whole, as the contract has it. `?limit=N` (1 to
//! [`MAX_PAGE`]) answers the newest N items, and `Link: <…?limit=N&before=C>; rel="next"`
//! (RFC 8288) when there are more; `before` is an opaque cursor from such a link. Pages follow
//! the order of the whole list (time, then storage id), so items added meanwhile never make a
//! page skip or repeat one.

use std::{
    hash::{BuildHasher, Hash},
    num::NonZeroU32,
};

use actix_web::{
    http::{
        header::{self, HeaderValue},
        StatusCode,
    },
    HttpRequest, HttpResponse, ResponseError,
};
use application::ports::{PageCursor, PageRequest};
use chrono::DateTime;
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;

use crate::problem::problem;

/// The most items one page may hold.
pub const MAX_PAGE: u32 = 1000;

/// The parameters of a paged list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Answer one page of at most this many items (1 to 1000), newest first, with a `Link`
    /// to the next; without it the whole list.
    #[param(minimum = 1, maximum = 1000, example = 50)]
    limit: Option<u32>,
    /// Where the page begins: the cursor from the `Link` of the previous page (opaque).
    /// Without `limit`, pages of 100.
    #[param(
        pattern = r"^[0-9]{1,16}\.[0-9]{1,18}$",
        example = "1733234567123456.42"
    )]
    before: Option<String>,
}

/// Why a page was not understood.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("limit must be between 1 and {MAX_PAGE}")]
    Limit,
    #[error("before must be a cursor from a Link header of this list")]
    Cursor,
}

impl ResponseError for PageError {
    fn status_code(&self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }

    fn error_response(&self) -> HttpResponse {
        problem(self.status_code(), self.to_string())
    }
}

/// The size of a page asked for with a cursor but no limit.
const DEFAULT_PAGE: u32 = 100;

impl PageQuery {
    /// The page asked for, or `None` for the whole list.
    ///
    /// # Errors
    /// [`PageError`] for a limit out of range or a cursor that is not one.
    pub fn request(&self) -> Result<Option<PageRequest>, PageError> {
        if self.limit.is_none() && self.before.is_none() {
            return Ok(None);
        }
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        let limit = NonZeroU32::new(limit)
            .filter(|limit| limit.get() <= MAX_PAGE)
            .ok_or(PageError::Limit)?;
        let before = self
            .before
            .as_deref()
            .map(|cursor| decode_cursor(cursor).ok_or(PageError::Cursor))
            .transpose()?;
        Ok(Some(PageRequest { limit, before }))
    }
}

/// A cursor as text: microseconds since the epoch and the storage id, `<µs>.<id>`.
fn encode_cursor(cursor: &PageCursor) -> String {
    format!("{}.{}", cursor.at.timestamp_micros(), cursor.id)
}

fn decode_cursor(text: &str) -> Option<PageCursor> {
    let (micros, id) = text.split_once('.')?;
    Some(PageCursor {
        at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        id: id.parse().ok()?,
    })
}

/// The tag of a body saying `content`.
fn etag(content: &impl Hash) -> String {
    let tag = foldhash::quality::FixedState::with_seed(0).hash_one(content);
    format!("\"{tag:016x}\"")
}

/// Whether `If-None-Match` names `tag` (or is `*`); weak tags compare as strong ones, as they
/// do for GET.
fn matches(req: &HttpRequest, tag: &str) -> bool {
    req.headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|candidate| candidate.trim())
        .any(|candidate| candidate == "*" || candidate.trim_start_matches("W/") == tag)
}

/// A JSON answer with its `ETag` (of `content`, which says the same as `body`), or `304` when
/// the client has it already; with a `Link` to the next page when there is one.
pub fn json_or_not_modified(
    req: &HttpRequest,
    content: &impl Hash,
    body: &impl Serialize,
    next: Option<(&PageCursor, NonZeroU32)>,
) -> HttpResponse {
    let link = next.map(|(cursor, limit)| {
        format!(
            "<{}?limit={limit}&before={}>; rel=\"next\"",
            req.path(),
            encode_cursor(cursor)
        )
    });
    let tag = etag(&(content, &link));
    let not_modified = matches(req, &tag);
    let mut response = if not_modified {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response.insert_header((header::CACHE_CONTROL, "private, no-cache"));
    if let Ok(value) = HeaderValue::from_str(&tag) {
        response.insert_header((header::ETAG, value));
    }
    if let Some(value) = link.and_then(|link| HeaderValue::from_str(&link).ok()) {
        response.insert_header((header::LINK, value));
    }
    if not_modified {
        response.finish()
    } else {
        response.json(body)
    }
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;
    use chrono::Utc;

    use super::*;

    #[test]
    fn a_cursor_reads_back_as_written() {
        let cursor = PageCursor {
            at: DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).expect("time"),
            id: 42,
        };

        assert_eq!(decode_cursor(&encode_cursor(&cursor)), Some(cursor));
        assert_eq!(decode_cursor("garbage"), None);
        assert_eq!(decode_cursor("1.x"), None);
        // Whatever the document's pattern allows reads as a cursor.
        assert!(decode_cursor("9999999999999999.999999999999999999").is_some());
    }

    #[test]
    fn limits_out_of_range_are_refused_and_no_parameter_means_the_whole_list() {
        let query = |limit, before: Option<&str>| PageQuery {
            limit,
            before: before.map(ToOwned::to_owned),
        };

        assert!(query(None, None).request().expect("whole").is_none());
        assert!(matches!(
            query(Some(0), None).request(),
            Err(PageError::Limit)
        ));
        assert!(matches!(
            query(Some(1001), None).request(),
            Err(PageError::Limit)
        ));
        assert!(matches!(
            query(Some(5), Some("x")).request(),
            Err(PageError::Cursor)
        ));
        assert_eq!(
            query(None, Some("1.2"))
                .request()
                .expect("a page")
                .map(|p| p.limit.get()),
            Some(DEFAULT_PAGE)
        );
    }

    #[test]
    fn the_same_content_has_the_same_tag_and_other_content_another() {
        let request = TestRequest::get()
            .uri("/api/user/balance")
            .to_http_request();
        let first = json_or_not_modified(&request, &(1, 2), &[1, 2], None);
        let again = json_or_not_modified(&request, &(1, 2), &[1, 2], None);
        let other = json_or_not_modified(&request, &(1, 3), &[1, 3], None);

        let tag = |r: &HttpResponse| r.headers().get(header::ETAG).cloned();
        assert_eq!(tag(&first), tag(&again));
        assert_ne!(tag(&first), tag(&other));
    }

    #[test]
    fn a_request_naming_the_tag_is_answered_not_modified() {
        let plain = TestRequest::get()
            .uri("/api/user/balance")
            .to_http_request();
        let tag = json_or_not_modified(&plain, &7, &7, None)
            .headers()
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(ToOwned::to_owned)
            .expect("a tag");
        let conditional = TestRequest::get()
            .uri("/api/user/balance")
            .insert_header((header::IF_NONE_MATCH, format!("\"other\", W/{tag}")))
            .to_http_request();

        let answer = json_or_not_modified(&conditional, &7, &7, None);

        assert_eq!(answer.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(
            answer
                .headers()
                .get(header::ETAG)
                .and_then(|v| v.to_str().ok()),
            Some(tag.as_str())
        );
    }
}
