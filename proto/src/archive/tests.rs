//! The archive on the in-memory and local-directory stores: writing and listing files by date
//! range, reading them back, checkpoints, and finding an archive from a store's root.

use std::sync::atomic::{AtomicU32, Ordering};

use object_store::ObjectStoreExt;

use super::*;

/// A fresh `memory://` archive per test: the registry is process-global and tests run in parallel.
fn memory_archive() -> Archive {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Archive::in_store(&format!("memory://archive-tests-{n}")).unwrap()
}

fn d(s: &str) -> Date {
    s.parse().unwrap()
}

fn event(position: u64, day: &str, second: i64) -> ArchivedEvent {
    ArchivedEvent {
        position,
        session_id: format!("s{position}"),
        item_id: "i".into(),
        timestamp_ms: d(day).start_unix_ms() + second * 1000,
        received_ms: 0,
        client_seq: None,
        model_version: "v".into(),
    }
}

#[tokio::test]
async fn files_list_by_date_range_in_log_order() {
    let a = memory_archive();
    assert!(a.files(DateRange::ALL).await.unwrap().is_empty());
    let days = ["2024-03-01", "2024-03-02", "2024-03-03"];
    // Two files on the middle day, written out of position order.
    let written = [
        (days[1], vec![event(20, days[1], 5), event(22, days[1], 6)]),
        (days[0], vec![event(3, days[0], 1)]),
        (days[1], vec![event(4, days[1], 1), event(9, days[1], 2)]),
        (days[2], vec![event(30, days[2], 1)]),
    ];
    for (day, events) in &written {
        let f = a.write_file(d(day), events).await.unwrap();
        assert_eq!(f, file_of(d(day), events));
    }
    let names = |files: Vec<ArchiveFile>| -> Vec<(String, u64)> {
        files
            .iter()
            .map(|f| (f.date.to_string(), f.first))
            .collect()
    };
    let all = a.files(DateRange::ALL).await.unwrap();
    assert_eq!(
        names(all.clone()),
        [
            (days[0].into(), 3),
            (days[1].into(), 4),
            (days[1].into(), 20),
            (days[2].into(), 30)
        ]
    );
    assert_eq!(all[2].last, 22);
    let middle = DateRange::new(Some(d(days[1])), Some(d(days[1]))).unwrap();
    assert_eq!(a.files(middle).await.unwrap().len(), 2);
    let from_second = DateRange::new(Some(d(days[1])), None).unwrap();
    assert_eq!(
        a.partitions(from_second).await.unwrap(),
        [d(days[1]), d(days[2])]
    );
    let before = DateRange::new(None, Some(d("2024-02-29"))).unwrap();
    assert!(a.files(before).await.unwrap().is_empty());
    assert_eq!(a.read_events(&all[1]).await.unwrap(), written[2].1);
}

#[tokio::test]
async fn foreign_objects_are_ignored_and_deletes_are_idempotent() {
    let a = memory_archive();
    let f = a
        .write_file(d("2024-01-01"), &[event(7, "2024-01-01", 0)])
        .await
        .unwrap();
    for junk in [
        "date=2024-01-01/_SUCCESS",
        "notes.txt",
        "date=bogus/x.parquet",
    ] {
        a.inner
            .put(&a.path(junk), PutPayload::from_static(b"x"))
            .await
            .unwrap();
    }
    assert_eq!(a.files(DateRange::ALL).await.unwrap(), [f]);
    a.delete_file(&f).await.unwrap();
    a.delete_file(&f).await.unwrap();
    assert!(a.files(DateRange::ALL).await.unwrap().is_empty());
}

#[tokio::test]
async fn checkpoint_round_trips_and_names_a_bad_one() {
    let a = memory_archive();
    assert_eq!(a.read_checkpoint().await.unwrap(), None);
    let c = Checkpoint {
        through: 12_345,
        log: "file:///srv/log".into(),
        updated: crate::bundle::format_rfc3339_ms(0),
    };
    a.write_checkpoint(&c).await.unwrap();
    assert_eq!(a.read_checkpoint().await.unwrap(), Some(c));
    let rel = format!("{META_DIR}/{CHECKPOINT_FILE}");
    let json: serde_json::Value = serde_json::from_slice(
        &a.inner
            .get(&a.path(&rel))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(json["through"], 12_345);
    assert_eq!(json["updated"], "1970-01-01T00:00:00.000Z");
    a.inner
        .put(&a.path(&rel), PutPayload::from_static(b"{\"through\": "))
        .await
        .unwrap();
    let err = a.read_checkpoint().await.unwrap_err().to_string();
    assert!(err.contains("events/_archive/checkpoint.json"), "{err}");
}

#[tokio::test]
async fn find_accepts_the_events_dir_or_the_store_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let a = Archive::in_store(root.to_str().unwrap()).unwrap();
    a.write_file(d("2024-01-01"), &[event(1, "2024-01-01", 0)])
        .await
        .unwrap();
    // The file is on disk where the layout says.
    let f = file_of(d("2024-01-01"), &[event(1, "2024-01-01", 0)]);
    let on_disk = root.join("events").join(f.relative_path());
    assert!(on_disk.is_file(), "{}", on_disk.display());

    let events_url = root.join("events");
    let by_events = Archive::find(events_url.to_str().unwrap()).await.unwrap();
    let by_root = Archive::find(root.to_str().unwrap()).await.unwrap();
    assert_eq!(by_events.url(), by_root.url());
    assert!(
        by_root.url().ends_with("/store/events"),
        "{}",
        by_root.url()
    );
    assert_eq!(by_root.files(DateRange::ALL).await.unwrap().len(), 1);
    let empty = Archive::find(dir.path().join("nothing").to_str().unwrap())
        .await
        .unwrap();
    assert!(empty.partitions(DateRange::ALL).await.unwrap().is_empty());
}
