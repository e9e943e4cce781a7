//! The gRPC server end to end on a loopback port: answers equal the offline evaluator's, and every
//! bad input gets its status code.

mod server_common;

use std::collections::HashMap;

use futures::StreamExt;
use lambdarec_proto::v1::{self, ErrorCode};
use server_common::{Offline, assert_close, base, client, config, fresh_store};
use tonic::Code;

fn ev(session: &str, item: &str, seq: u64) -> v1::SessionEvent {
    v1::SessionEvent {
        session_id: session.into(),
        item_id: item.into(),
        timestamp_ms: None,
        client_seq: Some(seq),
    }
}

/// Sends `events` on one stream and returns the acks, in order.
async fn stream(
    c: &mut v1::recommender_client::RecommenderClient<tonic::transport::Channel>,
    events: Vec<v1::SessionEvent>,
) -> Vec<v1::EventAck> {
    let n = events.len();
    let acks = c
        .stream_events(futures::stream::iter(events))
        .await
        .unwrap()
        .into_inner();
    let acks: Vec<_> = acks.map(|a| a.unwrap()).collect().await;
    assert_eq!(acks.len(), n, "one ack per event");
    acks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_scores_and_lists_equal_the_offline_model() {
    let b = base();
    let (store, version) = fresh_store("parity").await;
    let server = lambdarec_server::start(config(&store)).await.unwrap();
    let mut c = client(server.local_addr()).await;
    let sessions: Vec<(String, &Vec<u32>)> = b
        .sessions
        .iter()
        .take(24)
        .enumerate()
        .map(|(i, s)| (format!("parity-{i}"), s))
        .collect();

    // Two concurrent streams, each interleaving its sessions' events round-robin.
    let mut streams = Vec::new();
    for half in sessions.chunks(sessions.len() / 2) {
        let mut events = Vec::new();
        let longest = half.iter().map(|(_, s)| s.len()).max().unwrap();
        for pos in 0..longest {
            for (id, items) in half {
                if let Some(&item) = items.get(pos) {
                    events.push(ev(id, &b.ids[item as usize], events.len() as u64));
                }
            }
        }
        let mut c = c.clone();
        streams.push(tokio::spawn(async move {
            (events.clone(), stream(&mut c, events).await)
        }));
    }
    for s in streams {
        let (events, acks) = s.await.unwrap();
        let mut counts: HashMap<String, u64> = HashMap::new();
        for (e, a) in events.iter().zip(&acks) {
            assert!(a.applied, "{a:?}");
            assert_eq!(
                (a.code(), a.client_seq, &a.session_id),
                (ErrorCode::Ok, e.client_seq, &e.session_id)
            );
            let n = counts.entry(e.session_id.clone()).or_default();
            *n += 1;
            assert_eq!(
                a.session_events, *n,
                "acks count the session's events in order"
            );
        }
    }

    let mut offline = Offline::new(&b.weights);
    for (id, items) in &sessions {
        offline.session(items);
        let want = offline.top_k(20);
        let req = v1::RecommendRequest {
            session_id: id.clone(),
            k: 20,
            exclude_seen: Some(false),
            ..Default::default()
        };
        let got = c.recommend(req).await.unwrap().into_inner();
        assert_eq!(got.session_events, items.len() as u64);
        let got_ids: Vec<&str> = got.items.iter().map(|s| s.item_id.as_str()).collect();
        let want_ids: Vec<&str> = want
            .iter()
            .map(|s| b.ids[s.item as usize].as_str())
            .collect();
        assert_eq!(got_ids, want_ids, "top-20 of {id}");
        for (g, w) in got.items.iter().zip(&want) {
            assert_close(g.score, w.score, &format!("{id} item {}", g.item_id));
        }

        // Score: known candidates in request order (a duplicate included), unknown ones reported.
        let cand: Vec<u32> = vec![items[0], want[3].item, 7, items[0]];
        let mut candidates: Vec<String> = cand.iter().map(|&i| b.ids[i as usize].clone()).collect();
        candidates.insert(1, "no-such-item".into());
        let got = c
            .score(v1::ScoreRequest {
                session_id: id.clone(),
                candidates,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.unknown_items, vec!["no-such-item".to_string()]);
        let want = offline.score(&cand);
        assert_eq!(got.scores.len(), cand.len());
        for ((g, w), &i) in got.scores.iter().zip(&want).zip(&cand) {
            assert_eq!(g.item_id, b.ids[i as usize]);
            assert_close(g.score, *w, &format!("score of {} for {id}", g.item_id));
        }

        // exclude_seen (the default) drops the session's recent items.
        let req = v1::RecommendRequest {
            session_id: id.clone(),
            k: 20,
            ..Default::default()
        };
        let got = c.recommend(req).await.unwrap().into_inner();
        assert_eq!(got.items.len(), 20);
        assert!(
            got.items
                .iter()
                .all(|s| !items.iter().any(|&i| b.ids[i as usize] == s.item_id))
        );

        let info = c
            .get_session(v1::GetSessionRequest {
                session_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.events, items.len() as u64);
        let recent: Vec<&str> = items
            .iter()
            .rev()
            .take(50)
            .rev()
            .map(|&i| b.ids[i as usize].as_str())
            .collect();
        assert_eq!(info.recent_items, recent);
        assert_eq!(info.model_version, version);
    }

    // inline_events are applied first (and kept): the same list as streaming them.
    let (_, items) = &sessions[0];
    offline.session(items);
    let want = offline.top_k(10);
    let inline_events = items.iter().map(|&i| b.ids[i as usize].clone()).collect();
    let req = v1::RecommendRequest {
        session_id: "inline".into(),
        k: 10,
        exclude_seen: Some(false),
        inline_events,
        ..Default::default()
    };
    let got = c.recommend(req).await.unwrap().into_inner();
    assert_eq!(got.session_events, items.len() as u64);
    assert_eq!(
        got.items
            .iter()
            .map(|s| s.item_id.clone())
            .collect::<Vec<_>>(),
        want.iter()
            .map(|s| b.ids[s.item as usize].clone())
            .collect::<Vec<_>>()
    );

    // A session with no events scores as the zero state.
    offline.session(&[]);
    let want = offline.top_k(5);
    let got = c
        .recommend(v1::RecommendRequest {
            session_id: "never-seen".into(),
            k: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((got.session_events, got.items.len()), (0, 5));
    assert_eq!(got.items[0].item_id, b.ids[want[0].item as usize]);
    let missing = c
        .get_session(v1::GetSessionRequest {
            session_id: "never-seen".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_its_status_code() {
    let b = base();
    let (store, version) = fresh_store("bad-input").await;
    let server = lambdarec_server::start(config(&store)).await.unwrap();
    let mut c = client(server.local_addr()).await;
    let item = |i: usize| b.ids[i].clone();
    let rec = |s: &str, k: u32| v1::RecommendRequest {
        session_id: s.into(),
        k,
        ..Default::default()
    };
    let code =
        |r: Result<tonic::Response<v1::RecommendResponse>, tonic::Status>| r.unwrap_err().code();

    assert_eq!(code(c.recommend(rec("", 5)).await), Code::InvalidArgument);
    assert_eq!(
        code(c.recommend(rec(&"x".repeat(257), 5)).await),
        Code::InvalidArgument
    );
    assert!(
        c.recommend(rec(&"x".repeat(256), 5)).await.is_ok(),
        "256 bytes is allowed"
    );
    // k must be 1..=1000: 0 (unset) and values over the limit are refused, not replaced.
    assert_eq!(code(c.recommend(rec("s", 0)).await), Code::InvalidArgument);
    assert_eq!(
        code(c.recommend(rec("s", 1001)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        c.recommend(rec("s", 1000))
            .await
            .unwrap()
            .into_inner()
            .items
            .len(),
        b.ids.len().min(1000)
    );

    let too_many = v1::ScoreRequest {
        session_id: "s".into(),
        candidates: vec![item(0); 10_001],
        ..Default::default()
    };
    let e = c.score(too_many).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        c.score(v1::ScoreRequest {
            session_id: "s".into(),
            candidates: vec![item(0); 10_000],
            ..Default::default()
        })
        .await
        .is_ok()
    );
    let e = c
        .score(v1::ScoreRequest {
            session_id: "".into(),
            candidates: vec![item(0)],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // A 20 MB message is over the 4 MiB limit: RESOURCE_EXHAUSTED (the gRPC convention), naming the
    // limit and the flag that raises it, on a unary call and on the event stream.
    let huge = v1::ScoreRequest {
        session_id: "s".into(),
        candidates: vec!["y".repeat(20 << 20)],
        ..Default::default()
    };
    let e = c.score(huge).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("4194304") && e.message().contains("--max-message-bytes"),
        "{e:?}"
    );
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.send(ev("big", &item(0), 1)).await.unwrap();
    tx.send(ev("big", &"z".repeat(20 << 20), 2)).await.unwrap();
    drop(tx);
    let mut acks = c
        .stream_events(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = acks
        .message()
        .await
        .unwrap()
        .expect("the event before is acknowledged");
    assert!(first.applied);
    let e = acks.message().await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");

    // Unknown inline items fail the request and apply nothing.
    let req = v1::RecommendRequest {
        session_id: "inline-bad".into(),
        k: 20,
        inline_events: vec![item(1), "nope".into()],
        ..Default::default()
    };
    let e = c.recommend(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("nope"), "{e:?}");
    let gone = c
        .get_session(v1::GetSessionRequest {
            session_id: "inline-bad".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    // Unknown exclude_items are ignored.
    let req = v1::RecommendRequest {
        session_id: "s".into(),
        k: 20,
        exclude_items: vec!["nope".into(), item(0)],
        ..Default::default()
    };
    assert!(
        c.recommend(req)
            .await
            .unwrap()
            .into_inner()
            .items
            .iter()
            .all(|s| s.item_id != item(0))
    );

    // Events: bad ones are acknowledged as rejected; the stream goes on and the session is untouched.
    let events = vec![
        ev("st", &item(2), 1),
        ev("", &item(2), 2),
        ev("st", "nope", 3),
        ev(&"z".repeat(300), &item(2), 4),
        ev("st", &item(3), 5),
    ];
    let acks = stream(&mut c, events).await;
    let codes: Vec<ErrorCode> = acks.iter().map(|a| a.code()).collect();
    assert_eq!(
        codes,
        [
            ErrorCode::Ok,
            ErrorCode::BadSessionId,
            ErrorCode::UnknownItem,
            ErrorCode::BadSessionId,
            ErrorCode::Ok
        ]
    );
    assert_eq!(
        acks.iter().map(|a| a.session_events).collect::<Vec<_>>(),
        [1, 0, 1, 0, 2]
    );
    assert!(acks[2].error.contains("nope") && !acks[2].applied);
    assert!(acks.iter().all(|a| a.model_version == version), "{acks:?}");
    let info = c
        .get_session(v1::GetSessionRequest {
            session_id: "st".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (info.events, info.recent_items),
        (2, vec![item(2), item(3)])
    );

    let e = c
        .get_session(v1::GetSessionRequest {
            session_id: "".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let d = c
        .delete_session(v1::DeleteSessionRequest {
            session_id: "st".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(d.existed);
    let d = c
        .delete_session(v1::DeleteSessionRequest {
            session_id: "st".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!d.existed, "DeleteSession is idempotent");
    assert_eq!(
        c.get_session(v1::GetSessionRequest {
            session_id: "st".into()
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );

    let e = c
        .reload(v1::ReloadRequest {
            version: Some("../etc".into()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = c
        .reload(v1::ReloadRequest {
            version: Some("20990101T000000000Z".into()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    server.shutdown().await.unwrap();
}
