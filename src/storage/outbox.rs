//! The webhook outbox: the delivery rows an event owes its endpoints, written by
//! [`Tx::insert_event`](super::Tx::insert_event) in the event's own transaction, so that an event
//! that committed always has its deliveries and a rolled-back one never does (no event is sent
//! that did not happen, none that happened is lost to a crash between the two writes).
//!
//! Progress is coalesced: a progress event takes over the job's pending progress delivery that
//! no deliverer has tried yet, per endpoint, instead of adding one — the newest wins. Ordering
//! stays right because deliveries of one job to one endpoint are sent in `event_seq` order.

use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter, QueryTrait,
    sea_query::{Alias, Expr, ExprTrait, Query},
};
use uuid::Uuid;

use super::{
    StorageError, Tx,
    entities::{webhook_delivery as delivery, webhook_endpoint as endpoint},
};

/// States of a delivery row (`ferry_webhook_deliveries.state`).
pub const PENDING: &str = "pending";
pub const SUCCEEDED: &str = "succeeded";
pub const FAILED: &str = "failed";

const PROGRESS: &str = "progress";

impl Tx {
    /// Writes the deliveries of event `seq` (of type `event_type`) of job `job_id`: one per
    /// enabled endpoint of the job's tenant that wants this type, tenant-wide or the job's own.
    pub(super) async fn enqueue_deliveries(
        &mut self,
        job_id: Uuid,
        seq: i64,
        event_type: &str,
        now_ms: i64,
    ) -> Result<(), StorageError> {
        let coalescable = || {
            delivery::Column::JobId
                .eq(job_id)
                .and(delivery::Column::EventType.eq(PROGRESS))
                .and(delivery::Column::State.eq(PENDING))
                .and(delivery::Column::Attempts.eq(0))
                .and(delivery::Column::LeaseOwner.is_null())
        };
        if event_type == PROGRESS {
            self.execute(
                &delivery::Entity::update_many()
                    .col_expr(delivery::Column::EventSeq, Expr::value(seq))
                    .col_expr(delivery::Column::UpdatedAtMs, Expr::value(now_ms))
                    .filter(coalescable())
                    .into_query(),
            )
            .await?;
        }
        let e = Alias::new("e");
        let mut select = Query::select();
        select
            .expr(Expr::col((e.clone(), endpoint::Column::Id)))
            .expr(Expr::value(job_id))
            .expr(Expr::value(seq))
            .expr(Expr::value(event_type))
            .expr(Expr::value(PENDING))
            .expr(Expr::value(0i32))
            .expr(Expr::value(now_ms))
            .expr(Expr::value(now_ms))
            .expr(Expr::value(now_ms))
            .from_as(endpoint::Entity, e.clone())
            .and_where(Expr::col((e.clone(), endpoint::Column::Enabled)).eq(true))
            // Only the job's tenant's endpoints hear of it.
            .and_where(
                Expr::col((e.clone(), endpoint::Column::Tenant)).eq(super::job_tenant(job_id)),
            )
            .and_where(
                Expr::col((e.clone(), endpoint::Column::JobId))
                    .is_null()
                    .or(Expr::col((e.clone(), endpoint::Column::JobId)).eq(job_id)),
            )
            .and_where(
                Expr::col((e.clone(), endpoint::Column::Events)).like(format!("%,{event_type},%")),
            );
        if event_type == PROGRESS {
            // Endpoints whose pending progress delivery just took this event over.
            let mut taken_over = Query::select();
            taken_over
                .expr(Expr::val(1))
                .from(delivery::Entity)
                .cond_where(coalescable())
                .and_where(delivery::Column::EventSeq.eq(seq))
                .and_where(
                    Expr::col((delivery::Entity, delivery::Column::EndpointId))
                        .equals((e.clone(), endpoint::Column::Id)),
                );
            select.and_where(Expr::exists(taken_over).not());
        }
        self.execute(
            Query::insert()
                .into_table(delivery::Entity)
                .columns([
                    delivery::Column::EndpointId,
                    delivery::Column::JobId,
                    delivery::Column::EventSeq,
                    delivery::Column::EventType,
                    delivery::Column::State,
                    delivery::Column::Attempts,
                    delivery::Column::NextAttemptAtMs,
                    delivery::Column::CreatedAtMs,
                    delivery::Column::UpdatedAtMs,
                ])
                // Fails only if the counts of columns differ: nine and nine.
                .select_from(select)
                .expect("as many selected values as inserted columns"),
        )
        .await?;
        Ok(())
    }
}
