//! One event-log record (protobuf `LogRecord`), as the embedded log, JetStream and replay decode
//! it: a record that decodes must encode and decode back to itself.
#![no_main]

use lambdarec_eventlog::{decode, encode};
use lambdarec_proto::archive::ArchivedEvent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = decode(1, data) {
        let again = decode(2, &encode(&record)).expect("a decoded record re-encodes");
        assert_eq!(again, record);
        let _ = ArchivedEvent::from_record(1, record);
    }
});
