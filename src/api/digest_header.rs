//! RFC 9530 digest fields: `Repr-Digest` / `Content-Digest: sha-256=:BASE64:`. Only SHA-256 is
//! checked; other algorithms in the dictionary are ignored, as the RFC allows.

use crate::error_code::ErrorCode;
use actix_web::http::header::HeaderMap;
use base64::{Engine, engine::general_purpose::STANDARD};

use super::problem::ApiError;

/// The SHA-256 a client declared for the body, if any. A malformed field is a 400.
pub fn expected_sha256(headers: &HeaderMap) -> Result<Option<[u8; 32]>, ApiError> {
    for name in ["repr-digest", "content-digest"] {
        let Some(value) = headers.get(name) else {
            continue;
        };
        let text = value
            .to_str()
            .map_err(|_| malformed(name, "it is not ASCII"))?;
        for member in text.split(',') {
            let Some((alg, rest)) = member.trim().split_once('=') else {
                return Err(malformed(name, "expected sha-256=:BASE64:"));
            };
            if !alg.trim().eq_ignore_ascii_case("sha-256") {
                continue;
            }
            let b64 = rest
                .trim()
                .strip_prefix(':')
                .and_then(|r| r.strip_suffix(':'))
                .ok_or_else(|| malformed(name, "the value must be a byte sequence :BASE64:"))?;
            let bytes = STANDARD
                .decode(b64)
                .map_err(|_| malformed(name, "the value is not valid base64"))?;
            let digest: [u8; 32] = bytes
                .try_into()
                .map_err(|_| malformed(name, "a SHA-256 digest is 32 bytes"))?;
            return Ok(Some(digest));
        }
    }
    Ok(None)
}

/// `sha-256=:BASE64:` for a hex digest (for response headers).
pub fn header_value(sha256_hex: &str) -> String {
    let bytes = hex::decode(sha256_hex).unwrap_or_default();
    format!("sha-256=:{}:", STANDARD.encode(bytes))
}

fn malformed(name: &str, why: &str) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidDigestHeader,
        format!("the {name} header is malformed: {why}"),
    )
}
