//! `Store::open`: turning a store URL (local path, `file://`, `memory://`, `s3://`, `gs://`, `az://`)
//! into an object store and a prefix.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use url::Url;

use super::{BundleError, Store};

/// `memory://NAME` stores by name, so that two opens of the same URL in one process (a trainer and
/// a server in a test) see the same objects.
static MEMORY_STORES: LazyLock<Mutex<HashMap<String, Arc<InMemory>>>> =
    LazyLock::new(Default::default);

impl Store {
    /// Opens a store from a URL:
    /// - a plain local path (relative or absolute, created if missing) or `file:///abs/path`;
    /// - `memory://NAME[/prefix]`, shared by every open of the same NAME in this process;
    /// - `s3://bucket/prefix`, `gs://bucket/prefix`, `az://container/prefix`, `https://...` (feature
    ///   `cloud`), configured from the environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`).
    pub fn open(url: &str) -> Result<Store, BundleError> {
        Store::open_with(url, false)
    }

    /// As [`Store::open`]; `fsync` makes a local directory store fsync each written file and its
    /// directory before a put returns (the archive needs its files durable before its checkpoint).
    pub(crate) fn open_with(url: &str, fsync: bool) -> Result<Store, BundleError> {
        if url.is_empty() {
            return Err(invalid_url(url, "empty", None));
        }
        match Url::parse(url) {
            // A one-letter scheme is a Windows drive (C:\models), i.e. a local path.
            Ok(parsed) if parsed.scheme().len() > 1 => match parsed.scheme() {
                "file" => {
                    let path = parsed
                        .to_file_path()
                        .map_err(|()| invalid_url(url, "not an absolute local file URL", None))?;
                    Store::open_local(&path, fsync)
                }
                "memory" => Ok(Store::open_memory(&parsed)),
                _ => Store::open_remote(url, &parsed),
            },
            _ => Store::open_local(std::path::Path::new(url), fsync),
        }
    }
    fn open_local(dir: &std::path::Path, fsync: bool) -> Result<Store, BundleError> {
        let io_err = |source| BundleError::Io {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let dir = dir.canonicalize().map_err(io_err)?;
        let url =
            Url::from_file_path(&dir).map_or_else(|()| dir.display().to_string(), String::from);
        let fs = LocalFileSystem::new_with_prefix(&dir)
            .map_err(|source| BundleError::ObjectStore {
                path: url.clone(),
                source,
            })?
            .with_fsync(fsync);
        Ok(Store::from_object_store(Arc::new(fs), "", &url))
    }

    fn open_memory(url: &Url) -> Store {
        let name = url.host_str().unwrap_or_default().to_owned();
        let store = MEMORY_STORES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name)
            .or_default()
            .clone();
        Store::from_object_store(store, url.path(), url.as_str())
    }

    fn open_remote(raw: &str, url: &Url) -> Result<Store, BundleError> {
        // vars_os: std::env::vars panics on a non-UTF-8 variable anywhere in the environment.
        let options = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        let (store, prefix) = object_store::parse_url_opts(url, options)
            .map_err(|e| invalid_url(raw, "cannot open this object store", Some(Box::new(e))))?;
        Ok(Store {
            inner: Arc::from(store),
            prefix,
            url: raw.trim_end_matches('/').to_owned(),
        })
    }
}

fn invalid_url(
    url: &str,
    reason: &str,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
) -> BundleError {
    BundleError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
        source,
    }
}
