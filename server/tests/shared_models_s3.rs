//! Shared models on a real S3 API (a local moto server): three `lambdarec serve` processes poll the
//! same `s3://` store, configured from the environment as on a cloud machine (`AWS_ENDPOINT`,
//! `AWS_ALLOW_HTTP`, keys, region). One publish (`lambdarec synthetic` writes a version and moves
//! LATEST) reaches all three: each one's ModelInfo shows the new version within one poll interval
//! (plus the time to load it).
//!
//! It needs `moto_server` ($MOTO_SERVER, else on PATH; `.ci/run` installs moto[server]); without it
//! the test says it is skipped, unless LAMBDAREC_REQUIRE_S3 makes that a failure (CI).

mod support;

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use lambdarec_proto::v1::ModelInfoRequest;
use lambdarec_proto::v1::recommender_client::RecommenderClient;
use support::{Proc, free_port};

const POLL_SECONDS: f64 = 1.0;

/// `$MOTO_SERVER`, else `moto_server` on PATH (`pip install 'moto[server]'`).
fn moto_binary() -> Option<PathBuf> {
    support::tool("MOTO_SERVER", "moto_server", None, "LAMBDAREC_REQUIRE_S3")
}

/// `c` with the environment an S3 client reads on a cloud machine, pointed at the local server.
fn s3_env(mut c: Command, endpoint: &str) -> Command {
    c.env("AWS_ENDPOINT", endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", "lambdarec-test")
        .env("AWS_SECRET_ACCESS_KEY", "lambdarec-test")
        .env("AWS_REGION", "us-east-1");
    c
}

/// Publishes a synthetic model as a new version of `model` and moves LATEST; returns the version.
fn publish(store: &str, endpoint: &str, seed: u64, dir: &std::path::Path) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lambdarec"));
    c.args([
        "synthetic",
        "--items",
        "500",
        "--hidden",
        "16",
        "--sessions",
        "20",
    ])
    .args([
        "--seed",
        &seed.to_string(),
        "--store",
        store,
        "--model",
        "shared",
    ])
    .arg("--log")
    .arg(dir.join(format!("sessions-{seed}.tsv")));
    let out = s3_env(c, endpoint).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "lambdarec synthetic failed:\n{text}");
    // The version is the store's LATEST, read back the way the servers read it.
    let mut c = Command::new(env!("CARGO_BIN_EXE_lambdarec"));
    c.args([
        "models", "list", "--store", store, "--model", "shared", "--json",
    ]);
    let out = s3_env(c, endpoint).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let latest = list
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["latest"].as_bool() == Some(true))
        .unwrap_or_else(|| panic!("no LATEST in {list}"));
    latest["version"].as_str().unwrap().to_string()
}

async fn version_of(addr: SocketAddr) -> Option<String> {
    let mut c = RecommenderClient::connect(format!("http://{addr}"))
        .await
        .ok()?;
    let info = c.model_info(ModelInfoRequest {}).await.ok()?.into_inner();
    Some(info.version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publish_to_s3_reaches_every_replica_within_a_poll_interval() {
    let Some(moto) = moto_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut server = Command::new(&moto);
    server.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    let moto_proc = Proc::spawn(server);
    let until = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        assert!(
            Instant::now() < until,
            "moto_server did not start:\n{}",
            moto_proc.tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The bucket, as an operator would have made it (moto takes unsigned requests).
    let put = format!(
        "PUT /models HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    std::io::Write::write_all(&mut s, put.as_bytes()).unwrap();
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut s, &mut reply).unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "creating the bucket: {reply}"
    );

    let store = "s3://models/prod";
    let first = publish(store, &endpoint, 1, dir.path());
    let mut servers = Vec::new();
    for _ in 0..3 {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let mut c = Command::new(env!("CARGO_BIN_EXE_lambdarec"));
        c.args([
            "serve", "--store", store, "--model", "shared", "--log", "none",
        ])
        .args([
            "--listen",
            &addr.to_string(),
            "--device",
            "cpu",
            "--threads",
            "1",
        ])
        .args(["--poll-interval", &POLL_SECONDS.to_string()]);
        servers.push((addr, Proc::spawn(s3_env(c, &endpoint))));
    }
    for (addr, proc) in &servers {
        let until = Instant::now() + Duration::from_secs(60);
        while version_of(*addr).await.as_deref() != Some(&first) {
            assert!(
                Instant::now() < until,
                "{addr} never served {first}:\n{}",
                proc.tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let second = publish(store, &endpoint, 2, dir.path());
    assert_ne!(first, second);
    let published = Instant::now();
    let mut took = Vec::new();
    for (addr, proc) in &servers {
        let until = published + Duration::from_secs(30);
        while version_of(*addr).await.as_deref() != Some(&second) {
            assert!(
                Instant::now() < until,
                "{addr} never served {second}:\n{}",
                proc.tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        took.push(published.elapsed());
    }
    eprintln!(
        "the new version served by all three after {took:?} (poll interval {POLL_SECONDS} s)"
    );
    // Within one poll interval, plus the load and warm-up of a small model on a busy 2-core machine.
    let slowest = took.iter().max().unwrap();
    assert!(
        *slowest <= Duration::from_secs_f64(POLL_SECONDS) + Duration::from_secs(3),
        "slowest replica took {slowest:?}"
    );
}
