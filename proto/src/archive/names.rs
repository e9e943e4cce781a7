//! Object names inside the archive: `date=YYYY-MM-DD/<first:020>-<last:020>.parquet` and
//! `_archive/checkpoint.json`, written and recognised in one place.

use std::fmt;

use super::Date;

/// The partition directory prefix: `date=2024-02-29`.
pub(crate) const PARTITION_PREFIX: &str = "date=";
/// Extension of the data files.
pub(crate) const EXTENSION: &str = ".parquet";
/// The archiver's own directory (its name starts with `_`, which query engines treat as hidden).
pub const META_DIR: &str = "_archive";
/// The checkpoint file inside [`META_DIR`].
pub const CHECKPOINT_FILE: &str = "checkpoint.json";
/// Width of a position in a file name: every u64 fits, and names sort in position order.
const POSITION_WIDTH: usize = 20;

/// The partition directory name of a day.
pub fn partition_name(date: Date) -> String {
    format!("{PARTITION_PREFIX}{date}")
}

/// The day a partition directory name stands for, or `None` if it is not one.
pub fn parse_partition(name: &str) -> Option<Date> {
    name.strip_prefix(PARTITION_PREFIX)?.parse().ok()
}

/// One data file of the archive, identified by its day and the log positions it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArchiveFile {
    /// The UTC day of every event in the file (by event time).
    pub date: Date,
    /// The smallest log position in the file.
    pub first: u64,
    /// The largest log position in the file.
    pub last: u64,
}

impl ArchiveFile {
    /// The file's name inside its partition: `00000000000000000101-00000000000000000200.parquet`.
    pub fn file_name(&self) -> String {
        format!(
            "{:0w$}-{:0w$}{EXTENSION}",
            self.first,
            self.last,
            w = POSITION_WIDTH
        )
    }

    /// `date=YYYY-MM-DD/<first>-<last>.parquet`, relative to the archive's root.
    pub fn relative_path(&self) -> String {
        format!("{}/{}", partition_name(self.date), self.file_name())
    }

    /// Recognises a data file's name inside the partition of `date`. `None` for anything else (a
    /// temporary upload, a `_SUCCESS` marker), and for a range whose first exceeds its last.
    pub fn parse(date: Date, file_name: &str) -> Option<ArchiveFile> {
        let stem = file_name.strip_suffix(EXTENSION)?;
        let (first, last) = stem.split_once('-')?;
        let position = |s: &str| {
            (s.len() == POSITION_WIDTH && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse::<u64>().ok())
                .flatten()
        };
        let (first, last) = (position(first)?, position(last)?);
        (first <= last).then_some(ArchiveFile { date, first, last })
    }
}

impl fmt::Display for ArchiveFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.relative_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Date {
        s.parse().unwrap()
    }

    #[test]
    fn file_names_are_fixed_width_and_parse_back() {
        let f = ArchiveFile {
            date: d("2024-02-29"),
            first: 101,
            last: 200,
        };
        assert_eq!(
            f.relative_path(),
            "date=2024-02-29/00000000000000000101-00000000000000000200.parquet"
        );
        assert_eq!(ArchiveFile::parse(f.date, &f.file_name()), Some(f));
        let max = ArchiveFile {
            date: Date::MAX,
            first: u64::MAX,
            last: u64::MAX,
        };
        assert_eq!(ArchiveFile::parse(max.date, &max.file_name()), Some(max));
        // Lexicographic order of names is position order.
        let g = ArchiveFile { first: 99, ..f };
        assert!(g.file_name() < f.file_name());
    }

    #[test]
    fn foreign_names_are_not_data_files() {
        let date = d("2024-01-01");
        for name in [
            "_SUCCESS",
            "00000000000000000101-00000000000000000200.parquet.tmp",
            "101-200.parquet",
            "00000000000000000200-00000000000000000101.parquet",
            "0000000000000000010a-00000000000000000200.parquet",
            "99999999999999999999-99999999999999999999.parquet",
            "00000000000000000101_00000000000000000200.parquet",
        ] {
            assert_eq!(ArchiveFile::parse(date, name), None, "{name}");
        }
    }

    #[test]
    fn partitions_parse_only_real_days() {
        assert_eq!(parse_partition("date=2024-02-29"), Some(d("2024-02-29")));
        assert_eq!(partition_name(d("2024-02-29")), "date=2024-02-29");
        for name in ["date=2023-02-29", "day=2024-01-01", "date=", "_archive"] {
            assert_eq!(parse_partition(name), None, "{name}");
        }
    }
}
