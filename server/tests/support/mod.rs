//! Helpers shared by the tests that run external servers (HAProxy, moto) beside `lambdarec`
//! processes: finding a tool or saying why the test is skipped, child processes that keep their
//! stderr for failure messages and die with the test, and free loopback ports.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

pub fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    l.local_addr().unwrap().port()
}

/// The tool `$VAR` names, else `name` on PATH, if it runs with `probe` (e.g. `-v`; None: not run).
/// Without one the test is skipped, saying why, unless the environment variable `require` is set
/// (CI, which installs the tool), when that is a failure.
pub fn tool(var: &str, name: &str, probe: Option<&str>, require: &str) -> Option<PathBuf> {
    let found = match std::env::var_os(var) {
        Some(p) => Some(PathBuf::from(p)).filter(|p| p.is_file()),
        None => std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join(name))
            .find(|p| p.is_file()),
    };
    let runs = found.filter(|p| {
        probe.is_none_or(|arg| {
            Command::new(p)
                .arg(arg)
                .output()
                .is_ok_and(|o| o.status.success())
        })
    });
    if runs.is_none() {
        let why = format!("no runnable ${var} and no {name} on PATH");
        assert!(
            std::env::var_os(require).is_none(),
            "{name} required ({require} is set): {why}"
        );
        eprintln!("skipped: {name} not available ({why})");
    }
    runs
}

/// A child process whose stderr is kept for failure messages; killed on drop.
pub struct Proc {
    pub child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(mut command: Command) -> Proc {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        Proc { child, log }
    }

    /// The last lines it wrote to stderr.
    pub fn tail(&self) -> String {
        let log = self.log.lock().unwrap();
        log[log.len().saturating_sub(30)..].join("\n")
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the graceful stop, which must succeed.
    pub fn terminate(&mut self) {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = self.child.wait().unwrap();
        assert!(
            status.success(),
            "graceful stop failed: {status}\n{}",
            self.tail()
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}
