//! Domain logic: uploads, jobs, results, attempts and reconciliation. No actix types here: the
//! API and the workers both call in, and get [`ServiceError`]s with stable codes back.

pub mod attempts;
pub mod audit;
pub mod concatenation;
pub mod events;
mod holds;
pub mod inputs;
pub mod jobs;
pub mod keys;
pub mod kinds;
pub mod lifecycle;
pub mod observe;
pub mod orphans;
pub mod pacing;
pub mod quota;
pub mod rate;
pub mod reconcile;
pub mod reruns;
pub mod results;
pub mod resumable;
pub mod retention;
pub mod running;
pub mod uploads;
pub mod webhooks;
pub mod workers;

use anyhow::Context as _;
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use crate::{
    blobs::Blobs, config::Settings, error_code::ErrorCode, storage::Db, storage::StorageError,
};

/// What the API knows about each kind of job, whether or not this process runs its workers.
#[derive(Clone, Debug, Default)]
pub struct KindDefaults {
    pub timeout: Duration,
    pub max_attempts: u32,
    /// Its versions, each with its own defaults; empty for a kind without versions.
    pub versions: BTreeMap<String, VersionDefaults>,
    /// The version a bare kind runs without a `production` tag.
    pub default_version: Option<String>,
    /// Where the configuration starts its tags (see [`kinds`]).
    pub tags: BTreeMap<String, String>,
}

/// One version's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionDefaults {
    pub timeout: Duration,
    pub max_attempts: u32,
    pub concurrency: usize,
}

impl KindDefaults {
    /// The defaults of `version` (the kind's own for `None`).
    pub fn of_version(&self, version: Option<&str>) -> (Duration, u32) {
        match version.and_then(|v| self.versions.get(v)) {
            Some(v) => (v.timeout, v.max_attempts),
            None => (self.timeout, self.max_attempts),
        }
    }
}

/// Everything the service layer needs, cheap to clone.
#[derive(Clone, Debug)]
pub struct Services {
    pub db: Db,
    pub blobs: Blobs,
    pub settings: Arc<Settings>,
    pub kinds: Arc<BTreeMap<String, KindDefaults>>,
    /// API keys, and whether requests without one are served (see [`keys`]).
    pub keys: keys::KeyRing,
    /// The audit trail's writer (see [`audit`]).
    pub audit: audit::AuditLog,
    /// Requests per second per key, in this process (see [`rate`]).
    pub rates: rate::RateLimiter,
    /// Permits for uploads in progress (see `limits.max_concurrent_uploads`).
    pub upload_slots: Arc<tokio::sync::Semaphore>,
    /// Uploads in progress per client address (see `limits.max_uploads_per_client`).
    pub upload_clients: uploads::ClientShares,
    /// Upload bytes in flight per tenant in this process (see [`quota`]).
    pub uploads_in_flight: quota::InFlight,
    /// When this process's reconciler last finished sweeping the blob store for orphans (ms since
    /// the epoch; 0: never; `i64::MAX` while it sweeps).
    pub last_orphan_sweep_ms: Arc<std::sync::atomic::AtomicI64>,
    /// How many reconciler passes this process has begun (some checks run every few passes).
    pub reconciler_passes: Arc<std::sync::atomic::AtomicU64>,
    /// What live workers serve, as this process last read it (see [`workers`]).
    pub served_cache: workers::ServedCache,
}

impl Services {
    /// A lease's length (attempts and idempotency reservations alike), in milliseconds.
    pub(crate) fn lease_ttl_ms(&self) -> i64 {
        self.settings.queue.lease_ttl.as_millis() as i64
    }

    /// Opens the database (migrating it) and the blob store that `settings` name, for handlers
    /// of `kinds`.
    pub async fn open(
        settings: Settings,
        kinds: BTreeMap<String, KindDefaults>,
    ) -> anyhow::Result<Services> {
        let db = Db::connect(&settings.database_url()).await?;
        db.migrate().await?;
        db.listen_for_changes(settings.events.poll_cache_max_age)
            .await
            .context("listening for job changes")?;
        let blobs = Blobs::open(
            &settings.blob_store(),
            settings.limits.upload_part_bytes,
            &settings.blob_options,
        )?;
        // A worker's metrics address counts too: without keys, nothing is served beyond
        // loopback unless told.
        let open_allowed = settings.auth.insecure_no_auth
            || (loopback_only(&settings.listen)
                && settings.metrics_listen.as_deref().is_none_or(loopback_only));
        Ok(Services {
            keys: keys::KeyRing::new(db.clone(), open_allowed),
            audit: audit::AuditLog::start(db.clone()),
            rates: rate::RateLimiter::default(),
            db,
            blobs,
            upload_slots: Arc::new(tokio::sync::Semaphore::new(
                settings.limits.max_concurrent_uploads,
            )),
            upload_clients: uploads::ClientShares::default(),
            uploads_in_flight: quota::InFlight::default(),
            last_orphan_sweep_ms: Arc::default(),
            reconciler_passes: Arc::default(),
            served_cache: workers::ServedCache::default(),
            settings: Arc::new(settings),
            kinds: Arc::new(kinds),
        })
    }
}

/// Whether `listen` (`host:port`) only ever means loopback addresses: every address it resolves
/// to is one. An address that does not resolve is not loopback (the server fails to bind it
/// anyway).
pub fn loopback_only(listen: &str) -> bool {
    use std::net::ToSocketAddrs;
    match listen.to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

/// A failure with a stable [`ErrorCode`] (which decides the HTTP status), a message a person
/// can act on, the request field at fault if any, and — for faults of the server — the cause,
/// chained and logged, never shown to the client.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct ServiceError {
    pub code: ErrorCode,
    /// For a person: what went wrong and what to do about it.
    pub detail: String,
    /// The request field at fault, when there is one.
    pub field: Option<String>,
    /// When to retry, where the default (5 s for a 429 or 503) would be wrong. Boxed: rare,
    /// and every `Result` of the service layer carries the error's size.
    pub retry: Option<Box<RetryHint>>,
    #[source]
    pub source: Option<BoxError>,
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// When a refused request may be retried, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryHint {
    pub wait: Duration,
    pub rate_limit: Option<RateLimitFields>,
}

/// The IETF `RateLimit-Policy` and `RateLimit` field values of a refusal by a quota
/// (draft-ietf-httpapi-ratelimit-headers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitFields {
    pub policy: String,
    pub limit: String,
}

impl ServiceError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            field: None,
            retry: None,
            source: None,
        }
    }

    /// Retry after `wait`; `rate_limit`: the quota that refused the request.
    pub fn retry_after(mut self, wait: Duration, rate_limit: Option<RateLimitFields>) -> Self {
        self.retry = Some(Box::new(RetryHint { wait, rate_limit }));
        self
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    fn caused_by(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidField, detail).with_field(field)
    }

    /// An infrastructure failure: the cause is logged here and kept as the source; the client
    /// gets an opaque message.
    pub fn internal(context: &str, err: impl Into<BoxError>) -> Self {
        let err = err.into();
        tracing::error!(error = %err, "{context}");
        Self::new(
            ErrorCode::InternalError,
            "an internal error occurred; it has been logged",
        )
        .caused_by(err)
    }
}

impl From<StorageError> for ServiceError {
    fn from(err: StorageError) -> Self {
        crate::metrics::storage_error(crate::metrics::Store::Database);
        if err.is_unavailable() {
            tracing::warn!(error = %err, "database unavailable");
            return Self::new(
                ErrorCode::DatabaseUnavailable,
                "the database is unreachable; retry shortly",
            )
            .caused_by(err);
        }
        Self::internal("database operation failed", err)
    }
}

impl From<sea_orm::DbErr> for ServiceError {
    fn from(err: sea_orm::DbErr) -> Self {
        StorageError::from(err).into()
    }
}

impl From<crate::blobs::BlobError> for ServiceError {
    fn from(err: crate::blobs::BlobError) -> Self {
        use crate::blobs::BlobError;
        let (code, detail) = match &err {
            BlobError::NotFound => (
                ErrorCode::BlobMissing,
                "the stored bytes are missing".into(),
            ),
            BlobError::TooLarge { limit } => (
                ErrorCode::PayloadTooLarge,
                format!("the body exceeds the limit of {limit} bytes"),
            ),
            BlobError::Source(cause) if cause.is::<quota::InFlightExceeded>() => {
                (ErrorCode::UploadQuota, cause.to_string())
            }
            BlobError::Source(cause) => match cause.downcast_ref::<pacing::Stalled>() {
                Some(stalled) => (ErrorCode::BodyTimeout, body_timeout_detail(stalled)),
                None => (
                    ErrorCode::BodyIncomplete,
                    format!("the request body could not be read completely: {cause}"),
                ),
            },
            other => {
                crate::metrics::storage_error(crate::metrics::Store::Blobs);
                tracing::error!(error = %other, "blob store operation failed");
                (
                    ErrorCode::BlobStoreUnavailable,
                    "the blob store failed; retry shortly".into(),
                )
            }
        };
        Self::new(code, detail).caused_by(err)
    }
}

/// What a client whose body was cut off is told.
pub fn body_timeout_detail(stalled: &pacing::Stalled) -> String {
    format!("{stalled}; the request was cut off and nothing was kept. Send the body without pauses")
}

pub type ServiceResult<T> = Result<T, ServiceError>;
