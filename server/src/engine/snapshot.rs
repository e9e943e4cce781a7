//! Session snapshots: every live session's state (hidden vector, recent items, recent client_seqs,
//! counts and times) as of one log position, written atomically (temp file, fsync, rename, directory
//! fsync) so that recovery replays only the log after it.
//!
//! Format (little-endian): the magic `LRSNAP\0\x01`; a u32-length-prefixed JSON header (position, time,
//! model, hidden width, counts); the item dictionary (every external item id the sessions mention,
//! each u32-length-prefixed); then per session, least recently used first: id, events, last_seen_ms,
//! idle_ms, state version, recent items (u32 indices into the dictionary), recent client_seqs, and
//! `hidden` f32s; then (format 2) the trending counts, per item its dictionary index and its count
//! in the log domain (an f64); then (format 3, a replica's snapshot: the header names its writer)
//! per session, in the same order, the log position it is known up to and the writer_seq its entry
//! was created at; finally a CRC-32 of everything before it. Item ids are stored, never catalogue
//! indices: the next model may number its catalogue differently. Formats 1 (no trending counts) and
//! 2 are still read.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lambdarec_eventlog::Position;
use serde::{Deserialize, Serialize};

use super::ModelView;

const MAGIC: &[u8; 8] = b"LRSNAP\0\x01";
const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".bin";
/// Snapshots kept: the newest and the one before it (the log is released below the older one, so a
/// damaged newest snapshot can be skipped without losing events).
const KEEP: usize = 2;

/// One session as the batcher captured it.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionImage {
    pub id: Arc<str>,
    pub events: u64,
    /// Item indices under the image's model, new items after its catalogue (the writer turns them
    /// into ids).
    pub recent: Vec<u32>,
    pub seqs: Vec<u64>,
    pub last_seen_ms: i64,
    /// Time since the session was last used, so a restore keeps its TTL and LRU place.
    pub idle_ms: u64,
    pub state_version: Option<Arc<str>>,
    pub hidden: Vec<f32>,
    /// Replicas: every record of the session in the shared log up to this position is in the
    /// state (0 elsewhere).
    pub log_floor: u64,
    /// Replicas: the writer_seq the entry was created at; the writer's records from it up to the
    /// image's writer_seq are in the state too.
    pub own_from: u64,
}

/// Every live session, least recently used first, as of log position `position`.
pub struct SnapshotImage {
    /// Stamped by the journal: the last record this image reflects.
    pub position: Position,
    pub taken_ms: i64,
    pub view: Arc<ModelView>,
    /// Ids of the new items (index `n_items + j` is `new_items[j]`).
    pub new_items: Vec<String>,
    pub sessions: Vec<SessionImage>,
    /// Trending's counts (items as the sessions' are: indices under the image's model).
    pub trending: Option<TrendImage>,
    /// Replicas: the name this server writes records under and the writer_seq of its next record at
    /// the capture.
    pub writer: Option<(Arc<str>, u64)>,
}

/// Trending's state: its half-life and `Trending::entries` (item, count in the log domain).
#[derive(Clone, Debug, PartialEq)]
pub struct TrendImage {
    pub half_life_s: f64,
    pub entries: Vec<(u32, f64)>,
}

impl SnapshotImage {
    fn item_id(&self, i: u32) -> &str {
        let n = self.view.n_items();
        if (i as usize) < n {
            self.view.item_id(i)
        } else {
            self.new_items
                .get(i as usize - n)
                .map_or("", String::as_str)
        }
    }
}

/// The header of a snapshot file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub format: u32,
    pub position: Position,
    pub taken_ms: i64,
    pub model_name: String,
    pub model_version: String,
    pub hidden: usize,
    pub sessions: usize,
    pub items: usize,
    /// Trending's half-life (format 2; None: no trending counts follow the sessions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trend_half_life_s: Option<f64>,
    /// Items with a trending count.
    #[serde(default)]
    pub trending: usize,
    /// A replica's snapshot (format 3): the name its server wrote records under; each session's log
    /// position and first writer_seq follow the trending counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<String>,
    /// The writer_seq of that server's next record at the capture: its records below it (from each
    /// session's first writer_seq on) are in the sessions' states, later ones are not.
    #[serde(default)]
    pub writer_seq: u64,
}

/// A snapshot read back: sessions with their recent items as indices into `items`.
#[derive(Debug)]
pub struct LoadedSnapshot {
    pub path: PathBuf,
    pub header: SnapshotHeader,
    pub items: Vec<String>,
    pub sessions: Vec<SessionImage>,
    /// Trending's counts, items as indices into `items` (None in format 1).
    pub trending: Option<TrendImage>,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a valid snapshot: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

/// The snapshot directory.
#[derive(Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
}

impl SnapshotStore {
    /// Opens (creating) the directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, SnapshotError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(SnapshotStore { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Positions of the snapshots in the directory, oldest first.
    pub fn positions(&self) -> Result<Vec<(Position, PathBuf)>, SnapshotError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let path = entry.map_err(io(&self.dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let position = name
                .strip_prefix(PREFIX)
                .and_then(|n| n.strip_suffix(SUFFIX))
                .and_then(|n| n.parse::<Position>().ok());
            if let Some(p) = position {
                out.push((p, path));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Writes `image` durably and deletes snapshots beyond the newest [`KEEP`]; returns the
    /// positions kept, oldest first.
    pub fn write(&mut self, image: &SnapshotImage) -> Result<Vec<Position>, SnapshotError> {
        let name = format!("{PREFIX}{:020}{SUFFIX}", image.position);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let file = File::create(&tmp).map_err(io(&tmp))?;
        let mut w = Crc32Writer::new(BufWriter::new(file));
        encode(image, &mut w).map_err(io(&tmp))?;
        let crc = w.crc.clone().finalize();
        let mut inner = w.inner;
        inner.write_all(&crc.to_le_bytes()).map_err(io(&tmp))?;
        let file = inner.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
        file.sync_all().map_err(io(&tmp))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&self.dir)?;
        let all = self.positions()?;
        let excess = all.len().saturating_sub(KEEP);
        for (_, old) in &all[..excess] {
            fs::remove_file(old).map_err(io(old))?;
        }
        if excess > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(all[excess..].iter().map(|(p, _)| *p).collect())
    }

    /// Reads one snapshot file, checking its CRC.
    pub fn read(path: &Path) -> Result<LoadedSnapshot, SnapshotError> {
        let invalid = |reason: String| SnapshotError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|f| BufReader::new(f).read_to_end(&mut bytes))
            .map_err(io(path))?;
        if bytes.len() < MAGIC.len() + 4 {
            return Err(invalid(format!("only {} bytes", bytes.len())));
        }
        let (body, trailer) = bytes.split_at(bytes.len() - 4);
        let want = u32::from_le_bytes(trailer.try_into().expect("4 bytes"));
        if crc32fast::hash(body) != want {
            return Err(invalid("checksum mismatch (damaged or cut short)".into()));
        }
        decode(body)
            .map_err(invalid)
            .map(|(header, items, sessions, trending)| LoadedSnapshot {
                path: path.to_path_buf(),
                header,
                items,
                sessions,
                trending,
            })
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), SnapshotError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

struct Crc32Writer<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Crc32Writer<W> {
    fn new(inner: W) -> Self {
        Crc32Writer {
            inner,
            crc: crc32fast::Hasher::new(),
        }
    }
}

impl<W: Write> Write for Crc32Writer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn put_str(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u32).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn encode(image: &SnapshotImage, w: &mut impl Write) -> std::io::Result<()> {
    // The dictionary: every item the sessions mention, numbered in order of first mention.
    let mut dict: HashMap<u32, u32> = HashMap::new();
    let mut items: Vec<u32> = Vec::new();
    let trend_items = image
        .trending
        .iter()
        .flat_map(|t| t.entries.iter().map(|e| e.0));
    for i in image
        .sessions
        .iter()
        .flat_map(|s| s.recent.iter().copied())
        .chain(trend_items)
    {
        dict.entry(i).or_insert_with(|| {
            items.push(i);
            items.len() as u32 - 1
        });
    }
    let header = SnapshotHeader {
        format: 3,
        position: image.position,
        taken_ms: image.taken_ms,
        model_name: image.view.name.clone(),
        model_version: image.view.version.to_string(),
        hidden: image.view.hidden,
        sessions: image.sessions.len(),
        items: items.len(),
        trend_half_life_s: image.trending.as_ref().map(|t| t.half_life_s),
        trending: image.trending.as_ref().map_or(0, |t| t.entries.len()),
        writer: image.writer.as_ref().map(|(w, _)| w.to_string()),
        writer_seq: image.writer.as_ref().map_or(0, |&(_, seq)| seq),
    };
    w.write_all(MAGIC)?;
    let json = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
    w.write_all(&(json.len() as u32).to_le_bytes())?;
    w.write_all(&json)?;
    for &i in &items {
        put_str(w, image.item_id(i))?;
    }
    for s in &image.sessions {
        put_str(w, &s.id)?;
        w.write_all(&s.events.to_le_bytes())?;
        w.write_all(&s.last_seen_ms.to_le_bytes())?;
        w.write_all(&s.idle_ms.to_le_bytes())?;
        put_str(w, s.state_version.as_deref().unwrap_or(""))?;
        w.write_all(&(s.recent.len() as u32).to_le_bytes())?;
        for i in &s.recent {
            w.write_all(&dict[i].to_le_bytes())?;
        }
        w.write_all(&(s.seqs.len() as u32).to_le_bytes())?;
        for q in &s.seqs {
            w.write_all(&q.to_le_bytes())?;
        }
        if s.hidden.len() != header.hidden {
            return Err(std::io::Error::other(format!(
                "session {:?} has a {}-wide state; the model's is {}",
                s.id,
                s.hidden.len(),
                header.hidden
            )));
        }
        for v in &s.hidden {
            w.write_all(&v.to_le_bytes())?;
        }
    }
    for &(i, key) in image.trending.iter().flat_map(|t| &t.entries) {
        w.write_all(&dict[&i].to_le_bytes())?;
        w.write_all(&key.to_le_bytes())?;
    }
    if header.writer.is_some() {
        for s in &image.sessions {
            w.write_all(&s.log_floor.to_le_bytes())?;
            w.write_all(&s.own_from.to_le_bytes())?;
        }
    }
    Ok(())
}

/// A bounds-checked cursor over the snapshot body.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("truncated at byte {}", self.at))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn str(&mut self) -> Result<&'a str, String> {
        let n = self.u32()? as usize;
        let at = self.at;
        std::str::from_utf8(self.take(n)?).map_err(|e| format!("bad UTF-8 at byte {at}: {e}"))
    }
    /// A count of items of at least `min_bytes` each, checked against what is left.
    fn count(&mut self, min_bytes: usize) -> Result<usize, String> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_bytes) > self.bytes.len() - self.at {
            return Err(format!(
                "count {n} at byte {} exceeds the file",
                self.at - 4
            ));
        }
        Ok(n)
    }
}

type Decoded = (
    SnapshotHeader,
    Vec<String>,
    Vec<SessionImage>,
    Option<TrendImage>,
);

fn decode(body: &[u8]) -> Result<Decoded, String> {
    let mut c = Cursor { bytes: body, at: 0 };
    if c.take(MAGIC.len())? != MAGIC {
        return Err("wrong magic: not a lambdarec snapshot (or another format version)".into());
    }
    let n = c.u32()? as usize;
    let header: SnapshotHeader =
        serde_json::from_slice(c.take(n)?).map_err(|e| format!("bad header: {e}"))?;
    if !matches!(header.format, 1..=3) {
        return Err(format!(
            "snapshot format {} is not supported",
            header.format
        ));
    }
    let items = (0..header.items)
        .map(|_| c.str().map(str::to_string))
        .collect::<Result<Vec<_>, _>>()?;
    let mut sessions = Vec::with_capacity(header.sessions.min(body.len() / 32));
    for _ in 0..header.sessions {
        let id: Arc<str> = Arc::from(c.str()?);
        let events = c.u64()?;
        let last_seen_ms = c.u64()? as i64;
        let idle_ms = c.u64()?;
        let version = c.str()?;
        let state_version = (!version.is_empty()).then(|| Arc::from(version));
        let n_recent = c.count(4)?;
        let recent = (0..n_recent)
            .map(|_| c.u32())
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(bad) = recent.iter().find(|&&i| i as usize >= items.len()) {
            return Err(format!(
                "session {id:?} names item {bad} of {}",
                items.len()
            ));
        }
        let n_seqs = c.count(8)?;
        let seqs = (0..n_seqs)
            .map(|_| c.u64())
            .collect::<Result<Vec<_>, _>>()?;
        let hidden = c
            .take(header.hidden * 4)?
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4")))
            .collect();
        sessions.push(SessionImage {
            id,
            events,
            recent,
            seqs,
            last_seen_ms,
            idle_ms,
            state_version,
            hidden,
            log_floor: 0,
            own_from: 0,
        });
    }
    let trending = match header.trend_half_life_s {
        Some(h) if header.format >= 2 => {
            if !(h > 0.0 && h.is_finite()) {
                return Err(format!("trending half-life {h} is not a positive time"));
            }
            if header.trending.saturating_mul(12) > body.len() - c.at {
                return Err(format!(
                    "{} trending counts exceed the file",
                    header.trending
                ));
            }
            let mut entries = Vec::with_capacity(header.trending);
            for _ in 0..header.trending {
                let i = c.u32()?;
                let key = f64::from_bits(c.u64()?);
                if i as usize >= items.len() || !key.is_finite() {
                    return Err(format!("bad trending count: item {i}, count {key}"));
                }
                entries.push((i, key));
            }
            Some(TrendImage {
                half_life_s: h,
                entries,
            })
        }
        _ => None,
    };
    if header.format >= 3 && header.writer.is_some() {
        for s in &mut sessions {
            s.log_floor = c.u64()?;
            s.own_from = c.u64()?;
        }
    }
    if c.at != body.len() {
        return Err(format!("{} trailing bytes", body.len() - c.at));
    }
    Ok((header, items, sessions, trending))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambdarec_kernels::Dtype;
    use lambdarec_trainer::data::ItemVocab;

    fn view() -> Arc<ModelView> {
        let ids = (0..6).map(|i| format!("item-{i}")).collect();
        Arc::new(ModelView {
            generation: 1,
            name: "m".into(),
            version: Arc::from("v7"),
            store: "memory://".into(),
            vocab: ItemVocab::new(ids, vec![1; 6]),
            hidden: 3,
            dtype: Dtype::F32,
            device: "cpu".into(),
            manifest_json: "{}".into(),
            weights: lambdarec_trainer::blend::Weights::GRU,
            trend_half_life_s: 3600.0,
            default_strategy: lambdarec_trainer::blend::Strategy::Gru,
            knn: lambdarec_trainer::knn::KnnParams {
                capacity: 1000,
                ..Default::default()
            },
        })
    }

    fn image(position: Position) -> SnapshotImage {
        let session = |id: &str, recent: Vec<u32>| SessionImage {
            id: Arc::from(id),
            events: recent.len() as u64 + 10,
            seqs: vec![5, 9],
            last_seen_ms: 1_700_000_000_000,
            idle_ms: 1234,
            state_version: Some(Arc::from("v7")),
            hidden: vec![0.25, -1.5, 3.0e-7],
            recent,
            log_floor: 0,
            own_from: 0,
        };
        SnapshotImage {
            position,
            taken_ms: 42,
            view: view(),
            new_items: Vec::new(),
            sessions: vec![session("a", vec![4, 1, 4]), session("bé", vec![])],
            trending: Some(TrendImage {
                half_life_s: 600.0,
                entries: vec![(1, 12.5), (5, -3.0e9)],
            }),
            writer: None,
        }
    }

    #[test]
    fn round_trips_and_keeps_the_newest_two() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SnapshotStore::open(dir.path().join("snaps")).unwrap();
        assert_eq!(store.write(&image(10)).unwrap(), vec![10]);
        assert_eq!(store.write(&image(20)).unwrap(), vec![10, 20]);
        assert_eq!(store.write(&image(30)).unwrap(), vec![20, 30]);
        let files = store.positions().unwrap();
        assert_eq!(files.iter().map(|f| f.0).collect::<Vec<_>>(), vec![20, 30]);
        let loaded = SnapshotStore::read(&files[1].1).unwrap();
        assert_eq!(loaded.header.position, 30);
        assert_eq!(loaded.header.model_version, "v7");
        // Recent items come back as dictionary indices naming the same external ids, and so do
        // trending's (after the sessions' in the dictionary).
        assert_eq!(loaded.items, vec!["item-4", "item-1", "item-5"]);
        assert_eq!(
            loaded.trending,
            Some(TrendImage {
                half_life_s: 600.0,
                entries: vec![(1, 12.5), (2, -3.0e9)],
            })
        );
        let want = image(30).sessions;
        assert_eq!(loaded.sessions[0].recent, vec![0, 1, 0]);
        assert_eq!(
            loaded.sessions[1],
            SessionImage {
                recent: vec![],
                ..want[1].clone()
            }
        );
        assert_eq!(loaded.sessions[0].hidden, want[0].hidden);
        assert_eq!(loaded.sessions[0].seqs, want[0].seqs);
    }

    #[test]
    fn format_1_without_trending_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SnapshotStore::open(dir.path()).unwrap();
        let mut old = image(3);
        old.trending = None;
        store.write(&old).unwrap();
        let path = store.positions().unwrap()[0].1.clone();
        let bytes = fs::read(&path).unwrap();
        let body = &bytes[..bytes.len() - 4];
        let text = String::from_utf8_lossy(body).into_owned();
        assert!(text.contains("\"format\":3") && !text.contains("trend_half_life_s"));
        // The same bytes as format 1 wrote them (no writer: no replica block): only the header's
        // format differs.
        let at = body.windows(10).position(|w| w == b"\"format\":3").unwrap();
        let mut v1 = body.to_vec();
        v1[at + 9] = b'1';
        v1.extend_from_slice(&crc32fast::hash(&v1).to_le_bytes());
        fs::write(&path, &v1).unwrap();
        let loaded = SnapshotStore::read(&path).unwrap();
        assert_eq!(loaded.header.format, 1);
        assert_eq!(loaded.trending, None);
        assert_eq!(loaded.sessions.len(), 2);
    }

    #[test]
    fn a_replicas_snapshot_keeps_each_sessions_log_position() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SnapshotStore::open(dir.path()).unwrap();
        let mut replica = image(5);
        replica.writer = Some((Arc::from("50051-7-abc"), 77));
        replica.sessions[0].log_floor = 1234;
        replica.sessions[0].own_from = 12;
        replica.sessions[1].log_floor = 99;
        store.write(&replica).unwrap();
        let loaded = SnapshotStore::read(&store.positions().unwrap()[0].1).unwrap();
        assert_eq!(loaded.header.writer.as_deref(), Some("50051-7-abc"));
        assert_eq!(loaded.header.writer_seq, 77);
        let floors: Vec<(u64, u64)> = loaded
            .sessions
            .iter()
            .map(|s| (s.log_floor, s.own_from))
            .collect();
        assert_eq!(floors, [(1234, 12), (99, 0)]);
    }

    #[test]
    fn damage_is_detected_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SnapshotStore::open(dir.path()).unwrap();
        store.write(&image(7)).unwrap();
        let path = store.positions().unwrap()[0].1.clone();
        let mut bytes = fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let err = SnapshotStore::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("checksum") && err.contains("snapshot-"),
            "{err}"
        );
        fs::write(&path, &bytes[..mid]).unwrap();
        assert!(SnapshotStore::read(&path).is_err());
    }
}
