//! Moving a model's pointers by hand (`lambdarec models`): list the versions, promote one to
//! LATEST, roll LATEST back, and start or stop a canary (CANARY, served beside LATEST's version to
//! a share of new sessions by servers started with `serve --canary-fraction`).
//!
//! A version is read whole (checksums and shapes) before any pointer is moved to it, so that
//! servers following the pointers never meet a version they cannot load.

use serde::Serialize;
use tracing::info;

use lambdarec_proto::bundle::{Gate, Store, compare_versions};

use crate::TrainError;

/// One version of a model, as `lambdarec models list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct VersionInfo {
    pub version: String,
    pub created_at: String,
    /// Whether LATEST names it.
    pub latest: bool,
    /// Whether CANARY names it.
    pub canary: bool,
    pub n_items: u64,
    pub hidden: u32,
    /// Recall@20 and MRR@20 of its own test set (the manifest's metrics), when recorded.
    pub recall: Option<f64>,
    pub mrr: Option<f64>,
    /// The version its weights started from (a warm start).
    pub warm_start_from: Option<String>,
    /// A continuous-training cycle's verdict (absent for a plain `train`).
    pub gate: Option<Gate>,
}

impl VersionInfo {
    /// Whether it was ever meant to serve: written by a plain `train`, or published by a cycle.
    pub fn publishable(&self) -> bool {
        self.gate.as_ref().is_none_or(|g| g.published)
    }
}

/// What [`promote`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Promotion {
    /// The version LATEST named before (None: there was no LATEST).
    pub from: Option<String>,
    /// The version LATEST names now.
    pub to: String,
    /// True when `to` was the canary and CANARY was removed (the canary became LATEST).
    pub canary_ended: bool,
}

/// What [`rollback`] did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Rollback {
    /// A canary ran: CANARY was removed and LATEST stays (`latest`).
    CanaryStopped {
        version: String,
        latest: Option<String>,
    },
    /// LATEST was moved back.
    LatestMoved(Promotion),
}

/// Every complete version of model `name`, oldest first.
pub async fn list_versions(store: &Store, name: &str) -> Result<Vec<VersionInfo>, TrainError> {
    let latest = store.latest_version(name).await?;
    let canary = store.canary_version(name).await?;
    let mut out = Vec::new();
    for version in store.list_versions(name).await? {
        let m = store.read_manifest(name, &version).await?;
        let metric = |key: &str| m.metrics.get(key).and_then(serde_json::Value::as_f64);
        out.push(VersionInfo {
            latest: latest.as_deref() == Some(version.as_str()),
            canary: canary.as_deref() == Some(version.as_str()),
            created_at: m.created_at.clone(),
            n_items: m.dims.n_items,
            hidden: m.dims.hidden,
            recall: metric("recall@20"),
            mrr: metric("mrr@20"),
            warm_start_from: m.training["warm_start"]["from"].as_str().map(str::to_owned),
            gate: m.gate,
            version,
        });
    }
    Ok(out)
}

/// Points LATEST at `version` (None: the canary) after reading it whole. When the version is the
/// canary, CANARY is removed after LATEST moved: a crash between the two leaves both naming it,
/// which servers treat as promoted, and the next `promote` or `canary --stop` removes CANARY.
pub async fn promote(
    store: &Store,
    name: &str,
    version: Option<&str>,
) -> Result<Promotion, TrainError> {
    let canary = store.canary_version(name).await?;
    let to = match (version, &canary) {
        (Some(v), _) => v.to_owned(),
        (None, Some(c)) => c.clone(),
        (None, None) => {
            return Err(TrainError::Refused(format!(
                "model {name:?} has no CANARY in {}: name the version to promote, or start a \
                 canary first with `lambdarec models canary VERSION`",
                store.url()
            )));
        }
    };
    let from = store.latest_version(name).await?;
    store.read_bundle(name, Some(&to)).await?;
    store.set_latest(name, &to).await?;
    info!(model = name, from = ?from, to, "LATEST moved");
    let canary_ended = canary.as_deref() == Some(to.as_str()) && store.clear_canary(name).await?;
    Ok(Promotion {
        from,
        to,
        canary_ended,
    })
}

/// Starts (or replaces) the canary: points CANARY at `version` after reading it whole. Refused
/// when `version` is LATEST already. Returns the version CANARY named before.
pub async fn start_canary(
    store: &Store,
    name: &str,
    version: &str,
) -> Result<Option<String>, TrainError> {
    if store.latest_version(name).await?.as_deref() == Some(version) {
        return Err(TrainError::Refused(format!(
            "version {version} is LATEST of model {name:?} already: a canary serves another \
             version beside LATEST's"
        )));
    }
    let before = store.canary_version(name).await?;
    store.read_bundle(name, Some(version)).await?;
    store.set_canary(name, version).await?;
    info!(model = name, from = ?before, to = version, "CANARY moved");
    Ok(before)
}

/// Ends the canary (removes CANARY; its sessions return to LATEST's version). Returns the version
/// it named, or None when no canary ran (not an error: stopping twice is stopping once).
pub async fn stop_canary(store: &Store, name: &str) -> Result<Option<String>, TrainError> {
    let Some(version) = store.canary_version(name).await? else {
        return Ok(None);
    };
    Ok(store.clear_canary(name).await?.then_some(version))
}

/// Rolls back. Without `to`, a running canary is stopped first (LATEST stays); with no canary,
/// LATEST moves to the newest version older than the current one that was meant to serve (a
/// candidate its gate rejected never was). With `to`, LATEST moves there and a canary runs on.
pub async fn rollback(store: &Store, name: &str, to: Option<&str>) -> Result<Rollback, TrainError> {
    if to.is_none()
        && let Some(version) = stop_canary(store, name).await?
    {
        let latest = store.latest_version(name).await?;
        info!(model = name, canary = version, latest = ?latest, "rollback stopped the canary");
        return Ok(Rollback::CanaryStopped { version, latest });
    }
    let Some(current) = store.latest_version(name).await? else {
        return Err(TrainError::Refused(format!(
            "model {name:?} has no LATEST in {}: nothing to roll back",
            store.url()
        )));
    };
    let target = match to {
        Some(v) => v.to_owned(),
        None => list_versions(store, name)
            .await?
            .into_iter()
            .rfind(|v| compare_versions(&v.version, &current).is_lt() && v.publishable())
            .map(|v| v.version)
            .ok_or_else(|| {
                TrainError::Refused(format!(
                    "model {name:?} has no published version older than LATEST ({current}) to roll back to"
                ))
            })?,
    };
    Ok(Rollback::LatestMoved(
        promote(store, name, Some(&target)).await?,
    ))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use lambdarec_proto::bundle::{GateArm, WEIGHTS_FILE};
    use object_store::ObjectStoreExt;

    use super::*;
    use crate::data::ItemVocab;
    use crate::export;

    async fn write(store: &Store, gate: Option<bool>) -> String {
        let ids: Vec<String> = (0..4).map(|i| format!("i{i}")).collect();
        let vocab = ItemVocab::new(ids, vec![4, 3, 2, 1]);
        let w = crate::model::Gru4Rec::new(4, 0, 2, 1).to_weights();
        let mut b = export::bundle_of(
            &w,
            &vocab,
            "fp",
            serde_json::json!({}),
            serde_json::json!({}),
        );
        b.manifest.gate = gate.map(|published| Gate {
            published,
            published_as: None,
            reason: "test".into(),
            serving_version: None,
            warm_start_from: None,
            k: 20,
            margin: 0.01,
            sessions: 0,
            predictions: 0,
            candidate: GateArm {
                strategy: "gru".into(),
                recall: 0.0,
                mrr: 0.0,
            },
            serving: None,
        });
        let publish = gate.unwrap_or(true);
        let v = store.write_version("m", &mut b, publish).await.unwrap();
        // Versions are named by the millisecond: keep them apart.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        v
    }

    fn moved(from: &str, to: &str) -> Rollback {
        Rollback::LatestMoved(Promotion {
            from: Some(from.to_owned()),
            to: to.to_owned(),
            canary_ended: false,
        })
    }

    #[tokio::test]
    async fn rollback_skips_rejected_candidates_and_promote_checks_the_version() {
        let store = Store::open(&format!("memory://rollback-{}", std::process::id())).unwrap();
        let err = rollback(&store, "m", None).await.unwrap_err().to_string();
        assert!(err.contains("no LATEST"), "{err}");
        let v1 = write(&store, None).await;
        let err = rollback(&store, "m", None).await.unwrap_err().to_string();
        assert!(err.contains("no published version older"), "{err}");
        let v2 = write(&store, Some(true)).await;
        let rejected = write(&store, Some(false)).await;
        let v4 = write(&store, Some(true)).await;
        let listed = list_versions(&store, "m").await.unwrap();
        let names: Vec<_> = listed.iter().map(|v| v.version.clone()).collect();
        assert_eq!(
            names,
            [v1.clone(), v2.clone(), rejected.clone(), v4.clone()]
        );
        assert_eq!(listed.iter().filter(|v| v.latest).count(), 1);
        assert!(listed.iter().all(|v| !v.canary));
        assert!(listed[3].latest && !listed[2].publishable());

        assert_eq!(rollback(&store, "m", None).await.unwrap(), moved(&v4, &v2));
        assert_eq!(rollback(&store, "m", None).await.unwrap(), moved(&v2, &v1));
        // A rejected candidate can still be promoted by hand, after inspection.
        let promoted = promote(&store, "m", Some(&rejected)).await.unwrap();
        assert_eq!(promoted.from, Some(v1.clone()));
        assert!(!promoted.canary_ended);
        assert_eq!(
            rollback(&store, "m", Some(&v4)).await.unwrap(),
            moved(&rejected, &v4)
        );
        assert!(
            promote(&store, "m", Some("20990101T000000000Z"))
                .await
                .is_err()
        );
        assert_eq!(store.latest_version("m").await.unwrap(), Some(v4));
    }

    #[tokio::test]
    async fn a_canary_starts_is_promoted_and_is_stopped_by_rollback() {
        let store = Store::open(&format!("memory://canary-{}", std::process::id())).unwrap();
        let v1 = write(&store, None).await;
        let v2 = write(&store, Some(false)).await;
        let v3 = write(&store, Some(false)).await;

        let err = promote(&store, "m", None).await.unwrap_err().to_string();
        assert!(
            err.contains("no CANARY") && err.contains("models canary"),
            "{err}"
        );
        let err = start_canary(&store, "m", &v1)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("version {v1} is LATEST")), "{err}");
        let err = start_canary(&store, "m", "20990101T000000000Z")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("20990101T000000000Z"), "{err}");
        assert_eq!(stop_canary(&store, "m").await.unwrap(), None);

        // Started, replaced, listed.
        assert_eq!(start_canary(&store, "m", &v3).await.unwrap(), None);
        assert_eq!(
            start_canary(&store, "m", &v2).await.unwrap(),
            Some(v3.clone())
        );
        let listed = list_versions(&store, "m").await.unwrap();
        let flags: Vec<_> = listed.iter().map(|v| (v.latest, v.canary)).collect();
        assert_eq!(flags, [(true, false), (false, true), (false, false)]);

        // Promoting another version leaves the canary running; promoting the canary ends it.
        let p = promote(&store, "m", Some(&v3)).await.unwrap();
        assert!(!p.canary_ended);
        assert_eq!(store.canary_version("m").await.unwrap(), Some(v2.clone()));
        let p = promote(&store, "m", None).await.unwrap();
        assert_eq!(
            p,
            Promotion {
                from: Some(v3.clone()),
                to: v2.clone(),
                canary_ended: true
            }
        );
        assert_eq!(store.canary_version("m").await.unwrap(), None);

        // A rollback stops a canary before it moves LATEST; --to moves LATEST and keeps it.
        start_canary(&store, "m", &v1).await.unwrap();
        assert_eq!(
            rollback(&store, "m", None).await.unwrap(),
            Rollback::CanaryStopped {
                version: v1.clone(),
                latest: Some(v2.clone())
            }
        );
        assert_eq!(store.latest_version("m").await.unwrap(), Some(v2.clone()));
        start_canary(&store, "m", &v1).await.unwrap();
        assert_eq!(
            rollback(&store, "m", Some(&v3)).await.unwrap(),
            moved(&v2, &v3)
        );
        assert_eq!(store.canary_version("m").await.unwrap(), Some(v1.clone()));
        assert_eq!(stop_canary(&store, "m").await.unwrap(), Some(v1.clone()));

        // What a crash between moving LATEST and removing CANARY leaves: promoting again ends it.
        store.set_canary("m", &v3).await.unwrap();
        let p = promote(&store, "m", None).await.unwrap();
        assert_eq!(
            (p.from.as_deref(), p.canary_ended),
            (Some(v3.as_str()), true)
        );
    }

    #[tokio::test]
    async fn a_damaged_version_never_becomes_the_canary() {
        let store =
            Store::open(&format!("memory://canary-damaged-{}", std::process::id())).unwrap();
        write(&store, None).await;
        let v2 = write(&store, Some(false)).await;
        let weights = object_store::path::Path::from(format!("models/m/{v2}/{WEIGHTS_FILE}"));
        store
            .object_store()
            .put(&weights, Bytes::from_static(b"garbage").into())
            .await
            .unwrap();
        let err = start_canary(&store, "m", &v2)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(WEIGHTS_FILE), "{err}");
        assert_eq!(store.canary_version("m").await.unwrap(), None);
    }
}
