//! `recipe run`, `recipe generate`, `recipe score`, `recipe merge`: the executor's commands and
//! what they print.

use super::{EXIT_INVALID, EXIT_USAGE, compile_recipe};
use crate::exec::{self, RunOptions};
use crate::model::generate::{Sampling, generate as sample};
use crate::plan::{Plan, PlanOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// stderr for log lines, printed around the progress bar rather than through it.
struct AroundProgress;

impl std::io::Write for AroundProgress {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        exec::around_progress(|| std::io::stderr().write(buf))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// `recipe run --nproc-per-node N`: this command spawns the node's ranks (torchrun's flags).
#[derive(Debug, Clone, clap::Args)]
pub struct LaunchArgs {
    /// Spawn N ranks on this node (one per GPU; CPU ranks share the cores) and wait for them.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub nproc_per_node: Option<u32>,
    /// Nodes taking part (run the same command on each, with its --node-rank).
    #[arg(long, default_value_t = 1, requires = "nproc_per_node", value_parser = clap::value_parser!(u32).range(1..))]
    pub nnodes: u32,
    /// This node's index among the nodes.
    #[arg(long, default_value_t = 0, requires = "nproc_per_node")]
    pub node_rank: u32,
    /// Address of node 0, where rank 0 hosts the rendezvous store.
    #[arg(long, default_value = "127.0.0.1", requires = "nproc_per_node")]
    pub master_addr: String,
    /// Port of the rendezvous store; default: a free port (single node).
    #[arg(long, requires = "nproc_per_node")]
    pub master_port: Option<u16>,
}

/// The launcher flags and their values, removed from the command line the ranks get.
const LAUNCH_FLAGS: &[&str] = &["--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port"];

/// Spawns this node's ranks as `recipe run` with the same arguments minus the launcher's.
pub fn spawn_ranks(launch: &LaunchArgs) -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    let mut skip_value = false;
    for arg in std::env::args_os().skip(1) {
        if skip_value {
            skip_value = false;
            continue;
        }
        let text = arg.to_string_lossy();
        if let Some(flag) = LAUNCH_FLAGS.iter().find(|f| text == **f || text.starts_with(&format!("{f}="))) {
            skip_value = text == *flag;
            continue;
        }
        args.push(arg);
    }
    if launch.node_rank >= launch.nnodes {
        eprintln!("error: --node-rank {} is not below --nnodes {}", launch.node_rank, launch.nnodes);
        return ExitCode::from(EXIT_USAGE);
    }
    let program = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot find this program to spawn the ranks: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let opts = crate::launch::SpawnOptions {
        nproc_per_node: launch.nproc_per_node.unwrap_or(1) as usize,
        nnodes: launch.nnodes as usize,
        node_rank: launch.node_rank as usize,
        master_addr: launch.master_addr.clone(),
        master_port: launch.master_port,
    };
    match crate::launch::spawn(&program, &args, &opts, std::time::Duration::from_secs(10)) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(code.clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn init_logging(rank: usize) {
    // Ranks other than the main process print warnings and errors only (RECIPE_LOG overrides).
    let default = if rank == 0 { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("RECIPE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| AroundProgress)
        // Colour codes only on a terminal, and never under NO_COLOR.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none())
        .with_target(false)
        .without_time()
        .try_init();
}

fn device(text: &str) -> Result<tch::Device, ExitCode> {
    exec::parse_device(text).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_USAGE)
    })
}

/// The device of this rank: `auto` / `cuda` mean `cuda:LOCAL_RANK` when launched as several ranks
/// on a machine that shows them all its GPUs, and `cuda:0` where each rank sees one GPU of its own
/// (SLURM's `--gpus-per-task`, or CUDA_VISIBLE_DEVICES set per rank).
fn rank_device(text: &str, process: &crate::launch::ProcessEnv) -> Result<tch::Device, String> {
    let device = exec::parse_device(text)?;
    let count = tch::Cuda::device_count().max(0) as usize;
    match device {
        tch::Device::Cuda(_) if matches!(text, "auto" | "cuda") => {
            let n = if count == 1 { 0 } else { process.local_rank };
            if n >= count {
                return Err(format!(
                    "local rank {n} needs cuda:{n}, but this machine shows {count} CUDA devices: start at most \
                     {count} ranks per node"
                ));
            }
            Ok(tch::Device::Cuda(n))
        }
        tch::Device::Cuda(n) if process.local_world_size > 1 && count > 1 && n != process.local_rank => Err(format!(
            "--device {text} on local rank {}: each rank of a multi-process run uses cuda:LOCAL_RANK; use --device \
             auto",
            process.local_rank
        )),
        d => Ok(d),
    }
}

/// `recipe run`'s switches.
pub struct RunFlags {
    pub progress: bool,
    pub stop_after: Option<u64>,
    pub random_weights: bool,
    pub deny_warnings: bool,
}

pub fn train(recipe: &Path, overrides: &[String], device_name: &str, flags: RunFlags) -> ExitCode {
    let RunFlags { progress, stop_after, random_weights, deny_warnings } = flags;
    let process = match crate::launch::ProcessEnv::from_env() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_logging(process.rank);
    // Errors of ranks other than the main process say whose they are.
    let who = if process.joins_group() { format!("[rank {}] ", process.rank) } else { String::new() };
    // A rank that fails before it joins still tells the others (at once, not after ddp_timeout),
    // when it knows its device: the others use that backend. Without one it just exits, and the
    // launcher stops the rest.
    let announce = |process: &crate::launch::ProcessEnv| {
        if let (true, Ok(device)) = (process.joins_group(), rank_device(device_name, process)) {
            let timeout = std::time::Duration::from_secs(exec::distributed::DEFAULT_TIMEOUT_SECS);
            exec::distributed::announce_failed_set_up(process, device, timeout);
        }
    };
    let options = PlanOptions { world_size: process.world_size as u64, nodes: process.nodes as u64, gpu_memory: None };
    let plan = match compile_recipe(recipe, overrides, options) {
        Ok(p) => p,
        Err(code) => {
            if process.joins_group() {
                eprintln!("{who}error: the recipe did not compile on this rank");
            }
            announce(&process);
            return code;
        }
    };
    let device = match rank_device(device_name, &process) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{who}error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    exec::install_stop_handler();
    let is_main = process.is_main();
    let m = &plan.model;
    if is_main {
        eprintln!(
            "recipe run {}: {} ({} parameters, {} trainable by {}), {} steps planned",
            recipe.display(),
            m.name,
            crate::plan::group(m.parameters.total),
            crate::plan::group(plan.adapter.trainable_parameters),
            plan.adapter.method,
            plan.batch.total_steps.map_or("data-dependent".into(), |s| s.to_string())
        );
    }
    let opts = RunOptions { device, progress, stop_after, sample_tokens: 48, random_weights, process, deny_warnings };
    match exec::run(&plan, &opts) {
        Ok(r) => {
            if is_main {
                report(&plan, &r);
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("{who}{}: error[run]: {message}", recipe.display());
            ExitCode::from(EXIT_INVALID)
        }
    }
}

fn report(plan: &Plan, r: &exec::RunReport) {
    println!("device     {} (compute {})", r.device, r.compute);
    if let Some(backend) = r.backend {
        let l = &plan.layout;
        let (ran, planned) = (&r.collectives_per_step, &l.per_step);
        let b = crate::plan::bytes;
        if l.strategy.shards_optimizer() {
            println!(
                "layout     {:?} across {} rank(s) ({backend}); per step all-gathered {}, reduce-scattered {}, \
                 all-reduced {} (plan: {}, {}, {})",
                l.strategy,
                r.world_size,
                b(ran.all_gather),
                b(ran.reduce_scatter),
                b(ran.all_reduce),
                b(planned.all_gather),
                b(planned.reduce_scatter),
                b(planned.all_reduce)
            );
        } else {
            println!(
                "layout     {:?} across {} rank(s) ({backend}); all-reduced {} of gradients per step (plan: {})",
                l.strategy,
                r.world_size,
                b(ran.all_reduce),
                b(planned.all_reduce)
            );
        }
    }
    for line in &r.data {
        println!("data       {line}");
    }
    println!(
        "{}",
        if plan.training.reads_pairs() {
            format!(
                "pairs      {} training, {} validation (sequence_len {}, not packed)",
                r.train_rows, r.validation_rows, plan.batch.sequence_len
            )
        } else {
            format!(
                "rows       {} training, {} validation (sequence_len {}, packing {}, efficiency {:.1}%)",
                r.train_rows,
                r.validation_rows,
                plan.batch.sequence_len,
                plan.batch.sample_packing,
                100.0 * r.packing_efficiency
            )
        }
    );
    if let Some(dir) = &r.resumed_from {
        println!("resumed    from {}", dir.display());
    }
    println!("steps      {} of {} ({:.0} tokens/s)", r.steps_done, r.total_steps, r.tokens_per_second);
    let sharded = plan.layout.strategy.shards_optimizer() && r.world_size > 1;
    let offloaded = sharded && plan.layout.offload.trainable;
    let whose = match (sharded, offloaded) {
        (true, true) => " on this rank (its chunks), in host memory (offload)",
        (true, false) => " on this rank (its chunks)",
        _ => "",
    };
    println!(
        "optimizer  {}: {} of state{whose}{}",
        plan.training.optimizer.name,
        crate::plan::bytes(r.optimizer_state_bytes.max(0) as u64),
        if r.optimizer_untouched > 0 {
            format!(
                "; {} 1-D tensors left as loaded (in neither of Muon's groups, as in Axolotl)",
                r.optimizer_untouched
            )
        } else {
            String::new()
        }
    );
    if let Some(kernel) = r.packed_attention {
        println!("attention  packed rows: {kernel}");
    }
    let syncs = r.host_syncs.describe();
    if !syncs.is_empty() {
        println!("host syncs {syncs} (device-to-host reads per optimizer step)");
    }
    if let Some((measured, planned)) = r.cpu_peak_bytes {
        println!(
            "memory     training peak {} in use (CPU, by the allocator, above its use before loading); the plan's CPU estimate {} ({:+.1}%)",
            crate::plan::bytes(measured),
            crate::plan::bytes(planned),
            (planned as f64 / measured.max(1) as f64 - 1.0) * 100.0
        );
    }
    if let Some((measured, planned)) = r.gpu_peak_bytes {
        println!(
            "memory     training peak {} on the GPU (in use on the device: context and allocator pool included); the \
             plan's estimate {} ({:+.1}%)",
            crate::plan::bytes(measured),
            crate::plan::bytes(planned),
            (planned as f64 / measured.max(1) as f64 - 1.0) * 100.0
        );
    }
    if sharded && plan.layout.offload.any() {
        println!(
            "offload    {} chunks, their gradient chunks and the optimizer states kept in host memory: the plan's {} \
             per rank off the GPU{}",
            if plan.layout.offload.frozen { "trainable and frozen" } else { "trainable" },
            crate::plan::bytes(plan.memory.host_bytes),
            if r.cpu_peak_bytes.is_some() { " (on this CPU run host and device are one memory)" } else { "" }
        );
    }
    if let Some(a) = &plan.training.activation_offloading {
        println!(
            "offload    activations ({}): {}",
            a.requested_by,
            if r.device == format!("{:?}", tch::Device::Cpu) {
                "no effect on CPU, the activations already live in host memory"
            } else {
                "each checkpointed layer input in pinned host memory between its forward pass and its recomputation"
            }
        );
    }
    // Perplexity belongs to language modelling; a preference loss is shown alone.
    let preference = plan.training.preference.is_some() || plan.training.reward.is_some();
    let fmt = |l: Option<f64>| match l {
        None => "-".to_string(),
        Some(l) if preference => format!("{l:.4}"),
        Some(l) => format!("{l:.4} (perplexity {:.2})", l.exp()),
    };
    println!("val loss   before {}  after {}", fmt(r.eval_loss_before), fmt(r.eval_loss_after));
    if let (before, Some(after)) = r.forgetting_perplexity {
        let before = before.map_or("-".to_string(), |b| format!("{b:.2}"));
        println!("forgetting perplexity on forgetting_datasets before {before}  after {after:.2}");
    }
    if let Some(reason) = &r.stopped_early {
        println!("stopped    early: {reason}");
    }
    if r.interrupted {
        println!(
            "stopped    at step {} after saving a checkpoint; run again with --set resume_from_checkpoint=true to go on",
            r.steps_done
        );
    }
    if let Some((prompt, text)) = &r.sample {
        println!("sample     {prompt:?} → {text:?}");
    }
    for (i, line) in r.tracking.iter().enumerate() {
        println!("{}{line}", if i == 0 { "tracked    " } else { "           " });
    }
    println!("outputs    {}", r.output_dir.display());
    for p in &r.outputs {
        println!("           {}", p.display());
    }
}

/// The base's quantization in training, from the recipe when one was given (so an adapter trained
/// over a quantized base meets the same base).
fn quantization(plan: Option<&Plan>, target: &Path) -> Result<Option<crate::model::llama::Quantize>, ExitCode> {
    match plan.map(exec::quantize_spec).transpose() {
        Ok(q) => Ok(q.flatten()),
        Err(e) => {
            eprintln!("{}: error: {e}", target.display());
            Err(ExitCode::from(EXIT_INVALID))
        }
    }
}

/// A recipe (YAML) gives its output_dir and base model; a folder is an output or checkpoint.
fn resolve_target(target: &Path, overrides: &[String]) -> Result<(PathBuf, Option<PathBuf>, Option<Plan>), ExitCode> {
    let is_recipe = matches!(target.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
    if !is_recipe {
        return Ok((target.to_path_buf(), None, None));
    }
    let plan = compile_recipe(target, overrides, PlanOptions::default())?;
    let base = crate::plan::model::model_folder(&plan.model).map_err(|e| {
        eprintln!("{}: error: {e}", target.display());
        ExitCode::from(EXIT_INVALID)
    })?;
    Ok((PathBuf::from(&plan.training.output_dir), Some(base), Some(plan)))
}

/// A trained model for `generate` / `score`: the target resolved (a recipe's output_dir, or a
/// folder), loaded on the device with the base quantized as in training; the folder and the plan
/// (when a recipe was given) beside it.
fn load_target(
    target: &Path,
    overrides: &[String],
    device_name: &str,
) -> Result<(exec::Loaded, PathBuf, Option<Plan>), ExitCode> {
    let (dir, base, plan) = resolve_target(target, overrides)?;
    let loaded = load_resolved(target, &dir, base.as_deref(), plan.as_ref(), device_name)?;
    Ok((loaded, dir, plan))
}

/// `load_target` once the target is resolved.
fn load_resolved(
    target: &Path,
    dir: &Path,
    base: Option<&Path>,
    plan: Option<&Plan>,
    device_name: &str,
) -> Result<exec::Loaded, ExitCode> {
    let device = device(device_name)?;
    let quantize = quantization(plan, target)?;
    match exec::catch_torch_errors(None, || exec::load_trained(dir, base, device, quantize, Some(tch::Kind::Float))) {
        Ok(loaded) => Ok(loaded),
        Err(e) => {
            eprintln!("{}: error: {e}", dir.display());
            Err(ExitCode::from(EXIT_INVALID))
        }
    }
}

/// What `recipe generate` continues.
pub enum Prompts {
    One(String),
    /// JSON Lines of `{"prompt": ..., "adapter": ...}`.
    File(PathBuf),
}

/// `recipe generate`'s prompts and adapters.
pub struct GenerateRequest {
    pub prompts: Prompts,
    /// `--adapter NAME=DIR`, in the order given.
    pub adapters: Vec<(String, PathBuf)>,
    /// `--use NAME`.
    pub use_adapter: Option<String>,
    /// Prompts of a file generated together, per adapter.
    pub batch_size: usize,
}

/// The name of TARGET's own adapter (peft's name for the adapter a model is loaded with), and the
/// name that means no adapter.
const OWN_ADAPTER: &str = "default";
const NO_ADAPTER: &str = "base";

/// `--adapter NAME=DIR`.
pub fn parse_named_adapter(text: &str) -> Result<(String, PathBuf), String> {
    let (name, dir) = text.split_once('=').ok_or("expected NAME=DIR")?;
    let name = name.trim();
    if name.is_empty() || dir.is_empty() {
        return Err("expected NAME=DIR, both non-empty".into());
    }
    if name == NO_ADAPTER {
        return Err(format!("`{NO_ADAPTER}` names the base without adapters; pick another name"));
    }
    Ok((name.to_string(), PathBuf::from(dir)))
}

/// One prompt of a prompts file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptLine {
    prompt: String,
    #[serde(default)]
    adapter: Option<String>,
}

/// The prompts of a JSON Lines file with their line numbers (blank lines skipped); errors as
/// `file:line:column: message`, and the exit code (usage for I/O, invalid for content).
fn read_prompts(path: &Path) -> Result<Vec<(usize, PromptLine)>, (String, u8)> {
    let text = std::fs::read_to_string(path).map_err(|e| (format!("{}: {e}", path.display()), EXIT_USAGE))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: PromptLine = serde_json::from_str(line).map_err(|e| {
            // serde_json's position is within the line: the file's line number replaces it.
            let message = e.to_string();
            let message = message.rsplit_once(" at line ").map_or(message.as_str(), |(m, _)| m);
            (format!("{}:{}:{}: {message}", path.display(), i + 1, e.column()), EXIT_INVALID)
        })?;
        out.push((i + 1, row));
    }
    if out.is_empty() {
        return Err((format!("{}: no prompts (one JSON object per line)", path.display()), EXIT_INVALID));
    }
    Ok(out)
}

/// Checks `name` against the adapters there are: `Err` says which exist, with a did-you-mean.
fn known_adapter(name: &str, names: &[&str]) -> Result<(), String> {
    if names.contains(&name) {
        return Ok(());
    }
    let hint = crate::recipe::diagnostic::did_you_mean(name, names.iter().copied())
        .map(|n| format!("; did you mean `{n}`?"))
        .unwrap_or_default();
    let listed = names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    Err(format!("no adapter named `{name}` (there are {listed}){hint}"))
}

pub fn generate(
    target: &Path,
    overrides: &[String],
    request: &GenerateRequest,
    sampling: Sampling,
    device_name: &str,
) -> ExitCode {
    let usage = |e: String| {
        eprintln!("error: {e}");
        ExitCode::from(EXIT_USAGE)
    };
    // Every name is checked before the model loads.
    let mut seen: Vec<&(String, PathBuf)> = Vec::new();
    for given in &request.adapters {
        if let Some(first) = seen.iter().find(|s| s.0 == given.0) {
            return usage(format!(
                "--adapter `{}` is given twice ({} and {})",
                given.0,
                first.1.display(),
                given.1.display()
            ));
        }
        seen.push(given);
    }
    let (single, rows) = match &request.prompts {
        Prompts::One(prompt) => (Some(prompt), Vec::new()),
        Prompts::File(path) => match read_prompts(path) {
            Ok(rows) => (None, rows),
            Err((e, code)) => {
                eprintln!("error: {e}");
                return ExitCode::from(code);
            }
        },
    };
    let (dir, base, plan) = match resolve_target(target, overrides) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let own_adapter = dir.join("adapter_config.json").is_file();
    if own_adapter && let Some((_, d)) = request.adapters.iter().find(|(n, _)| n == OWN_ADAPTER) {
        return usage(format!(
            "--adapter {OWN_ADAPTER}={}: `{OWN_ADAPTER}` names {}'s own adapter; pick another name",
            d.display(),
            target.display()
        ));
    }
    let mut names: Vec<&str> = request.adapters.iter().map(|(n, _)| n.as_str()).collect();
    names.extend(own_adapter.then_some(OWN_ADAPTER));
    names.push(NO_ADAPTER);
    let default = request.use_adapter.as_deref().unwrap_or(if own_adapter { OWN_ADAPTER } else { NO_ADAPTER });
    if let Err(e) = known_adapter(default, &names) {
        return usage(format!("--use: {e}"));
    }
    if let Prompts::File(path) = &request.prompts {
        for (line, row) in &rows {
            if let Some(Err(e)) = row.adapter.as_deref().map(|a| known_adapter(a, &names)) {
                eprintln!("error: {}:{line}: {e}", path.display());
                return ExitCode::from(EXIT_INVALID);
            }
        }
    }

    let loaded = match load_resolved(target, &dir, base.as_deref(), plan.as_ref(), device_name) {
        Ok(l) => l,
        Err(code) => return code,
    };
    if loaded.model.score.is_some() {
        eprintln!(
            "{}: error: this is a reward model (a score head, no language-model head); score texts with `recipe score`",
            dir.display()
        );
        return ExitCode::from(EXIT_INVALID);
    }
    let exec::Loaded { model, tokenizer: tok, base_dir, .. } = loaded;
    let mut served = crate::model::serving::Adapters::new(model, OWN_ADAPTER);
    for (name, adapter_dir) in &request.adapters {
        if let Err(e) = exec::catch_torch_errors(None, || served.attach(name, adapter_dir)) {
            eprintln!("error: adapter `{name}`: {e}");
            return ExitCode::from(EXIT_INVALID);
        }
    }
    let template = plan.as_ref().and_then(|p| p.chat_template.as_ref());
    let encode = |prompt: &str| match template {
        // A chat recipe: the prompt as a user turn, rendered with the generation prompt.
        Some(t) => {
            let messages = [serde_json::json!({"role": "user", "content": prompt})];
            render_chat(t, &base_dir, &dir, &messages, true, &tok)
        }
        None => tok.encode(prompt).map(|p| tok.bos().into_iter().chain(p).collect::<Vec<i64>>()),
    };
    let fail = |e: String| {
        eprintln!("{}: error: {e}", target.display());
        ExitCode::from(EXIT_INVALID)
    };
    // The switch is timed and reported when adapters are chosen by name.
    let report_switches = !request.adapters.is_empty() || request.use_adapter.is_some();
    let switch = |served: &mut crate::model::serving::Adapters, name: &str| -> Result<(), String> {
        let started = std::time::Instant::now();
        served.set_adapter(Some(name).filter(|n| *n != NO_ADAPTER))?;
        if report_switches {
            eprintln!("adapter `{name}` active: switched in {:.1} µs", started.elapsed().as_secs_f64() * 1e6);
        }
        Ok(())
    };

    if let Some(prompt) = single {
        let ids = match encode(prompt) {
            Ok(ids) => ids,
            Err(e) => return fail(e),
        };
        if let Err(e) = switch(&mut served, default) {
            return fail(e);
        }
        let out = match exec::catch_torch_errors(None, || Ok(sample(&served.model, &ids, tok.eos(), sampling))) {
            Ok(out) => out,
            Err(e) => return fail(e),
        };
        if template.is_some() {
            println!("{}", tok.decode(&out));
        } else {
            println!("{prompt}{}", tok.decode(&out));
        }
        return ExitCode::SUCCESS;
    }
    // Each adapter's prompts together (adapters in order of first use), `batch_size` at a time;
    // results go back in input order.
    let mut ids = Vec::with_capacity(rows.len());
    for (line, row) in &rows {
        match encode(&row.prompt) {
            Ok(i) => ids.push(i),
            Err(e) => return fail(format!("line {line}: {e}")),
        }
    }
    let adapter_of: Vec<&str> = rows.iter().map(|(_, r)| r.adapter.as_deref().unwrap_or(default)).collect();
    let mut order: Vec<&str> = Vec::new();
    for a in &adapter_of {
        if !order.contains(a) {
            order.push(a);
        }
    }
    let stop: Vec<i64> = tok.eos().into_iter().collect();
    let mut completions = vec![Vec::new(); rows.len()];
    for name in order {
        if let Err(e) = switch(&mut served, name) {
            return fail(e);
        }
        let members: Vec<usize> = (0..rows.len()).filter(|&i| adapter_of[i] == name).collect();
        let prompts: Vec<Vec<i64>> = members.iter().map(|&i| ids[i].clone()).collect();
        let complete = || Ok(exec::eval::complete(&served.model, &prompts, &stop, sampling, request.batch_size));
        let out = match exec::catch_torch_errors(None, complete) {
            Ok(out) => out,
            Err(e) => return fail(e),
        };
        for (i, o) in members.into_iter().zip(out) {
            completions[i] = o;
        }
    }
    for (((_, row), adapter), out) in rows.iter().zip(&adapter_of).zip(&completions) {
        let line = serde_json::json!({"prompt": row.prompt, "adapter": adapter, "completion": tok.decode(out)});
        println!("{line}");
    }
    ExitCode::SUCCESS
}

/// Token ids of `messages` rendered by the recipe's chat template (with the assistant's generation
/// prompt when `generation_prompt`).
fn render_chat(
    t: &crate::plan::data::TemplatePlan,
    base_dir: &Path,
    output_dir: &Path,
    messages: &[serde_json::Value],
    generation_prompt: bool,
    tok: &crate::data::Tokenizer,
) -> Result<Vec<i64>, String> {
    use crate::data::template::{ChatTemplate, FixedDate, SpecialTokenStrings};
    let text = match &t.text {
        Some(text) => text.clone(),
        None => {
            crate::data::template::resolve(
                crate::config::chat_template::ChatTemplateName::TokenizerDefault,
                None,
                base_dir,
                base_dir,
            )?
            .0
        }
    };
    let template = ChatTemplate::new(&text, &t.name).map_err(String::from)?.with_fixed_date(FixedDate::today());
    // The output folder's tokenizer files carry any special tokens the run set.
    let tokenizer_dir = if output_dir.join("tokenizer_config.json").is_file() { output_dir } else { base_dir };
    let special = SpecialTokenStrings::from_model_dir(tokenizer_dir)?;
    let rendered = template.render(messages, None, generation_prompt, &special).map_err(String::from)?;
    tok.encode(&rendered)
}

/// What `recipe score` scores.
pub enum ScoreInput {
    /// Texts as written, each with the tokenizer's BOS.
    Texts(Vec<String>),
    /// A user turn and the assistant's answer, through the recipe's chat template.
    Exchange { prompt: String, response: String },
}

pub fn score(target: &Path, overrides: &[String], input: &ScoreInput, json: bool, device_name: &str) -> ExitCode {
    let (loaded, dir, plan) = match load_target(target, overrides, device_name) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let fail = |e: String| {
        eprintln!("{}: error: {e}", target.display());
        ExitCode::from(EXIT_INVALID)
    };
    if loaded.model.score.is_none() {
        return fail(format!(
            "{} holds a language model, not a reward model (train one with `reward_model: true`)",
            dir.display()
        ));
    }
    let tok = &loaded.tokenizer;
    let (labels, sequences): (Vec<String>, Result<Vec<Vec<i64>>, String>) = match input {
        ScoreInput::Texts(texts) => (
            texts.clone(),
            texts.iter().map(|t| tok.encode(t).map(|ids| tok.bos().into_iter().chain(ids).collect())).collect(),
        ),
        ScoreInput::Exchange { prompt, response } => {
            let Some(template) = plan.as_ref().and_then(|p| p.chat_template.as_ref()) else {
                return fail(
                    "--prompt/--response need a recipe with a chat_template; score plain text with --text".into(),
                );
            };
            let messages = [
                serde_json::json!({"role": "user", "content": prompt}),
                serde_json::json!({"role": "assistant", "content": response}),
            ];
            (
                vec![response.clone()],
                render_chat(template, &loaded.base_dir, &dir, &messages, false, tok).map(|ids| vec![ids]),
            )
        }
    };
    let sequences = match sequences {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let scores = match exec::catch_torch_errors(None, || exec::score_sequences(&loaded, &sequences)) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    if json {
        let rows: Vec<serde_json::Value> =
            labels.iter().zip(&scores).map(|(t, s)| serde_json::json!({"text": t, "score": s})).collect();
        println!("{}", serde_json::to_string_pretty(&rows).expect("serializes"));
    } else {
        for (t, s) in labels.iter().zip(&scores) {
            println!("{s:>12.6}  {t:?}");
        }
    }
    ExitCode::SUCCESS
}

pub fn merge(target: &Path, overrides: &[String], output: Option<&Path>) -> ExitCode {
    let (dir, base, plan) = match resolve_target(target, overrides) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let quantize = match quantization(plan.as_ref(), target) {
        Ok(q) => q,
        Err(code) => return code,
    };
    if !dir.join("adapter_config.json").is_file() {
        eprintln!(
            "{}: error: no adapter_config.json here; merge needs an adapter output folder (LoRA, DoRA or IA3)",
            dir.display()
        );
        return ExitCode::from(EXIT_INVALID);
    }
    // The recipe's save_dtype, else the base's own dtype: merged weights are not widened to fp32.
    let kind = plan.as_ref().map(exec::save_kind);
    let loaded = match exec::catch_torch_errors(None, || {
        exec::load_trained(&dir, base.as_deref(), tch::Device::Cpu, quantize, kind)
    }) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{}: error: {e}", dir.display());
            return ExitCode::from(EXIT_INVALID);
        }
    };
    let out = output.map(Path::to_path_buf).unwrap_or_else(|| dir.join("merged"));
    let kind = kind.unwrap_or_else(|| loaded.model.embed_tokens.kind());
    match exec::catch_torch_errors(None, || exec::merge(&loaded, &out, kind)) {
        Ok(files) => {
            println!("merged {} into {}", dir.display(), out.display());
            for f in files {
                println!("       {}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_INVALID)
        }
    }
}

pub fn quantize(recipe: &Path, overrides: &[String], output: Option<&Path>) -> ExitCode {
    let plan = match compile_recipe(recipe, overrides, PlanOptions::default()) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let out = output
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(&plan.training.output_dir).join("quantized-base"));
    match exec::catch_torch_errors(None, || exec::quantize_model(&plan, &out)) {
        Ok(files) => {
            println!("quantized {} ({}) into {}", plan.model.name, plan.quantization.scheme, out.display());
            for f in files {
                println!("          {}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: error: {e}", recipe.display());
            ExitCode::from(EXIT_INVALID)
        }
    }
}
