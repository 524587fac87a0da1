//! Ferry's integration tests: one binary (one link) whose modules each start real `ferry`
//! processes on port 0 and talk HTTP to them.

mod cli;
mod contract;
mod errors;
mod handlers;
mod helpers;
mod hostile_clients;
mod http_edges;
mod job_requests;
mod jobs;
mod lifecycle;
mod queue_order;
mod reliability;
mod results;
mod scale_out;
mod uploads;
