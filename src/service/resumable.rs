//! Resumable uploads (tus 1.0): an upload that arrives over many requests, each resuming at the
//! offset the server last made durable, and that becomes an ordinary upload — same id, size and
//! SHA-256 known, usable as a job input without a copy — once its last byte is in.
//!
//! - **Offset.** A row (`ferry_resumable_uploads`) records how many bytes are durable, the
//!   SHA-256 of exactly those bytes (the hasher's saved state, so nothing is read back at the
//!   end) and how the store holds them ([`StoreState`]). It only ever advances over bytes the
//!   store has made durable (a checkpoint), so a `kill -9` mid-request loses nothing that the
//!   offset acknowledged; the client resumes from the offset HEAD reports.
//! - **One writer.** A request appending holds the row's lock (a token with an expiry, renewed
//!   while it writes), taken by a conditional UPDATE: two requests on one upload — on one
//!   replica or two — cannot both write; the loser gets `423 upload_locked`. Every checkpoint is
//!   written only while the token still holds, so a writer that lost its lock records nothing.
//! - **Off the request.** The bytes go through a task of their own, fed by the request: if the
//!   client goes away (and the HTTP layer drops the request), the task still makes what arrived
//!   durable, records it and lets go of the lock.
//! - **Checksums** (`Upload-Checksum`): a request's bytes are recorded only once they match, so
//!   a mismatch (`460`) discards the whole request's bytes, and so does a cut-off request.
//! - **Completion.** The last checkpoint's request moves the bytes to `uploads/<id>`, records
//!   the upload (and the job its metadata asked for, in the same transaction), then deletes the
//!   row. A row left behind by a crash in between is recognised by its upload existing.

use std::{net::IpAddr, time::Duration};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    sea_query::{Expr, ExprTrait},
};
use serde::{Deserialize, Serialize};
use sha2::{
    Digest, Sha256,
    digest::common::hazmat::{SerializableState, SerializedState},
};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{
    ServiceError, ServiceResult, Services,
    inputs::{InputUpload, PlannedInput},
    jobs::JobRequest,
    pacing::{Pace, paced_body},
    quota::charged_body,
};
use crate::{
    blobs::{
        keys,
        resumable::{ResumableWriter, StoreState},
    },
    domain::validate_input_name,
    error_code::ErrorCode,
    ids::{JobId, UploadId},
    storage::{
        entities::{job_input, resumable_upload, upload},
        lookup::AtMostOne,
    },
    tenancy::Tenant,
    time::now_ms,
};

/// How long a writing request's hold on an upload lasts unless renewed. Short, because a
/// process killed mid-request holds it until it runs out and the client's resume waits (tus
/// clients retry a `423`).
pub const LOCK_TTL: Duration = Duration::from_secs(10);
/// How often a writer renews its hold.
const LOCK_RENEW: Duration = Duration::from_secs(3);
/// Chunks on their way from the request to the writing task.
const QUEUED_CHUNKS: usize = 8;

/// A new resumable upload, as the client described it.
#[derive(Clone, Debug, Default)]
pub struct NewResumable {
    /// `None`: the client will say with a later request (tus `Upload-Defer-Length`).
    pub length: Option<u64>,
    /// The `Upload-Metadata` header as sent, echoed back on HEAD.
    pub metadata: Option<String>,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    /// The job to create once the upload is complete.
    pub job: Option<JobOnCompletion>,
    /// A part that tus' concatenation will join to others ([`super::concatenation`]).
    pub partial: bool,
}

/// A job to create from an upload once it completes (tus metadata `ferry-kind`,
/// `ferry-params`, `ferry-input`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobOnCompletion {
    pub kind: String,
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
    pub input: String,
}

/// A checksum of one request's bytes (tus `Upload-Checksum`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checksum {
    pub algorithm: ChecksumAlgorithm,
    pub expected: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChecksumAlgorithm {
    Sha1,
    Sha256,
}

impl ChecksumAlgorithm {
    /// The names `Tus-Checksum-Algorithm` lists.
    pub const NAMES: &str = "sha1,sha256";

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "sha1" => Some(Self::Sha1),
            "sha256" => Some(Self::Sha256),
            _ => None,
        }
    }
}

/// The running checksum of one request's bytes.
enum ChunkHasher {
    Sha1(sha1::Sha1),
    Sha256(Sha256),
}

impl ChunkHasher {
    fn new(algorithm: ChecksumAlgorithm) -> Self {
        match algorithm {
            ChecksumAlgorithm::Sha1 => Self::Sha1(sha1::Sha1::new()),
            ChecksumAlgorithm::Sha256 => Self::Sha256(Sha256::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha1(h) => h.update(bytes),
            Self::Sha256(h) => h.update(bytes),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Self::Sha1(h) => h.finalize().to_vec(),
            Self::Sha256(h) => h.finalize().to_vec(),
        }
    }
}

/// One request appending to an upload.
#[derive(Clone, Debug, Default)]
pub struct Append {
    /// Where the client says it resumes (`Upload-Offset`).
    pub offset: u64,
    /// The upload's length, when the client deferred it and says it now.
    pub length: Option<u64>,
    /// `Content-Length`, when the client sent one.
    pub declared: Option<u64>,
    pub checksum: Option<Checksum>,
    /// The connection's peer, for its share of the upload slots.
    pub client: Option<IpAddr>,
    /// The request's body ends the upload, whatever its length (the IETF draft's
    /// `Upload-Complete: ?1` on a request of unknown length).
    pub complete_at_end: bool,
}

/// Where a resumable upload stands.
#[derive(Clone, Debug)]
pub enum ResumableStatus {
    InProgress(resumable_upload::Model),
    /// Every byte is in: it is an ordinary upload now, with the first job made on it, if any
    /// (the one its metadata asked for, made by the completing request).
    Complete(upload::Model, Option<Uuid>),
}

/// What one appending request achieved.
#[derive(Debug)]
pub struct Appended {
    pub offset: u64,
    pub expires_at_ms: Option<i64>,
    /// Set by the request that completed the upload.
    pub completed: Option<Completed>,
}

#[derive(Debug)]
pub struct Completed {
    pub upload: UploadId,
    pub job: Option<JobId>,
    /// Why the job the metadata asked for was not created (the upload was recorded anyway).
    pub job_problem: Option<ServiceError>,
}

/// What the request hands the writing task.
enum Piece {
    Chunk(Bytes),
    /// The body ended, complete.
    End,
    /// The body failed (stalled, cut off, over a quota): what to answer.
    Failed(ServiceError),
}

/// A writing request's hold on its upload (see [`LOCK_TTL`]).
#[derive(Clone, Debug)]
struct Hold {
    id: Uuid,
    token: String,
}

impl Services {
    fn resumable_ttl_ms(&self) -> i64 {
        self.settings.limits.resumable_upload_ttl.as_millis() as i64
    }

    /// Creates an empty resumable upload; its bytes come with [`Services::append_resumable`].
    pub async fn create_resumable(
        &self,
        tenant: &Tenant,
        new: NewResumable,
    ) -> ServiceResult<resumable_upload::Model> {
        if !self.blobs.supports_resumable() {
            return Err(ServiceError::new(
                ErrorCode::ResumableUnsupported,
                "this server's blob store takes no resumable uploads (a local folder or S3 does); \
                 send the file in one request to POST /v1/uploads",
            ));
        }
        self.check_upload_length(new.length)?;
        self.check_upload_room(tenant, new.length.unwrap_or(1))
            .await?;
        if let Some(job) = &new.job {
            if new.partial {
                return Err(ServiceError::invalid(
                    "ferry-kind",
                    "a partial upload makes no job: give ferry-kind to the final upload that \
                     joins the parts",
                ));
            }
            self.check_job_on_completion(job).await?;
            self.precheck_queue_room(tenant).await?;
        }
        let id = UploadId::new();
        let state = self.blobs.begin_resumable(id.0).await?;
        let now = now_ms();
        let row = resumable_upload::Model {
            id: id.0,
            tenant: tenant.as_str().to_owned(),
            length: new.length.map(|l| l as i64),
            upload_offset: 0,
            metadata: new.metadata,
            content_type: new.content_type,
            filename: new.filename,
            sha256_state: save_hasher(&Sha256::new()),
            store_state: serde_json::to_string(&state).expect("store state as JSON"),
            job_request: new
                .job
                .map(|job| serde_json::to_string(&job).expect("job as JSON")),
            partial: new.partial,
            lock_token: None,
            lock_expires_at_ms: None,
            created_at_ms: now,
            updated_at_ms: now,
            expires_at_ms: now + self.resumable_ttl_ms(),
        };
        let inserted =
            resumable_upload::Entity::insert(resumable_upload::ActiveModel::from(row.clone()))
                .exec_without_returning(&self.db.orm)
                .await;
        if let Err(err) = inserted {
            self.discard_resumable_bytes(id.0, &state).await;
            return Err(err.into());
        }
        tracing::info!(upload = %id, length = ?new.length, "resumable upload created");
        Ok(row)
    }

    /// An upload's length, when known: at least a byte, at most `limits.max_upload_bytes`.
    fn check_upload_length(&self, length: Option<u64>) -> ServiceResult<()> {
        let limit = self.settings.limits.max_upload_bytes;
        match length {
            Some(0) => Err(ServiceError::new(
                ErrorCode::EmptyBody,
                "Upload-Length is 0: an upload needs at least one byte",
            )),
            Some(len) if len > limit => Err(ServiceError::new(
                ErrorCode::PayloadTooLarge,
                format!("Upload-Length {len} exceeds the upload limit of {limit} bytes"),
            )),
            _ => Ok(()),
        }
    }

    /// The job request of a metadata, checked as `POST /v1/jobs` would check it.
    pub(super) async fn check_job_on_completion(&self, job: &JobOnCompletion) -> ServiceResult<()> {
        validate_input_name(&job.input)
            .map_err(|msg| ServiceError::invalid("ferry-input", format!("input name {msg}")))?;
        self.job_spec(JobRequest {
            kind: job.kind.clone(),
            params: job.params.clone(),
            ..JobRequest::default()
        })
        .await
        .map(drop)
    }

    /// Creates the job a completed upload's metadata asked for, on that upload.
    pub(super) async fn create_job_on(
        &self,
        tenant: &Tenant,
        job: JobOnCompletion,
        upload: InputUpload,
    ) -> ServiceResult<JobId> {
        let spec = self
            .job_spec(JobRequest {
                kind: job.kind,
                params: job.params,
                ..JobRequest::default()
            })
            .await?;
        let view = self
            .insert_job(
                tenant,
                spec,
                vec![PlannedInput::single(job.input, upload)],
                None,
            )
            .await?;
        Ok(JobId(view.job.id))
    }

    /// Where upload `id` stands: still receiving, or complete.
    pub async fn resumable_status(
        &self,
        tenant: &Tenant,
        id: UploadId,
    ) -> ServiceResult<ResumableStatus> {
        let row = resumable_upload::Entity::find_by_id(id.0)
            .filter(resumable_upload::Column::Tenant.eq(tenant.as_str()))
            .at_most_one(&self.db.orm)
            .await?;
        let upload = upload::Entity::find_by_id(id.0)
            .filter(upload::Column::Tenant.eq(tenant.as_str()))
            .filter(
                upload::Column::ExpiresAtMs
                    .is_null()
                    .or(upload::Column::ExpiresAtMs.gt(now_ms())),
            )
            .at_most_one(&self.db.orm)
            .await?;
        match (row, upload) {
            (_, Some(upload)) => {
                let first_job = job_input::Entity::find()
                    .select_only()
                    .column(job_input::Column::JobId)
                    .filter(job_input::Column::UploadId.eq(upload.id))
                    .order_by_asc(job_input::Column::JobId)
                    .limit(1)
                    .into_tuple::<Uuid>()
                    .all(&self.db.orm)
                    .await?
                    .into_iter()
                    .next();
                Ok(ResumableStatus::Complete(upload, first_job))
            }
            (Some(row), None) if row.expires_at_ms > now_ms() => {
                Ok(ResumableStatus::InProgress(row))
            }
            _ => Err(resumable_not_found(id)),
        }
    }

    /// Appends a request's body to upload `id` at `append.offset`, making durable (and
    /// recording) what arrives even if the request is cut short, unless a checksum was given.
    pub async fn append_resumable<S, E>(
        &self,
        tenant: &Tenant,
        id: UploadId,
        append: Append,
        body: S,
    ) -> ServiceResult<Appended>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let row = match self.resumable_status(tenant, id).await? {
            ResumableStatus::InProgress(row) => row,
            ResumableStatus::Complete(upload, _) => {
                return Err(offset_mismatch(append.offset, upload.size as u64));
            }
        };
        let length = match (row.length, append.length) {
            (Some(known), Some(said)) if known as u64 != said => {
                return Err(ServiceError::new(
                    ErrorCode::InvalidUploadHeader,
                    format!("Upload-Length is {said}, but the upload was created with {known}"),
                ));
            }
            (Some(known), _) => Some(known as u64),
            (None, said) => said,
        };
        self.check_upload_length(length)?;
        if append.offset != row.upload_offset as u64 {
            return Err(offset_mismatch(append.offset, row.upload_offset as u64));
        }
        if let (Some(length), Some(declared)) = (length, append.declared)
            && append.offset + declared > length
        {
            return Err(length_exceeded(length));
        }
        let in_flight = self.open_upload_quota(tenant, append.declared).await?;
        let slot = self.take_upload_slot()?;
        let share = match append.client {
            None => None,
            Some(client) => Some(self.take_client_share(client)?),
        };
        let hold = self.hold_resumable(&row).await?;
        if length.is_some() && row.length.is_none() {
            resumable_upload::Entity::update_many()
                .col_expr(
                    resumable_upload::Column::Length,
                    Expr::value(length.map(|l| l as i64)),
                )
                .filter(resumable_upload::Column::Id.eq(row.id))
                .filter(resumable_upload::Column::LockToken.eq(hold.token.as_str()))
                .exec(&self.db.orm)
                .await?;
        }

        let (pieces, received) = mpsc::channel(QUEUED_CHUNKS);
        let (answer, answered) = oneshot::channel();
        let writing = WriteRequest {
            services: self.clone(),
            tenant: tenant.clone(),
            row,
            length,
            checksum: append.checksum,
            complete_at_end: append.complete_at_end,
            hold,
            _slots: (slot, share),
        };
        // The task owns the write from here: it ends it properly whether or not this request
        // is still there to hear how.
        tokio::spawn(async move {
            let outcome = writing.run(received).await;
            let _ = answer.send(outcome);
        });
        let body = charged_body(paced_body(body, Pace::of(&self.settings.limits)), in_flight);
        let mut body = std::pin::pin!(body);
        let mut whole = false;
        loop {
            let piece = match body.next().await {
                None => {
                    whole = true;
                    break;
                }
                Some(Ok(bytes)) => Piece::Chunk(bytes),
                Some(Err(err)) => {
                    let err: ServiceError = crate::blobs::BlobError::Source(err).into();
                    let _ = pieces.send(Piece::Failed(err)).await;
                    break;
                }
            };
            if pieces.send(piece).await.is_err() {
                break; // the writer stopped; it answers why
            }
        }
        if whole {
            let _ = pieces.send(Piece::End).await;
        }
        drop(pieces);
        let appended = answered.await.unwrap_or_else(|_| {
            Err(ServiceError::new(
                ErrorCode::InternalError,
                "the write of this request stopped unexpectedly; HEAD the upload and resume",
            ))
        });
        if let Ok(done) = &appended {
            self.db
                .metrics()
                .upload_bytes(done.offset.saturating_sub(append.offset));
            if done.completed.is_some() {
                self.db.metrics().upload_ended("stored");
            }
        }
        appended
    }

    /// Takes the writing hold on `row`, or says why not: another request holds it (`423`), or
    /// the offset moved meanwhile (`409`).
    async fn hold_resumable(&self, row: &resumable_upload::Model) -> ServiceResult<Hold> {
        let token = Uuid::now_v7().simple().to_string();
        let now = now_ms();
        let taken = resumable_upload::Entity::update_many()
            .col_expr(
                resumable_upload::Column::LockToken,
                Expr::value(token.as_str()),
            )
            .col_expr(
                resumable_upload::Column::LockExpiresAtMs,
                Expr::value(now + LOCK_TTL.as_millis() as i64),
            )
            .filter(resumable_upload::Column::Id.eq(row.id))
            .filter(resumable_upload::Column::UploadOffset.eq(row.upload_offset))
            .filter(
                resumable_upload::Column::LockToken
                    .is_null()
                    .or(resumable_upload::Column::LockExpiresAtMs.lt(now)),
            )
            .exec(&self.db.orm)
            .await?;
        if taken.rows_affected == 1 {
            return Ok(Hold { id: row.id, token });
        }
        let now_at = resumable_upload::Entity::find_by_id(row.id)
            .select_only()
            .column(resumable_upload::Column::UploadOffset)
            .into_tuple::<i64>()
            .at_most_one(&self.db.orm)
            .await?;
        match now_at {
            Some(offset) if offset != row.upload_offset => {
                Err(offset_mismatch(row.upload_offset as u64, offset as u64))
            }
            Some(_) => Err(ServiceError::new(
                ErrorCode::UploadLocked,
                "another request is writing to this upload; retry when it has ended (HEAD \
                 gives the offset to resume from)",
            )),
            None => Err(resumable_not_found(UploadId(row.id))),
        }
    }

    /// Deletes an unfinished upload and its bytes (tus termination); a complete one is deleted
    /// like `DELETE /v1/uploads/{id}`.
    pub async fn terminate_resumable(&self, tenant: &Tenant, id: UploadId) -> ServiceResult<()> {
        let row = match self.resumable_status(tenant, id).await? {
            ResumableStatus::Complete(..) => return self.delete_upload(tenant, id).await,
            ResumableStatus::InProgress(row) => row,
        };
        let hold = self.hold_resumable(&row).await?;
        let deleted = resumable_upload::Entity::delete_many()
            .filter(resumable_upload::Column::Id.eq(id.0))
            .filter(resumable_upload::Column::LockToken.eq(hold.token.as_str()))
            .exec(&self.db.orm)
            .await?;
        if deleted.rows_affected == 1 {
            self.discard_resumable_bytes(id.0, &store_state(&row)?)
                .await;
        }
        Ok(())
    }

    /// Completes uploads whose every byte is in but whose completion was cut short (a store
    /// that failed while completing, a process killed then), as the client's next request
    /// would (reconciler step; a tus client that sees `Upload-Offset` equal to the length sends
    /// none). Returns how many it completed.
    pub(crate) async fn finish_received_uploads(&self, now: i64) -> ServiceResult<usize> {
        let due = resumable_upload::Entity::find()
            .filter(resumable_upload::Column::Length.is_not_null())
            .filter(
                Expr::col(resumable_upload::Column::UploadOffset)
                    .eq(Expr::col(resumable_upload::Column::Length)),
            )
            .filter(
                resumable_upload::Column::LockToken
                    .is_null()
                    .or(resumable_upload::Column::LockExpiresAtMs.lt(now)),
            )
            .limit(20)
            .all(&self.db.orm)
            .await?;
        let mut finished = 0;
        for row in due {
            let Ok(tenant) = Tenant::parse(&row.tenant) else {
                continue;
            };
            let offset = row.upload_offset as u64;
            let nothing = futures_util::stream::empty::<Result<Bytes, std::io::Error>>();
            let append = Append {
                offset,
                length: Some(offset),
                declared: Some(0),
                ..Append::default()
            };
            match self
                .append_resumable(&tenant, UploadId(row.id), append, nothing)
                .await
            {
                Ok(done) if done.completed.is_some() => finished += 1,
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(upload = %UploadId(row.id), error = %err,
                        "could not complete a received upload; retried next pass");
                }
            }
        }
        Ok(finished)
    }

    /// Deletes resumable uploads whose time ran out, bytes first (reconciler step); returns how
    /// many. A row whose upload completed (left by a crash) goes without touching the upload.
    pub(crate) async fn expire_resumable_uploads(&self, now: i64) -> ServiceResult<usize> {
        let due = resumable_upload::Entity::find()
            .filter(resumable_upload::Column::ExpiresAtMs.lt(now))
            .filter(
                resumable_upload::Column::LockToken
                    .is_null()
                    .or(resumable_upload::Column::LockExpiresAtMs.lt(now)),
            )
            .limit(100)
            .all(&self.db.orm)
            .await?;
        let mut expired = 0;
        for row in due {
            let state = store_state(&row)?;
            let completed = upload::Entity::find_by_id(row.id)
                .select_only()
                .column(upload::Column::Id)
                .into_tuple::<Uuid>()
                .at_most_one(&self.db.orm)
                .await?
                .is_some();
            if completed {
                // Only what completing left: tails (the object is the upload's now).
                self.blobs
                    .delete_prefix(&keys::resumable_prefix(row.id))
                    .await?;
            } else {
                self.blobs.discard_resumable(row.id, &state).await?;
            }
            let gone = resumable_upload::Entity::delete_many()
                .filter(resumable_upload::Column::Id.eq(row.id))
                .filter(resumable_upload::Column::ExpiresAtMs.lt(now))
                .exec(&self.db.orm)
                .await?;
            expired += gone.rows_affected as usize;
        }
        Ok(expired)
    }

    async fn discard_resumable_bytes(&self, id: Uuid, state: &StoreState) {
        if let Err(err) = self.blobs.discard_resumable(id, state).await {
            tracing::warn!(upload = %UploadId(id), error = %err,
                "could not delete a resumable upload's bytes; the reconciler retries");
        }
    }
}

/// One appending request's write, on a task of its own.
struct WriteRequest {
    services: Services,
    tenant: Tenant,
    row: resumable_upload::Model,
    length: Option<u64>,
    checksum: Option<Checksum>,
    /// See [`Append::complete_at_end`].
    complete_at_end: bool,
    hold: Hold,
    /// The process's upload slot and the client's share, held until the write ends (not the
    /// request: a writer whose client went away still holds its part's worth of memory).
    _slots: (
        tokio::sync::OwnedSemaphorePermit,
        Option<super::uploads::ClientShare>,
    ),
}

/// How the body ended, for the writer.
enum BodyEnd {
    Complete,
    Cut(Option<ServiceError>),
}

impl WriteRequest {
    async fn run(self, pieces: mpsc::Receiver<Piece>) -> ServiceResult<Appended> {
        let outcome = self.write(pieces).await;
        // Whatever happened, the next request may write (a no-op once completion deleted the
        // row, or when a newer holder took over after this one's hold ran out).
        let released = resumable_upload::Entity::update_many()
            .col_expr(
                resumable_upload::Column::LockToken,
                Expr::value(Option::<String>::None),
            )
            .col_expr(
                resumable_upload::Column::LockExpiresAtMs,
                Expr::value(Option::<i64>::None),
            )
            .filter(resumable_upload::Column::Id.eq(self.hold.id))
            .filter(resumable_upload::Column::LockToken.eq(self.hold.token.as_str()))
            .exec(&self.services.db.orm)
            .await;
        if let Err(err) = released {
            tracing::warn!(upload = %UploadId(self.hold.id), error = %err,
                "could not release an upload's hold; it runs out by itself");
        }
        outcome
    }

    /// Writes while renewing the hold on its own schedule, so that a slow store (a part put
    /// to S3) cannot let it run out; a hold that cannot be renewed ends the write.
    async fn write(&self, pieces: mpsc::Receiver<Piece>) -> ServiceResult<Appended> {
        tokio::select! {
            outcome = self.write_body(pieces) => outcome,
            lost = self.keep_renewing() => Err(lost),
        }
    }

    async fn keep_renewing(&self) -> ServiceError {
        loop {
            tokio::time::sleep(LOCK_RENEW).await;
            if let Err(err) = self.renew().await {
                return err;
            }
        }
    }

    async fn write_body(&self, mut pieces: mpsc::Receiver<Piece>) -> ServiceResult<Appended> {
        let blobs = &self.services.blobs;
        let mut recorded = self.row.upload_offset as u64;
        // Every byte was in before this request and an earlier one moved them into place
        // before it was cut: there is nothing left to write (nor a staging file or tail to
        // resume from), only the upload to record.
        if self.length == Some(recorded) && self.object_in_place(recorded).await {
            let hasher = load_hasher(&self.row.sha256_state)?;
            return Ok(Appended {
                offset: recorded,
                expires_at_ms: None,
                completed: Some(self.record(hasher, recorded).await?),
            });
        }
        let mut writer = blobs
            .resume(self.row.id, &store_state(&self.row)?, recorded)
            .await?;
        let mut hasher = load_hasher(&self.row.sha256_state)?;
        let mut checksum = self
            .checksum
            .as_ref()
            .map(|c| ChunkHasher::new(c.algorithm));
        let end = loop {
            let chunk = match pieces.recv().await {
                Some(Piece::Chunk(chunk)) => chunk,
                Some(Piece::End) => break BodyEnd::Complete,
                Some(Piece::Failed(err)) => break BodyEnd::Cut(Some(err)),
                None => break BodyEnd::Cut(None),
            };
            let after = writer.offset() + chunk.len() as u64;
            match self.length {
                Some(length) if after > length => {
                    break BodyEnd::Cut(Some(length_exceeded(length)));
                }
                // A deferred length is still bounded by the largest upload.
                None if after > self.services.settings.limits.max_upload_bytes => {
                    break BodyEnd::Cut(Some(ServiceError::new(
                        ErrorCode::PayloadTooLarge,
                        format!(
                            "uploads are limited to {} bytes",
                            self.services.settings.limits.max_upload_bytes
                        ),
                    )));
                }
                _ => {}
            }
            hasher.update(&chunk);
            if let Some(sum) = &mut checksum {
                sum.update(&chunk);
            }
            let worth_a_checkpoint = writer.append(chunk).await?;
            if worth_a_checkpoint && checksum.is_none() {
                recorded = self.checkpoint(&mut writer, &hasher, recorded).await?;
            }
        };

        // A checksum covers the whole request: unless all of it came and matches, none of it
        // is kept (what was written past the recorded offset is cut off by the next request).
        if let (Some(sum), Some(expected)) = (checksum, &self.checksum) {
            if let BodyEnd::Cut(why) = end {
                return Err(why.unwrap_or_else(body_cut));
            }
            if sum.finish() != expected.expected {
                return Err(ServiceError::new(
                    ErrorCode::ChecksumMismatch,
                    format!(
                        "the request's bytes do not match its Upload-Checksum; they were \
                         discarded, the upload stays at offset {recorded}: send them again"
                    ),
                ));
            }
        }
        if writer.offset() > recorded {
            recorded = self.checkpoint(&mut writer, &hasher, recorded).await?;
        }
        if let BodyEnd::Cut(why) = end {
            return Err(why.unwrap_or_else(body_cut));
        }
        let length = match self.length {
            None if self.complete_at_end => Some(recorded),
            known => known,
        };
        if self.complete_at_end && length != Some(recorded) {
            return Err(ServiceError::new(
                ErrorCode::InvalidUploadHeader,
                format!(
                    "Upload-Complete: ?1, but the upload is at offset {recorded} of {}: send the \
                     rest (the bytes of this request are kept)",
                    length.unwrap_or(recorded)
                ),
            ));
        }
        if recorded == 0 && length == Some(0) {
            return Err(ServiceError::new(
                ErrorCode::EmptyBody,
                "the upload ends without a byte: an upload needs at least one",
            ));
        }
        if length == Some(recorded) {
            let completed = self.complete(writer, hasher, recorded).await?;
            return Ok(Appended {
                offset: recorded,
                expires_at_ms: None,
                completed: Some(completed),
            });
        }
        Ok(Appended {
            offset: recorded,
            expires_at_ms: Some(now_ms() + self.services.resumable_ttl_ms()),
            completed: None,
        })
    }

    /// Makes what `writer` appended durable and records it, while the hold is still ours.
    async fn checkpoint(
        &self,
        writer: &mut ResumableWriter,
        hasher: &Sha256,
        recorded: u64,
    ) -> ServiceResult<u64> {
        let state = writer.checkpoint().await?;
        let now = now_ms();
        let saved = resumable_upload::Entity::update_many()
            .col_expr(
                resumable_upload::Column::UploadOffset,
                Expr::value(writer.offset() as i64),
            )
            .col_expr(
                resumable_upload::Column::Sha256State,
                Expr::value(save_hasher(hasher)),
            )
            .col_expr(
                resumable_upload::Column::StoreState,
                Expr::value(serde_json::to_string(&state).expect("store state as JSON")),
            )
            .col_expr(resumable_upload::Column::UpdatedAtMs, Expr::value(now))
            .col_expr(
                resumable_upload::Column::ExpiresAtMs,
                Expr::value(now + self.services.resumable_ttl_ms()),
            )
            .col_expr(
                resumable_upload::Column::LockExpiresAtMs,
                Expr::value(now + LOCK_TTL.as_millis() as i64),
            )
            .filter(resumable_upload::Column::Id.eq(self.hold.id))
            .filter(resumable_upload::Column::LockToken.eq(self.hold.token.as_str()))
            .filter(resumable_upload::Column::UploadOffset.eq(recorded as i64))
            .exec(&self.services.db.orm)
            .await?;
        if saved.rows_affected != 1 {
            return Err(hold_lost());
        }
        writer.tidy().await;
        Ok(writer.offset())
    }

    async fn renew(&self) -> ServiceResult<()> {
        let renewed = resumable_upload::Entity::update_many()
            .col_expr(
                resumable_upload::Column::LockExpiresAtMs,
                Expr::value(now_ms() + LOCK_TTL.as_millis() as i64),
            )
            .filter(resumable_upload::Column::Id.eq(self.hold.id))
            .filter(resumable_upload::Column::LockToken.eq(self.hold.token.as_str()))
            .exec(&self.services.db.orm)
            .await?;
        if renewed.rows_affected != 1 {
            return Err(hold_lost());
        }
        Ok(())
    }

    /// The upload is complete: its bytes become `uploads/<id>`, recorded as an upload (with its
    /// job, if asked) before the resumable row goes.
    async fn complete(
        &self,
        writer: ResumableWriter,
        hasher: Sha256,
        size: u64,
    ) -> ServiceResult<Completed> {
        if let Err(err) = self.services.blobs.finish_resumable(writer).await {
            // A request that completed the object but died before recording it: its object is
            // there, whole.
            if !self.object_in_place(size).await {
                return Err(err.into());
            }
        }
        self.record(hasher, size).await
    }

    /// Whether the upload's bytes are already where a complete upload's are, all `size` of
    /// them: an earlier request moved them there and was cut before recording the upload.
    async fn object_in_place(&self, size: u64) -> bool {
        let key = keys::upload(self.row.id);
        self.services.blobs.head(&key).await.ok() == Some(size)
    }

    /// Records the complete upload `size` bytes long whose bytes are in place (with the job its
    /// metadata asked for), then deletes its resumable row.
    async fn record(&self, hasher: Sha256, size: u64) -> ServiceResult<Completed> {
        let services = &self.services;
        let id = UploadId(self.row.id);
        let now = now_ms();
        let upload = upload::Model {
            id: id.0,
            tenant: self.tenant.as_str().to_owned(),
            size: size as i64,
            sha256: hex::encode(hasher.finalize()),
            content_type: self.row.content_type.clone(),
            blob_key: keys::upload(id.0).to_string(),
            filename: self.row.filename.clone(),
            job_count: 0,
            created_at_ms: now,
            expires_at_ms: Some(now + services.settings.limits.upload_ttl.as_millis() as i64),
        };
        let job_request: Option<JobOnCompletion> = self
            .row
            .job_request
            .as_deref()
            .and_then(|json| serde_json::from_str(json).ok());
        let mut completed = Completed {
            upload: id,
            job: None,
            job_problem: None,
        };
        let mut recorded = false;
        if let Some(job) = job_request {
            let created = services
                .create_job_on(&self.tenant, job, InputUpload::Stored(upload.clone()))
                .await;
            match created {
                Ok(job) => {
                    completed.job = Some(job);
                    recorded = true;
                }
                Err(err) => {
                    tracing::warn!(upload = %id, error = %err,
                        "a completed upload's job could not be created; the upload is kept");
                    completed.job_problem = Some(err);
                }
            }
        }
        if !recorded {
            services.record_upload(&upload).await?;
        }
        resumable_upload::Entity::delete_many()
            .filter(resumable_upload::Column::Id.eq(id.0))
            .exec(&services.db.orm)
            .await?;
        tracing::info!(upload = %id, size, job = ?completed.job, "resumable upload complete");
        Ok(completed)
    }
}

fn store_state(row: &resumable_upload::Model) -> ServiceResult<StoreState> {
    serde_json::from_str(&row.store_state).map_err(|e| {
        ServiceError::new(
            ErrorCode::InternalError,
            format!(
                "upload {}'s stored state is unreadable: {e}",
                UploadId(row.id)
            ),
        )
    })
}

fn save_hasher(hasher: &Sha256) -> Vec<u8> {
    hasher.serialize().to_vec()
}

fn load_hasher(saved: &[u8]) -> ServiceResult<Sha256> {
    let state = SerializedState::<Sha256>::try_from(saved).map_err(|_| corrupt_hasher())?;
    Sha256::deserialize(&state).map_err(|_| corrupt_hasher())
}

fn corrupt_hasher() -> ServiceError {
    ServiceError::new(
        ErrorCode::InternalError,
        "an upload's saved SHA-256 state is unreadable",
    )
}

fn resumable_not_found(id: UploadId) -> ServiceError {
    ServiceError::new(
        ErrorCode::UploadNotFound,
        format!("no upload {id}: it never existed, expired or was deleted"),
    )
}

pub(crate) fn offset_mismatch(sent: u64, at: u64) -> ServiceError {
    ServiceError::new(
        ErrorCode::UploadOffsetMismatch,
        format!(
            "Upload-Offset is {sent} but the upload is at offset {at}: resume from {at} (HEAD \
             gives the offset)"
        ),
    )
}

fn length_exceeded(length: u64) -> ServiceError {
    ServiceError::new(
        ErrorCode::UploadLengthExceeded,
        format!("the upload's length is {length} bytes; this request would go past it"),
    )
}

fn body_cut() -> ServiceError {
    ServiceError::new(
        ErrorCode::BodyIncomplete,
        "the request ended before its body did; what arrived is kept unless a checksum was \
         given: HEAD the upload and resume",
    )
}

fn hold_lost() -> ServiceError {
    ServiceError::new(
        ErrorCode::UploadLocked,
        "another request took this upload over while this one stalled; HEAD it and resume",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The saved state continues exactly where the hasher was: the digest of a file hashed in
    /// two sessions equals the digest of it hashed at once.
    #[test]
    fn a_saved_hasher_continues_the_same_digest() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for split in [0, 1, 63, 64, 65, 4096, 9_999] {
            let mut first = Sha256::new();
            first.update(&data[..split]);
            let mut second = load_hasher(&save_hasher(&first)).expect("state loads");
            second.update(&data[split..]);
            assert_eq!(
                second.finalize().to_vec(),
                Sha256::digest(&data).to_vec(),
                "split at {split}"
            );
        }
        assert!(load_hasher(b"short").is_err());
    }
}
