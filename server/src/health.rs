//! The server's readiness, one value behind both health surfaces: `grpc.health.v1` (tonic_health's
//! reporter, for the server as a whole and for `lambdarec.v1.Recommender`) and HTTP `GET /healthz`.
//! Whoever changes readiness calls [`Health::set`], which updates both, so they cannot disagree.

use std::sync::Arc;

use lambdarec_proto::v1::recommender_server::SERVICE_NAME;
use tokio::sync::Mutex;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Whether the server answers requests, and why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// A model is loaded and the server answers.
    Serving,
    /// Not answering (yet, or any more); the reason is for operators, e.g. the last load error.
    NotServing(String),
}

/// Shared handle on the readiness (cheap to clone).
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    /// Held while the reporter is updated, so that concurrent changes land in the same order on both
    /// surfaces.
    state: Arc<Mutex<Readiness>>,
}

impl Health {
    /// Starts NOT_SERVING with `reason` on both surfaces.
    pub async fn new(reporter: HealthReporter, reason: &str) -> Self {
        let health = Health {
            reporter,
            state: Arc::new(Mutex::new(Readiness::Serving)),
        };
        health.set(Readiness::NotServing(reason.to_string())).await;
        health
    }

    pub async fn set(&self, readiness: Readiness) {
        let mut state = self.state.lock().await;
        let status = match readiness {
            Readiness::Serving => ServingStatus::Serving,
            Readiness::NotServing(_) => ServingStatus::NotServing,
        };
        for service in ["", SERVICE_NAME] {
            self.reporter.set_service_status(service, status).await;
        }
        *state = readiness;
    }

    pub async fn get(&self) -> Readiness {
        self.state.lock().await.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus as Status;
    use tonic_health::pb::health_server::Health as _;

    async fn grpc_status(service: &tonic_health::server::HealthService, name: &str) -> Status {
        let request = tonic::Request::new(HealthCheckRequest {
            service: name.to_string(),
        });
        service.check(request).await.unwrap().into_inner().status()
    }

    #[tokio::test]
    async fn both_surfaces_follow_set() {
        let reporter = HealthReporter::new();
        let service = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
        let health = Health::new(reporter, "starting").await;
        assert_eq!(health.get().await, Readiness::NotServing("starting".into()));
        for name in ["", SERVICE_NAME] {
            assert_eq!(grpc_status(&service, name).await, Status::NotServing);
        }
        health.set(Readiness::Serving).await;
        assert_eq!(health.get().await, Readiness::Serving);
        for name in ["", SERVICE_NAME] {
            assert_eq!(grpc_status(&service, name).await, Status::Serving);
        }
        health
            .set(Readiness::NotServing("shutting down".into()))
            .await;
        assert_eq!(
            grpc_status(&service, SERVICE_NAME).await,
            Status::NotServing
        );
    }
}
