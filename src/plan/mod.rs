//! The Plan: a checked Config compiled into every resolved value the executor needs, without
//! downloading weights. Pure and serializable; `recipe plan` prints it, `--json` emits it.
//!
//! Built so far: model source and architecture with exact parameter counts, quantization layout,
//! adapter targets and trainable counts, chat template (name, source, sha256), datasets and their
//! masking policy, batch arithmetic, and the origin of every recipe value. Still to come (see the
//! plan issue's note): memory estimate per GPU and the distributed layout.

pub mod adapter;
pub mod arch;
pub mod arch_gemma;
pub mod bottleneck;
pub mod data;
pub mod forgetting;
pub mod kernels;
pub mod memory;
pub mod model;
pub mod moe;
pub mod precision;
pub mod qat;
pub mod quantize;
pub mod schedule;
pub mod shard;
pub mod tracking;
pub mod training;
pub mod unfrozen;

use crate::config::Config;
use crate::recipe::Loaded;
use crate::recipe::check::Locator;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub recipe: String,
    pub model: model::ModelPlan,
    pub quantization: quantize::QuantizationPlan,
    /// Quantization-aware training (`qat`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qat: Option<qat::QatPlan>,
    pub adapter: adapter::AdapterPlan,
    pub chat_template: Option<data::TemplatePlan>,
    pub datasets: Vec<data::DatasetPlan>,
    pub test_datasets: Vec<data::DatasetPlan>,
    /// `pretraining_dataset`: the stream trained on instead of `datasets`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pretraining: Option<data::PretrainingPlan>,
    /// Scored before and after training (perplexity), to measure forgetting.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub forgetting_datasets: Vec<data::DatasetPlan>,
    /// The replay buffer mixed into every step (`replay_datasets`, `replay_ratio`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<forgetting::ReplayPlan>,
    /// Elastic weight consolidation (`ewc_lambda`, `ewc_datasets`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ewc: Option<forgetting::EwcPlan>,
    pub data: data::DataOptions,
    pub batch: schedule::BatchPlan,
    pub layout: shard::Layout,
    pub memory: memory::MemoryEstimate,
    pub training: training::TrainingPlan,
    /// Kernel and compilation requests (Axolotl's names) and what recipe runs for each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernels: Vec<kernels::KernelNote>,
    /// Where the run is tracked besides metrics.jsonl (absent when nowhere).
    #[serde(skip_serializing_if = "tracking::TrackingPlan::is_off")]
    pub tracking: tracking::TrackingPlan,
    /// Set by `recipe plan` when the data and tokenizer are local (`crate::data::measure`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measured_data: Option<data::MeasuredData>,
    /// Every recipe value with where it came from (default, preset, file:line:col, --set).
    pub settings: Vec<Setting>,
    /// Axolotl keys accepted because their value has no effect.
    pub ignored_axolotl_keys: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Setting {
    pub key: String,
    pub value: serde_json::Value,
    pub origin: String,
}

/// How many GPUs, and the GPU size to check the memory estimate against.
#[derive(Debug, Clone, Copy)]
pub struct PlanOptions {
    pub world_size: u64,
    pub nodes: u64,
    pub gpu_memory: Option<u64>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions { world_size: 1, nodes: 1, gpu_memory: None }
    }
}

/// Compiles a loaded, valid recipe. Errors are messages naming the key or file at fault.
pub fn compile(loaded: &Loaded, options: PlanOptions) -> Result<Plan, String> {
    let config = loaded.config.as_ref().ok_or("the recipe is invalid")?;
    let tree = loaded.tree.as_ref().ok_or("the recipe is invalid")?;
    let at = Locator { tree, sources: &loaded.sources, deepspeed: loaded.deepspeed.as_ref() };
    let model = model::resolve(config, &at)?;
    let arch = &model.architecture;
    within_sliding_window(config, arch, &at)?;
    moe::refusals(config, arch)?;
    let mut adapter = adapter::plan(config, arch)?;
    // A relative lora_model_dir is read from the recipe's folder, as other local paths are.
    adapter.init_from = adapter.init_from.map(|dir| at.base_dir("lora_model_dir").join(dir).display().to_string());
    let quantization = quantize::plan(config, arch);
    let qat = qat::plan(config, arch).map_err(|e| format!("{e} ({})", at.origin("qat")))?;
    let precision = precision::resolve(config, &|key| at.entry(key).is_some());
    if let Some(n) = config.unfrozen.lisa_n_layers.filter(|&n| u64::from(n) > arch.num_layers) {
        // Axolotl: numpy's choice without replacement fails ("Cannot take a larger sample than population").
        return Err(format!(
            "`lisa_n_layers: {n}` is more than the model's {} decoder layers ({})",
            arch.num_layers,
            at.origin("lisa_n_layers")
        ));
    }
    let memory =
        memory::estimate(config, arch, precision.compute, options.world_size, options.nodes, options.gpu_memory)?;
    let mut layout =
        shard::layout(config, arch, &adapter, &quantization, precision.compute, options.world_size, options.nodes);
    layout.deepspeed = shard::deepspeed(config, &at);
    let datasets = data::datasets(config, &at, &model);
    let batch = schedule::plan(config, options.world_size, data::known_sequences(config, &datasets));
    deepspeed_agrees(config, &at, &batch)?;
    let replay = forgetting::replay(config, data::replay_datasets(config, &at, &model), batch.global_batch_sequences)
        .map_err(|e| format!("{} ({})", e, at.origin("replay_ratio")))?;
    let ewc = forgetting::ewc(config, data::ewc_datasets(config, &at, &model), arch, &adapter);
    let pretraining = data::pretraining(config, &at, batch.global_batch_sequences, options.world_size)?;
    Ok(Plan {
        pretraining,
        recipe: loaded.path.display().to_string(),
        chat_template: data::chat_template(config, &at, &model),
        batch,
        replay,
        ewc,
        datasets,
        test_datasets: data::test_datasets(config, &at, &model),
        forgetting_datasets: data::forgetting_datasets(config, &at, &model),
        data: data::options(config),
        settings: settings(config, &at),
        ignored_axolotl_keys: loaded.ignored_keys.clone(),
        quantization,
        qat,
        adapter,
        layout,
        memory,
        training: training::plan(config, precision, arch),
        kernels: kernels::plan(config),
        tracking: tracking::plan(config),
        measured_data: None,
        model,
    })
}

/// A DeepSpeed config's values that depend on the launch and the data must be the plan's:
/// `train_batch_size` (micro × accumulation × world size) and the scheduler's step counts. The
/// values that depend on the recipe alone are rules (config/rules.rs).
fn deepspeed_agrees(c: &Config, at: &Locator, batch: &schedule::BatchPlan) -> Result<(), String> {
    let Some(ds) = &c.distributed.deepspeed_config else {
        return Ok(());
    };
    let fail = |key: &str, written: String, plan: String| {
        Err(format!(
            "`deepspeed.{key}` ({}) is {written}, but {plan}; write \"auto\" to take the plan's value",
            at.origin(&format!("deepspeed.{key}"))
        ))
    };
    if let Some(n) = ds.train_batch_size.and_then(|v| v.value())
        && n != batch.global_batch_sequences
    {
        let plan = format!(
            "this launch's global batch is micro_batch_size {} × gradient_accumulation_steps {} × {} rank(s) = {}",
            batch.micro_batch_size, batch.gradient_accumulation_steps, batch.world_size, batch.global_batch_sequences
        );
        return fail("train_batch_size", n.to_string(), plan);
    }
    let params = ds.scheduler.as_ref().map(|s| s.params).unwrap_or_default();
    for (key, written, planned) in [
        ("warmup_num_steps", params.warmup_num_steps, batch.warmup_steps),
        ("total_num_steps", params.total_num_steps, batch.total_steps),
    ] {
        let Some(n) = written.and_then(|v| v.value()) else {
            continue;
        };
        match planned {
            Some(p) if p as f64 == n => {}
            Some(p) => return fail(&format!("scheduler.params.{key}"), n.to_string(), format!("the plan has {p}")),
            None => {
                let why = "the plan knows the step count only after preprocessing the data".to_string();
                return fail(&format!("scheduler.params.{key}"), n.to_string(), why);
            }
        }
    }
    Ok(())
}

/// Sliding-window attention is not built: a sequence longer than the model's window would attend
/// further back than the model was trained to. Known only once the model's config is read.
fn within_sliding_window(c: &Config, arch: &arch::Architecture, at: &Locator) -> Result<(), String> {
    let seq = u64::from(c.data.sequence_len);
    match arch.sliding_window {
        Some(window) if window < seq => Err(format!(
            "`sequence_len` ({}): {seq} is longer than the sliding window of {} ({window}); sliding-window \
             attention is not built yet, so set sequence_len to at most {window}",
            at.origin("sequence_len"),
            c.model.base_model.as_deref().unwrap_or("the model")
        )),
        _ => Ok(()),
    }
}

fn settings(c: &Config, at: &Locator) -> Vec<Setting> {
    let value = serde_json::to_value(c).unwrap_or_default();
    let Some(map) = value.as_object() else { return Vec::new() };
    map.iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(key, value)| {
            let origin = match at.origin(key) {
                // Derived from Axolotl's batch_size (recipe/check.rs), not a default.
                o if key == "gradient_accumulation_steps" && o == "default" && c.training.batch_size.is_some() => {
                    format!("batch_size / micro_batch_size ({})", at.origin("batch_size"))
                }
                // Axolotl's spellings, folded in by the loader (recipe/check.rs).
                o if o == "default" && c.training.rl_beta.is_some() && (key == "dpo_beta" || key == "orpo_alpha") => {
                    let folded = if c.training.rl == Some(crate::config::training::RlMethod::Orpo) {
                        "orpo_alpha"
                    } else {
                        "dpo_beta"
                    };
                    if key == folded { format!("rl_beta ({})", at.origin("rl_beta")) } else { o }
                }
                o if key == "bf16" && o == "default" && c.training.bfloat16 == Some(true) => {
                    format!("bfloat16 ({})", at.origin("bfloat16"))
                }
                o => o,
            };
            Setting { key: key.clone(), value: value.clone(), origin }
        })
        .collect()
}

/// Where a recipe value came from (its `settings` entry), or `default`.
fn origin(plan: &Plan, key: &str) -> String {
    plan.settings.iter().find(|s| s.key == key).map_or("default".into(), |s| s.origin.clone())
}

/// Human-readable plan.
/// What sets Phi-3 / OLMo 2 layers apart from a Llama layer, for the text plan (None for the others).
fn arch_layout(a: &arch::Architecture) -> Option<String> {
    let mut parts = Vec::new();
    if a.fused_projections {
        parts.push("fused qkv_proj and gate_up_proj".to_string());
    }
    if a.post_norms {
        parts.push("post-norms (after attention and MLP, none before)".to_string());
    }
    if a.qk_norm_all_heads {
        parts.push("q/k norms over all heads".to_string());
    }
    if let Some(f) = a.partial_rotary_factor {
        parts.push(format!("rotary embedding on {} of {} head dims", (a.head_dim as f64 * f) as u64, a.head_dim));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

pub fn render_text(plan: &Plan) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let m = &plan.model;
    let a = &m.architecture;
    let _ = writeln!(o, "plan for {}\n", plan.recipe);
    let _ = writeln!(o, "model      {} ({})", m.name, m.config_source);
    if let Some(t) = &m.tokenizer {
        let from = t.local_dir.as_ref().map_or_else(|| "Hugging Face hub".to_string(), |d| format!("local folder {d}"));
        let _ = writeln!(o, "tokenizer  {} ({from}; tokenizer_config), saved with every output", t.name);
    }
    let _ = writeln!(
        o,
        "           {} {:?}: {} layers, hidden {}, intermediate {}, heads {} (kv {}), head dim {}, vocab {}",
        a.class,
        a.family,
        a.num_layers,
        a.hidden_size,
        a.intermediate_size,
        a.num_attention_heads,
        a.num_key_value_heads,
        a.head_dim,
        a.vocab_size
    );
    let _ = writeln!(
        o,
        "           context {}, rope theta {}{}, tied embeddings {}, qkv bias {}{}, dtype {}",
        a.max_position_embeddings,
        a.rope_theta,
        a.rope_scaling.as_ref().map_or(String::new(), |r| format!(" ({} ×{})", r.rope_type, r.factor)),
        a.tie_word_embeddings,
        a.qkv_bias,
        if a.qk_norm { ", q/k head norm" } else { "" },
        a.dtype
    );
    if let Some(g) = &a.gemma {
        let _ = writeln!(o, "           {}", arch_gemma::describe(g, a.num_layers));
    }
    if let Some(layout) = arch_layout(a) {
        let _ = writeln!(o, "           {layout}");
    }
    if let Some(moe) = &a.moe {
        let _ = writeln!(o, "           {}", moe::describe(moe, a.num_layers));
    }
    let _ = writeln!(o, "           {} parameters", group(m.parameters.total));
    if plan.data.resize_token_embeddings_to_32x {
        let _ = writeln!(
            o,
            "           resize_token_embeddings_to_32x: the run checks that the {} embedding rows (more with added \
             tokens) cover len(tokenizer) rounded up to 32, so there is nothing to resize; padding rows beyond the \
             tokenizer, which Axolotl draws at random, are refused",
            a.vocab_size
        );
    }
    let q = &plan.quantization;
    if q.scheme == quantize::QuantScheme::None {
        let _ = writeln!(o, "quantize   none");
    } else {
        let _ = writeln!(
            o,
            "quantize   {} (block {}, double quant {}, compute {}): {} weights in {} bytes",
            q.scheme,
            q.block_size.map_or("-".into(), |b| b.to_string()),
            q.double_quant,
            q.compute_dtype.map_or("-", precision::Precision::as_str),
            group(q.quantized_parameters),
            group(q.quantized_bytes)
        );
        let per_module: Vec<String> =
            q.quantized_modules.iter().map(|m| format!("{} {}", m.name, bytes(m.bytes))).collect();
        let _ = writeln!(o, "           per layer: {}", per_module.join(", "));
        if !q.expert_modules.is_empty() {
            let fused: Vec<String> =
                q.expert_modules.iter().map(|m| format!("{} {}", m.name, bytes(m.bytes))).collect();
            let _ = writeln!(
                o,
                "           experts (quantize_moe_experts), per sparse layer × {}: {}; each fused tensor quantized \
                 whole as bitsandbytes' replace_parameter_{}, dequantized per expert in the forward pass; the router \
                 stays in the compute dtype",
                q.expert_layers,
                fused.join(", "),
                if q.scheme == quantize::QuantScheme::Int8 {
                    "8bit (Axolotl's: int8 per row of the last dimension, dequantized to fp32)"
                } else {
                    "4bit (blocks of 64)"
                }
            );
        }
    }
    if let Some(q) = &plan.qat {
        let from = match q.from_step {
            0 => "from the first step".to_string(),
            n => format!("from step {n} (fake_quant_after_n_steps; steps 0..{n} train unquantized)"),
        };
        let per_layer = q.modules.len() as u64 - 1;
        let _ = writeln!(
            o,
            "qat        fake-quantized training of {} linear layers ({per_layer} per layer × {} + lm_head), {from}",
            per_layer * q.num_layers + 1,
            q.num_layers
        );
        let _ = writeln!(o, "           modules {}", q.modules.join(", "));
        let _ = writeln!(o, "           activations {}", q.activations);
        let _ = writeln!(o, "           weights {}; gradients straight through the rounding", q.weights);
        if let Some(b) = &q.biases {
            let _ = writeln!(o, "           {b}");
        }
        let _ = writeln!(o, "           saved: {}", q.saved);
    }
    let ad = &plan.adapter;
    match ad.method {
        adapter::AdapterMethod::Full => match &ad.unfrozen {
            None => {
                let _ =
                    writeln!(o, "adapter    none: full fine-tuning of {} parameters", group(ad.trainable_parameters));
                if let Some(lisa) = &plan.training.lisa {
                    let _ = writeln!(o, "           {}", lisa.describe());
                }
            }
            Some(u) => {
                let _ = writeln!(
                    o,
                    "adapter    none: full fine-tuning of {} of {} parameters ({:.2}%), the rest frozen (unfrozen_parameters)",
                    group(ad.trainable_parameters),
                    group(ad.total_parameters),
                    ad.trainable_percent
                );
                for p in &u.patterns {
                    let rows = match p.rows {
                        Some(r) => format!(", rows {}..{}", r.start, r.end.map_or_else(String::new, |e| e.to_string())),
                        None => String::new(),
                    };
                    let shown: Vec<&str> = p.tensors.iter().take(3).map(String::as_str).collect();
                    let more =
                        if p.tensors.len() > 3 { format!(", … {} more", p.tensors.len() - 3) } else { String::new() };
                    let _ = writeln!(
                        o,
                        "           {} → {} tensor{}{rows}: {}{more}",
                        p.pattern,
                        p.tensors.len(),
                        if p.tensors.len() == 1 { "" } else { "s" },
                        shown.join(", ")
                    );
                }
            }
        },
        adapter::AdapterMethod::Lora | adapter::AdapterMethod::Qlora | adapter::AdapterMethod::Ia3 => {
            if ad.method == adapter::AdapterMethod::Ia3 {
                let _ = writeln!(
                    o,
                    "adapter    ia3 on {} ({} modules); feed-forward (input scaled): {}",
                    ad.target_modules.join(" "),
                    ad.adapted_modules,
                    if ad.feedforward_modules.is_empty() { "none".into() } else { ad.feedforward_modules.join(" ") }
                );
            } else {
                let _ = writeln!(
                    o,
                    "adapter    {} r={} alpha={} scaling={:.4}{}{} dropout={} on {} ({} modules)",
                    ad.method,
                    ad.r,
                    ad.alpha,
                    ad.scaling,
                    if ad.rslora { " (rsLoRA)" } else { "" },
                    if ad.dora { " DoRA" } else { "" },
                    ad.dropout,
                    ad.target_modules.join(" "),
                    ad.adapted_modules
                );
            }
            for p in &ad.adapted_parameters {
                let dims = |d: &[u64]| d.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
                let _ = writeln!(
                    o,
                    "           target parameter {} [{}] in {} layers: lora_A [{}], lora_B [{}] (peft's ParamWrapper)",
                    p.name,
                    dims(&p.shape),
                    p.layers,
                    dims(&p.lora_a),
                    dims(&p.lora_b)
                );
            }
            if !ad.modules_to_save.is_empty() {
                let _ = writeln!(o, "           trained in full: {}", ad.modules_to_save.join(" "));
            }
            if let Some(dir) = &ad.init_from {
                let _ = writeln!(o, "           starts from the trained adapter in {dir} (lora_model_dir)");
            }
            let _ = writeln!(
                o,
                "           {} trainable of {} ({:.4}%)",
                group(ad.trainable_parameters),
                group(ad.total_parameters),
                ad.trainable_percent
            );
        }
        adapter::AdapterMethod::Bottleneck => {
            if let Some(b) = &ad.bottleneck {
                let place = if b.mh_adapter {
                    "after attention and after the feed-forward block"
                } else {
                    "after the feed-forward block"
                };
                let _ = writeln!(
                    o,
                    "adapter    bottleneck {} ({}): {} per layer ({}), {} → {} → {} with {}, reduction factor {}",
                    b.architecture_name(),
                    b.config_class,
                    b.adapters_per_layer(),
                    place,
                    plan.model.architecture.hidden_size,
                    b.bottleneck_size,
                    plan.model.architecture.hidden_size,
                    b.non_linearity,
                    b.reduction_factor
                );
            }
            let _ = writeln!(
                o,
                "           {} trainable of {} ({:.4}%)",
                group(ad.trainable_parameters),
                group(ad.total_parameters),
                ad.trainable_percent
            );
        }
        adapter::AdapterMethod::PromptTuning | adapter::AdapterMethod::PrefixTuning => {
            if let Some(p) = &ad.prefix {
                let _ = writeln!(
                    o,
                    "adapter    prefix_tuning: a trained key and value ({} wide) in each layer for {} virtual tokens \
                     before every sequence",
                    p.key_value_dim, p.num_virtual_tokens
                );
                if let Some(e) = p.encoder_hidden_size {
                    let _ = writeln!(
                        o,
                        "           computed by peft's PrefixEncoder MLP (prefix_projection): an embedding per \
                         virtual token, Linear({}, {e}), tanh, Linear({e}, {})",
                        p.key_value_dim,
                        2 * p.key_value_dim * plan.model.architecture.num_layers
                    );
                }
            }
            if let Some(p) = &ad.prompt {
                let init = match &p.init_text {
                    Some(text) => format!("from the text {text:?}"),
                    None => "random".to_string(),
                };
                let _ = writeln!(
                    o,
                    "adapter    prompt_tuning: {} virtual tokens before every sequence, initialised {init}",
                    p.num_virtual_tokens
                );
            }
            let _ = writeln!(
                o,
                "           {} trainable of {} ({:.4}%)",
                group(ad.trainable_parameters),
                group(ad.total_parameters),
                ad.trainable_percent
            );
        }
    }
    if let Some(t) = &plan.chat_template {
        let _ = writeln!(
            o,
            "template   {} from {} sha256 {}",
            t.name,
            t.source,
            t.sha256.as_deref().unwrap_or("(not yet known)")
        );
    }
    for (label, list) in
        [("dataset   ", &plan.datasets), ("test set  ", &plan.test_datasets), ("forgetting", &plan.forgetting_datasets)]
    {
        for d in list {
            let rows = d.rows.map_or(String::new(), |r| format!(", {} rows", group(r)));
            let weight = d.entry.source().weight.map_or(String::new(), |w| format!(", weight {w}"));
            let _ = writeln!(o, "{label} {} {} split {}{rows}{weight}: {}", d.r#type, d.source, d.split, d.masking);
        }
    }
    if let Some(p) = &plan.pretraining {
        let _ = writeln!(
            o,
            "stream     pretraining_dataset {} split {}, text column `{}`, {} file(s), skip {} texts: every token \
             trained",
            p.source,
            p.split,
            p.text_column,
            p.files.len(),
            p.skip
        );
        let layout = if p.concatenate {
            format!(
                "texts + EOS + pad concatenated into rows of {} tokens (the pad hidden from attention, \
                 label -100), within chunks of {} texts",
                p.row_tokens, p.chunk_texts
            )
        } else {
            format!("one text per row, truncated to {} tokens (BOS included)", p.row_tokens.saturating_sub(2))
        };
        let _ = writeln!(
            o,
            "           {layout}; {} rows per step for {} steps (max_steps), the stream restarting when it ends",
            p.rows_per_step, p.steps
        );
        let dealt = if p.shards.len() > 1 {
            let sizes: Vec<String> = p.shards.iter().map(|s| s.len().to_string()).collect();
            format!("sharded by file, rank r reads group r ({} files)", sizes.join(" / "))
        } else {
            "one stream, every rank reads it and keeps its own micro-batches of each step's consecutive rows".into()
        };
        let _ = writeln!(o, "           ranks: {dealt}");
    }
    if let Some(r) = &plan.replay {
        for d in &r.datasets {
            let rows = d.rows.map_or(String::new(), |r| format!(", {} rows", group(r)));
            let _ = writeln!(o, "replay     {} {} split {}{rows}: {}", d.r#type, d.source, d.split, d.masking);
        }
        let held = r.host_bytes_at_most.map_or("known after preprocess".into(), |b| format!("at most {}", bytes(b)));
        let _ = writeln!(
            o,
            "           replay_ratio {} ({}): {} replay + {} new rows per step, reused cyclically; tokenized replay set \
             in host memory: {held}",
            r.ratio,
            origin(plan, "replay_ratio"),
            r.rows_per_step,
            r.new_rows_per_step
        );
    }
    if let Some(e) = &plan.ewc {
        for d in &e.datasets {
            let rows = d.rows.map_or(String::new(), |r| format!(", {} rows", group(r)));
            let _ = writeln!(o, "ewc data   {} {} split {}{rows}: {}", d.r#type, d.source, d.split, d.masking);
        }
        let affected = if e.adapted_weights > 0 {
            format!(
                "merged deltas of {} adapted weights ({} elements) + {} elements trained directly",
                e.adapted_weights,
                group(e.adapted_elements),
                group(e.direct_elements)
            )
        } else {
            format!("{} trainable elements", group(e.direct_elements))
        };
        let _ = writeln!(
            o,
            "ewc        lambda {} ({}): penalty λ/2 · Σ F ⊙ (θ − θ0)² on {affected}; Fisher + θ0 in fp32: {}",
            e.lambda,
            origin(plan, "ewc_lambda"),
            bytes(e.bytes)
        );
        let _ = writeln!(
            o,
            "           Fisher estimated before step 1 on up to {} samples ({}): as many forward + backward passes \
             at batch 1, up to {} tokens",
            e.samples,
            origin(plan, "ewc_samples"),
            group(e.estimate_tokens_at_most)
        );
    }
    let dopt = &plan.data;
    let mut hygiene = vec![format!("over-length samples: {:?}", dopt.excess_length_strategy).to_lowercase()];
    if dopt.exact_deduplication {
        hygiene.push("exact dedup".into());
    }
    if dopt.normalized_deduplication {
        hygiene.push("normalised dedup".into());
    }
    if dopt.redact_pii {
        hygiene.push("PII redacted".into());
    }
    if dopt.skip_bad_rows {
        hygiene.push("bad rows skipped".into());
    }
    let _ = writeln!(o, "hygiene    {}", hygiene.join(", "));
    let b = &plan.batch;
    let _ = writeln!(
        o,
        "batch      {} × {} accumulation × {} ranks = {} sequences, up to {} tokens per step (sequence {}, packing {})",
        b.micro_batch_size,
        b.gradient_accumulation_steps,
        b.world_size,
        b.global_batch_sequences,
        group(b.global_batch_tokens),
        b.sequence_len,
        b.sample_packing
    );
    if let Some(s) = plan.settings.iter().find(|s| s.key == "batch_size" && !s.value.is_null()) {
        let _ = writeln!(
            o,
            "           accumulation {} = batch_size {} ({}) / micro_batch_size {} (Axolotl's normalize_config)",
            b.gradient_accumulation_steps, s.value, s.origin, b.micro_batch_size
        );
    }
    let known = |v: Option<u64>| v.map_or("known after preprocess".to_string(), |s| s.to_string());
    let _ = writeln!(
        o,
        "schedule   training sequences: {}; steps per epoch: {}; total steps: {}; warmup steps: {}",
        known(b.train_sequences),
        known(b.steps_per_epoch),
        known(b.total_steps),
        known(b.warmup_steps)
    );
    let points: Vec<String> = b.lr_points.iter().map(|p| format!("step {}: {:.3e}", p.step, p.learning_rate)).collect();
    let _ = writeln!(
        o,
        "           {} learning rate, peak {:e}{}",
        serde_json::to_value(b.lr_scheduler).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
        b.peak_learning_rate,
        if points.is_empty() { String::new() } else { format!("; {}", points.join(", ")) }
    );
    if let Some(m) = &plan.measured_data {
        let _ = writeln!(
            o,
            "measured   {} training, {} validation, {} test samples ({}); {} rows of {}, packing efficiency {:.1}% \
             (real tokens / slots); {} steps per epoch, {} total, {} warmup",
            m.train_samples,
            m.validation_samples,
            m.test_samples,
            m.source,
            m.train_rows,
            b.sequence_len,
            100.0 * m.packing_efficiency,
            m.steps.per_epoch,
            m.steps.total,
            m.steps.warmup
        );
        for line in &m.report {
            let _ = writeln!(o, "           {line}");
        }
    }
    let t = &plan.training;
    if let Some(p) = &t.preference {
        use crate::config::training::RlMethod;
        use training::ReferenceStrategy;
        let reference = match (p.reference, plan.adapter.method) {
            (ReferenceStrategy::Precomputed, _) => {
                "reference: log-probabilities of the model before training, computed once for every pair"
            }
            (_, adapter::AdapterMethod::Full) => {
                "reference: a frozen copy of the model, not built yet (recipe run refuses it; set \
                 precompute_ref_log_probs: true)"
            }
            _ => "reference: the base with the adapter switched off (no second copy)",
        };
        let weighting = if p.use_weighting { ", each pair weighted as WPO (dpo_use_weighting)" } else { "" };
        let status = match p.method {
            RlMethod::Dpo => format!("loss -log σ(β Δ) as TRL's sigmoid DPO{weighting}; {reference}"),
            RlMethod::Ipo => format!("loss (Δ̄ - 1/(2β))² as TRL's IPO (per-token averages){weighting}; {reference}"),
            RlMethod::Simpo => format!(
                "loss -log σ(β (c̄ - r̄) - γ) + cpo_alpha · NLL as TRL's CPO trainer (simpo), γ {}, cpo_alpha {}; no \
                 reference model",
                p.simpo_gamma, p.cpo_alpha
            ),
            RlMethod::Orpo => format!(
                "loss NLL(chosen) - α · log σ(log odds ratio) as TRL's ORPO trainer, α (orpo_alpha) {}; no reference \
                 model",
                p.orpo_alpha
            ),
            RlMethod::Kto => format!(
                "each pair unpaired into a desirable and an undesirable answer; loss 1 - σ(β (log ratio - KL)) for \
                 desirable, 1 - σ(β (KL - log ratio)) for undesirable answers (weights {} / {}), KL estimated per \
                 micro-batch from prompts with mismatched answers, as TRL's KTOTrainer; {reference}",
                p.kto_desirable_weight, p.kto_undesirable_weight
            ),
        };
        let beta = if p.method == RlMethod::Orpo { String::new() } else { format!(", beta {}", p.beta) };
        let _ = writeln!(o, "objective  {} preference training{beta}: {status}", p.method);
    }
    if let Some(r) = &t.reward {
        let center = match r.center_rewards_coefficient {
            Some(c) => format!(" + {c} · (r_chosen + r_rejected)²"),
            None => String::new(),
        };
        let _ = writeln!(
            o,
            "objective  reward model: a score head (hidden → 1) on each sequence's last non-padding token replaces \
             the language-model head; loss -log σ(r_chosen - r_rejected){center} as TRL's RewardTrainer"
        );
    }
    let _ = writeln!(
        o,
        "optimizer  {}: {}; betas ({}, {}), eps {:e}, weight decay {}; clip grad norm {}",
        t.optimizer.name,
        t.optimizer.implementation,
        t.optimizer.beta1,
        t.optimizer.beta2,
        t.optimizer.epsilon,
        t.optimizer.weight_decay,
        if t.max_grad_norm > 0.0 { t.max_grad_norm.to_string() } else { "off".into() }
    );
    let _ = writeln!(o, "loss       {}", t.loss.describe(plan.model.architecture.vocab_size));
    let _ = writeln!(o, "attention  {}", t.attention.describe());
    let _ = writeln!(o, "precision  {}", t.precision.describe());
    let every = |e: Option<training::Every>| match e {
        None => "never".to_string(),
        Some(training::Every::Steps(n)) => format!("every {n} steps"),
        Some(training::Every::FractionOfTotal(f)) => format!("every {f} of the steps"),
        Some(training::Every::PerEpoch(k)) => format!("{k} times per epoch"),
    };
    let _ = writeln!(
        o,
        "run        seed {}; gradient checkpointing {}; log every {} steps; evaluate {}; save {}{}; outputs in {} \
         (model weights in {})",
        t.seed,
        t.gradient_checkpointing,
        t.logging_steps,
        every(t.eval),
        every(t.save),
        t.save_total_limit.map_or(String::new(), |n| format!(" (keep {n})"))
            + if t.save_only_model { ", weights only (no optimizer state: not resumable)" } else { "" }
            + &t.loss_watchdog.map_or(String::new(), |(threshold, patience)| {
                format!("; stop once the loss is above {threshold} for {patience} steps in a row")
            }),
        t.output_dir,
        t.save_dtype
    );
    if let Some(a) = &t.activation_offloading {
        let _ = writeln!(
            o,
            "           activation offloading ({}): on a GPU each checkpointed layer input goes to pinned host \
             memory after the layer's forward pass (a non-blocking copy on the compute stream) and comes back \
             before its recomputation; the loss and gradients are unchanged (with an adapter Axolotl skips the \
             recomputation and offloads every activation instead: the same math). No effect on CPU, the \
             activations already live in host memory",
            a.requested_by
        );
    }
    for (i, k) in plan.kernels.iter().enumerate() {
        let _ = writeln!(o, "{}{} → {}", if i == 0 { "kernels    " } else { "           " }, k.request, k.recipe_runs);
    }
    for (i, line) in plan.tracking.lines().iter().enumerate() {
        let _ = writeln!(o, "{}{line}", if i == 0 { "tracking   " } else { "           " });
    }
    let l = &plan.layout;
    let _ = writeln!(
        o,
        "layout     {} across {} rank(s) on {} node(s){}",
        serde_json::to_value(l.strategy).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
        l.world_size,
        l.nodes,
        if l.shard_group_size > 1 { format!(", shard groups of {}", l.shard_group_size) } else { String::new() }
    );
    if !l.fsdp.is_empty() {
        let list: Vec<&str> = l.fsdp.iter().map(|o| o.as_str()).collect();
        let how = match l.strategy {
            shard::Strategy::Single | shard::Strategy::Ddp => "one rank holds everything".to_string(),
            // Only a DeepSpeed config asks for ZeRO-1, and it excludes `fsdp`.
            shard::Strategy::ShardOptimizer => {
                "optimizer states split; gradients all-reduced; updated weights all-gathered after each step"
                    .to_string()
            }
            shard::Strategy::ShardGradOp => {
                "gradients reduce-scattered and optimizer states split per unit; updated weights all-gathered after \
                 each step"
                    .to_string()
            }
            shard::Strategy::FullShard | shard::Strategy::HybridShard => format!(
                "parameters, gradients and optimizer states split per unit; a unit is gathered for each use and {}",
                if l.reshard_after_forward {
                    "released after it (its layer recomputed in the backward pass)"
                } else {
                    "kept from its forward pass to its backward pass (reshard_after_forward: false)"
                }
            ),
        };
        let _ = writeln!(o, "           fsdp: [{}]: {how}", list.join(", "));
        if l.strategy.shards_gradients_and_optimizer() {
            let _ = writeln!(
                o,
                "           checkpoints: {}; final outputs whole",
                if l.sharded_checkpoints {
                    "each rank's chunks and an index (SHARDED_STATE_DICT), resumable on any world size"
                } else {
                    "whole (FULL_STATE_DICT), assembled one tensor at a time"
                }
            );
        }
        for (key, what) in &l.not_built {
            let _ = writeln!(o, "           {key}: {what} is not built; recipe run refuses it");
        }
        let own = plan.model.architecture.decoder_layer_class();
        match &l.wrapped_class {
            Some(c) if !c.split(',').any(|c| c.trim() == own) => {
                let _ = writeln!(
                    o,
                    "           transformer_layer_cls_to_wrap `{c}` is not this model's decoder layer ({own}); recipe run \
                     refuses it"
                );
            }
            _ => {
                let _ = writeln!(o, "           units: each {own} and the root (embeddings, final norm, head)");
            }
        }
    }
    if let Some(ds) = &l.deepspeed {
        let _ = writeln!(
            o,
            "           deepspeed: {} ZeRO stage {} (from {}) → {}{}",
            ds.file,
            ds.stage.number(),
            ds.stage_origin,
            serde_json::to_value(l.strategy).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
            if l.world_size > 1 { "" } else { " with more than one rank" }
        );
        for (key, offload) in [("offload_optimizer", ds.offload_optimizer), ("offload_param", ds.offload_param)] {
            if let Some(off) = offload {
                let _ = writeln!(o, "           {key}: device cpu (pin_memory: {})", off.pin_memory);
            }
        }
        for a in &ds.accepted {
            let _ = writeln!(o, "           accepted: {} ({})", a.key, a.why);
        }
    }
    let off = l.offload;
    if off.any() {
        let what = match (off.trainable, off.frozen) {
            (true, true) => {
                "every rank's chunks (trainable and frozen), their gradient chunks and the optimizer states"
            }
            _ => "the trainable chunks, their gradient chunks and the optimizer states",
        };
        let _ = writeln!(
            o,
            "           offload: {what} in host memory{}; a unit's chunks are copied to the device for its gather and \
             its gradient chunks back after its reduce-scatter; the optimizer steps on the host",
            if off.pin_memory { " (pinned on CUDA)" } else { "" }
        );
    }
    if let Some(r) = l.ranks.first() {
        let _ = writeln!(
            o,
            "           per rank: {} parameters, {} ({} units: {} decoder layers + root)",
            group(r.parameters),
            if r.gradients == r.optimizer_elements {
                format!("{} gradient and optimizer elements", group(r.gradients))
            } else {
                format!("{} gradient and {} optimizer elements", group(r.gradients), group(r.optimizer_elements))
            },
            l.units.len(),
            l.units.len() - 1
        );
    }
    let c = &l.per_step;
    if l.world_size > 1 {
        let _ = writeln!(
            o,
            "           per optimizer step and rank: all-reduce {}, all-gather {}, reduce-scatter {}",
            bytes(c.all_reduce),
            bytes(c.all_gather),
            bytes(c.reduce_scatter)
        );
        let _ = writeln!(
            o,
            "           c10d: Gloo on CPU, NCCL on CUDA; gradient buckets of {} MiB, timeout {} s{}",
            l.ddp.bucket_cap_mb,
            l.ddp.timeout_secs,
            if l.ddp.find_unused_parameters { ", unused parameters summed as zero" } else { "" }
        );
    }
    let m = &plan.memory;
    let _ = writeln!(o, "memory     per GPU, compute dtype {}:", m.compute_dtype);
    for item in &m.items {
        let _ = writeln!(o, "             {:>10}  {:<27} {}", bytes(item.bytes), item.name, item.formula);
    }
    let _ = writeln!(
        o,
        "             {:>10}  total (activations: {} with gradient checkpointing, {} without)",
        bytes(m.total_bytes),
        bytes(m.activations_with_checkpointing),
        bytes(m.activations_without_checkpointing)
    );
    if m.host_bytes > 0 {
        let _ = writeln!(o, "             {:>10}  in host memory per rank (offload), besides", bytes(m.host_bytes));
    }
    let _ =
        writeln!(o, "             {:>10}  on CPU instead (fp32 compute, no CUDA context)", bytes(m.cpu_total_bytes));
    match (m.gpu_memory, m.fits, m.margin_bytes) {
        (Some(limit), Some(true), Some(margin)) => {
            let _ = writeln!(o, "           fits in {} ({} to spare)", bytes(limit), bytes(margin as u64));
        }
        (Some(limit), Some(false), Some(margin)) => {
            let _ = writeln!(o, "           does not fit in {}: {} short", bytes(limit), bytes(margin.unsigned_abs()));
            for s in &m.suggestions {
                let verdict = if s.fits { "fits" } else { "still too large" };
                let _ = writeln!(o, "             try {}: {} ({verdict})", s.change, bytes(s.total_bytes));
            }
        }
        _ => {
            let _ = writeln!(o, "           (give --gpu-memory 24GiB to check whether it fits)");
        }
    }
    let _ = writeln!(o, "\nsettings (value  <- origin)");
    let width = plan.settings.iter().map(|s| s.key.len()).max().unwrap_or(0);
    for s in &plan.settings {
        let _ = writeln!(o, "  {:width$}  {}  <- {}", s.key, s.value, s.origin);
    }
    if !plan.ignored_axolotl_keys.is_empty() {
        let _ = writeln!(o, "\nignored (Axolotl keys with no effect): {}", plan.ignored_axolotl_keys.join(", "));
    }
    o
}

/// Bytes for people: 1.50 GiB, 12.3 MiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.2} {}", UNITS[unit]) }
}

/// 13015864320 -> 13,015,864,320.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
