//! A session snapshot file (`SnapshotStore::read`). Flags bit 0 appends the CRC-32 the body needs,
//! so that mutations reach the decoder behind the checksum; without it the raw bytes are read.
#![no_main]

use lambdarec_server::engine::snapshot::SnapshotStore;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let mut bytes = body.to_vec();
    if flags & 1 != 0 {
        bytes.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    }
    let file = lambdarec_fuzz::input_file(".bin", &bytes);
    if let Ok(snap) = SnapshotStore::read(file.path()) {
        assert_eq!(snap.sessions.len(), snap.header.sessions);
        assert_eq!(snap.items.len(), snap.header.items);
        for s in &snap.sessions {
            assert_eq!(s.hidden.len(), snap.header.hidden);
            assert!(s.recent.iter().all(|&i| (i as usize) < snap.items.len()));
        }
    }
});
