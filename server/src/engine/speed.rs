//! The speed layer on the batcher thread: the trainer's [`SpeedLayer`] (live session-kNN and trending
//! counts, seeded from the bundle's training sessions) and the items new since the bundle.
//!
//! A new item gets the index `n_items + j` (j: the order it was first seen), so one `u32` names a
//! catalogue item or a new one everywhere a session's items are kept. The GRU never sees a new item:
//! its step is skipped (the documented fallback: the session's GRU state stays what its known items
//! made it), while kNN and trending learn it like any other.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::gauge::Gauge;

use lambdarec_trainer::blend::{SpeedLayer, Strategy};

use super::EngineError;
use super::sessions::SessionStore;
use super::types::ModelView;
use crate::config::{NewItems, SpeedConfig};

/// Figures of the speed layer that handlers read (ModelInfo, /metrics): the metrics' own gauges.
#[derive(Clone, Debug, Default)]
pub struct SpeedStats {
    pub knn_sessions: Gauge<u64, AtomicU64>,
    pub new_items: Gauge<u64, AtomicU64>,
}

/// The kNN identity of a session: a 64-bit FNV-1a hash of its id (a collision would merge two
/// sessions' kNN entries, about once in 2^32 pairs at a billion sessions).
pub fn owner(session_id: &str) -> u64 {
    session_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Items new since the bundle, by id and by index (`base + j`).
#[derive(Debug, Default)]
pub struct NewItemTable {
    base: u32,
    ids: Vec<String>,
    index: HashMap<String, u32>,
}

impl NewItemTable {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// The ids, in index order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// The index of a new item already taken.
    pub fn get(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }

    /// The id of index `i` (a new item's, or None for a catalogue index).
    pub fn name(&self, i: u32) -> Option<&str> {
        let j = i.checked_sub(self.base)? as usize;
        self.ids.get(j).map(String::as_str)
    }

    fn insert(&mut self, id: &str) -> u32 {
        let i = self.base + self.ids.len() as u32;
        self.ids.push(id.to_string());
        self.index.insert(id.to_string(), i);
        i
    }

    /// The table for a newly served catalogue: items the bundle now knows leave it, the rest are
    /// numbered after the new catalogue, in the order they came.
    pub fn rebased(&self, view: &ModelView) -> NewItemTable {
        let mut t = NewItemTable {
            base: view.n_items() as u32,
            ..NewItemTable::default()
        };
        for id in &self.ids {
            if view.vocab.index(id).is_none() {
                t.insert(id);
            }
        }
        t
    }
}

/// The speed layer and new items, owned by the planner.
pub struct Speed {
    /// None until the first model is installed.
    pub layer: Option<SpeedLayer>,
    pub new: NewItemTable,
    config: SpeedConfig,
    stats: SpeedStats,
}

impl Speed {
    pub fn new(config: SpeedConfig, stats: SpeedStats) -> Self {
        Speed {
            layer: None,
            new: NewItemTable::default(),
            config,
            stats,
        }
    }

    /// Takes the speed layer built for a newly swapped-in model and its new-item table (see
    /// [`NewItemTable::rebased`]).
    pub fn install(&mut self, layer: SpeedLayer, new: NewItemTable) {
        self.new = new;
        self.layer = Some(layer);
        self.publish();
    }

    /// Whether item `id`, unknown to `view`'s catalogue, can be used: `Ok(Some(i))` for a new item
    /// already taken, `Ok(None)` for one that [`Speed::take`] may take now.
    pub fn admit_new(&self, id: &str, view: &ModelView) -> Result<Option<u32>, EngineError> {
        if let Some(i) = self.new.get(id) {
            return Ok(Some(i));
        }
        if self.config.new_items == NewItems::Reject || id.is_empty() {
            return Err(EngineError::UnknownItem {
                id: id.to_string(),
                version: view.version.clone(),
            });
        }
        if id.len() > self.config.max_item_id_bytes {
            return Err(EngineError::NewItemRejected {
                id: id.chars().take(64).collect(),
                reason: format!(
                    "its id is {} bytes long; the limit is {}",
                    id.len(),
                    self.config.max_item_id_bytes
                ),
            });
        }
        if self.new.len() >= self.config.max_new_items {
            return Err(EngineError::NewItemRejected {
                id: id.to_string(),
                reason: format!(
                    "the server already holds --max-new-items {} new items; they become catalogue \
                     items with the next bundle trained on them",
                    self.config.max_new_items
                ),
            });
        }
        Ok(None)
    }

    /// Takes a new item that [`Speed::admit_new`] admitted.
    pub fn take(&mut self, id: &str, view: &ModelView) -> u32 {
        let i = self.new.insert(id);
        tracing::info!(item = id, index = i, model = %view.version, "new item taken (not in the bundle's catalogue)");
        self.stats.new_items.set(self.new.len() as u64);
        i
    }

    /// The index of a recorded item (a logged event's, a snapshot's): the catalogue's, or a new
    /// item's as the live server took it, taken again if need be (None: refused now, e.g. after a
    /// restart with `--new-items reject`).
    pub fn resolve_recorded(&mut self, id: &str, view: &ModelView) -> Option<u32> {
        if let Some(i) = view.vocab.index(id) {
            return Some(i);
        }
        match self.admit_new(id, view) {
            Ok(Some(i)) => Some(i),
            Ok(None) => Some(self.take(id, view)),
            Err(_) => None,
        }
    }

    /// Makes every live session of `sessions` the most recent entry of `layer`'s kNN index, least
    /// recently used first (so the most recent stay the most recent).
    pub fn index_sessions(layer: &mut SpeedLayer, sessions: &mut SessionStore) {
        for slot in sessions.lru_order() {
            let key = owner(sessions.key(slot).map_or("", |k| k));
            layer
                .knn
                .upsert(key, sessions.entry_mut(slot).recent.make_contiguous());
        }
    }

    /// The external id of index `i` under `view`.
    pub fn name<'a>(&'a self, i: u32, view: &'a ModelView) -> &'a str {
        if (i as usize) < view.n_items() {
            view.item_id(i)
        } else {
            self.new.name(i).unwrap_or("")
        }
    }

    /// The strategy a request naming `asked` (None: none) gets under `view`.
    pub fn strategy(&self, asked: Option<Strategy>, view: &ModelView) -> Strategy {
        asked
            .or(self.config.default_strategy)
            .unwrap_or(view.default_strategy)
    }

    /// Copies the figures to the gauges (after each batch, and at install).
    pub fn publish(&self) {
        let knn = self.layer.as_ref().map_or(0, |l| l.knn.len());
        self.stats.knn_sessions.set(knn as u64);
        self.stats.new_items.set(self.new.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_a_stable_hash_of_the_id() {
        assert_eq!(owner(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(owner("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(owner("session-1"), owner("session-2"));
    }
}
