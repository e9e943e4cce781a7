//! The batcher thread: owns the backend and the session store, gathers up to `max_batch` requests (or
//! waits at most `max_wait` after the first), plans them in arrival order and serves each batch with
//! one `gru_step`, one `top_k` and one `score` call. Model installs are warmed up between batches and
//! swapped in between batches, so a batch always runs on one model.
//!
//! Ordering: a batch's events are applied before its queries. When that would change an answer — an
//! event for a session that already has a query planned in this batch, or a slot reused while it has
//! planned work — the plan so far is flushed first, so results equal one-at-a-time execution.

use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use lambdarec_kernels::{Backend, Event, ModelId, ScoreQuery, TopKQuery};
use lambdarec_proto::bundle::now_unix_ms;
use tracing::{debug, error};

use super::sessions::{Eviction, SessionStore};
use super::{
    EngineConfig, EngineError, Envelope, EventOutcome, Job, ModelView, Msg, Recommendation, Reply,
    ScoreOutcome, SessionSnapshot, Shared, unknown_inline,
};

/// How often expired sessions are swept when the server is idle.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

mod install;
use install::Warming;

struct Active {
    id: ModelId,
    view: Arc<ModelView>,
}

struct TopKPlan {
    slot: u32,
    k: usize,
    exclude: Vec<u32>,
    session_events: u64,
    reply: Reply<Recommendation>,
}

struct ScorePlan {
    slot: u32,
    candidates: Vec<String>,
    items: Vec<Option<u32>>,
    known: Vec<u32>,
    reply: Reply<ScoreOutcome>,
}

/// Backend work planned and not yet executed.
#[derive(Default)]
struct Plan {
    resets: Vec<u32>,
    events: Vec<Event>,
    acks: Vec<(Reply<EventOutcome>, EventOutcome)>,
    topk: Vec<TopKPlan>,
    scores: Vec<ScorePlan>,
}

impl Plan {
    fn is_empty(&self) -> bool {
        self.resets.is_empty()
            && self.events.is_empty()
            && self.topk.is_empty()
            && self.scores.is_empty()
    }
}

pub(super) struct Batcher {
    backend: Box<dyn Backend>,
    sessions: SessionStore,
    /// Slot of the zero state that unknown sessions are scored with; never stepped.
    scratch: u32,
    active: Option<Active>,
    warming: Option<Warming>,
    config: EngineConfig,
    shared: Arc<Shared>,
    plan: Plan,
    /// Incremented at each flush; a slot whose mark equals it has work in the current plan.
    epoch: u64,
    planned: Vec<u64>,
    queried: Vec<u64>,
    last_sweep: Instant,
}

impl Batcher {
    pub(super) fn new(
        backend: Box<dyn Backend>,
        config: EngineConfig,
        shared: Arc<Shared>,
    ) -> Self {
        let now = Instant::now();
        let capacity = config.max_sessions;
        Batcher {
            backend,
            sessions: SessionStore::new(capacity, config.session_ttl, config.limits.history, now),
            scratch: capacity as u32,
            active: None,
            warming: None,
            plan: Plan::default(),
            epoch: 1,
            planned: vec![0; capacity + 1],
            queried: vec![0; capacity + 1],
            last_sweep: now,
            config,
            shared,
        }
    }

    pub(super) fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut batch = Vec::with_capacity(self.config.max_batch);
        loop {
            let idle_wait = if self.warming.is_some() {
                Duration::ZERO
            } else {
                SWEEP_EVERY
            };
            match rx.recv_timeout(idle_wait) {
                Ok(msg) => {
                    if !self.accept(msg, &mut batch) {
                        break;
                    }
                    if !self.gather(&rx, &mut batch) {
                        self.serve(&mut batch);
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            self.serve(&mut batch);
            self.warm_step();
            self.housekeeping();
        }
        self.cancel_install(EngineError::ShuttingDown);
        debug!("batcher stopped");
    }

    /// Adds more jobs to a started batch until it is full or `max_wait` has passed. False on Stop or
    /// disconnect (the batch gathered so far is still to be served).
    fn gather(&mut self, rx: &mpsc::Receiver<Msg>, batch: &mut Vec<Envelope>) -> bool {
        let until = Instant::now() + self.config.max_wait;
        while !batch.is_empty() && batch.len() < self.config.max_batch {
            let msg = match rx.try_recv() {
                Ok(msg) => msg,
                Err(mpsc::TryRecvError::Disconnected) => return false,
                Err(mpsc::TryRecvError::Empty) => {
                    let now = Instant::now();
                    if now >= until {
                        break;
                    }
                    match rx.recv_timeout(until - now) {
                        Ok(msg) => msg,
                        Err(mpsc::RecvTimeoutError::Timeout) => break,
                        Err(mpsc::RecvTimeoutError::Disconnected) => return false,
                    }
                }
            };
            if !self.accept(msg, batch) {
                return false;
            }
        }
        true
    }

    /// Takes one message: a job joins the batch unless its caller left or its deadline passed; an
    /// install starts. False on Stop.
    fn accept(&mut self, msg: Msg, batch: &mut Vec<Envelope>) -> bool {
        match msg {
            Msg::Job(env) => {
                self.shared
                    .metrics
                    .queue_depth
                    .fetch_sub(1, Ordering::AcqRel);
                if env.job.caller_left() {
                    self.shared
                        .metrics
                        .dropped_requests
                        .fetch_add(1, Ordering::Relaxed);
                } else if env.deadline.is_some_and(|d| d <= Instant::now()) {
                    env.job.fail(EngineError::DeadlineExceeded);
                } else {
                    batch.push(env);
                }
                true
            }
            Msg::Install(install) => {
                self.begin_install(*install);
                true
            }
            Msg::Stop => false,
        }
    }

    fn serve(&mut self, batch: &mut Vec<Envelope>) {
        if batch.is_empty() {
            return;
        }
        let started = Instant::now();
        self.shared.metrics.batch_size.observe(batch.len() as f64);
        let Some(view) = self.active.as_ref().map(|a| a.view.clone()) else {
            for env in batch.drain(..) {
                env.job.fail(EngineError::NoModel);
            }
            return;
        };
        let now_ms = now_unix_ms() as i64;
        for env in batch.drain(..) {
            self.plan_job(env.job, &view, started, now_ms);
        }
        self.flush();
        let micros = started.elapsed().as_micros() as u64;
        let old = self.shared.batch_micros.load(Ordering::Relaxed);
        self.shared
            .batch_micros
            .store((old * 7 + micros) / 8, Ordering::Relaxed);
    }

    fn plan_job(&mut self, job: Job, view: &Arc<ModelView>, now: Instant, now_ms: i64) {
        match job {
            Job::Event { req, item, reply } => {
                let item = item.under(view, std::slice::from_ref(&req.item_id))[0];
                let Some(item) = item else {
                    let session_events = self
                        .sessions
                        .peek(&req.session_id, now)
                        .map_or(0, |s| self.sessions.entry(s).events);
                    let applied = Err(EngineError::UnknownItem {
                        id: req.item_id,
                        version: view.version.clone(),
                    });
                    let _ = reply.send(Ok(EventOutcome {
                        applied,
                        session_events,
                        model_version: view.version.clone(),
                    }));
                    return;
                };
                let slot = self.session_for_events(&req.session_id, now);
                self.push_event(slot, item, req.timestamp_ms.unwrap_or(now_ms), view);
                let outcome = EventOutcome {
                    applied: Ok(()),
                    session_events: self.sessions.entry(slot).events,
                    model_version: view.version.clone(),
                };
                self.plan.acks.push((reply, outcome));
            }
            Job::Recommend {
                req,
                exclude,
                inline,
                reply,
            } => {
                let inline_items = inline.under(view, &req.inline_events);
                if inline_items.iter().any(Option::is_none) {
                    let _ =
                        reply.send(Err(unknown_inline(view, &req.inline_events, &inline_items)));
                    return;
                }
                let (slot, session_events) = if inline_items.is_empty() {
                    self.existing_or_scratch(&req.session_id, now)
                } else {
                    let slot = self.session_for_events(&req.session_id, now);
                    for item in inline_items.into_iter().flatten() {
                        self.push_event(slot, item, now_ms, view);
                    }
                    (slot, self.sessions.entry(slot).events)
                };
                let mut excluded: Vec<u32> = exclude
                    .under(view, &req.exclude_items)
                    .into_iter()
                    .flatten()
                    .collect();
                if req.exclude_seen && slot != self.scratch {
                    excluded.extend(self.sessions.entry(slot).recent.iter().copied());
                }
                self.mark_query(slot);
                self.plan.topk.push(TopKPlan {
                    slot,
                    k: req.k,
                    exclude: excluded,
                    session_events,
                    reply,
                });
            }
            Job::Score {
                req,
                candidates,
                reply,
            } => {
                let items = candidates.under(view, &req.candidates);
                let known = items.iter().flatten().copied().collect();
                let (slot, _) = self.existing_or_scratch(&req.session_id, now);
                self.mark_query(slot);
                self.plan.scores.push(ScorePlan {
                    slot,
                    candidates: req.candidates,
                    items,
                    known,
                    reply,
                });
            }
            Job::GetSession { session_id, reply } => {
                let answer = match self.sessions.peek(&session_id, now) {
                    Some(slot) => {
                        let e = self.sessions.entry(slot);
                        Ok(SessionSnapshot {
                            events: e.events,
                            recent: e.recent.iter().copied().collect(),
                            last_seen_ms: e.last_seen_ms,
                            state_version: e.state_version.clone(),
                            model: view.clone(),
                        })
                    }
                    None => Err(EngineError::SessionNotFound(session_id)),
                };
                let _ = reply.send(answer);
            }
            Job::DeleteSession { session_id, reply } => {
                let _ = reply.send(Ok(self.sessions.remove(&session_id)));
            }
        }
    }

    /// The slot of a session about to receive events, created (and its state reset) if missing.
    fn session_for_events(&mut self, key: &str, now: Instant) -> u32 {
        if let Some(slot) = self.sessions.get(key, now) {
            if self.queried[slot as usize] == self.epoch {
                self.flush();
            }
            return slot;
        }
        let (slot, evicted) = self.sessions.insert(key, now);
        if let Some(cause) = evicted {
            debug!(?cause, slot, "evicted a session");
        }
        if self.planned[slot as usize] == self.epoch {
            // The evicted or deleted session that owned this slot still has planned work.
            self.flush();
        }
        self.plan.resets.push(slot);
        self.planned[slot as usize] = self.epoch;
        slot
    }

    fn existing_or_scratch(&mut self, key: &str, now: Instant) -> (u32, u64) {
        match self.sessions.get(key, now) {
            Some(slot) => (slot, self.sessions.entry(slot).events),
            None => (self.scratch, 0),
        }
    }

    fn push_event(&mut self, slot: u32, item: u32, at_ms: i64, view: &ModelView) {
        self.plan.events.push(Event { slot, item });
        self.planned[slot as usize] = self.epoch;
        self.sessions.record_event(slot, item, at_ms, &view.version);
    }

    fn mark_query(&mut self, slot: u32) {
        self.planned[slot as usize] = self.epoch;
        self.queried[slot as usize] = self.epoch;
    }

    /// Executes the plan: resets, then all events in order, then all queries.
    fn flush(&mut self) {
        if self.plan.is_empty() {
            return;
        }
        let plan = std::mem::take(&mut self.plan);
        self.epoch += 1;
        let Some(model) = self.active.as_ref().map(|a| a.id) else {
            return fail_plan(plan, || EngineError::NoModel);
        };
        let stepped = self.backend.reset_states(&plan.resets).and_then(|()| {
            if plan.events.is_empty() {
                Ok(())
            } else {
                self.backend.gru_step(model, &plan.events)
            }
        });
        if let Err(e) = stepped {
            // The backend validates before it changes anything, so this is a device failure: forget
            // the sessions involved rather than keep bookkeeping that disagrees with their state.
            error!(error = %e, "session update failed; dropping the sessions of this batch");
            for ev in &plan.events {
                self.sessions.remove_slot(ev.slot);
            }
            let msg = e.to_string();
            return fail_plan(plan, || EngineError::Backend(msg.clone()));
        }
        for (reply, outcome) in plan.acks {
            let _ = reply.send(Ok(outcome));
        }
        let view = self
            .active
            .as_ref()
            .map(|a| a.view.clone())
            .expect("checked above");
        if !plan.topk.is_empty() {
            let queries: Vec<TopKQuery<'_>> = plan
                .topk
                .iter()
                .map(|p| TopKQuery {
                    slot: p.slot,
                    k: p.k,
                    exclude: &p.exclude,
                })
                .collect();
            match self.backend.top_k(model, &queries) {
                Ok(lists) => {
                    for (p, items) in plan.topk.into_iter().zip(lists) {
                        let _ = p.reply.send(Ok(Recommendation {
                            items,
                            model: view.clone(),
                            session_events: p.session_events,
                        }));
                    }
                }
                Err(e) => plan
                    .topk
                    .into_iter()
                    .for_each(|p| drop(p.reply.send(Err(EngineError::Backend(e.to_string()))))),
            }
        }
        if !plan.scores.is_empty() {
            let queries: Vec<ScoreQuery<'_>> = plan
                .scores
                .iter()
                .map(|p| ScoreQuery {
                    slot: p.slot,
                    candidates: &p.known,
                })
                .collect();
            match self.backend.score(model, &queries) {
                Ok(all) => {
                    for (p, scores) in plan.scores.into_iter().zip(all) {
                        let _ = p.reply.send(Ok(ScoreOutcome {
                            candidates: p.candidates,
                            items: p.items,
                            scores,
                            model: view.clone(),
                        }));
                    }
                }
                Err(e) => plan
                    .scores
                    .into_iter()
                    .for_each(|p| drop(p.reply.send(Err(EngineError::Backend(e.to_string()))))),
            }
        }
    }

    fn housekeeping(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_sweep) >= SWEEP_EVERY {
            self.last_sweep = now;
            let n = self.sessions.sweep(now);
            if n > 0 {
                debug!(expired = n, "swept expired sessions");
            }
        }
        let m = &self.shared.metrics;
        let (capacity, ttl) = self.sessions.evictions();
        m.evictions[Eviction::Capacity as usize].store(capacity, Ordering::Relaxed);
        m.evictions[Eviction::Ttl as usize].store(ttl, Ordering::Relaxed);
        m.live_sessions
            .store(self.sessions.len() as u64, Ordering::Relaxed);
    }
}

fn fail_plan(plan: Plan, err: impl Fn() -> EngineError) {
    for (reply, _) in plan.acks {
        let _ = reply.send(Err(err()));
    }
    for p in plan.topk {
        let _ = p.reply.send(Err(err()));
    }
    for p in plan.scores {
        let _ = p.reply.send(Err(err()));
    }
}

impl Job {
    fn caller_left(&self) -> bool {
        match self {
            Job::Event { reply, .. } => reply.is_closed(),
            Job::Recommend { reply, .. } => reply.is_closed(),
            Job::Score { reply, .. } => reply.is_closed(),
            Job::GetSession { reply, .. } => reply.is_closed(),
            Job::DeleteSession { reply, .. } => reply.is_closed(),
        }
    }

    fn fail(self, e: EngineError) {
        let _ = match self {
            Job::Event { reply, .. } => reply.send(Err(e)).map_err(drop),
            Job::Recommend { reply, .. } => reply.send(Err(e)).map_err(drop),
            Job::Score { reply, .. } => reply.send(Err(e)).map_err(drop),
            Job::GetSession { reply, .. } => reply.send(Err(e)).map_err(drop),
            Job::DeleteSession { reply, .. } => reply.send(Err(e)).map_err(drop),
        };
    }
}
