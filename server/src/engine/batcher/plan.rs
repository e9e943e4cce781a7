//! The plan of a batch: jobs are planned in arrival order into backend work (state resets, GRU steps,
//! top-k and score queries) and executed with as few backend calls as the ordering allows.
//!
//! Ordering: a batch's events are applied before its queries. When that would change an answer — an
//! event for a session that already has a query planned, or a slot reused while it has planned work —
//! the plan so far is flushed first, so results equal one-at-a-time execution.
//!
//! Durability: every change a job makes is recorded for the event log (`Output::records`), and the
//! replies that acknowledge a change (event acks, a Recommend that applied inline events, deletes) are
//! held in `Output::held` until the log holds those records. Pure queries are answered as soon as they
//! are computed: they see every acknowledged event, and possibly some whose ack is still in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lambdarec_eventlog::{LogRecord, Position, RecordKind, delete_record, event_record};
use lambdarec_kernels::{Backend, Event, ModelId, ScoreQuery, Scored, TopKQuery};
use lambdarec_trainer::blend::{POOL, Pool, SpeedLayer, Strategy};
use tracing::{debug, error};

use super::canary::CanaryArm;
use crate::engine::online::{ONLINE_K, rank};
use crate::engine::sessions::PendingList;
use crate::engine::sessions::SessionStore;
use crate::engine::speed::{Speed, SpeedStats, owner};
use crate::engine::types::{Job, Reply, Resolved};
use crate::engine::{
    EngineConfig, EngineError, EventOutcome, EventRequest, ModelView, RecommendRequest,
    Recommendation, ReplayStats, ScoreOutcome, ScoreRequest, SessionSnapshot, unknown_inline,
};
use crate::metrics::Metrics;

/// The backend and the model one batch runs on.
pub(super) struct Exec<'a> {
    pub(super) backend: &'a mut dyn Backend,
    pub(super) model: ModelId,
    pub(super) view: &'a Arc<ModelView>,
}

/// A reply that acknowledges a change, sent only once the event log holds the change.
pub(in crate::engine) enum Held {
    Ack(Reply<EventOutcome>, EventOutcome),
    Recommend(Reply<Recommendation>, Recommendation),
    Deleted(Reply<bool>, bool),
}

impl Held {
    pub(in crate::engine) fn release(self) {
        let _ = match self {
            Held::Ack(reply, outcome) => reply.send(Ok(outcome)).map_err(drop),
            Held::Recommend(reply, answer) => reply.send(Ok(answer)).map_err(drop),
            Held::Deleted(reply, existed) => reply.send(Ok(existed)).map_err(drop),
        };
    }

    pub(in crate::engine) fn fail(self, e: EngineError) {
        let _ = match self {
            Held::Ack(reply, _) => reply.send(Err(e)).map_err(drop),
            Held::Recommend(reply, _) => reply.send(Err(e)).map_err(drop),
            Held::Deleted(reply, _) => reply.send(Err(e)).map_err(drop),
        };
    }
}

/// What served jobs leave for the event log: records in the order they were applied, and the replies
/// to send once those records are durable.
#[derive(Default)]
pub(in crate::engine) struct Output {
    pub(in crate::engine) records: Vec<LogRecord>,
    pub(in crate::engine) held: Vec<Held>,
    /// Replicas: `(writer_seq, position)` of records whose session had no record of this replica
    /// in flight: the position of the session's last record the replica knows of, which the log is
    /// asked to confirm the record directly follows (so the catch-up need not read it back).
    pub(in crate::engine) expected: Vec<(u64, Position)>,
}

impl Output {
    pub(in crate::engine) fn is_empty(&self) -> bool {
        self.records.is_empty() && self.held.is_empty()
    }
}

/// What the speed layer needs of a query's session: its items and kNN identity (empty and None
/// for a session the store does not hold).
#[derive(Default)]
struct SessionView {
    items: Vec<u32>,
    owner: Option<u64>,
}

struct TopKPlan {
    slot: u32,
    k: usize,
    /// Sorted: catalogue items first (the GRU's part is the prefix below the catalogue size).
    exclude: Vec<u32>,
    session_events: u64,
    /// Applied inline events: the answer is also their acknowledgement.
    held: bool,
    /// Answered by the canary arm.
    canary: bool,
    strategy: Strategy,
    session: SessionView,
    reply: Reply<Recommendation>,
}

struct ScorePlan {
    slot: u32,
    candidates: Vec<String>,
    /// Per candidate, its index (None: unknown to the strategy).
    items: Vec<Option<u32>>,
    /// The candidates the GRU scores (catalogue items), in request order.
    known: Vec<u32>,
    strategy: Strategy,
    session: SessionView,
    canary: bool,
    reply: Reply<ScoreOutcome>,
}

/// Backend work planned and not yet executed, with what depends on it.
#[derive(Default)]
struct Plan {
    resets: Vec<u32>,
    events: Vec<Event>,
    /// The canary arm's sessions' steps (its model steps them).
    canary_events: Vec<Event>,
    records: Vec<LogRecord>,
    acks: Vec<Held>,
    topk: Vec<TopKPlan>,
    scores: Vec<ScorePlan>,
}

impl Plan {
    fn is_empty(&self) -> bool {
        self.resets.is_empty()
            && self.events.is_empty()
            && self.canary_events.is_empty()
            && self.acks.is_empty()
            && self.topk.is_empty()
            && self.scores.is_empty()
    }

    fn fail(self, err: impl Fn() -> EngineError) {
        self.acks.into_iter().for_each(|h| h.fail(err()));
        Plan::fail_queries(self.topk, self.scores, err);
    }

    fn fail_queries(topk: Vec<TopKPlan>, scores: Vec<ScorePlan>, err: impl Fn() -> EngineError) {
        for p in topk {
            let _ = p.reply.send(Err(err()));
        }
        for p in scores {
            let _ = p.reply.send(Err(err()));
        }
    }
}

/// Plans jobs against the session store and executes the plan on a backend.
pub(super) struct Planner {
    pub(super) sessions: SessionStore,
    /// Slot of the zero state that unknown sessions are scored with; never stepped.
    pub(super) scratch: u32,
    /// Whether changes are recorded for an event log.
    logging: bool,
    /// `--max-sessions-per-token`: most live sessions one token may have created.
    per_owner: Option<usize>,
    plan: Plan,
    /// Incremented at each flush; a slot whose mark equals it has work in the current plan.
    epoch: u64,
    planned: Vec<u64>,
    queried: Vec<u64>,
    out: Output,
    /// Session-kNN, trending and new items (of the control arm when a canary runs).
    pub(super) speed: Speed,
    /// The canary version served beside the control one, if any.
    pub(in crate::engine) canary: Option<CanaryArm>,
    /// Online evaluation is recorded here.
    metrics: Arc<Metrics>,
    /// Replicas (`serve --replica`): this server's name in the records it writes, and the
    /// writer_seq of its next record.
    pub(super) writer: Option<Arc<str>>,
    pub(super) writer_seq: u64,
}

impl Planner {
    pub(super) fn new(
        config: &EngineConfig,
        logging: bool,
        now: Instant,
        metrics: Arc<Metrics>,
    ) -> Self {
        let stats = SpeedStats {
            knn_sessions: metrics.knn_sessions.clone(),
            new_items: metrics.new_items.clone(),
        };
        let capacity = config.max_sessions;
        let l = &config.limits;
        Planner {
            sessions: SessionStore::new(
                capacity,
                config.session_ttl,
                l.history,
                l.dedup_window,
                now,
            ),
            scratch: capacity as u32,
            logging,
            per_owner: l.max_sessions_per_token,
            plan: Plan::default(),
            epoch: 1,
            planned: vec![0; capacity + 1],
            queried: vec![0; capacity + 1],
            out: Output::default(),
            speed: Speed::new(config.speed.clone(), stats),
            canary: None,
            metrics,
            writer: None,
            writer_seq: 0,
        }
    }

    /// A record for the log, stamped with this replica's name and sequence when it is one.
    fn stamp(&mut self, mut record: LogRecord) -> LogRecord {
        if let Some(writer) = &self.writer {
            record.writer = writer.to_string();
            record.writer_seq = self.writer_seq;
            self.writer_seq += 1;
        }
        record
    }

    /// Queues a record of the session in `slot` with the plan's work (it is logged once the plan has
    /// run). On a replica, a record that is its session's only one in flight carries the position
    /// the session is known up to, for the log to confirm.
    fn log(&mut self, slot: u32, record: LogRecord) {
        let record = self.stamp(record);
        if self.writer.is_some() {
            let e = self.sessions.entry_mut(slot);
            if e.in_flight == 0 {
                self.out.expected.push((record.writer_seq, e.log_floor));
            }
            e.in_flight += 1;
        }
        self.plan.records.push(record);
    }

    /// Whether the canary serves `session_id`: a live session's own arm, else (a session created
    /// now) the hash rule.
    fn canary_for(&mut self, session_id: &str, now: Instant) -> bool {
        let Some(c) = &self.canary else {
            return false;
        };
        match self.sessions.peek(session_id, now) {
            Some(slot) => self.sessions.entry(slot).canary(),
            None => c.admits(session_id),
        }
    }

    /// The view of the arm (`canary` or the control's, which `x` runs).
    fn view_of(&self, x: &Exec<'_>, canary: bool) -> Arc<ModelView> {
        match (&self.canary, canary) {
            (Some(c), true) => c.view.clone(),
            _ => x.view.clone(),
        }
    }

    fn speed_of(&self, canary: bool) -> &Speed {
        match (&self.canary, canary) {
            (Some(c), true) => &c.speed,
            _ => &self.speed,
        }
    }

    fn speed_of_mut(&mut self, canary: bool) -> &mut Speed {
        match (&mut self.canary, canary) {
            (Some(c), true) => &mut c.speed,
            _ => &mut self.speed,
        }
    }

    /// Forgets a deleted session in every arm's kNN index.
    fn forget(&mut self, session_id: &str) {
        let key = owner(session_id);
        if let Some(layer) = &mut self.speed.layer {
            layer.forget(key);
        }
        if let Some(c) = &mut self.canary {
            c.forget(key);
        }
    }

    /// The records and held replies of everything flushed since the last call.
    pub(super) fn take_output(&mut self) -> Output {
        std::mem::take(&mut self.out)
    }

    /// Plans one job (flushing first when ordering requires it).
    pub(super) fn plan(&mut self, x: &mut Exec<'_>, job: Job, now: Instant, now_ms: i64) {
        match job {
            Job::Event { req, item, reply } => self.plan_event(x, req, item, reply, now, now_ms),
            Job::Recommend {
                req,
                exclude,
                inline,
                reply,
            } => self.plan_recommend(x, req, exclude, inline, reply, now, now_ms),
            Job::Score {
                req,
                candidates,
                reply,
            } => self.plan_score(x, req, candidates, reply, now),
            Job::GetSession { session_id, reply } => {
                let _ = reply.send(self.describe(&session_id, x, now));
            }
            Job::DeleteSession { session_id, reply } => {
                let existed = self.sessions.remove(&session_id);
                self.forget(&session_id);
                if self.logging {
                    let r = self.stamp(delete_record(&session_id, now_ms, &x.view.version));
                    self.out.records.push(r);
                }
                self.out.held.push(Held::Deleted(reply, existed));
            }
            Job::Replay { records, reply } => {
                let stats = self.plan_replay(x, records, now, now_ms);
                self.flush(x);
                let _ = reply.send(Ok(stats));
            }
        }
    }

    fn plan_event(
        &mut self,
        x: &mut Exec<'_>,
        req: EventRequest,
        item: Resolved,
        reply: Reply<EventOutcome>,
        now: Instant,
        now_ms: i64,
    ) {
        let canary = self.canary_for(&req.session_id, now);
        let view = &self.view_of(x, canary);
        let existing = self.sessions.peek(&req.session_id, now);
        if let (Some(slot), Some(seq)) = (existing, req.client_seq)
            && self.sessions.has_seq(slot, seq)
        {
            // Acknowledged again once everything before it is durable (the original may still be
            // in flight), never applied twice.
            let outcome = EventOutcome {
                applied: Ok(()),
                duplicate: true,
                session_events: self.sessions.entry(slot).events,
                model_version: view.version.clone(),
            };
            self.plan.acks.push(Held::Ack(reply, outcome));
            return;
        }
        let known = item.under(view, std::slice::from_ref(&req.item_id))[0];
        let reject = |planner: &Self, reply: Reply<EventOutcome>, e: EngineError| {
            let _ = reply.send(Ok(EventOutcome {
                applied: Err(e),
                duplicate: false,
                session_events: existing.map_or(0, |s| planner.sessions.entry(s).events),
                model_version: view.version.clone(),
            }));
        };
        // An item the bundle does not know: a new item already taken, one to take now, or refused.
        let new = match known {
            Some(_) => None,
            None => match self.speed_of(canary).admit_new(&req.item_id, view) {
                Ok(taken) => Some(taken),
                Err(e) => return reject(self, reply, e),
            },
        };
        let owner = req.owner.as_ref();
        let slot = match self.session_for_events(x, &req.session_id, owner, canary, now) {
            Ok(slot) => slot,
            Err(e) => return reject(self, reply, e),
        };
        let item = match (known, new) {
            (Some(i), _) | (None, Some(Some(i))) => i,
            _ => self.speed_of_mut(canary).take(&req.item_id, view),
        };
        let at_ms = req.timestamp_ms.unwrap_or(now_ms);
        self.push_event(x.view, slot, item, at_ms, req.client_seq);
        if self.logging {
            // The request's strings move into the record: nothing else needs them now.
            self.log(
                slot,
                LogRecord {
                    kind: RecordKind::Event.into(),
                    session_id: req.session_id,
                    item_id: req.item_id,
                    timestamp_ms: at_ms,
                    received_ms: now_ms,
                    client_seq: req.client_seq,
                    model_version: view.version.to_string(),
                    ..LogRecord::default()
                },
            );
        }
        let outcome = EventOutcome {
            applied: Ok(()),
            duplicate: false,
            session_events: self.sessions.entry(slot).events,
            model_version: view.version.clone(),
        };
        self.plan.acks.push(Held::Ack(reply, outcome));
    }

    #[allow(clippy::too_many_arguments)]
    fn plan_recommend(
        &mut self,
        x: &mut Exec<'_>,
        req: RecommendRequest,
        exclude: Resolved,
        inline: Resolved,
        reply: Reply<Recommendation>,
        now: Instant,
        now_ms: i64,
    ) {
        let canary = self.canary_for(&req.session_id, now);
        let view = &self.view_of(x, canary);
        let inline_items = inline.under(view, &req.inline_events);
        if inline_items.iter().any(Option::is_none) {
            let _ = reply.send(Err(unknown_inline(view, &req.inline_events, &inline_items)));
            return;
        }
        let held = !inline_items.is_empty();
        let (slot, session_events) = if held {
            let owner = req.owner.as_ref();
            let slot = match self.session_for_events(x, &req.session_id, owner, canary, now) {
                Ok(slot) => slot,
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            };
            for (item, id) in inline_items.into_iter().flatten().zip(&req.inline_events) {
                self.push_event(x.view, slot, item, now_ms, None);
                if self.logging {
                    let r = event_record(&req.session_id, id, now_ms, now_ms, None, &view.version);
                    self.log(slot, r);
                }
            }
            (slot, self.sessions.entry(slot).events)
        } else {
            self.existing_or_scratch(&req.session_id, now)
        };
        let mut excluded: Vec<u32> = exclude
            .under(view, &req.exclude_items)
            .into_iter()
            .zip(&req.exclude_items)
            .filter_map(|(i, id)| i.or_else(|| self.speed_of(canary).new.get(id)))
            .collect();
        if req.exclude_seen && slot != self.scratch {
            excluded.extend(self.sessions.entry(slot).recent.iter().copied());
        }
        excluded.sort_unstable();
        excluded.dedup();
        let strategy = self.speed_of(canary).strategy(req.strategy, view);
        let session = self.session_view(slot, &req.session_id, strategy);
        self.mark_query(slot);
        self.plan.topk.push(TopKPlan {
            slot,
            k: req.k,
            exclude: excluded,
            session_events,
            held,
            canary,
            strategy,
            session,
            reply,
        });
    }

    /// What the speed layer needs of the session in `slot` for `strategy`.
    fn session_view(&self, slot: u32, session_id: &str, strategy: Strategy) -> SessionView {
        let needs_knn = matches!(strategy, Strategy::Knn | Strategy::Blend);
        if slot == self.scratch || !needs_knn {
            return SessionView::default();
        }
        SessionView {
            items: self.sessions.entry(slot).recent.iter().copied().collect(),
            owner: Some(owner(session_id)),
        }
    }

    fn plan_score(
        &mut self,
        x: &Exec<'_>,
        req: ScoreRequest,
        candidates: Resolved,
        reply: Reply<ScoreOutcome>,
        now: Instant,
    ) {
        let canary = self.canary_for(&req.session_id, now);
        let view = &self.view_of(x, canary);
        let strategy = self.speed_of(canary).strategy(req.strategy, view);
        let mut items = candidates.under(view, &req.candidates);
        let known = items.iter().flatten().copied().collect();
        if strategy != Strategy::Gru {
            // The speed layer's scorers know the new items too.
            for (item, id) in items.iter_mut().zip(&req.candidates) {
                if item.is_none() {
                    *item = self.speed_of(canary).new.get(id);
                }
            }
        }
        let (slot, _) = self.existing_or_scratch(&req.session_id, now);
        let session = self.session_view(slot, &req.session_id, strategy);
        self.mark_query(slot);
        self.plan.scores.push(ScorePlan {
            slot,
            candidates: req.candidates,
            items,
            known,
            strategy,
            session,
            canary,
            reply,
        });
    }

    fn describe(
        &mut self,
        session_id: &str,
        x: &Exec<'_>,
        now: Instant,
    ) -> Result<SessionSnapshot, EngineError> {
        let slot = self
            .sessions
            .peek(session_id, now)
            .ok_or_else(|| EngineError::SessionNotFound(session_id.to_string()))?;
        let e = self.sessions.entry(slot);
        let view = &self.view_of(x, e.canary());
        let speed = self.speed_of(e.canary());
        Ok(SessionSnapshot {
            events: e.events,
            recent: e
                .recent
                .iter()
                .map(|&i| speed.name(i, view).to_string())
                .collect(),
            last_seen_ms: e.last_seen_ms,
            state_version: e.state_version.clone(),
            model: view.clone(),
        })
    }

    /// Applies logged records again (recovery), through the same session bookkeeping as live events
    /// but without logging them again. A session is dated by when its records were received, so that
    /// sessions idle past the TTL expire as they would have.
    pub(super) fn plan_replay(
        &mut self,
        x: &mut Exec<'_>,
        records: Vec<(Position, LogRecord)>,
        now: Instant,
        now_ms: i64,
    ) -> ReplayStats {
        let mut stats = ReplayStats::default();
        for (position, r) in records {
            stats.last_position = Some(position);
            let age_ms = now_ms.saturating_sub(r.received_ms).max(0) as u64;
            let at = now
                .checked_sub(Duration::from_millis(age_ms))
                .unwrap_or(now);
            match r.kind() {
                RecordKind::Delete => {
                    self.sessions.remove(&r.session_id);
                    self.forget(&r.session_id);
                    stats.deletes += 1;
                }
                RecordKind::Event => {
                    // A session keeps the arm it was served by: a live one its own, a new one the
                    // arm whose version its record names.
                    let canary = match &self.canary {
                        None => false,
                        Some(c) => match self.sessions.peek(&r.session_id, at) {
                            Some(slot) => self.sessions.entry(slot).canary(),
                            None => *c.view.version == *r.model_version,
                        },
                    };
                    let view = &self.view_of(x, canary);
                    let Some(item) = self.speed_of_mut(canary).resolve_recorded(&r.item_id, view)
                    else {
                        stats.unknown_items += 1;
                        continue;
                    };
                    // Recovered sessions have no owner (the log does not record tokens), so this
                    // cannot be refused.
                    let Ok(slot) = self.session_for_events(x, &r.session_id, None, canary, at)
                    else {
                        continue;
                    };
                    self.push_event(x.view, slot, item, r.timestamp_ms, r.client_seq);
                    stats.events += 1;
                }
                RecordKind::Unspecified => stats.skipped += 1,
            }
        }
        stats
    }

    /// The slot of a session about to receive events, created (and its state reset) if missing —
    /// unless creating it would give `owner` more live sessions than `--max-sessions-per-token`.
    fn session_for_events(
        &mut self,
        x: &mut Exec<'_>,
        key: &str,
        owner: Option<&Arc<str>>,
        canary: bool,
        now: Instant,
    ) -> Result<u32, EngineError> {
        if let Some(slot) = self.sessions.get(key, now) {
            if self.queried[slot as usize] == self.epoch {
                self.flush(x);
            }
            return Ok(slot);
        }
        if let (Some(owner), Some(limit)) = (owner, self.per_owner)
            && self.sessions.owner_at_limit(owner, limit, now)
        {
            return Err(EngineError::SessionLimit {
                owner: owner.clone(),
                limit,
            });
        }
        let (slot, evicted) = self.sessions.insert(key, owner, now);
        if let Some(cause) = evicted {
            debug!(?cause, slot, "evicted a session");
        }
        self.sessions.entry_mut(slot).own_from = self.writer_seq;
        if canary {
            self.sessions.join_canary(slot);
        }
        if self.planned[slot as usize] == self.epoch {
            // The evicted or deleted session that owned this slot still has planned work.
            self.flush(x);
        }
        self.plan.resets.push(slot);
        self.planned[slot as usize] = self.epoch;
        Ok(slot)
    }

    fn existing_or_scratch(&mut self, key: &str, now: Instant) -> (u32, u64) {
        match self.sessions.get(key, now) {
            Some(slot) => (slot, self.sessions.entry(slot).events),
            None => (self.scratch, 0),
        }
    }

    /// Records an event in the session and the speed layer (both arms' when a canary runs), and
    /// plans its GRU step on the session's arm (none for a new item: the GRU cannot embed it, so the
    /// session's state stays what its known items made it). `item` is numbered by the session's arm;
    /// `control` is the control arm's view.
    fn push_event(
        &mut self,
        control: &Arc<ModelView>,
        slot: u32,
        item: u32,
        at_ms: i64,
        seq: Option<u64>,
    ) {
        let canary = self.sessions.entry(slot).canary();
        let view = match (&self.canary, canary) {
            (Some(c), true) => &c.view,
            _ => control,
        };
        if (item as usize) < view.n_items() {
            let steps = if canary {
                &mut self.plan.canary_events
            } else {
                &mut self.plan.events
            };
            steps.push(Event { slot, item });
        }
        self.planned[slot as usize] = self.epoch;
        // Online evaluation: this event is what the session's last Recommend list predicted.
        if let Some(list) = self.sessions.entry_mut(slot).pending.take() {
            let at = rank(&list.items, item);
            self.metrics.online(&list.version, list.strategy, at);
        }
        self.sessions
            .record_event(slot, item, at_ms, &view.version, seq);
        let key = owner(self.sessions.key(slot).map_or("", |k| k));
        let recent = self.sessions.entry_mut(slot).recent.make_contiguous();
        let own = match (&mut self.canary, canary) {
            (Some(c), true) => &mut c.speed,
            _ => &mut self.speed,
        };
        if let Some(layer) = &mut own.layer {
            layer.observe(key, recent, item, at_ms);
        }
        if let Some(c) = &mut self.canary {
            c.mirror(canary, &mut self.speed, control, key, recent, (item, at_ms));
        }
    }

    fn mark_query(&mut self, slot: u32) {
        self.planned[slot as usize] = self.epoch;
        self.queried[slot as usize] = self.epoch;
    }

    /// Executes the plan: resets, then all events in order, then all queries.
    pub(super) fn flush(&mut self, x: &mut Exec<'_>) {
        if self.plan.is_empty() {
            return;
        }
        let mut plan = std::mem::take(&mut self.plan);
        self.epoch += 1;
        let canary = self.canary.as_ref().map(|c| c.id);
        let stepped = x.backend.reset_states(&plan.resets).and_then(|()| {
            if !plan.events.is_empty() {
                x.backend.gru_step(x.model, &plan.events)?;
            }
            match canary {
                Some(id) if !plan.canary_events.is_empty() => {
                    x.backend.gru_step(id, &plan.canary_events)
                }
                _ => Ok(()),
            }
        });
        if let Err(e) = stepped {
            return self.drop_failed(x, plan, e);
        }
        self.out.records.append(&mut plan.records);
        self.out.held.append(&mut plan.acks);
        if plan.topk.is_empty() && plan.scores.is_empty() {
            return;
        }
        let mut to = Delivery {
            sessions: &mut self.sessions,
            scratch: self.scratch,
            held: &mut self.out.held,
        };
        let Some(c) = &self.canary else {
            return to.answer(x, &self.speed, plan.topk, plan.scores);
        };
        let (canary_topk, topk) = plan.topk.into_iter().partition(|p| p.canary);
        let (canary_scores, scores) = plan.scores.into_iter().partition(|p| p.canary);
        to.answer(x, &self.speed, topk, scores);
        let mut cx = Exec {
            backend: &mut *x.backend,
            model: c.id,
            view: &c.view,
        };
        to.answer(&mut cx, &c.speed, canary_topk, canary_scores);
    }

    /// A failed state update. The backend validates before it changes anything, so this is a device
    /// failure: the sessions involved are forgotten rather than kept with bookkeeping that disagrees
    /// with their state, and (when logging) their deletes are logged so a replay agrees.
    fn drop_failed(&mut self, x: &mut Exec<'_>, plan: Plan, e: lambdarec_kernels::BackendError) {
        error!(error = %crate::registry::error_chain(&e), "session update failed; dropping the sessions of this batch");
        let now_ms = lambdarec_proto::bundle::now_unix_ms() as i64;
        for ev in plan.events.iter().chain(&plan.canary_events) {
            if let Some(key) = self.sessions.key(ev.slot).cloned() {
                self.sessions.remove_slot(ev.slot);
                if self.logging {
                    let r = self.stamp(delete_record(&key, now_ms, &x.view.version));
                    self.out.records.push(r);
                }
            }
        }
        let e = EngineError::from(e);
        plan.fail(|| e.clone());
    }
}

/// Where a flush's answers go: the sessions (whose lists wait for their next event) and the replies
/// held until the log has the changes they acknowledge.
struct Delivery<'a> {
    sessions: &'a mut SessionStore,
    scratch: u32,
    held: &'a mut Vec<Held>,
}

impl Delivery<'_> {
    /// Answers one arm's queries (`x` runs that arm's model, `speed` is its speed layer).
    fn answer(
        &mut self,
        x: &mut Exec<'_>,
        speed: &Speed,
        topk: Vec<TopKPlan>,
        scores: Vec<ScorePlan>,
    ) {
        if topk.is_empty() && scores.is_empty() {
            return;
        }
        let view = x.view;
        let Some(layer) = speed.layer.as_ref() else {
            // Not reached: a model is installed with its speed layer.
            return Plan::fail_queries(topk, scores, || EngineError::NoModel);
        };
        match answer(x, layer, &topk, &scores) {
            Ok(Answers {
                lists,
                scores: values,
            }) => {
                for (p, items) in topk.into_iter().zip(lists) {
                    if p.slot != self.scratch {
                        self.sessions.entry_mut(p.slot).pending = Some(Box::new(PendingList {
                            items: items.iter().take(ONLINE_K).map(|s| s.item).collect(),
                            version: view.version.clone(),
                            strategy: p.strategy,
                        }));
                    }
                    let new_items = items
                        .iter()
                        .filter_map(|s| Some((s.item, speed.new.name(s.item)?.to_string())))
                        .collect();
                    let answer = Recommendation {
                        items,
                        new_items,
                        model: view.clone(),
                        session_events: p.session_events,
                    };
                    if p.held {
                        self.held.push(Held::Recommend(p.reply, answer));
                    } else {
                        let _ = p.reply.send(Ok(answer));
                    }
                }
                for (p, scores) in scores.into_iter().zip(values) {
                    let _ = p.reply.send(Ok(ScoreOutcome {
                        candidates: p.candidates,
                        items: p.items,
                        scores,
                        model: view.clone(),
                    }));
                }
            }
            Err(e) => {
                let e = EngineError::from(e);
                Plan::fail_queries(topk, scores, || e.clone());
            }
        }
    }
}

/// The GRU's part of a sorted exclusion list: the catalogue items, which sort before new ones.
fn catalogue_part(exclude: &[u32], n_items: usize) -> &[u32] {
    &exclude[..exclude.partition_point(|&i| (i as usize) < n_items)]
}

/// Per top-k plan its items, per score plan the scores of its known candidates (request order).
struct Answers {
    lists: Vec<Vec<Scored>>,
    scores: Vec<Vec<f32>>,
}

/// Answers a flush's queries with at most one top-k and one score call on the backend.
fn answer(
    x: &mut Exec<'_>,
    layer: &SpeedLayer,
    topk: &[TopKPlan],
    scores: &[ScorePlan],
) -> Result<Answers, lambdarec_kernels::BackendError> {
    let view = x.view;
    let n = view.n_items();
    let w = view.weights;

    // 1. The GRU's top items: the answer itself (gru), the blend's GRU candidates, and the GRU's
    //    best score that normalises a blended Score.
    let mut queries = Vec::new();
    let mut top_of = vec![None; topk.len()];
    for (i, p) in topk.iter().enumerate() {
        let k = match p.strategy {
            Strategy::Gru => p.k,
            Strategy::Blend => POOL.max(p.k),
            Strategy::Knn | Strategy::Trending => continue,
        };
        top_of[i] = Some(queries.len());
        queries.push(TopKQuery {
            slot: p.slot,
            k,
            exclude: catalogue_part(&p.exclude, n),
        });
    }
    let mut max_of = vec![None; scores.len()];
    for (i, p) in scores.iter().enumerate() {
        if p.strategy == Strategy::Blend {
            max_of[i] = Some(queries.len());
            queries.push(TopKQuery {
                slot: p.slot,
                k: 1,
                exclude: &[],
            });
        }
    }

    // 2. Session-kNN for every query that needs it, in parallel, beside the GRU's ranking.
    let needs_knn = |strategy: Strategy| match strategy {
        Strategy::Knn => true,
        Strategy::Blend => w.knn > 0.0,
        Strategy::Gru | Strategy::Trending => false,
    };
    let sessions = topk
        .iter()
        .map(|p| (p.strategy, &p.session))
        .chain(scores.iter().map(|p| (p.strategy, &p.session)));
    let knn_queries: Vec<(&[u32], Option<u64>)> = sessions
        .filter(|(strategy, _)| needs_knn(*strategy))
        .map(|(_, s)| (&s.items[..], s.owner))
        .collect();
    let knn_scores = std::sync::OnceLock::new();
    let tops = if queries.is_empty() && knn_queries.is_empty() {
        Vec::new()
    } else {
        let knn = || {
            let _ = knn_scores.set(layer.knn_scores(&knn_queries));
        };
        x.backend.top_k_beside(x.model, &queries, &knn)?
    };
    let mut knn = knn_scores.into_inner().unwrap_or_default().into_iter();

    // 3. The blend's pools, whose other catalogue candidates the GRU scores next.
    let mut knn_of = |strategy: Strategy| {
        if needs_knn(strategy) {
            knn.next().unwrap_or_default()
        } else {
            Vec::new()
        }
    };
    let topk_knn: Vec<Vec<(u32, f32)>> = topk.iter().map(|p| knn_of(p.strategy)).collect();
    let score_knn: Vec<Vec<(u32, f32)>> = scores.iter().map(|p| knn_of(p.strategy)).collect();
    let drafts: Vec<_> = topk
        .iter()
        .zip(&top_of)
        .zip(&topk_knn)
        .map(|((p, t), knn)| match (p.strategy, t) {
            (Strategy::Blend, Some(t)) => {
                let top: Vec<(u32, f32)> = tops[*t].iter().map(|s| (s.item, s.score)).collect();
                let mut draft = layer.draft(&top, knn, &p.exclude, w);
                draft.prune(w, p.k);
                Some(draft)
            }
            _ => None,
        })
        .collect();

    // 4. One score call: GRU-scored candidates of Score requests and the pools' missing scores.
    let mut squeries = Vec::new();
    let mut score_of = vec![None; scores.len()];
    for (i, p) in scores.iter().enumerate() {
        if matches!(p.strategy, Strategy::Gru | Strategy::Blend) && !p.known.is_empty() {
            score_of[i] = Some(squeries.len());
            squeries.push(ScoreQuery {
                slot: p.slot,
                candidates: &p.known,
            });
        }
    }
    let mut need_of = vec![None; topk.len()];
    for (i, (p, d)) in topk.iter().zip(&drafts).enumerate() {
        if let Some(d) = d
            && !d.need.is_empty()
        {
            need_of[i] = Some(squeries.len());
            squeries.push(ScoreQuery {
                slot: p.slot,
                candidates: &d.need,
            });
        }
    }
    let scored = if squeries.is_empty() {
        Vec::new()
    } else {
        x.backend.score(x.model, &squeries)?
    };
    drop(squeries);

    // 5. Each answer.
    let scored_list = |list: Vec<(u32, f32)>| {
        list.into_iter()
            .map(|(item, score)| Scored { item, score })
            .collect::<Vec<_>>()
    };
    let mut lists = Vec::with_capacity(topk.len());
    let mut topk_knn = topk_knn.into_iter();
    for (i, (p, d)) in topk.iter().zip(drafts).enumerate() {
        let knn = topk_knn.next().unwrap_or_default();
        lists.push(match p.strategy {
            Strategy::Gru => tops[top_of[i].expect("planned")].clone(),
            Strategy::Blend => {
                let need = need_of[i].map_or(&[][..], |j| &scored[j][..]);
                let pool: Pool = d.expect("drafted").complete(need);
                scored_list(pool.top(w, p.k))
            }
            Strategy::Knn => scored_list(layer.recommend_knn(knn, p.k, &p.exclude)),
            Strategy::Trending => scored_list(layer.recommend_trending(p.k, &p.exclude)),
        });
    }
    let mut out = Vec::with_capacity(scores.len());
    for ((i, p), knn) in scores.iter().enumerate().zip(score_knn) {
        let gru = score_of[i].map_or(&[][..], |j| &scored[j][..]);
        out.push(match p.strategy {
            Strategy::Gru => gru.to_vec(),
            strategy => {
                let gru_max = max_of[i]
                    .and_then(|t| tops[t].first())
                    .map_or(f32::NEG_INFINITY, |s| s.score);
                speed_scores(layer, p, strategy, knn, gru, gru_max, w, n)
            }
        });
    }
    Ok(Answers { lists, scores: out })
}

/// The scores of a Score request's known candidates under a speed-layer strategy, normalised as
/// Recommend's are (each scorer relative to its best item).
#[allow(clippy::too_many_arguments)]
fn speed_scores(
    layer: &SpeedLayer,
    p: &ScorePlan,
    strategy: Strategy,
    knn: Vec<(u32, f32)>,
    gru: &[f32],
    gru_max: f32,
    w: lambdarec_trainer::blend::Weights,
    n: usize,
) -> Vec<f32> {
    let knn: std::collections::HashMap<u32, f32> = knn.into_iter().collect();
    let kmax = knn.values().copied().fold(0.0, f32::max);
    let knn_of = |i: u32| {
        if kmax > 0.0 {
            knn.get(&i).map_or(0.0, |s| s / kmax)
        } else {
            0.0
        }
    };
    let gru_max = gru.iter().copied().fold(gru_max, f32::max);
    let mut gru = gru.iter();
    p.items
        .iter()
        .flatten()
        .map(|&i| match strategy {
            Strategy::Knn => knn_of(i),
            Strategy::Trending => layer.trend.score(i),
            _ => {
                let g = if (i as usize) < n {
                    gru.next().map_or(0.0, |s| (s - gru_max).exp())
                } else {
                    0.0
                };
                w.gru * g + w.knn * knn_of(i) + w.trend * layer.trend.score(i)
            }
        })
        .collect()
}
