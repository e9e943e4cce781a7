//! Reading interaction logs stored as parquet, through the `parquet` crate's synchronous arrow
//! reader, into the same [`LogBuilder`] the text reader uses (so the rules are the same).

use std::fs::File;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, Float64Type, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use lambdarec_proto::archive::{check_pages, guard_parquet};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::reader::{Columns, DEFAULT_SESSION_GAP, LogBuilder, ReadOptions, resolve_columns};
use super::timefmt::parse_time;
use super::{DataError, Location, RawLog};

const BATCH_ROWS: usize = 8192;

fn is_text(dt: &DataType) -> bool {
    matches!(
        dt,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

/// Session, user and item ids may be integers or strings (dictionary-encoded or not).
fn key_type_ok(dt: &DataType) -> bool {
    match dt {
        DataType::Dictionary(_, value) => key_type_ok(value),
        dt => dt.is_integer() || is_text(dt),
    }
}

fn time_type_ok(dt: &DataType) -> bool {
    match dt {
        DataType::Dictionary(_, value) => is_text(value),
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => true,
        dt => dt.is_integer() || dt.is_floating() || is_text(dt),
    }
}

/// One batch's time column: numbers already in seconds, or text to parse per row.
enum TimeValues {
    Secs {
        values: Vec<Option<f64>>,
        date_only: bool,
    },
    Text(StringArray),
}

pub(crate) fn read_parquet(
    path: &str,
    file: File,
    opts: &ReadOptions,
) -> Result<RawLog, DataError> {
    let pq_err = |source| DataError::Parquet {
        path: path.to_string(),
        source,
    };
    let pages = file.try_clone().map_err(|source| DataError::Io {
        path: path.to_string(),
        source,
    })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(pq_err)?;
    check_pages(builder.metadata(), &pages).map_err(pq_err)?;
    let schema = builder.schema().clone();
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let cols = resolve_columns(path, &names, opts)?;
    let unsupported = |col: usize, role| DataError::UnsupportedType {
        path: path.to_string(),
        column: names[col].clone(),
        role,
        data_type: schema.field(col).data_type().to_string(),
    };
    for (col, role) in [
        (cols.key, "a session or user id"),
        (cols.item, "an item id"),
    ] {
        if !key_type_ok(schema.field(col).data_type()) {
            return Err(unsupported(col, role));
        }
    }
    if !time_type_ok(schema.field(cols.time).data_type()) {
        return Err(unsupported(cols.time, "a time"));
    }
    if let Some(tf) = cols.timeframe
        && !schema.field(tf).data_type().is_numeric()
    {
        return Err(unsupported(tf, "a time offset"));
    }

    // Read only the columns we use: a log file may carry many more.
    let mut wanted: Vec<usize> = [
        Some(cols.key),
        Some(cols.item),
        Some(cols.time),
        cols.timeframe,
    ]
    .into_iter()
    .flatten()
    .collect();
    wanted.sort_unstable();
    wanted.dedup();
    let pos = |col: usize| wanted.binary_search(&col).unwrap_or_default();
    let mask = ProjectionMask::roots(builder.parquet_schema(), wanted.iter().copied());
    let reader = builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(pq_err)?;

    let conv = |col: usize, to: &DataType, a: &ArrayRef| {
        cast(a.as_ref(), to).map_err(|source| DataError::Arrow {
            path: path.to_string(),
            context: format!("converting column \"{}\"", names[col]),
            source,
        })
    };
    let mut log = LogBuilder::new(path, opts.skip_bad_lines);
    let mut row = 0usize;
    let mut reader = reader;
    while let Some(batch) = guard_parquet(|| reader.next()).map_err(pq_err)? {
        let batch = batch.map_err(|source| DataError::Arrow {
            path: path.to_string(),
            context: "reading record batches".to_string(),
            source,
        })?;
        let key = conv(cols.key, &DataType::Utf8, batch.column(pos(cols.key)))?;
        let item = conv(cols.item, &DataType::Utf8, batch.column(pos(cols.item)))?;
        let time = time_values(batch.column(pos(cols.time)), |to, a| conv(cols.time, to, a))?;
        let timeframe = match cols.timeframe {
            Some(tf) => Some(conv(tf, &DataType::Float64, batch.column(pos(tf)))?),
            None => None,
        };
        let timeframe = timeframe.as_ref().map(|a| a.as_primitive::<Float64Type>());
        let (key, item) = (key.as_string::<i32>(), item.as_string::<i32>());
        for r in 0..batch.num_rows() {
            row += 1;
            match row_values(&names, &cols, key, item, &time, timeframe, r) {
                Ok((k, i, t)) => log.push(k, i, t),
                Err(message) => log.bad(Location::Row(row), message)?,
            }
        }
    }
    let gap = cols
        .by_user
        .then(|| opts.session_gap.unwrap_or(DEFAULT_SESSION_GAP));
    Ok(log.finish(gap))
}

fn time_values(
    a: &ArrayRef,
    conv: impl Fn(&DataType, &ArrayRef) -> Result<ArrayRef, DataError>,
) -> Result<TimeValues, DataError> {
    fn collect<T: arrow::datatypes::ArrowPrimitiveType>(
        a: &ArrayRef,
        f: impl Fn(T::Native) -> f64,
    ) -> Vec<Option<f64>> {
        a.as_primitive::<T>().iter().map(|v| v.map(&f)).collect()
    }
    let secs = |values, date_only| TimeValues::Secs { values, date_only };
    Ok(match a.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => {
            secs(collect::<TimestampSecondType>(a, |v| v as f64), false)
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => secs(
            collect::<TimestampMillisecondType>(a, |v| v as f64 / 1e3),
            false,
        ),
        DataType::Timestamp(TimeUnit::Microsecond, _) => secs(
            collect::<TimestampMicrosecondType>(a, |v| v as f64 / 1e6),
            false,
        ),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => secs(
            collect::<TimestampNanosecondType>(a, |v| v as f64 / 1e9),
            false,
        ),
        DataType::Date32 => secs(collect::<Date32Type>(a, |d| f64::from(d) * 86_400.0), true),
        DataType::Date64 => secs(collect::<Date64Type>(a, |ms| ms as f64 / 1e3), true),
        dt if dt.is_numeric() => {
            let f = conv(&DataType::Float64, a)?;
            secs(f.as_primitive::<Float64Type>().iter().collect(), false)
        }
        _ => TimeValues::Text(conv(&DataType::Utf8, a)?.as_string::<i32>().clone()),
    })
}

/// The key, item and time of one row, or what is wrong with it.
fn row_values<'a>(
    names: &[String],
    cols: &Columns,
    key: &'a StringArray,
    item: &'a StringArray,
    time: &TimeValues,
    timeframe: Option<&Float64Array>,
    r: usize,
) -> Result<(&'a str, &'a str, f64), String> {
    let null = |col: usize| format!("column \"{}\": null value", names[col]);
    let text = |a: &'a StringArray, col: usize| -> Result<&'a str, String> {
        if a.is_null(r) {
            return Err(null(col));
        }
        let v = a.value(r);
        if v.is_empty() {
            return Err(format!("column \"{}\": empty value", names[col]));
        }
        Ok(v)
    };
    let k = text(key, cols.key)?;
    let i = text(item, cols.item)?;
    let (secs, date_only) = match time {
        TimeValues::Secs { values, date_only } => match values[r] {
            Some(v) if v.is_finite() => (v, *date_only),
            Some(v) => {
                return Err(format!(
                    "column \"{}\": cannot parse \"{v}\" as a time",
                    names[cols.time]
                ));
            }
            None => return Err(null(cols.time)),
        },
        TimeValues::Text(a) => {
            if a.is_null(r) {
                return Err(null(cols.time));
            }
            let p = parse_time(a.value(r)).ok_or_else(|| {
                format!(
                    "column \"{}\": cannot parse \"{}\" as a time",
                    names[cols.time],
                    a.value(r)
                )
            })?;
            (p.secs, p.date_only)
        }
    };
    match (timeframe, cols.timeframe) {
        (Some(tf), Some(tf_col)) if date_only => {
            if tf.is_null(r) {
                return Err(null(tf_col));
            }
            Ok((k, i, secs + tf.value(r) / 1000.0))
        }
        _ => Ok((k, i, secs)),
    }
}
