//! Ferry: delayed online inference on large inputs.
//!
//! Layers, with dependencies pointing one way:
//! `api` (actix handlers, wire types, problem responses) → `service` (uploads, jobs, results; no
//! actix types) → `storage` (sea-orm entities, transactions), `blobs` (object_store), `queue`
//! (apalis dispatch) and `workspace` (work folders and handler processes on this machine).
//! `webhooks` (signing, the address guard, the retry schedule and the background deliverer)
//! sits beside `service`, on `storage`. `worker` runs handlers and calls `service`, never `api`.
//! `app` wires it all together for the `serve`, `worker` and `migrate` commands. `client_cli` is the other side: the `submit`, `jobs`,
//! `results` and `uploads` commands, clients of a running server through `ferry-client`.

pub mod api;
pub mod app;
pub mod blobs;
pub mod cli;
pub mod client_cli;
pub mod config;
pub mod domain;
pub mod error_code;
pub mod ids;
pub mod keys_cli;
pub mod metrics;
pub mod queue;
pub mod service;
pub mod storage;
pub mod telemetry;
pub mod tenancy;
pub mod time;
pub mod webhooks;
pub mod worker;
pub mod workspace;
