//! `recipe eval TARGET [TARGET2]`: generation metrics (BLEU, chrF, TER, ROUGE, exact match) and
//! perplexity of a trained model on held-out data, written to `eval_predictions.jsonl` and
//! `eval_results.json`; with a second target, both side by side in `eval_report.html` / `.md`.
//!
//! TARGET is a recipe (its output_dir is evaluated), an output or checkpoint folder (the recipe
//! its `recipe_run.json` names supplies template and data), or a model folder. The data is
//! `--dataset PATH --dataset-type TYPE`, else the recipe's `test_datasets`, else its validation
//! split, prepared exactly as training prepares it (template, masking, cleaning); each sample's
//! prompt is everything before its first trained token and its reference answer is that first run
//! of trained tokens, decoded. The data and its tokens come from TARGET; TARGET2 must share its
//! vocabulary.

use super::{EXIT_INVALID, EXIT_USAGE, compile_recipe};
use crate::data::{self, Sample};
use crate::eval::report::{Review, Row};
use crate::eval::{Metric, TextOptions, perplexity, score_texts};
use crate::exec::{self, eval as model_eval};
use crate::model::generate::Sampling;
use crate::plan::{Plan, PlanOptions};
use serde_json::{Map, Value, json};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The flags of `recipe eval`.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// A recipe, an output or checkpoint folder, or a model folder.
    pub target: PathBuf,
    /// A second target to compare with the first (e.g. the base model, then the fine-tuned one).
    pub target2: Option<PathBuf>,
    /// Evaluate on this dataset (a local file or folder) instead of the recipe's test data.
    #[arg(long, requires = "dataset_type")]
    pub dataset: Option<PathBuf>,
    /// The dataset's `type`, as a recipe's `datasets` entry names it (alpaca, chat_template, ...;
    /// a mapping type as YAML).
    #[arg(long, requires = "dataset")]
    pub dataset_type: Option<String>,
    /// Comma-separated: sacrebleu, chrf, ter, rouge, exact_match, perplexity (default: all; only
    /// perplexity for text with no prompt).
    #[arg(long)]
    pub metrics: Option<String>,
    /// ROUGE with rouge-score's Porter stemmer (`use_stemmer=True`; NLTK's stemmer).
    #[arg(long)]
    pub rouge_stemmer: bool,
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// 0 = greedy; above, seeded sampling (with --top-p, --seed).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Samples generated (and scored for perplexity) together.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    /// Where the files go (default: TARGET's folder's `eval/`, or `./eval` for a model folder).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Print eval_results.json to stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value = "auto")]
    pub device: String,
}

/// A failure: its message is printed once, where it is returned to `eval`.
struct Failure {
    code: u8,
    message: Option<String>,
}

fn invalid(message: String) -> Failure {
    Failure { code: EXIT_INVALID, message: Some(message) }
}

impl From<ExitCode> for Failure {
    // compile_recipe has printed its diagnostics.
    fn from(code: ExitCode) -> Failure {
        Failure { code: if code == ExitCode::from(EXIT_USAGE) { EXIT_USAGE } else { EXIT_INVALID }, message: None }
    }
}

/// A resolved target: the folder to load, the base of an adapter, and the recipe of its run.
struct Target {
    given: PathBuf,
    dir: PathBuf,
    base: Option<PathBuf>,
    recipe: Option<(PathBuf, Plan)>,
}

pub fn eval(args: &EvalArgs, overrides: &[String]) -> ExitCode {
    match run(args, overrides) {
        Ok(code) => code,
        Err(f) => {
            if let Some(m) = f.message {
                eprintln!("error: {m}");
            }
            ExitCode::from(f.code)
        }
    }
}

fn resolve(target: &Path, overrides: &[String]) -> Result<Target, Failure> {
    let is_recipe = matches!(target.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
    let with_recipe = |recipe: PathBuf, dir: Option<PathBuf>| -> Result<Target, Failure> {
        let plan = compile_recipe(&recipe, overrides, PlanOptions::default())?;
        let base =
            crate::plan::model::model_folder(&plan.model).map_err(|e| invalid(format!("{}: {e}", recipe.display())))?;
        let dir = dir.unwrap_or_else(|| PathBuf::from(&plan.training.output_dir));
        Ok(Target { given: target.to_path_buf(), dir, base: Some(base), recipe: Some((recipe, plan)) })
    };
    if is_recipe {
        return with_recipe(target.to_path_buf(), None);
    }
    if !target.is_dir() {
        return Err(Failure {
            code: EXIT_USAGE,
            message: Some(format!("{}: not a recipe (.yaml) or a folder", target.display())),
        });
    }
    // An output folder records its run; a checkpoint sits inside one.
    let record = [Some(target), target.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join(exec::checkpoint::RUN_RECORD))
        .find(|p| p.is_file());
    if let Some(record) = record {
        let text = std::fs::read_to_string(&record).map_err(|e| invalid(format!("{}: {e}", record.display())))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| invalid(format!("{}: {e}", record.display())))?;
        let recipe = value["recipe"].as_str().map(PathBuf::from).filter(|p| p.is_file());
        match recipe {
            Some(recipe) => return with_recipe(recipe, Some(target.to_path_buf())),
            None => eprintln!(
                "warning: {}: the recipe it names ({}) is not there; evaluating {} as a model folder (no template, \
                 no data, no leakage check from the recipe)",
                record.display(),
                value["recipe"],
                target.display()
            ),
        }
    }
    if !target.join("config.json").is_file() && !target.join("adapter_config.json").is_file() {
        return Err(invalid(format!(
            "{}: not a model (no config.json or adapter_config.json), an output folder or a recipe",
            target.display()
        )));
    }
    Ok(Target { given: target.to_path_buf(), dir: target.to_path_buf(), base: None, recipe: None })
}

fn load(t: &Target, device: tch::Device) -> Result<exec::Loaded, Failure> {
    let quantize = t
        .recipe
        .as_ref()
        .map(|(_, p)| exec::quantize_spec(p))
        .transpose()
        .map_err(|e| invalid(format!("{}: {e}", t.given.display())))?
        .flatten();
    let loaded = exec::catch_torch_errors(None, || {
        exec::load_trained(&t.dir, t.base.as_deref(), device, quantize, Some(tch::Kind::Float))
    })
    .map_err(|e| invalid(format!("{}: {e}", t.dir.display())))?;
    if loaded.model.score.is_some() {
        return Err(invalid(format!(
            "{}: a reward model (a score head, no language-model head) has no text to evaluate; score texts with `recipe score`",
            t.dir.display()
        )));
    }
    Ok(loaded)
}

/// YAML for a `--set` value: a JSON string is valid YAML.
fn yaml_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// The evaluation samples and where they came from.
fn eval_samples(
    args: &EvalArgs,
    t: &Target,
    loaded: &exec::Loaded,
    overrides: &[String],
    training: Option<&data::Prepared>,
) -> Result<(Vec<Sample>, String), Failure> {
    let prepare = |plan: &Plan| {
        data::prepare(plan, &loaded.tokenizer, &loaded.tokenizer_dir)
            .map_err(|e| invalid(format!("{}: {e}", plan.recipe)))
    };
    if let (Some(path), Some(kind)) = (&args.dataset, &args.dataset_type) {
        let path = std::path::absolute(path).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        // Only this dataset, in file order, prepared with the recipe's template and options (a model
        // folder gets a minimal recipe naming it).
        let dataset = format!("datasets=[{{path: {}, type: {kind}}}]", yaml_string(&path.display().to_string()));
        let mut sets: Vec<String> = overrides.to_vec();
        sets.push(dataset);
        // No split and no held-out sets: every row is an evaluation sample. The evaluation schedule
        // goes too, so the recipe's own eval keys neither warn nor fail (early stopping) here.
        let whole = [
            "val_set_size=0",
            "test_datasets=[]",
            "shuffle_merged_datasets=false",
            "eval_steps=null",
            "evals_per_epoch=null",
            "early_stopping_patience=null",
            "do_causal_lm_eval=false",
            "eval_causal_lm_metrics=null",
            "eval_max_new_tokens=null",
        ];
        sets.extend(whole.map(String::from));
        let scratch;
        let recipe = match &t.recipe {
            Some((recipe, _)) => recipe.clone(),
            None => {
                scratch = Scratch::new(&loaded.base_dir)?;
                scratch.path.clone()
            }
        };
        let plan = compile_errors_only(&recipe, &sets)?;
        let samples = prepare(&plan)?.train;
        return Ok((samples, format!("{} ({kind})", path.display())));
    }
    let Some((recipe, _)) = &t.recipe else {
        return Err(invalid(format!(
            "{}: a model folder brings no data; pass --dataset PATH --dataset-type TYPE",
            t.given.display()
        )));
    };
    let prepared = training.ok_or_else(|| invalid(format!("{}: its data could not be prepared", recipe.display())))?;
    if !prepared.test.is_empty() {
        Ok((prepared.test.clone(), format!("test_datasets of {}", recipe.display())))
    } else if !prepared.validation.is_empty() {
        Ok((prepared.validation.clone(), format!("validation split of {}", recipe.display())))
    } else {
        Err(invalid(format!(
            "{}: no test_datasets and no validation split (val_set_size: 0); pass --dataset PATH --dataset-type TYPE",
            recipe.display()
        )))
    }
}

/// The recipe compiled again with the evaluation dataset in place of its own: its warnings were
/// shown when the target was resolved (or belong to the scratch recipe), so only errors print.
fn compile_errors_only(recipe: &Path, sets: &[String]) -> Result<Plan, Failure> {
    let loaded = crate::recipe::load(recipe, sets);
    let errors: Vec<_> = loaded.diagnostics.iter().filter(|d| d.is_error()).cloned().collect();
    if !errors.is_empty() {
        eprint!("{}", crate::recipe::diagnostic::render_text(&errors, &loaded.sources, false));
        let code = if loaded.usage_failed() { EXIT_USAGE } else { EXIT_INVALID };
        return Err(Failure { code, message: None });
    }
    crate::plan::compile(&loaded, PlanOptions::default())
        .map_err(|e| invalid(format!("{}: {e} (with the evaluation dataset)", recipe.display())))
}

/// A minimal recipe naming a model folder, removed when dropped.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn new(base: &Path) -> Result<Scratch, Failure> {
        let base = std::path::absolute(base).map_err(|e| invalid(format!("{}: {e}", base.display())))?;
        let path = std::env::temp_dir().join(format!("recipe-eval-{}.yaml", std::process::id()));
        // learning_rate and max_steps: a recipe must say them; data preparation does not read them.
        let text =
            format!("base_model: {}\nlearning_rate: 2.0e-5\nmax_steps: 1\n", yaml_string(&base.display().to_string()));
        std::fs::write(&path, text).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        Ok(Scratch { path })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One target's answers and figures.
struct Outcome {
    predictions: Vec<String>,
    corpus: Map<String, Value>,
    /// The tokens perplexity averages over, when it was asked for.
    perplexity_tokens: Option<u64>,
    per_sample: Vec<Map<String, Value>>,
}

fn run(args: &EvalArgs, overrides: &[String]) -> Result<ExitCode, Failure> {
    let device = exec::parse_device(&args.device).map_err(|e| Failure { code: EXIT_USAGE, message: Some(e) })?;
    let requested = args
        .metrics
        .as_deref()
        .map(Metric::parse_list)
        .transpose()
        .map_err(|e| Failure { code: EXIT_USAGE, message: Some(e) })?;
    let first = resolve(&args.target, overrides)?;
    let second = args.target2.as_deref().map(|t| resolve(t, overrides)).transpose()?;
    // The target with a recipe gives the data (template, splits, leakage check): the first, else
    // the second (base model folder vs fine-tuned run), which is then evaluated first.
    let swapped = first.recipe.is_none() && second.as_ref().is_some_and(|s| s.recipe.is_some());
    let (lead, other) = match (swapped, &second) {
        (true, Some(s)) => (s, Some(&first)),
        _ => (&first, second.as_ref()),
    };
    let loaded = load(lead, device)?;
    let tok = &loaded.tokenizer;

    // The run's data as training saw it: the evaluation split, and the training split to check
    // for leakage.
    let training = match &lead.recipe {
        Some((recipe, plan)) if !plan.training.reads_pairs() => {
            match data::prepare(plan, tok, &loaded.tokenizer_dir) {
                Ok(prepared) => Some(prepared),
                // With --dataset the run's data only serves the leakage check.
                Err(e) if args.dataset.is_some() => {
                    eprintln!("warning: {}: {e}; evaluation samples are not checked for leakage", recipe.display());
                    None
                }
                Err(e) => return Err(invalid(format!("{}: {e}", recipe.display()))),
            }
        }
        _ => None,
    };
    let (samples, source) = eval_samples(args, lead, &loaded, overrides, training.as_ref())?;
    if samples.is_empty() {
        return Err(invalid(format!("{source}: no sample to evaluate")));
    }
    let split: Vec<Option<model_eval::PromptAnswer>> =
        samples.iter().map(|s| model_eval::prompt_answer(s, tok.bos())).collect();
    let with_prompt: Vec<usize> = (0..samples.len()).filter(|&i| split[i].is_some()).collect();
    let metrics: Vec<Metric> = match requested {
        Some(m) => {
            if m.iter().any(|m| m.needs_generation()) && with_prompt.is_empty() {
                return Err(invalid(format!(
                    "{source}: no sample has a prompt and an answer (every token is trained, as in completion text), so \
                     there is nothing to generate and compare; use --metrics perplexity, or a prompt/answer dataset"
                )));
            }
            m
        }
        None if with_prompt.is_empty() => vec![Metric::Perplexity],
        None => Metric::ALL.to_vec(),
    };
    let generation: Vec<Metric> = metrics.iter().copied().filter(|m| m.needs_generation()).collect();
    let generating = !generation.is_empty();

    let leakage = training.as_ref().map(|t| {
        let train: HashSet<&Vec<i64>> = t.train.iter().map(|s| &s.input_ids).collect();
        samples.iter().filter(|s| train.contains(&s.input_ids)).count()
    });
    if let Some(n) = leakage.filter(|&n| n > 0) {
        eprintln!(
            "warning[leakage]: {n} of {} evaluation samples also appear in the training split of {}; their scores \
             measure memorisation, not generalisation",
            samples.len(),
            lead.recipe.as_ref().map_or(String::new(), |(r, _)| r.display().to_string())
        );
    }

    // What is evaluated: prompt/answer samples for generation, every sample for perplexity.
    let rows: Vec<usize> = if generating { with_prompt.clone() } else { (0..samples.len()).collect() };
    let references: Vec<String> = rows
        .iter()
        .map(|&i| match &split[i] {
            Some(pa) => tok.decode(&pa.answer),
            None => tok.decode(&samples[i].input_ids),
        })
        .collect();
    let prompts: Vec<String> = rows
        .iter()
        .map(|&i| split[i].as_ref().map_or(String::new(), |pa| tok.decode_with_special(&pa.prompt)))
        .collect();
    let answers: Vec<&[i64]> =
        with_prompt.iter().filter_map(|&i| split[i].as_ref().map(|pa| pa.answer.as_slice())).collect();
    let stop = model_eval::stop_ids(tok, &answers);
    let sampling = Sampling {
        temperature: args.temperature,
        top_p: args.top_p,
        max_new_tokens: args.max_new_tokens,
        seed: args.seed,
    };
    let batch = args.batch_size as usize;
    let text_options = TextOptions { rouge_stemmer: args.rouge_stemmer };

    let evaluate = |loaded: &exec::Loaded| -> Result<Outcome, Failure> {
        let tok = &loaded.tokenizer;
        let predictions: Vec<String> = if generating {
            let prompt_ids: Vec<Vec<i64>> =
                rows.iter().map(|&i| split[i].as_ref().expect("rows have prompts").prompt.clone()).collect();
            let ids = exec::catch_torch_errors(None, || {
                Ok(model_eval::complete(&loaded.model, &prompt_ids, &stop, sampling, batch))
            })
            .map_err(invalid)?;
            ids.iter().map(|ids| model_eval::completion_text(tok, ids, &stop)).collect()
        } else {
            vec![String::new(); rows.len()]
        };
        let preds: Vec<&str> = predictions.iter().map(String::as_str).collect();
        let refs: Vec<&str> = references.iter().map(String::as_str).collect();
        let (mut corpus, mut per_sample) = score_texts(text_options, &generation, &preds, &refs);
        let mut perplexity_tokens = None;
        if metrics.contains(&Metric::Perplexity) {
            let scored: Vec<Sample> = rows.iter().map(|&i| samples[i].clone()).collect();
            let nll = exec::catch_torch_errors(None, || Ok(model_eval::nll(&loaded.model, &scored, batch)))
                .map_err(invalid)?;
            let (sum, count) = nll.iter().fold((0.0, 0u64), |(s, c), (n, k)| (s + n, c + k));
            corpus.insert("perplexity".into(), json!(perplexity(sum, count)));
            perplexity_tokens = Some(count);
            for (m, (n, k)) in per_sample.iter_mut().zip(&nll) {
                m.insert("perplexity".into(), json!(perplexity(*n, *k)));
            }
        }
        Ok(Outcome { predictions, corpus, per_sample, perplexity_tokens })
    };
    let lead_outcome = evaluate(&loaded)?;
    let vocab = tok.vocab_size();
    // One model in memory at a time.
    drop(loaded);
    let other_outcome = match other {
        Some(t) => {
            let loaded2 = load(t, device)?;
            if loaded2.tokenizer.vocab_size() != vocab {
                return Err(invalid(format!(
                    "{} has a vocabulary of {} tokens, {} of {}: the two targets must share a tokenizer to be compared \
                     on the same tokens",
                    t.given.display(),
                    loaded2.tokenizer.vocab_size(),
                    lead.given.display(),
                    vocab
                )));
            }
            Some(evaluate(&loaded2)?)
        }
        None => None,
    };
    // Back in the order given: A is TARGET, B is TARGET2.
    let (a, b) = match (swapped, other_outcome) {
        (true, Some(o)) => (o, Some(lead_outcome)),
        (_, o) => (lead_outcome, o),
    };

    let out_dir = args.output.clone().unwrap_or_else(|| match &lead.recipe {
        Some(_) => lead.dir.join("eval"),
        None if lead.dir.join(exec::checkpoint::RUN_RECORD).is_file() => lead.dir.join("eval"),
        None => PathBuf::from("eval"),
    });
    std::fs::create_dir_all(&out_dir).map_err(|e| invalid(format!("{}: {e}", out_dir.display())))?;
    let write = |name: &str, text: String| -> Result<PathBuf, Failure> {
        let path = out_dir.join(name);
        std::fs::write(&path, text).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        Ok(path)
    };

    let mut lines = String::new();
    for (k, &i) in rows.iter().enumerate() {
        let mut row = json!({
            "index": i,
            "prompt": prompts[k],
            "reference": references[k],
            "prediction": a.predictions[k],
            "scores": a.per_sample[k],
        });
        if let Some(b) = &b {
            row["prediction_2"] = json!(b.predictions[k]);
            row["scores_2"] = json!(b.per_sample[k]);
        }
        if !generating {
            // Perplexity alone: nothing was generated, and a text with no prompt is its own reference.
            row["prediction"] = Value::Null;
            if b.is_some() {
                row["prediction_2"] = Value::Null;
            }
        }
        lines.push_str(&serde_json::to_string(&row).expect("serializes"));
        lines.push('\n');
    }
    let mut files = vec![write("eval_predictions.jsonl", lines)?];

    let mut results = json!({
        "target": first.given.display().to_string(),
        "metrics": a.corpus,
        "counts": {
            "samples": samples.len(),
            "evaluated": rows.len(),
            "without_prompt": samples.len() - with_prompt.len(),
            "leaked": leakage,
            "perplexity_tokens": a.perplexity_tokens,
        },
        "data": source,
        "settings": {
            "metrics": metrics.iter().map(|m| m.name()).collect::<Vec<_>>(),
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "seed": args.seed,
            "batch_size": args.batch_size,
            "stop_ids": stop,
            "bleu": "sacrebleu 2.6 corpus_bleu defaults (13a, exp smoothing); per sample sentence_bleu",
            "chrf": "sacrebleu chrF2 defaults",
            "ter": "sacrebleu TER defaults",
            "rouge": format!(
                "rouge-score 0.1.2 F1, {}, Lsum on newlines; corpus = mean of samples",
                if args.rouge_stemmer { "Porter stemmer" } else { "no stemmer" }
            ),
            "rouge_stemmer": args.rouge_stemmer,
            "exact_match": "SQuAD normalization; percent",
            "perplexity": "exp(mean NLL over trained tokens)",
        },
    });
    if let (Some(b), Some(t2)) = (&b, &second) {
        let difference: Map<String, Value> = a
            .corpus
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), json!(b.corpus.get(k)?.as_f64()? - v.as_f64()?))))
            .collect();
        results["target_2"] = json!(t2.given.display().to_string());
        results["metrics_2"] = json!(b.corpus);
        results["difference"] = json!(difference);
        let key = ["chrf", "sacrebleu", "rougeL", "exact_match", "ter", "perplexity"]
            .into_iter()
            .find(|k| a.corpus.contains_key(*k))
            .unwrap_or("perplexity");
        let review_rows: Vec<Row> = (0..rows.len())
            .map(|k| Row {
                prompt: prompts[k].clone(),
                reference: references[k].clone(),
                answer_a: a.predictions[k].clone(),
                answer_b: b.predictions[k].clone(),
                scores_a: a.per_sample[k].clone(),
                scores_b: b.per_sample[k].clone(),
            })
            .collect();
        let (name_a, name_b) = (first.given.display().to_string(), t2.given.display().to_string());
        let review = Review {
            target_a: &name_a,
            target_b: &name_b,
            key,
            corpus_a: &a.corpus,
            corpus_b: &b.corpus,
            rows: &review_rows,
        };
        files.push(write("eval_report.html", review.html())?);
        files.push(write("eval_report.md", review.markdown())?);
    }
    let text = serde_json::to_string_pretty(&results).expect("serializes") + "\n";
    files.insert(1, write("eval_results.json", text.clone())?);

    if args.json {
        print!("{text}");
    } else {
        println!("evaluated  {} samples of {source}", rows.len());
        for k in a.corpus.keys() {
            let va = a.corpus[k].as_f64().unwrap_or(f64::NAN);
            match &b {
                Some(b) => {
                    let vb = b.corpus.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
                    println!("{k:<12} {va:>10.4} -> {vb:>10.4}  ({:+.4})", vb - va);
                }
                None => println!("{k:<12} {va:>10.4}"),
            }
        }
        for f in &files {
            println!("wrote      {}", f.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
