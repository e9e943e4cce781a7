//! One table of bad inputs to the `lambdarec` binary (train, eval, serve, load, archive and the
//! global flags): bad files, bad flags, bad URLs. Each case must end in time with its exit code (2
//! for a usage error, 1 for a failed run) and a message naming the problem, and must leave the
//! working directory (data files, a store with a corrupt model, damaged log directories) exactly as
//! it was. The RPC half of the table is `tests/tests/bad_inputs.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A case that takes longer than this is a hang.
const TIMEOUT: Duration = Duration::from_secs(60);

struct Case {
    name: &'static str,
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    code: i32,
    /// Must appear in stderr.
    message: &'static str,
    /// Must not appear in stderr (e.g. proof that no training ran before the error).
    absent: Option<&'static str>,
}

const fn case(
    name: &'static str,
    args: &'static [&'static str],
    code: i32,
    message: &'static str,
) -> Case {
    Case {
        name,
        args,
        env: &[],
        code,
        message,
        absent: None,
    }
}

#[rustfmt::skip]
const CASES: &[Case] = &[
    case("train: missing file", &["train", "--data", "missing.tsv", "--store", "st"], 1, "missing.tsv: no such file"),
    case("train: empty file", &["train", "--data", "empty.tsv", "--store", "st"], 1, "no header line (the file is empty)"),
    case("train: no known columns", &["train", "--data", "nocols.tsv", "--store", "st"], 1, "no session or user column found; columns are: foo, bar"),
    case("train: short line", &["train", "--data", "badline.tsv", "--store", "st"], 1, "badline.tsv:3: expected 3 fields, found 2"),
    case("train: header not UTF-8", &["train", "--data", "badutf.tsv", "--store", "st"], 1, "header is not valid UTF-8"),
    case("train: corrupt parquet", &["train", "--data", "bad.parquet", "--store", "st"], 1, "Parquet file too small"),
    case("train: unknown session column", &["train", "--data", "good.tsv", "--store", "st", "--session-col", "Nope"], 1, "session column \"Nope\" is not in the header"),
    case("train: bad delimiter", &["train", "--data", "good.tsv", "--delimiter", "ab"], 2, "delimiter must be tab, comma, semicolon or one ASCII character"),
    case("train: zero half-life", &["train", "--data", "good.tsv", "--store", "st", "--trend-half-life", "0"], 1, "--trend-half-life 0: give a positive number of seconds"),
    case("train: hidden 0", &["train", "--data", "good.tsv", "--store", "st", "--hidden", "0"], 1, "hidden, batch size and epochs must be at least 1"),
    case("train: NaN learning rate", &["train", "--data", "good.tsv", "--store", "st", "--lr", "NaN"], 1, "learning rate must be positive, got NaN"),
    case("train: dropout over 1", &["train", "--data", "good.tsv", "--store", "st", "--dropout-hidden", "1.5"], 1, "dropout-hidden must be in [0, 1), got 1.5"),
    case("train: epochs not a number", &["train", "--data", "good.tsv", "--epochs", "abc"], 2, "invalid value 'abc' for '--epochs"),
    case("train: impossible date", &["train", "--data", "good.tsv", "--since", "2026-13-45"], 2, "month must be 01-12"),
    case("train: unknown flag", &["train", "--data", "good.tsv", "--nope"], 2, "unexpected argument '--nope'"),
    case("train: store URL without a bucket", &["train", "--data", "good.tsv", "--store", "s3://"], 1, "invalid store URL \"s3://\""),
    Case {
        absent: Some("epoch done"),
        ..case("train: model name with a path", &["train", "--data", "good.tsv", "--store", "st", "--model", "../x"], 1, "invalid model name \"../x\"")
    },
    case("train: follow a log file", &["train", "--data", "good.tsv", "--store", "st", "--follow"], 1, "--follow trains on the event archive (<store>/events); good.tsv is a log file"),
    case("train: --every without --follow", &["train", "--data", "good.tsv", "--every", "1h"], 2, "the following required arguments were not provided"),
    case("train: unknown duration unit", &["train", "--data", ".", "--follow", "--every", "3w"], 2, "the unit must be s, m, h or d"),
    case("train: --publish without --follow", &["train", "--data", "good.tsv", "--publish", "canary"], 2, "the following required arguments were not provided"),
    case("train: unknown --publish pointer", &["train", "--data", ".", "--follow", "--publish", "stable"], 2, "unknown pointer \"stable\" (expected latest or canary)"),
    case("train: gate margin over 1", &["train", "--data", ".", "--store", "st", "--follow", "--gate-margin", "2"], 1, "--gate-margin 2: give a fraction in [0, 1)"),
    case("train: zero warm shrink", &["train", "--data", "good.tsv", "--store", "st", "--warm-shrink", "0"], 1, "--warm-shrink 0: give a factor in (0, 1]"),
    case("train: zero holdout fraction", &["train", "--data", "good.tsv", "--store", "st", "--holdout-fraction", "0"], 1, "--holdout-fraction 0: give a fraction in (0, 1]"),
    Case {
        absent: Some("epoch done"),
        ..case("train: warm start from a corrupt version", &["train", "--data", "good.tsv", "--store", "st", "--model", "m", "--warm-start", "latest"], 1, "models/m/v1/manifest.json")
    },
    case("models: list a corrupt version", &["models", "list", "--store", "st", "--model", "m"], 1, "models/m/v1/manifest.json"),
    case("models: promote an unknown version", &["models", "promote", "v9", "--store", "st", "--model", "m"], 1, "not found: version v9 of model m"),
    case("models: roll back a model with no LATEST", &["models", "rollback", "--store", "st", "--model", "nomodel"], 1, "model \"nomodel\" has no LATEST"),
    case("models: canary without a version or --stop", &["models", "canary", "--store", "st", "--model", "m"], 2, "the following required arguments were not provided"),
    case("models: canary with a version and --stop", &["models", "canary", "v1", "--stop", "--store", "st", "--model", "m"], 2, "cannot be used with"),
    case("models: canary of an unknown version", &["models", "canary", "v9", "--store", "st", "--model", "m"], 1, "not found: version v9 of model m"),
    case("models: canary of LATEST's version", &["models", "canary", "v1", "--store", "st", "--model", "m"], 1, "version v1 is LATEST of model \"m\" already"),
    case("models: promote with no canary", &["models", "promote", "--store", "st", "--model", "m"], 1, "model \"m\" has no CANARY"),
    case("eval: missing file", &["eval", "--data", "missing.tsv", "--store", "st", "--model", "m"], 2, "missing.tsv: no such file"),
    case("eval: corrupt manifest", &["eval", "--data", "good.tsv", "--store", "st", "--model", "m"], 1, "models/m/v1/manifest.json"),
    case("eval: version with a path", &["eval", "--data", "good.tsv", "--store", "st", "--model", "m", "--version", "../x"], 1, "invalid version \"../x\""),
    case("eval: unknown model", &["eval", "--data", "good.tsv", "--store", "st", "--model", "nomodel"], 1, "not found: LATEST of model nomodel"),
    case("eval: unknown version", &["eval", "--data", "good.tsv", "--store", "st", "--model", "m", "--version", "v9"], 1, "not found: version v9 of model m"),
    case("serve: bad listen address", &["serve", "--listen", "nope"], 2, "invalid socket address syntax"),
    case("serve: unknown device", &["serve", "--device", "tpu"], 2, "unknown device \"tpu\""),
    case("serve: unknown strategy", &["serve", "--strategy", "magic"], 2, "unknown strategy \"magic\" (expected gru, knn, trending or blend)"),
    case("serve: unknown new-items mode", &["serve", "--new-items", "maybe"], 2, "unknown --new-items \"maybe\" (expected accept or reject)"),
    case("serve: zero half-life", &["serve", "--listen", "127.0.0.1:0", "--device", "cpu", "--store", "st", "--trend-half-life", "0"], 1, "--trend-half-life must be a positive number of seconds, got 0"),
    case("serve: no kNN sessions", &["serve", "--knn-sessions", "0"], 2, "0 is not in 1.."),
    case("serve: no kNN neighbours", &["serve", "--knn-neighbours", "0"], 2, "0 is not in 1.."),
    case("serve: no kNN sample", &["serve", "--knn-sample", "0"], 2, "0 is not in 1.."),
    case("train: no kNN neighbours", &["train", "--knn-neighbours", "0"], 2, "0 is not in 1.."),
    case("serve: corrupt log segment", &["serve", "--listen", "127.0.0.1:0", "--device", "cpu", "--store", "st", "--log", "badlog"], 1, "corrupt log data at byte offset 0: not a lambdarec log segment"),
    case("serve: bad segment name", &["serve", "--listen", "127.0.0.1:0", "--device", "cpu", "--store", "st", "--log", "badname"], 1, "segment file name is not a 20-digit first position"),
    case("serve: unknown log scheme", &["serve", "--listen", "127.0.0.1:0", "--device", "cpu", "--store", "st", "--log", "ftp://x"], 1, "unknown scheme `ftp`"),
    case("serve: canary share of 1", &["serve", "--listen", "127.0.0.1:0", "--device", "cpu", "--store", "st", "--canary-fraction", "1"], 1, "--canary-fraction is the share of new sessions the canary serves: above 0 and below 1 (e.g. 0.1), got 1"),
    case("serve: negative canary share", &["serve", "--listen", "127.0.0.1:0", "--device", "cpu", "--store", "st", "--canary-fraction=-0.1"], 1, "--canary-fraction is the share of new sessions the canary serves: above 0 and below 1 (e.g. 0.1), got -0.1"),
    case("serve: replica on a local log", &["serve", "--listen", "127.0.0.1:0", "--device", "cpu", "--store", "st", "--replica", "--log", "file://./log"], 1, "--replica needs the event log the replicas share: --log nats://HOST:PORT/STREAM, not \"file://./log\""),
    case("serve: negative drain grace", &["serve", "--listen", "127.0.0.1:0", "--device", "cpu", "--store", "st", "--drain-grace=-1"], 1, "--drain-grace must be a non-negative number of seconds, got -1"),
    case("load: too many retries", &["load", "--target", "http://127.0.0.1:1", "--data", "good.tsv", "--retries", "99"], 2, "invalid value '99' for '--retries"),
    case("serve: zero sessions", &["serve", "--listen", "127.0.0.1:0", "--device", "cpu", "--store", "st", "--max-sessions", "0"], 1, "--max-sessions must be at least 1"),
    case("serve: message size not a number", &["serve", "--max-message-bytes", "abc"], 2, "invalid value 'abc' for '--max-message-bytes"),
    case("load: nothing listening", &["load", "--target", "http://127.0.0.1:1", "--data", "good.tsv"], 1, "Connection refused"),
    case("load: malformed target URL", &["load", "--target", "ht!tp://x", "--data", "good.tsv"], 1, "invalid URI"),
    case("load: missing data", &["load", "--target", "http://127.0.0.1:1", "--data", "missing.tsv"], 2, "missing.tsv: no such file"),
    case("load: unknown strategy", &["load", "--target", "http://127.0.0.1:1", "--data", "good.tsv", "--strategy", "best"], 2, "unknown strategy \"best\""),
    case("load: corrupt parquet", &["load", "--target", "http://127.0.0.1:1", "--data", "bad.parquet"], 1, "Parquet file too small"),
    case("archive: unknown log scheme", &["archive", "--log", "ftp://x", "--store", "st", "--once"], 1, "unknown scheme `ftp`"),
    case("archive: corrupt log segment", &["archive", "--log", "badlog", "--store", "st", "--once"], 1, "not a lambdarec log segment"),
    case("archive: missing log directory", &["archive", "--log", "no-such-dir", "--store", "st", "--once"], 1, "no-such-dir"),
    case("archive: zero records per file", &["archive", "--log", "badlog", "--store", "st", "--max-records", "0"], 2, "0 is not in 1.."),
    case("global: unknown log format", &["--log-format", "xml", "train"], 2, "possible values: text, json"),
    case("global: unknown subcommand", &["frobnicate"], 2, "unrecognized subcommand 'frobnicate'"),
    Case {
        env: &[("LAMBDAREC_LOG", "[[bad")],
        ..case("global: bad log filter", &["train", "--data", "good.tsv", "--store", "st"], 1, "LAMBDAREC_LOG=\"[[bad\" is not a valid log filter")
    },
];

#[test]
fn bad_cli_inputs_fail_clearly_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    fixtures(work);
    let mut before = tree(work);
    let mut failures = Vec::new();
    for case in CASES {
        let (code, stderr) = run(work, case);
        let mut fail =
            |what: String| failures.push(format!("{}: {what}; stderr:\n{stderr}", case.name));
        if code != Some(case.code) {
            fail(format!("exit code {code:?}, expected {}", case.code));
        } else if !stderr.contains(case.message) {
            fail(format!("stderr lacks {:?}", case.message));
        } else if let Some(absent) = case.absent.filter(|a| stderr.contains(a)) {
            fail(format!("stderr has {absent:?}"));
        }
        let after = tree(work);
        let changed = changed(&before, &after);
        if !changed.is_empty() {
            failures.push(format!("{}: files changed: {changed:?}", case.name));
        }
        before = after;
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
    assert!(CASES.len() >= 30);
}

/// Runs one case in `work` with a clean environment; its exit code (None if killed) and stderr.
fn run(work: &Path, case: &Case) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lambdarec"))
        .args(case.args)
        .env_clear()
        .envs(case.env.iter().copied())
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lambdarec");
    let stderr = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for lambdarec") {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{}: still running after {TIMEOUT:?}", case.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code(), reader.join().expect("stderr reader"))
}

/// The working directory's fixtures: logs good and bad, a store whose model is corrupt, and log
/// directories as a server leaves them (with their LOCK file) holding damaged segments.
fn fixtures(work: &Path) {
    let write = |name: &str, bytes: &[u8]| {
        let path = work.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    };
    // 200 sessions of 4 events over 10 items, 1000 s apart: enough for a time split and training.
    let mut good = String::from("SessionId\tItemId\tTime\n");
    for s in 0..200 {
        for j in 0..4 {
            good += &format!("{s}\ti{}\t{}\n", (s + j) % 10, 1000 + (s * 4 + j) * 1000);
        }
    }
    write("good.tsv", good.as_bytes());
    write("empty.tsv", b"");
    write("nocols.tsv", b"foo\tbar\n1\t2\n");
    write(
        "badline.tsv",
        b"SessionId\tItemId\tTime\n1\ta\t1000\n1\tb\n",
    );
    write("badutf.tsv", b"\xff\xfe\tx\n1\t2\n");
    write("bad.parquet", b"PAR1 this is not a parquet file PAR1");
    write("st/models/m/LATEST", b"v1");
    write("st/models/m/v1/manifest.json", b"{ not json");
    write("badlog/00000000000000000001.log", b"NOTALOG!and some bytes");
    write("badlog/LOCK", b"");
    write("badname/17.log", b"");
    write("badname/LOCK", b"");
}

/// Every file (with its bytes) and directory (None) under `root`.
fn tree(root: &Path) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if path.is_dir() {
                out.insert(rel, None);
                stack.push(path);
            } else {
                out.insert(rel, Some(std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

fn changed<'a>(
    before: &'a BTreeMap<PathBuf, Option<Vec<u8>>>,
    after: &'a BTreeMap<PathBuf, Option<Vec<u8>>>,
) -> Vec<&'a PathBuf> {
    let mut out: Vec<&PathBuf> = before
        .keys()
        .filter(|k| after.get(*k) != before.get(*k))
        .collect();
    out.extend(after.keys().filter(|k| !before.contains_key(*k)));
    out
}
