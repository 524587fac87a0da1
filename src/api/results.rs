//! `/v1/jobs/{id}/results`: the artifact list and streamed downloads with byte ranges and
//! conditional requests (`Range`, `If-None-Match`, read with actix's typed headers), for `GET`
//! and `HEAD`.
//!
//! A result's bytes come from a handler, which may be hostile: downloads are never sniffed
//! (`nosniff`), run nothing (a `Content-Security-Policy` that allows nothing, in a sandbox) and
//! arrive as attachments unless their type is one a browser only displays. A download is paced
//! like an upload ([`crate::service::pacing`]): a client that stops reading releases the stored
//! object's stream after `limits.transfer_idle_timeout`.

use std::ops::Range;

use actix_web::{
    HttpRequest, HttpResponse,
    error::ParseError,
    http::{
        Method, StatusCode,
        header::{
            self, ByteRangeSpec, ContentDisposition, DispositionParam, DispositionType, ETag,
            EntityTag, IfNoneMatch,
        },
    },
    web,
};
use futures_util::{StreamExt, TryStreamExt};

use super::{
    conditional::{not_modified, typed},
    digest_header,
    jobs::parse_job_id,
    problem::ApiError,
    wire::{ResultList, ResultOut},
};
use crate::{
    error_code::ErrorCode,
    service::{
        Services,
        pacing::{Pace, paced_download},
    },
    tenancy::Caller,
};

pub async fn list(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (job, rows) = services
        .list_results(&caller.tenant, parse_job_id(&id)?)
        .await?;
    Ok(HttpResponse::Ok().json(ResultList {
        items: rows
            .iter()
            .map(|row| ResultOut::of(row, &job.job))
            .collect(),
    }))
}

/// What a download sends for its `Range` header (RFC 9110 §14.2).
#[derive(Debug, PartialEq, Eq)]
enum Selection {
    /// No `Range`, one that does not parse, another unit, or several ranges (RFC 9110 lets a
    /// server ignore an invalid `Range` and answer several with the whole representation; we
    /// do not send multipart bodies).
    Whole,
    /// One satisfiable byte range, end exclusive.
    Part(Range<u64>),
    /// One well-formed range that does not fit: `416`.
    Unsatisfiable,
}

/// Resolves a `Range` header (absent, or as actix parsed it) against the result's size.
fn select(range: Option<Result<header::Range, ParseError>>, size: u64) -> Selection {
    match range {
        None | Some(Err(_)) | Some(Ok(header::Range::Unregistered(..))) => Selection::Whole,
        Some(Ok(header::Range::Bytes(specs))) => match specs.as_slice() {
            [spec] => satisfiable(spec, size)
                .map(Selection::Part)
                .unwrap_or(Selection::Unsatisfiable),
            _ => Selection::Whole,
        },
    }
}

fn satisfiable(spec: &ByteRangeSpec, size: u64) -> Option<Range<u64>> {
    let (first, last) = spec.to_satisfiable_range(size)?;
    // `last` is below `size` here; saturate anyway, so no header can overflow the end.
    Some(first..last.saturating_add(1))
}

/// A result may be anything a handler wrote: if a browser renders it anyway, it may load and
/// run nothing, and runs sandboxed (no scripts, no forms, no same origin).
const RESULT_CSP: &str = "default-src 'none'; sandbox";

/// Whether a browser only displays this type (text, JSON, common raster images); anything else
/// (HTML, SVG, XML, PDF, scripts, unknown types) is sent as an attachment, to be saved, not
/// opened.
fn displayed_inline(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        essence.as_str(),
        "text/plain"
            | "text/csv"
            | "application/json"
            | "image/png"
            | "image/jpeg"
            | "image/gif"
            | "image/webp"
    ) || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Streams a result (`GET`), or answers with the same status and headers without reading its
/// bytes (`HEAD`: the blob store is asked only whether they are still there).
pub async fn download(
    services: web::Data<Services>,
    caller: Caller,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (id, name) = path.into_inner();
    let row = services
        .get_result(&caller.tenant, parse_job_id(&id)?, &name)
        .await?;
    let size = row.size as u64;
    let etag = EntityTag::new_strong(row.sha256.clone());
    if not_modified(&typed::<IfNoneMatch>(&req), &etag) {
        return Ok(HttpResponse::NotModified()
            .insert_header(ETag(etag))
            .finish());
    }
    let range = match select(typed::<header::Range>(&req), size) {
        Selection::Whole => None,
        Selection::Part(range) => Some(range),
        Selection::Unsatisfiable => {
            let raw = req.headers().get(header::RANGE);
            return Ok(ApiError::new(
                ErrorCode::RangeNotSatisfiable,
                format!("the Range header {raw:?} does not fit a {size}-byte result"),
            )
            .error_response_with_range(size));
        }
    };
    let head_only = req.method() == Method::HEAD;
    // An empty object has no bytes to stream (nor to check).
    let stream = if size == 0 {
        None
    } else if head_only {
        services.check_result_stored(&row).await?;
        Some(futures_util::stream::empty::<Result<bytes::Bytes, std::io::Error>>().boxed_local())
    } else {
        let stream = services.open_result(&row, range.clone()).await?;
        let pace = Pace::of(&services.settings.limits);
        Some(
            paced_download(stream, pace)
                .map_err(|e| {
                    tracing::error!(error = %e, "streaming a result failed midway");
                    std::io::Error::other(e.to_string())
                })
                .boxed_local(),
        )
    };
    let mut res = match &range {
        Some(r) => {
            let mut b = HttpResponse::build(StatusCode::PARTIAL_CONTENT);
            b.insert_header((
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{size}", r.start, r.end - 1),
            ));
            b
        }
        None => HttpResponse::Ok(),
    };
    let len = range.as_ref().map(|r| r.end - r.start).unwrap_or(size);
    res.insert_header((header::CONTENT_TYPE, row.content_type.clone()))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CONTENT_SECURITY_POLICY, RESULT_CSP))
        .insert_header(ETag(etag))
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header(("Repr-Digest", digest_header::header_value(&row.sha256)));
    if !displayed_inline(&row.content_type) {
        let file_name = name.rsplit('/').next().unwrap_or(&name).to_owned();
        res.insert_header(ContentDisposition {
            disposition: DispositionType::Attachment,
            parameters: vec![DispositionParam::Filename(file_name)],
        });
    }
    match stream {
        None => Ok(res.body(Vec::<u8>::new())),
        // `no_chunking` sets `Content-Length: len`; for HEAD the (empty) body is never sent.
        Some(stream) => Ok(res.no_chunking(len).streaming(stream)),
    }
}

impl ApiError {
    fn error_response_with_range(self, size: u64) -> HttpResponse {
        use actix_web::ResponseError;
        let mut res = self.error_response();
        res.headers_mut().insert(
            header::CONTENT_RANGE,
            header::HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii"),
        );
        res
    }
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn request(name: header::HeaderName, value: Option<&str>) -> HttpRequest {
        let req = TestRequest::default();
        match value {
            Some(value) => req.insert_header((name, value)),
            None => req,
        }
        .to_http_request()
    }

    fn range(value: Option<&str>, size: u64) -> Selection {
        select(typed(&request(header::RANGE, value)), size)
    }

    #[test]
    fn ranges_resolve_against_the_size() {
        use Selection::*;
        assert_eq!(range(None, 10), Whole);
        assert_eq!(range(Some("bytes=0-3"), 10), Part(0..4));
        assert_eq!(range(Some("bytes=5-"), 10), Part(5..10));
        assert_eq!(range(Some("bytes=-3"), 10), Part(7..10));
        assert_eq!(range(Some("bytes=-30"), 10), Part(0..10));
        assert_eq!(range(Some("bytes=8-100"), 10), Part(8..10));
        assert_eq!(range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(range(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(range(Some("bytes=0-18446744073709551615"), 10), Part(0..10));
        assert_eq!(
            range(Some("bytes=18446744073709551615-"), 10),
            Unsatisfiable
        );
        assert_eq!(range(Some("bytes=-18446744073709551615"), 10), Part(0..10));
        // What does not parse is ignored, as if absent (RFC 9110 §14.2).
        assert_eq!(range(Some("bytes=x-"), 10), Whole);
        assert_eq!(range(Some("bytes=5-2"), 10), Whole);
        assert_eq!(range(Some("bytes="), 10), Whole);
        assert_eq!(range(Some("bytes=0-99999999999999999999"), 10), Whole);
        assert_eq!(range(Some("nonsense"), 10), Whole);
        assert_eq!(range(Some("bytes=0-1,4-5"), 10), Whole);
        assert_eq!(range(Some("items=0-1"), 10), Whole);
    }

    #[test]
    fn only_types_a_browser_merely_displays_are_inline() {
        for inline in ["text/plain; charset=utf-8", "application/json", "image/PNG"] {
            assert!(displayed_inline(inline), "{inline}");
        }
        for attachment in [
            "text/html; charset=utf-8",
            "image/svg+xml",
            "application/xhtml+xml",
            "text/xml",
            "application/pdf",
            "text/javascript",
            "application/octet-stream",
            "",
        ] {
            assert!(!displayed_inline(attachment), "{attachment}");
        }
    }

    #[test]
    fn if_none_match_compares_weakly() {
        let ours = EntityTag::new_strong("abc".into());
        let matches = |value: Option<&str>| {
            not_modified(&typed(&request(header::IF_NONE_MATCH, value)), &ours)
        };
        assert!(matches(Some("\"abc\"")));
        assert!(matches(Some("W/\"abc\"")));
        assert!(matches(Some("\"x\", W/\"abc\"")));
        assert!(matches(Some("*")));
        assert!(!matches(Some("\"abd\"")));
        assert!(!matches(Some("abc")));
        assert!(!matches(None));
    }
}
