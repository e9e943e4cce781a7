//! Model lifecycle and load behaviour of the gRPC server: hot reload under load with zero failed
//! requests, session states surviving a same-size swap, broken bundles leaving the old model serving,
//! LATEST polling, overload shedding, deadlines, and graceful shutdown with an open event stream.

mod server_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lambdarec_kernels::{Backend, CpuBackend, ModelWeights};
use lambdarec_proto::bundle::Store;
use lambdarec_proto::v1::{self, ErrorCode};
use object_store::{ObjectStoreExt, PutPayload, path::Path};
use server_common::{
    MODEL, Offline, assert_close, base, bundle_with, client, config, fresh_store, publish,
    random_weights,
};
use tonic::{Code, Request};

fn recommend(session: &str, inline: Vec<String>) -> v1::RecommendRequest {
    v1::RecommendRequest {
        session_id: session.into(),
        k: 10,
        inline_events: inline,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_fails_no_request_and_keeps_sessions() {
    let b = base();
    let (store, v1) = fresh_store("reload").await;
    let server = lambdarec_server::start(config(&store)).await.unwrap();
    let mut c = client(server.local_addr()).await;
    let keep = &b.sessions[0];
    let keep_ids: Vec<String> = keep.iter().map(|&i| b.ids[i as usize].clone()).collect();
    c.recommend(recommend("keep", keep_ids.clone()))
        .await
        .unwrap();

    // Clients hammer Recommend (with an inline event) and Score while versions change.
    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = Vec::new();
    for t in 0..3 {
        let (mut c, stop, ids) = (c.clone(), stop.clone(), b.ids.clone());
        loops.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut versions) = (0u64, Vec::new(), Vec::<String>::new());
            let session = format!("load-{t}");
            while !stop.load(Ordering::Relaxed) {
                let item = ids[(ok as usize * 7 + t) % ids.len()].clone();
                match c.recommend(recommend(&session, vec![item.clone()])).await {
                    Ok(r) => versions.push(r.into_inner().model_version),
                    Err(e) => failed.push(e),
                }
                let s = v1::ScoreRequest {
                    session_id: session.clone(),
                    candidates: vec![item],
                    ..Default::default()
                };
                match c.score(s).await {
                    Ok(r) => versions.push(r.into_inner().model_version),
                    Err(e) => failed.push(e),
                }
                ok += 1;
            }
            (ok, failed, versions)
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Same GRU, shifted biases: the session's state must carry over to the new weights.
    let mut w2 = b.weights.clone();
    for (i, bias) in w2.item_bias.iter_mut().enumerate() {
        *bias += 0.01 * (i % 13) as f32;
    }
    let v2 = publish(&store, bundle_with(&w2)).await;
    let r = c
        .reload(v1::ReloadRequest { version: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.version.as_str(), r.changed), (v2.as_str(), true));
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        let (rounds, failed, versions) = l.await.unwrap();
        assert!(
            failed.is_empty(),
            "failed requests during reload: {failed:?}"
        );
        assert!(rounds > 5, "the load loop barely ran: {rounds}");
        let first_new = versions
            .iter()
            .position(|v| *v == v2)
            .expect("the new version serves");
        assert!(
            versions[..first_new].iter().all(|v| *v == v1)
                && versions[first_new..].iter().all(|v| *v == v2)
        );
    }
    let mut offline = Offline::new(&w2);
    offline.session(keep);
    let cands: Vec<u32> = (0..10).collect();
    let want = offline.score(&cands);
    let candidates = cands.iter().map(|&i| b.ids[i as usize].clone()).collect();
    let got = c
        .score(v1::ScoreRequest {
            session_id: "keep".into(),
            candidates,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for (g, w) in got.scores.iter().zip(&want) {
        assert_close(
            g.score,
            *w,
            "state kept across the swap, scored with the new weights",
        );
    }
    let again = c
        .reload(v1::ReloadRequest { version: None })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.changed);

    // A corrupted bundle fails to load; the old model keeps serving; the failure is reported.
    let v3 = publish(&store, bundle_with(&w2)).await;
    let s = Store::open(&store).unwrap();
    let path = Path::from(format!("models/{MODEL}/{v3}/weights.safetensors"));
    s.object_store()
        .put(&path, PutPayload::from(vec![0u8; 64]))
        .await
        .unwrap();
    let e = c
        .reload(v1::ReloadRequest { version: None })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let info = c
        .model_info(v1::ModelInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.version, v2);
    assert_eq!(info.failures.len(), 1);
    assert_eq!(info.failures[0].version, v3);
    assert!(
        info.failures[0].error.contains("weights.safetensors"),
        "{:?}",
        info.failures[0]
    );
    c.recommend(recommend("keep", vec![])).await.unwrap();

    // Another hidden size: each session's state is rebuilt from its recent items by the new model.
    let w4 = random_weights(8, 4);
    let v4 = publish(&store, bundle_with(&w4)).await;
    c.reload(v1::ReloadRequest {
        version: Some(v4.clone()),
    })
    .await
    .unwrap();
    let info = c
        .model_info(v1::ModelInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((info.version.as_str(), info.hidden), (v4.as_str(), 8));
    let mut offline = Offline::new(&w4);
    offline.session(&keep[keep.len().saturating_sub(50)..]);
    let want = offline.score(&cands);
    let candidates = cands.iter().map(|&i| b.ids[i as usize].clone()).collect();
    let got = c
        .score(v1::ScoreRequest {
            session_id: "keep".into(),
            candidates,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for (g, w) in got.scores.iter().zip(&want) {
        assert_close(g.score, *w, "state rebuilt after a hidden-size change");
    }
    let info = c
        .get_session(v1::GetSessionRequest {
            session_id: "keep".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.events, keep.len() as u64);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_poller_follows_latest_and_reports_a_broken_version_once() {
    let (store, v1) = fresh_store("poll").await;
    let mut cfg = config(&store);
    cfg.poll_interval = Some(Duration::from_millis(50));
    let server = lambdarec_server::start(cfg).await.unwrap();
    let mut c = client(server.local_addr()).await;
    let version = |c: &mut v1::recommender_client::RecommenderClient<_>| {
        let mut c = c.clone();
        async move {
            c.model_info(v1::ModelInfoRequest {})
                .await
                .unwrap()
                .into_inner()
        }
    };
    assert_eq!(version(&mut c).await.version, v1);
    let v2 = publish(&store, base().bundle.clone()).await;
    let started = Instant::now();
    while version(&mut c).await.version != v2 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the poller did not pick up {v2}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A bundle this server cannot serve (valid files, another model kind) becomes LATEST.
    let mut other = base().bundle.clone();
    other.manifest.model_kind = "sasrec".into();
    let v3 = publish(&store, other).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let info = version(&mut c).await;
    assert_eq!(
        info.version, v2,
        "a broken LATEST leaves the old model serving"
    );
    assert_eq!(
        info.failures.len(),
        1,
        "the poller does not retry a failed version: {:?}",
        info.failures
    );
    assert_eq!(info.failures[0].version, v3);
    assert!(
        info.failures[0].error.contains("sasrec"),
        "{:?}",
        info.failures[0]
    );
    server.shutdown().await.unwrap();
}

/// The CPU backend with an adjustable delay in `top_k`, to hold the batcher busy on purpose.
struct Slow {
    inner: CpuBackend,
    delay_ms: Arc<AtomicU64>,
}

impl Backend for Slow {
    fn device(&self) -> String {
        format!("slow {}", self.inner.device())
    }
    fn upload_model(
        &mut self,
        w: &ModelWeights,
        d: lambdarec_kernels::Dtype,
    ) -> lambdarec_kernels::Result<lambdarec_kernels::ModelId> {
        self.inner.upload_model(w, d)
    }
    fn drop_model(&mut self, m: lambdarec_kernels::ModelId) {
        self.inner.drop_model(m)
    }
    fn alloc_states(&mut self, c: usize, h: usize) -> lambdarec_kernels::Result<()> {
        self.inner.alloc_states(c, h)
    }
    fn states_shape(&self) -> (usize, usize) {
        self.inner.states_shape()
    }
    fn reset_states(&mut self, s: &[u32]) -> lambdarec_kernels::Result<()> {
        self.inner.reset_states(s)
    }
    fn read_state(&mut self, s: u32) -> lambdarec_kernels::Result<Vec<f32>> {
        self.inner.read_state(s)
    }
    fn write_state(&mut self, s: u32, v: &[f32]) -> lambdarec_kernels::Result<()> {
        self.inner.write_state(s, v)
    }
    fn gru_step(
        &mut self,
        m: lambdarec_kernels::ModelId,
        e: &[lambdarec_kernels::Event],
    ) -> lambdarec_kernels::Result<()> {
        self.inner.gru_step(m, e)
    }
    fn score(
        &mut self,
        m: lambdarec_kernels::ModelId,
        q: &[lambdarec_kernels::ScoreQuery<'_>],
    ) -> lambdarec_kernels::Result<Vec<Vec<f32>>> {
        self.inner.score(m, q)
    }
    fn top_k(
        &mut self,
        m: lambdarec_kernels::ModelId,
        q: &[lambdarec_kernels::TopKQuery<'_>],
    ) -> lambdarec_kernels::Result<Vec<Vec<lambdarec_kernels::Scored>>> {
        std::thread::sleep(Duration::from_millis(self.delay_ms.load(Ordering::Relaxed)));
        self.inner.top_k(m, q)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_deadlines_and_graceful_shutdown() {
    let (store, _) = fresh_store("overload").await;
    let mut cfg = config(&store);
    cfg.queue_capacity = 2;
    cfg.max_batch = 1;
    cfg.max_wait = Duration::ZERO;
    cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let delay = Arc::new(AtomicU64::new(0));
    let d = delay.clone();
    let open = move || {
        Ok(Box::new(Slow {
            inner: CpuBackend::new(Some(1)).unwrap(),
            delay_ms: d,
        }) as Box<dyn Backend>)
    };
    let server = lambdarec_server::start_with_backend(cfg, open)
        .await
        .unwrap();
    let c = client(server.local_addr()).await;
    delay.store(300, Ordering::Relaxed);

    // One request occupies the batcher, two fill the queue, the next is shed with a retry hint.
    let spawn_rec = |s: &'static str| {
        let mut c = c.clone();
        tokio::spawn(async move { c.recommend(recommend(s, vec![])).await })
    };
    let busy = spawn_rec("a");
    tokio::time::sleep(Duration::from_millis(60)).await;
    let queued = [spawn_rec("b"), spawn_rec("c")];
    tokio::time::sleep(Duration::from_millis(60)).await;
    let e = c
        .clone()
        .recommend(recommend("d", vec![]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    let retry: u64 = e
        .metadata()
        .get("retry-after-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    // An event on a full queue is acknowledged as OVERLOADED, not applied.
    let item = base().ids[0].clone();
    let ev = v1::SessionEvent {
        session_id: "e".into(),
        item_id: item.clone(),
        ..Default::default()
    };
    let mut acks = c
        .clone()
        .stream_events(futures::stream::iter([ev]))
        .await
        .unwrap()
        .into_inner();
    let ack = acks.next().await.unwrap().unwrap();
    assert_eq!((ack.code(), ack.applied), (ErrorCode::Overloaded, false));
    assert!(busy.await.unwrap().is_ok());
    for q in queued {
        assert!(q.await.unwrap().is_ok());
    }

    // A caller whose deadline passes while queued gets DEADLINE_EXCEEDED; the batcher skips its job.
    let busy = spawn_rec("a");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut req = Request::new(recommend("late", vec![]));
    req.set_timeout(Duration::from_millis(100));
    let started = Instant::now();
    let e = c.clone().recommend(req).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(started.elapsed() < Duration::from_millis(250));
    assert!(busy.await.unwrap().is_ok());
    tokio::time::sleep(Duration::from_millis(50)).await;
    delay.store(0, Ordering::Relaxed);
    let metrics = metrics_text(server.metrics_addr().unwrap()).await;
    assert!(
        metrics.contains("lambdarec_dropped_requests_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "lambdarec_requests_total{method=\"Recommend\",code=\"RESOURCE_EXHAUSTED\"} 1"
        )
    );
    assert!(metrics.contains("lambdarec_events_total{code=\"OVERLOADED\"} 1"));

    // Shutdown with an open event stream: the stream is answered and closed, the server stops.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut acks = c
        .clone()
        .stream_events(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(v1::SessionEvent {
        session_id: "open".into(),
        item_id: item,
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(acks.next().await.unwrap().unwrap().applied);
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .expect("shutdown drains")
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), acks.next())
        .await
        .expect("the stream ends");
    assert!(end.is_none_or(|r| r.is_err()));
    drop(tx);
}

async fn metrics_text(addr: std::net::SocketAddr) -> String {
    server_common::http_get(addr, "/metrics").await
}
