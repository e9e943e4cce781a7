//! The archive's rows and their Parquet form: one [`ArchivedEvent`] per logged event, encoded with
//! the fixed Arrow schema below and decoded (and checked) by column name.

use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, UInt64Type};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::{KeyValue, ParquetMetaData};
use parquet::file::properties::WriterProperties;

use super::ArchiveError;
use crate::v1::{LogRecord, RecordKind};

/// Column names, in file order.
pub const SESSION_ID: &str = "session_id";
pub const ITEM_ID: &str = "item_id";
pub const TIMESTAMP_MS: &str = "timestamp_ms";
pub const RECEIVED_MS: &str = "received_ms";
pub const MODEL_VERSION: &str = "model_version";
pub const CLIENT_SEQ: &str = "client_seq";
pub const POSITION: &str = "position";

/// Version of the archive's file layout, stored in each file's key-value metadata under
/// [`FORMAT_KEY`] so that a later layout can be told apart.
pub const FORMAT_VERSION: &str = "1";
pub const FORMAT_KEY: &str = "lambdarec.archive.format";

/// Rows per record batch when decoding.
const BATCH_ROWS: usize = 8192;

/// The Arrow schema of every data file.
pub fn schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        Arc::new(Schema::new(vec![
            Field::new(SESSION_ID, DataType::Utf8, false),
            Field::new(ITEM_ID, DataType::Utf8, false),
            Field::new(TIMESTAMP_MS, DataType::Int64, false),
            Field::new(RECEIVED_MS, DataType::Int64, false),
            Field::new(MODEL_VERSION, DataType::Utf8, false),
            Field::new(CLIENT_SEQ, DataType::UInt64, true),
            Field::new(POSITION, DataType::UInt64, false),
        ]))
    });
    SCHEMA.clone()
}

/// One archived event: a logged event record and its log position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedEvent {
    pub position: u64,
    pub session_id: String,
    pub item_id: String,
    /// Event time, Unix epoch ms (decides the partition).
    pub timestamp_ms: i64,
    pub received_ms: i64,
    pub client_seq: Option<u64>,
    pub model_version: String,
}

impl ArchivedEvent {
    /// The row of an event record; `None` for a delete (deletes are speed-layer state operations;
    /// the archive holds what happened, not what the server has since forgotten).
    pub fn from_record(position: u64, record: LogRecord) -> Option<ArchivedEvent> {
        (record.kind() == RecordKind::Event).then_some(ArchivedEvent {
            position,
            session_id: record.session_id,
            item_id: record.item_id,
            timestamp_ms: record.timestamp_ms,
            received_ms: record.received_ms,
            client_seq: record.client_seq,
            model_version: record.model_version,
        })
    }
}

/// The Parquet bytes of `events` (in the given order). `path` names the file in errors.
pub fn encode(events: &[ArchivedEvent], path: &str) -> Result<Vec<u8>, ArchiveError> {
    let strings = |f: fn(&ArchivedEvent) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(events.iter().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        strings(|e| &e.session_id),
        strings(|e| &e.item_id),
        Arc::new(Int64Array::from_iter_values(
            events.iter().map(|e| e.timestamp_ms),
        )),
        Arc::new(Int64Array::from_iter_values(
            events.iter().map(|e| e.received_ms),
        )),
        strings(|e| &e.model_version),
        Arc::new(events.iter().map(|e| e.client_seq).collect::<UInt64Array>()),
        Arc::new(UInt64Array::from_iter_values(
            events.iter().map(|e| e.position),
        )),
    ];
    let arrow_err = |source| ArchiveError::Arrow {
        path: path.to_owned(),
        source,
    };
    let pq_err = |source| ArchiveError::Parquet {
        path: path.to_owned(),
        source,
    };
    let batch = RecordBatch::try_new(schema(), columns).map_err(arrow_err)?;
    // ZSTD level 1: about as fast as Snappy to write and a third smaller on id-heavy columns.
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_key_value_metadata(Some(vec![KeyValue::new(
            FORMAT_KEY.to_owned(),
            FORMAT_VERSION.to_owned(),
        )]))
        .build();
    let mut writer = ArrowWriter::try_new(Vec::new(), schema(), Some(props)).map_err(pq_err)?;
    writer.write(&batch).map_err(pq_err)?;
    writer.into_inner().map_err(pq_err)
}

/// The Parquet reader trusts each column chunk's declared place in the file: a negative offset or
/// size panics (`ColumnChunkMetaData::byte_range`; found by fuzzing, `fuzz/` target `log_parquet`).
/// Checks every chunk against the file's `size` before anything is read. Shared with the trainer's
/// Parquet log reader.
pub fn check_chunk_ranges(metadata: &ParquetMetaData, size: u64) -> Result<(), ParquetError> {
    for (g, group) in metadata.row_groups().iter().enumerate() {
        for (c, chunk) in group.columns().iter().enumerate() {
            let start = chunk
                .dictionary_page_offset()
                .unwrap_or(chunk.data_page_offset());
            let len = chunk.compressed_size();
            let fits = u64::try_from(start)
                .ok()
                .zip(u64::try_from(len).ok())
                .and_then(|(start, len)| start.checked_add(len))
                .is_some_and(|end| end <= size);
            if !fits {
                return Err(ParquetError::General(format!(
                    "row group {g}, column {c}: a chunk of {len} bytes at offset {start} does not fit in the {size}-byte file"
                )));
            }
        }
    }
    Ok(())
}

/// Runs one step of the parquet crate's reader, turning a panic into an error. Its page decoders
/// `expect` what only a well-formed file guarantees (a dictionary-encoded page without a dictionary
/// page panics in `column/reader/decoder.rs`; found by fuzzing, `fuzz/` targets `archive_file` and
/// `log_parquet`), and such a file must be refused, not bring the process down. The panic message
/// still goes to the panic hook (stderr) before the error is returned.
pub fn guard_parquet<T>(step: impl FnOnce() -> T) -> Result<T, ParquetError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)).map_err(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        ParquetError::General(format!("malformed file (the reader gave up: {message})"))
    })
}

/// Decodes the named columns (all of the schema when `columns` is `None`) of one file, each cast
/// to its schema type, in schema order. A missing column or one of another type is
/// [`ArchiveError::Schema`].
pub fn decode(
    bytes: Bytes,
    columns: Option<&[&str]>,
    path: &str,
) -> Result<Vec<RecordBatch>, ArchiveError> {
    let pq_err = |source| ArchiveError::Parquet {
        path: path.to_owned(),
        source,
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes.clone()).map_err(pq_err)?;
    super::check_pages(builder.metadata(), &bytes).map_err(pq_err)?;
    let file_schema = builder.schema().clone();
    let all = schema();
    let wanted: Vec<&Field> = all
        .fields()
        .iter()
        .map(|f| f.as_ref())
        .filter(|f| columns.is_none_or(|c| c.contains(&f.name().as_str())))
        .collect();
    let mut roots = Vec::with_capacity(wanted.len());
    for field in &wanted {
        let (index, found) =
            file_schema
                .column_with_name(field.name())
                .ok_or_else(|| ArchiveError::Schema {
                    path: path.to_owned(),
                    reason: format!("no column \"{}\"", field.name()),
                })?;
        check_type(field, found.data_type(), path)?;
        roots.push(index);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots.iter().copied());
    let reader = builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(pq_err)?;
    let out_schema = Arc::new(Schema::new(
        wanted.iter().map(|f| (*f).clone()).collect::<Vec<_>>(),
    ));
    let arrow_err = |source| ArchiveError::Arrow {
        path: path.to_owned(),
        source,
    };
    let mut batches = Vec::new();
    let mut reader = reader;
    while let Some(batch) = guard_parquet(|| reader.next()).map_err(pq_err)? {
        let batch = batch.map_err(arrow_err)?;
        // The projection keeps file order; look each wanted column up by name.
        let cols = wanted
            .iter()
            .map(|f| {
                let col = batch
                    .column_by_name(f.name())
                    .ok_or_else(|| ArchiveError::Schema {
                        path: path.to_owned(),
                        reason: format!("column \"{}\" vanished while reading", f.name()),
                    })?;
                cast(col, f.data_type()).map_err(arrow_err)
            })
            .collect::<Result<Vec<_>, _>>()?;
        batches.push(RecordBatch::try_new(out_schema.clone(), cols).map_err(arrow_err)?);
    }
    Ok(batches)
}

/// Strings may come as Utf8, LargeUtf8 or Utf8View (another writer compacting the archive);
/// numbers must have exactly the schema's type, since a cast could turn values into nulls.
fn check_type(expected: &Field, found: &DataType, path: &str) -> Result<(), ArchiveError> {
    let ok = match expected.data_type() {
        DataType::Utf8 => matches!(
            found,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ),
        other => found == other,
    };
    if ok {
        return Ok(());
    }
    Err(ArchiveError::Schema {
        path: path.to_owned(),
        reason: format!(
            "column \"{}\" has type {found}, expected {}",
            expected.name(),
            expected.data_type()
        ),
    })
}

/// The rows of batches decoded with every column (`decode(.., None, ..)`), in order. A null in a
/// non-nullable column is [`ArchiveError::Schema`].
pub fn rows(batches: &[RecordBatch], path: &str) -> Result<Vec<ArchivedEvent>, ArchiveError> {
    let mut out = Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
    for batch in batches {
        let col = |name: &str| -> Result<&ArrayRef, ArchiveError> {
            let c = batch
                .column_by_name(name)
                .ok_or_else(|| ArchiveError::Schema {
                    path: path.to_owned(),
                    reason: format!("no column \"{name}\""),
                })?;
            if name != CLIENT_SEQ && c.null_count() > 0 {
                return Err(ArchiveError::Schema {
                    path: path.to_owned(),
                    reason: format!("column \"{name}\" holds nulls"),
                });
            }
            Ok(c)
        };
        let session = col(SESSION_ID)?.as_string::<i32>();
        let item = col(ITEM_ID)?.as_string::<i32>();
        let ts = col(TIMESTAMP_MS)?.as_primitive::<Int64Type>();
        let received = col(RECEIVED_MS)?.as_primitive::<Int64Type>();
        let version = col(MODEL_VERSION)?.as_string::<i32>();
        let seq = col(CLIENT_SEQ)?.as_primitive::<UInt64Type>();
        let position = col(POSITION)?.as_primitive::<UInt64Type>();
        for r in 0..batch.num_rows() {
            out.push(ArchivedEvent {
                position: position.value(r),
                session_id: session.value(r).to_owned(),
                item_id: item.value(r).to_owned(),
                timestamp_ms: ts.value(r),
                received_ms: received.value(r),
                client_seq: seq.is_valid(r).then(|| seq.value(r)),
                model_version: version.value(r).to_owned(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: u64, seq: Option<u64>) -> ArchivedEvent {
        ArchivedEvent {
            position,
            session_id: format!("s{}", position % 3),
            item_id: format!("i{position}"),
            timestamp_ms: 1_700_000_000_000 + position as i64,
            received_ms: 1_700_000_000_500 + position as i64,
            client_seq: seq,
            model_version: "v1".into(),
        }
    }

    #[test]
    fn rows_round_trip_through_parquet() {
        let events: Vec<_> = (1..=20_000)
            .map(|p| event(p, (p % 2 == 0).then_some(p * 7)))
            .collect();
        let bytes = encode(&events, "t.parquet").unwrap();
        assert_eq!(&bytes[..4], b"PAR1");
        let batches = decode(Bytes::from(bytes), None, "t.parquet").unwrap();
        assert!(batches.len() > 1, "several batches exercise the row loop");
        assert_eq!(rows(&batches, "t.parquet").unwrap(), events);
    }

    /// A definition-level run past its buffer panics inside arrow-buffer, called by the parquet
    /// crate's decoder (found by the `archive_file` fuzz target in CI, the input minus its flags
    /// byte): the guard around the reader turns it into an error.
    #[test]
    fn a_definition_level_run_past_its_buffer_is_an_error_not_a_panic() {
        let bytes = Bytes::from_static(include_bytes!("testdata/def_levels_past_buffer.parquet"));
        let err = decode(bytes, None, "fuzz.parquet").unwrap_err();
        assert!(matches!(err, ArchiveError::Parquet { .. }), "{err}");
    }

    /// A column chunk whose declared size reaches past the file (or whose offset is negative)
    /// made the parquet crate panic; the check reports it as a Parquet error instead.
    #[test]
    fn a_chunk_outside_the_file_is_an_error_not_a_panic() {
        use parquet::file::metadata::{ParquetMetaDataReader, ParquetMetaDataWriter};
        let bytes = Bytes::from(encode(&[event(5, None)], "t").unwrap());
        let n = bytes.len();
        let footer_len = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
        let meta = ParquetMetaDataReader::new()
            .parse_and_finish(&bytes)
            .unwrap();
        check_chunk_ranges(&meta, n as u64).unwrap();
        let mut builder = meta.into_builder();
        let mut groups = builder.take_row_groups();
        let mut chunks = groups[0].columns().to_vec();
        chunks[0] = chunks[0]
            .clone()
            .into_builder()
            .set_dictionary_page_offset(Some(-8))
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
        let err = decode(Bytes::from(out), None, "t").unwrap_err();
        assert!(
            matches!(&err, ArchiveError::Parquet { .. })
                && err.to_string().contains("does not fit"),
            "{err}"
        );
    }

    #[test]
    fn projection_returns_the_named_columns_in_schema_order() {
        let bytes = Bytes::from(encode(&[event(5, None)], "t").unwrap());
        let batches = decode(bytes, Some(&[TIMESTAMP_MS, SESSION_ID]), "t").unwrap();
        let names: Vec<_> = batches[0]
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, [SESSION_ID, TIMESTAMP_MS]);
    }

    #[test]
    fn deletes_have_no_row() {
        let mut record = LogRecord {
            kind: RecordKind::Delete.into(),
            session_id: "s".into(),
            ..LogRecord::default()
        };
        assert_eq!(ArchivedEvent::from_record(3, record.clone()), None);
        record.kind = RecordKind::Event.into();
        record.item_id = "i".into();
        record.client_seq = Some(9);
        let row = ArchivedEvent::from_record(3, record).unwrap();
        assert_eq!((row.position, row.client_seq), (3, Some(9)));
    }

    #[test]
    fn foreign_files_are_refused_naming_the_file_and_column() {
        // A Parquet file with the right names but a string position.
        let schema = Arc::new(Schema::new(vec![Field::new(
            POSITION,
            DataType::Utf8,
            false,
        )]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(vec!["1"])) as ArrayRef],
        )
        .unwrap();
        let mut w = ArrowWriter::try_new(Vec::new(), schema, None).unwrap();
        w.write(&batch).unwrap();
        let bytes = Bytes::from(w.into_inner().unwrap());
        let err = decode(bytes.clone(), Some(&[POSITION]), "x.parquet").unwrap_err();
        assert!(
            err.to_string().contains("x.parquet") && err.to_string().contains("position"),
            "{err}"
        );
        let err = decode(bytes, None, "x.parquet").unwrap_err();
        assert!(
            err.to_string().contains("no column \"session_id\""),
            "{err}"
        );
        let err = decode(Bytes::from_static(b"not parquet"), None, "y.parquet").unwrap_err();
        assert!(matches!(err, ArchiveError::Parquet { ref path, .. } if path == "y.parquet"));
    }
}
