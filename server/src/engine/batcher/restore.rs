//! Session snapshots on the batcher thread: capturing every live session between batches (the journal
//! stamps and writes the image), and restoring a snapshot at start-up before the log tail is replayed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lambdarec_kernels::Event;
use lambdarec_proto::bundle::now_unix_ms;
use tracing::{debug, info, warn};

use super::Batcher;
use crate::engine::snapshot::{SessionImage, SnapshotImage, TrendImage};
use crate::engine::speed::Speed;
use crate::engine::types::{Restore, RestoreStats};
use crate::engine::{EngineError, ModelView};
use crate::registry::error_chain;
use lambdarec_trainer::trending::Trending;

impl Batcher {
    /// Captures every live session, least recently used first, and hands the image to the journal,
    /// which writes it once the records before it are durable. Items are named by the control
    /// version's catalogue (a canary session's are translated); a canary session keeps its state
    /// version, by which a restore puts it back in the canary's arm.
    pub(super) fn snapshot(&mut self) {
        let (Some(journal), Some(active)) = (&self.journal, &self.active) else {
            return;
        };
        let now = Instant::now();
        let planner = &mut self.planner;
        let store = &mut planner.sessions;
        let mut sessions = Vec::with_capacity(store.len());
        for slot in store.lru_order() {
            let hidden = match self.backend.read_state(slot) {
                Ok(h) => h,
                Err(e) => {
                    warn!(error = %error_chain(&e), "cannot read session states; snapshot skipped");
                    return;
                }
            };
            let e = store.entry(slot);
            let recent = match &mut planner.canary {
                Some(c) if e.canary() => {
                    let recent = e.recent.iter().copied();
                    c.translate(true, &mut planner.speed, &active.view, recent)
                }
                _ => e.recent.iter().copied().collect(),
            };
            sessions.push(SessionImage {
                id: store.key(slot).expect("a live slot has a key").clone(),
                events: e.events,
                recent,
                seqs: e.seqs.iter().copied().collect(),
                last_seen_ms: e.last_seen_ms,
                idle_ms: now.duration_since(store.touched(slot)).as_millis() as u64,
                state_version: e.state_version.clone(),
                hidden,
                log_floor: e.log_floor,
                own_from: e.own_from,
            });
        }
        let (n, took) = (sessions.len(), now.elapsed());
        journal.snapshot(SnapshotImage {
            position: 0,
            taken_ms: now_unix_ms() as i64,
            view: active.view.clone(),
            new_items: planner.speed.new.ids().to_vec(),
            sessions,
            trending: planner.speed.layer.as_ref().map(|l| TrendImage {
                half_life_s: l.trend.half_life_s(),
                entries: l.trend.entries().collect(),
            }),
            writer: self
                .handoff
                .as_ref()
                .map(|h| (h.writer.clone(), planner.writer_seq)),
        });
        // The capture is the only part that holds up serving (the journal's thread writes it).
        debug!(
            sessions = n,
            capture_ms = took.as_millis() as u64,
            "sessions captured for a snapshot"
        );
        self.changes = 0;
        self.last_snapshot = now;
    }

    /// Rebuilds the session store from a snapshot. A session's hidden state is reused when the
    /// serving model has the same hidden size (as a live model swap keeps it); otherwise it is rebuilt
    /// by stepping the session's recent items through the serving model.
    pub(super) fn restore(&mut self, restore: Restore) {
        let Restore { snapshot, reply } = restore;
        let Some((model, view)) = self.active.as_ref().map(|a| (a.id, a.view.clone())) else {
            let _ = reply.send(Err(EngineError::NoModel));
            return;
        };
        // Catalogue items, and new items as the live server took them (unless now refused).
        let speed = &mut self.planner.speed;
        let map: Vec<Option<u32>> = snapshot
            .items
            .iter()
            .map(|id| speed.resolve_recorded(id, &view))
            .collect();
        let n_items = view.n_items();
        let reuse = snapshot.header.hidden == view.hidden;
        let prior: Option<Arc<str>> = snapshot.header.writer.as_deref().map(Arc::from);
        let canary = self.planner.canary.as_ref().map(|c| (c.id, c.view.clone()));
        let ttl = self.config.session_ttl.as_millis() as u64;
        let now = Instant::now();
        let mut stats = RestoreStats::default();
        let (mut resets, mut steps, mut canary_steps) = (Vec::new(), Vec::new(), Vec::new());
        for s in snapshot.sessions {
            if s.idle_ms > ttl {
                stats.expired += 1;
                continue;
            }
            let at = now
                .checked_sub(Duration::from_millis(s.idle_ms))
                .unwrap_or(now);
            let (slot, _) = self.planner.sessions.insert(&s.id, None, at);
            let mut recent: Vec<u32> = s.recent.iter().filter_map(|&i| map[i as usize]).collect();
            stats.dropped_items += (s.recent.len() - recent.len()) as u64;
            // A session the canary served goes back to it (its state came from the canary's model).
            let mut n_items = n_items;
            let in_canary = canary
                .as_ref()
                .is_some_and(|(_, v)| s.state_version.as_deref() == Some(&*v.version));
            if let (true, Some(c)) = (in_canary, &mut self.planner.canary) {
                self.planner.sessions.join_canary(slot);
                recent = c.translate(false, &mut self.planner.speed, &view, recent);
                n_items = c.view.n_items();
            }
            if reuse {
                if let Err(e) = self.backend.write_state(slot, &s.hidden) {
                    self.planner.sessions.remove_slot(slot);
                    warn!(session = %s.id, error = %error_chain(&e), "cannot restore a session's state");
                    continue;
                }
            } else {
                resets.push(slot);
                let steps = if in_canary {
                    &mut canary_steps
                } else {
                    &mut steps
                };
                steps.extend(
                    recent
                        .iter()
                        .filter(|&&item| (item as usize) < n_items)
                        .map(|&item| Event { slot, item }),
                );
                stats.rebuilt += 1;
            }
            let e = self.planner.sessions.entry_mut(slot);
            if let Some(writer) = &prior {
                // A replica's session: known up to its log position, and holding its writer's
                // records up to the capture (the catch-up skips them).
                e.log_floor = s.log_floor;
                e.prior_own = Some((writer.clone(), s.own_from, snapshot.header.writer_seq));
            }
            e.events = s.events;
            e.recent = recent.into();
            e.seqs = s.seqs.into();
            e.last_seen_ms = s.last_seen_ms;
            e.state_version = match (reuse, &canary) {
                (true, _) => s.state_version,
                (false, Some((_, v))) if in_canary => Some(v.version.clone()),
                (false, _) => Some(view.version.clone()),
            };
            stats.sessions += 1;
            stats.canary += u64::from(in_canary);
        }
        let rebuilt = self.backend.reset_states(&resets).and_then(|()| {
            if !steps.is_empty() {
                self.backend.gru_step(model, &steps)?;
            }
            match &canary {
                Some((id, _)) if !canary_steps.is_empty() => {
                    self.backend.gru_step(*id, &canary_steps)
                }
                _ => Ok(()),
            }
        });
        if let Err(e) = rebuilt {
            let _ = reply.send(Err(e.into()));
            return;
        }
        // The restored sessions join the kNN index, least recently used first; trending takes the
        // snapshot's counts (the replayed tail then adds its events) unless the half-life changed.
        if let Some(layer) = &mut self.planner.speed.layer {
            Speed::index_sessions(layer, &mut self.planner.sessions);
            match &snapshot.trending {
                Some(t) if t.half_life_s == layer.trend.half_life_s() => {
                    let entries = t
                        .entries
                        .iter()
                        .filter_map(|&(d, key)| Some((map[d as usize]?, key)));
                    layer.trend =
                        Trending::from_entries(t.half_life_s, entries.collect::<Vec<_>>());
                    stats.trending_items = layer.trend.len() as u64;
                }
                Some(t) => info!(
                    snapshot_s = t.half_life_s,
                    serving_s = layer.trend.half_life_s(),
                    "trending's half-life changed: its counts restart from the bundle's sessions and the replayed events"
                ),
                None => {}
            }
        }
        // The canary's speed layer learns what the control's now holds.
        if let Some(c) = &mut self.planner.canary {
            c.sync_from(&mut self.planner.speed, &view, &mut self.planner.sessions);
        }
        log_restore(&snapshot.header.model_version, &view, reuse, &stats);
        let _ = reply.send(Ok(stats));
    }
}

fn log_restore(from_version: &str, view: &ModelView, reuse: bool, stats: &RestoreStats) {
    info!(
        sessions = stats.sessions,
        canary_sessions = stats.canary,
        expired = stats.expired,
        trending_items = stats.trending_items,
        snapshot_model = from_version,
        serving_model = %view.version,
        states = if reuse { "reused" } else { "rebuilt from recent items (hidden size changed)" },
        "sessions restored from the snapshot"
    );
}
