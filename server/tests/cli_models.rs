//! `lambdarec models` moving a canary as an operator does, on a local store of three small
//! versions: `canary V` starts it and `list` marks it; a canary on LATEST's version or on a missing
//! version is refused; `promote` without a version promotes the canary and removes CANARY;
//! `rollback` with a canary running stops it and leaves LATEST; `canary --stop` with none running
//! says so and succeeds (exit 0), so that scripts can stop unconditionally.

use std::path::Path;
use std::process::Command;

use lambdarec_proto::bundle::Store;
use lambdarec_trainer::data::ItemVocab;
use lambdarec_trainer::export::bundle_of;
use lambdarec_trainer::model::Gru4Rec;

/// Runs `lambdarec models ARGS --store STORE --model shop`: (exit code, stdout, stderr).
fn models(store: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lambdarec"))
        .arg("models")
        .args(args)
        .args(["--store", store, "--model", "shop"])
        .env_clear()
        .output()
        .expect("run lambdarec");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes three tiny versions of model `shop`; the first is LATEST. Returns their names.
fn three_versions(store: &str) -> [String; 3] {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open(store).unwrap();
        let vocab = ItemVocab::new((0..4).map(|i| format!("i{i}")).collect(), vec![4, 3, 2, 1]);
        let mut out = Vec::new();
        for publish in [true, false, false] {
            let w = Gru4Rec::new(4, 0, 2, out.len() as u64).to_weights();
            let mut b = bundle_of(
                &w,
                &vocab,
                "fp",
                serde_json::json!({}),
                serde_json::json!({}),
            );
            out.push(store.write_version("shop", &mut b, publish).await.unwrap());
            // Versions are named by the millisecond: keep them apart.
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        }
        out.try_into().unwrap()
    })
}

fn pointer(root: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(root.join("models/shop").join(file)).ok()
}

fn row<'a>(listing: &'a str, version: &str) -> &'a str {
    listing
        .lines()
        .find(|l| l.contains(version))
        .unwrap_or_else(|| panic!("{version} not listed:\n{listing}"))
}

#[test]
fn a_canary_starts_is_listed_promoted_and_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let store = root.to_str().unwrap();
    let [v1, v2, v3] = three_versions(store);

    let (code, stdout, stderr) = models(store, &["canary", &v2]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!("CANARY of shop: (none) -> {v2}")),
        "{stdout}"
    );
    assert!(stdout.contains("serve --canary-fraction"), "{stdout}");
    assert_eq!(pointer(root, "CANARY"), Some(v2.clone()));

    let (code, stdout, stderr) = models(store, &["list"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(row(&stdout, &v1).starts_with("* "), "{stdout}");
    assert!(row(&stdout, &v2).starts_with(" ~"), "{stdout}");
    assert!(row(&stdout, &v3).starts_with("  "), "{stdout}");
    let (code, stdout, stderr) = models(store, &["list", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let listed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let flags: Vec<_> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["latest"].as_bool(), v["canary"].as_bool()))
        .collect();
    assert_eq!(
        flags,
        [
            (Some(true), Some(false)),
            (Some(false), Some(true)),
            (Some(false), Some(false))
        ]
    );

    // Refused: LATEST's own version, and a version that is not there (named in the message).
    let (code, _, stderr) = models(store, &["canary", &v1]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("version {v1} is LATEST")),
        "{stderr}"
    );
    let (code, _, stderr) = models(store, &["canary", "20990101T000000000Z"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("not found: version 20990101T000000000Z of model shop"),
        "{stderr}"
    );
    assert_eq!(pointer(root, "CANARY"), Some(v2.clone()));

    // promote without a version: the canary becomes LATEST and CANARY goes.
    let (code, stdout, stderr) = models(store, &["promote"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!("LATEST of shop: {v1} -> {v2}")),
        "{stdout}"
    );
    assert!(stdout.contains("(promoted)"), "{stdout}");
    assert_eq!(pointer(root, "LATEST"), Some(v2.clone()));
    assert_eq!(pointer(root, "CANARY"), None);

    // rollback with a canary running stops the canary; LATEST stays.
    let (code, _, stderr) = models(store, &["canary", &v3]);
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = models(store, &["rollback"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!(
            "CANARY of shop: {v3} -> (none) (canary stopped; LATEST stays {v2})"
        )),
        "{stdout}"
    );
    assert_eq!(pointer(root, "LATEST"), Some(v2.clone()));
    assert_eq!(pointer(root, "CANARY"), None);

    // --stop with no canary running succeeds and says so; with one, it ends it.
    let (code, stdout, stderr) = models(store, &["canary", "--stop"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("has no CANARY: nothing to stop"),
        "{stdout}"
    );
    models(store, &["canary", &v1]);
    let (code, stdout, stderr) = models(store, &["canary", "--stop"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!("CANARY of shop: {v1} -> (none)")),
        "{stdout}"
    );
    assert_eq!(pointer(root, "CANARY"), None);
    assert_eq!(pointer(root, "LATEST"), Some(v2));
}
