//! A synthetic click log with realistic shape (Zipf popularity, topical clusters, short sessions
//! over several days) and a planted sequential signal, for tests and the quickstart.
//!
//! The signal: every item has one fixed "successor" in its cluster that follows it with
//! probability `successor_prob`. A sequence model should learn it; a popularity baseline cannot.

use std::io::Write;
use std::path::Path;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::RawLog;
use super::reader::LogBuilder;

/// Shape of the generated log. Deterministic given the options (the seed included).
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticOptions {
    pub n_items: usize,
    pub n_sessions: usize,
    pub n_clusters: usize,
    pub seed: u64,
    /// Popularity of the item of rank r is proportional to 1 / (r + 1)^zipf_exponent.
    pub zipf_exponent: f64,
    /// Probability that the next click is the previous item's fixed successor.
    pub successor_prob: f64,
    /// Otherwise: probability that the next click stays in the previous item's cluster.
    pub cluster_stay: f64,
    /// Sessions have at least 2 events; each further one is added with this probability…
    pub continue_prob: f64,
    /// …up to this length.
    pub max_session_len: usize,
    /// Session starts are spread uniformly over this many days from `start_time`.
    pub days: f64,
    /// Unix seconds of the earliest possible session start.
    pub start_time: f64,
}

impl Default for SyntheticOptions {
    fn default() -> Self {
        SyntheticOptions {
            n_items: 1000,
            n_sessions: 8000,
            n_clusters: 25,
            seed: 42,
            zipf_exponent: 1.0,
            successor_prob: 0.5,
            cluster_stay: 0.8,
            continue_prob: 0.75,
            max_session_len: 20,
            days: 7.0,
            start_time: 1_700_000_000.0,
        }
    }
}

/// Draws an index with probability proportional to its weight, given cumulative weights.
fn draw(rng: &mut SmallRng, cumulative: &[f64]) -> usize {
    let total = cumulative.last().copied().unwrap_or(0.0);
    let x = rng.random::<f64>() * total;
    cumulative
        .partition_point(|&c| c <= x)
        .min(cumulative.len() - 1)
}

fn cumulate(weights: impl Iterator<Item = f64>) -> Vec<f64> {
    weights
        .scan(0.0, |acc, w| {
            *acc += w;
            Some(*acc)
        })
        .collect()
}

/// The generated catalogue: popularity, clusters and each item's successor.
struct Catalogue {
    global: Vec<f64>,
    cluster_of: Vec<usize>,
    members: Vec<Vec<usize>>,
    member_cumulative: Vec<Vec<f64>>,
    successor: Vec<usize>,
}

impl Catalogue {
    fn new(opts: &SyntheticOptions, rng: &mut SmallRng) -> Self {
        let n = opts.n_items.max(2);
        let n_clusters = opts.n_clusters.clamp(1, n);
        // Popularity rank is shuffled so that every cluster has popular and rare items.
        let mut rank: Vec<usize> = (0..n).collect();
        rank.shuffle(rng);
        let weight: Vec<f64> = rank
            .iter()
            .map(|&r| 1.0 / ((r + 1) as f64).powf(opts.zipf_exponent))
            .collect();
        let cluster_of: Vec<usize> = (0..n).map(|i| i % n_clusters).collect();
        let mut members = vec![Vec::new(); n_clusters];
        for i in 0..n {
            members[cluster_of[i]].push(i);
        }
        let member_cumulative: Vec<Vec<f64>> = members
            .iter()
            .map(|m| cumulate(m.iter().map(|&i| weight[i])))
            .collect();
        let global = cumulate(weight.iter().copied());
        let mut successor = vec![0; n];
        for (i, next) in successor.iter_mut().enumerate() {
            let c = cluster_of[i];
            // A popular successor is likelier, as in real "bought together" pairs; never itself.
            *next = loop {
                let j = if members[c].len() > 1 {
                    members[c][draw(rng, &member_cumulative[c])]
                } else {
                    draw(rng, &global)
                };
                if j != i {
                    break j;
                }
            };
        }
        Catalogue {
            global,
            cluster_of,
            members,
            member_cumulative,
            successor,
        }
    }

    fn next(&self, prev: usize, opts: &SyntheticOptions, rng: &mut SmallRng) -> usize {
        if rng.random::<f64>() < opts.successor_prob {
            return self.successor[prev];
        }
        if rng.random::<f64>() < opts.cluster_stay {
            let c = self.cluster_of[prev];
            return self.members[c][draw(rng, &self.member_cumulative[c])];
        }
        draw(rng, &self.global)
    }
}

/// Generates the log. Session keys are `1..=n_sessions` in order of start time; item ids are
/// `1..=n_items` (items never clicked do not appear in [`RawLog::items`]).
pub fn generate(opts: &SyntheticOptions) -> RawLog {
    let mut rng = SmallRng::seed_from_u64(opts.seed);
    let catalogue = Catalogue::new(opts, &mut rng);
    let span = opts.days.max(0.0) * 86_400.0;
    let mut starts: Vec<f64> = (0..opts.n_sessions)
        .map(|_| opts.start_time + (rng.random::<f64>() * span).floor())
        .collect();
    starts.sort_by(f64::total_cmp);

    let mut log = LogBuilder::new("synthetic", false);
    let max_len = opts.max_session_len.max(2);
    for (s, &start) in starts.iter().enumerate() {
        let key = (s + 1).to_string();
        let mut len = 2;
        while len < max_len && rng.random::<f64>() < opts.continue_prob {
            len += 1;
        }
        let mut item = draw(&mut rng, &catalogue.global);
        let mut t = start;
        for step in 0..len {
            if step > 0 {
                item = catalogue.next(item, opts, &mut rng);
                // Dwell time of 10 s to 5 min between clicks, whole milliseconds.
                t += (rng.random_range(10_000..300_000) as f64) / 1000.0;
            }
            log.push(&key, &(item + 1).to_string(), t);
        }
    }
    log.finish(None)
}

/// Writes a log as `SessionId<TAB>ItemId<TAB>Time` (times round-trip exactly), readable by
/// [`super::read_log`].
pub fn write_tsv(log: &RawLog, path: &Path) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(w, "SessionId\tItemId\tTime")?;
    for e in &log.events {
        writeln!(
            w,
            "{}\t{}\t{}",
            log.sessions[e.session as usize], log.items[e.item as usize], e.time
        )?;
    }
    w.flush()
}

/// A log's events as a server's archiver writes them: in time order, numbered from position 1, one
/// slice per UTC day (the archive's files), oldest first.
pub fn archive_days(log: &RawLog) -> Vec<Vec<lambdarec_proto::archive::ArchivedEvent>> {
    use lambdarec_proto::archive::{ArchivedEvent, Date};
    let mut events: Vec<ArchivedEvent> = log
        .events
        .iter()
        .map(|e| {
            let ms = (e.time * 1000.0).round() as i64;
            ArchivedEvent {
                position: 0,
                session_id: log.sessions[e.session as usize].clone(),
                item_id: log.items[e.item as usize].clone(),
                timestamp_ms: ms,
                received_ms: ms,
                client_seq: None,
                model_version: String::new(),
            }
        })
        .collect();
    events.sort_by_key(|e| e.timestamp_ms);
    for (n, e) in events.iter_mut().enumerate() {
        e.position = n as u64 + 1;
    }
    let day = |e: &ArchivedEvent| Date::from_unix_ms(e.timestamp_ms);
    events
        .chunk_by(|a, b| day(a) == day(b))
        .map(<[_]>::to_vec)
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::data::{PrepareOptions, ReadOptions, prepare, read_log};

    fn small() -> SyntheticOptions {
        SyntheticOptions {
            n_items: 300,
            n_sessions: 3000,
            ..SyntheticOptions::default()
        }
    }

    #[test]
    fn deterministic_from_seed() {
        let a = generate(&small());
        assert_eq!(a, generate(&small()));
        let b = generate(&SyntheticOptions { seed: 7, ..small() });
        assert_ne!(a.events, b.events);
    }

    #[test]
    fn has_realistic_shape() {
        let opts = SyntheticOptions::default();
        let log = generate(&opts);
        assert_eq!(log.sessions.len(), opts.n_sessions);
        assert!(
            log.items.len() > opts.n_items * 8 / 10,
            "{} items",
            log.items.len()
        );
        let mut lens = vec![0usize; log.sessions.len()];
        for w in log.events.windows(2) {
            if w[0].session == w[1].session {
                assert!(w[1].time > w[0].time);
            }
        }
        for e in &log.events {
            lens[e.session as usize] += 1;
        }
        assert!(lens.iter().all(|&l| (2..=20).contains(&l)));
        let mean = log.events.len() as f64 / lens.len() as f64;
        assert!((4.0..7.0).contains(&mean), "mean length {mean}");
        let (lo, hi) = log.events.iter().fold((f64::MAX, f64::MIN), |(l, h), e| {
            (l.min(e.time), h.max(e.time))
        });
        assert!(hi - lo > 6.0 * 86_400.0);
        // Zipf: the most popular 1% of items draw a clearly outsized share of the clicks.
        let mut count = vec![0usize; log.items.len()];
        for e in &log.events {
            count[e.item as usize] += 1;
        }
        count.sort_unstable_by(|a, b| b.cmp(a));
        let top: usize = count[..count.len() / 100].iter().sum();
        assert!(top as f64 / log.events.len() as f64 > 0.08);
    }

    #[test]
    fn sequential_signal_is_learnable() {
        let log = generate(&small());
        let n_train = log.sessions.len() * 4 / 5;
        // "Most frequent follower" learned on the first 80% of sessions, tested on the rest,
        // against always predicting the most popular item.
        let mut follow: HashMap<u32, HashMap<u32, usize>> = HashMap::new();
        let mut pop: HashMap<u32, usize> = HashMap::new();
        let (mut hits, mut pop_hits, mut total) = (0, 0, 0);
        let pairs = log
            .events
            .windows(2)
            .filter(|w| w[0].session == w[1].session);
        for w in pairs.clone().filter(|w| (w[0].session as usize) < n_train) {
            *follow
                .entry(w[0].item)
                .or_default()
                .entry(w[1].item)
                .or_default() += 1;
            *pop.entry(w[1].item).or_default() += 1;
        }
        let top = pop.iter().max_by_key(|(i, c)| (**c, **i)).map(|(i, _)| *i);
        for w in pairs.filter(|w| (w[0].session as usize) >= n_train) {
            let guess = follow
                .get(&w[0].item)
                .and_then(|f| f.iter().max_by_key(|(i, c)| (**c, **i)).map(|(i, _)| *i));
            hits += usize::from(guess == Some(w[1].item));
            pop_hits += usize::from(top == Some(w[1].item));
            total += 1;
        }
        let (acc, pop_acc) = (hits as f64 / total as f64, pop_hits as f64 / total as f64);
        // Expected: about 0.55 against about 0.1.
        assert!(acc > 0.4, "successor accuracy {acc}");
        assert!(
            acc > 3.0 * pop_acc,
            "successor {acc} vs popularity {pop_acc}"
        );
    }

    #[test]
    fn tsv_round_trip_and_time_split() {
        let log = generate(&small());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("synthetic.tsv");
        write_tsv(&log, &path).unwrap();
        let back = read_log(&path, &ReadOptions::default()).unwrap();
        assert_eq!(back.events, log.events);
        assert_eq!(back.sessions, log.sessions);
        assert_eq!(back.items, log.items);

        let ds = prepare(&log, None, &PrepareOptions::default()).unwrap();
        let (train, test) = (ds.train.len() as f64, ds.test.len() as f64);
        // Seven days, one of them test.
        assert!(
            (0.08..0.2).contains(&(test / (train + test))),
            "{}",
            ds.report
        );
    }
}
