//! Conditional requests and long-poll, as the job resource uses them: `If-None-Match` against an
//! `ETag` (RFC 9110 §13.1.2), and the `wait` preference of RFC 7240 (`Prefer: wait=N`, answered
//! with `Preference-Applied: wait=N`).

use actix_web::{
    HttpRequest,
    error::ParseError,
    http::header::{EntityTag, Header, IfNoneMatch},
};
use sha2::{Digest, Sha256};

/// The longest a request may wait for a change; longer waits are clamped to it.
pub const MAX_WAIT_SECS: u64 = 60;

/// Whether `If-None-Match` lets the client keep its copy: `*`, or any of its tags equal to
/// ours under the weak comparison RFC 9110 §13.1.2 prescribes (`W/"x"` matches `"x"`). A
/// header that does not parse matches nothing.
pub fn not_modified(
    if_none_match: &Option<Result<IfNoneMatch, ParseError>>,
    etag: &EntityTag,
) -> bool {
    match if_none_match {
        Some(Ok(IfNoneMatch::Any)) => true,
        Some(Ok(IfNoneMatch::Items(tags))) => tags.iter().any(|tag| tag.weak_eq(etag)),
        None | Some(Err(_)) => false,
    }
}

/// Parses a typed header only when the request carries it, so "absent" and "malformed" differ.
pub fn typed<H: Header>(req: &HttpRequest) -> Option<Result<H, ParseError>> {
    req.headers().contains_key(H::name()).then(|| H::parse(req))
}

/// A strong tag for a representation: a digest of its exact bytes, so it changes whenever
/// anything in them does (including fields derived from the clock, such as `retry_at`).
pub fn etag_of(body: &[u8]) -> EntityTag {
    let digest = Sha256::digest(body);
    EntityTag::new_strong(hex::encode(&digest[..16]))
}

/// The `wait` preference in seconds, clamped to [`MAX_WAIT_SECS`]; `None` when the request
/// states none. Preferences are comma-separated, each `name[=value]` followed by optional
/// `;` parameters; names are case-insensitive, a value may be quoted, and a preference the
/// server cannot read is ignored (RFC 7240 §2).
pub fn wait_preference(req: &HttpRequest) -> Option<u64> {
    req.headers()
        .get_all("prefer")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|pref| {
            let token = pref.split(';').next()?.trim();
            let (name, value) = token.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            let value = value.trim().trim_matches('"');
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // Digits too many for u64 are still a (very long) wait: clamp them too.
            Some(value.parse::<u64>().unwrap_or(u64::MAX).min(MAX_WAIT_SECS))
        })
        .next()
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn wait(prefer: &str) -> Option<u64> {
        wait_preference(
            &TestRequest::default()
                .insert_header(("prefer", prefer))
                .to_http_request(),
        )
    }

    #[test]
    fn reads_the_wait_preference_among_others() {
        assert_eq!(wait("wait=5"), Some(5));
        assert_eq!(wait("respond-async, WAIT = \"7\" ; x=1"), Some(7));
        assert_eq!(wait("wait=600"), Some(MAX_WAIT_SECS));
        assert_eq!(wait("wait=99999999999999999999999"), Some(MAX_WAIT_SECS));
        assert_eq!(wait("wait=-1"), None);
        assert_eq!(wait("wait=soon"), None);
        assert_eq!(wait("handling=lenient"), None);
        assert_eq!(
            wait_preference(&TestRequest::default().to_http_request()),
            None
        );
    }
}
