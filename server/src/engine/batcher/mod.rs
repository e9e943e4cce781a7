//! The batcher thread: owns the backend and the session store, gathers up to `max_batch` requests (or
//! waits at most `max_wait` after the first), has the [`plan`] turn them into as few backend calls as
//! ordering allows, and hands what changed to the event log before acknowledging it. Model installs are
//! warmed up and swapped in between batches, so a batch always runs on one model.

use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use lambdarec_kernels::{Backend, ModelId};
use lambdarec_proto::bundle::now_unix_ms;
use tracing::debug;

use super::sessions::Eviction;
use super::{EngineConfig, EngineError, Envelope, Job, ModelView, Msg, Shared};

/// How often expired sessions are swept when the server is idle.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

mod canary;
pub(in crate::engine) mod handoff;
mod install;
pub(super) mod plan;
mod restore;
#[cfg(test)]
mod tests;

use install::Warming;
use plan::{Exec, Held, Planner};

use super::journal::Journal;

struct Active {
    id: ModelId,
    view: Arc<ModelView>,
}

pub(super) struct Batcher {
    backend: Box<dyn Backend>,
    planner: Planner,
    active: Option<Active>,
    warming: Option<Warming>,
    config: EngineConfig,
    shared: Arc<Shared>,
    last_sweep: Instant,
    /// The event log's writer; None with `--log none`.
    journal: Option<Journal>,
    last_snapshot: Instant,
    /// Records committed since the last snapshot (no snapshot is taken when nothing changed).
    changes: u64,
    /// Replicas sharing the log: sessions are caught up from it before they are served.
    handoff: Option<handoff::Handoff>,
}

impl Batcher {
    pub(super) fn new(
        backend: Box<dyn Backend>,
        config: EngineConfig,
        shared: Arc<Shared>,
        journal: Option<Journal>,
        handoff: Option<handoff::Handoff>,
    ) -> Self {
        let now = Instant::now();
        let mut planner = Planner::new(&config, journal.is_some(), now, shared.metrics.clone());
        planner.writer = handoff.as_ref().map(|h| h.writer.clone());
        Batcher {
            backend,
            planner,
            active: None,
            warming: None,
            last_sweep: now,
            config,
            shared,
            journal,
            last_snapshot: now,
            changes: 0,
            handoff,
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
        // A graceful stop leaves a snapshot of every session, so the next start replays nothing.
        if self.changes > 0 {
            self.snapshot();
        }
        if let Some(mut journal) = self.journal.take() {
            journal.stop();
        }
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
            Msg::Internal(env) => {
                batch.push(env);
                true
            }
            Msg::Restore(restore) => {
                // Recovery runs before any request is admitted, so no batch is pending.
                self.serve(batch);
                self.restore(*restore);
                true
            }
            Msg::Job(env) => {
                self.shared.metrics.queue_depth.dec();
                if env.job.caller_left() {
                    self.shared.metrics.dropped_requests.inc();
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
            Msg::EndCanary(end) => {
                // Between batches: the batch gathered so far runs on the arms it was planned on.
                self.serve(batch);
                let kept = self.end_canary(end.promote);
                let _ = end.reply.send(Ok(kept));
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
        let Some((model, view)) = self.active.as_ref().map(|a| (a.id, a.view.clone())) else {
            for env in batch.drain(..) {
                env.job.fail(EngineError::NoModel);
            }
            return;
        };
        let now_ms = now_unix_ms() as i64;
        let mut x = Exec {
            backend: self.backend.as_mut(),
            model,
            view: &view,
        };
        let floors = self.handoff.as_mut().map(|h| {
            h.take_confirmations(&mut self.planner.sessions, started);
            let metrics = &self.shared.metrics;
            h.catch_up(&mut self.planner, metrics, &mut x, batch, (started, now_ms))
        });
        for env in batch.drain(..) {
            // Checked again here: gathering a batch takes up to max_wait, and a batch that had to
            // flush several times may have taken longer.
            if env.job.caller_left() {
                self.shared.metrics.dropped_requests.inc();
            } else if env.deadline.is_some_and(|d| d <= Instant::now()) {
                env.job.fail(EngineError::DeadlineExceeded);
            } else {
                self.planner.plan(&mut x, env.job, started, now_ms);
            }
        }
        self.planner.flush(&mut x);
        if let Some(floors) = floors {
            handoff::set_floors(&mut self.planner.sessions, floors, started);
        }
        self.planner.speed.publish();
        self.commit();
        let micros = started.elapsed().as_micros() as u64;
        let old = self.shared.batch_micros.load(Ordering::Relaxed);
        self.shared
            .batch_micros
            .store((old * 7 + micros) / 8, Ordering::Relaxed);
    }

    /// Sends what the batch changed on its way: to the journal, which releases the held replies once
    /// the records are durable; without an event log, the held replies go out now.
    fn commit(&mut self) {
        let out = self.planner.take_output();
        match &self.journal {
            Some(journal) if !out.is_empty() => {
                self.changes += out.records.len() as u64;
                journal.commit(out);
            }
            Some(_) => {}
            None => out.held.into_iter().for_each(Held::release),
        }
    }

    fn housekeeping(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.last_sweep) >= SWEEP_EVERY {
            self.last_sweep = now;
            let n = self.planner.sessions.sweep(now);
            if n > 0 {
                debug!(expired = n, "swept expired sessions");
            }
        }
        let m = &self.shared.metrics;
        let (capacity, ttl) = self.planner.sessions.evictions();
        m.evictions[Eviction::Capacity as usize]
            .inner()
            .store(capacity, Ordering::Relaxed);
        m.evictions[Eviction::Ttl as usize]
            .inner()
            .store(ttl, Ordering::Relaxed);
        m.live_sessions.set(self.planner.sessions.len() as u64);
        m.canary_sessions
            .set(self.planner.sessions.canary_len() as u64);
        if let Some(every) = self.config.snapshot_interval
            && self.changes > 0
            && now.duration_since(self.last_snapshot) >= every
        {
            self.snapshot();
        }
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
            Job::Replay { reply, .. } => reply.is_closed(),
        }
    }

    fn fail(self, e: EngineError) {
        let _ = match self {
            Job::Event { reply, .. } => reply.send(Err(e)).map_err(drop),
            Job::Recommend { reply, .. } => reply.send(Err(e)).map_err(drop),
            Job::Score { reply, .. } => reply.send(Err(e)).map_err(drop),
            Job::GetSession { reply, .. } => reply.send(Err(e)).map_err(drop),
            Job::DeleteSession { reply, .. } => reply.send(Err(e)).map_err(drop),
            Job::Replay { reply, .. } => reply.send(Err(e)).map_err(drop),
        };
    }
}
