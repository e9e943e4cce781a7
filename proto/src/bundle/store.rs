//! [`Store`]: writes and reads bundles in any `object_store` (local directory, process memory, S3,
//! GCS, Azure), publishing a version only once all its files are in place.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload};

use super::names::{LATEST, candidate_version, validate_file_name};
use super::{
    Bundle, BundleError, FORMAT_VERSION, FileEntry, ITEMS_FILE, MANIFEST_FILE, Manifest,
    OPTIMIZER_FILE, SESSIONS_FILE, Tensor, WEIGHTS_FILE, compare_versions, format_rfc3339_ms,
    format_version_stamp, items, now_unix_ms, sessions, sha256_hex, validate, validate_model_name,
    validate_version, weights,
};

/// How many `-N` suffixes `write_bundle` tries within one millisecond before giving up.
const MAX_VERSION_ATTEMPTS: u32 = 1000;

/// A bundle store: an object store and the path prefix under which `models/` lives.
#[derive(Clone)]
pub struct Store {
    pub(super) inner: Arc<dyn ObjectStore>,
    pub(super) prefix: Path,
    /// Normalised, without a trailing '/'.
    pub(super) url: String,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Wraps an existing object store; `prefix` is where `models/` lives inside it, and
    /// `url_for_display` is what [`Store::url`] and error messages show.
    pub fn from_object_store(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        url_for_display: &str,
    ) -> Store {
        Store {
            inner: store,
            prefix: Path::from(prefix),
            url: url_for_display.trim_end_matches('/').to_owned(),
        }
    }

    /// The store's URL, normalised (local paths become absolute `file://` URLs).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The underlying object store (e.g. for a trainer reading its logs from the same place).
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// The path prefix under which `models/` lives.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// Writes `bundle` as a new version of model `name` and points LATEST at it.
    ///
    /// Fills `manifest.{format_version, name, version, created_unix_ms, created_at, files}`; checks
    /// the bundle against its dims first. The version is the UTC time with milliseconds
    /// (`20261126T101500123Z`), suffixed `-2`, `-3`, ... if that version already exists. Files go
    /// first, then the manifest, then LATEST. Returns the version.
    pub async fn write_bundle(
        &self,
        name: &str,
        bundle: &mut Bundle,
    ) -> Result<String, BundleError> {
        self.write_version(name, bundle, true).await
    }

    /// [`Store::write_bundle`], moving LATEST only when `publish` is true: a version written with
    /// `publish` false is complete and readable by its name, but no server following LATEST loads
    /// it (a continuous-training candidate that failed its gate, kept for inspection).
    pub async fn write_version(
        &self,
        name: &str,
        bundle: &mut Bundle,
        publish: bool,
    ) -> Result<String, BundleError> {
        validate_model_name(name)?;
        let now = now_unix_ms();
        let m = &mut bundle.manifest;
        m.format_version = FORMAT_VERSION;
        m.name = name.to_owned();
        m.created_unix_ms = now;
        m.created_at = format_rfc3339_ms(now);
        let (_, model_display) = self.locate(&["models", name]);
        validate::check_bundle(bundle, &model_display)?;

        // Encoding and hashing run inline: a trainer writes one bundle at the end of a batch job.
        let weights = Bytes::from(weights::encode(
            &bundle.tensors,
            &format!("{model_display}/<new>/{WEIGHTS_FILE}"),
        )?);
        let items = Bytes::from(items::encode(
            &bundle.items,
            &format!("{model_display}/<new>/{ITEMS_FILE}"),
        )?);
        bundle.manifest.files = BTreeMap::from([
            (WEIGHTS_FILE.to_owned(), file_entry(&weights)),
            (ITEMS_FILE.to_owned(), file_entry(&items)),
        ]);
        let sessions = match &bundle.sessions {
            Some(t) => {
                let bytes = Bytes::from(sessions::encode(
                    t,
                    &format!("{model_display}/<new>/{SESSIONS_FILE}"),
                )?);
                bundle
                    .manifest
                    .files
                    .insert(SESSIONS_FILE.to_owned(), file_entry(&bytes));
                Some(bytes)
            }
            None => None,
        };

        let optimizer = match &bundle.optimizer {
            Some(tensors) => {
                let bytes = Bytes::from(weights::encode(
                    tensors,
                    &format!("{model_display}/<new>/{OPTIMIZER_FILE}"),
                )?);
                bundle
                    .manifest
                    .files
                    .insert(OPTIMIZER_FILE.to_owned(), file_entry(&bytes));
                Some(bytes)
            }
            None => None,
        };

        let version = self
            .claim_version(name, &format_version_stamp(now), weights)
            .await?;
        bundle.manifest.version = version.clone();
        self.put(&["models", name, &version, ITEMS_FILE], items)
            .await?;
        if let Some(bytes) = sessions {
            self.put(&["models", name, &version, SESSIONS_FILE], bytes)
                .await?;
        }
        if let Some(bytes) = optimizer {
            self.put(&["models", name, &version, OPTIMIZER_FILE], bytes)
                .await?;
        }
        let (_, manifest_display) = self.locate(&["models", name, &version, MANIFEST_FILE]);
        let manifest =
            serde_json::to_vec_pretty(&bundle.manifest).map_err(|source| BundleError::Json {
                path: manifest_display,
                source,
            })?;
        self.put(&["models", name, &version, MANIFEST_FILE], manifest.into())
            .await?;
        if publish {
            self.put(&["models", name, LATEST], Bytes::from(version.clone()))
                .await?;
        }
        tracing::info!(store = %self.url, model = name, version, publish, "bundle written");
        Ok(version)
    }

    /// Picks the first free version name by creating its weights file with create-if-absent, so
    /// two writers in the same millisecond (even on two machines) cannot share a version.
    pub(super) async fn claim_version(
        &self,
        name: &str,
        stamp: &str,
        weights: Bytes,
    ) -> Result<String, BundleError> {
        for attempt in 1..=MAX_VERSION_ATTEMPTS {
            let version = candidate_version(stamp, attempt);
            let (path, display) = self.locate(&["models", name, &version, WEIGHTS_FILE]);
            let created = self
                .inner
                .put_opts(
                    &path,
                    PutPayload::from(weights.clone()),
                    PutMode::Create.into(),
                )
                .await;
            match created {
                Ok(_) => return Ok(version),
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => {}
                // Stores without conditional writes: check, then write (racy only across writers).
                Err(
                    object_store::Error::NotImplemented { .. }
                    | object_store::Error::NotSupported { .. },
                ) => match self.inner.head(&path).await {
                    Ok(_) => {}
                    Err(object_store::Error::NotFound { .. }) => {
                        self.put(&["models", name, &version, WEIGHTS_FILE], weights)
                            .await?;
                        return Ok(version);
                    }
                    Err(source) => {
                        return Err(BundleError::ObjectStore {
                            path: display,
                            source,
                        });
                    }
                },
                Err(source) => {
                    return Err(BundleError::ObjectStore {
                        path: display,
                        source,
                    });
                }
            }
        }
        Err(BundleError::Format {
            path: self.locate(&["models", name]).1,
            reason: format!("{MAX_VERSION_ATTEMPTS} versions named {stamp}[-N] already exist"),
        })
    }

    /// The complete versions of model `name` (those with a manifest), oldest first. The pointer
    /// files (LATEST, CANARY) are single objects beside the version directories, never listed.
    pub async fn list_versions(&self, name: &str) -> Result<Vec<String>, BundleError> {
        validate_model_name(name)?;
        let (dir, display) = self.locate(&["models", name]);
        let objects: Vec<_> = match self.inner.list(Some(&dir)).try_collect().await {
            Ok(objects) => objects,
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(source) => {
                return Err(BundleError::ObjectStore {
                    path: display,
                    source,
                });
            }
        };
        let mut versions: Vec<String> = objects
            .iter()
            .filter_map(|meta| {
                let mut parts = meta.location.prefix_match(&dir)?;
                let version = parts.next()?;
                let file = parts.next()?;
                (parts.next().is_none() && file.as_ref() == MANIFEST_FILE)
                    .then(|| version.as_ref().to_owned())
            })
            .filter(|v| validate_version(v).is_ok())
            .collect();
        versions.sort_by(|a, b| compare_versions(a, b));
        Ok(versions)
    }

    /// Reads and parses one version's manifest.
    pub async fn read_manifest(&self, name: &str, version: &str) -> Result<Manifest, BundleError> {
        validate_model_name(name)?;
        validate_version(version)?;
        let parts = ["models", name, version, MANIFEST_FILE];
        let bytes = self
            .get(&parts, &format!("version {version} of model {name}"))
            .await?;
        serde_json::from_slice(&bytes).map_err(|source| BundleError::Json {
            path: self.locate(&parts).1,
            source,
        })
    }

    /// Reads a version (`None`: the one LATEST names) and verifies it: format version, the name and
    /// version it claims, every listed file's size and SHA-256, and tensor shapes against the dims.
    pub async fn read_bundle(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Bundle, BundleError> {
        let version = match version {
            Some(v) => v.to_owned(),
            None => self
                .latest_version(name)
                .await?
                .ok_or_else(|| BundleError::NotFound {
                    what: format!("LATEST of model {name}"),
                    path: self.locate(&["models", name, LATEST]).1,
                    source: None,
                })?,
        };
        let manifest = self.read_manifest(name, &version).await?;
        let (_, dir_display) = self.locate(&["models", name, &version]);
        let manifest_display = format!("{dir_display}/{MANIFEST_FILE}");
        if manifest.format_version != FORMAT_VERSION {
            return Err(BundleError::format(
                manifest_display,
                format!(
                    "format_version {} is not supported (this build reads {FORMAT_VERSION})",
                    manifest.format_version
                ),
            ));
        }
        if manifest.name != name || manifest.version != version {
            return Err(BundleError::format(
                manifest_display,
                format!("manifest claims {}/{}", manifest.name, manifest.version),
            ));
        }
        for required in [WEIGHTS_FILE, ITEMS_FILE] {
            if !manifest.files.contains_key(required) {
                return Err(BundleError::format(
                    manifest_display,
                    format!("files does not list {required}"),
                ));
            }
        }

        let version_ref = version.as_str();
        // The optimiser's state is for trainers (`read_optimizer`), not worth a server's fetch.
        let wanted = manifest.files.keys().filter(|f| *f != OPTIMIZER_FILE);
        let fetches = wanted.map(|file| async move {
            validate_file_name(file)?;
            let what = format!("{file} of version {version_ref} of model {name}");
            let bytes = self
                .get(&["models", name, version_ref, file], &what)
                .await?;
            Ok::<_, BundleError>((file.as_str(), bytes))
        });
        let mut contents: HashMap<&str, Bytes> = futures::future::try_join_all(fetches)
            .await?
            .into_iter()
            .collect();
        let weights_bytes = contents.remove(WEIGHTS_FILE).unwrap_or_default();
        let items_bytes = contents.remove(ITEMS_FILE).unwrap_or_default();
        let sessions_bytes = contents.remove(SESSIONS_FILE);
        let extra: Vec<(String, Bytes)> = contents
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();

        // Hashing and decoding hundreds of MB is CPU work: keep it off the async workers.
        let task = tokio::task::spawn_blocking(move || {
            let files = &manifest.files;
            verify(
                &dir_display,
                WEIGHTS_FILE,
                &files[WEIGHTS_FILE],
                &weights_bytes,
            )?;
            verify(&dir_display, ITEMS_FILE, &files[ITEMS_FILE], &items_bytes)?;
            for (file, bytes) in &extra {
                verify(&dir_display, file, &files[file], bytes)?;
            }
            let tensors =
                weights::decode(&weights_bytes, &format!("{dir_display}/{WEIGHTS_FILE}"))?;
            let items = items::decode(items_bytes, &format!("{dir_display}/{ITEMS_FILE}"))?;
            let sessions = match sessions_bytes {
                Some(bytes) => {
                    verify(&dir_display, SESSIONS_FILE, &files[SESSIONS_FILE], &bytes)?;
                    let path = format!("{dir_display}/{SESSIONS_FILE}");
                    Some(sessions::decode(bytes, &path)?)
                }
                None => None,
            };
            let bundle = Bundle {
                manifest,
                tensors,
                items,
                sessions,
                optimizer: None,
            };
            validate::check_bundle(&bundle, &dir_display)?;
            Ok(bundle)
        });
        match task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(BundleError::Io {
                path: self.locate(&["models", name, &version]).1,
                source: std::io::Error::other(e),
            }),
        }
    }

    /// The optimiser state a version was written with (None when it has none), checked against
    /// the size and SHA-256 its manifest lists.
    pub async fn read_optimizer(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<BTreeMap<String, Tensor>>, BundleError> {
        let manifest = self.read_manifest(name, version).await?;
        let Some(entry) = manifest.files.get(OPTIMIZER_FILE) else {
            return Ok(None);
        };
        let what = format!("{OPTIMIZER_FILE} of version {version} of model {name}");
        let bytes = self
            .get(&["models", name, version, OPTIMIZER_FILE], &what)
            .await?;
        let (_, dir_display) = self.locate(&["models", name, version]);
        let entry = entry.clone();
        let task = tokio::task::spawn_blocking(move || {
            verify(&dir_display, OPTIMIZER_FILE, &entry, &bytes)?;
            weights::decode(&bytes, &format!("{dir_display}/{OPTIMIZER_FILE}"))
        });
        match task.await {
            Ok(result) => result.map(Some),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(BundleError::Io {
                path: self.locate(&["models", name, version]).1,
                source: std::io::Error::other(e),
            }),
        }
    }

    /// The object path of `parts` under the prefix, and the URL-like string errors show for it.
    pub(super) fn locate(&self, parts: &[&str]) -> (Path, String) {
        let path = parts
            .iter()
            .fold(self.prefix.clone(), |p, part| p.join(*part));
        (path, format!("{}/{}", self.url, parts.join("/")))
    }

    async fn get(&self, parts: &[&str], what: &str) -> Result<Bytes, BundleError> {
        let (path, display) = self.locate(parts);
        let got = self
            .inner
            .get(&path)
            .await
            .map_err(|e| BundleError::from_store(&display, what, e))?;
        got.bytes()
            .await
            .map_err(|e| BundleError::from_store(display, what, e))
    }

    pub(super) async fn put(&self, parts: &[&str], bytes: Bytes) -> Result<(), BundleError> {
        let (path, display) = self.locate(parts);
        self.inner
            .put(&path, bytes.into())
            .await
            .map(drop)
            .map_err(|source| BundleError::ObjectStore {
                path: display,
                source,
            })
    }
}

fn file_entry(bytes: &[u8]) -> FileEntry {
    FileEntry {
        sha256: sha256_hex(bytes),
        bytes: bytes.len() as u64,
    }
}

/// Size first (cheap, and the clearer message for a truncated upload), then SHA-256.
fn verify(dir: &str, file: &str, expected: &FileEntry, bytes: &[u8]) -> Result<(), BundleError> {
    let path = format!("{dir}/{file}");
    let got_bytes = bytes.len() as u64;
    if got_bytes != expected.bytes {
        return Err(BundleError::Size {
            path,
            expected: expected.bytes,
            got: got_bytes,
        });
    }
    let got = sha256_hex(bytes);
    if !got.eq_ignore_ascii_case(&expected.sha256) {
        return Err(BundleError::Checksum {
            path,
            expected: expected.sha256.clone(),
            got,
        });
    }
    Ok(())
}
