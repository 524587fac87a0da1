//! `/v1/jobs/{id}/results`: the artifact list and streamed downloads with byte ranges.

use crate::error_code::ErrorCode;
use actix_web::{HttpRequest, HttpResponse, http::StatusCode, http::header, web};
use futures_util::TryStreamExt;

use super::{
    digest_header,
    jobs::parse_job_id,
    problem::ApiError,
    wire::{ResultList, ResultOut},
};
use crate::service::Services;

pub async fn list(
    services: web::Data<Services>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let rows = services.list_results(parse_job_id(&id)?).await?;
    Ok(HttpResponse::Ok().json(ResultList {
        items: rows.iter().map(ResultOut::from).collect(),
    }))
}

/// A single `bytes=` range resolved against the object's size. `Ok(None)` means "send it all"
/// (no header, or a form we do not serve such as multiple ranges, which RFC 9110 allows).
fn parse_range(header: Option<&str>, size: u64) -> Result<Option<std::ops::Range<u64>>, ()> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (start, end) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (size.saturating_sub(n), size)
        }
        (s, "") => (s.parse().map_err(|_| ())?, size),
        (s, e) => {
            let s: u64 = s.parse().map_err(|_| ())?;
            let e: u64 = e.parse().map_err(|_| ())?;
            if e < s {
                return Err(());
            }
            (s, (e + 1).min(size))
        }
    };
    if start >= size {
        return Err(());
    }
    Ok(Some(start..end))
}

pub async fn download(
    services: web::Data<Services>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let (id, name) = path.into_inner();
    let row = services.get_result(parse_job_id(&id)?, &name).await?;
    let size = row.size as u64;
    let etag = format!("\"{}\"", row.sha256);
    if req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            // Weak comparison (RFC 9110 §13.1.2): `W/"x"` matches `"x"`.
            v.split(',')
                .map(|t| t.trim().trim_start_matches("W/"))
                .any(|t| t == etag || t == "*")
        })
    {
        return Ok(HttpResponse::NotModified()
            .insert_header((header::ETAG, etag))
            .finish());
    }
    let range_header = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok());
    let range = match parse_range(range_header, size) {
        Ok(range) => range,
        Err(()) => {
            return Ok(ApiError::new(
                ErrorCode::RangeNotSatisfiable,
                format!("the Range header {range_header:?} does not fit a {size}-byte result"),
            )
            .error_response_with_range(size));
        }
    };
    // An empty object has no bytes to stream.
    let stream = if size == 0 {
        None
    } else {
        Some(services.open_result(&row, range.clone()).await?)
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
        .insert_header((header::ETAG, etag))
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header(("Repr-Digest", digest_header::header_value(&row.sha256)));
    match stream {
        None => Ok(res.body(Vec::<u8>::new())),
        Some(stream) => Ok(res.no_chunking(len).streaming(stream.map_err(|e| {
            tracing::error!(error = %e, "streaming a result failed midway");
            std::io::Error::other(e.to_string())
        }))),
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
    use super::parse_range;

    #[test]
    fn ranges_resolve_against_the_size() {
        assert_eq!(parse_range(None, 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-3"), 10), Ok(Some(0..4)));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Ok(Some(5..10)));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Ok(Some(7..10)));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), Ok(Some(8..10)));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=x-"), 10), Err(()));
    }
}
