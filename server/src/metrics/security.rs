//! The metrics of connections, TLS, bearer tokens and the resource limits (`lambdarec_connections`,
//! `_open_calls`, `_tls_handshake_failures_total`, `_auth_failures_total`, `_security_reloads_total`,
//! `_limit_hits_total`), registered into the server's one registry by [`SecurityMetrics::register`].

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The two listeners, for per-listener series (`listener` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Listener {
    /// The gRPC port (`--listen`).
    Grpc = 0,
    /// The HTTP admin endpoint (`--metrics-listen`).
    Http = 1,
}

const LISTENERS: [&str; 2] = ["grpc", "http"];

/// The resource limits, for `lambdarec_limit_hits_total` (the label is the flag's name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Limit {
    /// A call brought its connection's open calls to `--max-concurrent-streams`.
    MaxConcurrentStreams = 0,
    /// An event stream reached `--max-unacked-events` and stopped reading until acks went out.
    MaxUnackedEvents = 1,
    /// An event stream was ended by `--stream-idle-timeout`.
    StreamIdleTimeout = 2,
    /// A session was refused by `--max-sessions-per-token`.
    MaxSessionsPerToken = 3,
}

const LIMITS: [&str; 4] = [
    "max_concurrent_streams",
    "max_unacked_events",
    "stream_idle_timeout",
    "max_sessions_per_token",
];

/// `reason` values of `lambdarec_auth_failures_total` (security::AuthError::reason).
const AUTH_REASONS: [&str; 4] = ["missing", "malformed", "unknown", "forbidden"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    part: &'static str,
    outcome: &'static str,
}

/// Handles on the series (cheap clones of the registered ones).
pub struct SecurityMetrics {
    /// Open connections, indexed by `Listener`.
    connections: [Gauge<u64, AtomicU64>; 2],
    /// TLS handshakes that failed or timed out, indexed by `Listener`.
    tls_handshake_failures: [Counter; 2],
    /// gRPC calls open (a call is open until its response is done; event streams included).
    pub open_calls: Gauge<u64, AtomicU64>,
    /// Indexed by `Limit`.
    limit_hits: [Counter; 4],
    /// Indexed like `AUTH_REASONS`.
    auth_failures: [Counter; 4],
    reloads: Family<ReloadLabels, Counter>,
}

impl SecurityMetrics {
    /// Creates the series (every label value at 0, so dashboards see them before the first event)
    /// and registers them in `r`.
    pub fn register(r: &mut Registry) -> Self {
        let connection_family = Family::<ListenerLabels, Gauge<u64, AtomicU64>>::default();
        r.register(
            "connections",
            "Open client connections, by listener (grpc: --listen; http: --metrics-listen)",
            connection_family.clone(),
        );
        let connections = LISTENERS
            .map(|listener| connection_family.get_or_create_owned(&ListenerLabels { listener }));
        let handshake_family = Family::<ListenerLabels, Counter>::default();
        r.register(
            "tls_handshake_failures",
            "TLS handshakes that failed (bad or missing client certificate, plaintext client, \
             timeout), by listener",
            handshake_family.clone(),
        );
        let tls_handshake_failures = LISTENERS
            .map(|listener| handshake_family.get_or_create_owned(&ListenerLabels { listener }));
        let open_calls = Gauge::<u64, AtomicU64>::default();
        r.register(
            "open_calls",
            "gRPC calls in progress (event streams included)",
            open_calls.clone(),
        );
        let limit_family = Family::<LimitLabels, Counter>::default();
        r.register(
            "limit_hits",
            "Times a resource limit held a client back, by the flag that sets it",
            limit_family.clone(),
        );
        let limit_hits =
            LIMITS.map(|limit| limit_family.get_or_create_owned(&LimitLabels { limit }));
        let auth_family = Family::<ReasonLabels, Counter>::default();
        r.register(
            "auth_failures",
            "Calls refused for their token (missing, malformed, unknown; forbidden: wrong role)",
            auth_family.clone(),
        );
        let auth_failures =
            AUTH_REASONS.map(|reason| auth_family.get_or_create_owned(&ReasonLabels { reason }));
        let reloads = Family::<ReloadLabels, Counter>::default();
        r.register(
            "security_reloads",
            "Reloads of the TLS and token files, by part (tls, tokens) and outcome (ok, error)",
            reloads.clone(),
        );
        for part in ["tls", "tokens"] {
            for outcome in ["ok", "error"] {
                let _ = reloads.get_or_create(&ReloadLabels { part, outcome });
            }
        }
        SecurityMetrics {
            connections,
            tls_handshake_failures,
            open_calls,
            limit_hits,
            auth_failures,
            reloads,
        }
    }

    /// The open-connections gauge of a listener.
    pub fn connections(&self, listener: Listener) -> &Gauge<u64, AtomicU64> {
        &self.connections[listener as usize]
    }

    pub fn tls_handshake_failure(&self, listener: Listener) {
        self.tls_handshake_failures[listener as usize].inc();
    }

    pub fn limit_hit(&self, limit: Limit) {
        self.limit_hits[limit as usize].inc();
    }

    /// A call refused for its token; `reason` is one of `AUTH_REASONS`.
    pub fn auth_failure(&self, reason: &'static str) {
        let i = AUTH_REASONS.iter().position(|&r| r == reason).unwrap_or(0);
        self.auth_failures[i].inc();
    }

    /// One reload of the TLS or token files.
    pub fn reload(&self, part: &'static str, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.reloads
            .get_or_create(&ReloadLabels { part, outcome })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::security::AuthError;

    #[test]
    fn every_series_is_exposed_from_the_start_and_counts_where_it_says() {
        let m = Metrics::default();
        m.security.limit_hit(Limit::StreamIdleTimeout);
        m.security.auth_failure("forbidden");
        m.security.reload("tls", false);
        m.security.connections(Listener::Http).inc();
        let text = m.render();
        for line in [
            "lambdarec_limit_hits_total{limit=\"stream_idle_timeout\"} 1",
            "lambdarec_limit_hits_total{limit=\"max_sessions_per_token\"} 0",
            "lambdarec_auth_failures_total{reason=\"forbidden\"} 1",
            "lambdarec_auth_failures_total{reason=\"missing\"} 0",
            "lambdarec_security_reloads_total{part=\"tls\",outcome=\"error\"} 1",
            "lambdarec_security_reloads_total{part=\"tokens\",outcome=\"ok\"} 0",
            "lambdarec_connections{listener=\"http\"} 1",
            "lambdarec_tls_handshake_failures_total{listener=\"grpc\"} 0",
            "lambdarec_open_calls 0",
        ] {
            assert!(text.contains(&format!("{line}\n")), "{line}: {text}");
        }
    }

    #[test]
    fn every_auth_error_has_its_own_reason_label() {
        let errors = [
            AuthError::Missing { call: "x".into() },
            AuthError::Malformed,
            AuthError::Unknown,
            AuthError::Forbidden {
                name: "n".into(),
                role: crate::security::Role::Client,
                call: "x".into(),
                needed: "admin".into(),
            },
        ];
        let reasons: Vec<&str> = errors.iter().map(AuthError::reason).collect();
        assert_eq!(reasons, AUTH_REASONS);
    }
}
