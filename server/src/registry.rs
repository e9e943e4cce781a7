//! The model registry: loads bundles from the store exactly as the evaluator does
//! (`trainer::pipeline::load_model`, checksums verified by the store), hands them to the engine to be
//! warmed up and swapped in, watches LATEST (and, with `--canary-fraction`, CANARY), and remembers
//! recent failures for ModelInfo.
//!
//! Canary rollout follows the store's two pointers: the version CANARY names is served to the
//! configured share of new sessions beside LATEST's; when LATEST becomes the canary's version
//! (`lambdarec models promote`, or a `Reload` naming it) the canary is promoted and serves every
//! session; when CANARY goes away (`lambdarec models rollback` or `models canary --stop`) its sessions
//! return to LATEST's version. CANARY naming LATEST's version counts as promoted (a promote that
//! crashed between moving LATEST and removing CANARY).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lambdarec_kernels::Dtype;
use lambdarec_proto::bundle::{BundleError, Pointer, Store, format_rfc3339_ms, now_unix_ms};
use lambdarec_trainer::TrainError;
use lambdarec_trainer::blend::{SpeedLayer, Strategy};
use lambdarec_trainer::pipeline::{LoadedModel, load_model, served_speed_layer};
use tokio::task::JoinHandle;
use tracing::{error, info};

use crate::config::SpeedConfig;
use crate::engine::{Engine, EngineError, ModelView};
use crate::metrics::Metrics;
use crate::readiness::Readiness;

/// Why a bundle could not be served. The old model keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("model {model:?} has no LATEST in {store}")]
    NoLatest { model: String, store: String },
    #[error("cannot read LATEST of model {model:?}: {source}")]
    Latest {
        model: String,
        #[source]
        source: BundleError,
    },
    #[error("cannot read CANARY of model {model:?}: {source}")]
    Canary {
        model: String,
        #[source]
        source: BundleError,
    },
    #[error("cannot load version {version} of model {model:?}: {source}")]
    Load {
        model: String,
        version: String,
        #[source]
        source: Box<TrainError>,
    },
    #[error("loading version {version} crashed: {reason}")]
    LoadCrashed { version: String, reason: String },
    #[error("cannot install version {version}: {source}")]
    Install {
        version: String,
        #[source]
        source: EngineError,
    },
}

/// One failed load, as ModelInfo reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadFailure {
    /// Empty when LATEST itself could not be read.
    pub version: String,
    pub error: String,
    /// RFC 3339 UTC.
    pub at: String,
}

#[derive(Clone, Debug)]
pub struct ReloadOutcome {
    pub version: Arc<str>,
    pub changed: bool,
}

#[derive(Default)]
struct State {
    failures: VecDeque<LoadFailure>,
    /// The poller does not retry a version that failed until LATEST moves (Reload still does).
    last_failed: Option<String>,
    /// The same for CANARY.
    last_failed_canary: Option<String>,
    loaded_at: String,
    /// When the canary was started (RFC 3339).
    canary_loaded_at: String,
    /// CANARY was seen without --canary-fraction (said once).
    canary_ignored: Option<String>,
}

pub struct Registry {
    store: String,
    model: String,
    dtype: Dtype,
    failures_kept: usize,
    /// `--canary-fraction`: None serves no canary.
    canary_fraction: Option<f64>,
    engine: Engine,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    /// One load at a time: a Reload during a poll waits for it rather than loading twice.
    reload_lock: tokio::sync::Mutex<()>,
    state: Mutex<State>,
}

impl Registry {
    pub fn new(
        store: String,
        model: String,
        dtype: Dtype,
        failures_kept: usize,
        engine: Engine,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
    ) -> Self {
        Registry {
            store,
            model,
            dtype,
            failures_kept,
            canary_fraction: None,
            engine,
            metrics,
            readiness,
            reload_lock: tokio::sync::Mutex::new(()),
            state: Mutex::new(State::default()),
        }
    }

    /// Serves the version CANARY names to `fraction` of new sessions (see the module docs).
    pub fn with_canary_fraction(mut self, fraction: Option<f64>) -> Self {
        self.canary_fraction = fraction;
        self
    }

    pub fn store_url(&self) -> &str {
        &self.store
    }

    /// The canary version, its share of new sessions and when it started (RFC 3339).
    pub fn canary(&self) -> Option<(Arc<ModelView>, f64, String)> {
        let (view, fraction) = self.engine.canary()?;
        Some((view, fraction, self.lock().canary_loaded_at.clone()))
    }

    /// The serving model and when it was swapped in (RFC 3339).
    pub fn serving(&self) -> Option<(Arc<ModelView>, String)> {
        let view = self.engine.model()?;
        Some((view, self.lock().loaded_at.clone()))
    }

    /// Recent load failures, oldest first.
    pub fn failures(&self) -> Vec<LoadFailure> {
        self.lock().failures.iter().cloned().collect()
    }

    /// Loads `version` (None: the one LATEST names) unless it is already serving.
    pub async fn reload(&self, version: Option<&str>) -> Result<ReloadOutcome, RegistryError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let target = match version {
            Some(v) => v.to_string(),
            None => match self.latest().await {
                Ok(v) => v,
                Err(e) => return Err(self.failed("", e)),
            },
        };
        if let Some(current) = self.engine.model()
            && *current.version == *target
        {
            return Ok(ReloadOutcome {
                version: current.version.clone(),
                changed: false,
            });
        }
        let promote = self
            .engine
            .canary()
            .is_some_and(|(c, _)| *c.version == *target);
        let loaded = if promote {
            match self.engine.end_canary(true).await {
                Ok(Some(view)) => Ok(view),
                // The canary ended meanwhile: load the version like any other.
                Ok(None) => self.load(&target).await,
                Err(source) => Err(RegistryError::Install {
                    version: target.clone(),
                    source,
                }),
            }
        } else {
            self.load(&target).await
        };
        match loaded {
            Ok(view) => {
                {
                    let mut st = self.lock();
                    st.loaded_at = format_rfc3339_ms(now_unix_ms());
                    st.last_failed = None;
                }
                self.metrics.set_model_version(&view.version);
                self.readiness.model_loaded().await;
                info!(
                    model = %view.name, version = %view.version, items = view.n_items(), hidden = view.hidden,
                    device = %view.device, dtype = %view.dtype, store = %view.store, promoted_canary = promote,
                    "serving model"
                );
                Ok(ReloadOutcome {
                    version: view.version.clone(),
                    changed: true,
                })
            }
            Err(e) => Err(self.failed(&target, e)),
        }
    }

    /// Checks LATEST every `every` and loads a new version when it moves.
    pub fn spawn_poller(self: &Arc<Self>, every: Duration) -> JoinHandle<()> {
        let registry = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                registry.poll_once().await;
            }
        })
    }

    async fn poll_once(&self) {
        let latest = match self.latest().await {
            Ok(v) => v,
            Err(e) => {
                self.failed_once(e);
                return;
            }
        };
        let serving = self.engine.model().map(|m| m.version.clone());
        if serving.as_deref() != Some(latest.as_str())
            && self.lock().last_failed.as_deref() != Some(latest.as_str())
        {
            info!(version = %latest, "LATEST moved; loading");
            // A failure is logged and recorded by `reload`.
            let _ = self.reload(Some(&latest)).await;
        }
        let _ = self.sync_canary().await;
    }

    /// Brings the canary in line with CANARY: starts, replaces, promotes or ends it. Returns the
    /// canary version serving afterwards. Without `--canary-fraction` it only says, once per
    /// version, that CANARY is ignored.
    pub async fn sync_canary(&self) -> Result<Option<Arc<str>>, RegistryError> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let want = self
            .canary_pointer()
            .await
            .map_err(|e| self.failed_once(e))?;
        let Some(fraction) = self.canary_fraction else {
            if let Some(v) = &want {
                let mut st = self.lock();
                if st.canary_ignored.as_deref() != Some(v.as_str()) {
                    info!(version = %v, "CANARY names a version, but this server serves no canary without --canary-fraction");
                    st.canary_ignored = Some(v.clone());
                }
            }
            return Ok(None);
        };
        let serving = self.engine.model().map(|m| m.version.clone());
        let running = self.engine.canary().map(|(v, _)| v.version.clone());
        // CANARY naming the serving version: a promotion whose second step (removing CANARY) has
        // not happened.
        let want = want.filter(|v| serving.as_deref() != Some(v.as_str()));
        if want.as_deref() == running.as_deref() {
            return Ok(running);
        }
        let Some(version) = want else {
            let control = self.engine.end_canary(false).await;
            let control = control.map_err(|source| RegistryError::Install {
                version: running.as_deref().unwrap_or_default().to_string(),
                source,
            })?;
            info!(
                canary = running.as_deref().unwrap_or_default(),
                version = control.as_ref().map_or("", |v| &*v.version),
                "CANARY removed: the canary's sessions are served by LATEST's version again"
            );
            return Ok(None);
        };
        if self.lock().last_failed_canary.as_deref() == Some(version.as_str()) {
            return Ok(running);
        }
        match self.load_as(&version, Some(fraction)).await {
            Ok(view) => {
                {
                    let mut st = self.lock();
                    st.canary_loaded_at = format_rfc3339_ms(now_unix_ms());
                    st.last_failed_canary = None;
                }
                info!(
                    canary = %view.version, control = serving.as_deref().unwrap_or_default(),
                    fraction, items = view.n_items(), "serving a canary"
                );
                Ok(Some(view.version.clone()))
            }
            Err(e) => {
                self.lock().last_failed_canary = Some(version.clone());
                Err(self.failed(&version, e))
            }
        }
    }

    /// The version `pointer` names in the store.
    async fn pointer(&self, pointer: Pointer) -> Result<Option<String>, BundleError> {
        Store::open(&self.store)?
            .pointer_version(&self.model, pointer)
            .await
    }

    async fn canary_pointer(&self) -> Result<Option<String>, RegistryError> {
        let canary = self.pointer(Pointer::Canary).await;
        canary.map_err(|source| RegistryError::Canary {
            model: self.model.clone(),
            source,
        })
    }

    async fn latest(&self) -> Result<String, RegistryError> {
        let model = self.model.clone();
        match self.pointer(Pointer::Latest).await {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err(RegistryError::NoLatest {
                model,
                store: self.store.clone(),
            }),
            Err(source) => Err(RegistryError::Latest { model, source }),
        }
    }

    async fn load(&self, version: &str) -> Result<Arc<ModelView>, RegistryError> {
        self.load_as(version, None).await
    }

    /// Loads a version and installs it as the serving model, or (`canary`) as the canary serving
    /// that share of new sessions.
    async fn load_as(
        &self,
        version: &str,
        canary: Option<f64>,
    ) -> Result<Arc<ModelView>, RegistryError> {
        let (store, model, v) = (self.store.clone(), self.model.clone(), version.to_string());
        // Reading and verifying a bundle hashes and decodes every byte of it: run it off the async
        // workers so that serving latency does not suffer during a reload.
        let handle = tokio::runtime::Handle::current();
        let speed_config = self.engine.config().speed.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let loaded = handle
                .block_on(load_model(&store, &model, Some(&v)))
                .map_err(Box::new)?;
            let speed = speed_layer(&loaded, &speed_config);
            Ok((loaded, speed))
        })
        .await
        .map_err(|e| RegistryError::LoadCrashed {
            version: version.to_string(),
            reason: e.to_string(),
        })?
        .map_err(|source| RegistryError::Load {
            model: self.model.clone(),
            version: version.to_string(),
            source,
        })?;
        let (loaded, speed) = loaded;
        let manifest_json =
            serde_json::to_string_pretty(&loaded.bundle.manifest).unwrap_or_default();
        let m = &loaded.bundle.manifest;
        let default_strategy = if m.blend.is_some() {
            Strategy::Blend
        } else {
            Strategy::Gru
        };
        let view = ModelView {
            generation: 0,
            name: m.name.clone(),
            version: Arc::from(m.version.as_str()),
            store: self.store.clone(),
            vocab: loaded.vocab,
            hidden: loaded.weights.hidden,
            dtype: self.dtype,
            device: String::new(),
            manifest_json,
            weights: speed.weights,
            trend_half_life_s: speed.trend.half_life_s(),
            default_strategy,
            knn: *speed.knn.params(),
        };
        let installed = match canary {
            None => self.engine.install(loaded.weights, view, speed).await,
            Some(f) => {
                self.engine
                    .install_canary(loaded.weights, view, speed, f)
                    .await
            }
        };
        installed.map_err(|source| RegistryError::Install {
            version: version.to_string(),
            source,
        })
    }

    /// [`Registry::failed`] for a pointer that could not be read, unless the last failure recorded
    /// is the same (a store that is down fails every poll).
    fn failed_once(&self, e: RegistryError) -> RegistryError {
        let message = error_chain(&e);
        let repeat = self
            .lock()
            .failures
            .back()
            .is_some_and(|f| f.version.is_empty() && f.error == message);
        if repeat { e } else { self.failed("", e) }
    }

    /// Logs, counts and remembers a failure; returns it.
    fn failed(&self, version: &str, e: RegistryError) -> RegistryError {
        let message = error_chain(&e);
        error!(model = %self.model, version, error = %message, "model load failed; the serving model (if any) keeps serving");
        self.metrics.load_failures.inc();
        let mut st = self.lock();
        if !version.is_empty() {
            st.last_failed = Some(version.to_string());
        }
        st.failures.push_back(LoadFailure {
            version: version.to_string(),
            error: message,
            at: format_rfc3339_ms(now_unix_ms()),
        });
        while st.failures.len() > self.failures_kept {
            st.failures.pop_front();
        }
        e
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The error and its causes, skipping causes whose text the message above already includes.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The speed layer a bundle is served with: seeded with its training sessions (sessions.arrow; an
/// empty one for bundles without), with its blend weights and half-life unless the flags override.
fn speed_layer(loaded: &LoadedModel, c: &SpeedConfig) -> SpeedLayer {
    let started = std::time::Instant::now();
    let b = &loaded.bundle;
    let seeds = b
        .sessions
        .as_ref()
        .map(lambdarec_trainer::export::sessions_of)
        .unwrap_or_default();
    let layer = served_speed_layer(
        &seeds,
        loaded.weights.n_items,
        b.manifest.blend.as_ref(),
        c.knn,
        c.trend_half_life.map(|d| d.as_secs_f64()),
    );
    let weights = layer.weights;
    tracing::info!(
        version = %b.manifest.version,
        seed_sessions = seeds.len(),
        knn_sessions = layer.knn.len(),
        knn_neighbours = layer.knn.params().k,
        knn_sample = layer.knn.params().sample_size,
        trending_items = layer.trend.len(),
        gru_weight = weights.gru,
        knn_weight = weights.knn,
        trend_weight = weights.trend,
        trend_half_life_s = layer.trend.half_life_s(),
        ms = started.elapsed().as_millis() as u64,
        "speed layer seeded from the bundle's training sessions"
    );
    layer
}
