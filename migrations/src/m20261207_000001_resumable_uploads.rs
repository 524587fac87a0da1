//! Resumable uploads (tus 1.0) in progress. A row of their own rather than a state of
//! `ferry_uploads`: an upload row still means "complete, durable and verified", so nothing that
//! reads uploads changes. The transaction that records the finished upload (and, when asked,
//! its job) deletes this row; the upload keeps the same id.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum FerryResumableUploads {
    Table,
    Id,
    Tenant,
    /// `NULL` while the client defers it (tus `Upload-Defer-Length`).
    Length,
    /// Bytes durable in the store; only ever advanced past bytes that are.
    UploadOffset,
    /// The `Upload-Metadata` header as the client sent it (echoed back on HEAD).
    Metadata,
    ContentType,
    Filename,
    /// The SHA-256 of the first `offset` bytes, as the hasher's saved state.
    Sha256State,
    /// How the store holds the bytes so far (JSON; see `blobs::resumable`).
    StoreState,
    /// The job to create when the upload completes (JSON), if the client asked for one.
    JobRequest,
    /// A part of an upload that tus' concatenation will join to others (`Upload-Concat:
    /// partial`).
    Partial,
    /// The PATCH writing to it now, and until when its hold is valid (renewed while it writes).
    LockToken,
    LockExpiresAtMs,
    CreatedAtMs,
    UpdatedAtMs,
    /// An unfinished upload is deleted, bytes and all, after this (moved on by every write).
    ExpiresAtMs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        use FerryResumableUploads as T;
        m.create_table(
            Table::create()
                .table(T::Table)
                .col(ColumnDef::new(T::Id).uuid().not_null().primary_key())
                .col(ColumnDef::new(T::Tenant).string_len(63).not_null())
                .col(ColumnDef::new(T::Length).big_integer().null())
                .col(ColumnDef::new(T::UploadOffset).big_integer().not_null())
                .col(ColumnDef::new(T::Metadata).text().null())
                .col(ColumnDef::new(T::ContentType).text().null())
                .col(ColumnDef::new(T::Filename).text().null())
                .col(ColumnDef::new(T::Sha256State).binary().not_null())
                .col(ColumnDef::new(T::StoreState).text().not_null())
                .col(ColumnDef::new(T::JobRequest).text().null())
                .col(
                    ColumnDef::new(T::Partial)
                        .boolean()
                        .not_null()
                        .default(false),
                )
                .col(ColumnDef::new(T::LockToken).string_len(32).null())
                .col(ColumnDef::new(T::LockExpiresAtMs).big_integer().null())
                .col(ColumnDef::new(T::CreatedAtMs).big_integer().not_null())
                .col(ColumnDef::new(T::UpdatedAtMs).big_integer().not_null())
                .col(ColumnDef::new(T::ExpiresAtMs).big_integer().not_null())
                .to_owned(),
        )
        .await?;
        // The reconciler's sweep of expired uploads.
        m.create_index(
            Index::create()
                .name("idx_ferry_resumable_uploads_expires")
                .table(T::Table)
                .col(T::ExpiresAtMs)
                .to_owned(),
        )
        .await?;
        // The reconciler's search for uploads with every byte in whose completion was cut: a
        // partial index, holding only those (the same SQL on SQLite and PostgreSQL; sea-query
        // has no partial indexes).
        m.get_connection()
            .execute_unprepared(
                "CREATE INDEX idx_ferry_resumable_uploads_received \
                 ON ferry_resumable_uploads (id) \
                 WHERE length IS NOT NULL AND upload_offset = length",
            )
            .await
            .map(drop)
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(FerryResumableUploads::Table).to_owned())
            .await
    }
}
