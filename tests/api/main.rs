//! Ferry's integration tests: one binary (one link). Most tests run the application in-process
//! on port 0 and talk HTTP to it through typed helpers that check every answer against
//! `openapi.yaml`; those that need real `ferry` processes (kill -9, signals, restarts, several
//! processes) start them.

mod bounded_storage;
mod cli;
mod cli_client;
mod client;
mod contract;
mod dashboard;
mod errors;
mod event_source;
mod event_stream;
mod generated_clients;
mod handlers;
mod helpers;
mod hostile_clients;
mod hostile_handlers;
mod http_edges;
mod in_process;
mod input_lists;
mod job_requests;
mod jobs;
mod lifecycle;
mod long_poll;
mod metrics;
mod poll_cache;
mod query_plans;
mod queue_order;
mod quotas;
mod reliability;
mod reruns;
mod results;
mod rust_client;
mod scale_out;
mod schemathesis;
mod shared_inputs;
mod spec;
mod tenancy;
mod tools;
mod traces;
mod tus;
mod upgrades;
mod uploads;
mod versions;
mod webhook_receiver;
mod webhooks;
