//! Content negotiation on `Accept` (RFC 9110 §12.5.1): how much a request wants a media type.
//! Problems use it to pick their label, the event log to choose between JSON and an event
//! stream.

use actix_web::{
    HttpRequest,
    http::header::{self, Header, Quality},
};

/// How a request's `Accept` ranks one media type: the quality of the most specific range that
/// matches it, and how specific that range is (2: the type itself, 1: `type/*`, 0: `*/*`).
/// `None` when no range matches, which means "not acceptable".
pub fn rank(accept: &header::Accept, media_type: &str) -> Option<(u8, Quality)> {
    let main_type = media_type.split('/').next().unwrap_or_default();
    accept
        .iter()
        .filter_map(|item| {
            let range = &item.item;
            let specificity = match (range.type_().as_str(), range.subtype().as_str()) {
                _ if range.essence_str() == media_type => 2,
                (t, "*") if t == main_type => 1,
                ("*", "*") => 0,
                _ => return None,
            };
            Some((specificity, item.quality))
        })
        .max_by_key(|(specificity, _)| *specificity)
}

/// The quality a request gives a media type: 0 when no range matches it.
pub fn quality(accept: &header::Accept, media_type: &str) -> Quality {
    rank(accept, media_type).map_or(Quality::ZERO, |(_, q)| q)
}

/// Whether the request asks for `text/event-stream` rather than JSON: it names that type with a
/// quality above 0, and no lower than JSON's. A wildcard (`*/*`) alone gets JSON.
pub fn wants_event_stream(req: &HttpRequest) -> bool {
    let Ok(accept) = header::Accept::parse(req) else {
        return false;
    };
    match rank(&accept, "text/event-stream") {
        Some((2, q)) if q > Quality::ZERO => q >= quality(&accept, mime::APPLICATION_JSON.as_ref()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn wants(accept: &str) -> bool {
        wants_event_stream(
            &TestRequest::default()
                .insert_header((header::ACCEPT, accept))
                .to_http_request(),
        )
    }

    #[test]
    fn an_event_stream_is_sent_only_to_who_names_it() {
        for accept in [
            "text/event-stream",
            "text/event-stream, application/json;q=0.5",
            "application/json;q=0.9, text/event-stream",
            "text/event-stream, */*",
        ] {
            assert!(wants(accept), "{accept}");
        }
        for accept in [
            "*/*",
            "text/*",
            "application/json",
            "application/json, text/event-stream;q=0.5",
            "text/event-stream;q=0",
            "application/json, text/event-stream;q=0.9",
        ] {
            assert!(!wants(accept), "{accept}");
        }
        assert!(!wants_event_stream(
            &TestRequest::default().to_http_request()
        ));
    }
}
