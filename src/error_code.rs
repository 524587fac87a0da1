//! Every problem code Ferry answers with, and its HTTP status: the one table of them. A client
//! branches on `code`, so codes are stable; `openapi.yaml` lists, per operation, the codes it
//! may return (`x-problem-codes`), and a unit test below checks that the spec names exactly the
//! codes of this table. Depends on nothing else in the crate.

use std::fmt;

macro_rules! error_codes {
    ($($variant:ident = ($code:literal, $status:literal): $doc:literal,)*) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $(#[doc = $doc] $variant,)*
        }

        impl ErrorCode {
            pub const ALL: &[ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The stable, documented code.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }

            /// The HTTP status a problem with this code is sent with.
            pub fn status(self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $status,)*
                }
            }
        }
    };
}

error_codes! {
    InvalidQuery = ("invalid_query", 400): "A query parameter is unknown or out of range.",
    InvalidJson = ("invalid_json", 400): "The body is not JSON.",
    BodyIncomplete = ("body_incomplete", 400): "The body ended before its declared length.",
    EmptyBody = ("empty_body", 400): "An upload's body has no bytes.",
    DigestMismatch = ("digest_mismatch", 400): "SHA-256 differs from the digest header.",
    InvalidDigestHeader = ("invalid_digest_header", 400): "A digest header cannot be parsed.",
    InvalidContentLength = ("invalid_content_length", 400): "Content-Length is not a number.",
    InvalidIdempotencyKey = ("invalid_idempotency_key", 400): "Empty, too long or not ASCII.",
    InvalidLastEventId = ("invalid_last_event_id", 400): "Last-Event-ID is no id of the stream.",
    InvalidUploadHeader = ("invalid_upload_header", 400): "A tus header is missing or malformed.",
    UploadLengthExceeded = ("upload_length_exceeded", 400): "Bytes past the upload's length.",
    UnsupportedChecksum = ("unsupported_checksum", 400): "Upload-Checksum names no known algorithm.",
    Unauthenticated = ("unauthenticated", 401): "No API key, and this server requires one.",
    InvalidApiKey = ("invalid_api_key", 401): "The key is malformed, unknown, revoked or expired.",
    InsufficientScope = ("insufficient_scope", 403): "The key lacks the scope this route needs.",
    NotFound = ("not_found", 404): "The path cannot be parsed.",
    RouteNotFound = ("route_not_found", 404): "No such route.",
    JobNotFound = ("job_not_found", 404): "No such job (or it was deleted).",
    UploadNotFound = ("upload_not_found", 404): "No such upload (or it expired or was deleted).",
    ResultNotFound = ("result_not_found", 404): "The job has no result of that name (yet).",
    WebhookNotFound = ("webhook_not_found", 404): "No such webhook endpoint (or it was deleted).",
    DeliveryNotFound = ("delivery_not_found", 404): "No such webhook delivery.",
    KeyNotFound = ("key_not_found", 404): "No such API key in this tenant.",
    KindNotFound = ("kind_not_found", 404): "No handler serves this kind.",
    TagNotFound = ("tag_not_found", 404): "The kind has no tag of that name.",
    BlobMissing = ("blob_missing", 404): "The stored bytes are missing.",
    MethodNotAllowed = ("method_not_allowed", 405): "The route exists, not with this method.",
    BodyTimeout = ("body_timeout", 408): "The body stalled or came slower than the minimum rate.",
    UploadInUse = ("upload_in_use", 409): "The upload is the input of a job.",
    JobFinished = ("job_finished", 409): "The job already finished.",
    OwnKey = ("own_key", 409): "A key cannot revoke itself over the API.",
    InputsDeleted = ("inputs_deleted", 409): "The job's inputs are gone: it cannot be re-run.",
    IdempotencyKeyInFlight = ("idempotency_key_in_flight", 409): "Its first request still runs.",
    UploadOffsetMismatch = ("upload_offset_mismatch", 409): "Upload-Offset is not the upload's.",
    UnsupportedTusVersion = ("unsupported_tus_version", 412): "Tus-Resumable names no version served.",
    PayloadTooLarge = ("payload_too_large", 413): "The body is over the configured limit.",
    UnsupportedMediaType = ("unsupported_media_type", 415): "This media type is not accepted.",
    RangeNotSatisfiable = ("range_not_satisfiable", 416): "The Range does not fit the result.",
    InvalidField = ("invalid_field", 422): "A field of the request is invalid (see `errors`).",
    InvalidBody = ("invalid_body", 422): "The JSON body does not have the expected shape.",
    UnknownKind = ("unknown_kind", 422): "No handler serves this kind.",
    UnknownVersion = ("unknown_version", 422): "The kind has no such version or tag.",
    IdempotencyKeyReused = ("idempotency_key_reused", 422): "Used with another request.",
    UploadLocked = ("upload_locked", 423): "Another request is writing to this upload.",
    ClientUploadsAtCapacity = ("client_uploads_at_capacity", 429): "This client's upload share.",
    RateLimited = ("rate_limited", 429): "This key's requests per second are used up; retry.",
    QueueFull = ("queue_full", 429): "The tenant has its most jobs queued; retry later.",
    UploadQuota = ("upload_quota", 429): "The tenant's upload bytes in flight or today are used.",
    ChecksumMismatch = ("checksum_mismatch", 460): "A tus request's bytes fail Upload-Checksum.",
    InternalError = ("internal_error", 500): "A server fault; logged with its cause.",
    ResumableUnsupported = ("resumable_unsupported", 501): "The blob store takes no tus uploads.",
    DatabaseUnavailable = ("database_unavailable", 503): "The database cannot be reached; retry.",
    BlobStoreUnavailable = ("blob_store_unavailable", 503): "The blob store failed; retry.",
    UploadsAtCapacity = ("uploads_at_capacity", 503): "Too many uploads at once; retry.",
    StorageQuota = ("storage_quota", 507): "The tenant stores its most bytes; delete some.",
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::ErrorCode;

    fn spec_codes(v: &serde_json::Value, out: &mut BTreeSet<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    if key == "x-problem-codes" {
                        for code in value.as_array().expect("x-problem-codes is a list") {
                            out.insert(code.as_str().expect("a code").to_owned());
                        }
                    } else {
                        spec_codes(value, out);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| spec_codes(i, out)),
            _ => {}
        }
    }

    #[test]
    fn the_spec_names_exactly_the_codes_of_the_table() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml"))
            .expect("openapi.yaml");
        let spec: serde_json::Value = serde_norway::from_str(&text).expect("YAML");
        let mut in_spec = BTreeSet::new();
        spec_codes(&spec, &mut in_spec);
        let in_table: BTreeSet<String> = ErrorCode::ALL
            .iter()
            .map(|c| c.as_str().to_owned())
            .collect();
        assert_eq!(in_spec, in_table, "openapi.yaml and ErrorCode disagree");
    }

    #[test]
    fn codes_are_unique_and_statuses_are_errors() {
        let unique: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(unique.len(), ErrorCode::ALL.len());
        assert!(
            ErrorCode::ALL
                .iter()
                .all(|c| (400..600).contains(&c.status()))
        );
    }
}
