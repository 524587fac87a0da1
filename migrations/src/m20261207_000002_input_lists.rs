//! Inputs that are lists of uploads (a CT series: hundreds of DICOM slices), laid out for the
//! handler as a folder with one file per upload.
//!
//! - `ferry_uploads.filename`: the name the client gave the file (tus metadata `filename`, or
//!   `POST /v1/uploads?filename=`), which names it in a list input's folder.
//! - `ferry_job_inputs.input` and `.position`: a row of a list input names its list and its
//!   place in it; its `name` is then its path under the handler's input folder
//!   (`series/IM-0001.dcm`), unique per job like any input's name. Both are `NULL` for an input
//!   that is one upload, whose `name` is its file's name, as before.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum FerryUploads {
    Table,
    Filename,
}

#[derive(DeriveIden)]
enum FerryJobInputs {
    Table,
    Input,
    Position,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(FerryUploads::Table)
                .add_column(ColumnDef::new(FerryUploads::Filename).text().null())
                .to_owned(),
        )
        .await?;
        // SQLite adds one column per ALTER TABLE.
        m.alter_table(
            Table::alter()
                .table(FerryJobInputs::Table)
                .add_column(ColumnDef::new(FerryJobInputs::Input).text().null())
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(FerryJobInputs::Table)
                .add_column(ColumnDef::new(FerryJobInputs::Position).integer().null())
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for column in [FerryJobInputs::Input, FerryJobInputs::Position] {
            m.alter_table(
                Table::alter()
                    .table(FerryJobInputs::Table)
                    .drop_column(column)
                    .to_owned(),
            )
            .await?;
        }
        m.alter_table(
            Table::alter()
                .table(FerryUploads::Table)
                .drop_column(FerryUploads::Filename)
                .to_owned(),
        )
        .await
    }
}
