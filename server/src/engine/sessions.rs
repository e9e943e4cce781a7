//! The session store (the speed layer's bookkeeping): session id → state-table slot, recent items,
//! recent client sequence numbers (for exactly-once events), event count and times, with LRU eviction
//! by capacity and expiry by TTL.
//!
//! It is owned by the batcher thread, like the backend, so the hot path takes no lock. The slot of a
//! session is its index in `entries`: the store is a slab with an intrusive doubly linked LRU list, so
//! every operation is O(1) and the state table on the device needs no separate allocator.
//!
//! A session remembers the token that created it (its owner), and the store counts live sessions
//! per owner, kept exact by the one place a session leaves (`unlink_and_free`): that count is what
//! `--max-sessions-per-token` is checked against, at O(1) per session created or removed.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NIL: u32 = u32::MAX;

/// One session's bookkeeping (its hidden state lives on the backend at the same slot).
#[derive(Debug)]
pub struct Entry {
    key: Option<Arc<str>>,
    prev: u32,
    next: u32,
    /// Item indices under the serving model, oldest first, at most `history` long.
    pub recent: VecDeque<u32>,
    /// Events applied so far.
    pub events: u64,
    /// Time of the last event (the client's timestamp when it sent one), Unix epoch ms.
    pub last_seen_ms: i64,
    /// Version of the model whose GRU step produced the current hidden state.
    pub state_version: Option<Arc<str>>,
    /// `client_seq`s of the last applied events that had one, oldest first, at most the dedup window
    /// long: an event re-sent with one of these is a duplicate.
    pub seqs: VecDeque<u64>,
    /// Server time of the last use (event or query): LRU order and TTL.
    touched: Instant,
    /// The token that created the session (None: no token, or recovered from the log or a snapshot,
    /// which do not record it).
    owner: Option<Arc<str>>,
    /// The list of the session's last Recommend, waiting for its next event (online evaluation).
    pub pending: Option<Box<PendingList>>,
    /// Served by the canary arm (items numbered by the canary's catalogue, states stepped by its
    /// model); set only through [`SessionStore::join_canary`], so the count stays exact.
    canary: bool,
    /// Replicas (`serve --replica`): every record of the session in the shared log up to this
    /// position is reflected in the entry (0: none read yet).
    pub log_floor: u64,
    /// Replicas: the writer_seq this server's next record had when the entry was created; its own
    /// records from then on are in the entry already (they were applied before they were logged).
    pub own_from: u64,
    /// Replicas: records of this entry handed to the log and not yet confirmed.
    pub in_flight: u32,
    /// Replicas, a session restored from a snapshot: the writer that took it and the writer_seq
    /// range (`from..to`) of that writer's records the state holds.
    pub prior_own: Option<(Arc<str>, u64, u64)>,
}

impl Entry {
    /// Whether the canary arm serves this session.
    pub fn canary(&self) -> bool {
        self.canary
    }
}

/// A served recommendation list awaiting the session's next event.
#[derive(Debug)]
pub struct PendingList {
    /// The first items returned (at most [`super::online::ONLINE_K`]), best first.
    pub items: Box<[u32]>,
    pub version: Arc<str>,
    pub strategy: lambdarec_trainer::blend::Strategy,
}

/// Why a session left the store without being deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eviction {
    Capacity = 0,
    Ttl = 1,
}

pub struct SessionStore {
    index: HashMap<Arc<str>, u32>,
    entries: Vec<Entry>,
    free: Vec<u32>,
    /// Most recently used.
    head: u32,
    /// Least recently used: the next to evict.
    tail: u32,
    ttl: Duration,
    history: usize,
    dedup_window: usize,
    evicted_capacity: u64,
    evicted_ttl: u64,
    /// Live sessions per owner (owners with none are removed).
    owned: HashMap<Arc<str>, usize>,
    /// Live sessions the canary arm serves.
    canary_live: usize,
}

impl SessionStore {
    pub fn new(
        capacity: usize,
        ttl: Duration,
        history: usize,
        dedup_window: usize,
        now: Instant,
    ) -> Self {
        let entries = (0..capacity)
            .map(|_| Entry {
                key: None,
                prev: NIL,
                next: NIL,
                recent: VecDeque::new(),
                events: 0,
                last_seen_ms: 0,
                state_version: None,
                seqs: VecDeque::new(),
                touched: now,
                owner: None,
                pending: None,
                canary: false,
                log_floor: 0,
                own_from: 0,
                in_flight: 0,
                prior_own: None,
            })
            .collect();
        SessionStore {
            index: HashMap::new(),
            entries,
            // Reversed so that slots are handed out from 0 upwards.
            free: (0..capacity as u32).rev().collect(),
            head: NIL,
            tail: NIL,
            ttl,
            history,
            dedup_window,
            evicted_capacity: 0,
            evicted_ttl: 0,
            owned: HashMap::new(),
            canary_live: 0,
        }
    }

    /// Live sessions created by `owner`.
    pub fn owned_by(&self, owner: &str) -> usize {
        self.owned.get(owner).copied().unwrap_or(0)
    }

    /// Whether `owner` has `limit` live sessions already, counting none that has expired (expired
    /// ones are swept first when the count is at the limit).
    pub fn owner_at_limit(&mut self, owner: &str, limit: usize, now: Instant) -> bool {
        if self.owned_by(owner) < limit {
            return false;
        }
        self.sweep(now);
        self.owned_by(owner) >= limit
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Sessions evicted so far, by cause.
    pub fn evictions(&self) -> (u64, u64) {
        (self.evicted_capacity, self.evicted_ttl)
    }

    /// The slot of a live session, marking it used. An expired session is removed and reported
    /// missing (the periodic sweep may not have reached it yet).
    pub fn get(&mut self, key: &str, now: Instant) -> Option<u32> {
        let slot = *self.index.get(key)?;
        if self.expired(slot, now) {
            self.unlink_and_free(slot);
            self.evicted_ttl += 1;
            return None;
        }
        self.touch(slot, now);
        Some(slot)
    }

    /// The slot of a live session without marking it used (GetSession is not a use).
    pub fn peek(&mut self, key: &str, now: Instant) -> Option<u32> {
        let slot = *self.index.get(key)?;
        if self.expired(slot, now) {
            self.unlink_and_free(slot);
            self.evicted_ttl += 1;
            return None;
        }
        Some(slot)
    }

    /// Creates a session (the caller has checked it does not exist) and returns its slot, evicting
    /// the least recently used session when the store is full. The slot's state must be reset.
    pub fn insert(
        &mut self,
        key: &str,
        owner: Option<&Arc<str>>,
        now: Instant,
    ) -> (u32, Option<Eviction>) {
        let mut evicted = None;
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let victim = self.tail;
                debug_assert_ne!(victim, NIL, "a full store has a tail");
                let cause = if self.expired(victim, now) {
                    self.evicted_ttl += 1;
                    Eviction::Ttl
                } else {
                    self.evicted_capacity += 1;
                    Eviction::Capacity
                };
                evicted = Some(cause);
                self.unlink_and_free(victim);
                self.free.pop().expect("just freed")
            }
        };
        let key: Arc<str> = Arc::from(key);
        let e = &mut self.entries[slot as usize];
        e.key = Some(key.clone());
        e.recent.clear();
        e.events = 0;
        e.last_seen_ms = 0;
        e.state_version = None;
        e.seqs.clear();
        e.touched = now;
        e.owner = owner.cloned();
        e.pending = None;
        e.log_floor = 0;
        e.own_from = 0;
        e.in_flight = 0;
        e.prior_own = None;
        if let Some(owner) = owner {
            *self.owned.entry(owner.clone()).or_insert(0) += 1;
        }
        self.index.insert(key, slot);
        self.push_front(slot);
        (slot, evicted)
    }

    /// Forgets a session; true if it existed.
    pub fn remove(&mut self, key: &str) -> bool {
        match self.index.get(key) {
            Some(&slot) => {
                self.unlink_and_free(slot);
                true
            }
            None => false,
        }
    }

    /// Forgets whichever session holds `slot` (after a failed state update).
    pub fn remove_slot(&mut self, slot: u32) {
        if self.entries[slot as usize].key.is_some() {
            self.unlink_and_free(slot);
        }
    }

    /// Removes every session unused for longer than the TTL; returns how many.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while self.tail != NIL && self.expired(self.tail, now) {
            self.unlink_and_free(self.tail);
            n += 1;
        }
        self.evicted_ttl += n as u64;
        n
    }

    pub fn entry(&self, slot: u32) -> &Entry {
        &self.entries[slot as usize]
    }

    /// The entry of `slot`, to restore it from a snapshot.
    pub fn entry_mut(&mut self, slot: u32) -> &mut Entry {
        &mut self.entries[slot as usize]
    }

    /// The id of the session in `slot`, if one lives there.
    pub fn key(&self, slot: u32) -> Option<&Arc<str>> {
        self.entries[slot as usize].key.as_ref()
    }

    /// When the session in `slot` was last used.
    pub fn touched(&self, slot: u32) -> Instant {
        self.entries[slot as usize].touched
    }

    /// Live slots from the least to the most recently used (the order a restore inserts them in, so
    /// that it rebuilds the same LRU order).
    pub fn lru_order(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.len());
        let mut slot = self.tail;
        while slot != NIL {
            out.push(slot);
            slot = self.entries[slot as usize].prev;
        }
        out
    }

    /// Whether the session in `slot` applied an event with this `client_seq` within the dedup window.
    pub fn has_seq(&self, slot: u32, seq: u64) -> bool {
        self.entries[slot as usize].seqs.contains(&seq)
    }

    /// Records one applied event on `slot`.
    pub fn record_event(
        &mut self,
        slot: u32,
        item: u32,
        at_ms: i64,
        version: &Arc<str>,
        seq: Option<u64>,
    ) {
        let (history, window) = (self.history, self.dedup_window);
        let e = &mut self.entries[slot as usize];
        if history > 0 {
            if e.recent.len() == history {
                e.recent.pop_front();
            }
            e.recent.push_back(item);
        }
        if let Some(seq) = seq
            && window > 0
        {
            if e.seqs.len() == window {
                e.seqs.pop_front();
            }
            e.seqs.push_back(seq);
        }
        e.events += 1;
        e.last_seen_ms = at_ms;
        if e.state_version.as_ref() != Some(version) {
            e.state_version = Some(version.clone());
        }
    }

    /// Moves the live session in `slot` to the canary arm (when it is created there).
    pub fn join_canary(&mut self, slot: u32) {
        let e = &mut self.entries[slot as usize];
        if e.key.is_some() && !e.canary {
            e.canary = true;
            self.canary_live += 1;
        }
    }

    /// Live sessions the canary arm serves.
    pub fn canary_len(&self) -> usize {
        self.canary_live
    }

    /// Ends the canary arm for every session: each is served by the one model left.
    pub fn leave_canary(&mut self) {
        for e in &mut self.entries {
            e.canary = false;
        }
        self.canary_live = 0;
    }

    /// Every live session's entry (for remapping item indices after a model swap).
    pub fn live_entries_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.entries.iter_mut().filter(|e| e.key.is_some())
    }

    fn expired(&self, slot: u32, now: Instant) -> bool {
        now.saturating_duration_since(self.entries[slot as usize].touched) > self.ttl
    }

    fn touch(&mut self, slot: u32, now: Instant) {
        self.entries[slot as usize].touched = now;
        if self.head != slot {
            self.unlink(slot);
            self.push_front(slot);
        }
    }

    fn unlink_and_free(&mut self, slot: u32) {
        self.unlink(slot);
        let e = &mut self.entries[slot as usize];
        if let Some(key) = e.key.take() {
            self.index.remove(&key);
        }
        e.recent = VecDeque::new();
        e.seqs = VecDeque::new();
        e.state_version = None;
        if std::mem::take(&mut e.canary) {
            self.canary_live -= 1;
        }
        if let Some(owner) = e.owner.take()
            && let Some(n) = self.owned.get_mut(&owner)
        {
            *n -= 1;
            if *n == 0 {
                self.owned.remove(&owner);
            }
        }
        self.free.push(slot);
    }

    fn unlink(&mut self, slot: u32) {
        let (prev, next) = {
            let e = &self.entries[slot as usize];
            (e.prev, e.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.entries[next as usize].prev = prev;
        }
        let e = &mut self.entries[slot as usize];
        e.prev = NIL;
        e.next = NIL;
    }

    fn push_front(&mut self, slot: u32) {
        let old = self.head;
        {
            let e = &mut self.entries[slot as usize];
            e.prev = NIL;
            e.next = old;
        }
        if old == NIL {
            self.tail = slot;
        } else {
            self.entries[old as usize].prev = slot;
        }
        self.head = slot;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(cap: usize) -> (SessionStore, Instant) {
        let t0 = Instant::now();
        (
            SessionStore::new(cap, Duration::from_secs(10), 3, 2, t0),
            t0,
        )
    }

    #[test]
    fn capacity_evicts_the_least_recently_used() {
        let (mut s, t0) = store(2);
        let (a, ev) = s.insert("a", None, t0);
        assert_eq!((a, ev), (0, None));
        let (b, _) = s.insert("b", None, t0);
        assert_eq!(b, 1);
        // Using "a" makes "b" the least recently used.
        assert_eq!(s.get("a", t0), Some(a));
        let (c, ev) = s.insert("c", None, t0);
        assert_eq!((c, ev), (b, Some(Eviction::Capacity)));
        assert_eq!(s.get("b", t0), None);
        assert_eq!(s.get("a", t0), Some(a));
        assert_eq!(s.evictions(), (1, 0));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn ttl_expires_on_access_and_on_sweep() {
        let (mut s, t0) = store(4);
        s.insert("a", None, t0);
        s.insert("b", None, t0 + Duration::from_secs(5));
        let later = t0 + Duration::from_secs(11);
        assert_eq!(s.sweep(later), 1);
        assert_eq!(s.peek("a", later), None);
        assert!(s.peek("b", later).is_some());
        assert_eq!(s.get("b", t0 + Duration::from_secs(16)), None);
        assert_eq!(s.evictions(), (0, 2));
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn history_is_a_ring_and_remove_frees_the_slot() {
        let (mut s, t0) = store(1);
        let (slot, _) = s.insert("a", None, t0);
        let v: Arc<str> = Arc::from("v1");
        for item in 1..=5 {
            s.record_event(
                slot,
                item,
                100 + i64::from(item),
                &v,
                Some(u64::from(item) * 10),
            );
        }
        let e = s.entry(slot);
        assert_eq!(e.recent.iter().copied().collect::<Vec<_>>(), vec![3, 4, 5]);
        // The dedup window (2) keeps the last two sequence numbers only.
        assert!(s.has_seq(slot, 50) && s.has_seq(slot, 40) && !s.has_seq(slot, 30));
        assert_eq!((e.events, e.last_seen_ms), (5, 105));
        assert!(s.remove("a"));
        assert!(!s.remove("a"));
        let (again, ev) = s.insert("b", None, t0);
        assert_eq!((again, ev), (slot, None));
        assert_eq!(s.entry(again).events, 0);
        assert!(
            !s.has_seq(again, 50),
            "a new session starts with an empty dedup window"
        );
    }

    #[test]
    fn lru_order_runs_from_least_to_most_recently_used() {
        let (mut s, t0) = store(3);
        let (a, _) = s.insert("a", None, t0);
        let (b, _) = s.insert("b", None, t0);
        let (c, _) = s.insert("c", None, t0);
        s.get("a", t0);
        assert_eq!(s.lru_order(), vec![b, c, a]);
        assert_eq!(s.key(a).map(|k| &**k), Some("a"));
    }

    #[test]
    fn sessions_are_counted_per_owner_until_they_leave() {
        let (mut s, t0) = store(3);
        let (x, y): (Arc<str>, Arc<str>) = (Arc::from("x"), Arc::from("y"));
        s.insert("a", Some(&x), t0);
        s.insert("b", Some(&x), t0 + Duration::from_secs(5));
        s.insert("c", Some(&y), t0 + Duration::from_secs(5));
        assert_eq!(
            (s.owned_by("x"), s.owned_by("y"), s.owned_by("z")),
            (2, 1, 0)
        );
        assert!(s.owner_at_limit("x", 2, t0) && !s.owner_at_limit("x", 3, t0));
        // Capacity eviction of x's oldest session frees one of x's places.
        s.insert("d", None, t0 + Duration::from_secs(6));
        assert_eq!(s.owned_by("x"), 1);
        assert!(s.remove("b"));
        assert_eq!(s.owned_by("x"), 0);
        // An expired session stops counting when the limit is checked (swept then).
        let late = t0 + Duration::from_secs(16);
        assert_eq!(s.owned_by("y"), 1);
        assert!(!s.owner_at_limit("y", 1, late));
        assert_eq!(s.owned_by("y"), 0);
        assert!(s.owned.is_empty(), "owners with no session are forgotten");
    }
}
