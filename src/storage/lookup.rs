//! Reads that match at most one row (lookups by key, aggregates) without the `LIMIT ?` that
//! sea-orm's `one()` adds; and pages of lists ([`Paged`]).
//!
//! Why not `one()`: SQLite re-prepares a statement on every execution when its `LIMIT` is a bound
//! parameter (the planner may use the bound value), so every `one()` parses and plans its SQL
//! again. Measured with `sqlite3_stmt_status(SQLITE_STMTSTATUS_REPREPARE)` on a job lookup: one
//! re-prepare per execution and 33 µs a lookup, against none and 5 µs without the `LIMIT`; under
//! a load of status polls, re-parsing was a fifth of the server's CPU. A query that matches at
//! most one row needs no `LIMIT`, so these read it with `all()` and take that row. `clippy.toml`
//! disallows `one()`, so a new lookup cannot bring the re-prepare back unnoticed.

use std::future::Future;

use sea_orm::{ConnectionTrait, DbErr, EntityTrait, QuerySelect, Select, Selector, SelectorTrait};

/// `one()` for queries that match at most one row (see the module notes).
pub trait AtMostOne: Sized + Send {
    type Row;

    /// The row the query matches, if any. Only for queries that cannot match more than one
    /// (by primary or unique key, or an aggregate): it reads every row that matches.
    fn at_most_one<C: ConnectionTrait>(
        self,
        db: &C,
    ) -> impl Future<Output = Result<Option<Self::Row>, DbErr>> + Send;
}

impl<E: EntityTrait> AtMostOne for Select<E> {
    type Row = E::Model;

    async fn at_most_one<C: ConnectionTrait>(self, db: &C) -> Result<Option<E::Model>, DbErr> {
        Ok(self.all(db).await?.into_iter().next())
    }
}

impl<S: SelectorTrait + Send> AtMostOne for Selector<S> {
    type Row = S::Item;

    async fn at_most_one<C: ConnectionTrait>(self, db: &C) -> Result<Option<S::Item>, DbErr> {
        Ok(self.all(db).await?.into_iter().next())
    }
}

/// A page of a list: up to `limit` rows of the query (ordered by the caller), and whether more
/// follow, learnt by reading one row more.
pub trait Paged: Sized + Send {
    type Row;

    fn page<C: ConnectionTrait>(
        self,
        limit: u64,
        db: &C,
    ) -> impl Future<Output = Result<(Vec<Self::Row>, bool), DbErr>> + Send;
}

impl<E: EntityTrait> Paged for Select<E> {
    type Row = E::Model;

    async fn page<C: ConnectionTrait>(
        self,
        limit: u64,
        db: &C,
    ) -> Result<(Vec<E::Model>, bool), DbErr> {
        let mut rows = self.limit(limit + 1).all(db).await?;
        let more = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        Ok((rows, more))
    }
}
