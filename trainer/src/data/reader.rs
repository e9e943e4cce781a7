//! Reading interaction logs (delimited text or parquet) into a [`RawLog`]: column recognition,
//! time parsing, bad-line policy, id interning and sessionising of user-keyed logs.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use super::timefmt::parse_time;
use super::{DataError, Location, RawEvent, RawLog};

/// How to read a log. The default recognises the usual column names and detects the delimiter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReadOptions {
    pub session_col: Option<String>,
    pub item_col: Option<String>,
    pub time_col: Option<String>,
    /// Key the log by user and cut sessions at time gaps. Used when no session column is named
    /// or, with no flags at all, when the header has no session column.
    pub user_col: Option<String>,
    /// `None` = detect from the header line: tab, comma or semicolon.
    pub delimiter: Option<u8>,
    /// Count and report bad lines instead of failing on the first.
    pub skip_bad_lines: bool,
    /// Seconds of inactivity that end a session in a user-keyed log (default 3600).
    pub session_gap: Option<f64>,
}

/// Gap that ends a session in a user-keyed log when none is given: the usual one-hour cut.
pub const DEFAULT_SESSION_GAP: f64 = 3600.0;

const SESSION_NAMES: &[&str] = &["sessionid", "session_id", "session"];
const ITEM_NAMES: &[&str] = &["itemid", "item_id", "item"];
const TIME_NAMES: &[&str] = &["time", "timestamp", "eventdate"];
const USER_NAMES: &[&str] = &["userid", "user_id", "user"];

/// Reads a whole log. Parquet is chosen by extension (`.parquet`, `.pq`) or by its magic bytes;
/// anything else is read as delimited text with a header row.
pub fn read_log(path: &Path, opts: &ReadOptions) -> Result<RawLog, DataError> {
    let shown = path.display().to_string();
    let io_err = |source| DataError::Io {
        path: shown.clone(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let by_ext = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet") || e.eq_ignore_ascii_case("pq"));
    let mut magic = [0u8; 4];
    let by_magic = file.read_exact(&mut magic).is_ok() && &magic == b"PAR1";
    file.seek(SeekFrom::Start(0)).map_err(io_err)?;
    if by_ext || by_magic {
        super::parquet_reader::read_parquet(&shown, file, opts)
    } else {
        read_text(&shown, file, opts)
    }
}

/// Which columns play which role, as indices into the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Columns {
    /// The session column, or the user column when `by_user`.
    pub key: usize,
    pub by_user: bool,
    pub item: usize,
    pub time: usize,
    /// DIGINETICA's in-session offset (ms), used only when `time` is a date-only `eventdate`.
    pub timeframe: Option<usize>,
}

/// RecBole atomic headers are `name:type`; only the name part identifies the column.
fn base_name(name: &str) -> &str {
    name.split_once(':').map_or(name, |(base, _)| base).trim()
}

fn find_flag(
    path: &str,
    names: &[String],
    role: &'static str,
    wanted: &str,
) -> Result<usize, DataError> {
    names
        .iter()
        .position(|n| n.eq_ignore_ascii_case(wanted) || base_name(n).eq_ignore_ascii_case(wanted))
        .ok_or_else(|| DataError::UnknownColumn {
            path: path.to_string(),
            role,
            name: wanted.to_string(),
            columns: names.to_vec(),
        })
}

fn find_auto(names: &[String], candidates: &[&str]) -> Option<usize> {
    candidates.iter().find_map(|c| {
        names
            .iter()
            .position(|n| base_name(n).eq_ignore_ascii_case(c))
    })
}

pub(crate) fn resolve_columns(
    path: &str,
    names: &[String],
    opts: &ReadOptions,
) -> Result<Columns, DataError> {
    let flag = |role, f: &Option<String>| -> Result<Option<usize>, DataError> {
        f.as_deref()
            .map(|w| find_flag(path, names, role, w))
            .transpose()
    };
    let session = flag("session", &opts.session_col)?;
    let user = flag("user", &opts.user_col)?;
    let item = flag("item", &opts.item_col)?;
    let time = flag("time", &opts.time_col)?;
    let missing = |what| DataError::MissingColumn {
        path: path.to_string(),
        what,
        columns: names.to_vec(),
    };
    // An explicit flag wins over recognition; a session column wins over a user column.
    let (key, by_user) = match (session, user) {
        (Some(s), _) => (s, false),
        (None, Some(u)) => (u, true),
        (None, None) => match find_auto(names, SESSION_NAMES) {
            Some(s) => (s, false),
            None => (
                find_auto(names, USER_NAMES).ok_or_else(|| missing("session or user"))?,
                true,
            ),
        },
    };
    let item = match item {
        Some(i) => i,
        None => find_auto(names, ITEM_NAMES).ok_or_else(|| missing("item"))?,
    };
    let time = match time {
        Some(t) => t,
        None => find_auto(names, TIME_NAMES).ok_or_else(|| missing("time"))?,
    };
    let timeframe = if base_name(&names[time]).eq_ignore_ascii_case("eventdate") {
        find_auto(names, &["timeframe"])
    } else {
        None
    };
    Ok(Columns {
        key,
        by_user,
        item,
        time,
        timeframe,
    })
}

/// Turns a time cell (and, for DIGINETICA, a timeframe cell) into seconds, or a bad-line message.
pub(crate) fn cell_time(
    names: &[String],
    cols: &Columns,
    time: &str,
    timeframe: Option<&str>,
) -> Result<f64, String> {
    let parsed = parse_time(time).ok_or_else(|| {
        format!(
            "column \"{}\": cannot parse \"{time}\" as a time",
            names[cols.time]
        )
    })?;
    match (timeframe, cols.timeframe) {
        (Some(tf), Some(tf_col)) if parsed.date_only => {
            let ms: f64 = tf
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .ok_or_else(|| {
                    format!(
                        "column \"{}\": cannot parse \"{tf}\" as a number",
                        names[tf_col]
                    )
                })?;
            Ok(parsed.secs + ms / 1000.0)
        }
        _ => Ok(parsed.secs),
    }
}

/// Interns strings to dense indices in order of first appearance, allocating once per distinct id.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    map: HashMap<String, u32>,
    names: Vec<String>,
}

impl Interner {
    pub fn intern(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.map.get(s) {
            return i;
        }
        let i = u32::try_from(self.names.len()).expect("more than u32::MAX distinct ids");
        self.map.insert(s.to_string(), i);
        self.names.push(s.to_string());
        i
    }
}

/// Collects rows from any reader and assembles the [`RawLog`]: the one place where the
/// bad-line policy, interning and per-session ordering live.
#[derive(Debug)]
pub(crate) struct LogBuilder {
    path: String,
    skip_bad: bool,
    keys: Interner,
    items: Interner,
    rows: Vec<(u32, u32, f64)>,
    bad_lines: usize,
    first_bad: Option<String>,
}

impl LogBuilder {
    pub fn new(path: &str, skip_bad: bool) -> Self {
        LogBuilder {
            path: path.to_string(),
            skip_bad,
            keys: Interner::default(),
            items: Interner::default(),
            rows: Vec::new(),
            bad_lines: 0,
            first_bad: None,
        }
    }

    pub fn push(&mut self, key: &str, item: &str, time: f64) {
        let k = self.keys.intern(key);
        let i = self.items.intern(item);
        self.rows.push((k, i, time));
    }

    /// Records a bad record: an error, or (when skipping) a count and the first message.
    pub fn bad(&mut self, at: Location, message: String) -> Result<(), DataError> {
        let err = DataError::BadLine {
            path: self.path.clone(),
            at,
            message,
        };
        if !self.skip_bad {
            return Err(err);
        }
        self.bad_lines += 1;
        if self.first_bad.is_none() {
            self.first_bad = Some(err.to_string());
        }
        Ok(())
    }

    /// `session_gap` is `Some` for a user-keyed log: each user's events are cut into sessions
    /// wherever consecutive events are more than that many seconds apart.
    pub fn finish(mut self, session_gap: Option<f64>) -> RawLog {
        // Stable sort: events with equal times stay in file order.
        self.rows
            .sort_by(|a, b| a.0.cmp(&b.0).then(a.2.total_cmp(&b.2)));
        let (events, sessions) = match session_gap {
            None => (
                self.rows
                    .iter()
                    .map(|&(session, item, time)| RawEvent {
                        session,
                        item,
                        time,
                    })
                    .collect(),
                self.keys.names,
            ),
            Some(gap) => sessionise(&self.rows, &self.keys.names, gap),
        };
        RawLog {
            path: self.path,
            events,
            bad_lines: self.bad_lines,
            first_bad: self.first_bad,
            sessions,
            items: self.items.names,
        }
    }
}

/// Cuts rows sorted by (user, time) into sessions named `"{user}#{n}"`, n counting from 0.
fn sessionise(
    rows: &[(u32, u32, f64)],
    users: &[String],
    gap: f64,
) -> (Vec<RawEvent>, Vec<String>) {
    let mut events = Vec::with_capacity(rows.len());
    let mut sessions: Vec<String> = Vec::new();
    let mut prev: Option<(u32, f64)> = None;
    let mut n = 0usize;
    for &(user, item, time) in rows {
        let new_session = match prev {
            Some((u, t)) if u == user => time - t > gap,
            _ => {
                n = 0;
                true
            }
        };
        if new_session {
            sessions.push(format!("{}#{n}", users[user as usize]));
            n += 1;
        }
        prev = Some((user, time));
        events.push(RawEvent {
            session: (sessions.len() - 1) as u32,
            item,
            time,
        });
    }
    (events, sessions)
}

/// Splits one line into fields. Quoted fields (`"a,b"`, with `""` for a quote) are allowed;
/// they borrow from the line unless they contain an escaped quote.
struct Fields<'a> {
    rest: &'a str,
    delim: u8,
    done: bool,
}

impl<'a> Fields<'a> {
    fn new(line: &'a str, delim: u8) -> Self {
        Fields {
            rest: line,
            delim,
            done: false,
        }
    }

    fn quoted(&mut self) -> Result<Cow<'a, str>, String> {
        let b = self.rest.as_bytes();
        let mut i = 1;
        let mut escaped = false;
        loop {
            match b[i..].iter().position(|&c| c == b'"') {
                None => return Err("unterminated quoted field".to_string()),
                Some(p) if b.get(i + p + 1) == Some(&b'"') => {
                    escaped = true;
                    i += p + 2;
                }
                Some(p) => {
                    let inner = &self.rest[1..i + p];
                    let after = i + p + 1;
                    match b.get(after) {
                        None => {
                            self.done = true;
                            self.rest = "";
                        }
                        Some(&c) if c == self.delim => self.rest = &self.rest[after + 1..],
                        Some(_) => return Err("unexpected text after a closing quote".to_string()),
                    }
                    return Ok(if escaped {
                        Cow::Owned(inner.replace("\"\"", "\""))
                    } else {
                        Cow::Borrowed(inner)
                    });
                }
            }
        }
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Cow<'a, str>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.rest.starts_with('"') {
            let r = self.quoted();
            if r.is_err() {
                self.done = true;
            }
            return Some(r);
        }
        let field = match self.rest.bytes().position(|c| c == self.delim) {
            Some(p) => {
                let f = &self.rest[..p];
                self.rest = &self.rest[p + 1..];
                f
            }
            None => {
                self.done = true;
                self.rest
            }
        };
        Some(Ok(Cow::Borrowed(field.trim_matches(' '))))
    }
}

/// Picks the most frequent of tab, comma and semicolon in the header (ties in that order).
fn detect_delimiter(header: &str) -> u8 {
    let mut best = (0, b'\t');
    for d in [b'\t', b',', b';'] {
        let n = header.bytes().filter(|&c| c == d).count();
        if n > best.0 {
            best = (n, d);
        }
    }
    best.1
}

/// Reads the next line into `buf` without its line ending; `false` at end of file.
fn next_line(reader: &mut impl BufRead, buf: &mut Vec<u8>, path: &str) -> Result<bool, DataError> {
    buf.clear();
    let n = reader
        .read_until(b'\n', buf)
        .map_err(|source| DataError::Io {
            path: path.to_string(),
            source,
        })?;
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    Ok(n > 0)
}

fn read_text(path: &str, file: File, opts: &ReadOptions) -> Result<RawLog, DataError> {
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut buf = Vec::new();
    let mut line_no = 0usize;
    let header_err = |message: String| DataError::Header {
        path: path.to_string(),
        message,
    };

    // The header is the first non-empty line.
    let header = loop {
        if !next_line(&mut reader, &mut buf, path)? {
            return Err(header_err("no header line (the file is empty)".into()));
        }
        line_no += 1;
        let text = std::str::from_utf8(&buf)
            .map_err(|_| header_err(format!("line {line_no}: header is not valid UTF-8")))?;
        let text = text.trim_start_matches('\u{feff}');
        if !text.trim().is_empty() {
            break text.to_string();
        }
    };
    let delim = opts.delimiter.unwrap_or_else(|| detect_delimiter(&header));
    let names: Vec<String> = Fields::new(&header, delim)
        .map(|f| f.map(|f| f.trim().to_string()))
        .collect::<Result<_, _>>()
        .map_err(|m| header_err(format!("line {line_no}: {m}")))?;
    let cols = resolve_columns(path, &names, opts)?;
    let mut log = LogBuilder::new(path, opts.skip_bad_lines);

    while next_line(&mut reader, &mut buf, path)? {
        line_no += 1;
        let at = Location::Line(line_no);
        let Ok(line) = std::str::from_utf8(&buf) else {
            log.bad(at, "not valid UTF-8".into())?;
            continue;
        };
        if line.trim().is_empty() {
            continue;
        }
        match parse_row(line, delim, &names, &cols) {
            Ok((key, item, time)) => log.push(&key, &item, time),
            Err(message) => log.bad(at, message)?,
        }
    }
    let gap = cols
        .by_user
        .then(|| opts.session_gap.unwrap_or(DEFAULT_SESSION_GAP));
    Ok(log.finish(gap))
}

/// Picks the key, item and time out of one data line, or says what is wrong with it.
fn parse_row<'a>(
    line: &'a str,
    delim: u8,
    names: &[String],
    cols: &Columns,
) -> Result<(Cow<'a, str>, Cow<'a, str>, f64), String> {
    let (mut key, mut item, mut time, mut timeframe) = (None, None, None, None);
    let mut n = 0;
    for field in Fields::new(line, delim) {
        let field = field?;
        if n == cols.key {
            key = Some(field.clone());
        }
        if n == cols.item {
            item = Some(field.clone());
        }
        if n == cols.time {
            time = Some(field.clone());
        }
        if Some(n) == cols.timeframe {
            timeframe = Some(field);
        }
        n += 1;
    }
    if n != names.len() {
        return Err(format!("expected {} fields, found {n}", names.len()));
    }
    // All three are Some: the field count matched the header, and the indices come from it.
    let (key, item, time) = (
        key.unwrap_or_default(),
        item.unwrap_or_default(),
        time.unwrap_or_default(),
    );
    for (value, col) in [(&key, cols.key), (&item, cols.item)] {
        if value.is_empty() {
            return Err(format!("column \"{}\": empty value", names[col]));
        }
    }
    let secs = cell_time(names, cols, &time, timeframe.as_deref())?;
    Ok((key, item, secs))
}
