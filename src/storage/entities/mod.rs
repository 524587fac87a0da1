//! sea-orm entities, one file per table of `migrations/`. Rows, not wire types: the API maps them.

pub mod api_key;
pub mod audit_event;
pub mod idempotency_key;
pub mod job;
pub mod job_event;
pub mod job_input;
pub mod job_log;
pub mod kind_tag;
pub mod rerun_batch;
pub mod result;
pub mod resumable_upload;
pub mod tag_move;
pub mod upload;
pub mod upload_day;
pub mod webhook_attempt;
pub mod webhook_delivery;
pub mod webhook_endpoint;
pub mod worker;
