//! `lambdarec train --follow` as an operator runs it: on an archive of three days, two cycles a
//! second apart print one JSON line each; the first publishes (nothing was serving), the second
//! finds nothing new and skips; `lambdarec models list` then shows the published version as
//! LATEST with its gate verdict, and `rollback` refuses (no earlier version).

use std::process::{Command, Stdio};
use std::time::Duration;

use lambdarec_proto::archive::{Archive, Date};
use lambdarec_trainer::data::synthetic::{SyntheticOptions, archive_days, generate};

fn lambdarec(args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lambdarec"))
        .args(args)
        .env("LAMBDAREC_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            panic!("lambdarec {args:?} did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn follow_publishes_then_skips_and_models_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let store = store.to_str().unwrap();
    // Three days of sessions written to the archive as a server's archiver would.
    let log = generate(&SyntheticOptions {
        n_items: 150,
        n_sessions: 1_500,
        days: 3.0,
        start_time: 1_699_920_000.0,
        seed: 8,
        ..SyntheticOptions::default()
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let archive = Archive::in_store(store).unwrap();
        for day in archive_days(&log) {
            let date = Date::from_unix_ms(day[0].timestamp_ms);
            archive.write_file(date, &day).await.unwrap();
        }
    });

    let events_dir = format!("{store}/events");
    let (code, stdout, stderr) = lambdarec(&[
        "train",
        "--data",
        &events_dir,
        "--store",
        store,
        "--model",
        "shop",
        "--follow",
        "--cycles",
        "2",
        "--every",
        "1s",
        "--epochs",
        "2",
        "--hidden",
        "16",
        "--n-sample",
        "64",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0]["cycle"], 1);
    assert_eq!(lines[0]["decision"], "published", "{}", lines[0]);
    assert_eq!(lines[0]["gate"]["reason"], "no version was serving");
    let version = lines[0]["version"].as_str().unwrap().to_string();
    assert_eq!(lines[1]["decision"], "skipped", "{}", lines[1]);
    assert!(
        lines[1]["reason"].as_str().unwrap().contains(&version),
        "{}",
        lines[1]
    );
    assert!(stderr.contains("continuous training"), "{stderr}");

    let (code, stdout, stderr) =
        lambdarec(&["models", "list", "--store", store, "--model", "shop"]);
    assert_eq!(code, 0, "{stderr}");
    let row = stdout.lines().find(|l| l.contains(&version)).unwrap();
    assert!(row.starts_with('*'), "LATEST is marked: {stdout}");
    assert!(
        row.contains("published: no version was serving"),
        "{stdout}"
    );

    let (code, _, stderr) = lambdarec(&["models", "rollback", "--store", store, "--model", "shop"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("no published version older than LATEST"),
        "{stderr}"
    );
}
