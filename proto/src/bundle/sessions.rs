//! sessions.arrow (optional): the training sessions the server's speed layer is seeded with, so that
//! a fresh server's session-kNN and trending start where the trainer's evaluation started. An Arrow
//! IPC file with one row per event: `session` (UInt32: 0, 1, … in the order the sessions are given,
//! each session's events together), `item` (UInt32 item index) and `time` (Float64, Unix seconds).

use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Array, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, UInt32Type};
use arrow::ipc::reader::FileReader;
use arrow::ipc::writer::FileWriter;

use super::{BundleError, SessionTable};

const SESSION: &str = "session";
const ITEM: &str = "item";
const TIME: &str = "time";

/// Checks the table's shape: offsets start at 0, increase (no session is empty) and end at the event count, one
/// time per item, finite times, every item below `n_items`.
pub(crate) fn check(t: &SessionTable, n_items: u64, path: &str) -> Result<(), BundleError> {
    let bad = |reason: String| Err(BundleError::format(path, reason));
    if t.offsets.first() != Some(&0) || t.offsets.last() != Some(&(t.items.len() as u64)) {
        return bad(format!(
            "session offsets must run from 0 to the {} events",
            t.items.len()
        ));
    }
    if let Some(s) = t.offsets.windows(2).position(|w| w[0] >= w[1]) {
        return bad(format!("session {s} is empty or its offsets decrease"));
    }
    if t.times.len() != t.items.len() {
        return bad(format!(
            "{} items but {} times",
            t.items.len(),
            t.times.len()
        ));
    }
    if let Some(at) = t.times.iter().position(|x| !x.is_finite()) {
        return bad(format!("event {at} has time {}", t.times[at]));
    }
    if let Some(at) = t.items.iter().position(|&i| u64::from(i) >= n_items) {
        return bad(format!(
            "event {at} has item {}; the catalogue has {n_items}",
            t.items[at]
        ));
    }
    Ok(())
}

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new(SESSION, DataType::UInt32, false),
        Field::new(ITEM, DataType::UInt32, false),
        Field::new(TIME, DataType::Float64, false),
    ]))
}

pub(crate) fn encode(t: &SessionTable, path: &str) -> Result<Vec<u8>, BundleError> {
    let arrow_err = |source| BundleError::Arrow {
        path: path.to_owned(),
        source,
    };
    check(t, u64::MAX, path)?;
    let mut session = Vec::with_capacity(t.items.len());
    for (s, w) in t.offsets.windows(2).enumerate() {
        let s = u32::try_from(s)
            .map_err(|_| BundleError::format(path, "more than 4 billion sessions".to_string()))?;
        session.extend(std::iter::repeat_n(s, (w[1] - w[0]) as usize));
    }
    let schema = schema();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(UInt32Array::from(session)),
            Arc::new(UInt32Array::from(t.items.clone())),
            Arc::new(Float64Array::from(t.times.clone())),
        ],
    )
    .map_err(arrow_err)?;
    let mut writer = FileWriter::try_new(Vec::new(), &schema).map_err(arrow_err)?;
    writer.write(&batch).map_err(arrow_err)?;
    writer.finish().map_err(arrow_err)?;
    writer.into_inner().map_err(arrow_err)
}

pub(crate) fn decode(bytes: bytes::Bytes, path: &str) -> Result<SessionTable, BundleError> {
    let arrow_err = |source| BundleError::Arrow {
        path: path.to_owned(),
        source,
    };
    super::items::check_layout(&bytes).map_err(|reason| BundleError::format(path, reason))?;
    let reader = FileReader::try_new(Cursor::new(bytes), None).map_err(arrow_err)?;
    let mut t = SessionTable {
        offsets: vec![0],
        items: Vec::new(),
        times: Vec::new(),
    };
    let mut current: Option<u32> = None;
    for batch in reader {
        let batch = batch.map_err(arrow_err)?;
        let column = |name: &str| {
            let c = batch
                .column_by_name(name)
                .ok_or_else(|| BundleError::format(path, format!("no column {name:?}")))?;
            if c.null_count() > 0 {
                return Err(BundleError::format(path, format!("nulls in column {name}")));
            }
            Ok(c)
        };
        let wrong = |name: &str, c: &dyn Array, want: &str| {
            BundleError::format(
                path,
                format!("column {name} is {}, expected {want}", c.data_type()),
            )
        };
        let (s, i, x) = (column(SESSION)?, column(ITEM)?, column(TIME)?);
        let s = s
            .as_primitive_opt::<UInt32Type>()
            .ok_or_else(|| wrong(SESSION, s.as_ref(), "UInt32"))?;
        let i = i
            .as_primitive_opt::<UInt32Type>()
            .ok_or_else(|| wrong(ITEM, i.as_ref(), "UInt32"))?;
        let x = x
            .as_primitive_opt::<Float64Type>()
            .ok_or_else(|| wrong(TIME, x.as_ref(), "Float64"))?;
        for &session in s.values().iter() {
            match current {
                Some(c) if session == c => {}
                Some(c) if Some(session) == c.checked_add(1) => {
                    t.offsets.push(t.items.len() as u64);
                    current = Some(session);
                }
                None if session == 0 => current = Some(0),
                _ => {
                    return Err(BundleError::format(
                        path,
                        format!(
                            "session {session} after session {current:?}: sessions must be \
                             numbered 0, 1, … with each session's events together"
                        ),
                    ));
                }
            }
            t.items.push(0);
        }
        let start = t.items.len() - s.len();
        t.items[start..].copy_from_slice(i.values());
        t.times.extend_from_slice(x.values());
    }
    if current.is_some() {
        t.offsets.push(t.items.len() as u64);
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let t = SessionTable {
            offsets: vec![0, 2, 5],
            items: vec![1, 2, 0, 3, 3],
            times: vec![1.0, 2.0, 3.0, 4.5, 6.0],
        };
        check(&t, 4, "s").unwrap();
        let bytes = encode(&t, "s").unwrap();
        assert_eq!(decode(bytes.into(), "s").unwrap(), t);
        let mut gap = t.clone();
        gap.offsets = vec![0, 2, 2, 5];
        let e = check(&gap, 4, "s").unwrap_err().to_string();
        assert!(e.contains("session 1 is empty"), "{e}");
        let e = check(&t, 3, "s").unwrap_err().to_string();
        assert!(e.contains("event 3 has item 3; the catalogue has 3"), "{e}");
        let mut bad = t.clone();
        bad.times[1] = f64::NAN;
        assert!(
            check(&bad, 4, "s")
                .unwrap_err()
                .to_string()
                .contains("event 1 has time NaN")
        );
        let empty = SessionTable {
            offsets: vec![0],
            items: vec![],
            times: vec![],
        };
        let back = decode(encode(&empty, "s").unwrap().into(), "s").unwrap();
        assert_eq!(back, empty);
    }
}
