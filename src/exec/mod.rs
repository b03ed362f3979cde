//! The executor: the only code that links libtorch (through tch). It runs a compiled Plan: picks
//! the device and precision, loads the model and data, trains (`train`), writes checkpoints and
//! outputs (`checkpoint`), and serves `recipe generate` and `recipe merge` on the results.

pub mod c10d;
pub mod checkpoint;
pub mod cuda;
pub mod distributed;
pub mod eval;
pub mod ewc;
pub mod host_memory;
pub mod host_sync;
pub mod lisa;
pub mod loss_scale;
pub mod metrics;
pub mod objective;
pub mod offload;
pub mod optim_more;
pub mod optim_torchao;
pub mod optimizer;
pub mod runtime;
pub mod shard;
pub mod torch_ops;
pub mod train;
pub mod unfrozen;

use crate::data::{self, Tokenizer, packing};
use crate::model::adapter;
use crate::model::generate::{Sampling, generate};
use crate::model::llama::{CausalLm, LoadOptions, PromptInit, Trainable};
use crate::model::weights::{Checkpoint, Deferred};
use crate::plan::Plan;
use crate::plan::adapter::AdapterMethod;
use crate::plan::precision::Precision;
use crate::plan::quantize::QuantScheme;
use runtime::Runtime;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// What this build's libtorch sees.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceReport {
    pub cuda_available: bool,
    pub cuda_devices: i64,
    pub cudnn_available: bool,
    pub cpu_threads: i32,
}

pub fn device_report() -> DeviceReport {
    DeviceReport {
        cuda_available: tch::Cuda::is_available(),
        cuda_devices: tch::Cuda::device_count(),
        cudnn_available: tch::Cuda::cudnn_is_available(),
        cpu_threads: tch::get_num_threads(),
    }
}

/// `cpu`, `cuda`, `cuda:N`, or `auto` (CUDA when present).
pub fn parse_device(text: &str) -> Result<Device, String> {
    match text {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        t if t.starts_with("cuda") && tch::Cuda::is_available() => {
            let n: usize =
                t.trim_start_matches("cuda:").parse().map_err(|_| format!("device `{t}`: expected cuda:N"))?;
            let count = tch::Cuda::device_count().max(0) as usize;
            if n >= count {
                return Err(format!(
                    "device `{t}`: this machine shows {count} CUDA device(s), cuda:0 to cuda:{}",
                    count - 1
                ));
            }
            Ok(Device::Cuda(n))
        }
        t if t.starts_with("cuda") => Err(format!("device `{t}`: this libtorch sees no CUDA device")),
        t => Err(format!("device `{t}`: expected auto, cpu, cuda or cuda:N")),
    }
}

pub struct RunOptions {
    pub device: Device,
    /// Show the progress bar (on a terminal).
    pub progress: bool,
    /// Stop after this many optimizer steps, saving a checkpoint as Ctrl-C does (tests).
    pub stop_after: Option<u64>,
    /// Sample this many tokens at the end (0: none).
    pub sample_tokens: usize,
    /// Random-initialised base weights (`Checkpoint::random`): config.json and tokenizer only.
    pub random_weights: bool,
    /// This process's rank among the run's processes (launch.rs).
    pub process: crate::launch::ProcessEnv,
    /// A tracker that cannot start is an error instead of a warning.
    pub deny_warnings: bool,
}

pub struct RunReport {
    pub output_dir: PathBuf,
    pub device: String,
    pub compute: String,
    pub rank: usize,
    pub world_size: usize,
    /// The c10d backend when the run formed a process group.
    pub backend: Option<&'static str>,
    /// Payload bytes of the collectives of an optimizer step (the plan's layout has its
    /// estimate).
    pub collectives_per_step: crate::plan::shard::Collectives,
    /// Device-to-host reads per optimizer step, by kind of step (exec/host_sync.rs).
    pub host_syncs: host_sync::StepSyncs,
    /// Packed rows: the attention kernel they went through (model/llama.rs `flash_varlen_applies`).
    pub packed_attention: Option<&'static str>,
    pub steps_done: u64,
    pub total_steps: u64,
    pub data: Vec<String>,
    pub train_rows: usize,
    pub validation_rows: usize,
    pub packing_efficiency: f64,
    pub eval_loss_before: Option<f64>,
    pub eval_loss_after: Option<f64>,
    /// Perplexity on `forgetting_datasets` before and after training.
    pub forgetting_perplexity: (Option<f64>, Option<f64>),
    pub tokens_per_second: f64,
    pub sample: Option<(String, String)>,
    pub stopped_early: Option<String>,
    pub interrupted: bool,
    pub resumed_from: Option<PathBuf>,
    pub outputs: Vec<PathBuf>,
    /// Bytes of optimizer state (8-bit states are about a quarter of 32-bit ones).
    pub optimizer_state_bytes: i64,
    /// Trainable tensors the optimizer never updates (Muon's 1-D ones, as Axolotl's Muon).
    pub optimizer_untouched: usize,
    /// On CPU: the training peak by the allocator's accounting above its use before the model
    /// was loaded (weights, adapters, gradients, optimizer, activations, logits), next to the
    /// plan's CPU estimate of the same.
    pub cpu_peak_bytes: Option<(u64, u64)>,
    /// On CUDA: the device memory in use at its highest sample (context and allocator pool
    /// included, as nvidia-smi counts), next to the plan's GPU estimate.
    pub gpu_peak_bytes: Option<(u64, u64)>,
    /// Where the run is tracked (TensorBoard folder, MLflow run URL, W&B run folder).
    pub tracking: Vec<String>,
}

/// The training progress bar while one is drawn, so log lines can print around it.
static ACTIVE_PROGRESS: std::sync::Mutex<Option<indicatif::ProgressBar>> = std::sync::Mutex::new(None);

/// Runs `print` with the progress bar (if one is drawn) lifted off the terminal, so a log line
/// lands above the bar instead of through it.
pub fn around_progress<R>(print: impl FnOnce() -> R) -> R {
    let bar = ACTIVE_PROGRESS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match bar {
        Some(bar) => bar.suspend(print),
        None => print(),
    }
}

/// The compute kind for this device from the plan's resolved precision (plan/precision.rs):
/// fp32 on CPU; on CUDA the plan's dtype where the GPU has bf16 (compute capability 8.0 or
/// newer); without it, `bf16: auto` falls back to fp16 (with loss scaling), or fp32 when the
/// recipe wrote `fp16: false`, as Axolotl resolves `auto`.
fn compute_kind(plan: &Plan, device: Device) -> Result<Kind, String> {
    let p = &plan.training.precision;
    let Device::Cuda(ordinal) = device else {
        return Ok(Kind::Float);
    };
    let capability = cuda::compute_capability(ordinal);
    let has_bf16 = capability.is_none_or(|(major, _)| major >= 8);
    let no_bf16 = || {
        let (major, minor) = capability.unwrap_or_default();
        format!("this GPU (compute capability {major}.{minor}) has no bf16")
    };
    Ok(match p.compute {
        Precision::Fp32 => Kind::Float,
        Precision::Fp16 => Kind::Half,
        Precision::Bf16 if has_bf16 => Kind::BFloat16,
        // A 4-bit base's explicit bnb_4bit_compute_dtype has no fallback.
        Precision::Bf16 if p.four_bit_compute.is_some() => {
            return Err(format!("{}: set bnb_4bit_compute_dtype: float16", no_bf16()));
        }
        Precision::Bf16 if !p.bf16_auto => return Err(format!("{}: use fp16: true or bf16: auto", no_bf16())),
        Precision::Bf16 if p.fp16_forbidden => {
            tracing::warn!("bf16: auto: {}, and the recipe says fp16: false; training in fp32", no_bf16());
            Kind::Float
        }
        Precision::Bf16 => {
            tracing::warn!("bf16: auto: {}; training in fp16 with dynamic loss scaling", no_bf16());
            Kind::Half
        }
    })
}

/// The dtype written model weights are in (`save_dtype`, else the base's `torch_dtype`).
pub fn save_kind(plan: &Plan) -> Kind {
    kind_of(plan.training.save_dtype)
}

/// A floating-point dtype as libtorch names it.
pub fn kind_of(p: Precision) -> Kind {
    match p {
        Precision::Fp32 => Kind::Float,
        Precision::Bf16 => Kind::BFloat16,
        Precision::Fp16 => Kind::Half,
    }
}

fn trainable(plan: &Plan, tok: &Tokenizer) -> Result<Trainable, String> {
    let a = &plan.adapter;
    if let Some(b) = &a.bottleneck {
        return Ok(Trainable::Bottleneck(crate::model::bottleneck::BottleneckSpec::from_plan(b)?));
    }
    if let Some(p) = &a.prefix {
        return Ok(Trainable::Prefix {
            num_virtual_tokens: p.num_virtual_tokens as i64,
            projection: p.encoder_hidden_size.map(|e| e as i64),
        });
    }
    if let Some(p) = &a.prompt {
        let n = p.num_virtual_tokens as usize;
        let init = match &p.init_text {
            Some(text) => PromptInit::Tokens(prompt_init_ids(tok, text, n)?),
            None => PromptInit::Random,
        };
        return Ok(Trainable::Prompt { num_virtual_tokens: n as i64, init });
    }
    Ok(if a.method == AdapterMethod::Full {
        Trainable::Everything
    } else if a.method == AdapterMethod::Ia3 {
        Trainable::Ia3 {
            targets: a.target_modules.clone(),
            feedforward: a.feedforward_modules.clone(),
            modules_to_save: a.modules_to_save.clone(),
        }
    } else {
        Trainable::Lora {
            targets: a.target_modules.clone(),
            parameters: a.target_parameters.clone(),
            r: a.r as i64,
            scaling: a.scaling,
            dropout: a.dropout,
            dora: a.dora,
            modules_to_save: a.modules_to_save.clone(),
        }
    })
}

/// peft's TEXT init: the text's ids as the tokenizer gives them (special tokens included, as
/// `tokenizer(text)` adds them), cut to `n`, or repeated until there are `n`.
pub fn prompt_init_ids(tok: &Tokenizer, text: &str, n: usize) -> Result<Vec<i64>, String> {
    let ids: Vec<i64> = tok.bos().into_iter().chain(tok.encode(text)?).collect();
    if ids.is_empty() {
        return Err(format!("prompt_tuning_init_text {text:?} has no tokens"));
    }
    Ok(ids.iter().copied().cycle().take(n).collect())
}

/// The base's quantization from the plan: NF4/FP4 (QLoRA) or LLM.int8.
pub fn quantize_spec(plan: &Plan) -> Result<Option<crate::model::llama::Quantize>, String> {
    use crate::model::llama::{FourBit, Quantize};
    use crate::model::nf4::QuantType;
    let q = &plan.quantization;
    let quant_type = match q.scheme {
        QuantScheme::None => return Ok(None),
        QuantScheme::Int8 => return Ok(Some(Quantize::Int8)),
        QuantScheme::Nf4 => QuantType::Nf4,
        QuantScheme::Fp4 => QuantType::Fp4,
    };
    Ok(Some(Quantize::FourBit(FourBit {
        quant_type,
        double_quant: q.double_quant,
        blocksize: q.block_size.unwrap_or(64) as i64,
    })))
}

/// Applies the recipe's tf32 switch to libtorch's cuBLAS (only a tf32 the recipe gives; otherwise
/// libtorch's default stands).
pub fn apply_tf32(plan: &Plan, device: Device) -> Result<(), String> {
    if device.is_cuda()
        && let Some(on) = plan.training.precision.tf32
    {
        cuda::set_tf32_matmuls(on)?;
    }
    Ok(())
}

/// What every rank loads before training: tokenizer, data, the model.
struct SetUp<E> {
    base_dir: PathBuf,
    tok_dir: PathBuf,
    tok: Tokenizer,
    added: usize,
    data: TrainingData<E>,
    model: CausalLm,
    in_use_before_model: Option<u64>,
}

/// The examples the loop trains and evaluates on, and what preparing them reported.
struct TrainingData<E> {
    train: Vec<E>,
    validation: Vec<E>,
    report: Vec<String>,
    /// Tokens of the training examples over their padded capacity (packing's efficiency).
    efficiency: f64,
    /// The start of a validation (else training) example, for the sample at the end.
    sample_prompt: Option<Vec<i64>>,
    /// Supervised validation samples, for `do_causal_lm_eval` (none for pairs).
    validation_samples: Vec<data::Sample>,
    /// `forgetting_datasets`' samples (supervised runs; rules refuse them with pairs).
    forgetting_samples: Vec<data::Sample>,
    /// `replay_datasets`' rows, mixed into every step (supervised runs).
    replay: Vec<E>,
    /// `ewc_datasets`' samples, for EWC's Fisher information (supervised runs).
    ewc_samples: Vec<data::Sample>,
}

/// Supervised samples as rows (packed when the recipe says so).
fn supervised_data(plan: &Plan, tok: &Tokenizer, base_dir: &Path) -> Result<TrainingData<packing::Row>, String> {
    // A stream is read by the training loop, a step at a time (data/stream.rs).
    if let Some(p) = &plan.pretraining {
        return Ok(TrainingData {
            efficiency: 1.0,
            validation: Vec::new(),
            train: Vec::new(),
            report: vec![format!("stream {} ({} files), read as training goes", p.source, p.files.len())],
            sample_prompt: tok.bos().map(|b| vec![b]),
            replay: Vec::new(),
            validation_samples: Vec::new(),
            forgetting_samples: Vec::new(),
            ewc_samples: Vec::new(),
        });
    }
    let (mut prepared, data_source) = data::load_or_prepare(plan, tok, base_dir)?;
    prepared.report.insert(0, format!("samples {data_source}"));
    let seq_len = plan.batch.sequence_len as usize;
    let rows = |samples: &[data::Sample], packed: bool| {
        if packed { packing::pack(samples, seq_len) } else { packing::unpacked(samples, seq_len) }
    };
    let train = rows(&prepared.train, plan.data.sample_packing);
    let sample_prompt =
        prepared.validation.first().or(prepared.train.first()).map(|s| s.input_ids.iter().take(16).copied().collect());
    Ok(TrainingData {
        efficiency: packing::efficiency(&train, seq_len),
        validation: rows(&prepared.validation, plan.data.eval_sample_packing),
        train,
        report: prepared.report,
        sample_prompt,
        replay: rows(&prepared.replay, plan.data.sample_packing),
        validation_samples: prepared.validation,
        forgetting_samples: prepared.forgetting,
        ewc_samples: prepared.ewc,
    })
}

/// Preference pairs, each as its chosen and rejected rows.
fn preference_data(plan: &Plan, tok: &Tokenizer, base_dir: &Path) -> Result<TrainingData<packing::PairRows>, String> {
    let prepared = data::preference::prepare(plan, tok, base_dir)?;
    let rows = |pairs: &[data::preference::Pair]| -> Vec<packing::PairRows> {
        pairs
            .iter()
            .map(|p| packing::PairRows::new((&p.prompt_ids, &p.chosen_ids), (p.rejected_prompt(), &p.rejected_ids)))
            .collect()
    };
    let train = rows(&prepared.train);
    let seq_len = plan.batch.sequence_len as usize;
    let tokens: usize = train.iter().map(packing::Example::tokens).sum();
    Ok(TrainingData {
        efficiency: tokens as f64 / (train.len() * 2 * seq_len).max(1) as f64,
        validation: rows(&prepared.validation),
        sample_prompt: prepared.validation.first().or(prepared.train.first()).map(|p| p.prompt_ids.clone()),
        train,
        report: prepared.report,
        validation_samples: Vec::new(),
        forgetting_samples: Vec::new(),
        replay: Vec::new(),
        ewc_samples: Vec::new(),
    })
}

/// KTO's rows: unpaired rows as they are, and every pair unpaired into its prompt with the chosen
/// answer (desirable) and with the rejected one (undesirable), as TRL's KTOTrainer unpairs a paired
/// dataset.
fn kto_data(plan: &Plan, tok: &Tokenizer, base_dir: &Path) -> Result<TrainingData<packing::KtoRow>, String> {
    let prepared = data::preference::prepare(plan, tok, base_dir)?;
    let rows = |pairs: &[data::preference::Pair]| -> Vec<packing::KtoRow> {
        let row = |prompt: &[i64], answer: &[i64], desirable| packing::KtoRow {
            prompt: prompt.to_vec(),
            answer: answer.to_vec(),
            desirable,
        };
        pairs
            .iter()
            .flat_map(|p| match p.desirable {
                Some(desirable) => vec![row(&p.prompt_ids, &p.chosen_ids, desirable)],
                None => vec![row(&p.prompt_ids, &p.chosen_ids, true), row(p.rejected_prompt(), &p.rejected_ids, false)],
            })
            .collect()
    };
    let train = rows(&prepared.train);
    let seq_len = plan.batch.sequence_len as usize;
    let tokens: usize = train.iter().map(packing::Example::tokens).sum();
    Ok(TrainingData {
        efficiency: tokens as f64 / (train.len() * seq_len).max(1) as f64,
        validation: rows(&prepared.validation),
        sample_prompt: prepared.validation.first().or(prepared.train.first()).map(|p| p.prompt_ids.clone()),
        train,
        report: prepared.report,
        validation_samples: Vec::new(),
        forgetting_samples: Vec::new(),
        replay: Vec::new(),
        ewc_samples: Vec::new(),
    })
}

/// What the executor does not build yet, refused by name (validate and plan report these first,
/// at the recipe's keys; this is the last line of defence).
fn refuse_unbuilt(plan: &Plan) -> Result<(), String> {
    if let Some(p) = &plan.training.preference {
        use crate::config::training::RlMethod;
        if plan.adapter.method == AdapterMethod::Full
            && matches!(p.method, RlMethod::Dpo | RlMethod::Ipo | RlMethod::Kto)
            && p.reference != crate::plan::training::ReferenceStrategy::Precomputed
        {
            return Err("rl: with a full fine-tune needs a frozen reference copy, which is not built yet; set \
                        precompute_ref_log_probs: true, or train an adapter (adapter: lora or qlora): its reference \
                        is the base with the adapter switched off"
                .into());
        }
        if plan.data.sample_packing {
            return Err(
                "sample_packing with rl: is not supported (pairs are not packed); set sample_packing: false".into()
            );
        }
    }
    if let Some((key, what)) = plan.layout.not_built.first() {
        return Err(format!("{key}: {what} is not built into recipe run; remove it to train sharded"));
    }
    let own = plan.model.architecture.decoder_layer_class();
    if let Some(classes) = &plan.layout.wrapped_class
        && !plan.layout.fsdp.is_empty()
        && !classes.split(',').any(|c| c.trim() == own)
    {
        return Err(format!(
            "fsdp_config: transformer_layer_cls_to_wrap is `{classes}`, but this model's decoder layer is `{own}`, \
             which recipe's shard units wrap"
        ));
    }
    Ok(())
}

/// What sharded training does not do yet, refused by name before any rank keeps chunks.
fn refuse_unsharded(plan: &Plan, rt: &Runtime) -> Result<(), String> {
    let strategy = format!("{:?}", plan.layout.strategy);
    if plan.layout.offload.any() && rt.precision.loss_scaling {
        return Err(format!(
            "fp16 with offload: the loss scaler unscales gradients on the GPU, and offload keeps the gradient \
             chunks in host memory ({strategy}); use bf16, or train without offload"
        ));
    }
    if plan.training.optimizer.name.needs_whole_parameters() || plan.training.optimizer.name.eight_bit_lion() {
        return Err(format!(
            "optimizer: {} needs each parameter whole (or its 8-bit blocks), which sharded training ({strategy}) \
             splits; train without sharding, or use adamw_torch, sgd or lion_32bit",
            plan.training.optimizer.name.as_str()
        ));
    }
    if let Some(bits) = plan.training.optimizer.name.torchao_state_bits() {
        return Err(format!(
            "optimizer: {} keeps torchao's {bits}-bit states, which sharded training ({strategy}) does not split; \
             use adamw_torch or adamw_torch_fused",
            plan.training.optimizer.name.as_str()
        ));
    }
    if plan.adapter.prefix.is_some()
        && (plan.training.gradient_checkpointing
            || (plan.layout.strategy.shards_parameters() && plan.layout.reshard_after_forward))
    {
        return Err(format!(
            "adapter: prefix_tuning under {strategy} recomputes each layer in the backward pass (full sharding \
             releases a layer after its forward pass), and recomputing a layer with its prefix is not built; set \
             fsdp_config.reshard_after_forward: false, or use shard_grad_op"
        ));
    }
    Ok(())
}

/// With full sharding and `cpu_ram_efficient_loading`, the chunk of each base tensor this rank
/// loads (its index in the shard group, and the group's size); None to load the whole model.
fn chunked_load(plan: &Plan, rt: &Runtime, vocab_size: u64) -> Result<Option<(i64, i64)>, String> {
    let l = &plan.layout;
    if !l.cpu_ram_efficient_loading || !rt.comm.is_distributed() {
        return Ok(None);
    }
    if !l.strategy.shards_parameters() {
        return Err(format!(
            "cpu_ram_efficient_loading: true with {:?}: every rank holds the whole model under it; use full_shard \
             or hybrid_shard, or set it to false",
            l.strategy
        ));
    }
    // Set-ups that read the loaded weights before training: they need the whole base.
    let p = plan.training.preference.as_ref();
    let reason = if plan.quantization.quantized_parameters > 0 {
        Some("a quantized base (its weights are quantized whole and stay whole on every rank)")
    } else if plan.adapter.method == AdapterMethod::Full && plan.training.optimizer.name.eight_bit_states() {
        Some("a full fine-tune with 8-bit optimizer states (its weights are cut at 256-element blocks, not as loaded)")
    } else if plan.ewc.is_some() {
        Some("EWC (its Fisher information is estimated on the whole model before the chunks are cut)")
    } else if plan.adapter.dora {
        Some("DoRA (its magnitudes start from the whole weights)")
    } else if !plan.adapter.modules_to_save.is_empty() || plan.training.reward.is_some() {
        Some("modules_to_save or a reward head (copied from the whole weights)")
    } else if vocab_size > plan.model.architecture.vocab_size {
        Some("added tokens (the embedding grows from the whole table)")
    } else if p.is_some_and(|p| p.reference == crate::plan::training::ReferenceStrategy::Precomputed) {
        Some("precomputed reference log-probabilities (a whole-model pass before training)")
    } else {
        None
    };
    if let Some(reason) = reason {
        return Err(format!(
            "cpu_ram_efficient_loading: true does not work with {reason}; set it to false (every rank then loads \
             the whole model before keeping its chunks)"
        ));
    }
    let size = l.shard_group_size.max(1) as i64;
    Ok(Some(((rt.comm.rank as i64) % size, size)))
}

type DataLoader<E> = fn(&Plan, &Tokenizer, &Path) -> Result<TrainingData<E>, String>;

/// What an objective computes from the loaded model before training (before any resume).
type BeforeTraining<E> = fn(&Plan, &CausalLm, &mut TrainingData<E>, i64) -> Result<(), String>;

fn nothing_before_training<E>(_: &Plan, _: &CausalLm, _: &mut TrainingData<E>, _: i64) -> Result<(), String> {
    Ok(())
}

/// `precompute_ref_log_probs`: the reference log-probabilities of every pair, from the model as
/// loaded (the base under a fresh adapter; the model before training when fine-tuned in full).
fn precompute_references(
    plan: &Plan,
    model: &CausalLm,
    data: &mut TrainingData<packing::PairRows>,
    pad_id: i64,
) -> Result<(), String> {
    use crate::config::training::RlMethod;
    use crate::plan::training::ReferenceStrategy;
    // SimPO and ORPO have no reference model.
    let wanted = plan.training.preference.as_ref().is_some_and(|p| {
        p.reference == ReferenceStrategy::Precomputed && matches!(p.method, RlMethod::Dpo | RlMethod::Ipo)
    });
    if !wanted {
        return Ok(());
    }
    let chunk = plan.training.eval_batch_size.max(1) as usize;
    for pairs in [&mut data.train, &mut data.validation] {
        for group in pairs.chunks_mut(chunk) {
            let items: Vec<&packing::PairRows> = group.iter().collect();
            let host = <packing::PairRows as packing::Example>::collate(&items, pad_id, None);
            let batch = objective::DeviceBatch::upload(&host, model.device);
            let logps = objective::reference_logps(model, &batch).to_device(Device::Cpu).to_kind(Kind::Float);
            let values = Vec::<f32>::try_from(logps).map_err(|e| e.to_string())?;
            let n = group.len();
            for (i, pair) in group.iter_mut().enumerate() {
                pair.reference_logps = Some([values[i], values[n + i]]);
            }
        }
    }
    tracing::info!("reference log-probabilities computed for {} pairs", data.train.len() + data.validation.len());
    Ok(())
}

fn set_up<E>(
    plan: &Plan,
    opts: &RunOptions,
    rt: &Runtime,
    load: DataLoader<E>,
    before_training: BeforeTraining<E>,
) -> Result<SetUp<E>, String> {
    refuse_unbuilt(plan)?;
    let quantize = quantize_spec(plan)?;
    let base_dir = if opts.random_weights {
        crate::plan::model::tokenizer_folder(&plan.model)?
    } else {
        crate::plan::model::model_folder(&plan.model)?
    };
    let tok_dir = match plan.model.tokenizer {
        Some(_) => crate::plan::model::tokenizer_folder(&plan.model)?,
        None => base_dir.clone(),
    };
    let mut tok = Tokenizer::load(&tok_dir)?;
    let added = tok.add(&plan.data.special_tokens, &plan.data.added_tokens)?;
    let resize_32x = match plan.data.resize_token_embeddings_to_32x {
        true => Some(check_rows_cover_32x(plan.model.architecture.vocab_size, tok.vocab_size() as u64)?),
        false => None,
    };
    let mut data = load(plan, &tok, &tok_dir)?;
    data.report.extend(resize_32x);
    let seq_len = plan.batch.sequence_len as usize;

    tch::manual_seed(plan.training.seed as i64);
    let in_use_before_model = host_memory::in_use();
    let trainable = trainable(plan, &tok)?;
    let device = rt.device;
    let ckpt = if opts.random_weights { Checkpoint::random(&base_dir) } else { Checkpoint::open(&base_dir)? };
    let score_head = plan.training.reward.is_some();
    let options = LoadOptions { device, base_kind: rt.precision.base, trainable, quantize, score_head };
    let mut model = match chunked_load(plan, rt, tok.vocab_size() as u64)? {
        Some((index, size)) => CausalLm::load_chunked(&plan.model.architecture, &ckpt, &options, index, size)?,
        None => CausalLm::load(&plan.model.architecture, &ckpt, &options)?,
    };
    drop(ckpt);
    model.compute_kind = rt.precision.compute;
    match device {
        Device::Cpu => {
            host_memory::reset();
            model.memory_probe.set(Some(host_memory::sample));
        }
        _ => {
            cuda::reset_device_memory_peak();
            model.memory_probe.set(Some(cuda::sample_device_memory));
        }
    }
    if tok.vocab_size() as u64 > plan.model.architecture.vocab_size {
        model.resize_vocab(tok.vocab_size() as i64);
        tracing::info!("added {added} tokens; vocabulary now {}", tok.vocab_size());
    }
    if let Some(window) = plan.model.architecture.sliding_window
        && (window as usize) < seq_len
    {
        return Err(format!(
            "sequence_len {seq_len} is longer than the model's sliding window ({window}); sliding-window attention \
             is not built yet, so set sequence_len to at most {window}"
        ));
    }
    if let Some(q) = &plan.qat {
        let scheme = match q.grids {
            crate::plan::qat::QatGrids::Int8Int4 => {
                crate::model::qat::QatScheme::Int8Int4 { group_size: q.group_size as i64 }
            }
            crate::plan::qat::QatGrids::Mxfp4 => crate::model::qat::QatScheme::Mxfp4,
        };
        let fq = crate::model::qat::FakeQuant {
            scheme,
            enabled: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(q.from_step == 0)),
        };
        model.enable_qat(&fq)?;
    }
    if let Some(dir) = &plan.adapter.init_from {
        continue_adapter(&model, Path::new(dir))?;
    }
    before_training(plan, &model, &mut data, tok.pad())?;
    Ok(SetUp { base_dir, tok_dir, tok, added, data, model, in_use_before_model })
}

/// `lora_model_dir`: the run starts from a trained peft adapter, which must be the one the recipe
/// describes (rank, scaling, targets, modules trained in full); its weights replace the fresh ones.
fn continue_adapter(model: &CausalLm, dir: &Path) -> Result<(), String> {
    let here = |e: String| format!("lora_model_dir {}: {e}", dir.display());
    let saved = adapter::read_config(dir).map_err(here)?;
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    match (&saved.trainable, &model.trainable) {
        (
            Trainable::Lora { targets: t1, r: r1, scaling: s1, modules_to_save: m1, dora: d1, .. },
            Trainable::Lora { targets: t2, r: r2, scaling: s2, modules_to_save: m2, dora: d2, .. },
        ) => {
            if d1 != d2 {
                let says = |d: &bool| if *d { "DoRA (use_dora: true)" } else { "plain LoRA" };
                return Err(here(format!(
                    "the adapter is {}, the recipe asks {}: set peft_use_dora as the adapter was trained",
                    says(d1),
                    says(d2)
                )));
            }
            if (r1, sorted(t1), sorted(m1)) != (r2, sorted(t2), sorted(m2)) || (s1 - s2).abs() > 1e-12 {
                return Err(here(format!(
                    "the adapter has r={r1}, scaling {s1} on [{}] (in full: [{}]); the recipe asks r={r2}, scaling {s2} \
                     on [{}] (in full: [{}]): set the recipe's LoRA keys as the adapter was trained",
                    sorted(t1).join(", "),
                    sorted(m1).join(", "),
                    sorted(t2).join(", "),
                    sorted(m2).join(", ")
                )));
            }
        }
        (
            Trainable::Ia3 { targets: t1, feedforward: f1, modules_to_save: m1 },
            Trainable::Ia3 { targets: t2, feedforward: f2, modules_to_save: m2 },
        ) => {
            if (sorted(t1), sorted(f1), sorted(m1)) != (sorted(t2), sorted(f2), sorted(m2)) {
                return Err(here(format!(
                    "the IA3 adapter scales [{}] (feed-forward: [{}]; in full: [{}]); the recipe asks [{}] \
                     (feed-forward: [{}]; in full: [{}]): set ia3_target_modules and ia3_feedforward_modules as the \
                     adapter was trained",
                    sorted(t1).join(", "),
                    sorted(f1).join(", "),
                    sorted(m1).join(", "),
                    sorted(t2).join(", "),
                    sorted(f2).join(", "),
                    sorted(m2).join(", ")
                )));
            }
        }
        (Trainable::Ia3 { .. }, _) | (_, Trainable::Ia3 { .. }) => {
            let says = |t: &Trainable| if matches!(t, Trainable::Ia3 { .. }) { "IA3" } else { "LoRA" };
            return Err(here(format!(
                "the adapter is {}, the recipe asks {}: set `adapter` as the adapter was trained",
                says(&saved.trainable),
                says(&model.trainable)
            )));
        }
        _ => return Err(here("continuing an adapter needs `adapter: lora`, `qlora` or `ia3`".into())),
    }
    let file = dir.join("adapter_model.safetensors");
    adapter::load_trainable(model, &Checkpoint::open_files(dir, &[file]).map_err(here)?).map_err(here)?;
    tracing::info!("starting from the adapter in {}", dir.display());
    Ok(())
}

/// A digest of what must be equal on every rank: the resolved plan and the training rows.
fn run_digest<E: packing::Example>(plan: &Plan, examples: &[E]) -> u64 {
    // Where each rank found the model's config (hub, cache, folder) may differ; what it says may not.
    let mut value = serde_json::to_value(plan).unwrap_or_default();
    if let Some(model) = value.get_mut("model").and_then(|m| m.as_object_mut()) {
        for provenance in ["config_source", "source_kind", "local_dir"] {
            model.remove(provenance);
        }
    }
    let plan_json = serde_json::to_vec(&value).unwrap_or_default();
    distributed::digest(&plan_json) ^ data_digest(examples).rotate_left(1)
}

/// A digest of the training rows' token and label ids (ranks compare it; checkpoints keep it).
fn data_digest<E: packing::Example>(examples: &[E]) -> u64 {
    let mut words: Vec<u8> = Vec::with_capacity(examples.iter().map(|e| e.tokens() * 16 + 8).sum());
    for e in examples {
        e.digest_into(&mut words);
    }
    distributed::digest(&words)
}

/// A digest of a `pretraining_dataset` stream's settings and files (names and sizes; 0 without
/// one): resume refuses a checkpoint made on another stream.
fn stream_digest(plan: &Plan) -> u64 {
    let Some(p) = &plan.pretraining else { return 0 };
    let sizes: Vec<u64> = p.files.iter().map(|f| std::fs::metadata(f).map_or(0, |m| m.len())).collect();
    let what = serde_json::json!([
        p.files,
        sizes,
        p.text_column,
        p.skip,
        p.concatenate,
        p.chunk_texts,
        p.row_tokens,
        p.rows_per_step
    ]);
    distributed::digest(&serde_json::to_vec(&what).unwrap_or_default())
}

/// Every rank reports its set-up (a digest of its plan and data, or that it failed) and learns
/// the others': a rank that failed tells the rest instead of leaving them waiting in a collective,
/// and ranks that resolved a different plan or data refuse to train together.
fn agree_on_set_up<E: packing::Example>(
    rt: &Runtime,
    plan: &Plan,
    set_up: Result<SetUp<E>, String>,
) -> Result<SetUp<E>, String> {
    if !rt.comm.is_distributed() {
        return set_up;
    }
    const FAILED: u64 = distributed::SET_UP_FAILED;
    let mine = match &set_up {
        Ok(s) => run_digest(plan, &s.data.train).max(1),
        Err(_) => FAILED,
    };
    let all = rt.comm.all_gather_u64(mine, rt.device)?;
    let set_up = set_up?;
    let failed: Vec<String> =
        all.iter().enumerate().filter(|(_, d)| **d == FAILED).map(|(r, _)| r.to_string()).collect();
    if !failed.is_empty() {
        return Err(format!("rank {} failed during set-up (see its error); stopping", failed.join(", ")));
    }
    let differ: Vec<String> =
        all.iter().enumerate().filter(|(_, d)| **d != all[0]).map(|(r, _)| r.to_string()).collect();
    if !differ.is_empty() {
        return Err(format!(
            "rank {} resolved a different plan or training data than rank 0 (other recipe, --set, files or \
             environment); every rank must run the same",
            differ.join(", ")
        ));
    }
    Ok(set_up)
}

/// Trains as the plan says. Errors are messages for the user.
pub fn run(plan: &Plan, opts: &RunOptions) -> Result<RunReport, String> {
    let rt = Runtime::new(plan, opts.device, opts.process.clone())?;
    if let Some(reward) = &plan.training.reward {
        let objective = objective::Reward { center_rewards_coefficient: reward.center_rewards_coefficient };
        return train_on(plan, opts, &rt, &objective, preference_data, nothing_before_training);
    }
    match &plan.training.preference {
        None => {
            let tokens_per_chunk = plan.training.loss.tokens_per_chunk().map(|n| n as i64);
            let virtual_tokens = plan.adapter.prompt.as_ref().map_or(0, |p| p.num_virtual_tokens as i64);
            let objective = objective::Supervised { tokens_per_chunk, virtual_tokens };
            train_on(plan, opts, &rt, &objective, supervised_data, nothing_before_training)
        }
        Some(p) => {
            use crate::config::training::RlMethod;
            use objective::PreferenceLoss;
            let (loss, beta) = match p.method {
                RlMethod::Dpo => (PreferenceLoss::Dpo, p.beta),
                RlMethod::Ipo => (PreferenceLoss::Ipo, p.beta),
                RlMethod::Simpo => (PreferenceLoss::Simpo { gamma: p.simpo_gamma, cpo_alpha: p.cpo_alpha }, p.beta),
                RlMethod::Orpo => (PreferenceLoss::Orpo, p.orpo_alpha),
                RlMethod::Kto => {
                    let kto = objective::Kto {
                        beta: p.beta,
                        desirable_weight: p.kto_desirable_weight,
                        undesirable_weight: p.kto_undesirable_weight,
                    };
                    return train_on(plan, opts, &rt, &kto, kto_data, nothing_before_training);
                }
            };
            let preference = objective::Preference { loss, beta, use_weighting: p.use_weighting };
            train_on(plan, opts, &rt, &preference, preference_data, precompute_references)
        }
    }
}

/// Set-up, training, evaluation and outputs for one objective and its kind of example.
fn train_on<E: packing::Example>(
    plan: &Plan,
    opts: &RunOptions,
    rt: &Runtime,
    objective: &dyn objective::Objective,
    load: DataLoader<E>,
    before_training: BeforeTraining<E>,
) -> Result<RunReport, String> {
    let t = &plan.training;
    let (device, kind) = (rt.device, rt.precision.compute);
    let set_up = catch_torch_errors(Some(plan), || set_up(plan, opts, rt, load, before_training));
    let SetUp { base_dir, tok_dir, tok, added, data, model, in_use_before_model } = agree_on_set_up(rt, plan, set_up)?;
    // `unfrozen_parameters`: the rest frozen before the optimizer and the gradient buckets are built.
    let frozen_rows = match &plan.adapter.unfrozen {
        Some(u) => unfrozen::apply(u, &model)?,
        None => unfrozen::FrozenRows::default(),
    };
    let TrainingData {
        train: train_rows,
        validation: validation_rows,
        report,
        efficiency,
        sample_prompt,
        validation_samples,
        forgetting_samples,
        replay: replay_rows,
        ewc_samples,
    } = data;
    let packing_efficiency = efficiency;
    let steps = crate::plan::schedule::steps(plan, train_rows.len());

    let output_dir = PathBuf::from(&t.output_dir);
    // Sharded training: every rank starts from rank 0's trainable weights before it keeps its
    // chunks of them, and the shard (and replica) groups are joined by every rank now.
    let shard_groups = if plan.layout.strategy.shards_optimizer() && rt.comm.is_distributed() {
        refuse_unsharded(plan, rt)?;
        // Tensors loaded as chunks came from the same files on every rank.
        let loaded = model.loaded_chunks.borrow();
        let trainable: Vec<tch::Tensor> =
            model.trainable_params().into_iter().filter(|p| !loaded.contains_key(&p.name)).map(|p| p.tensor).collect();
        drop(loaded);
        catch_torch_errors(Some(plan), || rt.comm.broadcast_from_main(&trainable))?;
        let reshard = plan.layout.reshard_after_forward;
        shard::ShardGroups::join(&rt.comm, &plan.layout, reshard)?
    } else {
        None
    };
    // EWC's F and θ0: estimated on the whole model (every rank alike), or read from the checkpoint.
    let make_ewc = |model: &CausalLm, resumed_from: &Option<PathBuf>| -> Result<ewc::Ewc, String> {
        let Some(e) = &plan.ewc else { return Err("EWC without ewc_lambda".into()) };
        let made = match resumed_from {
            Some(dir) => ewc::Ewc::load(model, e.lambda, dir)?,
            None => ewc::Ewc::estimate(
                model,
                objective,
                e.lambda,
                &ewc_samples,
                e.samples as usize,
                plan.batch.sequence_len as usize,
                tok.pad(),
            )?,
        };
        if made.samples > 0 {
            tracing::info!(
                "EWC: Fisher information of {} tensors estimated on {} samples (sum {:.4e})",
                made.tensors(),
                made.samples,
                made.fisher_sum()
            );
        }
        Ok(made)
    };
    // The output folder, optimizer, resume and log: a failure on any rank is agreed on before the
    // loop's collectives start, and so is the step every rank resumes from.
    let started = catch_torch_errors(Some(plan), || {
        let resumed_from = train::resume_dir(plan, &output_dir)?;
        // Where a sharded checkpoint is assembled whole, and the optimizer state to resume from.
        let assembled = tempfile::tempdir().map_err(|e| format!("a temporary folder: {e}"))?;
        let mut resume_optimizer: Option<PathBuf> = None;
        if rt.is_main() {
            checkpoint::prepare_output_dir(plan, &output_dir, &base_dir, resumed_from.is_some())?;
            std::fs::create_dir_all(&output_dir).map_err(|e| format!("output_dir {}: {e}", output_dir.display()))?;
            if resumed_from.is_none()
                && matches!(t.resume_from_checkpoint, Some(crate::config::logging::ResumeFrom::Latest(true)))
            {
                tracing::warn!(
                    "resume_from_checkpoint: true, but {} holds no checkpoint: training starts fresh",
                    output_dir.display()
                );
            }
        }
        let train_tokens: usize = train_rows.iter().map(packing::Example::tokens).sum();
        let data_digest = format!("{:016x}", data_digest(&train_rows) ^ stream_digest(plan));
        let mut state = checkpoint::TrainerState {
            global_step: 0,
            total_steps: steps.total,
            best_eval_loss: None,
            evals_without_improvement: 0,
            seed: t.seed,
            train_rows: train_rows.len(),
            train_tokens,
            data_digest: Some(data_digest),
            loss_scaler: rt.precision.loss_scaling.then(loss_scale::LossScaler::default),
            lisa_layers: None,
        };
        if let Some(dir) = &resumed_from {
            let saved = checkpoint::read_state(dir)?;
            if (saved.train_rows, saved.train_tokens, saved.seed) != (state.train_rows, state.train_tokens, state.seed)
            {
                return Err(format!(
                    "{}: made on other data or seed ({} rows / {} tokens / seed {}; now {} / {} / {}); resume needs \
                     the same",
                    dir.display(),
                    saved.train_rows,
                    saved.train_tokens,
                    saved.seed,
                    state.train_rows,
                    state.train_tokens,
                    state.seed
                ));
            }
            if let (Some(saved_digest), Some(now)) = (&saved.data_digest, &state.data_digest)
                && saved_digest != now
            {
                return Err(format!(
                    "{}: made on other training data (the same number of rows and tokens, other token ids: digest \
                     {saved_digest}, now {now}); resume needs the same data",
                    dir.display()
                ));
            }
            // A sharded checkpoint (SHARDED_STATE_DICT) is assembled whole first, whatever world
            // size wrote it; every rank then takes its chunks from the whole tensors.
            let sharded = shard::is_sharded_checkpoint(dir);
            let has_optimizer = if sharded {
                shard::sharded_checkpoint_has_optimizer(dir)?
            } else {
                dir.join("optimizer.safetensors").is_file()
            };
            if !has_optimizer {
                return Err(format!(
                    "{}: holds no optimizer state (saved with save_only_model: true), so it cannot be resumed; \
                     train on from its weights with lora_model_dir (an adapter) or base_model (a full model)",
                    dir.display()
                ));
            }
            let (weights_path, optimizer_path) = if sharded {
                shard::assemble_checkpoint(dir, assembled.path())?
            } else {
                (checkpoint::resume_weights_file(dir), dir.join("optimizer.safetensors"))
            };
            let weights = Checkpoint::open_files(dir, &[weights_path])?;
            resume_optimizer = Some(optimizer_path);
            adapter::load_trainable(&model, &weights)?;
            state = checkpoint::TrainerState { data_digest: state.data_digest.take(), ..saved };
            // The scaler follows this run's precision (a checkpoint may come from a bf16 or fp32 run).
            state.loss_scaler =
                if rt.precision.loss_scaling { state.loss_scaler.or_else(|| Some(Default::default())) } else { None };
            tracing::info!("resuming from {} at step {}", dir.display(), state.global_step);
        }
        // The optimizer updates the whole trainable tensors, or under sharding this rank's chunks.
        let trainable = model.trainable_params();
        // Sharded: EWC is made while the model is whole, then cut into each rank's chunks.
        let ewc_made = match (&shard_groups, &plan.ewc) {
            (Some(_), Some(_)) => Some(make_ewc(&model, &resumed_from)?),
            _ => None,
        };
        let sharder = match shard_groups {
            Some(groups) => {
                let placement = offload::Placement::new(device, plan.layout.offload);
                let eight_bit = t.optimizer.name.eight_bit_states();
                Some(std::rc::Rc::new(shard::Sharder::new(&model, groups, placement, &trainable, eight_bit)?))
            }
            None => None,
        };
        let mut optimizer = match &sharder {
            Some(sharder) => {
                optimizer::AdamW::for_chunks(sharder.optimizer_params(), &sharder.whole_sizes(), &t.optimizer)
            }
            None => optimizer::AdamW::new(trainable, &t.optimizer),
        }
        .with_modules_to_save(&plan.adapter.modules_to_save);
        // LISA: each parameter counts its own steps (a frozen layer skips steps, as in torch).
        if plan.training.lisa.is_some() {
            optimizer = optimizer.with_per_parameter_steps();
        }
        let refused = optimizer.muon_refuses();
        if !refused.is_empty() {
            return Err(format!(
                "optimizer: muon orthogonalizes matrices, and {} trainable tensors have more than two dimensions \
                 ({}: a mixture's stacked experts; Axolotl's Muon refuses them too); use adamw_torch",
                refused.len(),
                refused[0]
            ));
        }
        if let Some(dir) = &resumed_from {
            let saved = Checkpoint::open_files(dir, &[resume_optimizer.clone().unwrap_or_default()])?;
            match &sharder {
                Some(sharder) => sharder.load_optimizer_state(&mut optimizer, &saved)?,
                None => optimizer.load_state(&saved)?,
            }
        }
        if rt.is_main() {
            checkpoint::write_run_record(&output_dir, plan, state.data_digest.as_deref().unwrap_or_default())?;
        }
        let log = if rt.is_main() {
            let resumed_at = resumed_from.as_ref().map(|_| state.global_step);
            let trackers = crate::track::Trackers::start(plan, resumed_at, opts.deny_warnings)?;
            metrics::MetricsLog::open(&output_dir, resumed_at)?.track(trackers)
        } else {
            metrics::MetricsLog::discard(&output_dir)
        };
        if let (Some(sharder), Some(ewc)) = (&sharder, &ewc_made) {
            sharder.set_ewc(ewc)?;
        }
        Ok((optimizer, state, resumed_from, log, sharder, ewc_made))
    });
    let (mut optimizer, state, resumed_from, mut log, sharder, ewc_made) =
        rt.comm.agree(started, "preparing the output folder or resuming", device)?;
    let resume_steps = rt.comm.all_gather_u64(state.global_step, device)?;
    if let Some(rank) = resume_steps.iter().position(|s| *s != resume_steps[0]) {
        return Err(format!(
            "rank {rank} resumes from step {}, rank 0 from step {}: every rank must see the same checkpoints (is \
             output_dir on a file system all nodes share?)",
            resume_steps[rank], resume_steps[0]
        ));
    }
    // Every rank starts from rank 0's trainable weights (its LoRA initialisation); sharded runs
    // did so before cutting their chunks.
    match &sharder {
        Some(sharder) => sharder.install(&model),
        None => {
            let trainable: Vec<tch::Tensor> = model.trainable_params().into_iter().map(|p| p.tensor).collect();
            catch_torch_errors(Some(plan), || rt.comm.broadcast_from_main(&trainable))?;
        }
    }
    // EWC: the Fisher information and anchor, estimated now (every rank alike), or as the
    // checkpoint being resumed saved them; sharded runs made it before cutting their chunks.
    let ewc = match (ewc_made, &plan.ewc) {
        (Some(made), _) => Some(made),
        (None, None) => None,
        (None, Some(_)) => {
            let made = catch_torch_errors(Some(plan), || make_ewc(&model, &resumed_from));
            Some(rt.comm.agree(made, "estimating the EWC Fisher information", device)?)
        }
    };

    let progress = if opts.progress && rt.is_main() && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let bar = indicatif::ProgressBar::new(steps.total);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:32} {pos}/{len} steps  {msg}  [{elapsed} < {eta}]")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_position(state.global_step);
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    *ACTIVE_PROGRESS.lock().unwrap_or_else(|e| e.into_inner()) = Some(progress.clone());
    // The run's tokenizer when it differs from the base's (added tokens, special tokens set): saved
    // beside the weights, in checkpoints too, so every folder loads on its own.
    let s = &plan.data.special_tokens;
    let set_special = [&s.bos_token, &s.eos_token, &s.pad_token, &s.unk_token].iter().any(|t| t.is_some());
    let run_tokenizer = (added > 0 || set_special || plan.model.tokenizer.is_some()).then_some(&tok);
    let causal_lm_eval = eval::CausalLmEval::new(plan, &tok, &validation_samples)?;
    let stream = match &plan.pretraining {
        Some(p) => Some(std::cell::RefCell::new(
            (0..p.shards.len())
                .map(|i| data::stream::PretrainStream::new(p, i, &tok))
                .collect::<Result<Vec<_>, _>>()?,
        )),
        None => None,
    };
    // LISA: the decoder layers' parameters, switched at the start of steps (every layer trainable
    // until then, so the optimizer above holds state for all of them, as Axolotl's does).
    let lisa = match &plan.training.lisa {
        // `bf16: auto` falls back to fp16 on a GPU without bf16: its steps are decided on the device
        // with one step count, where LISA needs each parameter's own (rules.rs refuses `fp16: true`).
        Some(_) if rt.precision.loss_scaling => {
            return Err("LISA (lisa_n_layers) on fp16 with loss scaling is not built: this GPU has no bf16, so                         `bf16: auto` fell back to fp16; set bf16: false and fp16: false to train LISA in fp32"
                .into());
        }
        Some(l) => {
            let schedule =
                lisa::LisaSchedule::new(l.n_layers as usize, l.step_interval, model.layers.len(), plan.training.seed);
            Some(std::cell::RefCell::new(lisa::Lisa::new(schedule, lisa::layer_params(&model))))
        }
        None => None,
    };
    let looper = train::Loop {
        lisa: lisa.as_ref(),
        stream: stream.as_ref(),
        plan,
        causal_lm_eval: causal_lm_eval.as_ref(),
        runtime: rt,
        objective,
        model: &model,
        base_dir: &base_dir,
        tokenizer_dir: &tok_dir,
        output_dir: &output_dir,
        train: &train_rows,
        replay: &replay_rows,
        ewc: ewc.as_ref(),
        validation: &validation_rows,
        pad_id: tok.pad(),
        run_tokenizer,
        progress: &progress,
        stop_after: opts.stop_after,
        steps,
        sharder: sharder.as_deref(),
        frozen_rows: &frozen_rows,
    };
    // Forgetting: perplexity on general-domain data before training (a resumed run has no "before").
    let forgetting_perplexity = |model: &CausalLm| -> Option<f64> {
        if forgetting_samples.is_empty() {
            return None;
        }
        let scores = eval::nll(model, &forgetting_samples, plan.training.eval_batch_size as usize);
        let (nll, tokens) = scores.iter().fold((0.0, 0u64), |(a, n), (s, c)| (a + s, n + c));
        (tokens > 0).then(|| (nll / tokens as f64).exp())
    };
    let forgetting_before = if state.global_step == 0 {
        catch_torch_errors(Some(plan), || Ok(forgetting_perplexity(&model)))?
    } else {
        None
    };
    let eval_loss_before = if state.global_step == 0 {
        catch_torch_errors(Some(plan), || looper.evaluate_and_log(0, &mut log))?
    } else {
        None
    };
    let outcome = catch_torch_errors(Some(plan), || looper.run(&mut optimizer, state.clone(), &mut log));
    progress.finish_and_clear();
    ACTIVE_PROGRESS.lock().unwrap_or_else(|e| e.into_inner()).take();
    let mut outcome = outcome?;
    // No evaluation schedule: the validation split is still scored once at the end, so the report
    // has a before and an after.
    if outcome.last_eval_loss.is_none() && !outcome.interrupted {
        outcome.last_eval_loss =
            catch_torch_errors(Some(plan), || looper.evaluate_and_log(outcome.steps_done, &mut log))?;
    }
    let forgetting_after =
        if outcome.interrupted { None } else { catch_torch_errors(Some(plan), || Ok(forgetting_perplexity(&model)))? };
    // The outputs are written whole: the optimizer's chunks go first, then every rank gathers the
    // model (rank 0 writes it; the others only took part in the gathers).
    let optimizer_state_bytes = optimizer.state_bytes();
    let optimizer_untouched = optimizer.untouched().len();
    drop(optimizer);
    if rt.is_main()
        && let Some(after) = forgetting_after
    {
        let mut record = serde_json::json!({"step": outcome.steps_done, "forgetting_perplexity": after});
        if let Some(before) = forgetting_before {
            record["forgetting_perplexity_before"] = serde_json::json!(before);
        }
        log.write(&record)?;
    }

    let mut outputs = vec![log.path().to_path_buf()];
    let files = checkpoint::RunFiles {
        plan,
        base_dir: &base_dir,
        tokenizer_dir: &tok_dir,
        pad_id: tok.pad(),
        tokenizer: run_tokenizer,
    };
    let publish =
        || checkpoint::publish(&output_dir, |dir| checkpoint::write_weights(dir, &model, &files, save_kind(plan)));
    // Sharded: every rank takes part in gathering what rank 0 writes (a full fine-tune whole; an
    // adapter's trained tensors alone, so a frozen base larger than one rank never gathers).
    let published = match (&sharder, outcome.interrupted) {
        (_, true) => Ok(()),
        // A full fine-tune streams its weights one unit at a time; an adapter gathers its trained
        // tensors.
        (Some(sharder), false) if matches!(model.trainable, crate::model::llama::Trainable::Everything) => {
            catch_torch_errors(Some(plan), || {
                let written = if rt.is_main() {
                    checkpoint::publish(&output_dir, |dir| {
                        let kind = save_kind(plan);
                        let weights = sharder.stream_weights(&model, kind)?;
                        crate::model::weights::save_deferred(&dir.join("model.safetensors"), weights)?;
                        checkpoint::write_model_files(dir, &model, &files, kind, false)
                    })
                } else {
                    Ok(())
                };
                sharder.follow_stream(&model).and(written)
            })
        }
        (Some(sharder), false) => catch_torch_errors(Some(plan), || {
            sharder.with_outputs_gathered(false, || if rt.is_main() { publish() } else { Ok(()) })?
        }),
        (None, false) if rt.is_main() => catch_torch_errors(Some(plan), publish),
        (None, false) => Ok(()),
    };
    rt.comm.agree(published, "to write the outputs", device)?;
    if rt.is_main() && !outcome.interrupted {
        outputs.push(checkpoint::weights_file(&output_dir));
    }
    // The sample: by rank 0 alone, or under sharding by every rank alike (each pass gathers from all).
    let mut sample = None;
    if (rt.is_main() || sharder.is_some()) && opts.sample_tokens > 0 && !outcome.interrupted && model.score.is_none() {
        sample = catch_torch_errors(Some(plan), || {
            Ok(sample_prompt.as_ref().map(|prompt| {
                let ids = generate(
                    &model,
                    prompt,
                    tok.eos(),
                    Sampling { temperature: 0.0, top_p: 1.0, max_new_tokens: opts.sample_tokens, seed: t.seed },
                );
                (tok.decode(prompt), tok.decode(&ids))
            }))
        })?;
    }
    if rt.is_main() {
        catch_torch_errors(Some(plan), || {
            let records = metrics::read(log.path());
            let svg = metrics::loss_curve_svg(&records, &format!("{} — {}", plan.recipe, plan.model.name));
            let curve = output_dir.join("loss_curve.svg");
            crate::model::weights::write_atomic(&curve, svg.as_bytes())?;
            outputs.push(curve);
            Ok(())
        })?;
    }
    let status = if outcome.interrupted { crate::track::Status::Killed } else { crate::track::Status::Finished };
    let tracking = log.finish_tracking(status, &output_dir);
    Ok(RunReport {
        output_dir,
        device: format!("{device:?}"),
        compute: format!("{kind:?}"),
        rank: rt.comm.rank,
        world_size: rt.comm.world_size,
        backend: rt.comm.backend().map(|b| b.name()),
        collectives_per_step: outcome.collectives_per_step,
        host_syncs: outcome.host_syncs,
        packed_attention: plan.data.sample_packing.then(|| {
            let arch = &plan.model.architecture;
            let capability = match device {
                Device::Cuda(ordinal) => cuda::compute_capability(ordinal),
                _ => None,
            };
            match crate::model::llama::flash_varlen_applies(device, capability, kind, arch.head_dim as i64) {
                // Gemma's layers keep their masks (sliding windows, soft-capping).
                _ if arch.gemma.is_some() => "block-diagonal mask through SDPA (Gemma's layers)",
                crate::model::llama::PackedKernel::FlashVarlen => "flash attention per sample (varlen)",
                crate::model::llama::PackedKernel::Masked => "block-diagonal mask through SDPA",
            }
        }),
        steps_done: outcome.steps_done,
        total_steps: steps.total,
        data: report,
        train_rows: train_rows.len(),
        validation_rows: validation_rows.len(),
        packing_efficiency,
        eval_loss_before,
        eval_loss_after: outcome.last_eval_loss,
        forgetting_perplexity: (forgetting_before, forgetting_after),
        tokens_per_second: outcome.tokens_per_second,
        sample,
        stopped_early: outcome.stopped_early,
        interrupted: outcome.interrupted,
        resumed_from,
        outputs,
        optimizer_state_bytes,
        optimizer_untouched,
        cpu_peak_bytes: match (device, in_use_before_model) {
            (Device::Cpu, Some(before)) => {
                Some((host_memory::peak().saturating_sub(before), plan.memory.cpu_total_bytes))
            }
            _ => None,
        },
        gpu_peak_bytes: (device.is_cuda() && cuda::device_memory_peak() > 0)
            .then(|| (cuda::device_memory_peak(), plan.memory.total_bytes)),
        tracking,
    })
}

/// tch's tensor operations panic on libtorch errors; turn those into messages, and CUDA
/// out-of-memory into one with the plan's estimate and what would help.
pub fn catch_torch_errors<T>(plan: Option<&Plan>, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    match result {
        Ok(r) => r,
        Err(payload) => {
            let text = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown error".into());
            let first = text.lines().next().unwrap_or_default().to_string();
            if let (true, Some(plan)) = (text.contains("out of memory"), plan) {
                let m = &plan.memory;
                let hints = if m.suggestions.is_empty() {
                    String::new()
                } else {
                    format!(
                        " Changes that would help: {}.",
                        m.suggestions
                            .iter()
                            .map(|s| format!("{} ({})", s.change, crate::plan::bytes(s.total_bytes)))
                            .collect::<Vec<_>>()
                            .join("; ")
                    )
                };
                Err(format!(
                    "CUDA ran out of memory ({first}). The plan estimated {} per GPU.{hints}",
                    crate::plan::bytes(m.total_bytes)
                ))
            } else {
                Err(format!("libtorch failed: {first}"))
            }
        }
    }
}

/// Installs Ctrl-C / SIGTERM handlers: the first asks the loop to save and stop, a second one
/// ends the process at once.
pub fn install_stop_handler() {
    extern "C" fn on_signal(sig: libc::c_int) {
        train::STOP_REQUESTED.store(true, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: restoring the default disposition is async-signal-safe.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    // SAFETY: the handler only stores to an atomic and calls signal(2).
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// A trained model ready for sampling or merging: the base with the adapter of an output folder
/// (or the full model folder itself).
pub struct Loaded {
    pub model: CausalLm,
    pub tokenizer: Tokenizer,
    pub base_dir: PathBuf,
    /// The folder the tokenizer was read from (the adapter's when it carries one).
    pub tokenizer_dir: PathBuf,
}

/// Loads `dir` (an output folder or checkpoint: a peft adapter, or a Hugging Face model folder);
/// `base_dir` is where the base model of an adapter lives.
/// `quantize`: the base's quantization during training (QLoRA), so the adapter meets the same base.
/// `base_kind`: the dtype the base's weights are held in (float32 to compute on the CPU; `None`:
/// the base's own `torch_dtype`, for merging without widening it).
pub fn load_trained(
    dir: &Path,
    base_dir: Option<&Path>,
    device: Device,
    quantize: Option<crate::model::llama::Quantize>,
    base_kind: Option<Kind>,
) -> Result<Loaded, String> {
    let read_arch = |d: &Path| crate::plan::model::local_architecture(d).map_err(|e| format!("{}: {e}", d.display()));
    let kind = |arch: &crate::plan::arch::Architecture| {
        base_kind.unwrap_or_else(|| kind_of(Precision::from_torch_dtype(&arch.dtype)))
    };
    if dir.join("adapter_config.json").is_file() {
        let cfg = adapter::read_config(dir)?;
        let base = base_dir.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(&cfg.base_model));
        let arch = read_arch(&base)?;
        let opts =
            |trainable, score_head| LoadOptions { device, base_kind: kind(&arch), trainable, quantize, score_head };
        let tok_dir = if dir.join("tokenizer.json").is_file() { dir.to_path_buf() } else { base.clone() };
        let tokenizer = Tokenizer::load(&tok_dir)?;
        let mut model =
            CausalLm::load(&arch, &Checkpoint::open(&base)?, &opts(cfg.trainable, cfg.sequence_classification))?;
        // Tokens added by the run: the base grows to the tokenizer's size before the adapter's
        // embedding and head copies are loaded.
        model.resize_vocab(tokenizer.vocab_size() as i64);
        // peft's adapter_model.safetensors, or adapters' adapter.safetensors (bottleneck adapters).
        let weights = Checkpoint::open_files(dir, &[crate::model::bottleneck::weights_path(dir)])?;
        adapter::load_trainable(&model, &weights)?;
        Ok(Loaded { model, tokenizer, base_dir: base, tokenizer_dir: tok_dir })
    } else {
        let arch = read_arch(dir)?;
        let score_head = arch.class.ends_with("ForSequenceClassification");
        let opts =
            LoadOptions { device, base_kind: kind(&arch), trainable: Trainable::Nothing, quantize: None, score_head };
        let model = CausalLm::load(&arch, &Checkpoint::open(dir)?, &opts)?;
        Ok(Loaded {
            model,
            tokenizer: Tokenizer::load(dir)?,
            base_dir: dir.to_path_buf(),
            tokenizer_dir: dir.to_path_buf(),
        })
    }
}

/// A reward model's score of each token sequence (one forward pass each, no padding), read at
/// the sequence's last token that is not the padding token, as transformers does.
pub fn score_sequences(loaded: &Loaded, sequences: &[Vec<i64>]) -> Result<Vec<f64>, String> {
    let model = &loaded.model;
    let _guard = tch::no_grad_guard();
    let mut out = Vec::with_capacity(sequences.len());
    for ids in sequences {
        if ids.is_empty() {
            return Err("nothing to score: the text has no tokens".into());
        }
        let input_ids = Tensor::from_slice(ids).unsqueeze(0).to_device(model.device);
        let positions = Tensor::arange(ids.len() as i64, (Kind::Int64, model.device)).unsqueeze(0);
        let inputs = crate::model::llama::Inputs {
            input_ids: &input_ids,
            position_ids: &positions,
            segment_ids: None,
            varlen: None,
        };
        let mut batch = objective::DeviceBatch::new(&inputs, &input_ids);
        batch.pad_id = Some(loaded.tokenizer.pad());
        let hidden = model.hidden_states(&inputs, false);
        out.push(objective::sequence_scores(model, &hidden, &batch).double_value(&[0]));
    }
    Ok(out)
}

/// Folds a LoRA adapter into its base and writes a Hugging Face model folder in `kind`, one
/// merged weight at a time.
pub fn merge(loaded: &Loaded, out: &Path, kind: Kind) -> Result<Vec<PathBuf>, String> {
    let model = &loaded.model;
    if model.prompt.is_some() {
        return Err("a prompt-tuning adapter (peft's PROMPT_TUNING) cannot be merged: its virtual tokens are \
                    inputs put before every sequence, not a change to any weight; use the adapter folder as it is \
                    (recipe generate, or peft's PeftModel.from_pretrained)"
            .into());
    }
    if model.prefix.is_some() {
        return Err("a prefix-tuning adapter (peft's PREFIX_TUNING) cannot be merged: its keys and values are put \
                    before every sequence's in each layer, not a change to any weight; use the adapter folder as it \
                    is (recipe generate, or peft's PeftModel.from_pretrained)"
            .into());
    }
    if model.layers.iter().any(|l| l.bottleneck.is_some()) {
        return Err("a bottleneck adapter (AdapterHub's) cannot be merged: its blocks add a non-linear step after \
                    the attention and feed-forward blocks, not a change to any weight; use the adapter folder as it \
                    is (recipe generate, or adapters' load_adapter)"
            .into());
    }
    let tensors: Vec<Deferred> = model.merged_weights().into_iter().map(|d| d.cast(kind)).collect();
    let untie = tensors.iter().any(|d| d.name == "lm_head.weight") && model.arch.tie_word_embeddings;
    checkpoint::publish(out, |dir| {
        crate::model::weights::save_deferred(&dir.join("model.safetensors"), tensors)?;
        checkpoint::write_model_config(dir, &loaded.base_dir, model, kind, untie, Some(loaded.tokenizer.pad()))?;
        checkpoint::copy_side_files(&loaded.base_dir, &loaded.tokenizer_dir, dir)?;
        loaded.tokenizer.save(dir)
    })?;
    Ok(vec![out.join("model.safetensors"), out.join("config.json")])
}

/// `recipe quantize`: the base quantized as the plan says, written as a Hugging Face folder in
/// transformers' bitsandbytes serialization (quantized decoder linears; embeddings, norms and
/// head dense), so later runs load it without quantizing again.
pub fn quantize_model(plan: &Plan, out: &Path) -> Result<Vec<PathBuf>, String> {
    let spec = quantize_spec(plan)?.ok_or("the recipe does not quantize its base (set load_in_4bit: true)")?;
    if plan.model.architecture.moe.as_ref().is_some_and(|m| m.quantized_experts) {
        // transformers' bitsandbytes serialization has no format for quantized 3-D experts.
        return Err("unsupported-moe-quantized-experts-export: `recipe quantize` writes transformers' bitsandbytes \
                    format, which stores no quantized experts; leave `quantize_moe_experts` out here (the experts \
                    are then written dense) and keep it in the training recipe, which quantizes them while loading"
            .into());
    }
    let base_dir = crate::plan::model::model_folder(&plan.model)?;
    let ckpt = Checkpoint::open(&base_dir)?;
    let kind = save_kind(plan);
    let opts = LoadOptions {
        device: Device::Cpu,
        base_kind: kind,
        trainable: Trainable::Nothing,
        quantize: Some(spec),
        score_head: false,
    };
    let model = CausalLm::load(&plan.model.architecture, &ckpt, &opts)?;
    drop(ckpt);
    // Quantized linears as their stored tensors; the rest (embeddings, norms, head) dense.
    let linears: std::collections::HashMap<String, &crate::model::linear::QuantizedWeight> = model
        .linears()
        .into_iter()
        .filter_map(|l| l.quantized.as_ref().map(|q| (format!("{}.weight", l.name), q)))
        .collect();
    let mut tensors: Vec<Deferred> = Vec::new();
    for d in model.merged_weights() {
        match linears.get(&d.name) {
            Some(q) => tensors.extend(q.to_tensors(&d.name).into_iter().map(|(n, t)| Deferred::ready(n, t))),
            None => tensors.push(d.cast(kind)),
        }
    }
    let compute = plan.quantization.compute_dtype.map_or("float32", Precision::as_str);
    let quantization_config = match spec {
        crate::model::llama::Quantize::FourBit(f) => {
            crate::model::bnb::quantization_config(f.quant_type, f.double_quant, compute)
        }
        crate::model::llama::Quantize::Int8 => crate::model::int8::quantization_config(6.0),
    };
    checkpoint::publish(out, |dir| {
        crate::model::weights::save_deferred(&dir.join("model.safetensors"), tensors)?;
        checkpoint::write_model_config(dir, &base_dir, &model, kind, false, None)?;
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| e.to_string())?;
        let mut config: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        if let Some(o) = config.as_object_mut() {
            o.insert("quantization_config".into(), quantization_config);
        }
        let text = serde_json::to_string_pretty(&config).map_err(|e| e.to_string())? + "\n";
        crate::model::weights::write_atomic(&config_path, text.as_bytes())?;
        checkpoint::copy_side_files(&base_dir, &base_dir, dir)
    })?;
    Ok(vec![out.join("model.safetensors"), out.join("config.json")])
}

/// Axolotl's `resize_token_embeddings_to_32x`: the embedding grows to len(tokenizer) rounded up to
/// 32 where its rows fall short. Rows for the tokenizer's own added tokens recipe adds as always
/// (exec: resize_vocab); padding rows past the tokenizer Axolotl draws at random (transformers'
/// `_init_weights`, `mean_resizing_embeddings: false`), a draw recipe cannot repeat: refused.
fn check_rows_cover_32x(rows: u64, tokenizer_len: u64) -> Result<String, String> {
    let wanted = tokenizer_len.div_ceil(32) * 32;
    let have = rows.max(tokenizer_len);
    if have < wanted {
        return Err(format!(
            "`resize_token_embeddings_to_32x` would grow the embedding from {have} \
             rows (the tokenizer's {tokenizer_len} tokens) to {wanted}; Axolotl draws those {} padding rows at random \
             (mean_resizing_embeddings: false) and recipe cannot repeat the draw, so remove the key or add tokens \
             up to a multiple of 32",
            wanted - have
        ));
    }
    Ok(format!(
        "resize_token_embeddings_to_32x: {rows} embedding rows cover the tokenizer's {tokenizer_len} tokens rounded up \
         to 32 ({wanted}): nothing to resize"
    ))
}

#[cfg(test)]
mod resize_tests {
    #[test]
    fn rows_covering_the_tokenizer_rounded_to_32_need_nothing() {
        assert!(super::check_rows_cover_32x(512, 512).is_ok());
        assert!(super::check_rows_cover_32x(32000, 32000).is_ok());
        // Qwen: more rows than tokenizer tokens.
        assert!(super::check_rows_cover_32x(151_936, 151_665).is_ok());
        // Added tokens filling up to a multiple of 32: their rows are the run's, no padding.
        assert!(super::check_rows_cover_32x(512, 544).is_ok());
        let err = super::check_rows_cover_32x(512, 514).unwrap_err();
        assert!(err.contains("2 rows") || err.contains("to 544"), "{err}");
    }
}
