//! The Plan: a checked Config compiled into every resolved value the executor needs, without
//! downloading weights. Pure and serializable; `recipe plan` prints it, `--json` emits it.
//!
//! Built so far: model source and architecture with exact parameter counts, quantization layout,
//! adapter targets and trainable counts, chat template (name, source, sha256), datasets and their
//! masking policy, batch arithmetic, and the origin of every recipe value. Still to come (see the
//! plan issue's note): memory estimate per GPU and the distributed layout.

pub mod adapter;
pub mod arch;
pub mod model;

use crate::config::Config;
use crate::config::chat_template::ChatTemplateName;
use crate::config::datasets::DatasetConfig;
use crate::config::location::{Location, resolve_location};
use crate::recipe::Loaded;
use crate::recipe::check::Locator;
use serde::Serialize;
use sha2::Digest;

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub recipe: String,
    pub model: model::ModelPlan,
    pub quantization: QuantizationPlan,
    pub adapter: adapter::AdapterPlan,
    pub chat_template: Option<TemplatePlan>,
    pub datasets: Vec<DatasetPlan>,
    pub batch: BatchPlan,
    /// Every recipe value with where it came from (default, preset, file:line:col, --set).
    pub settings: Vec<Setting>,
    /// Axolotl keys accepted because their value has no effect.
    pub ignored_axolotl_keys: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct QuantizationPlan {
    /// `none`, `int8` or `nf4` / `fp4`.
    pub scheme: String,
    pub block_size: Option<u64>,
    pub double_quant: bool,
    pub compute_dtype: Option<String>,
    /// Which weights are quantized (every decoder linear layer; embeddings, norms and lm_head stay).
    pub quantized_modules: Vec<String>,
    pub quantized_parameters: u64,
    /// Bytes of the quantized weights, constants included.
    pub quantized_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TemplatePlan {
    pub name: String,
    /// Where the text comes from: `templates/NAME.jinja`, a file, inline, or the tokenizer.
    pub source: String,
    /// sha256 of the template text, when it is known before the tokenizer is loaded.
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatasetPlan {
    pub r#type: String,
    /// `local PATH` or `hub ID@REVISION`.
    pub source: String,
    pub split: String,
    /// Which tokens carry labels.
    pub masking: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BatchPlan {
    pub micro_batch_size: u64,
    pub gradient_accumulation_steps: u64,
    pub world_size: u64,
    pub global_batch_sequences: u64,
    /// Upper bound: every sequence filled to sequence_len (packing gets close).
    pub global_batch_tokens: u64,
    pub sequence_len: u64,
    pub sample_packing: bool,
    /// Optimizer steps when `max_steps` is set; otherwise known after preprocessing.
    pub total_steps: Option<u64>,
    pub warmup_steps: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Setting {
    pub key: String,
    pub value: serde_json::Value,
    pub origin: String,
}

/// Compiles a loaded, valid recipe. Errors are messages naming the key or file at fault.
pub fn compile(loaded: &Loaded, world_size: u64) -> Result<Plan, String> {
    let config = loaded.config.as_ref().ok_or("the recipe is invalid")?;
    let tree = loaded.tree.as_ref().ok_or("the recipe is invalid")?;
    let at = Locator { tree, sources: &loaded.sources };
    let model = model::resolve(config, &at)?;
    let arch = &model.architecture;
    let adapter = adapter::plan(config, arch)?;
    Ok(Plan {
        recipe: loaded.path.display().to_string(),
        quantization: quantization(config, arch),
        chat_template: chat_template(config, &at, &model),
        datasets: datasets(config, &at),
        batch: batch(config, world_size),
        settings: settings(config, &at),
        ignored_axolotl_keys: loaded.ignored_keys.clone(),
        adapter,
        model,
    })
}

fn quantization(c: &Config, arch: &arch::Architecture) -> QuantizationPlan {
    let q = &c.quantization;
    if !q.load_in_4bit && !q.load_in_8bit {
        return QuantizationPlan { scheme: "none".into(), ..QuantizationPlan::default() };
    }
    let linears = arch.layer_linears();
    let params: u64 = arch.num_layers * linears.iter().map(|l| l.in_features * l.out_features).sum::<u64>();
    let quantized = QuantizationPlan {
        quantized_modules: linears.iter().map(|l| l.name.to_string()).collect(),
        quantized_parameters: params,
        ..QuantizationPlan::default()
    };
    if q.load_in_4bit {
        // NF4: 4 bits per weight; absmax per 64 weights, itself 8-bit per 256 blocks with an fp32
        // scale (double quant), else fp32 per block.
        let blocks = params.div_ceil(64);
        let constants = if q.bnb_4bit_use_double_quant { blocks + 4 * blocks.div_ceil(256) + 4 } else { 4 * blocks };
        QuantizationPlan {
            scheme: format!("{:?}", q.bnb_4bit_quant_type).to_lowercase(),
            block_size: Some(64),
            double_quant: q.bnb_4bit_use_double_quant,
            compute_dtype: Some(format!("{:?}", q.bnb_4bit_compute_dtype).to_lowercase()),
            quantized_bytes: params.div_ceil(2) + constants,
            ..quantized
        }
    } else {
        // Row-wise absmax int8: one byte per weight plus an fp32 scale per output row.
        let rows: u64 = arch.num_layers * linears.iter().map(|l| l.out_features).sum::<u64>();
        QuantizationPlan { scheme: "int8".into(), quantized_bytes: params + 4 * rows, ..quantized }
    }
}

fn chat_template(c: &Config, at: &Locator, model: &model::ModelPlan) -> Option<TemplatePlan> {
    let uses_chat = c.data.datasets.iter().any(|d| matches!(d, DatasetConfig::ChatTemplate(_)));
    let name = c.chat.chat_template.or(uses_chat.then_some(ChatTemplateName::TokenizerDefault))?;
    let hash = |text: &str| Some(sha2::Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect());
    let (source, sha256) = match name {
        ChatTemplateName::Jinja => {
            let text = c.chat.chat_template_jinja.clone().unwrap_or_default();
            if text.ends_with(".jinja") {
                let path = at.base_dir("chat_template_jinja").join(&text);
                let content = std::fs::read_to_string(&path).ok();
                (format!("file {}", path.display()), content.as_deref().and_then(hash))
            } else {
                ("inline chat_template_jinja".to_string(), hash(&text))
            }
        }
        ChatTemplateName::TokenizerDefault => match &model.local_dir {
            Some(dir) => {
                let path = std::path::Path::new(dir).join("tokenizer_config.json");
                let text = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .and_then(|v| v.get("chat_template").and_then(|t| t.as_str()).map(str::to_owned));
                match text {
                    Some(t) => (format!("{} (chat_template)", path.display()), hash(&t)),
                    None => (format!("{}: has no chat_template", path.display()), None),
                }
            }
            None => ("the model's tokenizer_config.json (known once downloaded)".to_string(), None),
        },
        builtin => (format!("templates/{}.jinja", builtin.as_str()), builtin.builtin_text().and_then(hash)),
    };
    Some(TemplatePlan { name: name.as_str().to_string(), source, sha256 })
}

fn datasets(c: &Config, at: &Locator) -> Vec<DatasetPlan> {
    c.data
        .datasets
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let src = d.source();
            let source = match resolve_location(&src.path, &at.base_dir(&format!("datasets.{i}.path"))) {
                Location::Local(path) => format!("local {}", path.display()),
                Location::Hub(id) => format!("hub {id}@{}", src.revision.as_deref().unwrap_or("main")),
                Location::Invalid => format!("invalid {}", src.path),
            };
            let prompt = if c.data.train_on_inputs {
                "prompt and response trained"
            } else {
                "prompt masked (-100), response trained"
            };
            let masking = match d {
                DatasetConfig::Completion(_) | DatasetConfig::Pretrain(_) => "every token trained".to_string(),
                DatasetConfig::InputOutput(_) => "segments with label: true trained, others masked".to_string(),
                DatasetConfig::ChatTemplate(chat) => format!(
                    "turns of {} trained (every such turn), end-of-turn tokens: {:?}{}",
                    chat.roles_to_train.join(", "),
                    chat.train_on_eos,
                    if chat.drop_system_message { ", system turns dropped" } else { "" }
                )
                .to_lowercase(),
                _ => prompt.to_string(),
            };
            DatasetPlan { r#type: d.type_name().to_string(), source, split: src.split.clone(), masking }
        })
        .collect()
}

fn batch(c: &Config, world_size: u64) -> BatchPlan {
    let t = &c.training;
    let micro = u64::from(t.micro_batch_size);
    let accum = u64::from(t.gradient_accumulation_steps);
    let sequences = micro * accum * world_size;
    let total_steps = t.max_steps;
    let warmup_steps = match (t.warmup_steps, t.warmup_ratio, total_steps) {
        (Some(w), _, _) => Some(w),
        (None, Some(r), Some(total)) => Some((r * total as f64).ceil() as u64),
        (None, None, _) => Some(0),
        _ => None,
    };
    BatchPlan {
        micro_batch_size: micro,
        gradient_accumulation_steps: accum,
        world_size,
        global_batch_sequences: sequences,
        global_batch_tokens: sequences * u64::from(c.data.sequence_len),
        sequence_len: u64::from(c.data.sequence_len),
        sample_packing: c.data.sample_packing,
        total_steps,
        warmup_steps,
    }
}

fn settings(c: &Config, at: &Locator) -> Vec<Setting> {
    let value = serde_json::to_value(c).unwrap_or_default();
    let Some(map) = value.as_object() else { return Vec::new() };
    map.iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(key, value)| Setting { key: key.clone(), value: value.clone(), origin: at.origin(key) })
        .collect()
}

/// Human-readable plan.
pub fn render_text(plan: &Plan) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let m = &plan.model;
    let a = &m.architecture;
    let _ = writeln!(o, "plan for {}\n", plan.recipe);
    let _ = writeln!(o, "model      {} ({})", m.name, m.config_source);
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
        "           context {}, rope theta {}{}, tied embeddings {}, qkv bias {}, dtype {}",
        a.max_position_embeddings,
        a.rope_theta,
        a.rope_scaling.as_ref().map_or(String::new(), |r| format!(" ({} ×{})", r.rope_type, r.factor)),
        a.tie_word_embeddings,
        a.qkv_bias,
        a.dtype
    );
    let _ = writeln!(o, "           {} parameters", group(m.parameters.total));
    let q = &plan.quantization;
    if q.scheme == "none" {
        let _ = writeln!(o, "quantize   none");
    } else {
        let _ = writeln!(
            o,
            "quantize   {} {} (block {}, double quant {}, compute {}): {} weights in {} bytes",
            q.scheme,
            q.quantized_modules.join(" "),
            q.block_size.map_or("-".into(), |b| b.to_string()),
            q.double_quant,
            q.compute_dtype.as_deref().unwrap_or("-"),
            group(q.quantized_parameters),
            group(q.quantized_bytes)
        );
    }
    let ad = &plan.adapter;
    match ad.method.as_str() {
        "full" => {
            let _ = writeln!(o, "adapter    none: full fine-tuning of {} parameters", group(ad.trainable_parameters));
        }
        _ => {
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
            if !ad.modules_to_save.is_empty() {
                let _ = writeln!(o, "           trained in full: {}", ad.modules_to_save.join(" "));
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
    for d in &plan.datasets {
        let _ = writeln!(o, "dataset    {} {} split {}: {}", d.r#type, d.source, d.split, d.masking);
    }
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
    let _ = writeln!(
        o,
        "schedule   total steps {}, warmup steps {}",
        b.total_steps.map_or("known after preprocess".to_string(), |s| s.to_string()),
        b.warmup_steps.map_or("known after preprocess".to_string(), |s| s.to_string())
    );
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
