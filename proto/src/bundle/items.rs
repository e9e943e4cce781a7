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
            Err(BundleError::Arrow { .. })
        ));
    }
}
