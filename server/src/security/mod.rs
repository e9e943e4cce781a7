//! Transport security and access control: TLS (and mutual TLS) on both listeners, bearer tokens
//! with roles, and their reload without a restart (SIGHUP, file changes, or [`Security::reload`]).
//!
//! Reloading swaps what new connections and calls see; established TLS connections keep the
//! session they negotiated, so nothing in flight is dropped. A reload that finds a broken file keeps
//! the previous configuration of that part and reports the error (a typo must not open the server
//! or take it down).

pub mod auth;
pub mod tls;
pub mod tokens;

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;

use crate::metrics::Metrics;
pub use auth::{Access, AuthError, Policy};
pub use tls::{TlsConfigs, TlsFiles};
pub use tokens::{Principal, Role, TokenTable};

/// The security settings of `lambdarec serve` (all off by default: plaintext, no tokens).
#[derive(Clone, Debug, Default)]
pub struct SecurityConfig {
    /// TLS on the gRPC and HTTP listeners; None: plaintext.
    pub tls: Option<TlsFiles>,
    /// The tokens file; None: every call is allowed (the behaviour before tokens).
    pub auth_tokens: Option<PathBuf>,
    /// Which optional endpoints also need a token.
    pub policy: Policy,
    /// How often the files are checked for changes (reloaded when changed); None: only on SIGHUP or
    /// [`Security::reload`].
    pub watch_interval: Option<Duration>,
}

/// Why the security configuration could not be loaded. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("cannot read the {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} {path} is not valid PEM: {source}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the {what} {path} holds no {expected}")]
    NoPemItem {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("TLS: {context}: {source}")]
    Rustls {
        context: String,
        #[source]
        source: rustls::Error,
    },
    #[error("the client CA file {path} cannot verify client certificates: {source}")]
    ClientCa {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("the tokens file {path}, line {line}: {reason}")]
    Tokens {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("--auth-health, --auth-reflection and --auth-metrics need --auth-tokens")]
    PolicyWithoutTokens,
}

/// The live security state, shared by the listeners, the auth layer and the reloaders.
pub struct Security {
    config: SecurityConfig,
    tls: RwLock<Option<TlsConfigs>>,
    tokens: RwLock<Option<Arc<TokenTable>>>,
    metrics: Arc<Metrics>,
}

impl Security {
    /// Loads every configured file; any error is fatal at start-up.
    pub fn load(config: SecurityConfig, metrics: Arc<Metrics>) -> Result<Self, SecurityError> {
        let p = config.policy;
        if config.auth_tokens.is_none() && (p.health || p.reflection || p.metrics) {
            return Err(SecurityError::PolicyWithoutTokens);
        }
        let tls = config.tls.as_ref().map(tls::load).transpose()?;
        let tokens = config
            .auth_tokens
            .as_deref()
            .map(TokenTable::load)
            .transpose()?
            .map(Arc::new);
        Ok(Security {
            config,
            tls: RwLock::new(tls),
            tokens: RwLock::new(tokens),
            metrics,
        })
    }

    pub fn config(&self) -> &SecurityConfig {
        &self.config
    }

    pub fn policy(&self) -> Policy {
        self.config.policy
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The token table calls are checked against (None: no tokens configured).
    pub fn tokens(&self) -> Option<Arc<TokenTable>> {
        self.tokens
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The TLS configurations new connections handshake with (None: plaintext).
    pub fn tls(&self) -> Option<TlsConfigs> {
        self.tls
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the files again and swaps in what loads; a part whose files fail keeps its previous
    /// configuration, and the errors are returned (and counted in `lambdarec_security_reloads`).
    pub fn reload(&self) -> Result<(), Vec<SecurityError>> {
        let mut errors = Vec::new();
        if let Some(files) = &self.config.tls {
            match tls::load(files) {
                Ok(configs) => {
                    *self.tls.write().unwrap_or_else(PoisonError::into_inner) = Some(configs);
                    self.metrics.security.reload("tls", true);
                }
                Err(e) => {
                    self.metrics.security.reload("tls", false);
                    errors.push(e);
                }
            }
        }
        if let Some(path) = &self.config.auth_tokens {
            match TokenTable::load(path) {
                Ok(table) => {
                    *self.tokens.write().unwrap_or_else(PoisonError::into_inner) =
                        Some(Arc::new(table));
                    self.metrics.security.reload("tokens", true);
                }
                Err(e) => {
                    self.metrics.security.reload("tokens", false);
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// [`Security::reload`], logged: what a signal or a file change triggers.
    pub fn reload_logged(&self, why: &str) {
        match self.reload() {
            Ok(()) => tracing::info!(trigger = why, "TLS and token files reloaded"),
            Err(errors) => {
                for e in errors {
                    tracing::error!(trigger = why, error = %crate::registry::error_chain(&e), "reload failed; the previous configuration stays in force");
                }
            }
        }
    }

    /// Every file the configuration reads.
    fn files(&self) -> Vec<&Path> {
        let mut out = Vec::new();
        if let Some(t) = &self.config.tls {
            out.extend([t.cert.as_path(), t.key.as_path()]);
            out.extend(t.client_ca.as_deref());
        }
        out.extend(self.config.auth_tokens.as_deref());
        out
    }

    /// A fingerprint of the files' metadata (following symlinks, as Kubernetes secret volumes swap
    /// them): any change of size or modification time changes it.
    fn stamp(&self) -> Vec<Option<(SystemTime, u64)>> {
        self.files()
            .into_iter()
            .map(|p| {
                let m = std::fs::metadata(p).ok()?;
                Some((m.modified().ok()?, m.len()))
            })
            .collect()
    }

    /// Polls the files every `watch_interval` and reloads when they change (None when not asked,
    /// or when there are no files).
    pub fn spawn_watcher(self: &Arc<Self>) -> Option<JoinHandle<()>> {
        let every = self.config.watch_interval?;
        if self.files().is_empty() {
            return None;
        }
        let security = self.clone();
        Some(tokio::spawn(async move {
            let mut seen = security.stamp();
            loop {
                tokio::time::sleep(every).await;
                let now = security.stamp();
                if now != seen {
                    seen = now;
                    security.reload_logged("file change");
                }
            }
        }))
    }
}
