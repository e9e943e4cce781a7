//! Turning raw logs into a training set the GRU4Rec way: iterate the item-support and
//! session-length filters until stable, split by session end time (or take a given test log),
//! build the popularity-ordered item vocabulary, and map the test set onto it.

use std::collections::HashMap;
use std::fmt;

use sha2::{Digest, Sha256};

use super::{DataError, RawLog};

/// Knobs of the GRU4Rec preprocessing protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct PrepareOptions {
    /// Sessions with fewer events are dropped (default 2: one input, one target).
    pub min_session_len: usize,
    /// Items with fewer events in the training log are dropped (default 5).
    pub min_item_support: usize,
    /// Seconds: sessions ending in this window before the last event form the test set (default one day).
    pub test_window: f64,
    /// Share of the sessions ending in the test window that are held out (chosen by a hash of the
    /// session key, so the same sessions each time); the others train. Default 1: all of them.
    pub test_fraction: f64,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions {
            min_session_len: 2,
            min_item_support: 5,
            test_window: 86_400.0,
            test_fraction: 1.0,
        }
    }
}

/// The catalogue a model knows: index → external id, most popular first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ItemVocab {
    pub ids: Vec<String>,
    /// Event count in the training set, per index.
    pub popularity: Vec<u64>,
    // Built from `ids` once; `ids` is public for readers, so treat a vocab as read-only.
    lookup: HashMap<String, u32>,
}

impl ItemVocab {
    /// Builds a vocabulary (e.g. a stored model's). Panics if the lengths differ; for a repeated
    /// id, `index` answers the first occurrence.
    pub fn new(ids: Vec<String>, popularity: Vec<u64>) -> Self {
        assert_eq!(ids.len(), popularity.len(), "one popularity per item id");
        let mut lookup = HashMap::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            lookup.entry(id.clone()).or_insert(i as u32);
        }
        ItemVocab {
            ids,
            popularity,
            lookup,
        }
    }

    pub fn index(&self, id: &str) -> Option<u32> {
        self.lookup.get(id).copied()
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Sessions in CSR form: session `i` is `items[offsets[i]..offsets[i + 1]]`, in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct Sessions {
    /// `len() + 1` entries, starting at 0.
    pub offsets: Vec<usize>,
    /// Vocabulary indices.
    pub items: Vec<u32>,
    /// Unix seconds, parallel to `items`.
    pub times: Vec<f64>,
    /// Session key per session.
    pub keys: Vec<String>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            offsets: vec![0],
            items: Vec::new(),
            times: Vec::new(),
            keys: Vec::new(),
        }
    }
}

impl Sessions {
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn session(&self, i: usize) -> &[u32] {
        &self.items[self.offsets[i]..self.offsets[i + 1]]
    }

    pub fn session_times(&self, i: usize) -> &[f64] {
        &self.times[self.offsets[i]..self.offsets[i + 1]]
    }

    pub fn n_events(&self) -> usize {
        self.items.len()
    }

    /// Next-item predictions an evaluation makes: every event but each session's first.
    pub fn n_predictions(&self) -> usize {
        self.n_events() - self.len()
    }

    fn n_distinct_items(&self) -> usize {
        let mut seen: Vec<u32> = self.items.clone();
        seen.sort_unstable();
        seen.dedup();
        seen.len()
    }
}

/// What preparation did, in counts, so a run can be checked against a paper's statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrepareReport {
    /// The training log (or the only log, when the test set is split off by time).
    pub raw_events: usize,
    pub raw_sessions: usize,
    pub raw_items: usize,
    /// The explicit test log (0 when split by time).
    pub raw_test_events: usize,
    pub raw_test_sessions: usize,
    /// Filter passes that removed something before the data was stable.
    pub filter_rounds: usize,
    pub items_dropped_support: usize,
    pub events_dropped_support: usize,
    pub sessions_dropped_short: usize,
    pub events_dropped_short: usize,
    /// Sessions moved to the test set by the time split (before mapping to the vocabulary).
    pub sessions_split_to_test: usize,
    pub test_events_dropped_unseen: usize,
    pub test_sessions_dropped_short: usize,
    pub test_events_dropped_short: usize,
    pub train_events: usize,
    pub train_sessions: usize,
    pub train_items: usize,
    pub test_events: usize,
    pub test_sessions: usize,
    pub test_items: usize,
}

impl fmt::Display for PrepareReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cell = |v: Option<usize>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
        let row = |f: &mut fmt::Formatter<'_>, name: &str, e, s, i| {
            writeln!(
                f,
                "{name:<32} {:>10} {:>9} {:>8}",
                cell(e),
                cell(s),
                cell(i)
            )
        };
        writeln!(
            f,
            "{:<32} {:>10} {:>9} {:>8}",
            "", "events", "sessions", "items"
        )?;
        let r = self;
        row(
            f,
            "input log",
            Some(r.raw_events),
            Some(r.raw_sessions),
            Some(r.raw_items),
        )?;
        if r.raw_test_events > 0 {
            row(
                f,
                "input test log",
                Some(r.raw_test_events),
                Some(r.raw_test_sessions),
                None,
            )?;
        }
        row(
            f,
            "dropped: rare items",
            Some(r.events_dropped_support),
            None,
            Some(r.items_dropped_support),
        )?;
        row(
            f,
            "dropped: short sessions",
            Some(r.events_dropped_short),
            Some(r.sessions_dropped_short),
            None,
        )?;
        if r.sessions_split_to_test > 0 {
            row(
                f,
                "split off by time",
                None,
                Some(r.sessions_split_to_test),
                None,
            )?;
        }
        row(
            f,
            "test: dropped unseen items",
            Some(r.test_events_dropped_unseen),
            None,
            None,
        )?;
        row(
            f,
            "test: dropped short sessions",
            Some(r.test_events_dropped_short),
            Some(r.test_sessions_dropped_short),
            None,
        )?;
        row(
            f,
            "train",
            Some(r.train_events),
            Some(r.train_sessions),
            Some(r.train_items),
        )?;
        row(
            f,
            "test",
            Some(r.test_events),
            Some(r.test_sessions),
            Some(r.test_items),
        )?;
        write!(
            f,
            "filters stable after {} round(s) that removed something",
            r.filter_rounds
        )
    }
}

/// A prepared data set: what training and evaluation consume.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub vocab: ItemVocab,
    pub train: Sessions,
    pub test: Sessions,
    pub report: PrepareReport,
}

impl Dataset {
    /// Hex SHA-256 over the vocabulary ids and the train and test sessions (keys, items, times),
    /// so a model bundle can name exactly the data it was trained on.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        let put_len = |h: &mut Sha256, n: usize| h.update((n as u64).to_le_bytes());
        h.update(b"lambdarec-dataset-v1\0");
        put_len(&mut h, self.vocab.ids.len());
        for id in &self.vocab.ids {
            put_len(&mut h, id.len());
            h.update(id.as_bytes());
        }
        for part in [&self.train, &self.test] {
            put_len(&mut h, part.len());
            for i in 0..part.len() {
                put_len(&mut h, part.keys[i].len());
                h.update(part.keys[i].as_bytes());
                put_len(&mut h, part.session(i).len());
                for (&item, &t) in part.session(i).iter().zip(part.session_times(i)) {
                    h.update(item.to_le_bytes());
                    h.update(t.to_bits().to_le_bytes());
                }
            }
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// One session while preparing: its index in the log's session list, and (item, time) events.
struct Work {
    key: u32,
    events: Vec<(u32, f64)>,
}

/// Groups a log's events by session, each in time order (stable, so file order breaks ties).
fn group(log: &RawLog) -> Vec<Work> {
    let mut by_session: Vec<Vec<(u32, f64)>> = vec![Vec::new(); log.sessions.len()];
    for e in &log.events {
        by_session[e.session as usize].push((e.item, e.time));
    }
    by_session
        .into_iter()
        .enumerate()
        .filter(|(_, events)| !events.is_empty())
        .map(|(key, mut events)| {
            events.sort_by(|a, b| a.1.total_cmp(&b.1));
            Work {
                key: key as u32,
                events,
            }
        })
        .collect()
}

fn empty(rule: String) -> DataError {
    DataError::EmptyTrain { rule }
}

/// Drops rare items, then short sessions, until a pass removes nothing: dropping a session can
/// push an item under the support threshold and the other way round.
fn filter_until_stable(
    sessions: &mut Vec<Work>,
    n_items: usize,
    opts: &PrepareOptions,
    report: &mut PrepareReport,
) -> Result<(), DataError> {
    // A session with no events is never kept, whatever the minimum length.
    let min_len = opts.min_session_len.max(1);
    loop {
        let mut support = vec![0usize; n_items];
        for s in sessions.iter() {
            for &(item, _) in &s.events {
                support[item as usize] += 1;
            }
        }
        let rare = |item: u32| support[item as usize] < opts.min_item_support;
        let rare_items = support
            .iter()
            .filter(|&&c| c > 0 && c < opts.min_item_support)
            .count();
        let mut dropped = 0;
        if rare_items > 0 {
            for s in sessions.iter_mut() {
                let before = s.events.len();
                s.events.retain(|&(item, _)| !rare(item));
                dropped += before - s.events.len();
            }
            if dropped == support.iter().sum::<usize>() {
                return Err(empty(format!(
                    "dropping items with fewer than {} events (min_item_support)",
                    opts.min_item_support
                )));
            }
        }
        report.items_dropped_support += rare_items;
        report.events_dropped_support += dropped;

        let before = sessions.len();
        let mut short_events = 0;
        sessions.retain(|s| {
            let keep = s.events.len() >= min_len;
            if !keep {
                short_events += s.events.len();
            }
            keep
        });
        let short = before - sessions.len();
        report.sessions_dropped_short += short;
        report.events_dropped_short += short_events;
        if sessions.is_empty() {
            return Err(empty(format!(
                "dropping sessions with fewer than {} events (min_session_len)",
                opts.min_session_len
            )));
        }
        if rare_items == 0 && short == 0 {
            return Ok(());
        }
        report.filter_rounds += 1;
    }
}

/// Vocabulary of the training sessions: popularity descending, ties by id ascending; also the
/// map from the log's item index to vocabulary index (`u32::MAX` for items not in train).
fn build_vocab(train: &[Work], item_ids: &[String]) -> (ItemVocab, Vec<u32>) {
    let mut count = vec![0u64; item_ids.len()];
    for s in train {
        for &(item, _) in &s.events {
            count[item as usize] += 1;
        }
    }
    let mut order: Vec<u32> = (0..item_ids.len() as u32)
        .filter(|&i| count[i as usize] > 0)
        .collect();
    order.sort_by(|&a, &b| {
        count[b as usize]
            .cmp(&count[a as usize])
            .then_with(|| item_ids[a as usize].cmp(&item_ids[b as usize]))
    });
    let mut to_vocab = vec![u32::MAX; item_ids.len()];
    for (v, &i) in order.iter().enumerate() {
        to_vocab[i as usize] = v as u32;
    }
    let ids = order
        .iter()
        .map(|&i| item_ids[i as usize].clone())
        .collect();
    let popularity = order.iter().map(|&i| count[i as usize]).collect();
    (ItemVocab::new(ids, popularity), to_vocab)
}

/// Lays sessions out in CSR form, ordered by start time (ties by key), items mapped to the vocab.
fn to_sessions(mut list: Vec<Work>, keys: &[String], to_vocab: &[u32]) -> Sessions {
    list.sort_by(|a, b| {
        a.events[0]
            .1
            .total_cmp(&b.events[0].1)
            .then_with(|| keys[a.key as usize].cmp(&keys[b.key as usize]))
    });
    let mut out = Sessions::default();
    for s in list {
        for (item, t) in s.events {
            out.items.push(to_vocab[item as usize]);
            out.times.push(t);
        }
        out.offsets.push(out.items.len());
        out.keys.push(keys[s.key as usize].clone());
    }
    out
}

/// Drops test events whose item has no vocabulary index, then sessions left too short.
fn restrict_test(
    mut test: Vec<Work>,
    to_vocab: &[u32],
    min_session_len: usize,
    report: &mut PrepareReport,
) -> Vec<Work> {
    for s in &mut test {
        let before = s.events.len();
        s.events
            .retain(|&(item, _)| to_vocab[item as usize] != u32::MAX);
        report.test_events_dropped_unseen += before - s.events.len();
    }
    let min_len = min_session_len.max(1);
    test.retain(|s| {
        let keep = s.events.len() >= min_len;
        if !keep {
            // A session emptied by the unseen-item rule counts here too (with no events).
            report.test_sessions_dropped_short += 1;
            report.test_events_dropped_short += s.events.len();
        }
        keep
    });
    test
}

fn fill_final_counts(report: &mut PrepareReport, train: &Sessions, test: &Sessions) {
    report.train_events = train.n_events();
    report.train_sessions = train.len();
    report.train_items = train.n_distinct_items();
    report.test_events = test.n_events();
    report.test_sessions = test.len();
    report.test_items = test.n_distinct_items();
}

/// Whether the session `key` is in the held-out `fraction` of sessions: a hash of the key (FNV-1a,
/// then MurmurHash3's finaliser, without which keys that differ only at the end share their high
/// bits) against the fraction of the 64-bit range, so the choice depends on the key alone.
fn held_out(key: &str, fraction: f64) -> bool {
    if fraction >= 1.0 {
        return true;
    }
    let mut h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    });
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h as f64) < fraction * u64::MAX as f64
}

/// Prepares a data set from a training log and, optionally, a separate test log.
///
/// Without a test log, the test set is the sessions whose last event falls within
/// `test_window` seconds of the log's last event. Either way the test set keeps only items of the
/// final training vocabulary and then only sessions of at least `min_session_len` events.
pub fn prepare(
    train: &RawLog,
    test: Option<&RawLog>,
    opts: &PrepareOptions,
) -> Result<Dataset, DataError> {
    let mut report = PrepareReport {
        raw_events: train.events.len(),
        raw_sessions: train.sessions.len(),
        raw_items: train.items.len(),
        raw_test_events: test.map_or(0, |t| t.events.len()),
        raw_test_sessions: test.map_or(0, |t| t.sessions.len()),
        ..PrepareReport::default()
    };
    let mut sessions = group(train);
    if sessions.is_empty() {
        return Err(empty(format!("reading {} (it has no events)", train.path)));
    }
    filter_until_stable(&mut sessions, train.items.len(), opts, &mut report)?;

    // The test sessions, and the item ids and session keys their indices refer to.
    let (train_work, test_work, test_items, test_keys) = match test {
        Some(log) => (sessions, group(log), &log.items, &log.sessions),
        None => {
            let t_max = sessions
                .iter()
                .flat_map(|s| s.events.iter().map(|e| e.1))
                .fold(f64::NEG_INFINITY, f64::max);
            let cut = t_max - opts.test_window;
            // Events are in time order, so a session ends at its last event.
            let (test_work, train_work): (Vec<Work>, Vec<Work>) =
                sessions.into_iter().partition(|s| {
                    s.events.last().is_some_and(|e| e.1 > cut)
                        && held_out(&train.sessions[s.key as usize], opts.test_fraction)
                });
            if train_work.is_empty() {
                return Err(empty(format!(
                    "the time split (every session ends within the last {} s)",
                    opts.test_window
                )));
            }
            report.sessions_split_to_test = test_work.len();
            (train_work, test_work, &train.items, &train.sessions)
        }
    };

    let (vocab, to_vocab) = build_vocab(&train_work, &train.items);
    let train_sessions = to_sessions(train_work, &train.sessions, &to_vocab);
    let test_to_vocab: Vec<u32> = test_items
        .iter()
        .map(|id| vocab.index(id).unwrap_or(u32::MAX))
        .collect();
    let test_work = restrict_test(test_work, &test_to_vocab, opts.min_session_len, &mut report);
    let test_sessions = to_sessions(test_work, test_keys, &test_to_vocab);
    fill_final_counts(&mut report, &train_sessions, &test_sessions);
    Ok(Dataset {
        vocab,
        train: train_sessions,
        test: test_sessions,
        report,
    })
}

/// Maps a further log (e.g. fresh test data for a stored model) onto an existing vocabulary:
/// events on unknown items are dropped, then sessions shorter than `min_session_len`.
pub fn prepare_eval(
    test: &RawLog,
    vocab: &ItemVocab,
    min_session_len: usize,
) -> (Sessions, PrepareReport) {
    let mut report = PrepareReport {
        raw_test_events: test.events.len(),
        raw_test_sessions: test.sessions.len(),
        ..PrepareReport::default()
    };
    let to_vocab: Vec<u32> = test
        .items
        .iter()
        .map(|id| vocab.index(id).unwrap_or(u32::MAX))
        .collect();
    let work = restrict_test(group(test), &to_vocab, min_session_len, &mut report);
    let sessions = to_sessions(work, &test.sessions, &to_vocab);
    fill_final_counts(&mut report, &Sessions::default(), &sessions);
    (sessions, report)
}
