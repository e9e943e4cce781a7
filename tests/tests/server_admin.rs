//! The admin surface of the server: health (NOT_SERVING until a model loads, on gRPC and on HTTP
//! `/healthz`), ModelInfo and load failures, server reflection, and the Prometheus metrics endpoint.

mod server_common;

use futures::StreamExt;
use lambdarec_proto::v1;
use server_common::{base, client, config, http_get};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_metrics() {
    // An empty store: the server starts, NOT_SERVING, until a model is published and reloaded.
    let store = format!("memory://server-health-{}", std::process::id());
    let mut cfg = config(&store);
    cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let server = lambdarec_server::start(cfg).await.unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    let status = health
        .check(check("lambdarec.v1.Recommender"))
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::NotServing);
    let healthz = http_get(server.metrics_addr().unwrap(), "/healthz").await;
    assert!(healthz.starts_with("HTTP/1.1 503 "), "{healthz}");
    assert!(
        healthz.ends_with("\r\n\r\nNOT_SERVING: no model is loaded yet\n"),
        "{healthz}"
    );
    let mut c = client(server.local_addr()).await;
    let e = c
        .recommend(v1::RecommendRequest {
            session_id: "s".into(),
            k: 20,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let info = c
        .model_info(v1::ModelInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        info.version.is_empty() && info.failures.len() == 1,
        "{info:?}"
    );

    let version = server_common::publish(&store, base().bundle.clone()).await;
    let r = c
        .reload(v1::ReloadRequest { version: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.version.as_str(), r.changed), (version.as_str(), true));
    for service in ["", "lambdarec.v1.Recommender"] {
        assert_eq!(
            health
                .check(check(service))
                .await
                .unwrap()
                .into_inner()
                .status(),
            ServingStatus::Serving
        );
    }
    let healthz = http_get(server.metrics_addr().unwrap(), "/healthz").await;
    assert!(healthz.starts_with("HTTP/1.1 200 OK\r\n"), "{healthz}");
    assert!(healthz.ends_with("\r\n\r\nSERVING\n"), "{healthz}");
    let info = c
        .model_info(v1::ModelInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            info.version.as_str(),
            info.n_items as usize,
            info.hidden,
            info.dtype.as_str()
        ),
        (version.as_str(), base().ids.len(), 24, "f32")
    );
    assert!(
        info.device.starts_with("cpu")
            && info.manifest_json.contains(&version)
            && !info.loaded_at.is_empty()
    );
    c.ping(v1::PingRequest {}).await.unwrap();
    c.recommend(v1::RecommendRequest {
        session_id: "s".into(),
        k: 20,
        ..Default::default()
    })
    .await
    .unwrap();

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(futures::stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"lambdarec.v1.Recommender".to_string()),
        "{names:?}"
    );

    // v1alpha too: Python's grpcio-reflection and older grpcurl/Postman/grpcui speak only it. Listing
    // the services and fetching the file that defines the service must both work.
    {
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::{
            ServerReflectionRequest, server_reflection_request::MessageRequest,
            server_reflection_response::MessageResponse,
        };
        let mut alpha = ServerReflectionClient::new(channel.clone());
        let requests = [
            MessageRequest::ListServices(String::new()),
            MessageRequest::FileContainingSymbol("lambdarec.v1.Recommender".into()),
        ]
        .map(|m| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(m),
        });
        let mut answers = alpha
            .server_reflection_info(futures::stream::iter(requests))
            .await
            .unwrap()
            .into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) =
            answers.next().await.unwrap().unwrap().message_response
        else {
            panic!("v1alpha: expected a service list");
        };
        assert!(
            list.service
                .iter()
                .any(|s| s.name == "lambdarec.v1.Recommender"),
            "{list:?}"
        );
        let Some(MessageResponse::FileDescriptorResponse(files)) =
            answers.next().await.unwrap().unwrap().message_response
        else {
            panic!("v1alpha: expected the file defining the service");
        };
        let file = String::from_utf8_lossy(&files.file_descriptor_proto[0]).to_string();
        assert!(
            file.contains("StreamEvents") && file.contains("Recommend"),
            "{file}"
        );
    }

    let text = http_get(server.metrics_addr().unwrap(), "/metrics").await;
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\n")
            && text.contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
        "{text}"
    );
    for needle in [
        "lambdarec_requests_total{method=\"Recommend\",code=\"OK\"} 1",
        "lambdarec_requests_total{method=\"Recommend\",code=\"UNAVAILABLE\"} 1",
        "lambdarec_request_duration_seconds_count{method=\"Ping\"} 1",
        "lambdarec_batch_size_count",
        "lambdarec_queue_depth 0",
        "lambdarec_model_load_failures_total 1",
        &format!("lambdarec_model_info{{version=\"{version}\"}} 1"),
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    assert!(
        http_get(server.metrics_addr().unwrap(), "/other")
            .await
            .starts_with("HTTP/1.1 404")
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_evicted_by_capacity_and_ttl_and_bf16_tables_serve() {
    let (store, _) = server_common::fresh_store("capacity").await;
    let mut cfg = config(&store);
    cfg.max_sessions = 2;
    cfg.session_ttl = std::time::Duration::from_millis(300);
    cfg.dtype = lambdarec_kernels::Dtype::Bf16;
    cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let server = lambdarec_server::start(cfg).await.unwrap();
    let mut c = client(server.local_addr()).await;
    let info = c
        .model_info(v1::ModelInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.dtype, "bf16");
    let item = base().ids[0].clone();
    let get = |s: &str| v1::GetSessionRequest {
        session_id: s.into(),
    };
    for s in ["a", "b", "c"] {
        let req = v1::RecommendRequest {
            session_id: s.into(),
            k: 20,
            inline_events: vec![item.clone()],
            ..Default::default()
        };
        assert_eq!(c.recommend(req).await.unwrap().into_inner().items.len(), 20);
    }
    // Capacity 2: the least recently used session ("a") made room for "c".
    assert_eq!(
        c.get_session(get("a")).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        c.get_session(get("c")).await.unwrap().into_inner().events,
        1
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        c.get_session(get("b")).await.unwrap_err().code(),
        Code::NotFound,
        "expired by TTL"
    );
    // The batcher publishes its gauges right after each batch: poll briefly rather than race it.
    let needles = [
        "lambdarec_session_evictions_total{cause=\"capacity\"} 1",
        "lambdarec_session_evictions_total{cause=\"ttl\"} 2",
        "lambdarec_live_sessions 0",
    ];
    let started = std::time::Instant::now();
    loop {
        let text = http_get(server.metrics_addr().unwrap(), "/metrics").await;
        if needles.iter().all(|n| text.contains(n)) {
            break;
        }
        assert!(
            started.elapsed().as_secs() < 5,
            "missing {needles:?} in\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.shutdown().await.unwrap();
}
