//! One data file of the event archive (Parquet written by `lambdarec archive`, read back by the
//! archiver's checks and the trainer): decoded as the archive does, then read by the trainer from a
//! store holding it.
#![no_main]

use bytes::Bytes;
use lambdarec_proto::archive::{
    Archive, ArchiveFile, Date, DateRange, ITEM_ID, SESSION_ID, TIMESTAMP_MS, decode, rows,
};
use lambdarec_trainer::data::{ArchiveSource, read_archive};
use libfuzzer_sys::fuzz_target;

const URL: &str = "memory://fuzz-archive";

fuzz_target!(|data: &[u8]| {
    lambdarec_fuzz::let_parquet_panics_unwind();
    let Some((&flags, parquet)) = data.split_first() else {
        return;
    };
    let bytes = Bytes::copy_from_slice(parquet);
    if let Ok(batches) = decode(bytes.clone(), None, "fuzz") {
        let _ = rows(&batches, "fuzz");
    }
    let _ = decode(
        bytes.clone(),
        Some(&[SESSION_ID, ITEM_ID, TIMESTAMP_MS]),
        "fuzz",
    );

    // The trainer's reader over an archive holding just this file (the same path every time, so
    // the in-memory store does not grow).
    lambdarec_fuzz::runtime().block_on(async {
        let archive = Archive::open(URL).expect("a memory archive");
        let file = ArchiveFile {
            date: Date::from_unix_ms(1_700_000_000_000),
            first: 1,
            last: 1,
        };
        archive
            .put_file(&file, bytes)
            .await
            .expect("put into memory");
        let source = ArchiveSource {
            url: URL.to_string(),
            range: DateRange::ALL,
        };
        let _ = read_archive(&source, flags & 1 != 0).await;
    });
});
