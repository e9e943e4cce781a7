//! The batch-layer jobs end to end, as the `lambdarec train` and `lambdarec eval` commands run them:
//! read → prepare → train → evaluate (model and baselines on the same events) → write the bundle.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;
use tracing::info;

use lambdarec_kernels::{Backend, Dtype, ModelWeights, cpu::CpuBackend};
use lambdarec_proto::archive::{Date, DateRange};
use lambdarec_proto::bundle::{Blend, Bundle, Store, validate_model_name};

use crate::TrainError;
use crate::baselines::{ItemKnn, Pop};
use crate::blend;
use crate::blend::{Scored, SpeedLayer, Weights};
use crate::data::{self, ArchiveSource, Dataset, ItemVocab, PrepareOptions, ReadOptions, Sessions};
use crate::eval::{Metrics, SessionRecommender, evaluate_model, evaluate_recommender};
use crate::export;
use crate::knn::{KnnIndex, KnnParams, SessionKnn};
use crate::model::{Gru4Rec, WarmStart, item_rows};
use crate::train::{EpochStats, Init, TrainConfig, train, train_from};

/// Evaluation settings shared by `train` and `eval`.
#[derive(Clone, Debug, Serialize)]
pub struct EvalOptions {
    /// Cut-off of the metrics (Recall@k, MRR@k, …).
    pub k: usize,
    /// Sessions evaluated in parallel (one batched GRU step and top-k per position).
    pub batch: usize,
    /// CPU threads for evaluation (None = all cores).
    #[serde(skip)]
    pub threads: Option<usize>,
    /// Recent items per session the speed layer sees (the server's `--history`).
    pub history: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            k: 20,
            batch: 256,
            threads: None,
            history: blend::DEFAULT_HISTORY,
        }
    }
}

/// What a training job learns from.
#[derive(Clone, Debug, PartialEq)]
pub enum TrainData {
    /// The built-in synthetic sample (`data::synthetic` with its defaults).
    Synthetic,
    /// An interaction log file (delimited text or Parquet).
    File(PathBuf),
    /// The event archive, or the days of it in a range.
    Archive(ArchiveSource),
}

impl TrainData {
    /// What `--data` names: an existing file is a log file; an existing directory or an
    /// object-store URL (`scheme://…`) is an archive. `since`/`until` apply to archives only.
    pub fn from_arg(
        arg: &str,
        since: Option<Date>,
        until: Option<Date>,
    ) -> Result<TrainData, String> {
        let path = std::path::Path::new(arg);
        if path.is_file() {
            if since.is_some() || until.is_some() {
                return Err(format!(
                    "--since/--until select days of an event archive; {arg} is a log file"
                ));
            }
            return Ok(TrainData::File(path.to_path_buf()));
        }
        if !(path.is_dir() || arg.contains("://")) {
            return Err(format!("{arg}: no such file or directory"));
        }
        let range = DateRange::new(since, until).map_err(|e| e.to_string())?;
        Ok(TrainData::Archive(ArchiveSource {
            url: arg.to_owned(),
            range,
        }))
    }
}

impl std::fmt::Display for TrainData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrainData::Synthetic => write!(f, "the built-in synthetic sample"),
            TrainData::File(p) => write!(f, "{}", p.display()),
            TrainData::Archive(a) => write!(f, "{a}"),
        }
    }
}

/// Everything `lambdarec train` needs.
#[derive(Clone, Debug)]
pub struct TrainJob {
    pub data: TrainData,
    pub test_path: Option<PathBuf>,
    pub read: ReadOptions,
    pub prepare: PrepareOptions,
    pub config: TrainConfig,
    pub eval: EvalOptions,
    pub store: String,
    pub model_name: String,
    /// Seconds at the end of the training data held out to fit the blend weight (a GRU is trained
    /// on the rest first); 0 skips the fit and the bundle serves the GRU alone.
    pub blend_validation: f64,
    /// Trending's half-life in seconds, stored in the bundle for the server.
    pub trend_half_life_s: f64,
    /// V-SKNN's neighbours per request and most recent candidate sessions: the blend is fit with
    /// them and the bundle records them for the server.
    pub knn_neighbours: u32,
    pub knn_sample: u32,
    /// Where the weights start.
    pub warm_start: WarmStartFrom,
    /// With a warm start from a bundle that has blend weights: fit them again (training a second,
    /// cold GRU) rather than keep them.
    pub refit_blend: bool,
    /// A warm start multiplies the previous weights by this (1: as they are; see
    /// [`Gru4Rec::shrink`]).
    pub warm_shrink: f32,
    /// Evaluate the GRU on the test set after every epoch (a learning curve in the manifest).
    pub eval_each_epoch: bool,
}

/// The shrink of a warm start: halving the previous weights (with their optimiser state kept) lets
/// the warm model learn on instead of settling where the previous training left it
/// (`benches/RESULTS.md`, warm start against cold start).
pub const DEFAULT_WARM_SHRINK: f32 = 0.5;

/// Where a training job's weights start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum WarmStartFrom {
    /// Freshly drawn weights.
    #[default]
    Cold,
    /// The version LATEST names, if the model has one (cold otherwise).
    Latest,
    /// This version of the model.
    Version(String),
}

impl std::str::FromStr for WarmStartFrom {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" | "cold" => Ok(WarmStartFrom::Cold),
            "latest" | "LATEST" => Ok(WarmStartFrom::Latest),
            v => lambdarec_proto::bundle::validate_version(v)
                .map(|()| WarmStartFrom::Version(v.to_owned()))
                .map_err(|e| format!("{e} (or give latest, or none)")),
        }
    }
}

impl TrainJob {
    /// A job with the default reading, preparation and evaluation options (`train_path` None: the
    /// built-in synthetic sample); set the other fields (an archive as `data`) with struct update
    /// syntax.
    pub fn new(
        train_path: Option<PathBuf>,
        store: impl Into<String>,
        model_name: impl Into<String>,
        config: TrainConfig,
    ) -> Self {
        TrainJob {
            data: train_path.map_or(TrainData::Synthetic, TrainData::File),
            test_path: None,
            read: ReadOptions::default(),
            prepare: PrepareOptions::default(),
            config,
            eval: EvalOptions::default(),
            store: store.into(),
            model_name: model_name.into(),
            blend_validation: 86_400.0,
            trend_half_life_s: blend::DEFAULT_TREND_HALF_LIFE_S,
            knn_neighbours: KnnParams::default().k as u32,
            knn_sample: KnnParams::default().sample_size as u32,
            warm_start: WarmStartFrom::Cold,
            refit_blend: false,
            warm_shrink: DEFAULT_WARM_SHRINK,
            eval_each_epoch: false,
        }
    }
}

/// The model's metrics and the baselines', all on the same test events.
#[derive(Clone, Debug, Serialize)]
pub struct Evaluation {
    pub model: Metrics,
    pub baselines: Vec<(String, Metrics)>,
    pub seconds: f64,
}

impl Evaluation {
    /// `{recall@20, mrr@20, coverage@20, pop_share@20, events, baselines: {pop: {…}, item-knn: {…}}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = self.model.to_json();
        let baselines: serde_json::Map<String, serde_json::Value> = self
            .baselines
            .iter()
            .map(|(n, m)| (n.clone(), m.to_json()))
            .collect();
        v["baselines"] = serde_json::Value::Object(baselines);
        v
    }

    /// A small aligned table: model first, then each baseline.
    pub fn table(&self) -> String {
        let k = self.model.k;
        let mut out = format!(
            "{:<22} {:>10} {:>10} {:>12} {:>13}   ({} test events)\n",
            "",
            format!("Recall@{k}"),
            format!("MRR@{k}"),
            format!("Coverage@{k}"),
            format!("PopShare@{k}"),
            self.model.events
        );
        let rows = std::iter::once(("gru4rec", &self.model))
            .chain(self.baselines.iter().map(|(n, m)| (n.as_str(), m)));
        for (name, m) in rows {
            out += &format!(
                "{name:<22} {:>10.4} {:>10.4} {:>12.4} {:>13.4}\n",
                m.recall, m.mrr, m.coverage, m.pop_share
            );
        }
        out
    }
}

/// What a training job produced.
#[derive(Debug)]
pub struct TrainOutcome {
    pub dataset: Dataset,
    pub epochs: Vec<EpochStats>,
    pub evaluation: Evaluation,
    pub weights: ModelWeights,
    pub version: String,
    /// The version the weights started from, and how its catalogue mapped onto this one.
    pub warm_start: Option<(String, WarmStart)>,
}

/// A trained model not yet written to the store: [`run_train`] writes it as LATEST, a
/// continuous-training cycle gates it first.
pub struct Candidate {
    pub dataset: Dataset,
    pub epochs: Vec<EpochStats>,
    pub evaluation: Evaluation,
    pub weights: ModelWeights,
    pub bundle: Bundle,
    /// The version the weights started from (loaded: the gate compares against it when it is
    /// the serving one), and how its catalogue mapped onto the candidate's.
    pub warm_start: Option<(LoadedModel, WarmStart)>,
}

/// Evaluates weights on test sessions with the CPU backend, and the baselines trained on `train`.
/// With training sessions, the speed layer is evaluated as served too: seeded with them, then
/// learning from every test event exactly as the server does when the test log is replayed to it
/// (`knn`, `trending`, and the bundle's `blend`); `sknn` is V-SKNN with the index frozen.
pub fn evaluate(
    weights: &ModelWeights,
    train_sessions: Option<&Sessions>,
    test: &Sessions,
    opts: &EvalOptions,
    blend: Option<&Blend>,
) -> Result<Evaluation, TrainError> {
    let started = Instant::now();
    let mut backend = CpuBackend::new(opts.threads)?;
    let id = backend.upload_model(weights, Dtype::F32)?;
    let n = weights.n_items;
    let model = evaluate_model(
        &mut backend,
        id,
        weights.hidden,
        test,
        n,
        opts.k,
        opts.batch,
    )?;
    let mut baselines = vec![(
        "pop".to_string(),
        evaluate_recommender(&mut Pop::new(n), test, n, opts.k),
    )];
    if let Some(train_sessions) = train_sessions {
        let mut knn = ItemKnn::fit(train_sessions, n, ItemKnn::DEFAULT_LAMBDA, opts.k.max(100));
        baselines.push((
            "item-knn".to_string(),
            evaluate_recommender(&mut knn, test, n, opts.k),
        ));
        let speed = served_speed_layer(train_sessions, n, blend, KnnServing::default(), None);
        // The served kNN's size, frozen: the index never learns from the test sessions.
        let served = speed.knn.params();
        let frozen = KnnParams {
            k: served.k,
            sample_size: served.sample_size,
            ..KnnParams::default()
        };
        let mut sknn = SessionKnn::new(KnnIndex::fit(train_sessions, n, frozen), false);
        let metrics = evaluate_recommender(&mut sknn, test, n, opts.k);
        baselines.push((sknn.name().to_string(), metrics));

        let w = speed.weights;
        let mut run = |name: String, what: Scored<'_>| -> Result<(), TrainError> {
            let mut speed = speed.clone();
            let m = blend::evaluate_speed(
                &mut backend,
                id,
                weights.hidden,
                &mut speed,
                test,
                opts.k,
                opts.history,
                what,
            )?;
            baselines.push((name, m[0].clone()));
            Ok(())
        };
        run("knn".to_string(), Scored::Knn)?;
        run("trending".to_string(), Scored::Trending)?;
        if blend.is_some() {
            let name = format!("blend({:.2}/{:.2}/{:.2})", w.gru, w.knn, w.trend);
            run(name, Scored::Blend(&[w]))?;
        }
    }
    Ok(Evaluation {
        model,
        baselines,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// What a server asks of its kNN index: the sessions it keeps (`--knn-sessions`), and V-SKNN's
/// neighbours and sample where they override the bundle's (`--knn-neighbours`, `--knn-sample`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnnServing {
    pub sessions: usize,
    pub neighbours: Option<usize>,
    pub sample: Option<usize>,
}

impl Default for KnnServing {
    fn default() -> Self {
        KnnServing {
            sessions: blend::DEFAULT_KNN_SESSIONS,
            neighbours: None,
            sample: None,
        }
    }
}

/// The speed layer a server starts with for a bundle whose training sessions are `train` and
/// whose blend is `blend` (the GRU alone without one): V-SKNN's neighbours and sample from `knn`,
/// else the bundle's, else session-rec's (500 of 5,000), with `knn.sessions` kept; trending's
/// half-life `half_life_s` or else the bundle's (one hour if it names none). The server builds its
/// speed layer here too, so that the evaluator's is the served one.
pub fn served_speed_layer(
    train: &Sessions,
    n_items: usize,
    blend: Option<&Blend>,
    knn: KnnServing,
    half_life_s: Option<f64>,
) -> SpeedLayer {
    let weights = blend.map_or(Weights::GRU, |b| Weights::new(b.gru_weight, b.trend_weight));
    let half_life = half_life_s
        .or_else(|| blend.and_then(|b| b.trend_half_life_s))
        .unwrap_or(blend::DEFAULT_TREND_HALF_LIFE_S);
    let bundle = |f: fn(&Blend) -> Option<u32>| blend.and_then(f).map(|n| n as usize);
    let default = KnnParams::default();
    let params = KnnParams {
        k: knn
            .neighbours
            .or_else(|| bundle(|b| b.knn_neighbours))
            .unwrap_or(default.k),
        sample_size: knn
            .sample
            .or_else(|| bundle(|b| b.knn_sample))
            .unwrap_or(default.sample_size),
        capacity: knn.sessions,
        ..default
    };
    SpeedLayer::new(train, n_items, params, half_life, weights)
}

/// Runs `lambdarec train`: trains on the job's data and writes the bundle as the new LATEST.
/// `progress(epoch, events_done, mean_loss)` drives a progress bar.
pub async fn run_train(
    job: &TrainJob,
    progress: impl FnMut(usize, u64, f64) + Send,
    on_epoch: impl FnMut(&EpochStats) + Send,
) -> Result<TrainOutcome, TrainError> {
    // Checked before any work: a name the store refuses would otherwise surface only after training.
    validate_model_name(&job.model_name)?;
    let store = Store::open(&job.store)?;
    let dataset = read_train_data(job).await?.prepare(job)?;
    let mut c = train_candidate(job, &store, dataset, progress, on_epoch).await?;
    let version = store.write_bundle(&job.model_name, &mut c.bundle).await?;
    info!(store = store.url(), model = %job.model_name, %version, "wrote model bundle");
    Ok(TrainOutcome {
        dataset: c.dataset,
        epochs: c.epochs,
        evaluation: c.evaluation,
        weights: c.weights,
        version,
        warm_start: c.warm_start.map(|(m, w)| (m.bundle.manifest.version, w)),
    })
}

/// The job's training log (and its test log when it names one).
pub struct RawData {
    pub train: data::RawLog,
    pub test: Option<data::RawLog>,
}

impl RawData {
    /// Prepares the logs as `job.prepare` says.
    pub fn prepare(&self, job: &TrainJob) -> Result<Dataset, TrainError> {
        let dataset = data::prepare(&self.train, self.test.as_ref(), &job.prepare)?;
        let r = &dataset.report;
        info!(
            train_events = r.train_events,
            train_sessions = r.train_sessions,
            items = r.train_items,
            test_events = r.test_events,
            test_sessions = r.test_sessions,
            "prepared data"
        );
        Ok(dataset)
    }
}

/// Reads what `job.data` and `job.test_path` name.
pub async fn read_train_data(job: &TrainJob) -> Result<RawData, TrainError> {
    let train = match &job.data {
        TrainData::File(p) => data::read_log(p, &job.read)?,
        TrainData::Archive(a) => data::read_archive(a, job.read.skip_bad_lines).await?,
        TrainData::Synthetic => {
            let opts = data::synthetic::SyntheticOptions::default();
            info!(
                items = opts.n_items,
                sessions = opts.n_sessions,
                seed = opts.seed,
                "no --data given: training on the built-in synthetic sample (Zipf popularity, item clusters, planted successor pattern)"
            );
            data::synthetic::generate(&opts)
        }
    };
    report_bad_lines(&train);
    let test = match &job.test_path {
        Some(p) => {
            let t = data::read_log(p, &job.read)?;
            report_bad_lines(&t);
            Some(t)
        }
        None => None,
    };
    Ok(RawData { train, test })
}

/// Trains on `dataset` (from the bundle `job.warm_start` names, if any), evaluates, and builds
/// the bundle, without writing it.
pub async fn train_candidate(
    job: &TrainJob,
    store: &Store,
    dataset: Dataset,
    progress: impl FnMut(usize, u64, f64) + Send,
    mut on_epoch: impl FnMut(&EpochStats) + Send,
) -> Result<Candidate, TrainError> {
    let prev = match &job.warm_start {
        WarmStartFrom::Cold => None,
        WarmStartFrom::Latest => match store.latest_version(&job.model_name).await? {
            Some(v) => Some(load_from(store, &job.model_name, &v).await?),
            None => {
                info!(model = %job.model_name, "the model has no LATEST yet: training from scratch");
                None
            }
        },
        WarmStartFrom::Version(v) => Some(load_from(store, &job.model_name, v).await?),
    };
    let (init, warm_start) = match prev {
        Some(prev) => {
            check_warm_start(&prev, &job.config)?;
            let rows = item_rows(&prev.vocab.ids, &dataset.vocab.ids);
            let how = WarmStart::of(&rows, prev.vocab.len());
            if !(job.warm_shrink > 0.0 && job.warm_shrink <= 1.0) {
                return Err(TrainError::Config(format!(
                    "warm shrink {}: give a factor in (0, 1]",
                    job.warm_shrink
                )));
            }
            let mut model = Gru4Rec::warm_start(&prev.weights, &rows, job.config.seed);
            model.shrink(job.warm_shrink);
            let optimizer = saved_optimizer(store, &job.model_name, &prev, &job.config)
                .await?
                .map(|o| o.remap_items(prev.vocab.len(), &rows));
            info!(
                from = %prev.bundle.manifest.version,
                reused = how.reused,
                new_items = how.new,
                retired = how.retired,
                optimizer_state = optimizer.is_some(),
                shrink = job.warm_shrink,
                "warm start: weights from the previous version, fresh rows for new items"
            );
            (Some(Init { model, optimizer }), Some((prev, how)))
        }
        None => (None, None),
    };
    let inherited = warm_start
        .as_ref()
        .filter(|_| !job.refit_blend)
        .and_then(|(prev, _)| inherit_blend(prev, job));
    let blend = match inherited {
        Some(b) => Some(b),
        None => fit_blend(&dataset, job)?,
    };

    let (model, epochs, optimizer) = train_from(
        init,
        &dataset.train,
        &dataset.vocab.popularity,
        &job.config,
        progress,
        |st, model| {
            if job.eval_each_epoch {
                let m = evaluate_gru(&model.to_weights(), &dataset.test, &job.eval)?;
                (st.test_recall, st.test_mrr) = (Some(m.recall), Some(m.mrr));
            }
            on_epoch(st);
            Ok(())
        },
    )?;
    let weights = model.to_weights();
    let evaluation = evaluate(
        &weights,
        Some(&dataset.train),
        &dataset.test,
        &job.eval,
        blend.as_ref(),
    )?;
    info!(
        recall = evaluation.model.recall,
        mrr = evaluation.model.mrr,
        events = evaluation.model.events,
        seconds = evaluation.seconds,
        "evaluated model and baselines"
    );

    let mut bundle = export::to_bundle(
        &weights,
        &dataset.vocab,
        &dataset.fingerprint(),
        &job.config,
        &epochs,
        &evaluation,
    );
    if let Some((prev, how)) = &warm_start {
        bundle.manifest.training["warm_start"] = serde_json::json!({
            "from": prev.bundle.manifest.version,
            "reused_items": how.reused,
            "new_items": how.new,
            "retired_items": how.retired,
            "shrink": job.warm_shrink,
        });
    }
    bundle.manifest.blend = blend;
    bundle.sessions = Some(export::session_table(&dataset.train));
    bundle.optimizer = Some(export::optimizer_tensors(&optimizer, &model));
    Ok(Candidate {
        dataset,
        epochs,
        evaluation,
        weights,
        bundle,
        warm_start,
    })
}

/// The GRU alone on `test`, with the CPU backend (a point of a learning curve).
fn evaluate_gru(
    weights: &ModelWeights,
    test: &Sessions,
    opts: &EvalOptions,
) -> Result<Metrics, TrainError> {
    let mut backend = CpuBackend::new(opts.threads)?;
    let id = backend.upload_model(weights, Dtype::F32)?;
    let n = weights.n_items;
    Ok(evaluate_model(
        &mut backend,
        id,
        weights.hidden,
        test,
        n,
        opts.k,
        opts.batch,
    )?)
}

async fn load_from(store: &Store, name: &str, version: &str) -> Result<LoadedModel, TrainError> {
    LoadedModel::new(store.read_bundle(name, Some(version)).await?)
}

/// The optimiser state `prev` was saved with, when this job's optimiser can continue it.
async fn saved_optimizer(
    store: &Store,
    name: &str,
    prev: &LoadedModel,
    cfg: &TrainConfig,
) -> Result<Option<crate::train::OptimizerState>, TrainError> {
    let version = &prev.bundle.manifest.version;
    let theirs = &prev.bundle.manifest.training["config"]["optimizer"];
    if *theirs != serde_json::json!(cfg.optimizer) {
        info!(from = %version, previous = %theirs, "the optimiser changed: its state starts fresh");
        return Ok(None);
    }
    let state = store.read_optimizer(name, version).await?;
    if state.is_none() {
        info!(from = %version, "the previous version saved no optimiser state: it starts fresh");
    }
    Ok(state.as_ref().map(export::optimizer_of))
}

/// A warm start keeps the architecture: the same hidden size and input embedding.
fn check_warm_start(prev: &LoadedModel, cfg: &TrainConfig) -> Result<(), TrainError> {
    let w = &prev.weights;
    let tied = w.item_in.is_none();
    let same = w.hidden == cfg.hidden
        && tied == (cfg.embed_dim == 0)
        && (tied || w.embed_dim == cfg.embed_dim);
    if same {
        return Ok(());
    }
    let shape = |hidden: usize, embed: usize| match embed {
        0 => format!("{hidden} hidden units and tied embeddings"),
        e => format!("{hidden} hidden units and {e}-wide input embeddings"),
    };
    Err(TrainError::Config(format!(
        "cannot warm-start from version {}: it has {}, this job asks for {}; \
         train from scratch (--warm-start none) to change the architecture",
        prev.bundle.manifest.version,
        shape(w.hidden, if tied { 0 } else { w.embed_dim }),
        shape(cfg.hidden, cfg.embed_dim),
    )))
}

/// The previous version's blend weights, kept by a warm start (None when it has none).
fn inherit_blend(prev: &LoadedModel, job: &TrainJob) -> Option<Blend> {
    let b = prev.bundle.manifest.blend.as_ref()?;
    info!(
        from = %prev.bundle.manifest.version,
        gru_weight = b.gru_weight,
        trend_weight = b.trend_weight,
        "warm start keeps the previous version's blend weights (--refit-blend fits them again)"
    );
    // The kNN size the weights were fit with goes with them.
    Some(Blend {
        gru_weight: b.gru_weight,
        trend_weight: b.trend_weight,
        trend_half_life_s: Some(job.trend_half_life_s),
        knn_neighbours: b.knn_neighbours,
        knn_sample: b.knn_sample,
        fit: serde_json::json!({ "inherited_from": prev.bundle.manifest.version }),
    })
}

/// Fits the blend weight: a GRU trained on the training sessions that end before the last
/// `blend_validation` seconds, then the blend at every weight of the grid on the sessions after
/// (kNN indexing the earlier sessions and learning live from the later ones, as served). None when
/// the fit is off or either part is empty.
fn fit_blend(dataset: &Dataset, job: &TrainJob) -> Result<Option<Blend>, TrainError> {
    if job.blend_validation <= 0.0 {
        return Ok(None);
    }
    let (early, late) = blend::split_by_end_time(&dataset.train, job.blend_validation);
    if early.is_empty() || late.n_predictions() == 0 {
        info!(
            window_s = job.blend_validation,
            "no blend fit: the validation window leaves no sessions on one side; the bundle serves the GRU alone"
        );
        return Ok(None);
    }
    info!(
        train_sessions = early.len(),
        validation_sessions = late.len(),
        validation_predictions = late.n_predictions(),
        "fitting the blend weight: training a GRU without the last {} s of the training data",
        job.blend_validation
    );
    let (model, _) = train(
        &early,
        &dataset.vocab.popularity,
        &job.config,
        |_, _, _| {},
        |_| {},
    )?;
    let weights = model.to_weights();
    let n = weights.n_items;
    let mut backend = CpuBackend::new(job.eval.threads)?;
    let id = backend.upload_model(&weights, Dtype::F32)?;
    let seeded = SpeedLayer::new(
        &early,
        n,
        KnnParams {
            k: job.knn_neighbours as usize,
            sample_size: job.knn_sample as usize,
            capacity: blend::DEFAULT_KNN_SESSIONS,
            ..KnnParams::default()
        },
        job.trend_half_life_s,
        Weights::GRU,
    );
    let mut fit = |grid: &[Weights]| {
        blend::evaluate_speed(
            &mut backend,
            id,
            weights.hidden,
            &mut seeded.clone(),
            &late,
            job.eval.k,
            job.eval.history,
            Scored::Blend(grid),
        )
    };
    // Every (GRU weight, trending weight) pair of the grids, in one pass over the validation sessions.
    let grid: Vec<(f32, f32)> = blend::trend_grid()
        .into_iter()
        .flat_map(|t| blend::weight_grid().into_iter().map(move |g| (g, t)))
        .collect();
    let curve = fit(&grid
        .iter()
        .map(|&(g, t)| Weights::new(g, t))
        .collect::<Vec<_>>())?;
    let ((w, t), best) = blend::choose_weights(&grid, &curve);
    let at = |g: f32, t: f32| &curve[grid.iter().position(|&p| p == (g, t)).expect("on the grid")];
    info!(
        gru_weight = w,
        trend_weight = t,
        recall = best.recall,
        mrr = best.mrr,
        gru_alone_recall = at(1.0, 0.0).recall,
        knn_alone_recall = at(0.0, 0.0).recall,
        "blend weights fit on the validation sessions"
    );
    let k = job.eval.k;
    let points = grid
        .iter()
        .zip(&curve)
        .map(|(&(g, t), m)| {
            serde_json::json!({
                "gru_weight": g, "trend_weight": t,
                format!("recall@{k}"): m.recall, format!("mrr@{k}"): m.mrr,
            })
        })
        .collect::<Vec<_>>();
    Ok(Some(Blend {
        gru_weight: w,
        trend_weight: t,
        trend_half_life_s: Some(job.trend_half_life_s),
        knn_neighbours: Some(job.knn_neighbours),
        knn_sample: Some(job.knn_sample),
        fit: serde_json::json!({
            "validation_window_s": job.blend_validation,
            "train_sessions": early.len(),
            "validation_sessions": late.len(),
            "validation_predictions": late.n_predictions(),
            "objective": format!("recall@{k} + mrr@{k}; the least trending weight within one standard error of the best"),
            "curve": points,
        }),
    }))
}

fn report_bad_lines(log: &data::RawLog) {
    if log.bad_lines > 0 {
        tracing::warn!(
            file = %log.path,
            skipped = log.bad_lines,
            first = log.first_bad.as_deref().unwrap_or(""),
            "skipped bad lines"
        );
    }
}

/// A stored model ready to evaluate or serve.
pub struct LoadedModel {
    pub bundle: Bundle,
    pub weights: ModelWeights,
    pub vocab: ItemVocab,
}

impl LoadedModel {
    /// Converts a bundle read from a store to backend weights and its vocabulary.
    pub fn new(bundle: Bundle) -> Result<LoadedModel, TrainError> {
        let (weights, vocab) = export::from_bundle(&bundle)?;
        Ok(LoadedModel {
            bundle,
            weights,
            vocab,
        })
    }
}

/// Reads a bundle (LATEST when `version` is None) and converts it to backend weights.
pub async fn load_model(
    store: &str,
    name: &str,
    version: Option<&str>,
) -> Result<LoadedModel, TrainError> {
    let store = Store::open(store)?;
    let bundle = store.read_bundle(name, version).await?;
    LoadedModel::new(bundle)
}

/// Everything `lambdarec eval` needs.
#[derive(Clone, Debug)]
pub struct EvalJob {
    pub store: String,
    pub model: String,
    /// None = the version LATEST names.
    pub version: Option<String>,
    pub test_path: PathBuf,
    /// Training log for the baselines and the speed layer; None: the sessions the bundle holds (if any).
    pub train_path: Option<PathBuf>,
    pub read: ReadOptions,
    pub min_session_len: usize,
    pub eval: EvalOptions,
}

/// Runs `lambdarec eval`: the evaluation of a stored bundle on a test log, mapped to the bundle's items.
pub async fn run_eval(
    job: &EvalJob,
) -> Result<(LoadedModel, Evaluation, data::PrepareReport), TrainError> {
    let loaded = load_model(&job.store, &job.model, job.version.as_deref()).await?;
    let raw_test = data::read_log(&job.test_path, &job.read)?;
    report_bad_lines(&raw_test);
    let (test, report) = data::prepare_eval(&raw_test, &loaded.vocab, job.min_session_len);
    // The bundle's own training sessions are what a server seeds its speed layer with, so they
    // make the evaluation the server's; --train replaces them (a bundle written without them).
    let train_sessions = match &job.train_path {
        Some(p) => {
            let raw = data::read_log(p, &job.read)?;
            report_bad_lines(&raw);
            Some(data::prepare_eval(&raw, &loaded.vocab, job.min_session_len).0)
        }
        None => loaded.bundle.sessions.as_ref().map(export::sessions_of),
    };
    let evaluation = evaluate(
        &loaded.weights,
        train_sessions.as_ref(),
        &test,
        &job.eval,
        loaded.bundle.manifest.blend.as_ref(),
    )?;
    Ok((loaded, evaluation, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_argument_tells_files_from_archives() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("log.tsv");
        std::fs::write(&file, "SessionId\tItemId\tTime\n").unwrap();
        let (f, d) = (file.to_str().unwrap(), dir.path().to_str().unwrap());
        let day = |s: &str| Some(s.parse::<Date>().unwrap());

        assert_eq!(
            TrainData::from_arg(f, None, None),
            Ok(TrainData::File(file.clone()))
        );
        let err = TrainData::from_arg(f, day("2024-01-01"), None).unwrap_err();
        assert!(err.contains("is a log file"), "{err}");
        let TrainData::Archive(a) = TrainData::from_arg(d, day("2024-01-01"), None).unwrap() else {
            panic!("a directory is an archive");
        };
        assert_eq!(a.range.since, day("2024-01-01"));
        assert!(matches!(
            TrainData::from_arg("s3://bucket/events", None, None),
            Ok(TrainData::Archive(_))
        ));
        let err = TrainData::from_arg(d, day("2024-01-02"), day("2024-01-01")).unwrap_err();
        assert!(err.contains("empty"), "{err}");
        let missing = dir.path().join("missing");
        let err = TrainData::from_arg(missing.to_str().unwrap(), None, None).unwrap_err();
        assert!(err.contains("no such file or directory"), "{err}");
    }
}
