//! Interaction logs as delimited text: header and delimiter detection, quoting, time formats, the
//! bad-line policy, sessionising; then preparation (filters, time split) of what was read.
#![no_main]

use lambdarec_trainer::data::{PrepareOptions, prepare, read_log};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, text)) = data.split_first() else {
        return;
    };
    let file = lambdarec_fuzz::input_file(".tsv", text);
    if let Ok(log) = read_log(file.path(), &lambdarec_fuzz::read_options(flags)) {
        let _ = prepare(&log, None, &PrepareOptions::default());
    }
});
