//! What the fuzz targets share: how an input is cut into parts, scratch files, one runtime, a tiny
//! model, and the checksum repair that lets mutated log segments get past their CRCs.
//!
//! Input framing (the seeds in `seeds/` are written the same way by `tests/tests/fuzz_seeds.rs`):
//! most targets read a first *flags* byte choosing options, then one or more parts separated by
//! [`SEP`]. A separator is unlikely inside real data, and libFuzzer learns it from the seeds.

use std::io::Write;
use std::sync::OnceLock;

use lambdarec_kernels::ModelWeights;
use lambdarec_proto::bundle::Bundle;
use lambdarec_trainer::data::{ItemVocab, ReadOptions};

/// Separates the parts of one input.
pub const SEP: &[u8] = b"\0LRFUZZ\0";

/// Splits `data` on [`SEP`] into at most `max` parts (the last keeps any further separators).
pub fn parts(data: &[u8], max: usize) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while out.len() + 1 < max {
        match rest.windows(SEP.len()).position(|w| w == SEP) {
            Some(at) => {
                out.push(&rest[..at]);
                rest = &rest[at + SEP.len()..];
            }
            None => break,
        }
    }
    out.push(rest);
    out
}

/// For the targets that read Parquet: the readers turn the parquet crate's panics on malformed
/// files into errors (`lambdarec_proto::archive::guard_parquet`), but libFuzzer's panic hook aborts
/// before any unwinding. This hook lets panics raised inside the parquet and arrow crates unwind
/// silently to that guard and hands every other panic to libFuzzer's hook (a crash, as before).
/// Such a panic outside a guard still aborts, without its message, when it reaches libfuzzer-sys.
pub fn let_parquet_panics_unwind() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let libfuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            // The parquet crate's decoders panic in the arrow crates they call too (a definition
            // level run past its buffer panics in arrow-buffer's BitChunks; found in CI).
            if !info.location().is_some_and(|l| {
                let file = l.file();
                file.contains("/parquet-") || file.contains("/arrow-")
            }) {
                libfuzzer_hook(info);
            }
        }));
    });
}

/// One current-thread runtime per process (the targets drive async APIs with `block_on`).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a tokio runtime")
    })
}

/// Writes `bytes` to a new temporary file named `*{suffix}` (deleted when dropped).
pub fn input_file(suffix: &str, bytes: &[u8]) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new()
        .prefix("lambdarec-fuzz-")
        .suffix(suffix)
        .tempfile()
        .expect("a temporary file");
    file.write_all(bytes).expect("write the input");
    file
}

/// The reader options a flags byte selects: bit 0 skips bad lines, bits 1–2 pick the delimiter
/// (detect, tab, comma, semicolon), bits 3–4 a column naming (recognised names, RSC15's, RecBole's
/// user-keyed one, the archive's), bits 5–6 the session gap of user-keyed logs.
pub fn read_options(flags: u8) -> ReadOptions {
    let s = |v: &str| Some(v.to_string());
    let mut opts = ReadOptions {
        skip_bad_lines: flags & 1 != 0,
        delimiter: [None, Some(b'\t'), Some(b','), Some(b';')][usize::from(flags >> 1 & 3)],
        session_gap: [None, Some(0.0), Some(60.0), Some(-1.0)][usize::from(flags >> 5 & 3)],
        ..ReadOptions::default()
    };
    match flags >> 3 & 3 {
        1 => {
            (opts.session_col, opts.item_col, opts.time_col) =
                (s("SessionId"), s("ItemId"), s("Time"))
        }
        2 => {
            (opts.user_col, opts.item_col, opts.time_col) =
                (s("user_id"), s("item_id"), s("timestamp"))
        }
        3 => {
            (opts.session_col, opts.item_col, opts.time_col) =
                (s("session_id"), s("item_id"), s("timestamp_ms"))
        }
        _ => {}
    }
    opts
}

/// Deterministic small weights in [-0.5, 0.5): enough to run every kernel on.
pub fn tiny_weights(n_items: usize, embed_dim: usize, hidden: usize, tied: bool) -> ModelWeights {
    let mut seed = 0x2545_f491_u32;
    let mut values = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    };
    let (n, e, h) = (n_items, embed_dim, hidden);
    ModelWeights {
        n_items: n,
        embed_dim: e,
        hidden: h,
        item_in: (!tied).then(|| values(n * e)),
        w_ih: values(3 * h * e),
        w_hh: values(3 * h * h),
        b_ih: values(3 * h),
        b_hh: values(3 * h),
        item_out: values(n * h),
        item_bias: values(n),
    }
}

/// Item ids `i0`, `i1`, ... with made-up popularity.
pub fn tiny_vocab(n_items: usize) -> ItemVocab {
    let ids = (0..n_items).map(|i| format!("i{i}")).collect();
    let popularity = (0..n_items as u64).map(|i| 100 - i % 100).collect();
    ItemVocab::new(ids, popularity)
}

/// A valid gru4rec bundle of 12 items, hidden 4 (embed 3 untied); the store fills in the rest.
pub fn tiny_bundle() -> Bundle {
    let n = 12;
    lambdarec_trainer::export::bundle_of(
        &tiny_weights(n, 3, 4, false),
        &tiny_vocab(n),
        "fuzz",
        serde_json::json!({}),
        serde_json::json!({}),
    )
}

/// The embedded log's formats, as `eventlog/src/file/frame.rs` defines them (private there).
pub mod segment {
    pub const MAGIC: [u8; 8] = *b"LRECLOG\x01";
    pub const FRAME_MAGIC: [u8; 4] = *b"LRFB";
    pub const FRAME_HEADER_LEN: usize = 28;
}

/// Makes the checksums of the frames in `seg` (a segment file, header included) valid again, so
/// that a mutated length, count or record reaches the checks behind the CRCs. Walks frame by frame
/// while a frame's sync marker is present; with `chain`, also rewrites each frame's base position
/// to continue from `first`. Returns the position after the last frame walked.
pub fn repair_segment(seg: &mut [u8], first: u64, chain: bool) -> u64 {
    use segment::{FRAME_HEADER_LEN, FRAME_MAGIC, MAGIC};
    let mut offset = MAGIC.len();
    let mut next = first;
    while offset + FRAME_HEADER_LEN <= seg.len() && seg[offset..offset + 4] == FRAME_MAGIC {
        let u32_at = |s: &[u8], i: usize| u32::from_le_bytes(s[i..i + 4].try_into().expect("4"));
        let payload_len = u32_at(seg, offset + 8) as usize;
        let count = u32_at(seg, offset + 24);
        if chain {
            seg[offset + 16..offset + 24].copy_from_slice(&next.to_le_bytes());
        }
        let base = u64::from_le_bytes(seg[offset + 16..offset + 24].try_into().expect("8"));
        let payload_at = offset + FRAME_HEADER_LEN;
        let end = payload_at.saturating_add(payload_len);
        if end <= seg.len() {
            let crc = crc32c::crc32c(&seg[payload_at..end]);
            seg[offset + 12..offset + 16].copy_from_slice(&crc.to_le_bytes());
        }
        let crc = crc32c::crc32c(&seg[offset + 8..offset + FRAME_HEADER_LEN]);
        seg[offset + 4..offset + 8].copy_from_slice(&crc.to_le_bytes());
        next = base.wrapping_add(u64::from(count));
        if end > seg.len() {
            break;
        }
        offset = end;
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_split_on_the_separator_up_to_max() {
        let data = [b"a".as_slice(), SEP, b"b", SEP, b"c"].concat();
        assert_eq!(parts(&data, 3), vec![b"a".as_slice(), b"b", b"c"]);
        assert_eq!(
            parts(&data, 2),
            vec![b"a".as_slice(), &data[1 + SEP.len()..]]
        );
        assert_eq!(parts(b"abc", 4), vec![b"abc".as_slice()]);
    }
}
