//! Conversions between `lambdarec.v1` messages and the engine's domain types, both directions, plus
//! the caller's deadline from the `grpc-timeout` header. Defaults the proto documents are applied here.

use std::time::{Duration, Instant};

use lambdarec_proto::v1;
use tonic::metadata::MetadataMap;

use crate::config::Limits;
use crate::engine::{
    EngineError, EventOutcome, EventRequest, ModelView, RecommendRequest, Recommendation,
    ScoreOutcome, ScoreRequest, SessionSnapshot,
};
use crate::registry::{LoadFailure, error_chain};
use crate::status::event_code;
use lambdarec_trainer::blend::Strategy;

// ---- proto → domain ----

/// k must be in 1..=max_k (as recommender.proto documents): 0 (an unset field) and values over the
/// limit are refused rather than silently replaced, so a client bug shows up as an error.
pub fn recommend_request(
    r: v1::RecommendRequest,
    limits: &Limits,
) -> Result<RecommendRequest, EngineError> {
    let k = r.k as usize;
    if k == 0 || k > limits.max_k {
        return Err(EngineError::BadK {
            got: k,
            max: limits.max_k,
        });
    }
    Ok(RecommendRequest {
        session_id: r.session_id,
        k,
        exclude_items: r.exclude_items,
        exclude_seen: r.exclude_seen.unwrap_or(true),
        inline_events: r.inline_events,
        owner: None,
        strategy: strategy(r.strategy)?,
    })
}

pub fn score_request(r: v1::ScoreRequest) -> Result<ScoreRequest, EngineError> {
    Ok(ScoreRequest {
        session_id: r.session_id,
        candidates: r.candidates,
        strategy: strategy(r.strategy)?,
    })
}

/// A request's strategy (None: unset, the server's default); a value this server does not know is
/// INVALID_ARGUMENT.
fn strategy(v: i32) -> Result<Option<Strategy>, EngineError> {
    Ok(match v1::Strategy::try_from(v) {
        Ok(v1::Strategy::Unspecified) => None,
        Ok(v1::Strategy::Gru) => Some(Strategy::Gru),
        Ok(v1::Strategy::Knn) => Some(Strategy::Knn),
        Ok(v1::Strategy::Trending) => Some(Strategy::Trending),
        Ok(v1::Strategy::Blend) => Some(Strategy::Blend),
        Err(_) => return Err(EngineError::BadStrategy(v)),
    })
}

/// The proto value of a strategy.
pub fn strategy_proto(s: Strategy) -> v1::Strategy {
    match s {
        Strategy::Gru => v1::Strategy::Gru,
        Strategy::Knn => v1::Strategy::Knn,
        Strategy::Trending => v1::Strategy::Trending,
        Strategy::Blend => v1::Strategy::Blend,
    }
}

pub fn event_request(e: v1::SessionEvent) -> EventRequest {
    EventRequest {
        session_id: e.session_id,
        item_id: e.item_id,
        timestamp_ms: e.timestamp_ms,
        client_seq: e.client_seq,
        owner: None,
    }
}

/// The caller's deadline from `grpc-timeout`, a little early: tonic's own timeout layer fires at the
/// exact deadline with CANCELLED, and the caller should see DEADLINE_EXCEEDED from us first.
pub fn deadline(metadata: &MetadataMap) -> Option<Instant> {
    let timeout = parse_grpc_timeout(metadata.get("grpc-timeout")?.to_str().ok()?)?;
    let margin = (timeout / 10).min(Duration::from_millis(5));
    Some(Instant::now() + timeout - margin)
}

/// `grpc-timeout` is 1–8 digits and a unit: H, M, S, m, u or n.
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if !v.is_ascii() {
        return None;
    }
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

// ---- domain → proto ----

pub fn recommend_response(r: Recommendation) -> v1::RecommendResponse {
    let items = r
        .items
        .iter()
        .map(|s| v1::ScoredItem {
            item_id: r.item_id(s.item).to_string(),
            score: s.score,
        })
        .collect();
    v1::RecommendResponse {
        items,
        model_version: r.model.version.to_string(),
        session_events: r.session_events,
    }
}

pub fn score_response(s: ScoreOutcome) -> v1::ScoreResponse {
    let mut scores = Vec::with_capacity(s.scores.len());
    let mut unknown_items = Vec::new();
    let mut known_scores = s.scores.into_iter();
    for (id, item) in s.candidates.into_iter().zip(&s.items) {
        match item {
            Some(_) => scores.push(v1::ScoredItem {
                item_id: id,
                score: known_scores.next().unwrap_or(f32::NAN),
            }),
            None => unknown_items.push(id),
        }
    }
    v1::ScoreResponse {
        scores,
        unknown_items,
        model_version: s.model.version.to_string(),
    }
}

/// The ack of one event, applied or not. `serving` names the model for events rejected before
/// reaching the engine.
pub fn event_ack(
    session_id: String,
    client_seq: Option<u64>,
    outcome: Result<EventOutcome, EngineError>,
    serving: Option<&ModelView>,
) -> v1::EventAck {
    let serving_version = || serving.map(|m| m.version.to_string()).unwrap_or_default();
    let (applied, duplicate, session_events, model_version) = match outcome {
        Ok(o) => (
            o.applied,
            o.duplicate,
            o.session_events,
            o.model_version.to_string(),
        ),
        Err(e) => (Err(e), false, 0, serving_version()),
    };
    let (error, code) = match &applied {
        Ok(()) => (String::new(), v1::ErrorCode::Ok),
        Err(e) => (error_chain(e), event_code(e)),
    };
    v1::EventAck {
        session_id,
        client_seq,
        applied: applied.is_ok(),
        error,
        code: code.into(),
        model_version,
        session_events,
        duplicate,
    }
}

pub fn session_info(session_id: String, s: SessionSnapshot) -> v1::SessionInfo {
    v1::SessionInfo {
        session_id,
        events: s.events,
        recent_items: s.recent,
        last_seen_ms: s.last_seen_ms,
        model_version: s.state_version.map(|v| v.to_string()).unwrap_or_default(),
    }
}

pub fn model_info(
    serving: Option<(&ModelView, &str)>,
    store: &str,
    failures: Vec<LoadFailure>,
    speed: &SpeedInfo,
) -> v1::ModelInfoResponse {
    let failures = failures
        .into_iter()
        .map(|f| v1::LoadFailure {
            version: f.version,
            error: f.error,
            at: f.at,
        })
        .collect();
    let Some((m, loaded_at)) = serving else {
        return v1::ModelInfoResponse {
            store: store.to_string(),
            failures,
            ..Default::default()
        };
    };
    v1::ModelInfoResponse {
        name: m.name.clone(),
        version: m.version.to_string(),
        store: m.store.clone(),
        n_items: m.n_items() as u64,
        hidden: m.hidden as u32,
        dtype: m.dtype.to_string(),
        device: m.device.clone(),
        loaded_at: loaded_at.to_string(),
        manifest_json: m.manifest_json.clone(),
        failures,
        default_strategy: strategy_proto(m.default_strategy).into(),
        gru_weight: m.weights.gru,
        knn_weight: m.weights.knn,
        trend_weight: m.weights.trend,
        knn_sessions: speed.knn_sessions,
        knn_capacity: m.knn.capacity as u64,
        knn_neighbours: m.knn.k as u32,
        knn_sample: m.knn.sample_size as u32,
        trend_half_life_s: m.trend_half_life_s,
        new_items: speed.new_items,
        max_new_items: speed.max_new_items,
        canary: speed.canary.as_ref().map(|c| v1::CanaryInfo {
            version: c.version.to_string(),
            fraction: c.fraction,
            sessions: c.sessions,
            n_items: c.n_items,
            loaded_at: c.loaded_at.clone(),
        }),
        online: speed
            .online
            .iter()
            .map(|(version, strategy, f)| {
                let per = |x: f64, n: u64| if n == 0 { 0.0 } else { x / n as f64 };
                v1::OnlineMetrics {
                    model_version: version.to_string(),
                    strategy: strategy_proto(*strategy).into(),
                    predictions: f.predictions,
                    hits: f.hits,
                    hit_rate: per(f.hits as f64, f.predictions),
                    mrr: per(f.rr_sum, f.predictions),
                    window_predictions: f.window_predictions,
                    window_hit_rate: per(f.window_hits as f64, f.window_predictions),
                    window_mrr: per(f.window_rr_sum, f.window_predictions),
                }
            })
            .collect(),
    }
}

/// The speed layer's live figures, and the online evaluation's, that ModelInfo reports.
#[derive(Clone, Debug, Default)]
pub struct SpeedInfo {
    pub knn_sessions: u64,
    pub new_items: u64,
    /// 0 when new items are rejected.
    pub max_new_items: u64,
    pub online: Vec<(
        std::sync::Arc<str>,
        Strategy,
        crate::engine::online::OnlineFigures,
    )>,
    /// Live sessions the canary serves (0 without one).
    pub canary_sessions: u64,
    /// Filled in by the service, which knows when the canary started.
    pub canary: Option<CanaryInfo>,
}

/// The canary, for ModelInfo.
#[derive(Clone, Debug)]
pub struct CanaryInfo {
    pub version: std::sync::Arc<str>,
    pub fraction: f64,
    pub sessions: u64,
    pub n_items: u64,
    pub loaded_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("10x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("1é"), None);
    }

    #[test]
    fn k_must_be_within_the_limit() {
        let l = Limits::default();
        let req = |k| {
            recommend_request(
                v1::RecommendRequest {
                    k,
                    ..Default::default()
                },
                &l,
            )
        };
        assert_eq!(req(7).unwrap().k, 7);
        assert_eq!(req(1000).unwrap().k, 1000);
        assert!(matches!(
            req(0),
            Err(EngineError::BadK { got: 0, max: 1000 })
        ));
        assert!(matches!(
            req(1001),
            Err(EngineError::BadK { got: 1001, .. })
        ));
        assert!(
            req(20).unwrap().exclude_seen,
            "exclude_seen defaults to true"
        );
    }
}
