//! The webhook outbox: the delivery rows an event owes its endpoints. A trigger on
//! `ferry_job_events` writes them in the statement that inserts the event (see the
//! `outbox_trigger` migration), so that an event that committed always has its deliveries and a
//! rolled-back one never does (no event is sent that did not happen, none that happened is lost
//! to a crash between two writes). Progress is coalesced there: the newest progress event takes
//! over a pending progress delivery that no deliverer has tried yet.
//!
//! What stays here are the states a delivery row goes through.

/// States of a delivery row (`ferry_webhook_deliveries.state`). The trigger writes `pending`
/// as a literal: keep the two in step.
pub const PENDING: &str = "pending";
pub const SUCCEEDED: &str = "succeeded";
pub const FAILED: &str = "failed";
