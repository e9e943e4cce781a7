//! Tests of `read_log` over every supported format, on small fixtures written to temp dirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::{ColumnChunkMetaData, ColumnChunkMetaDataBuilder};

use super::{DataError, RawLog, ReadOptions, read_log};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The log as (session key, item id, time) triples in the log's event order.
fn triples(log: &RawLog) -> Vec<(String, String, f64)> {
    log.events
        .iter()
        .map(|e| {
            (
                log.sessions[e.session as usize].clone(),
                log.items[e.item as usize].clone(),
                e.time,
            )
        })
        .collect()
}

fn t(s: &str, i: &str, time: f64) -> (String, String, f64) {
    (s.to_string(), i.to_string(), time)
}

fn read(dir: &Path, name: &str, text: &str) -> Result<RawLog, DataError> {
    read_log(&write(dir, name, text), &ReadOptions::default())
}

#[test]
fn tab_separated_sorted_by_time_within_session() {
    let dir = tempfile::tempdir().unwrap();
    let log = read(
        dir.path(),
        "a.tsv",
        "SessionId\tItemId\tTime\n1\t10\t5.5\n2\t11\t1\n1\t12\t3\n\n1\t13\t5.5\n",
    )
    .unwrap();
    assert_eq!(
        triples(&log),
        vec![
            t("1", "12", 3.0),
            t("1", "10", 5.5),
            t("1", "13", 5.5), // equal times keep file order
            t("2", "11", 1.0),
        ]
    );
    assert_eq!(log.items, ["10", "11", "12", "13"]);
    assert_eq!(log.bad_lines, 0);
}

#[test]
fn comma_separated_with_quotes() {
    let dir = tempfile::tempdir().unwrap();
    let log = read(
        dir.path(),
        "a.csv",
        "\"session_id\",item_id,timestamp,note\n\"s,1\",\"a\"\"b\",2016-05-09T10:00:00Z,\"x, y\"\ns2,b,100,\n",
    )
    .unwrap();
    assert_eq!(
        triples(&log),
        vec![t("s,1", "a\"b", 1_462_788_000.0), t("s2", "b", 100.0)]
    );
}

#[test]
fn semicolon_separated() {
    let dir = tempfile::tempdir().unwrap();
    let log = read(dir.path(), "a.txt", "session;item;time\n7;x;1\n7;y;2\n").unwrap();
    assert_eq!(triples(&log), vec![t("7", "x", 1.0), t("7", "y", 2.0)]);
}

#[test]
fn crlf_line_endings() {
    let dir = tempfile::tempdir().unwrap();
    let log = read(
        dir.path(),
        "a.csv",
        "SessionId,ItemId,Time\r\n1,a,1\r\n1,b,2\r\n\r\n",
    )
    .unwrap();
    assert_eq!(triples(&log), vec![t("1", "a", 1.0), t("1", "b", 2.0)]);
}

#[test]
fn recbole_header_keyed_by_user_with_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let text = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n\
                u1\ti1\t3\t1000\n\
                u2\ti9\t4\t50\n\
                u1\ti2\t5\t100\n\
                u1\ti3\t1\t4700\n\
                u1\ti4\t2\t4700\n\
                u1\ti5\t2\t99999\n";
    let log = read(dir.path(), "ml.inter", text).unwrap();
    // 100 → 1000 (gap 900) stays; 1000 → 4700 (gap 3700 > 3600) cuts; 4700 → 99999 cuts.
    assert_eq!(
        triples(&log),
        vec![
            t("u1#0", "i2", 100.0),
            t("u1#0", "i1", 1000.0),
            t("u1#1", "i3", 4700.0),
            t("u1#1", "i4", 4700.0),
            t("u1#2", "i5", 99999.0),
            t("u2#0", "i9", 50.0),
        ]
    );
    let opts = ReadOptions {
        session_gap: Some(10_000.0),
        ..ReadOptions::default()
    };
    let log = read_log(&dir.path().join("ml.inter"), &opts).unwrap();
    assert_eq!(log.sessions, ["u1#0", "u1#1", "u2#0"]);
}

#[test]
fn diginetica_eventdate_plus_timeframe() {
    let dir = tempfile::tempdir().unwrap();
    let text = "session_id;user_id;item_id;timeframe;eventdate\n\
                1;NA;81766;526309;2016-05-09\n\
                1;NA;31331;1031018;2016-05-09\n\
                1;5;32118;243569;2016-05-09\n";
    let log = read(dir.path(), "digi.csv", text).unwrap();
    let day = 1_462_752_000.0;
    assert_eq!(
        triples(&log),
        vec![
            t("1", "32118", day + 243.569),
            t("1", "81766", day + 526.309),
            t("1", "31331", day + 1031.018),
        ]
    );
}

#[test]
fn explicit_column_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "a.tsv",
        "visit\tproduct\twhen\tsession\n1\tp\t10\tzz\n1\tq\t20\tzz\n",
    );
    let opts = ReadOptions {
        session_col: Some("VISIT".into()),
        item_col: Some("product".into()),
        time_col: Some("when".into()),
        ..ReadOptions::default()
    };
    let log = read_log(&path, &opts).unwrap();
    assert_eq!(triples(&log), vec![t("1", "p", 10.0), t("1", "q", 20.0)]);

    // A user flag without a session flag keys by user even when a session column exists.
    let opts = ReadOptions {
        user_col: Some("visit".into()),
        item_col: Some("product".into()),
        time_col: Some("when".into()),
        ..ReadOptions::default()
    };
    assert_eq!(read_log(&path, &opts).unwrap().sessions, ["1#0"]);

    let opts = ReadOptions {
        delimiter: Some(b','),
        ..ReadOptions::default()
    };
    let path = write(dir.path(), "b.txt", "SessionId,ItemId,Time\n1,a,1\n");
    assert_eq!(read_log(&path, &opts).unwrap().events.len(), 1);
}

#[test]
fn unknown_column_flag_lists_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "a.tsv", "SessionId\tItemId\tTime\n1\ta\t1\n");
    let opts = ReadOptions {
        item_col: Some("product".into()),
        ..ReadOptions::default()
    };
    let msg = read_log(&path, &opts).unwrap_err().to_string();
    assert!(msg.contains("a.tsv"), "{msg}");
    assert!(msg.contains("\"product\""), "{msg}");
    assert!(msg.contains("SessionId, ItemId, Time"), "{msg}");
}

#[test]
fn missing_key_column_names_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let err = read(dir.path(), "a.tsv", "foo\titem\ttime\n1\t2\t3\n").unwrap_err();
    assert!(matches!(err, DataError::MissingColumn { .. }));
    assert!(err.to_string().contains("foo, item, time"), "{err}");
    let err = read(dir.path(), "b.tsv", "\n\n").unwrap_err();
    assert!(matches!(err, DataError::Header { .. }), "{err}");
}

#[test]
fn bad_lines_fail_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    // Line numbers count the header and empty lines.
    let text = "SessionId\tItemId\tTime\n1\ta\t1\n\n1\tb\tabc\n1\t\t3\n2\tc\n2\td\t2\n";
    let path = write(dir.path(), "x.tsv", text);
    let err = read_log(&path, &ReadOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.ends_with("x.tsv:4: column \"Time\": cannot parse \"abc\" as a time"),
        "{msg}"
    );
    assert!(matches!(
        err,
        DataError::BadLine {
            at: super::Location::Line(4),
            ..
        }
    ));

    let opts = ReadOptions {
        skip_bad_lines: true,
        ..ReadOptions::default()
    };
    let log = read_log(&path, &opts).unwrap();
    assert_eq!(log.bad_lines, 3);
    assert_eq!(log.first_bad.as_deref(), Some(msg.as_str()));
    assert_eq!(triples(&log), vec![t("1", "a", 1.0), t("2", "d", 2.0)]);

    let err = read(
        dir.path(),
        "y.tsv",
        "SessionId\tItemId\tTime\n1\ta\t1\n1\t\t3\n",
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .ends_with("y.tsv:3: column \"ItemId\": empty value"),
        "{err}"
    );
    let err = read(dir.path(), "z.csv", "SessionId,ItemId,Time\n1,a,1,9\n").unwrap_err();
    assert!(
        err.to_string()
            .ends_with("z.csv:2: expected 3 fields, found 4"),
        "{err}"
    );
    let err = read(dir.path(), "q.csv", "SessionId,ItemId,Time\n1,\"a,1\n").unwrap_err();
    assert!(
        err.to_string()
            .ends_with("q.csv:2: unterminated quoted field"),
        "{err}"
    );
}

fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(
        schema.clone(),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn parquet_with_integer_ids_and_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.parquet");
    write_parquet(
        &path,
        vec![
            (
                "SessionId",
                Arc::new(Int64Array::from(vec![Some(1), Some(1), Some(2), Some(2)])),
            ),
            (
                "ItemId",
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    Some("b"),
                    None,
                    Some("c"),
                ])),
            ),
            (
                "Time",
                Arc::new(TimestampMillisecondArray::from(vec![
                    2500, 1000, 3000, 4000,
                ])),
            ),
            ("extra", Arc::new(Int64Array::from(vec![0, 0, 0, 0]))),
        ],
    );
    let err = read_log(&path, &ReadOptions::default()).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("log.parquet:row 3: column \"ItemId\": null value"),
        "{err}"
    );
    let opts = ReadOptions {
        skip_bad_lines: true,
        ..ReadOptions::default()
    };
    let log = read_log(&path, &opts).unwrap();
    assert_eq!(log.bad_lines, 1);
    assert_eq!(
        triples(&log),
        vec![t("1", "b", 1.0), t("1", "a", 2.5), t("2", "c", 4.0)]
    );

    // Detected by magic bytes too, and float/string columns work.
    let path = dir.path().join("log.bin");
    write_parquet(
        &path,
        vec![
            ("user_id", Arc::new(StringArray::from(vec!["u", "u"]))),
            ("item_id", Arc::new(Int64Array::from(vec![7, 8]))),
            (
                "timestamp",
                Arc::new(arrow::array::Float64Array::from(vec![1.5, 2.5])),
            ),
        ],
    );
    let log = read_log(&path, &ReadOptions::default()).unwrap();
    assert_eq!(triples(&log), vec![t("u#0", "7", 1.5), t("u#0", "8", 2.5)]);
}

#[test]
fn parquet_rejects_unusable_types() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.pq");
    write_parquet(
        &path,
        vec![
            ("session", Arc::new(Int64Array::from(vec![1]))),
            (
                "item",
                Arc::new(arrow::array::BooleanArray::from(vec![true])),
            ),
            ("time", Arc::new(Int64Array::from(vec![1]))),
        ],
    );
    let err = read_log(&path, &ReadOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::UnsupportedType { .. }), "{err}");
    assert!(err.to_string().contains("Boolean"), "{err}");
}

/// Rewrites the footer of the Parquet file at `path`, changing its first column chunk with `change`
/// (fuzzed footers did this: `fuzz/` target `log_parquet`).
fn rewrite_first_chunk(
    path: &Path,
    change: impl FnOnce(ColumnChunkMetaDataBuilder, &ColumnChunkMetaData) -> ColumnChunkMetaDataBuilder,
) {
    use parquet::file::metadata::{ParquetMetaDataReader, ParquetMetaDataWriter};
    let bytes = bytes::Bytes::from(std::fs::read(path).unwrap());
    let n = bytes.len();
    let footer_len = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
    let meta = ParquetMetaDataReader::new()
        .parse_and_finish(&bytes)
        .unwrap();
    let mut builder = meta.into_builder();
    let mut groups = builder.take_row_groups();
    let mut chunks = groups[0].columns().to_vec();
    chunks[0] = change(chunks[0].clone().into_builder(), &chunks[0])
        .build()
        .unwrap();
    groups[0] = groups[0]
        .clone()
        .into_builder()
        .set_column_metadata(chunks)
        .build()
        .unwrap();
    let meta = builder.set_row_groups(groups).build();
    let mut out = bytes[..n - 8 - footer_len].to_vec();
    ParquetMetaDataWriter::new(&mut out, &meta)
        .finish()
        .unwrap();
    std::fs::write(path, out).unwrap();
}

fn two_row_log(path: &Path) {
    write_parquet(
        path,
        vec![
            // Integers: a missing dictionary is caught for strings, not for these.
            ("SessionId", Arc::new(Int64Array::from(vec![7, 7]))),
            ("ItemId", Arc::new(StringArray::from(vec!["a", "b"]))),
            ("Time", Arc::new(Int64Array::from(vec![1, 2]))),
        ],
    );
}

/// The parquet crate panics on a column chunk at a negative offset (found by fuzzing); the reader
/// checks every chunk's place against the file first.
#[test]
fn parquet_chunks_outside_the_file_are_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.parquet");
    for offset in [-1, i64::MAX - 3, 1 << 40] {
        two_row_log(&path);
        rewrite_first_chunk(&path, |chunk, _| {
            chunk
                .set_dictionary_page_offset(None)
                .set_data_page_offset(offset)
        });
        let err = read_log(&path, &ReadOptions::default()).unwrap_err();
        assert!(matches!(err, DataError::Parquet { .. }), "{err}");
        assert!(err.to_string().contains("does not fit"), "{err}");
    }
}

/// A page header claiming 1.4 GB uncompressed from a 2 KB file: the parquet crate reserves the
/// declared size before decompressing (apache/arrow-rs#10734; found by fuzzing, `fuzz/` target
/// `log_parquet`, the input minus its flags byte). The page check refuses the file first.
#[test]
fn a_page_claiming_gigabytes_is_refused_before_the_reader_reserves_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.parquet");
    std::fs::write(&path, include_bytes!("testdata/page_claims_1_4_gb.parquet")).unwrap();
    let err = read_log(&path, &ReadOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::Parquet { .. }), "{err}");
    // Its header is also malformed past the size (field 3 is not an i32): refused either way.
    assert!(
        err.to_string().contains("the page header at offset 4"),
        "{err}"
    );
}

/// A dictionary-encoded page whose chunk has no dictionary page: the parquet crate's decoder
/// `expect`s one (found by fuzzing, `fuzz/` targets `log_parquet` and `archive_file`). The footer
/// here skips the chunk's dictionary page; reading gives an error, not a panic.
#[test]
fn a_dictionary_page_gone_missing_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.parquet");
    two_row_log(&path);
    rewrite_first_chunk(&path, |chunk, old| {
        let dict = old
            .dictionary_page_offset()
            .expect("strings are dictionary-encoded");
        let skipped = old.data_page_offset() - dict;
        chunk
            .set_dictionary_page_offset(None)
            .set_total_compressed_size(old.compressed_size() - skipped)
    });
    let err = read_log(&path, &ReadOptions::default()).unwrap_err();
    assert!(matches!(err, DataError::Parquet { .. }), "{err}");
    assert!(err.to_string().contains("malformed file"), "{err}");
}

#[test]
fn reads_100k_lines_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("SessionId\tItemId\tTime\n");
    for i in 0..100_000u64 {
        text.push_str(&format!(
            "{}\t{}\t{}.5\n",
            i / 4,
            (i * 7919) % 5000,
            1_400_000_000 + i
        ));
    }
    let path = write(dir.path(), "big.tsv", &text);
    let start = std::time::Instant::now();
    let log = read_log(&path, &ReadOptions::default()).unwrap();
    let took = start.elapsed();
    assert_eq!(log.events.len(), 100_000);
    assert_eq!(log.sessions.len(), 25_000);
    assert!(took.as_secs_f64() < 1.0, "reading 100k lines took {took:?}");
}
