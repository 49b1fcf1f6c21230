//! `optiroute router ...`: evaluation, scoring and training commands.

use crate::data::{Row, load_rows, outcomes};
use crate::eval::{self, EvalReport};
use crate::features::HashConfig;
use crate::learned::{LearnedScorer, Target, TrainConfig};
use crate::metrics::Curve;
use crate::plot::{self, Marker, Series};
use crate::scorer::{HeuristicScorer, Scorer};
use crate::traffic;
use crate::trees::TreeConfig;
use crate::verifier::Verifier;
use anyhow::{Context, bail};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouterName {
    /// Logistic regression over hashed n-grams and cheap features (the shipped default).
    Learned,
    /// Hand-written rules over size, code, math, reasoning markers, depth and max_tokens.
    Heuristic,
    /// The legacy rule: prompt longer than 60 characters -> strong.
    Length,
    /// Seeded pseudo-random scores.
    Random,
}

impl RouterName {
    fn as_str(self) -> &'static str {
        match self {
            RouterName::Learned => "learned",
            RouterName::Heuristic => "heuristic",
            RouterName::Length => "length",
            RouterName::Random => "random",
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetArg {
    TwoHeads,
    Gain,
    StrongNeeded,
    WeakWrong,
    StrongCorrect,
}

/// Learned-model training settings.
#[derive(clap::Args, Clone, Debug)]
pub struct TrainArgs {
    /// log2 of the number of n-gram hash buckets.
    #[arg(long, default_value_t = 16)]
    pub bits: u32,
    /// L2 regularisation strength (relative to the summed loss over the training examples).
    #[arg(long, default_value_t = 2.5)]
    pub l2: f64,
    /// L2 multiplier for the dense features.
    #[arg(long, default_value_t = 100.0)]
    pub dense_l2_mult: f64,
    /// L2 multiplier for the numeric-structure dense features.
    #[arg(long, default_value_t = 10.0)]
    pub numeric_l2_mult: f64,
    /// Neighbours for the neighbour-outcome features (0 = off).
    #[arg(long, default_value_t = 0)]
    pub knn_k: usize,
    /// Hashed n-grams kept per stored training prompt in the neighbour index.
    #[arg(long, default_value_t = 48)]
    pub knn_top: usize,
    /// L2 multiplier for the neighbour-outcome features.
    #[arg(long, default_value_t = 1.0)]
    pub knn_l2_mult: f64,
    /// Feed the neighbour features to the logistic heads too.
    #[arg(long)]
    pub knn_stack: bool,
    /// Weight of the neighbours' mean label in the score.
    #[arg(long, default_value_t = 0.0)]
    pub knn_blend: f32,
    /// What the model predicts.
    #[arg(long, value_enum, default_value_t = TargetArg::TwoHeads)]
    pub target: TargetArg,
    /// L-BFGS iterations.
    #[arg(long, default_value_t = 150)]
    pub iters: usize,
    /// Shortest char n-gram (0 disables char n-grams).
    #[arg(long, default_value_t = 3)]
    pub char_min: usize,
    /// Longest char n-gram.
    #[arg(long, default_value_t = 5)]
    pub char_max: usize,
    /// Longest word n-gram (0 disables word n-grams).
    #[arg(long, default_value_t = 2)]
    pub word_max: usize,
    /// Weight of the word n-gram family.
    #[arg(long, default_value_t = 1.0)]
    pub word_weight: f32,
    /// Leave out the dense count/signal features.
    #[arg(long)]
    pub no_dense: bool,
    /// Group smoothing of training labels by `subject`/`category` (0 = off, 1 = group mean only).
    #[arg(long, default_value_t = 0.5)]
    pub group_smooth: f32,
    /// Boosting rounds of the gradient-boosted trees blended with the heads (0 = no trees).
    #[arg(long, default_value_t = 200)]
    pub trees: usize,
    /// Weight of the trees in the score, in [0, 1] (default: chosen by 5-fold cross-validation on the
    /// training data).
    #[arg(long)]
    pub tree_blend: Option<f32>,
    /// Leaves per tree.
    #[arg(long, default_value_t = 15)]
    pub tree_leaves: usize,
    /// Fewest training rows per leaf (default: 40, 20 or 10, chosen with the blend weight by the same
    /// cross-validation on the training data).
    #[arg(long)]
    pub tree_min_leaf: Option<usize>,
    /// Learning rate (shrinkage) of the boosting.
    #[arg(long, default_value_t = 0.04)]
    pub tree_lr: f32,
}

impl TrainArgs {
    pub fn config(&self) -> TrainConfig {
        TrainConfig {
            hash: HashConfig {
                bits: self.bits,
                char_min: self.char_min,
                char_max: self.char_max,
                word_max: self.word_max,
                word_weight: self.word_weight,
                char_weight: 1.0,
            },
            l2: self.l2,
            dense_l2_mult: self.dense_l2_mult,
            numeric_l2_mult: self.numeric_l2_mult,
            knn_k: self.knn_k,
            knn_top: self.knn_top,
            knn_l2_mult: self.knn_l2_mult,
            knn_stack: self.knn_stack,
            knn_blend: self.knn_blend,
            max_iters: self.iters,
            target: match self.target {
                TargetArg::TwoHeads => Target::TwoHeads,
                TargetArg::Gain => Target::Gain,
                TargetArg::StrongNeeded => Target::StrongNeeded,
                TargetArg::WeakWrong => Target::WeakWrong,
                TargetArg::StrongCorrect => Target::StrongCorrect,
            },
            dense: !self.no_dense,
            group_smooth: self.group_smooth,
            trees: TreeConfig {
                rounds: self.trees,
                max_leaves: self.tree_leaves,
                min_leaf: self.tree_min_leaf.unwrap_or(TreeConfig::default().min_leaf),
                learning_rate: self.tree_lr,
                ..TreeConfig::default()
            },
            tree_blend: self.tree_blend,
            tree_min_leaf_grid: match self.tree_min_leaf {
                Some(_) => Vec::new(),
                None => crate::learned::MIN_LEAF_GRID.to_vec(),
            },
        }
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum RouterCommand {
    /// Evaluate a router on a JSONL file of prompts with both models' outcomes: quality-vs-strong-share
    /// curve, APGR, CPT(50%), CPT(80%), PGR at 20/30/50% strong calls, and the length rule's point.
    Eval {
        /// JSONL with prompt, strong_correct, weak_correct (or strong_score, weak_score).
        #[arg(long)]
        data: PathBuf,
        #[arg(long, value_enum, default_value_t = RouterName::Learned)]
        router: RouterName,
        /// Learned router: k-fold cross-validation within --data.
        #[arg(long)]
        cv: Option<usize>,
        /// Learned router: train on these files (added to every fold's training set with --cv).
        #[arg(long, num_args = 1..)]
        train: Vec<PathBuf>,
        /// Learned router without --cv/--train: a weights file instead of the embedded weights.
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Write an SVG plot of the PGR curves.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Write the evaluated scores (out-of-fold with --cv) as JSONL: prompt, score, strong, weak, and
        /// for files with cheap answers `cascade_score` (1 + risk after a failed rule check, else risk).
        #[arg(long)]
        scores_out: Option<PathBuf>,
        /// Seed for the fold split and the random router.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Threads used to train folds in parallel.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Cascade verifier weights for files with cheap answers, when the verifier is not trained
        /// here (no --cv/--train); default: the embedded verifier.
        #[arg(long)]
        verifier: Option<PathBuf>,
        /// L2 strength for cascade verifiers trained here (with --cv or --train).
        #[arg(long, default_value_t = 1.0)]
        verifier_l2: f64,
        #[command(flatten)]
        train_args: TrainArgs,
    },
    /// Rate every cheap answer (`weak_response`) of a JSONL file with the cascade as shipped, as the
    /// gateway does for math-style prompts: one JSON line per input line, `{"prompt", "risk", "check"}`;
    /// `check` is the failed rule check or null, `risk` the verifier's probability that the answer is
    /// wrong (null without an answer).
    Verify {
        #[arg(long)]
        data: PathBuf,
        /// A verifier file instead of the embedded one.
        #[arg(long)]
        verifier: Option<PathBuf>,
    },
    /// Train the cascade's verifier on JSONL rows that hold the cheap model's answer (`weak_response`)
    /// and outcomes, and write its weights (the shipped ones: `weights/verifier.json`, from gsm8k.dev).
    TrainVerifier {
        #[arg(long, num_args = 1.., required = true)]
        data: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// L2 strength on the standardised features.
        #[arg(long, default_value_t = 1.0)]
        l2: f64,
    },
    /// Score every prompt of a JSONL file with the router as shipped; one JSON line per input line.
    Score {
        #[arg(long)]
        data: PathBuf,
        #[arg(long, value_enum, default_value_t = RouterName::Learned)]
        router: RouterName,
        /// A weights file instead of the embedded weights (learned router).
        #[arg(long)]
        weights: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Train the learned scorer on JSONL files and write its weights. Files may hold benchmark rows
    /// (prompt and both models' outcomes) or traffic rows from `router export` (logged features and
    /// feedback; see ROUTING.md / the README's routing section).
    Train {
        #[arg(long, num_args = 1.., required = true)]
        data: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// Traffic rows: the weights the gateway ran (their predictions label the head a row says
        /// nothing about, and their n-gram settings are used). Default: the embedded weights.
        #[arg(long)]
        base: Option<PathBuf>,
        /// Traffic rows: weight of each traffic example relative to a benchmark example.
        #[arg(long, default_value_t = 1.0)]
        traffic_weight: f32,
        #[command(flatten)]
        train_args: TrainArgs,
    },
    /// Export the gateway's request log (logged features, tier, outcome, feedback) as JSONL for
    /// `router train`. Runs in the `optiroute` binary, which has the store.
    Export(ExportArgs),
}

/// `optiroute router export` options (carried out by the gateway binary).
#[derive(clap::Args, Clone, Debug)]
pub struct ExportArgs {
    /// Gateway config (TOML): its `[store] database_url` and `[routing] tiers` are used (default:
    /// `$OPTIROUTE_CONFIG`).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Store to read (overrides the config): `sqlite://optiroute.db`, a SQLite file path,
    /// `postgres://...` or `env:NAME` (default: `$OPTIROUTE_DATABASE_URL`, else the config's).
    #[arg(long)]
    pub store: Option<String>,
    /// Only requests that finished at or after this: a Unix time in seconds, or an age like `7d`,
    /// `12h`, `30m`.
    #[arg(long)]
    pub since: Option<String>,
    /// Only rows that carry a label: feedback or a cascade escalation.
    #[arg(long)]
    pub labelled: bool,
    /// The tier that counts as the strong model (default: the last of `[routing] tiers`).
    #[arg(long)]
    pub strong_tier: Option<String>,
    /// Output file (default: standard output).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn load_all(paths: &[PathBuf]) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for p in paths {
        rows.extend(load_rows(p, true)?);
    }
    Ok(rows)
}

fn learned_from(weights: Option<&Path>) -> anyhow::Result<LearnedScorer> {
    Ok(match weights {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            LearnedScorer::from_json(&text).with_context(|| format!("loading {}", p.display()))?
        }
        None => LearnedScorer::embedded()?,
    })
}

fn verifier_from(path: Option<&Path>) -> anyhow::Result<Verifier> {
    Ok(match path {
        Some(p) => {
            Verifier::from_json(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
                .with_context(|| format!("{} is not a verifier file", p.display()))?
        }
        None => Verifier::embedded()?,
    })
}

fn shipped_scorer(router: RouterName, weights: Option<&Path>, seed: u64) -> anyhow::Result<Box<dyn Scorer>> {
    Ok(match router {
        RouterName::Learned => Box::new(learned_from(weights)?),
        other => eval::rule_scorer(other.as_str(), seed).context("unknown router")?,
    })
}

/// Runs one `router` subcommand. A closed stdout (e.g. piped into `head`) ends the command quietly.
pub fn run(cmd: RouterCommand) -> anyhow::Result<()> {
    match run_inner(cmd) {
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

fn run_inner(cmd: RouterCommand) -> anyhow::Result<()> {
    match cmd {
        RouterCommand::Eval {
            data,
            router,
            cv,
            train,
            weights,
            plot,
            json,
            scores_out,
            seed,
            threads,
            verifier,
            verifier_l2,
            train_args,
        } => {
            let rows = load_rows(&data, true)?;
            let cfg = train_args.config();
            let data_name = data.display().to_string();
            let trained_on: Vec<String> = train.iter().map(|p| p.display().to_string()).collect();
            let mut trees = Vec::new();
            let (scores, folds, mode) = if router == RouterName::Learned {
                if let Some(k) = cv {
                    let extra = load_all(&train)?;
                    let cv = eval::cross_val_scores(&rows, &extra, k, seed, &cfg, threads)?;
                    trees = cv.trees;
                    (cv.scores, Some((cv.folds, k)), "cv")
                } else if !train.is_empty() {
                    let model = eval::train_on(&load_all(&train)?, &cfg)?;
                    trees.push(model.tree_fit());
                    (eval::score_rows(&model, &rows), None, "train-test")
                } else {
                    let model = learned_from(weights.as_deref())?;
                    eprintln!(
                        "note: scoring with the shipped weights; if they were trained on {data_name} the figures are in-sample (use --cv K or --train FILES)"
                    );
                    trees.push(model.tree_fit());
                    (eval::score_rows(&model, &rows), None, "shipped")
                }
            } else {
                if cv.is_some() || !train.is_empty() {
                    eprintln!(
                        "note: --cv/--train apply to the learned router only; {} has no training",
                        router.as_str()
                    );
                }
                let s = shipped_scorer(router, None, seed)?;
                (eval::score_rows(s.as_ref(), &rows), None, "rule")
            };
            let copts = eval::cascade_options(&rows);
            let cascade_scores = if !copts.math || rows.iter().all(|r| r.weak_response.is_none()) {
                None
            } else if let Some((f, k)) = &folds {
                let s = crate::verifier::cross_val_cascade_scores(&rows, f, *k, verifier_l2, copts)?;
                Some((s, "cv".to_string()))
            } else if !train.is_empty() {
                let ex = crate::verifier::examples(&load_all(&train)?, copts);
                match crate::verifier::train(&ex, verifier_l2) {
                    Ok(v) => Some((
                        crate::verifier::cascade_scores(&v, &rows, copts),
                        "train-test".to_string(),
                    )),
                    Err(e) => {
                        eprintln!("note: no cascade verifier: {e}");
                        None
                    }
                }
            } else {
                eprintln!(
                    "note: the cascade verifier is the shipped one; if it was trained on {data_name} its figures are in-sample"
                );
                let v = verifier_from(verifier.as_deref())?;
                Some((crate::verifier::cascade_scores(&v, &rows, copts), "shipped".to_string()))
            };
            let rep = eval::report(
                eval::Provenance {
                    router: router.as_str(),
                    mode,
                    data: &data_name,
                    trained_on,
                    seed,
                    folds: folds.as_ref().map(|(f, k)| (f.as_slice(), *k)),
                    trees,
                    cascade_scores: cascade_scores.as_ref().map(|(s, m)| (s.as_slice(), m.clone())),
                },
                &rows,
                &scores,
            )?;
            if let Some(path) = scores_out {
                let mut w = std::io::BufWriter::new(
                    std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
                );
                for (i, (r, s)) in rows.iter().zip(&scores).enumerate() {
                    let o = r.outcome.unwrap_or(crate::metrics::Outcome { strong: 0.0, weak: 0.0 });
                    let mut line =
                        serde_json::json!({"prompt": r.prompt, "score": s, "strong": o.strong, "weak": o.weak});
                    if let Some((c, _)) = &cascade_scores {
                        // Failed rule check: 1 + risk; otherwise the verifier's risk.
                        line["cascade_score"] = c[i].into();
                    }
                    writeln!(w, "{line}")?;
                }
                w.flush()?;
            }
            if let Some(path) = plot {
                let heuristic = if router != RouterName::Heuristic {
                    let h = eval::score_rows(&HeuristicScorer::default(), &rows);
                    Some(Curve::from_scores(&h, &outcomes(&rows))?)
                } else {
                    None
                };
                let svg = render_plot(&rep, heuristic.as_ref());
                std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
            }
            let mut stdout = std::io::stdout().lock();
            if json {
                writeln!(stdout, "{}", serde_json::to_string(&rep)?)?;
            } else {
                write!(stdout, "{}", table(&rep))?;
            }
        }
        RouterCommand::Score {
            data,
            router,
            weights,
            seed,
        } => {
            let rows = load_rows(&data, false)?;
            let scorer = shipped_scorer(router, weights.as_deref(), seed)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for r in &rows {
                let line = serde_json::json!({ "prompt": r.prompt, "score": scorer.score(&r.conv) });
                writeln!(out, "{line}")?;
            }
            out.flush()?;
        }
        RouterCommand::Train {
            data,
            out,
            base,
            traffic_weight,
            train_args,
        } => {
            let mut rows = Vec::new();
            let mut traffic_rows = Vec::new();
            for p in &data {
                if traffic::is_traffic_file(p)? {
                    traffic_rows.extend(traffic::load_traffic(p)?);
                } else {
                    rows.extend(load_rows(p, true)?);
                }
            }
            let mut cfg = train_args.config();
            let mut precomputed = Vec::new();
            let mut traffic_report = None;
            if !traffic_rows.is_empty() {
                let base_model = learned_from(base.as_deref())?;
                if base_model.hash_config() != &cfg.hash {
                    eprintln!(
                        "note: training with the base weights' n-gram settings ({:?}) so the logged features fit",
                        base_model.hash_config()
                    );
                    cfg.hash = base_model.hash_config().clone();
                }
                if cfg.target != Target::TwoHeads {
                    bail!("traffic rows label the two-head model: use --target two-heads");
                }
                let (fx, rep) = traffic::examples(&traffic_rows, &base_model, traffic_weight.max(0.0))?;
                eprintln!("{rep}");
                precomputed = fx;
                traffic_report = Some(rep);
            }
            if rows.is_empty() && precomputed.is_empty() {
                bail!("no usable rows in the training files");
            }
            let examples = eval::examples(&rows, &cfg);
            let mut model = crate::learned::train_with_features(&examples, &precomputed, &cfg)?;
            let n = examples.len() + precomputed.len();
            model.set_meta(serde_json::json!({
                "trained_on": data.iter().map(|p| p.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default()).collect::<Vec<_>>(),
                "examples": n,
                "traffic": traffic_report,
                "config": cfg,
            }));
            let text = model.to_json()?;
            std::fs::write(&out, &text).with_context(|| format!("writing {}", out.display()))?;
            eprintln!("wrote {} ({} bytes, {n} examples)", out.display(), text.len());
        }
        RouterCommand::Verify { data, verifier } => {
            let rows = load_rows(&data, false)?;
            let v = verifier_from(verifier.as_deref())?;
            // The verifier rates answers to math-style prompts; check them as the gateway does those.
            let opts = crate::cascade::CheckOptions::MATH;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for r in &rows {
                let (risk, check) = match r.weak_response.as_deref() {
                    Some(a) => (
                        Some(v.risk(r.conv.last_user(), a, opts)),
                        crate::cascade::check(a, opts),
                    ),
                    None => (None, None),
                };
                let line = serde_json::json!({ "prompt": r.prompt, "risk": risk, "check": check });
                writeln!(out, "{line}")?;
            }
            out.flush()?;
        }
        RouterCommand::TrainVerifier { data, out, l2 } => {
            let rows = load_all(&data)?;
            let opts = eval::cascade_options(&rows);
            let ex = crate::verifier::examples(&rows, opts);
            let mut v = crate::verifier::train(&ex, l2)?;
            v.set_meta(serde_json::json!({
                "trained_on": data.iter().map(|p| p.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default()).collect::<Vec<_>>(),
                "examples": ex.len(),
                "l2": l2,
            }));
            let text = v.to_json()?;
            std::fs::write(&out, &text).with_context(|| format!("writing {}", out.display()))?;
            eprintln!("wrote {} ({} examples)", out.display(), ex.len());
        }
        RouterCommand::Export(_) => {
            bail!("`router export` reads the gateway's store: run it as `optiroute router export`")
        }
    }
    Ok(())
}

fn pct(x: Option<f64>) -> String {
    x.map(|v| format!("{:.1}%", v * 100.0))
        .unwrap_or_else(|| "never".into())
}

/// The human-readable report.
pub fn table(r: &EvalReport) -> String {
    let mut s = String::new();
    let mode = match r.mode.as_str() {
        "cv" => format!("{}-fold cross-validation (seed {})", r.cv_folds.unwrap_or(0), r.seed),
        "train-test" => format!("trained on {}", r.trained_on.join(", ")),
        other => other.to_string(),
    };
    s += &format!("router {} on {} ({} prompts; {mode})\n", r.router, r.data, r.n);
    s += &format!("  quality: strong {:.4}, weak {:.4}\n", r.q_strong, r.q_weak);
    s += &format!("  APGR        {:.4}\n", r.summary.apgr);
    if !r.fold_apgr.is_empty() {
        let m = r.fold_apgr.iter().sum::<f64>() / r.fold_apgr.len() as f64;
        let sd = (r.fold_apgr.iter().map(|x| (x - m).powi(2)).sum::<f64>() / r.fold_apgr.len() as f64).sqrt();
        s += &format!("  APGR/fold   {m:.4} ± {sd:.4}\n");
    }
    if !r.tree_blend.is_empty() {
        let w: Vec<String> = r.tree_blend.iter().map(|w| format!("{w:.1}")).collect();
        s += &format!("  tree blend  {}\n", w.join(", "));
        // 0: that model has no trees
        if r.tree_min_leaf.iter().any(|&m| m > 0) {
            let m: Vec<String> = r
                .tree_min_leaf
                .iter()
                .map(|&m| if m > 0 { m.to_string() } else { "-".into() })
                .collect();
            s += &format!("  tree leaves at least {} rows\n", m.join(", "));
        }
    }
    s += &format!(
        "  CPT(50%)    {}\n  CPT(80%)    {}\n",
        pct(r.summary.cpt50),
        pct(r.summary.cpt80)
    );
    s += &format!(
        "  PGR @20%    {:.4}\n  PGR @30%    {:.4}\n  PGR @50%    {:.4}\n",
        r.summary.pgr_at_20, r.summary.pgr_at_30, r.summary.pgr_at_50
    );
    s += &format!("  max PGR     {:.4} at {:.1}%\n", r.max_pgr, r.max_pgr_at * 100.0);
    s += &format!(
        "  length rule (>60 chars): strong share {:.1}%, PGR {:.4}\n",
        r.length_rule.strong_share * 100.0,
        r.length_rule.pgr
    );
    s += &format!(
        "  length as a ranking: APGR {:.4}, CPT(50%) {}, CPT(80%) {}\n",
        r.length_curve.apgr,
        pct(r.length_curve.cpt50),
        pct(r.length_curve.cpt80)
    );
    for (name, m) in [
        ("length rule", &r.vs_length_rule),
        ("length ranking", &r.vs_length_curve),
    ] {
        if let Some(m) = m {
            s += &format!(
                "  vs {name}: min PGR margin {:+.4} at {:.0}% -> {} at budgets 1-89%\n",
                m.min_margin,
                m.at_share * 100.0,
                if m.beats_below_90 {
                    "better everywhere"
                } else {
                    "NOT better everywhere"
                }
            );
        }
    }
    if let Some(c) = &r.cascade {
        s += &format!(
            "  cascade (cheap first, escalate on failed checks): strong share {:.1}%, PGR {:.4}, reasons {:?}\n",
            c.strong_share * 100.0,
            c.pgr,
            c.reasons
        );
    }
    if let Some(g) = &r.cascade_verifier {
        s += &format!(
            "  cascade with the verifier ({}): APGR {:.4}, CPT(50%) {}, CPT(80%) {}, PGR @20% {:.4}, @30% {:.4}; at risk >= {}: strong share {:.1}%, PGR {:.4}\n",
            g.verifier,
            g.summary.apgr,
            pct(g.summary.cpt50),
            pct(g.summary.cpt80),
            g.summary.pgr_at_20,
            g.summary.pgr_at_30,
            g.max_risk,
            g.at_max_risk.strong_share * 100.0,
            g.at_max_risk.pgr
        );
        for h in &g.with_routing {
            s += &format!(
                "    with the top {:.0}% by router score sent straight to strong: strong share {:.1}%, cheap calls {:.0}%, PGR {:.4} (cascade alone: {:.4})\n",
                h.direct_share * 100.0,
                h.strong_share * 100.0,
                h.cheap_share * 100.0,
                h.pgr,
                h.cascade_alone_pgr
            );
        }
    }
    s
}

/// The SVG for an eval report (plus an optional heuristic curve for comparison).
pub fn render_plot(r: &EvalReport, heuristic: Option<&Curve>) -> String {
    let dense = |c: &Curve| plot::thin(&c.points().collect::<Vec<_>>(), 400);
    let label = match r.mode.as_str() {
        "cv" => format!(
            "{} ({}-fold CV), APGR {:.3}",
            r.router,
            r.cv_folds.unwrap_or(0),
            r.summary.apgr
        ),
        "train-test" => format!("{} (other benchmarks), APGR {:.3}", r.router, r.summary.apgr),
        _ => format!("{}, APGR {:.3}", r.router, r.summary.apgr),
    };
    let mut series = vec![Series {
        label,
        points: dense(&r.curve),
        color: plot::PALETTE[0],
        dashed: false,
    }];
    if let Some(h) = heuristic {
        series.push(Series {
            label: format!("heuristic, APGR {:.3}", h.apgr()),
            points: dense(h),
            color: plot::PALETTE[2],
            dashed: false,
        });
    }
    series.push(Series {
        label: format!("prompt length ranking, APGR {:.3}", r.length_curve.apgr),
        points: dense(&r.length_score_curve),
        color: plot::PALETTE[3],
        dashed: true,
    });
    if let Some(g) = &r.cascade_verifier {
        series.push(Series {
            label: format!("cascade with verifier ({}), APGR {:.3}", g.verifier, g.summary.apgr),
            points: dense(&g.curve),
            color: plot::PALETTE[4],
            dashed: true,
        });
    }
    series.push(Series {
        label: "random, APGR 0.500".into(),
        points: vec![(0.0, 0.0), (1.0, 1.0)],
        color: "#999999",
        dashed: true,
    });
    let mut markers = vec![Marker {
        label: format!("length > 60 rule ({:.1}% strong)", r.length_rule.strong_share * 100.0),
        share: r.length_rule.strong_share,
        pgr: r.length_rule.pgr,
        color: plot::PALETTE[1],
    }];
    if let Some(c) = &r.cascade {
        markers.push(Marker {
            label: format!("cascade, rule checks ({:.1}% strong)", c.strong_share * 100.0),
            share: c.strong_share,
            pgr: c.pgr,
            color: plot::PALETTE[4],
        });
    }
    if let Some(g) = &r.cascade_verifier {
        markers.push(Marker {
            label: format!(
                "cascade, risk >= {} ({:.1}% strong)",
                g.max_risk,
                g.at_max_risk.strong_share * 100.0
            ),
            share: g.at_max_risk.strong_share,
            pgr: g.at_max_risk.pgr,
            color: plot::PALETTE[5],
        });
    }
    let file = Path::new(&r.data)
        .file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_else(|| r.data.clone());
    plot::render(
        &format!("PGR vs strong-model share: {file} ({} prompts)", r.n),
        &series,
        &markers,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn table_shows_tree_leaf_sizes_and_folds_without_trees() {
        let text = (0..8)
            .map(|i| {
                format!(
                    r#"{{"prompt": "q{i}", "strong_correct": {}, "weak_correct": {}}}"#,
                    i % 2 == 0,
                    i % 4 == 0
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        let rows = crate::data::parse_rows(&text, "t", true).unwrap();
        let scores: Vec<f32> = (0..8).map(|i| i as f32 / 8.0).collect();
        let with = |leaves: Vec<usize>| {
            let p = eval::Provenance {
                router: "learned",
                mode: "cv",
                trees: leaves
                    .into_iter()
                    .map(|min_leaf| crate::learned::TreeFit { blend: 0.3, min_leaf })
                    .collect(),
                ..Default::default()
            };
            table(&eval::report(p, &rows, &scores).unwrap())
        };
        let t = with(vec![20, 0, 10]);
        assert!(t.contains("tree leaves at least 20, -, 10 rows"), "{t}");
        assert!(!with(vec![0, 0]).contains("tree leaves"));
    }
}
