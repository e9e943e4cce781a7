//! Replicas (`serve --replica`): several servers share one event log (a JetStream stream) behind a
//! proxy that routes each call by its `x-session-id`. A session normally stays on one replica, but
//! moves when the proxy's set of replicas changes (one dies, is drained, or joins). So before a
//! batch is planned, each of its sessions is caught up from the log: the records of the session
//! after the position its entry reflects (all of them for a session this replica does not hold) are
//! read and applied through the replay path, without being logged again. Records this replica wrote
//! itself into the same entry are skipped (they were applied before they were logged); so are events
//! whose client_seq the entry has already applied.
//!
//! A record acknowledged to a client is durable in the log before the acknowledgement leaves, and
//! the log is read through its leader, so a request that follows an acknowledged event, on whichever
//! replica, sees it. The design note is `docs/replicas.md`.

use std::collections::HashMap;
use std::sync::{Arc, mpsc};
use std::time::Instant;

use lambdarec_eventlog::{Position, RecordKind, SessionReader};
use tracing::{debug, warn};

use super::plan::{Exec, Planner};
use crate::engine::journal::Confirmed;
use crate::engine::sessions::SessionStore;
use crate::engine::{EngineError, Envelope, Job};
use crate::metrics::Metrics;
use crate::registry::error_chain;

/// The shared log's per-session reader, this replica's name in the records it writes, and the
/// journal's word on where they landed.
pub(in crate::engine) struct Handoff {
    pub(in crate::engine) reader: Box<dyn SessionReader>,
    pub(in crate::engine) writer: Arc<str>,
    pub(in crate::engine) confirmed: mpsc::Receiver<Vec<Confirmed>>,
}

/// What catching a batch's sessions up found: the log position each one now reflects.
pub(super) type Floors = HashMap<String, Position>;

fn session_of(job: &Job) -> Option<&str> {
    match job {
        Job::Event { req, .. } => Some(&req.session_id),
        Job::Recommend { req, .. } => Some(&req.session_id),
        Job::Score { req, .. } => Some(&req.session_id),
        Job::GetSession { session_id, .. } | Job::DeleteSession { session_id, .. } => {
            Some(session_id)
        }
        Job::Replay { .. } => None,
    }
}

impl Handoff {
    /// Takes in what the journal confirmed so far: each record of this replica's that the log
    /// confirmed directly follows the position its entry was known up to moves the entry's floor
    /// to it, so the next catch-up need not read it back. Records of an entry since replaced (its
    /// session deleted or evicted, then created again) are ignored.
    pub(super) fn take_confirmations(&mut self, sessions: &mut SessionStore, now: Instant) {
        while let Ok(confirmed) = self.confirmed.try_recv() {
            for c in confirmed {
                let Some(slot) = sessions.peek(&c.session_id, now) else {
                    continue;
                };
                let e = sessions.entry_mut(slot);
                if c.writer_seq < e.own_from {
                    continue;
                }
                e.in_flight = e.in_flight.saturating_sub(1);
                if c.contiguous {
                    e.log_floor = e.log_floor.max(c.position);
                }
            }
        }
    }

    /// Catches up every session of `batch` from the shared log (see the module docs). When the log
    /// cannot be read, the batch's requests fail (UNAVAILABLE: the client retries) rather than be
    /// answered from a state that may be behind, and the batch is left empty.
    pub(super) fn catch_up(
        &mut self,
        planner: &mut Planner,
        metrics: &Metrics,
        x: &mut Exec<'_>,
        batch: &mut Vec<Envelope>,
        (now, now_ms): (Instant, i64),
    ) -> Floors {
        let mut floors = Floors::new();
        for env in batch.iter() {
            if let Some(id) = session_of(&env.job)
                && !floors.contains_key(id)
            {
                let floor = match planner.sessions.peek(id, now) {
                    Some(slot) => planner.sessions.entry(slot).log_floor,
                    None => 0,
                };
                floors.insert(id.to_string(), floor);
            }
        }
        let queries: Vec<(&str, Position)> = floors.iter().map(|(k, &v)| (k.as_str(), v)).collect();
        let started = Instant::now();
        let found = match self.reader.records_after(&queries) {
            Ok(found) => found,
            Err(e) => {
                warn!(error = %error_chain(&e), sessions = queries.len(), "cannot catch sessions up from the shared log; failing their requests");
                let why = format!("cannot read the sessions from the shared event log: {e}");
                for env in batch.drain(..) {
                    env.job.fail(EngineError::LogFailed(why.clone()));
                }
                return Floors::new();
            }
        };
        metrics
            .handoff_seconds
            .observe(started.elapsed().as_secs_f64());
        let writer = &*self.writer;
        let mut apply = Vec::new();
        let mut caught_up = Vec::with_capacity(queries.len());
        for ((id, _), records) in queries.iter().zip(found) {
            let Some(&(last, _)) = records.last() else {
                continue;
            };
            caught_up.push((id.to_string(), last));
            let live = planner.sessions.peek(id, now);
            let (mut foreign, mut own_reads) = (0, 0);
            for (position, r) in records {
                if let Some(slot) = live {
                    let e = planner.sessions.entry(slot);
                    // Written by this replica into this entry, or (a restored session) by the
                    // server whose snapshot it came from, before the capture.
                    let own = (r.writer == writer && r.writer_seq >= e.own_from)
                        || e.prior_own.as_ref().is_some_and(|(w, from, to)| {
                            r.writer == **w && (*from..*to).contains(&r.writer_seq)
                        });
                    let seen = r.kind() == RecordKind::Event
                        && r.client_seq
                            .is_some_and(|s| planner.sessions.has_seq(slot, s));
                    own_reads += u64::from(own);
                    if own || seen {
                        continue;
                    }
                }
                foreign += 1;
                apply.push((position, r));
            }
            metrics.handoff_own_reads.inc_by(own_reads);
            if foreign > 0 {
                debug!(session = %id, records = foreign, held = live.is_some(), "caught a session up from the shared log");
                metrics.handoff_sessions[usize::from(live.is_some())].inc();
                metrics.handoff_records.inc_by(foreign);
            }
        }
        let floors: Floors = caught_up.into_iter().collect();
        if !apply.is_empty() {
            let stats = planner.plan_replay(x, apply, now, now_ms);
            if stats.unknown_items > 0 {
                debug!(
                    events = stats.unknown_items,
                    "caught-up events name items the serving model does not know; skipped"
                );
            }
        }
        floors
    }
}

/// Records the positions a batch's sessions were caught up to, once the batch is planned (a
/// session the batch created gets its floor here too, so its history is not read again).
pub(super) fn set_floors(sessions: &mut SessionStore, floors: Floors, now: Instant) {
    for (id, floor) in floors {
        if let Some(slot) = sessions.peek(&id, now) {
            let e = sessions.entry_mut(slot);
            e.log_floor = e.log_floor.max(floor);
        }
    }
}
