//! Store behaviour end to end on the in-memory and local-directory stores: round trips, LATEST,
//! CANARY, rollback, corruption and naming rules.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use object_store::ObjectStoreExt;
use object_store::path::Path;

use super::*;

/// A fresh `memory://` store per test: the registry is process-global and tests run in parallel.
fn memory_store() -> Store {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Store::open(&format!("memory://store-tests-{n}")).unwrap()
}

/// Deterministic pseudo-random floats in [-1, 1) (xorshift64*), so no RNG dependency is needed.
fn random_tensor(shape: Vec<usize>, seed: u64) -> Tensor {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let n = shape.iter().product();
    let data = (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let bits = s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40; // 24 bits
            bits as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    Tensor { shape, data }
}

/// A valid GRU4Rec bundle with N items, E = 4, H = 6 and an untied input embedding.
fn sample_bundle(n: usize, seed: u64) -> Bundle {
    let (e, h) = (4, 6);
    let shapes: [(&str, Vec<usize>); 7] = [
        ("gru.w_ih", vec![3 * h, e]),
        ("gru.w_hh", vec![3 * h, h]),
        ("gru.b_ih", vec![3 * h]),
        ("gru.b_hh", vec![3 * h]),
        ("item_out", vec![n, h]),
        ("item_bias", vec![n]),
        ("item_in", vec![n, e]),
    ];
    let tensors = shapes
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| (name.to_owned(), random_tensor(shape, seed + i as u64)))
        .collect();
    Bundle {
        manifest: Manifest {
            format_version: 0,
            model_kind: GRU4REC.to_owned(),
            name: String::new(),
            version: String::new(),
            created_unix_ms: 0,
            created_at: String::new(),
            dims: Dims {
                n_items: n as u64,
                embed_dim: e as u32,
                hidden: h as u32,
                tied_embedding: false,
            },
            data_fingerprint: format!("sha256:test-{seed}"),
            training: serde_json::json!({"epochs": 3, "loss": "bpr-max"}),
            metrics: serde_json::json!({"recall@20": 0.5, "mrr@20": 0.2}),
            files: BTreeMap::new(),
            blend: None,
            gate: None,
        },
        tensors,
        items: ItemTable {
            ids: (0..n).map(|i| format!("item-{i}")).collect(),
            popularity: (0..n as u64).map(|i| i * 7 % 5).collect(),
        },
        sessions: Some(SessionTable {
            offsets: vec![0, 2, 3],
            items: vec![0, (n - 1) as u32, 1],
            times: vec![1.5, 2.5, 3.0],
        }),
        optimizer: None,
    }
}

async fn round_trip(store: &Store) {
    let mut bundle = sample_bundle(11, 1);
    bundle.manifest.blend = Some(super::Blend {
        gru_weight: 0.35,
        trend_weight: 0.05,
        trend_half_life_s: Some(600.0),
        knn_neighbours: Some(200),
        knn_sample: Some(1000),
        fit: serde_json::json!({"validation_sessions": 3}),
    });
    let version = store.write_bundle("gru", &mut bundle).await.unwrap();
    assert_eq!(bundle.manifest.version, version);
    assert_eq!(bundle.manifest.name, "gru");
    assert_eq!(bundle.manifest.format_version, FORMAT_VERSION);
    assert_eq!(
        bundle.manifest.created_at,
        format_rfc3339_ms(bundle.manifest.created_unix_ms)
    );
    assert_eq!(
        version,
        format_version_stamp(bundle.manifest.created_unix_ms)
    );
    assert_eq!(bundle.manifest.files.len(), 3, "weights, items, sessions");

    let read = store.read_bundle("gru", None).await.unwrap();
    assert_eq!(read, bundle);
    assert_eq!(
        store.read_bundle("gru", Some(&version)).await.unwrap(),
        bundle
    );
    assert_eq!(
        store.read_manifest("gru", &version).await.unwrap(),
        bundle.manifest
    );
}

#[tokio::test]
async fn round_trip_in_memory_and_shared_by_name() {
    let store = memory_store();
    round_trip(&store).await;
    // A second open of the same URL sees the same objects.
    let again = Store::open(store.url()).unwrap();
    assert!(again.read_bundle("gru", None).await.is_ok());
    // A different name is a different store.
    assert_eq!(memory_store().latest_version("gru").await.unwrap(), None);
}

#[tokio::test]
async fn round_trip_in_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("not/yet/there");
    let store = Store::open(root.to_str().unwrap()).unwrap();
    assert!(store.url().starts_with("file:///"), "{}", store.url());
    round_trip(&store).await;
    let version = store.latest_version("gru").await.unwrap().unwrap();
    for file in [MANIFEST_FILE, WEIGHTS_FILE, ITEMS_FILE] {
        assert!(
            root.join("models/gru").join(&version).join(file).is_file(),
            "{file}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(root.join("models/gru/LATEST")).unwrap(),
        version
    );
    // The file:// form of the same directory reads the same bundle.
    let by_url = Store::open(store.url()).unwrap();
    assert_eq!(
        by_url
            .read_bundle("gru", None)
            .await
            .unwrap()
            .manifest
            .version,
        version
    );
}

#[tokio::test]
async fn latest_follows_newest_and_rollback_moves_it() {
    let store = memory_store();
    let mut versions = Vec::new();
    for seed in 0..3 {
        versions.push(
            store
                .write_bundle("m", &mut sample_bundle(5, seed))
                .await
                .unwrap(),
        );
        assert_eq!(
            store.latest_version("m").await.unwrap().as_ref(),
            versions.last()
        );
    }
    assert_eq!(store.list_versions("m").await.unwrap(), versions);

    store.set_latest("m", &versions[0]).await.unwrap();
    let rolled_back = store.read_bundle("m", None).await.unwrap();
    assert_eq!(rolled_back.manifest.version, versions[0]);
    assert_eq!(rolled_back.tensors, sample_bundle(5, 0).tensors);

    let err = store
        .set_latest("m", "19990101T000000000Z")
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(
        store.latest_version("m").await.unwrap().as_ref(),
        Some(&versions[0])
    );
}

/// CANARY on `store`: set, read back, refused for a missing version, never listed as a version,
/// and removed idempotently; LATEST never moves.
async fn canary_pointer(store: &Store) {
    let v1 = store
        .write_bundle("m", &mut sample_bundle(5, 1))
        .await
        .unwrap();
    let v2 = store
        .write_version("m", &mut sample_bundle(5, 2), false)
        .await
        .unwrap();
    assert_eq!(store.canary_version("m").await.unwrap(), None);
    assert!(!store.clear_canary("m").await.unwrap());

    store.set_canary("m", &v2).await.unwrap();
    assert_eq!(store.canary_version("m").await.unwrap(), Some(v2.clone()));
    assert_eq!(store.latest_version("m").await.unwrap(), Some(v1.clone()));
    assert_eq!(
        store.list_versions("m").await.unwrap(),
        [v1.clone(), v2.clone()]
    );

    let err = store
        .set_canary("m", "19990101T000000000Z")
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(err.to_string().contains("19990101T000000000Z"), "{err}");
    assert_eq!(store.canary_version("m").await.unwrap(), Some(v2.clone()));

    assert!(store.clear_canary("m").await.unwrap());
    assert!(!store.clear_canary("m").await.unwrap());
    assert_eq!(store.canary_version("m").await.unwrap(), None);
    assert_eq!(store.latest_version("m").await.unwrap(), Some(v1));
    assert!(!store.clear_canary("no-such-model").await.unwrap());
}

#[tokio::test]
async fn canary_pointer_in_memory() {
    canary_pointer(&memory_store()).await;
}

#[tokio::test]
async fn canary_pointer_in_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().to_str().unwrap()).unwrap();
    canary_pointer(&store).await;
    assert!(!dir.path().join("models/m/CANARY").exists());
}

#[tokio::test]
async fn an_unreadable_canary_is_a_format_error() {
    let store = memory_store();
    let path = Path::from("models/m/CANARY");
    store
        .object_store()
        .put(&path, Bytes::from_static(b"../escape").into())
        .await
        .unwrap();
    let err = store.canary_version("m").await.unwrap_err();
    assert!(matches!(err, BundleError::Format { .. }), "{err}");
    assert!(err.to_string().contains("models/m/CANARY"), "{err}");
}

#[tokio::test]
async fn an_unpublished_version_leaves_latest_and_optimizer_state_is_read_apart() {
    let store = memory_store();
    let first = store
        .write_bundle("gru", &mut sample_bundle(5, 1))
        .await
        .unwrap();
    let mut candidate = sample_bundle(5, 2);
    let optimizer: BTreeMap<String, Tensor> = [
        ("item_out.acc".to_string(), random_tensor(vec![5, 2], 9)),
        ("step".to_string(), random_tensor(vec![1], 10)),
    ]
    .into();
    candidate.optimizer = Some(optimizer.clone());
    let kept = store
        .write_version("gru", &mut candidate, false)
        .await
        .unwrap();
    assert_eq!(
        store.latest_version("gru").await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        store.list_versions("gru").await.unwrap(),
        [first.clone(), kept.clone()]
    );
    assert!(candidate.manifest.files.contains_key(OPTIMIZER_FILE));

    // read_bundle does not fetch the optimiser state (a server never needs it): with the file
    // corrupted, the bundle still reads; read_optimizer checks and decodes it.
    let mut read = store.read_bundle("gru", Some(&kept)).await.unwrap();
    assert_eq!(read.optimizer, None);
    read.optimizer = candidate.optimizer.clone();
    assert_eq!(read, candidate);
    assert_eq!(
        store.read_optimizer("gru", &kept).await.unwrap(),
        Some(optimizer)
    );
    assert_eq!(store.read_optimizer("gru", &first).await.unwrap(), None);
    let path = Path::from(format!("models/gru/{kept}/{OPTIMIZER_FILE}"));
    store
        .object_store()
        .put(&path, Bytes::from_static(b"not safetensors").into())
        .await
        .unwrap();
    assert!(store.read_bundle("gru", Some(&kept)).await.is_ok());
    let err = store
        .read_optimizer("gru", &kept)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(OPTIMIZER_FILE), "{err}");
}

#[tokio::test]
async fn missing_latest_and_missing_version_are_not_found() {
    let store = memory_store();
    assert_eq!(store.latest_version("none").await.unwrap(), None);
    assert!(store.list_versions("none").await.unwrap().is_empty());
    let err = store.read_bundle("none", None).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(err.to_string().contains("models/none/LATEST"), "{err}");
    let err = store
        .read_bundle("none", Some("20260101T000000000Z"))
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(
        err.to_string()
            .contains("models/none/20260101T000000000Z/manifest.json"),
        "{err}"
    );
}

async fn overwrite_weights(store: &Store, version: &str, bytes: Vec<u8>) {
    let path = Path::from(format!("models/m/{version}/{WEIGHTS_FILE}"));
    store
        .object_store()
        .put(&path, Bytes::from(bytes).into())
        .await
        .unwrap();
}

#[tokio::test]
async fn corrupted_or_truncated_weights_are_refused() {
    let store = memory_store();
    let version = store
        .write_bundle("m", &mut sample_bundle(5, 9))
        .await
        .unwrap();
    let path = Path::from(format!("models/m/{version}/{WEIGHTS_FILE}"));
    let mut weights = store
        .object_store()
        .get(&path)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();

    let last = weights.len() - 1;
    weights[last] ^= 0x40; // same size, different content
    overwrite_weights(&store, &version, weights.clone()).await;
    let err = store.read_bundle("m", None).await.unwrap_err();
    assert!(
        matches!(&err, BundleError::Checksum { path, .. } if path.ends_with(WEIGHTS_FILE)),
        "{err}"
    );

    weights.truncate(last);
    overwrite_weights(&store, &version, weights).await;
    let err = store.read_bundle("m", None).await.unwrap_err();
    assert!(matches!(err, BundleError::Size { .. }), "{err}");
}

#[tokio::test]
async fn same_millisecond_versions_get_distinct_names() {
    let store = memory_store();
    let stamp = "20260101T000000000Z";
    let weights = Bytes::from_static(b"w");
    let first = store
        .claim_version("m", stamp, weights.clone())
        .await
        .unwrap();
    let second = store
        .claim_version("m", stamp, weights.clone())
        .await
        .unwrap();
    let third = store.claim_version("m", stamp, weights).await.unwrap();
    assert_eq!(
        [first, second, third],
        [stamp.to_owned(), format!("{stamp}-2"), format!("{stamp}-3")]
    );

    // Concurrent writers (several land in one millisecond) never share a version.
    let mut bundles: Vec<Bundle> = (0..8).map(|seed| sample_bundle(3, seed)).collect();
    let writes = bundles.iter_mut().map(|b| store.write_bundle("c", b));
    let mut versions = futures::future::try_join_all(writes).await.unwrap();
    versions.sort();
    versions.dedup();
    assert_eq!(versions.len(), 8);
    assert_eq!(store.list_versions("c").await.unwrap().len(), 8);
}

#[tokio::test]
async fn bad_names_are_rejected_everywhere() {
    let store = memory_store();
    for name in ["", "..", "a/b", "x y"] {
        let err = store
            .write_bundle(name, &mut sample_bundle(2, 0))
            .await
            .unwrap_err();
        assert!(
            matches!(err, BundleError::InvalidName { .. }),
            "{name:?}: {err}"
        );
        assert!(store.read_bundle(name, None).await.is_err());
        assert!(store.latest_version(name).await.is_err());
        assert!(store.canary_version(name).await.is_err());
        assert!(store.clear_canary(name).await.is_err());
    }
    for version in ["", "..", "../m", "a/b", "LATEST", "CANARY"] {
        let err = store.read_bundle("m", Some(version)).await.unwrap_err();
        assert!(
            matches!(err, BundleError::InvalidName { .. }),
            "{version:?}: {err}"
        );
        assert!(store.set_latest("m", version).await.is_err());
        assert!(store.set_canary("m", version).await.is_err());
    }
}

#[tokio::test]
async fn inconsistent_bundles_are_not_written() {
    let store = memory_store();
    let mut wrong_shape = sample_bundle(4, 0);
    wrong_shape
        .tensors
        .insert("item_out".into(), random_tensor(vec![4, 5], 0));
    let mut wrong_count = sample_bundle(4, 0);
    wrong_count.manifest.dims.n_items = 5;
    let mut missing = sample_bundle(4, 0);
    missing.tensors.remove("gru.w_hh");
    let mut tied_with_input = sample_bundle(4, 0);
    tied_with_input.manifest.dims.tied_embedding = true;
    let mut blend_out_of_range = sample_bundle(4, 0);
    blend_out_of_range.manifest.blend = Some(super::Blend {
        gru_weight: 1.5,
        trend_weight: 0.0,
        trend_half_life_s: None,
        knn_neighbours: None,
        knn_sample: None,
        fit: serde_json::Value::Null,
    });
    let mut no_neighbours = sample_bundle(4, 0);
    no_neighbours.manifest.blend = Some(super::Blend {
        gru_weight: 0.5,
        trend_weight: 0.0,
        trend_half_life_s: None,
        knn_neighbours: Some(0),
        knn_sample: Some(100),
        fit: serde_json::Value::Null,
    });
    for mut bundle in [
        wrong_shape,
        wrong_count,
        missing,
        tied_with_input,
        blend_out_of_range,
        no_neighbours,
    ] {
        let err = store.write_bundle("m", &mut bundle).await.unwrap_err();
        assert!(matches!(err, BundleError::Format { .. }), "{err}");
    }
    assert_eq!(store.latest_version("m").await.unwrap(), None);

    // Other model kinds and extra tensors are the trainer's business.
    let mut other = sample_bundle(4, 0);
    other.manifest.model_kind = "other".into();
    other
        .tensors
        .insert("anything".into(), random_tensor(vec![2], 0));
    other.tensors.remove("gru.w_hh");
    store.write_bundle("m", &mut other).await.unwrap();
}

#[tokio::test]
async fn newer_format_version_is_refused() {
    let store = memory_store();
    let version = store
        .write_bundle("m", &mut sample_bundle(3, 0))
        .await
        .unwrap();
    let mut manifest = store.read_manifest("m", &version).await.unwrap();
    manifest.format_version = FORMAT_VERSION + 1;
    let path = Path::from(format!("models/m/{version}/{MANIFEST_FILE}"));
    let json = serde_json::to_vec(&manifest).unwrap();
    store
        .object_store()
        .put(&path, Bytes::from(json).into())
        .await
        .unwrap();
    let err = store.read_bundle("m", None).await.unwrap_err();
    assert!(
        matches!(&err, BundleError::Format { reason, .. } if reason.contains("format_version")),
        "{err}"
    );
}

#[test]
fn open_rejects_unknown_schemes() {
    assert!(matches!(
        Store::open(""),
        Err(BundleError::InvalidUrl { .. })
    ));
    assert!(matches!(
        Store::open("nosuch://x/y"),
        Err(BundleError::InvalidUrl { .. })
    ));
}

#[test]
fn memory_url_keeps_its_prefix() {
    let store = Store::open("memory://prefix-test/a/b/").unwrap();
    assert_eq!(store.prefix().as_ref(), "a/b");
    assert_eq!(store.url(), "memory://prefix-test/a/b");
}

#[cfg(feature = "cloud")]
#[test]
fn cloud_urls_open_without_network() {
    // Building the client needs no credentials or network; requests would.
    let store = Store::open("s3://some-bucket/models-root/").unwrap();
    assert_eq!(store.url(), "s3://some-bucket/models-root");
    assert_eq!(store.prefix().as_ref(), "models-root");
}
