//! The request headers of the two resumable-upload protocols `/v1/tus` speaks, parsed: tus 1.0
//! (`Tus-Resumable: 1.0.0`) and the IETF draft "Resumable Uploads for HTTP"
//! (draft-ietf-httpbis-resumable-upload, `Upload-Draft-Interop-Version`), as tus-js-client
//! speaks it (`protocol: "ietf-draft-03"` and `"ietf-draft-05"`). Both name an upload's offset,
//! length and metadata with the same headers; the draft adds `Upload-Complete`.

use actix_web::{
    HttpRequest,
    http::header::{self, HeaderMap, HeaderName, HeaderValue},
};
use base64::Engine as _;

use super::super::{problem::ApiError, uploads::parse_upload_id};
use crate::{
    error_code::ErrorCode,
    ids::UploadId,
    service::{
        ServiceError,
        jobs::DEFAULT_INPUT_NAME,
        resumable::{Checksum, ChecksumAlgorithm, JobOnCompletion, NewResumable},
    },
};

/// The one tus version served.
pub const VERSION: &str = "1.0.0";
/// The IETF draft's interop versions served: 5 is what tus-js-client sends for draft 03, 6 for
/// draft 05; the headers used here are the same in both.
pub const INTEROP_VERSIONS: std::ops::RangeInclusive<u32> = 5..=6;

pub(super) const TUS_RESUMABLE: HeaderName = HeaderName::from_static("tus-resumable");
pub(super) const UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
pub(super) const UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");
pub(super) const UPLOAD_DEFER_LENGTH: HeaderName = HeaderName::from_static("upload-defer-length");
pub(super) const UPLOAD_METADATA: HeaderName = HeaderName::from_static("upload-metadata");
pub(super) const UPLOAD_CHECKSUM: HeaderName = HeaderName::from_static("upload-checksum");
pub(super) const UPLOAD_COMPLETE: HeaderName = HeaderName::from_static("upload-complete");
pub(super) const UPLOAD_CONCAT: HeaderName = HeaderName::from_static("upload-concat");
pub(super) const INTEROP_VERSION: HeaderName =
    HeaderName::from_static("upload-draft-interop-version");

/// The media type of a tus body that carries upload bytes.
pub(super) const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";
/// The draft's media type for a request's share of an upload (draft 05 on).
pub(super) const PARTIAL_UPLOAD: &str = "application/partial-upload";

/// Which protocol a request speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tus,
    Ietf,
}

/// The protocol a request speaks: the draft's when it sends `Upload-Draft-Interop-Version`,
/// tus 1.0 when it sends `Tus-Resumable: 1.0.0`, else `412` (tus' answer to a version it does
/// not speak).
pub(super) fn protocol(req: &HttpRequest) -> Result<Protocol, ApiError> {
    let headers = req.headers();
    if let Some(interop) = headers.get(&INTEROP_VERSION) {
        let version = interop
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok());
        return match version {
            Some(v) if INTEROP_VERSIONS.contains(&v) => Ok(Protocol::Ietf),
            _ => Err(invalid_header(format!(
                "Upload-Draft-Interop-Version {:?} is not served; this server speaks interop \
                 versions {} to {} of the resumable-upload draft, and tus {VERSION}",
                String::from_utf8_lossy(interop.as_bytes()),
                INTEROP_VERSIONS.start(),
                INTEROP_VERSIONS.end()
            ))),
        };
    }
    let said = headers.get(&TUS_RESUMABLE).map(HeaderValue::as_bytes);
    if said == Some(VERSION.as_bytes()) {
        return Ok(Protocol::Tus);
    }
    let detail = match said {
        None => "Tus-Resumable is missing: this is the tus endpoint; send Tus-Resumable: 1.0.0 \
                 (or Upload-Draft-Interop-Version for the IETF draft)"
            .to_owned(),
        Some(v) => format!(
            "Tus-Resumable {:?} is not served; this server speaks tus {VERSION}",
            String::from_utf8_lossy(v)
        ),
    };
    Err(ApiError::new(ErrorCode::UnsupportedTusVersion, detail))
}

/// The upload a request's path names and the protocol it speaks. A path that names no upload
/// is not found, whatever the protocol.
pub(super) fn addressed(req: &HttpRequest, id: &str) -> Result<(UploadId, Protocol), ApiError> {
    let id = parse_upload_id(id)?;
    Ok((id, protocol(req)?))
}

pub(super) fn invalid_header(detail: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidUploadHeader, detail)
}

/// A header holding a non-negative integer (at most 2^63 − 1, as tus' sizes are), if present.
pub(super) fn number(headers: &HeaderMap, name: &HeaderName) -> Result<Option<u64>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<i64>().ok())
                .map(|n| n as u64)
                .ok_or_else(|| {
                    invalid_header(format!("{name} must be a non-negative integer below 2^63"))
                })
        })
        .transpose()
}

/// What a creation request's `Upload-Concat` asks for (tus' concatenation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Concat {
    /// An upload of its own.
    No,
    /// A part, to be joined with others later.
    Partial,
    /// The upload that joins these parts, in this order.
    Final(Vec<UploadId>),
}

/// `Upload-Concat: partial` or `final;<url> <url> …` (each URL a part's, absolute or a path).
pub(super) fn concat(headers: &HeaderMap) -> Result<Concat, ApiError> {
    let Some(value) = headers.get(&UPLOAD_CONCAT) else {
        return Ok(Concat::No);
    };
    let text = value
        .to_str()
        .map_err(|_| invalid_header("Upload-Concat must be ASCII"))?;
    if text == "partial" {
        return Ok(Concat::Partial);
    }
    let Some(urls) = text.strip_prefix("final;") else {
        return Err(invalid_header(
            "Upload-Concat is `partial` or `final;<url of a part> <url of a part> …`",
        ));
    };
    urls.split(' ')
        .filter(|url| !url.is_empty())
        .map(|url| {
            let id = url.rsplit_once("/v1/tus/").map_or(url, |(_, id)| id);
            parse_upload_id(id).map_err(|_| {
                invalid_header(format!(
                    "Upload-Concat names {url:?}, which is no tus upload"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Concat::Final)
}

/// The draft's `Upload-Complete`, which its creation and append requests must send.
pub(super) fn required_upload_complete(headers: &HeaderMap) -> Result<bool, ApiError> {
    upload_complete(headers)?.ok_or_else(|| {
        invalid_header(
            "Upload-Complete is missing: the resumable-upload draft sends ?1 on the request that \
             ends the upload and ?0 on the others",
        )
    })
}

/// `Upload-Complete` (a structured-field boolean, `?0` or `?1`), if present.
pub(super) fn upload_complete(headers: &HeaderMap) -> Result<Option<bool>, ApiError> {
    match headers.get(&UPLOAD_COMPLETE).map(HeaderValue::as_bytes) {
        None => Ok(None),
        Some(b"?1") => Ok(Some(true)),
        Some(b"?0") => Ok(Some(false)),
        Some(_) => Err(invalid_header("Upload-Complete must be ?0 or ?1")),
    }
}

/// Whether a request's body is upload bytes by its media type: tus names them
/// `application/offset+octet-stream`; the draft `application/partial-upload`, or nothing (draft
/// 03). Another media type is `415`.
pub(super) fn bytes_media_type(req: &HttpRequest, protocol: Protocol) -> Result<bool, ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .map(HeaderValue::as_bytes);
    let is = |v: &[u8], name: &str| v.eq_ignore_ascii_case(name.as_bytes());
    match (protocol, content_type) {
        (_, Some(v)) if is(v, OFFSET_OCTET_STREAM) || is(v, PARTIAL_UPLOAD) => Ok(true),
        (_, None) => Ok(false),
        (_, Some(_)) => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "upload bytes are sent as Content-Type: {OFFSET_OCTET_STREAM} (tus) or \
                 {PARTIAL_UPLOAD} (the IETF draft)"
            ),
        )),
    }
}

/// Metadata pairs of `Upload-Metadata`: `key base64value` separated by commas, the value
/// optional. Values are kept as text (lossily; only Ferry's own keys are interpreted).
fn parse_metadata(text: &str) -> Result<Vec<(String, Option<String>)>, ApiError> {
    let mut pairs: Vec<(String, Option<String>)> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let mut parts = item.split(' ').filter(|p| !p.is_empty());
        let key = parts.next().unwrap_or_default();
        let value = parts.next();
        if parts.next().is_some() || key.is_empty() || !key.is_ascii() {
            return Err(invalid_header(format!(
                "Upload-Metadata item {item:?} is not `key base64value`"
            )));
        }
        if pairs.iter().any(|(k, _)| k == key) {
            return Err(invalid_header(format!(
                "Upload-Metadata names {key:?} twice"
            )));
        }
        let value = value
            .map(|v| {
                base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                    .map_err(|_| {
                        invalid_header(format!("Upload-Metadata value of {key:?} is not base64"))
                    })
            })
            .transpose()?;
        pairs.push((key.to_owned(), value));
    }
    Ok(pairs)
}

/// What a creation request says about the upload to come.
pub(super) fn new_upload(req: &HttpRequest, protocol: Protocol) -> Result<NewResumable, ApiError> {
    let headers = req.headers();
    let mut length = number(headers, &UPLOAD_LENGTH)?;
    let concat = concat(headers)?;
    let deferred = match headers.get(&UPLOAD_DEFER_LENGTH) {
        None => false,
        Some(v) if v.as_bytes() == b"1" => true,
        Some(_) => return Err(invalid_header("Upload-Defer-Length must be 1")),
    };
    match protocol {
        // A final upload's length is its parts'.
        Protocol::Tus if matches!(concat, Concat::Final(_)) => {
            if length.is_some() || deferred {
                return Err(invalid_header(
                    "a final upload takes its length from its parts: no Upload-Length",
                ));
            }
        }
        Protocol::Tus if length.is_some() == deferred => {
            return Err(invalid_header(
                "send either Upload-Length (the upload's size in bytes) or Upload-Defer-Length: 1",
            ));
        }
        // The draft: a request that says it completes the upload gives its length by its body.
        Protocol::Ietf => {
            if length.is_none() && required_upload_complete(headers)? {
                length = number(headers, &header::CONTENT_LENGTH)?;
            }
        }
        Protocol::Tus => {}
    }
    let raw = headers
        .get(&UPLOAD_METADATA)
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| invalid_header("Upload-Metadata must be ASCII"))
        })
        .transpose()?;
    let pairs = raw
        .as_deref()
        .map(parse_metadata)
        .transpose()?
        .unwrap_or_default();
    let value = |names: &[&str]| {
        names.iter().find_map(|name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.clone())
        })
    };
    let job = match value(&["ferry-kind"]) {
        None => None,
        Some(kind) => {
            let params = match value(&["ferry-params"]) {
                None => serde_json::Map::new(),
                Some(json) => match serde_json::from_str(&json) {
                    Ok(serde_json::Value::Object(map)) => map,
                    _ => {
                        return Err(ApiError::from(ServiceError::invalid(
                            "ferry-params",
                            "metadata ferry-params must be a JSON object",
                        )));
                    }
                },
            };
            let input = value(&["ferry-input"]).unwrap_or_else(|| DEFAULT_INPUT_NAME.to_owned());
            Some(JobOnCompletion {
                kind,
                params,
                input,
            })
        }
    };
    Ok(NewResumable {
        length,
        filename: value(&["filename", "name"]),
        content_type: value(&["filetype", "type", "contentType", "content-type"]),
        metadata: raw,
        job,
        partial: concat == Concat::Partial,
    })
}

pub(super) fn checksum(headers: &HeaderMap) -> Result<Option<Checksum>, ApiError> {
    let Some(value) = headers.get(&UPLOAD_CHECKSUM) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| invalid_header("Upload-Checksum must be ASCII"))?;
    let (name, sum) = text
        .split_once(' ')
        .ok_or_else(|| invalid_header("Upload-Checksum is `algorithm base64digest`"))?;
    let algorithm = ChecksumAlgorithm::parse(name).ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnsupportedChecksum,
            format!(
                "checksum algorithm {name:?} is not served; use one of {}",
                ChecksumAlgorithm::NAMES
            ),
        )
    })?;
    let expected = base64::engine::general_purpose::STANDARD
        .decode(sum.trim())
        .map_err(|_| invalid_header("the digest in Upload-Checksum is not base64"))?;
    Ok(Some(Checksum {
        algorithm,
        expected,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_pairs_are_decoded_and_checked() {
        let pairs = parse_metadata("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential")
            .expect("valid metadata");
        assert_eq!(
            pairs,
            vec![
                (
                    "filename".to_owned(),
                    Some("world_domination_plan.pdf".to_owned())
                ),
                ("is_confidential".to_owned(), None),
            ]
        );
        assert!(parse_metadata("a !!!").is_err(), "not base64");
        assert!(parse_metadata("a YQ==,a YQ==").is_err(), "a key twice");
        assert!(parse_metadata("a YQ== b").is_err(), "three words");
        assert!(parse_metadata("").expect("empty").is_empty());
    }
}
