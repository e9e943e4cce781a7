//! The conformance suite every [`Backend`] runs (object_store's pattern): public test functions that
//! take `&mut dyn Backend`, feed it seeded random models and sessions of awkward sizes, and check the
//! results against the f64 [`reference`](crate::reference). They panic with a description on failure.
//!
//! ```no_run
//! let mut backend = lambdarec_kernels::CpuBackend::new(Some(2)).unwrap();
//! lambdarec_kernels::conformance::run_all(&mut backend);
//! ```

mod errors;
mod topk;

pub use errors::{errors_leave_states_unchanged, models_are_independent};
pub use topk::{
    nan_scores_do_not_panic, top_k_exclusions_and_short_lists, top_k_matches_reference,
    top_k_ties_prefer_lower_index,
};

use crate::{Backend, Dtype, Event, ModelId, ModelWeights, ScoreQuery, reference};

/// Runs every conformance test for every item-table dtype.
pub fn run_all(backend: &mut dyn Backend) {
    for dtype in [Dtype::F32, Dtype::Bf16, Dtype::F16] {
        for test in ALL {
            test(backend, dtype);
        }
    }
}

/// Every test of the suite, each run with one item-table dtype.
pub const ALL: &[fn(&mut dyn Backend, Dtype)] = &[
    state_table_round_trips,
    gru_step_matches_reference,
    score_matches_reference,
    top_k_matches_reference,
    top_k_exclusions_and_short_lists,
    top_k_ties_prefer_lower_index,
    nan_scores_do_not_panic,
    errors_leave_states_unchanged,
    models_are_independent,
];

/// Shapes the suite covers: odd catalogue sizes and widths, tied and untied input embeddings, an
/// input width different from the hidden width. `(n_items, embed_dim, hidden, tied)`.
pub const SHAPES: &[(usize, usize, usize, bool)] = &[
    (1037, 37, 37, true),
    (1037, 48, 64, false),
    (10_007, 100, 100, true),
    (2053, 64, 128, false),
    (10_007, 128, 128, true),
];

/// A small, seedable generator (SplitMix64) so the suite needs no dependency and every backend sees
/// the same inputs.
#[derive(Clone, Debug)]
pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)`.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in `[-1, 1]`, never zero (a zero input would hide a missing term).
    pub fn uniform(&mut self) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        let v = 2.0 * u - 1.0;
        if v == 0.0 { 0.5 } else { v }
    }

    /// Approximately standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    /// `len` values from `uniform()` times `scale`.
    pub fn vec(&mut self, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| self.uniform() * scale).collect()
    }
}

/// A random model whose gate pre-activations and scores are O(1): weights uniform in ±1 scaled by
/// 1/√fan-in, output embeddings by 2/√hidden, biases by 1/2.
pub fn random_model(
    rng: &mut TestRng,
    n_items: usize,
    embed_dim: usize,
    hidden: usize,
    tied: bool,
) -> ModelWeights {
    assert!(
        !tied || embed_dim == hidden,
        "a tied model needs embed_dim == hidden"
    );
    let (e, h) = (embed_dim as f32, hidden as f32);
    ModelWeights {
        n_items,
        embed_dim,
        hidden,
        item_in: (!tied).then(|| rng.vec(n_items * embed_dim, 1.0)),
        w_ih: rng.vec(3 * hidden * embed_dim, 2.0 / e.sqrt()),
        w_hh: rng.vec(3 * hidden * hidden, 2.0 / h.sqrt()),
        b_ih: rng.vec(3 * hidden, 0.5),
        b_hh: rng.vec(3 * hidden, 0.5),
        item_out: rng.vec(n_items * hidden, 2.0 / h.sqrt()),
        item_bias: rng.vec(n_items, 0.5),
    }
}

/// Allowed error, relative to `max(|want|, 1)`: f32 tables are checked at f32 accuracy, bf16/f16 ones
/// against the unrounded weights.
pub fn tolerance(dtype: Dtype) -> f64 {
    match dtype {
        Dtype::F32 => 1e-5,
        Dtype::Bf16 | Dtype::F16 => 1e-2,
    }
}

fn close(got: f64, want: f64, tol: f64) -> bool {
    (got - want).abs() <= tol * want.abs().max(1.0)
}

/// Uploads `w`, allocates `capacity` slots and fills them with random states; returns the model and
/// the host copy of the states.
fn setup(
    backend: &mut dyn Backend,
    w: &ModelWeights,
    dtype: Dtype,
    capacity: usize,
    rng: &mut TestRng,
) -> (ModelId, Vec<f32>) {
    let model = backend.upload_model(w, dtype).expect("upload_model");
    backend
        .alloc_states(capacity, w.hidden)
        .expect("alloc_states");
    let states = rng.vec(capacity * w.hidden, 0.9);
    for (slot, row) in states.chunks_exact(w.hidden).enumerate() {
        backend.write_state(slot as u32, row).expect("write_state");
    }
    (model, states)
}

/// Every slot's state as the backend holds it.
fn read_all(backend: &mut dyn Backend) -> Vec<f32> {
    let (capacity, _) = backend.states_shape();
    (0..capacity as u32)
        .flat_map(|s| backend.read_state(s).expect("read_state"))
        .collect()
}

/// The state table reports its shape, starts at zero, and read/write/reset/realloc do what they say.
pub fn state_table_round_trips(backend: &mut dyn Backend, _dtype: Dtype) {
    let mut rng = TestRng::new(1);
    backend.alloc_states(13, 37).expect("alloc_states");
    assert_eq!(backend.states_shape(), (13, 37));
    assert!(
        read_all(backend).iter().all(|&v| v == 0.0),
        "fresh states must be zero"
    );
    let rows: Vec<Vec<f32>> = (0..13).map(|_| rng.vec(37, 1.0)).collect();
    for (s, row) in rows.iter().enumerate() {
        backend.write_state(s as u32, row).expect("write_state");
    }
    for (s, row) in rows.iter().enumerate() {
        assert_eq!(
            &backend.read_state(s as u32).expect("read_state"),
            row,
            "slot {s} round trip"
        );
    }
    backend.reset_states(&[3, 7, 3]).expect("reset_states");
    for (s, row) in rows.iter().enumerate() {
        let got = backend.read_state(s as u32).expect("read_state");
        if s == 3 || s == 7 {
            assert!(got.iter().all(|&v| v == 0.0), "slot {s} must be reset");
        } else {
            assert_eq!(&got, row, "slot {s} must be untouched by reset");
        }
    }
    backend.alloc_states(5, 64).expect("alloc_states");
    assert_eq!(backend.states_shape(), (5, 64));
    assert!(
        read_all(backend).iter().all(|&v| v == 0.0),
        "reallocated states must be zero"
    );
}

/// Batches of 1, 7 and 64 events, with a slot repeated within a batch, match the reference step.
pub fn gru_step_matches_reference(backend: &mut dyn Backend, dtype: Dtype) {
    let tol = tolerance(dtype);
    for (case, &(n, e, h, tied)) in SHAPES.iter().enumerate() {
        let mut rng = TestRng::new(100 + case as u64);
        let w = random_model(&mut rng, n, e, h, tied);
        let capacity = 67;
        let (model, mut want) = setup(backend, &w, dtype, capacity, &mut rng);
        // (batch size, distinct slots drawn from): 64 events over 16 slots repeats slots ~4 times.
        for (batch, slots) in [(1, capacity), (7, 3), (64, 16), (64, capacity)] {
            let events: Vec<Event> = (0..batch)
                .map(|_| Event {
                    slot: rng.below(slots) as u32,
                    item: rng.below(n) as u32,
                })
                .collect();
            backend.gru_step(model, &events).expect("gru_step");
            reference::gru_step(&w, &mut want, &events);
            let got = read_all(backend);
            for (i, (&g, &r)) in got.iter().zip(&want).enumerate() {
                assert!(
                    close(f64::from(g), f64::from(r), tol),
                    "gru_step {dtype} shape {:?} batch {batch}: slot {} dim {}: got {g}, want {r}",
                    SHAPES[case],
                    i / h,
                    i % h
                );
            }
            // Continue from the reference states so that rounding differences do not compound.
            for (slot, row) in want.chunks_exact(h).enumerate() {
                backend.write_state(slot as u32, row).expect("write_state");
            }
        }
        backend.drop_model(model);
    }
}

/// Candidate scoring (any order, repeats allowed) matches the reference for batches of 1, 7 and 64.
pub fn score_matches_reference(backend: &mut dyn Backend, dtype: Dtype) {
    let tol = tolerance(dtype);
    for (case, &(n, e, h, tied)) in SHAPES.iter().enumerate() {
        let mut rng = TestRng::new(200 + case as u64);
        let w = random_model(&mut rng, n, e, h, tied);
        let capacity = 70;
        let (model, states) = setup(backend, &w, dtype, capacity, &mut rng);
        for batch in [1, 7, 64] {
            let cands: Vec<Vec<u32>> = (0..batch)
                .map(|_| {
                    (0..1 + rng.below(50))
                        .map(|_| rng.below(n) as u32)
                        .collect()
                })
                .collect();
            let queries: Vec<ScoreQuery<'_>> = cands
                .iter()
                .map(|c| ScoreQuery {
                    slot: rng.below(capacity) as u32,
                    candidates: c,
                })
                .collect();
            let got = backend.score(model, &queries).expect("score");
            assert_eq!(got.len(), batch, "one score list per query");
            for (q, scores) in queries.iter().zip(&got) {
                assert_eq!(scores.len(), q.candidates.len(), "one score per candidate");
                let hrow = &states[q.slot as usize * h..][..h];
                for (&c, &s) in q.candidates.iter().zip(scores) {
                    let want = reference::score(&w, hrow, c);
                    assert!(
                        close(f64::from(s), want, tol),
                        "score {dtype} shape {:?}: item {c}: got {s}, want {want}",
                        SHAPES[case]
                    );
                }
            }
        }
        let none: Vec<Vec<f32>> = backend.score(model, &[]).expect("empty score batch");
        assert!(none.is_empty());
        backend.drop_model(model);
    }
}
