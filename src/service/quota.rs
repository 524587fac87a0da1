//! Upload quotas per tenant: bytes in flight, bytes per UTC day, bytes stored. Each is checked
//! before a body is read (against its declared length, when it has one) and again once the
//! upload is stored, before it is recorded; an upload refused at the end has its bytes deleted,
//! so nothing a client was refused stays behind.
//!
//! - **In flight** (`max_upload_bytes_in_flight`): what the tenant's unfinished uploads have
//!   sent (or declared) to this process. Counted in memory, per API process, like the upload
//!   slots: it bounds what one process receives for a tenant at once. An upload that goes beyond
//!   is cut off (`429 upload_quota`).
//! - **Per day** (`max_upload_bytes_per_day`): a ledger per tenant and UTC day
//!   (`ferry_upload_days`), added to in the transaction that records each upload, so uploads
//!   deleted the same day still count. Refused uploads are told when the day ends
//!   (`Retry-After`).
//! - **Stored** (`max_stored_bytes`): the tenant's uploads (inputs included) and results, summed
//!   when an upload starts and when it ends (a sum over the tenant's rows: no counter that could
//!   drift from what is stored). Refused with `507 storage_quota`. Results are never refused for
//!   it — a job that ran is not thrown away — but they count, so a tenant whose results fill its
//!   quota uploads nothing more until it deletes some.
//!
//! Concurrent uploads of one tenant are each checked against what was recorded before them, so
//! together they can pass the day's or the storage's limit by at most what was in flight.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use sea_orm::{
    ColumnTrait, EntityTrait, JoinType, QueryFilter, QuerySelect, RelationDef,
    sea_query::{Expr, ExprTrait, OnConflict, Query},
};

use super::{BoxError, RateLimitFields, ServiceError, ServiceResult, Services};
use crate::{
    error_code::ErrorCode,
    storage::{
        Tx,
        entities::{job, result, upload, upload_day},
        lookup::AtMostOne,
    },
    tenancy::Tenant,
    time::now_ms,
};

const DAY_MS: i64 = 24 * 3600 * 1000;

/// Bytes in flight per tenant in this process.
#[derive(Clone, Debug, Default)]
pub struct InFlight(Arc<Mutex<HashMap<String, u64>>>);

/// One upload's share of its tenant's bytes in flight; given back when dropped.
#[derive(Debug)]
pub struct InFlightCharge {
    in_flight: InFlight,
    tenant: String,
    /// 0: no limit (nothing is counted).
    limit: u64,
    /// What this upload counts for: its declared length, or what it sent beyond it.
    charged: u64,
    received: u64,
}

/// An upload cut off because its tenant's bytes in flight went over the limit.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error(
    "the tenant's uploads in progress would hold more than {limit} bytes at once (its \
     max_upload_bytes_in_flight); send fewer or smaller uploads at once"
)]
pub struct InFlightExceeded {
    pub limit: u64,
}

impl InFlightCharge {
    /// Counts `bytes` more for this upload; refused (nothing counted) over the limit.
    fn charge(&mut self, bytes: u64) -> Result<(), InFlightExceeded> {
        if self.limit == 0 || bytes == 0 {
            return Ok(());
        }
        let mut totals = self.in_flight.0.lock().expect("in-flight lock");
        let total = totals.entry(self.tenant.clone()).or_insert(0);
        if *total + bytes > self.limit {
            return Err(InFlightExceeded { limit: self.limit });
        }
        *total += bytes;
        self.charged += bytes;
        Ok(())
    }

    /// A chunk arrived: counted once the upload sends more than it declared.
    fn received(&mut self, bytes: u64) -> Result<(), InFlightExceeded> {
        let received = self.received + bytes;
        self.charge(received.saturating_sub(self.charged))?;
        self.received = received;
        Ok(())
    }
}

impl Drop for InFlightCharge {
    fn drop(&mut self) {
        if self.charged == 0 {
            return;
        }
        let mut totals = self.in_flight.0.lock().expect("in-flight lock");
        if let Some(total) = totals.get_mut(&self.tenant) {
            *total = total.saturating_sub(self.charged);
            if *total == 0 {
                totals.remove(&self.tenant);
            }
        }
    }
}

/// `body`, counted against `charge` as it arrives, cut off with [`InFlightExceeded`] (its
/// reader, the blob store's `put_stream`, stops at the first error).
pub fn charged_body<S>(
    body: S,
    mut charge: InFlightCharge,
) -> impl Stream<Item = Result<Bytes, BoxError>>
where
    S: Stream<Item = Result<Bytes, BoxError>>,
{
    body.map(move |item| {
        let chunk = item?;
        charge.received(chunk.len() as u64)?;
        Ok(chunk)
    })
}

/// The UTC day of `ms` (days since the epoch).
fn day_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS)
}

/// Time left until the UTC day of `ms` ends.
fn until_day_ends(ms: i64) -> Duration {
    Duration::from_millis((DAY_MS - ms.rem_euclid(DAY_MS)) as u64)
}

impl Services {
    /// Before an upload's body is read: takes its share of the tenant's bytes in flight and
    /// checks the day's and the storage's room for its declared length (or one byte).
    pub(crate) async fn open_upload_quota(
        &self,
        tenant: &Tenant,
        declared: Option<u64>,
    ) -> ServiceResult<InFlightCharge> {
        let limits = self.settings.tenant_limits(tenant.as_str());
        let mut charge = InFlightCharge {
            in_flight: self.uploads_in_flight.clone(),
            tenant: tenant.as_str().to_owned(),
            limit: limits.max_upload_bytes_in_flight,
            charged: 0,
            received: 0,
        };
        charge
            .charge(declared.unwrap_or(0))
            .map_err(|e| ServiceError::new(ErrorCode::UploadQuota, e.to_string()))?;
        self.check_upload_room(tenant, declared.unwrap_or(1))
            .await?;
        Ok(charge)
    }

    /// Refuses `size` more bytes for `tenant` when its day's uploads or its stored bytes would
    /// go over their limits.
    pub(crate) async fn check_upload_room(&self, tenant: &Tenant, size: u64) -> ServiceResult<()> {
        let limits = self.settings.tenant_limits(tenant.as_str());
        let now = now_ms();
        if limits.max_upload_bytes_per_day > 0 {
            let today = self.uploaded_on(tenant, day_of(now)).await?;
            let max = limits.max_upload_bytes_per_day;
            if today + size > max {
                let wait = until_day_ends(now);
                let secs = Ord::max(wait.as_secs_f64().ceil() as u64, 1);
                let fields = RateLimitFields {
                    policy: format!(
                        "\"upload-bytes-per-day\";q={max};qu=\"content-bytes\";w=86400"
                    ),
                    limit: format!(
                        "\"upload-bytes-per-day\";r={};t={secs}",
                        max.saturating_sub(today)
                    ),
                };
                return Err(ServiceError::new(
                    ErrorCode::UploadQuota,
                    format!(
                        "tenant {tenant} uploaded {today} bytes today (UTC); {size} more would \
                         pass its max_upload_bytes_per_day of {}. Retry after midnight UTC",
                        limits.max_upload_bytes_per_day
                    ),
                )
                .retry_after(wait, Some(fields)));
            }
        }
        if limits.max_stored_bytes > 0 {
            let stored = self.stored_bytes(tenant).await?;
            if stored + size > limits.max_stored_bytes {
                return Err(ServiceError::new(
                    ErrorCode::StorageQuota,
                    format!(
                        "tenant {tenant} stores {stored} bytes of uploads and results; {size} \
                         more would pass its max_stored_bytes of {}. Delete jobs or uploads \
                         it no longer needs",
                        limits.max_stored_bytes
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Bytes `tenant` uploaded on `day`.
    pub async fn uploaded_on(&self, tenant: &Tenant, day: i64) -> ServiceResult<u64> {
        let bytes: Option<i64> = upload_day::Entity::find()
            .select_only()
            .column(upload_day::Column::Bytes)
            .filter(upload_day::Column::Tenant.eq(tenant.as_str()))
            .filter(upload_day::Column::Day.eq(day))
            .into_tuple()
            .at_most_one(&self.db.reads)
            .await?;
        Ok(Ord::max(bytes.unwrap_or(0), 0) as u64)
    }

    /// What `tenant` stores: its uploads' bytes (inputs of jobs included) and its jobs' results'.
    pub async fn stored_bytes(&self, tenant: &Tenant) -> ServiceResult<u64> {
        let uploads: Option<i64> = upload::Entity::find()
            .select_only()
            // BIGINT: PostgreSQL sums BIGINTs as NUMERIC.
            .expr(Expr::cust("CAST(COALESCE(SUM(size), 0) AS BIGINT)"))
            .filter(upload::Column::Tenant.eq(tenant.as_str()))
            .into_tuple()
            .at_most_one(&self.db.reads)
            .await?;
        let results: Option<i64> = result::Entity::find()
            .select_only()
            .expr(Expr::cust(
                "CAST(COALESCE(SUM(ferry_results.size), 0) AS BIGINT)",
            ))
            .join(JoinType::InnerJoin, result_job())
            .filter(job::Column::Tenant.eq(tenant.as_str()))
            .into_tuple()
            .at_most_one(&self.db.reads)
            .await?;
        Ok(Ord::max(uploads.unwrap_or(0) + results.unwrap_or(0), 0) as u64)
    }

    /// Adds a recorded upload's `size` to its tenant's day, in the transaction recording it.
    pub(crate) async fn count_uploaded(
        tx: &mut Tx,
        tenant: &str,
        size: i64,
        at_ms: i64,
    ) -> ServiceResult<()> {
        let insert = Query::insert()
            .into_table(upload_day::Entity)
            .columns([
                upload_day::Column::Tenant,
                upload_day::Column::Day,
                upload_day::Column::Bytes,
            ])
            .values_panic([tenant.into(), day_of(at_ms).into(), size.into()])
            .on_conflict(
                OnConflict::columns([upload_day::Column::Tenant, upload_day::Column::Day])
                    .value(
                        upload_day::Column::Bytes,
                        Expr::col((upload_day::Entity, upload_day::Column::Bytes))
                            .add(Expr::cust("excluded.bytes")),
                    )
                    .to_owned(),
            )
            .to_owned();
        tx.execute(&insert).await?;
        Ok(())
    }
}

/// results → jobs, for the tenant of a result.
fn result_job() -> RelationDef {
    result::Entity::belongs_to(job::Entity)
        .from(result::Column::JobId)
        .to(job::Column::Id)
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_days() {
        assert_eq!(day_of(0), 0);
        assert_eq!(day_of(DAY_MS - 1), 0);
        assert_eq!(day_of(DAY_MS), 1);
        assert_eq!(until_day_ends(DAY_MS - 1_000), Duration::from_secs(1));
        assert_eq!(until_day_ends(DAY_MS), Duration::from_millis(DAY_MS as u64));
    }

    fn charge(in_flight: &InFlight, limit: u64) -> InFlightCharge {
        InFlightCharge {
            in_flight: in_flight.clone(),
            tenant: "t".into(),
            limit,
            charged: 0,
            received: 0,
        }
    }

    #[test]
    fn bytes_in_flight_are_bounded_and_given_back() {
        let in_flight = InFlight::default();
        let mut first = charge(&in_flight, 100);
        first.charge(60).unwrap();
        // Bytes within what it declared are not counted twice.
        first.received(60).unwrap();
        let mut second = charge(&in_flight, 100);
        assert!(second.received(41).is_err());
        second.received(40).expect("40 more fit");
        drop(first);
        let mut third = charge(&in_flight, 100);
        third.received(60).unwrap();
        drop(second);
        drop(third);
        assert!(in_flight.0.lock().unwrap().is_empty());
    }
}
