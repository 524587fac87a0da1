//! Domain logic: uploads, jobs, results, attempts and reconciliation. No actix types here: the
//! API and the workers both call in, and get [`ServiceError`]s with stable codes back.

pub mod attempts;
pub mod jobs;
pub mod lifecycle;
pub mod reconcile;
pub mod results;
pub mod uploads;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use crate::{blobs::Blobs, config::Settings, storage::Db, storage::StorageError};

/// What the API knows about each kind of job, whether or not this process runs its workers.
#[derive(Clone, Debug)]
pub struct KindDefaults {
    pub timeout: Duration,
    pub max_attempts: u32,
}

/// Everything the service layer needs, cheap to clone.
#[derive(Clone, Debug)]
pub struct Services {
    pub db: Db,
    pub blobs: Blobs,
    pub settings: Arc<Settings>,
    pub kinds: Arc<BTreeMap<String, KindDefaults>>,
    /// Permits for uploads in progress (see `limits.max_concurrent_uploads`).
    pub upload_slots: Arc<tokio::sync::Semaphore>,
}

impl Services {
    /// Opens the database (migrating it) and the blob store that `settings` name, for handlers
    /// of `kinds`.
    pub async fn open(
        settings: Settings,
        kinds: BTreeMap<String, KindDefaults>,
    ) -> anyhow::Result<Services> {
        let db = Db::connect(&settings.database_url()).await?;
        db.migrate().await?;
        let blobs = Blobs::open(
            &settings.blob_store(),
            settings.limits.upload_part_bytes,
            &settings.blob_options,
        )?;
        Ok(Services {
            db,
            blobs,
            upload_slots: Arc::new(tokio::sync::Semaphore::new(
                settings.limits.max_concurrent_uploads,
            )),
            settings: Arc::new(settings),
            kinds: Arc::new(kinds),
        })
    }
}

/// The class of a failure, which the API turns into an HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    BadRequest,
    NotFound,
    Conflict,
    Unprocessable,
    TooLarge,
    RangeNotSatisfiable,
    Unavailable,
    Internal,
}

#[derive(Debug, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct ServiceError {
    pub class: ErrorClass,
    /// Stable, documented, machine-readable.
    pub code: &'static str,
    /// For a person: what went wrong and what to do about it.
    pub detail: String,
    /// The request field at fault, when there is one.
    pub field: Option<String>,
}

impl ServiceError {
    pub fn new(class: ErrorClass, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            class,
            code,
            detail: detail.into(),
            field: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(ErrorClass::Unprocessable, "invalid_field", detail).with_field(field)
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(ErrorClass::NotFound, code, detail)
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(ErrorClass::Conflict, code, detail)
    }

    /// An infrastructure failure: the cause is logged here, the client gets an opaque message.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "{context}");
        Self::new(
            ErrorClass::Internal,
            "internal_error",
            "an internal error occurred; it has been logged",
        )
    }
}

impl From<StorageError> for ServiceError {
    fn from(err: StorageError) -> Self {
        if err.is_unavailable() {
            tracing::warn!(error = %err, "database unavailable");
            return Self::new(
                ErrorClass::Unavailable,
                "database_unavailable",
                "the database is unreachable; retry shortly",
            );
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
        match err {
            BlobError::NotFound => Self::not_found("blob_missing", "the stored bytes are missing"),
            BlobError::TooLarge { limit } => Self::new(
                ErrorClass::TooLarge,
                "payload_too_large",
                format!("the body exceeds the limit of {limit} bytes"),
            ),
            BlobError::Source(msg) => Self::new(
                ErrorClass::BadRequest,
                "body_incomplete",
                format!("the request body could not be read completely: {msg}"),
            ),
            other => {
                tracing::error!(error = %other, "blob store operation failed");
                Self::new(
                    ErrorClass::Unavailable,
                    "blob_store_unavailable",
                    "the blob store failed; retry shortly",
                )
            }
        }
    }
}

pub type ServiceResult<T> = Result<T, ServiceError>;
