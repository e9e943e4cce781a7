//! items.arrow: the catalogue as an Arrow IPC file, row i = item index i, columns `item_id` (Utf8)
//! and `popularity` (UInt64, training-set interaction count).

use std::collections::HashSet;
use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, UInt64Type};
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;

use super::{BundleError, ItemTable};

pub(crate) const ITEM_ID: &str = "item_id";
pub(crate) const POPULARITY: &str = "popularity";

/// Checks what both the writer and the reader rely on: one popularity per id, ids unique (the
/// server maps ids back to indices).
pub(crate) fn check(items: &ItemTable, path: &str) -> Result<(), BundleError> {
    if items.ids.len() != items.popularity.len() {
        return Err(BundleError::format(
            path,
            format!(
                "{} item ids but {} popularity values",
                items.ids.len(),
                items.popularity.len()
            ),
        ));
    }
    let mut seen = HashSet::with_capacity(items.ids.len());
    for (i, id) in items.ids.iter().enumerate() {
        if !seen.insert(id.as_str()) {
            return Err(BundleError::format(
                path,
                format!("duplicate item id {id:?} at index {i}"),
            ));
        }
    }
    Ok(())
}

pub(crate) fn encode(items: &ItemTable, path: &str) -> Result<Vec<u8>, BundleError> {
    check(items, path)?;
    let arrow_err = |source| BundleError::Arrow {
        path: path.to_owned(),
        source,
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new(ITEM_ID, DataType::Utf8, false),
        Field::new(POPULARITY, DataType::UInt64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(&items.ids)),
            Arc::new(UInt64Array::from(items.popularity.clone())),
        ],
    )
    .map_err(arrow_err)?;
    let mut writer = FileWriter::try_new(Vec::new(), &schema).map_err(arrow_err)?;
    writer.write(&batch).map_err(arrow_err)?;
    writer.finish().map_err(arrow_err)?;
    writer.into_inner().map_err(arrow_err)
}

pub(crate) fn decode(bytes: bytes::Bytes, path: &str) -> Result<ItemTable, BundleError> {
    let arrow_err = |source| BundleError::Arrow {
        path: path.to_owned(),
        source,
    };
    check_layout(&bytes).map_err(|reason| BundleError::format(path, reason))?;
    let reader = FileReader::try_new(Cursor::new(bytes), None).map_err(arrow_err)?;
    let mut items = ItemTable {
        ids: Vec::new(),
        popularity: Vec::new(),
    };
    for batch in reader {
        let batch = batch.map_err(arrow_err)?;
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| BundleError::format(path, format!("no column {name:?}")))
        };
        let ids = column(ITEM_ID)?;
        let pops = column(POPULARITY)?;
        if ids.null_count() > 0 || pops.null_count() > 0 {
            return Err(BundleError::format(path, "null item_id or popularity"));
        }
        // Accept LargeUtf8 too: a catalogue written by another Arrow tool may use it.
        match ids.data_type() {
            DataType::Utf8 => items
                .ids
                .extend(ids.as_string::<i32>().iter().flatten().map(str::to_owned)),
            DataType::LargeUtf8 => items
                .ids
                .extend(ids.as_string::<i64>().iter().flatten().map(str::to_owned)),
            other => {
                return Err(BundleError::format(
                    path,
                    format!("column item_id is {other}, expected Utf8"),
                ));
            }
        }
        let pops = pops.as_primitive_opt::<UInt64Type>().ok_or_else(|| {
            BundleError::format(
                path,
                format!("column popularity is {}, expected UInt64", pops.data_type()),
            )
        })?;
        items.popularity.extend(pops.values().iter().copied());
    }
    check(&items, path)?;
    Ok(items)
}

/// The Arrow IPC reader trusts the sizes and offsets a file declares: one past the end panics
/// (slicing) or allocates what it says (found by fuzzing, `fuzz/` target `bundle`). Checks the
/// footer length, every block and every buffer of every batch against the bytes there are, that
/// every column is flat, and that each of its offsets and values buffers holds whole values (the
/// reader asserts that too, by panicking); what else is wrong with the file the reader reports itself.
pub(crate) fn check_layout(b: &[u8]) -> Result<(), String> {
    let size = |v: i64| usize::try_from(v).ok();
    let tail = b
        .len()
        .checked_sub(10)
        .ok_or("too short for an Arrow IPC file")?;
    let footer_len = i32::from_le_bytes(b[tail..tail + 4].try_into().expect("4 bytes"));
    let footer_at = size(footer_len.into())
        .and_then(|len| tail.checked_sub(len))
        .ok_or_else(|| {
            format!(
                "footer length {footer_len} does not fit in {} bytes",
                b.len()
            )
        })?;
    let Ok(footer) = arrow::ipc::root_as_footer(&b[footer_at..tail]) else {
        return Ok(());
    };
    // Per column, the byte multiple each of its buffers must be (after its validity bitmap).
    let mut widths: Vec<(String, &'static [usize])> = Vec::new();
    if let Some(Ok(schema)) = footer.schema().map(arrow::ipc::convert::try_fb_to_schema) {
        for field in schema.fields() {
            let w = buffer_widths(field.data_type()).ok_or_else(|| {
                format!(
                    "column {:?} is {}: bundle files hold flat columns only",
                    field.name(),
                    field.data_type()
                )
            })?;
            widths.push((field.name().clone(), w));
        }
    }
    let expected: Vec<(&str, usize)> = widths
        .iter()
        .flat_map(|(name, w)| {
            std::iter::once(1)
                .chain(w.iter().copied())
                .map(|w| (name.as_str(), w))
        })
        .collect();
    let blocks = footer.recordBatches().into_iter().flatten();
    for block in blocks.chain(footer.dictionaries().into_iter().flatten()) {
        let (offset, meta, body) = (block.offset(), block.metaDataLength(), block.bodyLength());
        let bounds = size(offset)
            .zip(size(meta.into()).filter(|&m| m >= 8))
            .zip(size(body));
        let Some(((start, meta), body)) = bounds.filter(|&((start, meta), body)| {
            start
                .checked_add(meta)
                .and_then(|end| end.checked_add(body))
                .is_some_and(|end| end <= b.len())
        }) else {
            return Err(format!(
                "a block at {offset} ({meta} + {body} bytes) does not fit in {} bytes",
                b.len()
            ));
        };
        // Metadata: an optional continuation marker, its length, the flatbuffer.
        let message = &b[start..start + meta];
        let skip = if message[..4] == [0xff; 4] { 8 } else { 4 };
        let Ok(message) = arrow::ipc::root_as_message(&message[skip..]) else {
            continue;
        };
        let record = message.header_as_record_batch();
        let batch = record.or_else(|| message.header_as_dictionary_batch().and_then(|d| d.data()));
        for (k, buffer) in batch
            .and_then(|batch| batch.buffers())
            .into_iter()
            .flatten()
            .enumerate()
        {
            let (at, len) = (buffer.offset(), buffer.length());
            let end = size(at)
                .zip(size(len))
                .and_then(|(at, len)| at.checked_add(len));
            if end.is_none_or(|end| end > body) {
                return Err(format!(
                    "a buffer at {at} of {len} bytes does not fit in its block's {body}-byte body"
                ));
            }
            // The reader views offsets and values as typed slices and panics on a ragged end
            // (found by fuzzing: a Utf8 column's offsets declared 31 bytes long).
            if let (Some(_), Some(&(column, w))) = (record, expected.get(k))
                && len % w as i64 != 0
            {
                return Err(format!(
                    "a buffer of column {column:?} is {len} bytes, not a whole number of {w}-byte values"
                ));
            }
        }
    }
    Ok(())
}

/// The byte multiple of each buffer of a flat column of type `t` after its validity bitmap (1: any
/// length); None for the types bundle files never hold (nested, dictionary, view and null columns).
fn buffer_widths(t: &DataType) -> Option<&'static [usize]> {
    Some(match t {
        DataType::Utf8 | DataType::Binary => &[4, 1],
        DataType::LargeUtf8 | DataType::LargeBinary => &[8, 1],
        DataType::Boolean => &[1],
        t => match t.primitive_width()? {
            1 => &[1],
            2 => &[2],
            4 => &[4],
            8 => &[8],
            16 => &[16],
            32 => &[32],
            _ => return None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(ids: &[&str], popularity: &[u64]) -> ItemTable {
        ItemTable {
            ids: ids.iter().map(|s| (*s).to_owned()).collect(),
            popularity: popularity.to_vec(),
        }
    }

    #[test]
    fn round_trip() {
        let items = table(&["a", "b", "ünï", ""], &[3, 0, u64::MAX, 1]);
        let bytes = encode(&items, "i").unwrap();
        assert_eq!(decode(bytes.into(), "i").unwrap(), items);
        let empty = table(&[], &[]);
        assert_eq!(
            decode(encode(&empty, "i").unwrap().into(), "i").unwrap(),
            empty
        );
    }

    #[test]
    fn duplicates_and_mismatched_lengths_are_rejected() {
        assert!(matches!(
            encode(&table(&["a", "a"], &[1, 2]), "i"),
            Err(BundleError::Format { .. })
        ));
        assert!(matches!(
            encode(&table(&["a"], &[1, 2]), "i"),
            Err(BundleError::Format { .. })
        ));
        assert!(matches!(
            decode(bytes::Bytes::from_static(b"nope"), "i"),
            Err(BundleError::Format { .. })
        ));
    }

    /// Fuzzing (`fuzz/` target `bundle`) found that raising one buffer's declared length in a
    /// valid file (two bytes changed) made the Arrow reader panic slicing 256 GiB out of 192 bytes.
    #[test]
    fn a_buffer_reaching_past_its_block_is_an_error_not_a_panic() {
        let items = table(&["i0", "i1", "i2", "i3", "i4", "i5"], &[5, 4, 3, 2, 1, 0]);
        let mut bytes = encode(&items, "i").unwrap();
        assert_eq!(
            (bytes[476], bytes[480]),
            (0, 64),
            "the layout the input was found in"
        );
        (bytes[476], bytes[480]) = (64, 0);
        let err = decode(bytes.into(), "i").unwrap_err();
        assert!(
            matches!(&err, BundleError::Format { .. }) && err.to_string().contains("buffer at"),
            "{err}"
        );
    }

    /// Fuzzing (`fuzz/` target `bundle`) found that an item_id offsets buffer declared 31 bytes long
    /// (not a whole number of 4-byte offsets) made the Arrow reader panic.
    #[test]
    fn a_ragged_offsets_buffer_is_an_error_not_a_panic() {
        let items = table(&["i0", "i1", "i2", "i3", "i4", "i5"], &[5, 4, 3, 2, 1, 0]);
        let mut bytes = encode(&items, "i").unwrap();
        // The buffer table entry (offset 0, length 28) of the 7 offsets, followed by the data's.
        let entry = [0i64.to_le_bytes(), 28i64.to_le_bytes()].concat();
        let at = bytes
            .windows(16)
            .position(|w| w == entry.as_slice())
            .expect("the offsets buffer's entry");
        bytes[at + 8] = 31;
        let err = decode(bytes.into(), "i").unwrap_err();
        assert!(
            err.to_string()
                .contains("not a whole number of 4-byte values"),
            "{err}"
        );
    }

    #[test]
    fn a_nested_column_is_refused() {
        use arrow::array::ListArray;
        use arrow::datatypes::Int32Type;
        let list = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![Some(vec![Some(1)])]);
        let schema = Arc::new(Schema::new(vec![Field::new(
            "item_id",
            list.data_type().clone(),
            true,
        )]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(list)]).unwrap();
        let mut writer = FileWriter::try_new(Vec::new(), &schema).unwrap();
        writer.write(&batch).unwrap();
        writer.finish().unwrap();
        let err = decode(writer.into_inner().unwrap().into(), "i").unwrap_err();
        assert!(err.to_string().contains("flat columns only"), "{err}");
    }

    #[test]
    fn a_footer_or_block_beyond_the_file_is_an_error() {
        let items = table(&["a", "b"], &[1, 2]);
        let good = encode(&items, "i").unwrap();
        let n = good.len();
        let mut long_footer = good.clone();
        long_footer[n - 10..n - 6].copy_from_slice(&i32::MAX.to_le_bytes());
        let err = decode(long_footer.into(), "i").unwrap_err();
        assert!(err.to_string().contains("footer length"), "{err}");
        // Cut the body off: the batch's block now reaches past the end.
        let footer_len = i32::from_le_bytes(good[n - 10..n - 6].try_into().unwrap()) as usize;
        let footer = &good[n - 10 - footer_len..];
        let cut = [&good[..16], footer].concat();
        let err = decode(cut.into(), "i").unwrap_err();
        assert!(err.to_string().contains("block at"), "{err}");
    }
}
