//! The command line: `recipe validate | plan | schema | presets`, and with the executor
//! `env | run | generate | score | merge | quantize` (in `run`) and `eval` (in `eval`).
//!
//! Exit codes: 0 valid, 1 invalid (any error, or any warning with `--deny-warnings`), 2 usage or
//! I/O errors (a path that cannot be read, a directory with no recipes).

mod data;
#[cfg(feature = "exec")]
mod eval;
#[cfg(feature = "exec")]
mod run;

use crate::config::schema;
use crate::recipe::{self, diagnostic, presets};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "recipe", version, about = "Declarative YAML recipes for LLM fine-tuning")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Override a recipe value: --set key.path=value (YAML-typed; repeatable; highest precedence).
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    set: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check recipe files and directories (recursively, *.yaml / *.yml) and report every problem.
    Validate {
        /// Recipe files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// Fail (exit 1) on warnings too.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Compile a recipe into its execution plan (no weights are downloaded).
    Plan {
        recipe: PathBuf,
        /// Processes (GPUs) per node; default: WORLD_SIZE / SLURM_NTASKS from the environment, else 1.
        #[arg(long)]
        nproc_per_node: Option<u64>,
        /// Nodes; default: SLURM_NNODES, or WORLD_SIZE / LOCAL_WORLD_SIZE, else 1.
        #[arg(long)]
        nnodes: Option<u64>,
        /// GPU memory to check the estimate against: 24GiB, 80GB, ...; default: the smallest visible
        /// GPU (nvidia-smi), else no check.
        #[arg(long, value_parser = crate::plan::memory::parse_size)]
        gpu_memory: Option<u64>,
        /// Emit the plan as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the recipe JSON Schema (draft 2020-12).
    Schema,
    /// List the built-in presets and their values.
    Presets {
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Show samples as the model will see them: trained and masked text, token counts, packing.
    Preview {
        recipe: PathBuf,
        /// How many samples (and packed rows) to show.
        #[arg(short = 'n', long, default_value_t = 3)]
        n: usize,
        /// Emit JSON (token ids, labels, text runs, packing layout).
        #[arg(long)]
        json: bool,
    },
    /// Tokenize, mask and pack the datasets into dataset_prepared_path, for `recipe run` to reuse.
    Preprocess { recipe: PathBuf },
    /// Report the libtorch build and the devices it sees.
    #[cfg(feature = "exec")]
    Env,
    /// Train as the recipe says: validate, plan, load, train, evaluate, save.
    #[cfg(feature = "exec")]
    Run {
        recipe: PathBuf,
        /// auto (CUDA when present), cpu, cuda or cuda:N.
        #[arg(long, default_value = "auto")]
        device: String,
        /// No progress bar.
        #[arg(long)]
        no_progress: bool,
        /// Stop after N optimizer steps, saving a checkpoint as Ctrl-C does.
        #[arg(long)]
        stop_after: Option<u64>,
        /// Random-initialised base weights instead of the model's files (benchmarks and memory
        /// checks of shapes nobody downloads: only config.json and the tokenizer are read).
        #[arg(long)]
        random_weights: bool,
        /// Fail when a tracker (TensorBoard, MLflow, W&B) cannot start, instead of warning and
        /// training without it.
        #[arg(long)]
        deny_warnings: bool,
        #[command(flatten)]
        launch: run::LaunchArgs,
    },
    /// Sample from a trained model: a recipe (its output_dir) or an output/checkpoint folder. With
    /// `--adapter`, several peft adapters over that one base, switched without reloading it.
    #[cfg(feature = "exec")]
    Generate {
        target: PathBuf,
        /// The text to continue (or many, with --prompts-file).
        #[arg(long, required_unless_present = "prompts_file", conflicts_with = "prompts_file")]
        prompt: Option<String>,
        /// JSON Lines, one `{"prompt": "...", "adapter": "NAME"}` per line (`adapter` optional: the
        /// `--use` one); prints one JSON line per prompt (prompt, adapter, completion) in input order.
        #[arg(long, value_name = "FILE.jsonl")]
        prompts_file: Option<PathBuf>,
        /// Attach a peft adapter folder (LoRA, QLoRA, DoRA) over TARGET's base under NAME
        /// (repeatable).
        #[arg(long = "adapter", value_name = "NAME=DIR", value_parser = run::parse_named_adapter)]
        adapters: Vec<(String, PathBuf)>,
        /// The adapter to generate with: a NAME of --adapter, `default` (TARGET's own adapter) or
        /// `base` (none). Default: TARGET's own adapter when it has one, else the base.
        #[arg(long = "use", value_name = "NAME")]
        use_adapter: Option<String>,
        /// With --prompts-file: prompts of one adapter generated together, this many at a time.
        #[arg(long, default_value_t = 16, requires = "prompts_file", value_parser = clap::value_parser!(u64).range(1..))]
        batch_size: u64,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// 0 = greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Score texts with a trained reward model: a recipe (its output_dir) or an output/checkpoint
    /// folder. Each `--text` is scored as written (with the tokenizer's BOS); with `--prompt` and
    /// `--response`, the exchange is rendered by the recipe's chat template first.
    #[cfg(feature = "exec")]
    Score {
        target: PathBuf,
        /// A text to score (repeat for several).
        #[arg(long, required_unless_present = "prompt")]
        text: Vec<String>,
        /// A user turn, scored with its `--response` through the recipe's chat template.
        #[arg(long, requires = "response", conflicts_with = "text")]
        prompt: Option<String>,
        /// The assistant's answer to `--prompt`.
        #[arg(long, requires = "prompt")]
        response: Option<String>,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Evaluate a model on held-out data: BLEU, chrF, TER, ROUGE, exact match (generated answers
    /// against references) and perplexity; with a second target, a side-by-side report.
    #[cfg(feature = "exec")]
    Eval(eval::EvalArgs),
    /// Quantize the recipe's base (load_in_4bit) once and write it in transformers' bitsandbytes
    /// format; set it as base_model to skip quantizing at every run.
    #[cfg(feature = "exec")]
    Quantize {
        recipe: PathBuf,
        /// Where to write it (default: OUTPUT_DIR/quantized-base).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Fold a LoRA adapter into its base and write a Hugging Face model folder.
    #[cfg(feature = "exec")]
    Merge {
        /// A recipe (its output_dir) or an adapter folder.
        target: PathBuf,
        /// Where to write the merged model (default: OUTPUT_DIR/merged).
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

const EXIT_INVALID: u8 = 1;
const EXIT_USAGE: u8 = 2;

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(EXIT_USAGE) } else { ExitCode::SUCCESS };
        }
    };
    match cli.command {
        Command::Validate { paths, format, deny_warnings } => validate(&paths, &cli.set, format, deny_warnings),
        Command::Plan { recipe, nproc_per_node, nnodes, gpu_memory, json } => {
            let (world_size, nodes) = world(nproc_per_node, nnodes);
            let gpu_memory = gpu_memory.or_else(visible_gpu_memory);
            let options = crate::plan::PlanOptions { world_size, nodes, gpu_memory };
            plan(&recipe, &cli.set, options, json)
        }
        Command::Schema => {
            print!("{}", schema::schema_text());
            ExitCode::SUCCESS
        }
        Command::Presets { format } => list_presets(format),
        Command::Preview { recipe, n, json } => data::preview(&recipe, &cli.set, n, json),
        Command::Preprocess { recipe } => data::preprocess(&recipe, &cli.set),
        #[cfg(feature = "exec")]
        Command::Env => {
            let report = crate::exec::device_report();
            println!("{}", serde_json::to_string_pretty(&report).expect("serializes"));
            ExitCode::SUCCESS
        }
        #[cfg(feature = "exec")]
        Command::Run { recipe, device, no_progress, stop_after, random_weights, deny_warnings, launch } => {
            if launch.nproc_per_node.is_some() {
                return run::spawn_ranks(&launch);
            }
            let flags = run::RunFlags { progress: !no_progress, stop_after, random_weights, deny_warnings };
            run::train(&recipe, &cli.set, &device, flags)
        }
        #[cfg(feature = "exec")]
        Command::Generate {
            target,
            prompt,
            prompts_file,
            adapters,
            use_adapter,
            batch_size,
            max_new_tokens,
            temperature,
            top_p,
            seed,
            device,
        } => {
            let sampling = crate::model::generate::Sampling { temperature, top_p, max_new_tokens, seed };
            let prompts = match (prompt, prompts_file) {
                (Some(prompt), _) => run::Prompts::One(prompt),
                (None, Some(file)) => run::Prompts::File(file),
                (None, None) => {
                    eprintln!("error: give --prompt or --prompts-file");
                    return ExitCode::from(EXIT_USAGE);
                }
            };
            let request = run::GenerateRequest { prompts, adapters, use_adapter, batch_size: batch_size as usize };
            run::generate(&target, &cli.set, &request, sampling, &device)
        }
        #[cfg(feature = "exec")]
        Command::Score { target, text, prompt, response, json, device } => {
            let input = match (prompt, response) {
                (Some(prompt), Some(response)) => run::ScoreInput::Exchange { prompt, response },
                _ => run::ScoreInput::Texts(text),
            };
            run::score(&target, &cli.set, &input, json, &device)
        }
        #[cfg(feature = "exec")]
        Command::Eval(args) => eval::eval(&args, &cli.set),
        #[cfg(feature = "exec")]
        Command::Merge { target, output } => run::merge(&target, &cli.set, output.as_deref()),
        #[cfg(feature = "exec")]
        Command::Quantize { recipe, output } => run::quantize(&recipe, &cli.set, output.as_deref()),
    }
}

/// Loads and compiles a recipe, printing its diagnostics; the exit code on failure.
fn compile_recipe(
    path: &Path,
    overrides: &[String],
    options: crate::plan::PlanOptions,
) -> Result<crate::plan::Plan, ExitCode> {
    let loaded = recipe::load(path, overrides);
    let styled = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    if !loaded.diagnostics.is_empty() {
        eprint!("{}", diagnostic::render_text(&loaded.diagnostics, &loaded.sources, styled));
    }
    if loaded.usage_failed() {
        return Err(ExitCode::from(EXIT_USAGE));
    }
    if loaded.has_errors() {
        return Err(ExitCode::from(EXIT_INVALID));
    }
    crate::plan::compile(&loaded, options).map_err(|message| {
        eprintln!("{}: error[plan]: {message}", path.display());
        ExitCode::from(EXIT_INVALID)
    })
}

/// Expands directories into their recipe files (sorted, recursive).
fn collect_recipes(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if meta.is_dir() {
            let before = files.len();
            walk(path, &mut files).map_err(|e| format!("{}: {e}", path.display()))?;
            if files.len() == before {
                return Err(format!("{}: no recipe files (*.yaml, *.yml) in this directory", path.display()));
            }
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if entry.file_name() != ".git" {
                walk(&path, files)?;
            }
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            files.push(path);
        }
    }
    Ok(())
}

fn validate(paths: &[PathBuf], overrides: &[String], format: Format, deny_warnings: bool) -> ExitCode {
    let files = match collect_recipes(paths) {
        Ok(files) => files,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let styled = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let mut out = std::io::stdout().lock();
    let (mut errors, mut warnings, mut invalid, mut io_failed) = (0usize, 0usize, 0usize, false);
    let mut json = Vec::new();
    for file in &files {
        let loaded = recipe::load(file, overrides);
        let file_errors = loaded.diagnostics.iter().filter(|d| d.is_error()).count();
        let file_warnings = loaded.diagnostics.len() - file_errors;
        errors += file_errors;
        warnings += file_warnings;
        io_failed |= loaded.usage_failed();
        if file_errors > 0 || (deny_warnings && file_warnings > 0) {
            invalid += 1;
        }
        match format {
            Format::Text => {
                let _ = write!(out, "{}", diagnostic::render_text(&loaded.diagnostics, &loaded.sources, styled));
            }
            Format::Json => json.extend(loaded.diagnostics.iter().map(|d| diagnostic::to_json(d, &loaded.sources))),
        }
    }
    match format {
        Format::Text => {
            let _ = writeln!(
                out,
                "{} file{} checked: {} invalid, {errors} error{}, {warnings} warning{}",
                files.len(),
                plural(files.len()),
                invalid,
                plural(errors),
                plural(warnings)
            );
        }
        Format::Json => {
            let report = serde_json::json!({
                "files": files.len(),
                "invalid": invalid,
                "errors": errors,
                "warnings": warnings,
                "diagnostics": json,
            });
            let _ = writeln!(out, "{}", serde_json::to_string_pretty(&report).expect("serializes"));
        }
    }
    if io_failed {
        ExitCode::from(EXIT_USAGE)
    } else if invalid > 0 {
        ExitCode::from(EXIT_INVALID)
    } else {
        ExitCode::SUCCESS
    }
}

/// The smallest memory of the GPUs this process may use (CUDA_VISIBLE_DEVICES honoured), from
/// `nvidia-smi`; None where there is none.
fn visible_gpu_memory() -> Option<u64> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=index,memory.total", "--format=csv,noheader,nounits"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let visible: Option<Vec<String>> = std::env::var("CUDA_VISIBLE_DEVICES")
        .ok()
        .map(|v| v.split(',').map(|d| d.trim().to_string()).filter(|d| !d.is_empty()).collect());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (index, mib) = line.split_once(',')?;
            let index = index.trim();
            let shown = visible.as_ref().is_none_or(|v| v.iter().any(|d| d == index));
            shown.then(|| mib.trim().parse::<u64>().ok()).flatten()
        })
        .min()
        .map(|mib| mib << 20)
}

/// An unsigned integer environment variable, when set and positive.
fn env_count(names: &[&str]) -> Option<u64> {
    names.iter().find_map(|v| std::env::var(v).ok().and_then(|s| s.parse::<u64>().ok())).filter(|n| *n > 0)
}

/// (world size, nodes) from the flags, else from torchrun (WORLD_SIZE, LOCAL_WORLD_SIZE) or SLURM
/// (SLURM_NTASKS, SLURM_NNODES) variables, else one process.
fn world(nproc_per_node: Option<u64>, nnodes: Option<u64>) -> (u64, u64) {
    if let Some(per_node) = nproc_per_node {
        let nodes = nnodes.unwrap_or(1).max(1);
        return (per_node.max(1) * nodes, nodes);
    }
    let world = env_count(&["WORLD_SIZE", "SLURM_NTASKS"]).unwrap_or(nnodes.unwrap_or(1).max(1));
    let nodes = nnodes
        .or_else(|| env_count(&["SLURM_NNODES"]))
        .or_else(|| env_count(&["LOCAL_WORLD_SIZE"]).map(|local| world.div_ceil(local)))
        .unwrap_or(1);
    (world, nodes.clamp(1, world))
}

fn plan(path: &Path, overrides: &[String], options: crate::plan::PlanOptions, json: bool) -> ExitCode {
    let compiled = compile_recipe(path, overrides, options).map(|mut plan| {
        match crate::data::measure(&plan) {
            Ok(measured) => plan.measured_data = measured,
            // The plan stands without its data figures; preview / preprocess / run report the error too.
            Err(e) => {
                eprintln!("{}: warning[data]: {e} (the plan's measured data figures are left out)", path.display())
            }
        }
        plan
    });
    match compiled {
        Ok(plan) if json => {
            println!("{}", serde_json::to_string_pretty(&plan).expect("serializes"));
            ExitCode::SUCCESS
        }
        Ok(plan) => {
            print!("{}", crate::plan::render_text(&plan));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn list_presets(format: Format) -> ExitCode {
    match format {
        Format::Text => {
            for p in presets::PRESETS {
                println!("{}: {}", p.name, p.summary);
                for line in p.yaml.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
                    println!("    {line}");
                }
                println!();
            }
        }
        Format::Json => {
            let list: Vec<serde_json::Value> = presets::PRESETS
                .iter()
                .map(|p| {
                    let mut sources = recipe::source::Sources::default();
                    let id = sources.add(recipe::source::SourceKind::Preset(p.name.into()), p.yaml.into());
                    let values = recipe::yaml::parse(p.yaml, id, 0)
                        .ok()
                        .flatten()
                        .map_or(serde_json::Value::Null, |n| n.to_json());
                    serde_json::json!({"name": p.name, "summary": p.summary, "values": values})
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&list).expect("serializes"));
        }
    }
    ExitCode::SUCCESS
}
