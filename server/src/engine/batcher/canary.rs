//! The canary arm: a second model version served beside the control one to a stable, hash-chosen
//! share of new sessions (`serve --canary-fraction`), until it is promoted (it serves everything) or
//! ended (its sessions return to the control version).
//!
//! A session belongs to one arm for its whole life. The arm is chosen when the session is created: a
//! mixed hash of its id against the fraction, so the same id always lands in the same arm. Sessions
//! that were live before the canary started stay with the control version. A session's recent items
//! are numbered by its own arm's catalogue, and its hidden state is stepped by its own arm's model.
//! Both models share the state table, so a canary must have the control's hidden size.
//!
//! Both arms' speed layers (session-kNN and trending) learn from every event, whichever arm serves
//! the session: the arms then differ only by their model version, not by how much live traffic their
//! kNN index and trending counts saw. Each event of one arm is translated into the other arm's
//! numbering (catalogue items by a table built at the start, other items by id).

use std::sync::{Arc, PoisonError};

use lambdarec_kernels::ModelId;
use lambdarec_trainer::blend::SpeedLayer;
use tracing::{info, warn};

use super::{Active, Batcher};
use crate::engine::sessions::SessionStore;
use crate::engine::speed::{Speed, SpeedStats, owner};
use crate::engine::{EngineError, ModelView, Reply};

/// "Not in the other catalogue" in a translation table.
const NONE: u32 = u32::MAX;

/// Salt of the arm hash, so that the canary's share is independent of every other choice made by a
/// hash of the session id (the trainer's held-out sessions use the same mixing without it).
const ARM_SALT: u64 = 0x9e37_79b9_7f4a_7c15;

/// Where a session id falls in `[0, 1)`: FNV-1a of the id, salted, then MurmurHash3's finaliser
/// (without it, ids that differ only in their last bytes share their high bits).
pub fn arm_point(session_id: &str) -> f64 {
    let mut h = owner(session_id) ^ ARM_SALT;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The canary version and what serves it, held by the planner.
pub(in crate::engine) struct CanaryArm {
    pub(in crate::engine) id: ModelId,
    pub(in crate::engine) view: Arc<ModelView>,
    /// Its own speed layer and new-item table, numbered by its catalogue.
    pub(in crate::engine) speed: Speed,
    pub(in crate::engine) fraction: f64,
    /// Control catalogue index → canary catalogue index (NONE: not in the canary's catalogue).
    to_canary: Vec<u32>,
    /// Canary catalogue index → control catalogue index.
    to_control: Vec<u32>,
}

impl CanaryArm {
    /// Whether a new session with this id joins the canary.
    pub(in crate::engine) fn admits(&self, session_id: &str) -> bool {
        arm_point(session_id) < self.fraction
    }

    /// Folds an event of one arm's session into the other arm's speed layer: `recent` (the session's
    /// items with the event's) and `item` (at `at_ms`) are numbered by the serving arm
    /// (`from_canary`).
    pub(in crate::engine) fn mirror(
        &mut self,
        from_canary: bool,
        control: &mut Speed,
        control_view: &ModelView,
        key: u64,
        recent: &[u32],
        (item, at_ms): (u32, i64),
    ) {
        let mut bridge = self.bridge(control, control_view, from_canary);
        let items: Vec<u32> = recent.iter().filter_map(|&i| bridge.cross(i)).collect();
        let item = bridge.cross(item);
        let Some(layer) = bridge.to.layer.as_mut() else {
            return;
        };
        layer.knn.upsert(key, &items);
        if let Some(item) = item {
            layer.trend.observe(item, at_ms);
        }
    }

    /// `items` of one arm (`from_canary`) in the other's numbering, dropping the ones it refuses.
    pub(in crate::engine) fn translate(
        &mut self,
        from_canary: bool,
        control: &mut Speed,
        control_view: &ModelView,
        items: impl IntoIterator<Item = u32>,
    ) -> Vec<u32> {
        let mut bridge = self.bridge(control, control_view, from_canary);
        items.into_iter().filter_map(|i| bridge.cross(i)).collect()
    }

    /// Forgets a deleted session in the canary's kNN index (the control's is the planner's).
    pub(in crate::engine) fn forget(&mut self, key: u64) {
        if let Some(layer) = &mut self.speed.layer {
            layer.forget(key);
        }
    }

    /// The translation from one arm's numbering to the other's.
    fn bridge<'a>(
        &'a mut self,
        control: &'a mut Speed,
        control_view: &'a ModelView,
        from_canary: bool,
    ) -> Bridge<'a> {
        if from_canary {
            Bridge {
                from_view: &self.view,
                from_new: &self.speed.new,
                map: &self.to_control,
                to_view: control_view,
                to: control,
            }
        } else {
            let control: &'a Speed = control;
            Bridge {
                from_view: control_view,
                from_new: &control.new,
                map: &self.to_canary,
                to_view: &self.view,
                to: &mut self.speed,
            }
        }
    }

    /// Makes the canary's speed layer hold what the control's does: every live session (translated,
    /// least recently used first) in its kNN index, and trending's counts (when the half-lives agree).
    pub(super) fn sync_from(
        &mut self,
        control: &mut Speed,
        control_view: &ModelView,
        sessions: &mut SessionStore,
    ) {
        let same_rate = match (&self.speed.layer, &control.layer) {
            (Some(ours), Some(theirs)) => {
                ours.trend.half_life_s() == theirs.trend.half_life_s() && !theirs.trend.is_empty()
            }
            _ => false,
        };
        if same_rate {
            // Every control index (catalogue and new items) in the canary's numbering, taking the
            // new items the canary lacks as an event would.
            let n = (control_view.n_items() + control.new.len()) as u32;
            let index: Vec<Option<u32>> = {
                let mut bridge = self.bridge(control, control_view, false);
                (0..n).map(|i| bridge.cross(i)).collect()
            };
            if let (Some(ours), Some(theirs)) = (&mut self.speed.layer, &control.layer) {
                ours.trend = theirs
                    .trend
                    .remapped(|i| index.get(i as usize).copied().flatten());
            }
        }
        for slot in sessions.lru_order() {
            let key = owner(sessions.key(slot).map_or("", |k| k));
            let from_canary = sessions.entry(slot).canary();
            let recent = sessions.entry_mut(slot).recent.make_contiguous();
            let items = if from_canary {
                recent.to_vec()
            } else {
                self.translate(false, control, control_view, recent.iter().copied())
            };
            if let Some(layer) = &mut self.speed.layer {
                layer.knn.upsert(key, &items);
            }
        }
    }
}

/// One direction of translation between the arms' numberings.
struct Bridge<'a> {
    from_view: &'a ModelView,
    from_new: &'a crate::engine::speed::NewItemTable,
    map: &'a [u32],
    to_view: &'a ModelView,
    to: &'a mut Speed,
}

impl Bridge<'_> {
    /// Item `i` of the source numbering in the target's: its catalogue index, or its new-item index
    /// there (taken now if need be). None: the target refuses it as a new item (`--new-items reject`
    /// or `--max-new-items` reached).
    fn cross(&mut self, i: u32) -> Option<u32> {
        let id = if (i as usize) < self.from_view.n_items() {
            let j = self.map[i as usize];
            if j != NONE {
                return Some(j);
            }
            self.from_view.item_id(i)
        } else {
            self.from_new.name(i)?
        };
        self.to.resolve_recorded(id, self.to_view)
    }
}

/// Each index of `from`'s catalogue in `to`'s (NONE where `to` lacks the item).
fn translation(from: &ModelView, to: &ModelView) -> Vec<u32> {
    from.vocab
        .ids
        .iter()
        .map(|id| to.vocab.index(id).unwrap_or(NONE))
        .collect()
}

impl Batcher {
    /// Starts serving a warmed-up model as the canary (replacing any canary before it, whose
    /// sessions return to the control version first).
    pub(super) fn start_canary(
        &mut self,
        id: ModelId,
        view: Arc<ModelView>,
        speed: Box<SpeedLayer>,
        fraction: f64,
        reply: Reply<Arc<ModelView>>,
    ) {
        let Some(control) = self.active.as_ref().map(|a| a.view.clone()) else {
            self.backend.drop_model(id);
            return drop(reply.send(Err(EngineError::NoModel)));
        };
        if self.planner.canary.is_some() {
            self.end_canary(false);
        }
        let mut arm = CanaryArm {
            id,
            to_canary: translation(&control, &view),
            to_control: translation(&view, &control),
            speed: Speed::new(self.config.speed.clone(), SpeedStats::default()),
            view: view.clone(),
            fraction,
        };
        let new = self.planner.speed.new.rebased(&view);
        arm.speed.install(*speed, new);
        arm.sync_from(
            &mut self.planner.speed,
            &control,
            &mut self.planner.sessions,
        );
        self.planner.canary = Some(arm);
        self.publish_canary();
        info!(
            canary = %view.version, control = %control.version, fraction,
            items = view.n_items(), "canary started: new sessions in its share are served by it"
        );
        let _ = reply.send(Ok(view));
    }

    /// Ends the canary. Promoted, it serves every session from now on (the control's sessions are
    /// renumbered into its catalogue and keep their states) and the control model is dropped;
    /// otherwise its sessions return to the control version the same way. Returns the version that
    /// serves everything now (None: there was no canary).
    pub(super) fn end_canary(&mut self, promote: bool) -> Option<Arc<ModelView>> {
        // A canary only ever runs beside a serving model.
        let control = self.active.as_ref()?.view.clone();
        let mut arm = self.planner.canary.take()?;
        let sessions = &mut self.planner.sessions;
        // The sessions of the arm that goes, renumbered into the one that stays.
        let mut moved = 0usize;
        for slot in sessions.lru_order() {
            if sessions.entry(slot).canary() == promote {
                continue;
            }
            let e = sessions.entry_mut(slot);
            // A waiting list names the other catalogue's items: it is not scored.
            e.pending = None;
            let recent = e.recent.iter().copied();
            let recent = arm.translate(!promote, &mut self.planner.speed, &control, recent);
            e.recent = recent.into();
            moved += 1;
        }
        sessions.leave_canary();
        let kept = if promote {
            let old = self.active.replace(Active {
                id: arm.id,
                view: arm.view.clone(),
            });
            if let Some(old) = old {
                self.backend.drop_model(old.id);
            }
            let layer = arm.speed.layer.take();
            let new = std::mem::take(&mut arm.speed.new);
            match layer {
                Some(layer) => self.planner.speed.install(layer, new),
                None => warn!("the canary had no speed layer; the control's is kept"),
            }
            *self
                .shared
                .model
                .write()
                .unwrap_or_else(PoisonError::into_inner) = Some(arm.view.clone());
            info!(version = %arm.view.version, from = %control.version, sessions_moved = moved, "canary promoted: it serves every session");
            arm.view
        } else {
            self.backend.drop_model(arm.id);
            info!(canary = %arm.view.version, version = %control.version, sessions_moved = moved, "canary ended: its sessions are served by the control version");
            control
        };
        self.publish_canary();
        Some(kept)
    }

    /// Copies the canary's state to what handlers read (ModelInfo, /metrics).
    pub(super) fn publish_canary(&self) {
        let canary = self
            .planner
            .canary
            .as_ref()
            .map(|c| (c.view.clone(), c.fraction));
        let m = &self.shared.metrics;
        m.canary_sessions
            .set(self.planner.sessions.canary_len() as u64);
        *self
            .shared
            .canary
            .write()
            .unwrap_or_else(PoisonError::into_inner) = canary;
    }
}

#[cfg(test)]
mod tests {
    use super::arm_point;

    #[test]
    fn the_arm_hash_spreads_ids_evenly_and_is_stable() {
        let n = 100_000;
        let canary = (0..n).filter(|i| arm_point(&format!("s{i}")) < 0.1).count();
        let share = canary as f64 / n as f64;
        assert!((share - 0.1).abs() < 0.005, "share {share}");
        // Consecutive ids that differ only at the end are spread too.
        let low = (200..400)
            .filter(|i| arm_point(&format!("s{i}")) < 0.5)
            .count();
        assert!((70..130).contains(&low), "{low} of 200 below one half");
        assert_eq!(arm_point("session-1"), arm_point("session-1"));
        assert!((0.0..1.0).contains(&arm_point("")));
    }
}
