//! Job rows recently read for status polls on PostgreSQL, kept only while every change to them is
//! heard.
//!
//! A status poll on PostgreSQL is a round trip to another process; at tens of thousands of polls
//! a second that process needs more CPU than the API. Every change to a job row sends a
//! notification to every process sharing the database (a trigger on `ferry_jobs`, see
//! `changes`), so a process may answer polls from rows it read, dropping a row as soon as its
//! notification arrives — and a row changed by this process as soon as the change commits, so
//! a client reads its own writes. Three rules keep it from ever serving a stale row longer than
//! a notification takes:
//!
//! - a read may store what it read only if no change to its job was heard since it began (an
//!   epoch taken before the read): a row read just before a change and stored just after it
//!   would otherwise stay. Which jobs changed is remembered for the last [`CAPACITY`] changes;
//!   a read older than what was forgotten stores nothing;
//! - while the listening connection is down, nothing is served or stored (notifications sent
//!   meanwhile are lost), and everything is dropped when it goes down;
//! - a row older than `max_age` is read again, whatever was heard: the bound if a connection
//!   dies without a word (a silent network), until it is noticed.
//!
//! Hand-written rather than a cache crate: the epoch check must be atomic with the insert, which
//! the usual crates do not offer, and a map under one lock is all it needs (a poll holds it for
//! a lookup and a clone).

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use uuid::Uuid;

use super::entities::job;

/// Rows kept at most (a few KiB each), and changes remembered: memory stays bounded however
/// many jobs are polled or change.
const CAPACITY: usize = 10_000;

/// Taken before a read; storing its row succeeds only if nothing changed since.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Epoch(u64);

#[derive(Debug)]
pub struct JobRowCache {
    max_age: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Counts changes heard (and losses of the listener); see [`Epoch`].
    epoch: u64,
    /// The epoch of each job's last change heard, for the last [`CAPACITY`] changes, in order.
    changed: HashMap<Uuid, u64>,
    changes: VecDeque<(Uuid, u64)>,
    /// Reads that began before this epoch store nothing: a change they missed may have been
    /// forgotten (or the listener was down).
    floor: u64,
    /// Whether every change is being heard (the listener is subscribed).
    listening: bool,
    rows: HashMap<Uuid, (job::Model, Instant)>,
    /// Insertion order, for evicting the oldest rows past [`CAPACITY`]; may name rows already
    /// dropped.
    order: VecDeque<Uuid>,
}

impl JobRowCache {
    /// A cache that serves nothing until [`JobRowCache::listening`] is called.
    pub fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            state: Mutex::new(State::default()),
        }
    }

    /// The row of job `id` if one was stored less than `max_age` ago and no change to it was
    /// heard since.
    pub fn get(&self, id: Uuid) -> Option<job::Model> {
        let state = self.lock();
        let (row, stored) = state.rows.get(&id)?;
        (state.listening && stored.elapsed() < self.max_age).then(|| row.clone())
    }

    /// To be taken before reading a row that may then be stored.
    pub fn epoch(&self) -> Epoch {
        Epoch(self.lock().epoch)
    }

    /// Stores `row`, read after `since` was taken, unless a change to its job was heard
    /// meanwhile.
    pub fn put(&self, row: job::Model, since: Epoch) {
        let mut state = self.lock();
        let changed_since = state.changed.get(&row.id).is_some_and(|&at| at > since.0);
        if !state.listening || since.0 < state.floor || changed_since || self.max_age.is_zero() {
            return;
        }
        let id = row.id;
        if state.rows.insert(id, (row, Instant::now())).is_none() {
            state.order.push_back(id);
        }
        while state.rows.len() > CAPACITY {
            let Some(oldest) = state.order.pop_front() else {
                break;
            };
            state.rows.remove(&oldest);
        }
        // Ids of rows dropped by `changed` linger in `order`; keep it from growing past them.
        if state.order.len() > 2 * CAPACITY {
            let State { rows, order, .. } = &mut *state;
            order.retain(|id| rows.contains_key(id));
        }
    }

    /// Job `id` changed: drop its row, and refuse its rows read before now.
    pub fn changed(&self, id: Uuid) {
        let mut state = self.lock();
        state.epoch += 1;
        let epoch = state.epoch;
        state.rows.remove(&id);
        state.changed.insert(id, epoch);
        state.changes.push_back((id, epoch));
        while state.changes.len() > CAPACITY {
            let Some((forgotten, at)) = state.changes.pop_front() else {
                break;
            };
            // Not if it changed again since: that later change is still remembered.
            if state.changed.get(&forgotten) == Some(&at) {
                state.changed.remove(&forgotten);
                state.floor = state.floor.max(at);
            }
        }
    }

    /// The listener is subscribed: from now on every change is heard.
    pub fn listening(&self) {
        let mut state = self.lock();
        state.forget_everything();
        state.listening = true;
    }

    /// The listener lost its connection: changes may go unheard until it is back.
    pub fn deaf(&self) {
        let mut state = self.lock();
        state.forget_everything();
        state.listening = false;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves nothing half-done that matters: the map is
        // replaced or added to whole.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    /// Drops every row, and refuses every read begun before now.
    fn forget_everything(&mut self) {
        self.epoch += 1;
        self.floor = self.epoch;
        self.rows.clear();
        self.order.clear();
        self.changed.clear();
        self.changes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: Uuid) -> job::Model {
        crate::storage::inline_reads::tests::job(id, false)
    }

    fn cache() -> JobRowCache {
        let cache = JobRowCache::new(Duration::from_secs(60));
        cache.listening();
        cache
    }

    #[test]
    fn a_stored_row_is_served_until_its_job_changes() {
        let cache = cache();
        let id = Uuid::now_v7();
        cache.put(row(id), cache.epoch());
        assert_eq!(cache.get(id), Some(row(id)));
        cache.changed(id);
        assert!(cache.get(id).is_none());
    }

    #[test]
    fn a_row_read_before_a_change_is_not_stored_after_it() {
        let cache = cache();
        let (id, other) = (Uuid::now_v7(), Uuid::now_v7());
        let before = cache.epoch();
        cache.changed(id); // heard while the read was on its way
        cache.put(row(id), before);
        assert!(cache.get(id).is_none());
        // Another job's change does not keep this one's row out.
        let before = cache.epoch();
        cache.changed(other);
        cache.put(row(id), before);
        assert_eq!(cache.get(id), Some(row(id)));
        // A read older than the changes remembered stores nothing: the one it missed may be
        // among those forgotten.
        let long_ago = cache.epoch();
        for _ in 0..=CAPACITY {
            cache.changed(Uuid::now_v7());
        }
        cache.put(row(other), long_ago);
        assert!(cache.get(other).is_none());
        let now = cache.epoch();
        cache.put(row(other), now);
        assert!(cache.get(other).is_some());
        assert!(cache.lock().changes.len() <= CAPACITY);
        assert!(cache.lock().changed.len() <= CAPACITY);
    }

    #[test]
    fn nothing_is_served_or_stored_while_changes_go_unheard() {
        let cache = JobRowCache::new(Duration::from_secs(60));
        let id = Uuid::now_v7();
        cache.put(row(id), cache.epoch());
        assert!(cache.get(id).is_none(), "not yet listening");

        cache.listening();
        let before = cache.epoch();
        cache.put(row(id), before);
        assert!(cache.get(id).is_some());
        cache.deaf();
        assert!(
            cache.get(id).is_none(),
            "dropped when the listener goes down"
        );
        let during = cache.epoch();
        cache.put(row(id), during);
        assert!(cache.get(id).is_none());
        // A read that began while deaf is refused after the listener is back.
        cache.listening();
        cache.put(row(id), during);
        assert!(cache.get(id).is_none());
    }

    #[test]
    fn rows_age_out_and_memory_stays_bounded() {
        let aging = JobRowCache::new(Duration::from_millis(20));
        aging.listening();
        let id = Uuid::now_v7();
        aging.put(row(id), aging.epoch());
        std::thread::sleep(Duration::from_millis(30));
        assert!(aging.get(id).is_none());

        let cache = cache();
        let ids: Vec<Uuid> = (0..CAPACITY + 10).map(|_| Uuid::now_v7()).collect();
        for id in &ids {
            cache.put(row(*id), cache.epoch());
        }
        assert!(cache.get(ids[0]).is_none(), "the oldest went");
        assert!(cache.get(ids[CAPACITY + 9]).is_some());
        assert_eq!(cache.lock().rows.len(), CAPACITY);
        for id in &ids {
            cache.changed(*id);
            cache.put(row(*id), cache.epoch());
        }
        assert!(cache.lock().order.len() <= 2 * CAPACITY);
    }

    #[test]
    fn max_age_zero_turns_it_off() {
        let off = JobRowCache::new(Duration::ZERO);
        off.listening();
        let id = Uuid::now_v7();
        off.put(row(id), off.epoch());
        assert!(off.get(id).is_none());
    }
}
