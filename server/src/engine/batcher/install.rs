//! Model installs on the batcher thread: upload, warm-up of every batch shape (between batches when
//! the state table can stay), and the atomic swap that keeps sessions (remapping their recent items
//! when the catalogue changed).

use std::sync::{Arc, PoisonError};

use lambdarec_kernels::{Event, ModelId, ScoreQuery, TopKQuery};
use tracing::{error, info, warn};

use lambdarec_trainer::blend::SpeedLayer;

use super::{Active, Batcher};
use crate::engine::speed::Speed;
use crate::engine::{EngineError, Install, ModelView, Reply};

/// A model being warmed up beside the serving one, one batch shape per loop turn.
pub(super) struct Warming {
    id: ModelId,
    view: Arc<ModelView>,
    speed: Box<SpeedLayer>,
    /// Served as the canary to this share of new sessions once warm (None: swapped in).
    canary: Option<f64>,
    next_shape: usize,
    reply: Reply<Arc<ModelView>>,
}

impl Batcher {
    /// Drops the model being warmed up, if any, telling its installer why.
    pub(super) fn cancel_install(&mut self, why: EngineError) {
        if let Some(w) = self.warming.take() {
            self.backend.drop_model(w.id);
            let _ = w.reply.send(Err(why));
        }
    }

    /// Uploads a new model. With the same hidden size it is warmed up between batches and swapped in
    /// (or started as the canary) when done; otherwise (or for the first model) the state table is
    /// reallocated and it is warmed up at once.
    pub(super) fn begin_install(&mut self, install: Install) {
        let Install {
            weights,
            view,
            speed,
            canary,
            reply,
        } = install;
        self.cancel_install(EngineError::Superseded);
        if canary.is_some() {
            let refused = match &self.active {
                None => Some(
                    "no model is serving yet: a canary runs beside a serving model".to_string(),
                ),
                Some(a) if a.view.hidden != view.hidden => Some(format!(
                    "its hidden size {} differs from the serving version {}'s ({}), and the two \
                     arms share the session state table; promote it directly instead",
                    view.hidden, a.view.version, a.view.hidden
                )),
                Some(a) if a.view.version == view.version => Some(format!(
                    "version {} is the serving version already",
                    view.version
                )),
                Some(_) => None,
            };
            if let Some(why) = refused {
                return drop(reply.send(Err(EngineError::Canary(why))));
            }
        }
        let id = match self.backend.upload_model(&weights, view.dtype) {
            Ok(id) => id,
            Err(e) => return drop(reply.send(Err(e.into()))),
        };
        drop(weights);
        let view = Arc::new(view);
        let old_hidden = self.active.as_ref().map(|a| a.view.hidden);
        if old_hidden == Some(view.hidden) {
            self.warming = Some(Warming {
                id,
                view,
                speed,
                canary,
                next_shape: 1,
                reply,
            });
            return;
        }
        let capacity = self.config.max_sessions + 1;
        let warmed = self
            .backend
            .alloc_states(capacity, view.hidden)
            .and_then(|()| {
                (1..=self.config.max_batch).try_for_each(|b| self.warm_shape(id, &view, b))
            });
        if let Err(e) = warmed {
            self.backend.drop_model(id);
            if let Some(h) = old_hidden {
                // Put back a table the serving model can use (its sessions' states are lost).
                if let Err(e) = self.backend.alloc_states(capacity, h) {
                    error!(error = %e, "cannot restore the session state table");
                }
            }
            return drop(reply.send(Err(e.into())));
        }
        let rebuild = old_hidden.is_some();
        if let Some(h) = old_hidden {
            warn!(
                from = h,
                to = view.hidden,
                sessions = self.planner.sessions.len(),
                "hidden size changed: every session's state is rebuilt from its recent items"
            );
            for e in self.planner.sessions.live_entries_mut() {
                e.state_version = Some(view.version.clone());
            }
        }
        self.swap(id, view, speed, reply);
        if rebuild {
            self.rebuild_states();
        }
    }

    /// After a swap to another hidden size (the state table was reallocated, all zero): steps each
    /// live session's recent items, as the new catalogue numbers them, through the new model, so a
    /// session continues from what it did rather than from nothing (as a snapshot restore does).
    fn rebuild_states(&mut self) {
        let Some((model, n_items)) = self.active.as_ref().map(|a| (a.id, a.view.n_items())) else {
            return;
        };
        let store = &self.planner.sessions;
        let mut steps = Vec::new();
        for slot in store.lru_order() {
            let recent = &store.entry(slot).recent;
            steps.extend(
                recent
                    .iter()
                    .filter(|&&item| (item as usize) < n_items)
                    .map(|&item| Event { slot, item }),
            );
        }
        if !steps.is_empty()
            && let Err(e) = self.backend.gru_step(model, &steps)
        {
            error!(error = %e, "cannot rebuild the sessions' states: they restart from zero");
            let _ = self.backend.reset_states(&store.lru_order());
        }
    }

    /// Warms up one more batch shape of the model being installed; swaps it in after the last.
    pub(super) fn warm_step(&mut self) {
        let Some(mut w) = self.warming.take() else {
            return;
        };
        match self.warm_shape(w.id, &w.view, w.next_shape) {
            Err(e) => {
                self.backend.drop_model(w.id);
                let _ = w.reply.send(Err(e.into()));
            }
            Ok(()) if w.next_shape >= self.config.max_batch => match w.canary {
                Some(fraction) => self.start_canary(w.id, w.view, w.speed, fraction, w.reply),
                None => self.swap(w.id, w.view, w.speed, w.reply),
            },
            Ok(()) => {
                w.next_shape += 1;
                self.warming = Some(w);
            }
        }
    }

    /// Runs every op once at batch size `b` on the scratch slot, then zeroes it again.
    fn warm_shape(
        &mut self,
        id: ModelId,
        view: &ModelView,
        b: usize,
    ) -> lambdarec_kernels::Result<()> {
        let s = self.planner.scratch;
        self.backend
            .gru_step(id, &vec![Event { slot: s, item: 0 }; b])?;
        let k = self.config.limits.default_k.min(view.n_items());
        self.backend.top_k(
            id,
            &vec![
                TopKQuery {
                    slot: s,
                    k,
                    exclude: &[]
                };
                b
            ],
        )?;
        self.backend.score(
            id,
            &vec![
                ScoreQuery {
                    slot: s,
                    candidates: &[0]
                };
                b
            ],
        )?;
        self.backend.reset_states(&[s])
    }

    fn swap(
        &mut self,
        id: ModelId,
        view: Arc<ModelView>,
        mut speed: Box<SpeedLayer>,
        reply: Reply<Arc<ModelView>>,
    ) {
        // A canary ends with the version it was compared against: its sessions return to that
        // version first, then move to the new one like all others.
        self.end_canary(false);
        let old = self.active.replace(Active {
            id,
            view: view.clone(),
        });
        // New items the new catalogue knows become catalogue items; the others are renumbered.
        let new_items = self.planner.speed.new.rebased(&view);
        if let Some(old) = old {
            self.backend.drop_model(old.id);
            let old_new = &self.planner.speed.new;
            // An item's index under the old catalogue (and new-item table) → under the new ones.
            let renumber = |i: u32| {
                let id = if (i as usize) < old.view.n_items() {
                    old.view.item_id(i)
                } else {
                    old_new.name(i)?
                };
                view.vocab.index(id).or_else(|| new_items.get(id))
            };
            // Trending carries on: its counts hold every event this server has seen, which the
            // new bundle's training sessions (an archive cut, less its held-out sessions) do not.
            if let Some(layer) = &self.planner.speed.layer {
                let same_rate = layer.trend.half_life_s() == speed.trend.half_life_s();
                if same_rate && !layer.trend.is_empty() {
                    speed.trend = layer.trend.remapped(renumber);
                } else if !same_rate {
                    info!(
                        from_s = layer.trend.half_life_s(),
                        to_s = speed.trend.half_life_s(),
                        "trending's half-life changed: counts restart from the new bundle's sessions"
                    );
                }
            }
            if old.view.vocab.ids != view.vocab.ids || old_new.len() > 0 {
                for e in self.planner.sessions.live_entries_mut() {
                    // A list waiting for its session's next event names items of the old
                    // catalogue: it is not scored (online evaluation).
                    e.pending = None;
                    e.recent = e.recent.iter().filter_map(|&i| renumber(i)).collect();
                }
            }
        }
        // The live sessions join the new kNN index (oldest first, so the most recent stay the most
        // recent).
        Speed::index_sessions(&mut speed, &mut self.planner.sessions);
        self.planner.speed.install(*speed, new_items);
        *self
            .shared
            .model
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(view.clone());
        info!(version = %view.version, items = view.n_items(), hidden = view.hidden, "model swapped in");
        let _ = reply.send(Ok(view));
    }
}
