//! Interaction logs as Parquet: any schema, encoding and compression the `parquet` crate accepts,
//! through the trainer's column recognition and casts; then preparation of what was read.
#![no_main]

use lambdarec_trainer::data::{PrepareOptions, prepare, read_log};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    lambdarec_fuzz::let_parquet_panics_unwind();
    let Some((&flags, parquet)) = data.split_first() else {
        return;
    };
    let file = lambdarec_fuzz::input_file(".parquet", parquet);
    if let Ok(log) = read_log(file.path(), &lambdarec_fuzz::read_options(flags)) {
        let _ = prepare(&log, None, &PrepareOptions::default());
    }
});
