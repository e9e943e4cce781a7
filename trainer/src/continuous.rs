//! Continuous training (`lambdarec train --follow`): one cycle reads a sliding window of the event
//! archive, trains a candidate warm-started from the serving version, and publishes it (moves
//! LATEST, or CANARY with `--publish canary`) only when it passes a gate against the serving
//! version on held-out recent sessions. Moving the pointers by hand is [`versions`]'s.
//!
//! The gate's events are the sessions ending in the last `test_window` seconds of the window that
//! preparation held out (a hash-chosen share of them, so that the candidate still learns the
//! items first seen that day from the others). Both versions are measured on exactly the same
//! predictions: the held-out sessions restricted to the items both catalogues hold, each version
//! under the strategy a server serves it with by default (the blend when its bundle has one) and
//! with its own speed layer, seeded as a server seeds it.
//!
//! A rejected candidate is written under its version with its verdict in the manifest, and LATEST
//! stays. A cycle whose window holds the same data as the serving version's is skipped.
//!
//! Published as the canary, a candidate is served beside LATEST's version to a share of new
//! sessions (servers started with `serve --canary-fraction`) until someone promotes it
//! (`models promote`) or stops it; the next passing candidate replaces it. With nothing serving
//! there is nothing to run a canary beside, and a passing candidate becomes LATEST.

use std::time::Instant;

use serde::Serialize;
use tracing::{info, warn};

use lambdarec_kernels::{Backend, Dtype, cpu::CpuBackend};
use lambdarec_proto::archive::{Archive, Date, DateRange};
use lambdarec_proto::bundle::{Gate, GateArm, Pointer, Store, validate_model_name};

use crate::TrainError;
use crate::blend::{self, Scored};
use crate::data::{ArchiveSource, ItemVocab, Sessions};
use crate::eval::{Metrics, evaluate_model};
use crate::export;
use crate::pipeline::{
    EvalOptions, KnnServing, LoadedModel, TrainData, TrainJob, read_train_data, served_speed_layer,
    train_candidate,
};
use crate::train::EpochStats;

mod versions;

pub use versions::{
    Promotion, Rollback, VersionInfo, list_versions, promote, rollback, start_canary, stop_canary,
};

/// One cycle's settings besides the training job.
#[derive(Clone, Debug)]
pub struct CycleOptions {
    /// The training job: `data` names the archive (its date range is set by each cycle),
    /// `warm_start` is normally [`crate::pipeline::WarmStartFrom::Latest`], `prepare.test_fraction` the share of
    /// the last day's sessions held out for the gate.
    pub job: TrainJob,
    /// Days of the archive to train on, ending with the newest day it holds.
    pub window_days: u32,
    /// A candidate passes when neither its Recall@k nor its MRR@k is below the serving version's
    /// by more than this fraction of it (0.01: up to 1% worse).
    pub margin: f64,
    /// The pointer a passing candidate moves: LATEST, or CANARY (LATEST when nothing serves).
    pub publish: Pointer,
}

/// What a cycle decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// The candidate was written and LATEST (or CANARY: the gate's `published_as`) moved to it.
    Published,
    /// The candidate was written for inspection; LATEST did not move.
    Rejected,
    /// Nothing was trained (no events, or nothing new since the serving version).
    Skipped,
}

/// A cycle's outcome, as logged and printed.
#[derive(Clone, Debug, Serialize)]
pub struct CycleReport {
    pub decision: Decision,
    pub reason: String,
    /// The candidate's version (None when skipped).
    pub version: Option<String>,
    /// The days read.
    pub range: String,
    /// The gate as written in the candidate's manifest.
    pub gate: Option<Gate>,
    pub epochs: Vec<EpochStats>,
    pub seconds: f64,
}

/// Runs one continuous-training cycle.
pub async fn run_cycle(
    opts: &CycleOptions,
    progress: impl FnMut(usize, u64, f64) + Send,
    on_epoch: impl FnMut(&EpochStats) + Send,
) -> Result<CycleReport, TrainError> {
    let started = Instant::now();
    let job = &opts.job;
    validate_model_name(&job.model_name)?;
    if !(opts.margin.is_finite() && (0.0..1.0).contains(&opts.margin)) {
        return Err(TrainError::Config(format!(
            "gate margin {}: give a fraction in [0, 1)",
            opts.margin
        )));
    }
    if opts.window_days == 0 {
        return Err(TrainError::Config(
            "the window must be at least one day".into(),
        ));
    }
    let TrainData::Archive(source) = &job.data else {
        return Err(TrainError::Config(format!(
            "continuous training reads the event archive; {} is not one",
            job.data
        )));
    };
    let skipped = |reason: String, range: String| {
        info!(%reason, "cycle skipped");
        Ok(CycleReport {
            decision: Decision::Skipped,
            reason,
            version: None,
            range,
            gate: None,
            epochs: Vec::new(),
            seconds: started.elapsed().as_secs_f64(),
        })
    };
    let Some(range) = window(source, opts.window_days).await? else {
        return skipped(format!("{} holds no events yet", source.url), String::new());
    };
    let store = Store::open(&job.store)?;
    let serving_version = store.latest_version(&job.model_name).await?;
    let job = TrainJob {
        data: TrainData::Archive(ArchiveSource {
            url: source.url.clone(),
            range,
        }),
        ..job.clone()
    };
    info!(model = %job.model_name, serving = ?serving_version, %range, "continuous-training cycle");
    let dataset = read_train_data(&job).await?.prepare(&job)?;
    // The newest version written (the serving one, or a candidate rejected since) already saw
    // exactly this data: training again would give the same model.
    let newest = store.list_versions(&job.model_name).await?.pop();
    if let Some(v) = newest {
        let manifest = store.read_manifest(&job.model_name, &v).await?;
        if manifest.data_fingerprint == dataset.fingerprint() {
            let what = match &manifest.gate {
                Some(g) if !g.published => "was trained on it and rejected",
                _ => "was trained on it",
            };
            return skipped(
                format!("no new events: version {v} {what} (same data fingerprint)"),
                range.to_string(),
            );
        }
    }
    let mut c = train_candidate(&job, &store, dataset, progress, on_epoch).await?;
    let warm_from = c
        .warm_start
        .as_ref()
        .map(|(m, _)| m.bundle.manifest.version.clone());
    let serving = match (&serving_version, c.warm_start.take()) {
        (None, _) => None,
        (Some(v), Some((m, _))) if &m.bundle.manifest.version == v => Some(m),
        (Some(v), _) => Some(LoadedModel::new(
            store.read_bundle(&job.model_name, Some(v)).await?,
        )?),
    };
    let candidate_model = CandidateView {
        weights: &c.weights,
        vocab: &c.dataset.vocab,
        train: &c.dataset.train,
        blend: c.bundle.manifest.blend.as_ref(),
    };
    let mut gate = judge(
        &candidate_model,
        serving.as_ref(),
        &c.dataset.test,
        &job.eval,
        opts.margin,
    )?;
    gate.warm_start_from = warm_from;
    drop(serving);

    // Another writer may have moved LATEST while this cycle trained: the gate compared against
    // the version it started with, so it publishes only over that one.
    if gate.published {
        let now = store.latest_version(&job.model_name).await?;
        if now != serving_version {
            gate.published = false;
            gate.reason = format!(
                "LATEST moved from {} to {} during the cycle; not publishing over it",
                serving_version.as_deref().unwrap_or("nothing"),
                now.as_deref().unwrap_or("nothing")
            );
        }
    }
    // A canary runs beside a serving version: with none, the candidate is published as LATEST.
    let pointer = match serving_version {
        Some(_) => opts.publish,
        None => Pointer::Latest,
    };
    gate.published_as = gate.published.then_some(pointer);
    c.bundle.manifest.gate = Some(gate.clone());
    let version = store
        .write_version(
            &job.model_name,
            &mut c.bundle,
            gate.published_as == Some(Pointer::Latest),
        )
        .await?;
    if gate.published_as == Some(Pointer::Canary) {
        // After the manifest, as LATEST is: a crash in between leaves a complete version that no
        // pointer names (its gate says published as the canary), which the next cycle replaces.
        store.set_canary(&job.model_name, &version).await?;
    }
    let decision = if gate.published {
        Decision::Published
    } else {
        Decision::Rejected
    };
    let line = format!(
        "candidate {version}: Recall@{k} {:.4} MRR@{k} {:.4} ({})",
        gate.candidate.recall,
        gate.candidate.mrr,
        gate.candidate.strategy,
        k = gate.k
    );
    match &decision {
        Decision::Published => {
            info!(%version, reason = %gate.reason, "{line}: published as {pointer}")
        }
        _ => warn!(%version, reason = %gate.reason, "{line}: rejected, LATEST stays"),
    }
    Ok(CycleReport {
        decision,
        reason: gate.reason.clone(),
        version: Some(version),
        range: range.to_string(),
        gate: Some(gate),
        epochs: c.epochs,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The last `days` days of the archive, ending with the newest day it holds (None: it holds none).
async fn window(source: &ArchiveSource, days: u32) -> Result<Option<DateRange>, TrainError> {
    let local = std::path::Path::new(&source.url);
    if !source.url.contains("://") && !local.is_dir() {
        return Ok(None);
    }
    let archive = Archive::find(&source.url)
        .await
        .map_err(crate::data::DataError::from)?;
    let days_held = archive
        .partitions(source.range)
        .await
        .map_err(crate::data::DataError::from)?;
    let Some(&newest) = days_held.last() else {
        return Ok(None);
    };
    let first = Date::from_unix_ms(newest.start_unix_ms() - (days as i64 - 1) * 86_400_000);
    let since = source.range.since.map_or(first, |s| s.max(first));
    Ok(Some(DateRange {
        since: Some(since),
        until: Some(newest),
    }))
}

/// The gate's comparison of two stored versions on a further log (e.g. the day after): the
/// log's sessions restricted to the items both know, each version under its default served
/// strategy; `published` says whether `candidate` passes against `serving` with `margin`.
pub fn compare(
    candidate: &LoadedModel,
    serving: &LoadedModel,
    test: &crate::data::RawLog,
    eval: &EvalOptions,
    margin: f64,
) -> Result<Gate, TrainError> {
    let (sessions, _) = crate::data::prepare_eval(test, &candidate.vocab, 2);
    let seed = seed_of(candidate);
    judge(
        &CandidateView::of(candidate, &seed),
        Some(serving),
        &sessions,
        eval,
        margin,
    )
}

/// What the gate needs of a version.
struct CandidateView<'a> {
    weights: &'a lambdarec_kernels::ModelWeights,
    vocab: &'a ItemVocab,
    /// The sessions its speed layer is seeded with.
    train: &'a Sessions,
    blend: Option<&'a lambdarec_proto::bundle::Blend>,
}

impl<'a> CandidateView<'a> {
    /// A stored version, its speed layer seeded with `seed` (its bundle's sessions, [`seed_of`]).
    fn of(m: &'a LoadedModel, seed: &'a Sessions) -> Self {
        CandidateView {
            weights: &m.weights,
            vocab: &m.vocab,
            train: seed,
            blend: m.bundle.manifest.blend.as_ref(),
        }
    }
}

/// The sessions a server seeds a stored version's speed layer with (none in older bundles).
fn seed_of(m: &LoadedModel) -> Sessions {
    m.bundle
        .sessions
        .as_ref()
        .map(export::sessions_of)
        .unwrap_or_default()
}

/// Compares the candidate with the serving version on the held-out sessions `test` (candidate
/// indices), restricted to the items both know.
fn judge(
    candidate: &CandidateView<'_>,
    serving: Option<&LoadedModel>,
    test: &Sessions,
    eval: &EvalOptions,
    margin: f64,
) -> Result<Gate, TrainError> {
    let k = eval.k as u32;
    // (sessions, predictions) both versions were measured on: all of `test` when nothing served.
    let (shared, c, s, published, reason) = match serving {
        None => {
            let c = served_metrics(candidate, test, eval)?;
            let counts = (test.len(), test.n_predictions());
            (counts, c, None, true, "no version was serving".to_string())
        }
        Some(serving) => {
            let seed = seed_of(serving);
            let serving_view = CandidateView::of(serving, &seed);
            let (ours, theirs) = shared_sessions(test, candidate.vocab, serving_view.vocab);
            let version = &serving.bundle.manifest.version;
            let c = served_metrics(candidate, &ours, eval)?;
            let s = served_metrics(&serving_view, &theirs, eval)?;
            let (published, reason) = verdict(&c, &s, ours.n_predictions(), k, margin, version);
            let counts = (ours.len(), ours.n_predictions());
            (counts, c, Some(s), published, reason)
        }
    };
    Ok(Gate {
        published,
        published_as: None,
        reason,
        serving_version: serving.map(|m| m.bundle.manifest.version.clone()),
        warm_start_from: None,
        k,
        margin,
        sessions: shared.0 as u64,
        predictions: shared.1 as u64,
        candidate: c,
        serving: s,
    })
}

/// Whether the candidate `c` passes against the serving version's `s` on `predictions` shared
/// predictions, and why.
fn verdict(
    c: &GateArm,
    s: &GateArm,
    predictions: usize,
    k: u32,
    margin: f64,
    version: &str,
) -> (bool, String) {
    if predictions == 0 {
        return (
            false,
            format!("no held-out events on items both this candidate and {version} know"),
        );
    }
    let floor = |x: f64| x * (1.0 - margin);
    let worse: Vec<String> = [("Recall", c.recall, s.recall), ("MRR", c.mrr, s.mrr)]
        .into_iter()
        .filter(|&(_, cand, serv)| cand < floor(serv))
        .map(|(what, cand, serv)| format!("{what}@{k} {cand:.4} < {serv:.4}"))
        .collect();
    if worse.is_empty() {
        (
            true,
            format!(
                "not worse than {version} within {:.1}% on {predictions} held-out predictions",
                margin * 100.0
            ),
        )
    } else {
        (
            false,
            format!(
                "worse than {version} by more than {:.1}%: {}",
                margin * 100.0,
                worse.join(", ")
            ),
        )
    }
}

/// A version's Recall and MRR on `test` under its default served strategy: the blend with its
/// speed layer seeded from `train` when it has one, else the GRU alone.
fn served_metrics(
    v: &CandidateView<'_>,
    test: &Sessions,
    eval: &EvalOptions,
) -> Result<GateArm, TrainError> {
    let mut backend = CpuBackend::new(eval.threads)?;
    let id = backend.upload_model(v.weights, Dtype::F32)?;
    let n = v.weights.n_items;
    let h = v.weights.hidden;
    let (strategy, m): (&str, Metrics) = match v.blend {
        Some(b) if !v.train.is_empty() => {
            let mut speed = served_speed_layer(v.train, n, Some(b), KnnServing::default(), None);
            let w = [speed.weights];
            let mut m = blend::evaluate_speed(
                &mut backend,
                id,
                h,
                &mut speed,
                test,
                eval.k,
                eval.history,
                Scored::Blend(&w),
            )?;
            ("blend", m.remove(0))
        }
        _ => (
            "gru",
            evaluate_model(&mut backend, id, h, test, n, eval.k, eval.batch)?,
        ),
    };
    Ok(GateArm {
        strategy: strategy.into(),
        recall: m.recall,
        mrr: m.mrr,
    })
}

/// `test` (indices of `ours`) with the items `theirs` does not know removed and sessions left
/// shorter than two dropped, once in `ours`' indices and once in `theirs`'.
fn shared_sessions(test: &Sessions, ours: &ItemVocab, theirs: &ItemVocab) -> (Sessions, Sessions) {
    let map: Vec<u32> = ours
        .ids
        .iter()
        .map(|id| theirs.index(id).unwrap_or(u32::MAX))
        .collect();
    let (mut a, mut b) = (Sessions::default(), Sessions::default());
    for s in 0..test.len() {
        let kept: Vec<(u32, f64)> = test
            .session(s)
            .iter()
            .zip(test.session_times(s))
            .filter(|&(&i, _)| map[i as usize] != u32::MAX)
            .map(|(&i, &t)| (i, t))
            .collect();
        if kept.len() < 2 {
            continue;
        }
        for (out, to) in [(&mut a, None), (&mut b, Some(&map))] {
            for &(i, t) in &kept {
                out.items.push(to.map_or(i, |m| m[i as usize]));
                out.times.push(t);
            }
            out.offsets.push(out.items.len());
            out.keys.push(test.keys[s].clone());
        }
    }
    (a, b)
}

/// `30d`, `12h`, `90m`, `45s` or a plain number of seconds, as seconds.
pub fn parse_duration(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, unit) = match t.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let scale = match unit {
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3_600.0,
        "d" => 86_400.0,
        _ => {
            return Err(format!(
                "{s:?}: the unit must be s, m, h or d (e.g. 30d, 1h)"
            ));
        }
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit, e.g. 30d or 1h"))?;
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("{s:?}: give a positive duration"));
    }
    Ok(n * scale)
}

#[cfg(test)]
mod tests {
    use lambdarec_proto::archive::ArchivedEvent;

    use super::*;
    use crate::data::synthetic::{SyntheticOptions, archive_days, generate};
    use crate::pipeline::WarmStartFrom;
    use crate::train::TrainConfig;

    /// Four days of synthetic events as the archiver writes them, one slice per day, in order.
    fn four_days() -> Vec<Vec<ArchivedEvent>> {
        let log = generate(&SyntheticOptions {
            n_items: 60,
            n_sessions: 600,
            days: 4.0,
            start_time: 1_699_920_000.0, // a UTC midnight: the archive's days are the log's
            seed: 3,
            ..SyntheticOptions::default()
        });
        archive_days(&log)
    }

    #[tokio::test]
    async fn a_passing_candidate_is_published_as_the_canary_beside_latest() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().to_str().unwrap().to_owned();
        let archive = Archive::in_store(&url).unwrap();
        let days = four_days();
        let (last, first) = days.split_last().unwrap();
        let write = async |day: &[ArchivedEvent]| {
            let date = Date::from_unix_ms(day[0].timestamp_ms);
            archive.write_file(date, day).await.unwrap();
        };
        for day in first {
            write(day).await;
        }
        let config = TrainConfig {
            hidden: 8,
            epochs: 1,
            batch_size: 16,
            n_sample: 16,
            threads: Some(1),
            ..TrainConfig::default()
        };
        let mut job = TrainJob {
            data: TrainData::from_arg(&format!("{url}/events"), None, None).unwrap(),
            warm_start: WarmStartFrom::Latest,
            ..TrainJob::new(None, &url, "m", config)
        };
        job.blend_validation = 0.0;
        job.prepare.test_fraction = 0.5;
        // A margin that any candidate that learned something passes: the test is where it goes.
        let opts = CycleOptions {
            job,
            window_days: 30,
            margin: 0.99,
            publish: Pointer::Canary,
        };
        let store = Store::open(&url).unwrap();

        // Nothing serves yet: there is nothing to run a canary beside, so LATEST moves.
        let r = run_cycle(&opts, |_, _, _| {}, |_| {}).await.unwrap();
        assert_eq!(r.decision, Decision::Published, "{}", r.reason);
        assert_eq!(r.gate.unwrap().published_as, Some(Pointer::Latest));
        let v1 = r.version.unwrap();
        assert_eq!(store.latest_version("m").await.unwrap(), Some(v1.clone()));
        assert_eq!(store.canary_version("m").await.unwrap(), None);

        // A new day: the next candidate passes and becomes the canary; LATEST stays.
        write(last).await;
        let r = run_cycle(&opts, |_, _, _| {}, |_| {}).await.unwrap();
        assert_eq!(r.decision, Decision::Published, "{}", r.reason);
        let v2 = r.version.unwrap();
        assert_eq!(store.latest_version("m").await.unwrap(), Some(v1.clone()));
        assert_eq!(store.canary_version("m").await.unwrap(), Some(v2.clone()));
        let gate = store.read_manifest("m", &v2).await.unwrap().gate.unwrap();
        assert!(gate.published);
        assert_eq!(gate.published_as, Some(Pointer::Canary));
        assert_eq!(gate.serving_version, Some(v1));
    }

    #[test]
    fn durations_read_with_units() {
        assert_eq!(parse_duration("30d"), Ok(30.0 * 86_400.0));
        assert_eq!(parse_duration("1h"), Ok(3_600.0));
        assert_eq!(parse_duration("90m"), Ok(5_400.0));
        assert_eq!(parse_duration("2.5s"), Ok(2.5));
        assert_eq!(parse_duration("600"), Ok(600.0));
        for bad in ["", "0h", "-1d", "3w", "h", "1 hour"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn shared_sessions_keep_what_both_catalogues_hold() {
        let ours = ItemVocab::new(
            ["a", "b", "c", "d"].map(String::from).to_vec(),
            vec![4, 3, 2, 1],
        );
        let theirs = ItemVocab::new(["d", "a", "x"].map(String::from).to_vec(), vec![3, 2, 1]);
        let test = Sessions {
            offsets: vec![0, 3, 5, 8],
            items: vec![0, 1, 3, 2, 1, 3, 0, 2],
            times: (0..8).map(f64::from).collect(),
            keys: ["s1", "s2", "s3"].map(String::from).to_vec(),
        };
        let (a, b) = shared_sessions(&test, &ours, &theirs);
        // s1: a b d → a d; s2: c b → nothing left; s3: d a c → d a.
        assert_eq!(a.keys, ["s1", "s3"]);
        assert_eq!(a.items, [0, 3, 3, 0]);
        assert_eq!(b.items, [1, 0, 0, 1]);
        assert_eq!(a.times, [0.0, 2.0, 5.0, 6.0]);
        assert_eq!(a.offsets, b.offsets);
    }
}
