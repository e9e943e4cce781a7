//! Memory of the speed layer: bytes the live session-kNN index and trending counts hold, measured by
//! a counting allocator, for a catalogue of 30k items (the RSC15 sample's order of size) and of 1M
//! items, as 100k live sessions stream in event by event (each event updates its session's entry, as
//! the server's batcher does, sessions cut to their last 50 items).
//!
//! `cargo bench -p lambdarec-benches --bench speed`
//!
//! Sessions are the built-in synthetic sample's (Zipf-popular items, clusters and successors; 2–20
//! events) over the catalogue. Printed: the catalogue's fixed cost (per-item posting lists and
//! trending keys), then the cost of the live sessions per 100k sessions and per event, and the time
//! one kNN query takes against that index (single thread).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use lambdarec_trainer::blend::{DEFAULT_HISTORY, SpeedLayer, Weights};
use lambdarec_trainer::data::Sessions;
use lambdarec_trainer::data::synthetic::{SyntheticOptions, generate};
use lambdarec_trainer::knn::KnnParams;

/// Bytes allocated and not yet freed.
static LIVE: AtomicUsize = AtomicUsize::new(0);

struct Counting;

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const SESSIONS: usize = 100_000;

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn main() {
    println!(
        "{:>10} {:>14} {:>16} {:>14} {:>12} {:>10}",
        "items", "fixed MiB", "per 100k MiB", "B per event", "events", "s"
    );
    for n_items in [30_000usize, 1_000_000] {
        let log = generate(&SyntheticOptions {
            n_items,
            n_sessions: SESSIONS,
            seed: 5,
            ..SyntheticOptions::default()
        });
        // Sessions of item indices, in log order.
        let mut sessions: Vec<Vec<u32>> = vec![Vec::new(); log.sessions.len()];
        for e in &log.events {
            sessions[e.session as usize].push(e.item);
        }
        let before = LIVE.load(Ordering::Relaxed);
        let params = KnnParams {
            capacity: 1_000_000,
            ..KnnParams::default()
        };
        let mut speed = SpeedLayer::new(
            &Sessions::default(),
            n_items,
            params,
            3600.0,
            Weights::new(0.5, 0.1),
        );
        let fixed = LIVE.load(Ordering::Relaxed) - before;
        let started = Instant::now();
        let mut events = 0usize;
        let mut at_ms = 1_700_000_000_000i64;
        let mut recent: Vec<u32> = Vec::with_capacity(DEFAULT_HISTORY);
        for (s, items) in sessions.iter().enumerate() {
            recent.clear();
            for &item in items {
                if recent.len() == DEFAULT_HISTORY {
                    recent.remove(0);
                }
                recent.push(item);
                at_ms += 10;
                speed.observe(s as u64, &recent, item, at_ms);
                events += 1;
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let live = LIVE.load(Ordering::Relaxed) - before - fixed;
        assert_eq!(speed.knn.len(), SESSIONS);
        println!(
            "{n_items:>10} {:>14.1} {:>16.1} {:>14.0} {events:>12} {seconds:>10.2}",
            mib(fixed),
            mib(live) * 100_000.0 / SESSIONS as f64,
            live as f64 / events as f64,
        );
        // Scoring cost: every 10th session's first half as a query, against the full index.
        let queries: Vec<&[u32]> = sessions
            .iter()
            .step_by(10)
            .map(|s| &s[..s.len().div_ceil(2)])
            .collect();
        let started = Instant::now();
        let mut scored = 0usize;
        for q in &queries {
            scored += speed.knn.score(q, None).len();
        }
        let per_query = started.elapsed().as_secs_f64() / queries.len() as f64;
        println!(
            "{n_items:>10}   kNN score: {:.1} µs per query ({} queries, {:.0} items scored per query)",
            per_query * 1e6,
            queries.len(),
            scored as f64 / queries.len() as f64
        );
        std::hint::black_box(&speed);
    }
}
