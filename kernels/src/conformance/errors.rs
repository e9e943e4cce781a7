//! Conformance of failures: every bad request returns its error and leaves the state table exactly as
//! it was; models are independent handles.

use super::{TestRng, random_model, read_all, setup, tolerance};
use crate::{Backend, BackendError, Dtype, Event, ModelId, ScoreQuery, TopKQuery, reference};

/// Out-of-range slots and items, k = 0, a wrong state width, unknown and invalid models: each returns
/// its error, and no state changes (bit for bit), even when valid events precede the bad one.
pub fn errors_leave_states_unchanged(backend: &mut dyn Backend, dtype: Dtype) {
    let (n, h, capacity) = (1037, 37, 9);
    let mut rng = TestRng::new(700);
    let w = random_model(&mut rng, n, 48, h, false);
    let (model, _) = setup(backend, &w, dtype, capacity, &mut rng);
    let before = read_all(backend);
    let unchanged = |backend: &mut dyn Backend, what: &str| {
        let after = read_all(backend);
        assert!(
            before
                .iter()
                .zip(&after)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{what} must leave every state unchanged"
        );
    };
    let ok = Event { slot: 1, item: 2 };
    let bad_slot = [
        ok,
        Event { slot: 2, item: 3 },
        Event {
            slot: capacity as u32,
            item: 0,
        },
    ];
    let r = backend.gru_step(model, &bad_slot);
    assert!(
        matches!(
            r,
            Err(BackendError::SlotOutOfRange {
                slot: 9,
                capacity: 9
            })
        ),
        "gru_step bad slot: {r:?}"
    );
    unchanged(backend, "gru_step with a bad slot");
    let r = backend.gru_step(
        model,
        &[
            ok,
            Event {
                slot: 0,
                item: n as u32,
            },
        ],
    );
    assert!(
        matches!(
            r,
            Err(BackendError::ItemOutOfRange {
                item: 1037,
                n_items: 1037
            })
        ),
        "gru_step bad item: {r:?}"
    );
    unchanged(backend, "gru_step with a bad item");
    let r = backend.reset_states(&[0, 1, u32::MAX]);
    assert!(
        matches!(r, Err(BackendError::SlotOutOfRange { .. })),
        "reset_states bad slot: {r:?}"
    );
    unchanged(backend, "reset_states with a bad slot");
    let r = backend.write_state(0, &vec![1.0; h + 1]);
    assert!(
        matches!(r, Err(BackendError::HiddenMismatch { .. })),
        "write_state wrong width: {r:?}"
    );
    let r = backend.write_state(capacity as u32, &vec![1.0; h]);
    assert!(
        matches!(r, Err(BackendError::SlotOutOfRange { .. })),
        "write_state bad slot: {r:?}"
    );
    unchanged(backend, "write_state errors");
    assert!(matches!(
        backend.read_state(capacity as u32),
        Err(BackendError::SlotOutOfRange { .. })
    ));

    let r = backend.score(
        model,
        &[
            ScoreQuery {
                slot: 0,
                candidates: &[1],
            },
            ScoreQuery {
                slot: 0,
                candidates: &[5, n as u32],
            },
        ],
    );
    assert!(
        matches!(r, Err(BackendError::ItemOutOfRange { .. })),
        "score bad item: {r:?}"
    );
    let r = backend.score(
        model,
        &[ScoreQuery {
            slot: 99,
            candidates: &[1],
        }],
    );
    assert!(
        matches!(r, Err(BackendError::SlotOutOfRange { .. })),
        "score bad slot: {r:?}"
    );
    let r = backend.top_k(
        model,
        &[
            TopKQuery {
                slot: 0,
                k: 3,
                exclude: &[],
            },
            TopKQuery {
                slot: 99,
                k: 3,
                exclude: &[],
            },
        ],
    );
    assert!(
        matches!(r, Err(BackendError::SlotOutOfRange { .. })),
        "top_k bad slot: {r:?}"
    );
    let r = backend.top_k(
        model,
        &[
            TopKQuery {
                slot: 0,
                k: 3,
                exclude: &[],
            },
            TopKQuery {
                slot: 1,
                k: 0,
                exclude: &[],
            },
        ],
    );
    assert!(matches!(r, Err(BackendError::ZeroK)), "top_k k=0: {r:?}");

    let gone = ModelId(u64::MAX);
    assert!(matches!(
        backend.gru_step(gone, &[ok]),
        Err(BackendError::UnknownModel(_))
    ));
    assert!(matches!(
        backend.score(gone, &[]),
        Err(BackendError::UnknownModel(_))
    ));
    assert!(matches!(
        backend.top_k(gone, &[]),
        Err(BackendError::UnknownModel(_))
    ));
    unchanged(backend, "requests to an unknown model");

    let mut bad = w.clone();
    bad.item_bias.pop();
    assert!(
        matches!(
            backend.upload_model(&bad, dtype),
            Err(BackendError::BadModel(_))
        ),
        "invalid weights"
    );

    // A state table of another width than the model's hidden size.
    backend.alloc_states(capacity, h + 3).expect("alloc_states");
    let r = backend.gru_step(model, &[ok]);
    assert!(
        matches!(r, Err(BackendError::HiddenMismatch { got: 40, want: 37 })),
        "gru_step wrong width: {r:?}"
    );
    assert!(matches!(
        backend.top_k(model, &[]),
        Err(BackendError::HiddenMismatch { .. })
    ));
    backend.drop_model(model);
}

/// Several models stay resident side by side; dropping one leaves the others working, after which
/// the dropped id is unknown (and dropping it again is harmless).
pub fn models_are_independent(backend: &mut dyn Backend, dtype: Dtype) {
    let tol = tolerance(dtype);
    let mut rng = TestRng::new(800);
    let (n, h) = (1037, 64);
    let a = random_model(&mut rng, n, h, h, true);
    let b = random_model(&mut rng, n, 32, h, false);
    let (id_a, states) = setup(backend, &a, dtype, 3, &mut rng);
    let id_b = backend.upload_model(&b, dtype).expect("upload_model");
    assert_ne!(id_a, id_b, "each upload gets its own id");
    let candidates = [0, 17, 1036];
    let query = [ScoreQuery {
        slot: 0,
        candidates: &candidates,
    }];
    let got_a = backend.score(id_a, &query).expect("score a");
    let got_b = backend.score(id_b, &query).expect("score b");
    for (i, &c) in candidates.iter().enumerate() {
        let (want_a, want_b) = (
            reference::score(&a, &states[..h], c),
            reference::score(&b, &states[..h], c),
        );
        assert!(
            super::close(f64::from(got_a[0][i]), want_a, tol),
            "model a, item {c}"
        );
        assert!(
            super::close(f64::from(got_b[0][i]), want_b, tol),
            "model b, item {c}"
        );
    }
    backend.drop_model(id_a);
    assert!(
        matches!(
            backend.score(id_a, &query),
            Err(BackendError::UnknownModel(_))
        ),
        "dropped model must be unknown"
    );
    backend.drop_model(id_a);
    assert_eq!(
        backend
            .score(id_b, &query)
            .expect("score b after dropping a"),
        got_b,
        "model b must be unaffected"
    );
    backend.drop_model(id_b);
}
