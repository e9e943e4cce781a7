//! The pointer files beside a model's versions: LATEST names the version servers serve, CANARY
//! the version servers started with `--canary-fraction` serve to a share of new sessions beside
//! it. A pointer is one small object holding a version's name, replaced whole.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use super::names::{CANARY, LATEST};
use super::{BundleError, MANIFEST_FILE, Store, validate_model_name, validate_version};

/// A pointer a version can be published to (`train --follow --publish`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Pointer {
    /// LATEST: every server following the model serves the version.
    #[default]
    Latest,
    /// CANARY: servers started with `--canary-fraction` serve it to a share of new sessions.
    Canary,
}

impl Pointer {
    /// The pointer file's name (`LATEST`, `CANARY`).
    pub fn file_name(self) -> &'static str {
        match self {
            Pointer::Latest => LATEST,
            Pointer::Canary => CANARY,
        }
    }
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.file_name())
    }
}

impl FromStr for Pointer {
    type Err = String;

    /// `latest` or `canary`, in any case.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "latest" => Ok(Pointer::Latest),
            "canary" => Ok(Pointer::Canary),
            _ => Err(format!("unknown pointer {s:?} (expected latest or canary)")),
        }
    }
}

impl Store {
    /// The version `pointer` names, or `None` if the model has no such pointer.
    pub async fn pointer_version(
        &self,
        name: &str,
        pointer: Pointer,
    ) -> Result<Option<String>, BundleError> {
        self.read_pointer(name, pointer.file_name()).await
    }

    /// The version LATEST names, or `None` if the model has no LATEST.
    pub async fn latest_version(&self, name: &str) -> Result<Option<String>, BundleError> {
        self.pointer_version(name, Pointer::Latest).await
    }

    /// Points LATEST at an existing version (rollback or roll forward). Fails with NotFound if that
    /// version has no manifest.
    pub async fn set_latest(&self, name: &str, version: &str) -> Result<(), BundleError> {
        self.write_pointer(name, LATEST, version).await
    }

    /// The version CANARY names, or `None` if no canary runs.
    pub async fn canary_version(&self, name: &str) -> Result<Option<String>, BundleError> {
        self.pointer_version(name, Pointer::Canary).await
    }

    /// Points CANARY at an existing version (starts or replaces the canary). Fails with NotFound
    /// if that version has no manifest.
    pub async fn set_canary(&self, name: &str, version: &str) -> Result<(), BundleError> {
        self.write_pointer(name, CANARY, version).await
    }

    /// Removes CANARY (ends the canary). Returns false when there was none, which is not an error:
    /// stopping a canary twice leaves the same state as stopping it once.
    pub async fn clear_canary(&self, name: &str) -> Result<bool, BundleError> {
        validate_model_name(name)?;
        let (path, display) = self.locate(&["models", name, CANARY]);
        let store_error = |source| BundleError::ObjectStore {
            path: display.clone(),
            source,
        };
        // Deleting a missing object succeeds on S3 and in memory but fails on a local directory:
        // ask first, so that every store answers alike.
        match self.inner.head(&path).await {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(source) => return Err(store_error(source)),
        }
        match self.inner.delete(&path).await {
            Ok(()) => {}
            // Removed by another caller since the head: the canary has ended all the same.
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(source) => return Err(store_error(source)),
        }
        tracing::info!(store = %self.url, model = name, "CANARY removed");
        Ok(true)
    }

    async fn read_pointer(
        &self,
        name: &str,
        pointer: &'static str,
    ) -> Result<Option<String>, BundleError> {
        validate_model_name(name)?;
        let (path, display) = self.locate(&["models", name, pointer]);
        let bytes = match self.inner.get(&path).await {
            Ok(got) => got.bytes().await,
            Err(e) => Err(e),
        };
        let bytes = match bytes {
            Ok(bytes) => bytes,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => {
                return Err(BundleError::ObjectStore {
                    path: display,
                    source,
                });
            }
        };
        let version = std::str::from_utf8(&bytes)
            .map_err(|_| BundleError::format(&display, format!("{pointer} is not UTF-8")))?
            .trim();
        validate_version(version).map_err(|e| BundleError::format(&display, e.to_string()))?;
        Ok(Some(version.to_owned()))
    }

    /// Writes `pointer` once `version` is complete (has its manifest).
    async fn write_pointer(
        &self,
        name: &str,
        pointer: &'static str,
        version: &str,
    ) -> Result<(), BundleError> {
        validate_model_name(name)?;
        validate_version(version)?;
        let (path, display) = self.locate(&["models", name, version, MANIFEST_FILE]);
        self.inner.head(&path).await.map_err(|e| {
            BundleError::from_store(display, format!("version {version} of model {name}"), e)
        })?;
        self.put(&["models", name, pointer], Bytes::from(version.to_owned()))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_parse_and_print() {
        assert_eq!("latest".parse(), Ok(Pointer::Latest));
        assert_eq!("CANARY".parse(), Ok(Pointer::Canary));
        let err = "stable".parse::<Pointer>().unwrap_err();
        assert!(err.contains("expected latest or canary"), "{err}");
        assert_eq!(Pointer::Canary.to_string(), "CANARY");
        assert_eq!(
            serde_json::to_string(&Pointer::Latest).unwrap(),
            "\"latest\""
        );
    }

    #[test]
    fn gates_written_before_canaries_still_read() {
        let arm = serde_json::json!({ "strategy": "gru", "recall": 0.5, "mrr": 0.25 });
        let mut old = serde_json::json!({
            "published": true, "reason": "r", "serving_version": null, "warm_start_from": null,
            "k": 20, "margin": 0.01, "sessions": 1, "predictions": 2, "candidate": arm,
            "serving": null,
        });
        let gate: crate::bundle::Gate = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(gate.published_as, None);
        old["published_as"] = "canary".into();
        let gate: crate::bundle::Gate = serde_json::from_value(old).unwrap();
        assert_eq!(gate.published_as, Some(Pointer::Canary));
    }
}
