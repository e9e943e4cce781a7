//! Whether the server serves: a model is loaded, recovery from the event log is done, the event log
//! works, and the server is not stopping. The one place that sets `grpc.health.v1`, so that no part
//! reports SERVING while another still has a reason not to.

use std::sync::{Mutex, PoisonError};

use lambdarec_proto::v1::recommender_server::SERVICE_NAME;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::info;

#[derive(Debug, Default)]
struct State {
    model: bool,
    recovering: bool,
    log_failed: Option<String>,
    stopping: bool,
}

impl State {
    /// None when serving, else why not.
    fn reason(&self) -> Option<String> {
        if self.stopping {
            Some("the server is shutting down".into())
        } else if let Some(why) = &self.log_failed {
            Some(format!("the event log failed: {why}"))
        } else if !self.model {
            Some("no model is loaded yet".into())
        } else if self.recovering {
            Some("recovering sessions from the event log".into())
        } else {
            None
        }
    }
}

pub struct Readiness {
    health: HealthReporter,
    state: Mutex<State>,
}

impl Readiness {
    /// Starts NOT_SERVING; `recovering` when the server has an event log to recover from first.
    pub async fn new(health: HealthReporter, recovering: bool) -> Self {
        let r = Readiness {
            health,
            state: Mutex::new(State {
                recovering,
                ..State::default()
            }),
        };
        r.publish().await;
        r
    }

    /// None when the server serves, else the reason it does not.
    pub fn not_serving_reason(&self) -> Option<String> {
        self.lock().reason()
    }

    pub async fn model_loaded(&self) {
        self.lock().model = true;
        self.publish().await;
    }

    pub async fn recovered(&self) {
        self.lock().recovering = false;
        self.publish().await;
    }

    pub async fn log_failed(&self, reason: String) {
        self.lock().log_failed.get_or_insert(reason);
        self.publish().await;
    }

    pub async fn stopping(&self) {
        self.lock().stopping = true;
        self.publish().await;
    }

    async fn publish(&self) {
        let reason = self.not_serving_reason();
        let status = match &reason {
            None => ServingStatus::Serving,
            Some(_) => ServingStatus::NotServing,
        };
        for service in ["", SERVICE_NAME] {
            self.health.set_service_status(service, status).await;
        }
        match reason {
            None => info!("health: SERVING"),
            Some(why) => info!(%why, "health: NOT_SERVING"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
