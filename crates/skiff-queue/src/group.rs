//! Group commit for enqueues: concurrent callers share one transaction and one fsync.
//!
//! An enqueue must be fsynced before it returns, and the fsync is most of its cost. When
//! several threads enqueue at once (a broker serving concurrent POSTs, each on its own
//! `spawn_blocking` thread), the first becomes the *leader* and commits its own events. Callers
//! arriving meanwhile *park* a copy of their events and wait. When the leader is done, one of
//! the parked callers becomes the next leader and commits everything parked so far (up to
//! [`MAX_GROUP_EVENTS`] events or [`MAX_GROUP_BYTES`] of payload) in one transaction, then
//! hands every parked caller its own result. A lone caller never waits or copies: it is the
//! leader of a group of one.
//!
//! Every caller returns only after the transaction holding its events committed, so the
//! durability promise of [`crate::Queue::enqueue`] is unchanged. Callers' events are never
//! interleaved: each caller's events get consecutive ids. If the group's transaction fails,
//! nothing of it was stored and every caller in it gets the error.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use jiff::Timestamp;

use crate::{DeliveryId, NewEvent, Queue, QueueError};

/// Most events one group transaction takes, so one commit stays short.
const MAX_GROUP_EVENTS: usize = 4096;

/// Most payload bytes one group transaction takes.
const MAX_GROUP_BYTES: usize = 16 * 1024 * 1024;

/// What a caller gets back: its events' delivery ids.
type Outcome = Result<Vec<Vec<DeliveryId>>, QueueError>;

/// The waiting room of enqueues, part of a [`Queue`].
#[derive(Default)]
pub(crate) struct Group {
    state: Mutex<GroupState>,
    /// Signalled whenever a leader finishes.
    finished: Condvar,
}

#[derive(Default)]
struct GroupState {
    /// A leader is committing.
    leading: bool,
    /// Requests waiting for the next leader, in arrival order.
    parked: VecDeque<Parked>,
    /// Results of committed (or failed) parked requests, by ticket, until their callers take
    /// them.
    results: HashMap<u64, Outcome>,
    next_ticket: u64,
}

/// A caller's request, copied so that another thread's leader can commit it.
struct Parked {
    ticket: u64,
    now: Timestamp,
    events: Vec<OwnedEvent>,
    bytes: usize,
}

struct OwnedEvent {
    payload: Vec<u8>,
    source_key: Option<String>,
    subscriptions: Vec<String>,
}

impl Group {
    /// Locks the group state. Nothing that can panic runs under this lock, and the state is
    /// consistent between statements, so a poisoned lock is simply taken over.
    fn lock(&self) -> MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Commits `events` (already validated) durably, together with whatever other callers are
/// enqueueing at the same time.
pub(crate) fn commit(queue: &Queue, events: &[NewEvent<'_>], now: Timestamp) -> Outcome {
    let group = &queue.group;
    let mut state = group.lock();
    if !state.leading && state.parked.is_empty() {
        // Nobody is committing or waiting: lead a group of one, without copying.
        state.leading = true;
        drop(state);
        let leadership = Leadership {
            group,
            tickets: Vec::new(),
        };
        let outcome = queue
            .insert_requests(&[(now, events)])
            .map(|mut requests| requests.pop().unwrap_or_default());
        drop(leadership.finish(Vec::new()));
        return outcome;
    }

    let ticket = state.next_ticket;
    state.next_ticket += 1;
    state.parked.push_back(Parked {
        ticket,
        now,
        bytes: events.iter().map(|e| e.payload.len()).sum(),
        events: events
            .iter()
            .map(|e| OwnedEvent {
                payload: e.payload.to_vec(),
                source_key: e.source_key.map(str::to_owned),
                subscriptions: e.subscriptions.iter().map(|s| (*s).to_owned()).collect(),
            })
            .collect(),
    });
    loop {
        if let Some(outcome) = state.results.remove(&ticket) {
            return outcome;
        }
        if state.leading {
            state = group
                .finished
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        }
        // The last leader is done and our request is still waiting (or its result is): lead
        // the next group.
        state.leading = true;
        let batch = take_batch(&mut state.parked);
        drop(state);
        let leadership = Leadership {
            group,
            tickets: batch.iter().map(|p| p.ticket).collect(),
        };
        let outcomes = commit_parked(queue, &batch);
        state = leadership.finish(outcomes);
    }
}

/// Takes parked requests from the front, at least one, within the group limits.
fn take_batch(parked: &mut VecDeque<Parked>) -> Vec<Parked> {
    let mut batch: Vec<Parked> = Vec::new();
    let (mut events, mut bytes) = (0, 0);
    while let Some(next) = parked.front() {
        if !batch.is_empty()
            && (events + next.events.len() > MAX_GROUP_EVENTS
                || bytes + next.bytes > MAX_GROUP_BYTES)
        {
            break;
        }
        events += next.events.len();
        bytes += next.bytes;
        batch.extend(parked.pop_front());
    }
    batch
}

/// Commits parked requests in one transaction; returns each one's outcome, in order.
fn commit_parked(queue: &Queue, batch: &[Parked]) -> Vec<Outcome> {
    let subscriptions: Vec<Vec<Vec<&str>>> = batch
        .iter()
        .map(|p| {
            p.events
                .iter()
                .map(|e| e.subscriptions.iter().map(String::as_str).collect())
                .collect()
        })
        .collect();
    let events: Vec<Vec<NewEvent<'_>>> = batch
        .iter()
        .zip(&subscriptions)
        .map(|(p, subs)| {
            p.events
                .iter()
                .zip(subs)
                .map(|(e, subscriptions)| NewEvent {
                    payload: &e.payload,
                    source_key: e.source_key.as_deref(),
                    subscriptions,
                })
                .collect()
        })
        .collect();
    let requests: Vec<(Timestamp, &[NewEvent<'_>])> = batch
        .iter()
        .zip(&events)
        .map(|(p, events)| (p.now, events.as_slice()))
        .collect();
    match queue.insert_requests(&requests) {
        Ok(ids) => ids.into_iter().map(Ok).collect(),
        Err(err) => batch.iter().map(|_| Err(err.clone())).collect(),
    }
}

/// A thread's turn as leader. Finishing (or unwinding) hands the results to the parked callers
/// and lets the next leader start.
struct Leadership<'a> {
    group: &'a Group,
    /// The parked requests this leader took; empty once their results are handed over.
    tickets: Vec<u64>,
}

impl<'a> Leadership<'a> {
    /// Publishes `outcomes` (one per ticket, in order) and steps down; returns the locked state.
    fn finish(mut self, outcomes: Vec<Outcome>) -> MutexGuard<'a, GroupState> {
        let tickets = std::mem::take(&mut self.tickets);
        let mut state = self.group.lock();
        state.results.extend(tickets.into_iter().zip(outcomes));
        state.leading = false;
        self.group.finished.notify_all();
        state
    }
}

impl Drop for Leadership<'_> {
    fn drop(&mut self) {
        // Only reached without `finish` if the commit panicked: fail the parked callers rather
        // than leave them waiting forever, and let another leader start.
        if !self.tickets.is_empty() || std::thread::panicking() {
            let mut state = self.group.lock();
            for ticket in self.tickets.drain(..) {
                state.results.insert(ticket, Err(QueueError::Poisoned));
            }
            state.leading = false;
            self.group.finished.notify_all();
        }
    }
}
