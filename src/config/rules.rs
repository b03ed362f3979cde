//! Cross-field rules: every check that involves more than one key, or the file system, in one
//! place. Each rule has a stable id and points at every key it involves. Errors follow Axolotl's
//! own validators; warnings encode the hyperparameter table the presets are built from (see
//! recipe/presets.rs) and never fail validation unless `--deny-warnings` is given.

use super::Config;
use super::adapter::{AdapterKind, ModuleList};
use super::chat_template::ChatTemplateName;
use super::datasets::DatasetConfig;
use super::distributed::{AutoWrapPolicy, FsdpOption};
use super::location::{Location, normalize, resolve_location};
use super::training::Switch;
use crate::recipe::check::Locator;
use crate::recipe::diagnostic::Diagnostic;
use crate::recipe::source::Span;

pub mod bottleneck;

/// Runs every rule on a config. `refused` names top-level keys whose value failed the schema (the
/// config holds their defaults instead) or that are Axolotl keys refused by name: rules that
/// involve them say nothing.
pub fn check(config: &Config, at: &Locator, refused: &[String]) -> Vec<Diagnostic> {
    let mut out = Rules { at, refused, out: Vec::new() };
    out.required(config);
    out.quantization(config);
    out.adapter_keys(config);
    out.unfrozen_parameters(config);
    out.lisa(config);
    out.qat(config);
    out.exclusive_pairs(config);
    out.pretraining(config);
    out.batch_size(config);
    out.evaluation(config);
    out.chat_template(config);
    out.pretokenized(config);
    out.preference(config);
    out.kernels(config);
    out.activation_offloading(config);
    out.forgetting(config);
    out.distributed(config);
    out.deepspeed(config);
    out.optimizer(config);
    out.tracking(config);
    out.not_built(config);
    out.locations(config);
    out.hyperparameter_table(config);
    out.out
}

struct Rules<'a> {
    at: &'a Locator<'a>,
    refused: &'a [String],
    out: Vec<Diagnostic>,
}

impl Rules<'_> {
    /// The start of the recipe, for problems about keys that are absent.
    fn top(&self) -> Span {
        let s = self.at.tree.span;
        Span { end: s.start, ..s }
    }

    /// The key and value at `path`, or the item when `path` ends in a list index.
    fn key_span(&self, path: &str) -> Option<Span> {
        self.at.entry(path).map(|e| e.key_span.to(e.value.span)).or_else(|| self.at.item_span(path))
    }

    /// An error at the first of `keys` that is written, with the others as related labels.
    fn involving(&self, d: Diagnostic, keys: &[&str]) -> Diagnostic {
        let mut d = d;
        let mut written = keys.iter().filter_map(|k| self.key_span(k).map(|s| (*k, s)));
        match written.next() {
            Some((k, span)) => {
                d = d.at(span, format!("`{k}` set here")).key(k.to_string());
                for (k, span) in written {
                    d = d.also(span, format!("`{k}` set here"));
                }
            }
            None => d = d.at(self.top(), "in this recipe").key(keys[0].to_string()),
        }
        d
    }

    fn error(&mut self, rule: &'static str, message: String, keys: &[&str], help: &str) {
        self.report(Diagnostic::error(rule, message), keys, help);
    }

    fn warn(&mut self, rule: &'static str, message: String, keys: &[&str], help: &str) {
        self.report(Diagnostic::warning(rule, message), keys, help);
    }

    fn report(&mut self, d: Diagnostic, keys: &[&str], help: &str) {
        let top_level = |k: &&str| k.split('.').next().unwrap_or(k).to_string();
        if keys.iter().map(top_level).any(|k| self.refused.contains(&k)) {
            return;
        }
        let d = self.involving(d, keys).help(help.to_string());
        self.out.push(d);
    }

    /// Activation offloading, as Axolotl's validators have it: `gradient_checkpointing: offload` is
    /// checkpointing with `activation_offloading: true` (`check_gradient_checkpointing_w_offload`),
    /// and offloading needs gradient checkpointing (`check_activation_offloading_wo_gc`).
    fn activation_offloading(&mut self, c: &Config) {
        use super::training::Checkpointing;
        let t = &c.training;
        if t.activation_offloading && !t.checkpointing() {
            self.error(
                "activation-offloading-without-checkpointing",
                "activation_offloading requires gradient_checkpointing: it offloads the layer inputs that \
                 checkpointing keeps"
                    .into(),
                &["activation_offloading", "gradient_checkpointing"],
                "set `gradient_checkpointing: true`",
            );
        }
        // Axolotl turns offloading on over an explicit `false`; a recipe says one thing.
        if t.gradient_checkpointing == Checkpointing::Offload
            && !t.activation_offloading
            && self
                .at
                .entry("activation_offloading")
                .is_some_and(|e| matches!(e.value.value, crate::recipe::yaml::Value::Bool(false)))
        {
            self.error(
                "activation-offloading-disagrees",
                "`gradient_checkpointing: offload` turns activation offloading on, and `activation_offloading: \
                 false` turns it off"
                    .into(),
                &["gradient_checkpointing", "activation_offloading"],
                "write `gradient_checkpointing: true` to train without offloading, or remove `activation_offloading`",
            );
        }
    }

    /// Optimizers and schedules with conditions of their own.
    fn optimizer(&mut self, c: &Config) {
        use super::training::{LrScheduler, Optimizer};
        let t = &c.training;
        if t.optimizer.needs_whole_parameters() && c.distributed.shards() {
            self.error(
                "unsupported-optimizer-sharded",
                format!(
                    "`optimizer: {}` needs each parameter whole ({}), and sharded training (fsdp / DeepSpeed ZeRO) \
                     updates chunks of them",
                    t.optimizer,
                    if t.optimizer == Optimizer::Muon {
                        "Newton-Schulz orthogonalizes whole matrices"
                    } else {
                        "its second moments are row and column means"
                    }
                ),
                &["optimizer", "fsdp", "fsdp_config", "deepspeed"],
                "train without sharding, or use adamw_torch, sgd or lion_32bit",
            );
        } else if t.optimizer.eight_bit_lion() && c.distributed.shards() {
            self.error(
                "unsupported-optimizer-sharded",
                format!(
                    "`optimizer: {}` keeps blockwise 8-bit states, which sharded training (fsdp / DeepSpeed ZeRO) \
                     does not split for Lion",
                    t.optimizer
                ),
                &["optimizer", "fsdp", "fsdp_config", "deepspeed"],
                "train without sharding, or use lion_32bit",
            );
        } else if t.optimizer == Optimizer::Muon && c.distributed.deepspeed.is_some() {
            // Axolotl refuses the pair (`check_muon_deepspeed_fsdp`).
            self.error(
                "unsupported-optimizer-deepspeed",
                "`optimizer: muon` with `deepspeed` (Axolotl refuses the pair: Muon is incompatible with DeepSpeed)"
                    .into(),
                &["optimizer", "deepspeed"],
                "remove `deepspeed`, or use adamw_torch",
            );
        }
        let betas_written = self.at.entry("adam_beta1").is_some() && self.at.entry("adam_beta2").is_some();
        if t.optimizer == Optimizer::Muon && !betas_written {
            // Axolotl passes betas only when both are set; Muon's own default is (0.95, 0.95).
            self.warn(
                "muon-betas-default",
                format!(
                    "`optimizer: muon` without both `adam_beta1` and `adam_beta2`: recipe's AdamW group of Muon uses \
                     ({}, {}), where Axolotl would fall back to Muon's (0.95, 0.95)",
                    t.adam_beta1, t.adam_beta2
                ),
                &["optimizer", "adam_beta1", "adam_beta2"],
                "write adam_beta1 and adam_beta2 (0.95 and 0.95 for Axolotl's result)",
            );
        }
        if let Some(ratio) = t.cosine_constant_lr_ratio {
            let floor = t.cosine_min_lr_ratio.unwrap_or(0.0);
            // Axolotl uses it only for a cosine with a floor above 0 (and a ratio above 0).
            if ratio > 0.0 && (t.lr_scheduler != LrScheduler::Cosine || floor <= 0.0) {
                self.error(
                    "cosine-constant-without-floor",
                    format!(
                        "`cosine_constant_lr_ratio` shapes a cosine schedule that decays to `cosine_min_lr_ratio` > 0, \
                         but the schedule is {}{}",
                        t.lr_scheduler_name(),
                        if floor <= 0.0 { " without a floor" } else { "" }
                    ),
                    &["cosine_constant_lr_ratio", "cosine_min_lr_ratio", "lr_scheduler"],
                    "set lr_scheduler: cosine and cosine_min_lr_ratio (e.g. 0.1), or remove cosine_constant_lr_ratio",
                );
            }
        }
    }

    fn required(&mut self, c: &Config) {
        if c.model.base_model.is_none() {
            self.error(
                "required",
                "missing required key `base_model`".into(),
                &["base_model"],
                "name the model to fine-tune: a local folder or a hub id such as meta-llama/Llama-2-7b-hf",
            );
        }
        if c.training.learning_rate.is_none() {
            self.error(
                "required",
                "missing required key `learning_rate`".into(),
                &["learning_rate"],
                "set learning_rate (LoRA: 1e-4 to 5e-4) or use a preset: `preset: lora`",
            );
        }
        let streams = c.data.pretraining_dataset.is_some() || self.refused.iter().any(|k| k == "pretraining_dataset");
        if c.data.datasets.is_empty() && !streams {
            self.error(
                "required",
                "missing required key `datasets`: a recipe trains on at least one dataset".into(),
                &["datasets"],
                "add e.g. `datasets: [{path: data/train.jsonl, type: alpaca}]`",
            );
        }
        if c.training.num_epochs.is_none() && c.training.max_steps.is_none() {
            self.error(
                "epochs-or-steps",
                "set `num_epochs` or `max_steps`: the run needs to know when to stop".into(),
                &["num_epochs", "max_steps"],
                "3–10 epochs with early stopping is the usual range",
            );
        }
    }

    fn quantization(&mut self, c: &Config) {
        let q = &c.quantization;
        if q.load_in_4bit && q.load_in_8bit {
            self.error(
                "quantization-exclusive",
                "`load_in_4bit` and `load_in_8bit` exclude each other".into(),
                &["load_in_4bit", "load_in_8bit"],
                "keep one: 4-bit for QLoRA, 8-bit for LoRA on an int8 base",
            );
        }
        if c.adapter.adapter == Some(AdapterKind::Qlora) && !q.load_in_4bit {
            self.error(
                "qlora-needs-4bit",
                "`adapter: qlora` needs `load_in_4bit: true`".into(),
                &["adapter", "load_in_4bit"],
                "set load_in_4bit: true, or use adapter: lora for a dense base",
            );
        }
        if c.adapter.adapter == Some(AdapterKind::Lora) && q.load_in_4bit {
            self.error(
                "4bit-needs-qlora",
                "`load_in_4bit: true` with `adapter: lora`: LoRA on a 4-bit base is `adapter: qlora`".into(),
                &["load_in_4bit", "adapter"],
                "write adapter: qlora",
            );
        }
        if c.adapter.adapter.is_none() && (q.load_in_4bit || q.load_in_8bit) {
            let key = if q.load_in_4bit { "load_in_4bit" } else { "load_in_8bit" };
            self.error(
                "quantized-needs-adapter",
                format!("`{key}: true` without an adapter: quantized weights cannot be trained in full"),
                &[key, "adapter"],
                "add adapter: qlora (4-bit) or adapter: lora (8-bit)",
            );
        }
        // Axolotl's check_quantize_moe_experts, rule for rule.
        if q.quantize_moe_experts {
            if c.adapter.lora_target_linear {
                self.error(
                    "moe-experts-quant-target-linear",
                    "`lora_target_linear` does not go with `quantize_moe_experts` (Axolotl refuses the pair)".into(),
                    &["lora_target_linear", "quantize_moe_experts"],
                    "name the attention projections in lora_target_modules, and adapt the experts through \
                     lora_target_parameters (experts.gate_up_proj, experts.down_proj)",
                );
            }
            if !c.adapter.adapter.is_some_and(|a| matches!(a, AdapterKind::Lora | AdapterKind::Qlora)) {
                self.error(
                    "moe-experts-quant-needs-lora",
                    "`quantize_moe_experts` needs `adapter: lora` or `adapter: qlora`".into(),
                    &["quantize_moe_experts", "adapter"],
                    "add adapter: qlora with load_in_4bit: true",
                );
            }
            if !q.load_in_4bit && !q.load_in_8bit {
                self.error(
                    "moe-experts-quant-needs-quantized-base",
                    "`quantize_moe_experts` needs `load_in_4bit` or `load_in_8bit`: the experts take the base's format"
                        .into(),
                    &["quantize_moe_experts", "load_in_4bit"],
                    "set load_in_4bit: true (and adapter: qlora)",
                );
            }
        }
        let bnb_keys = ["bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype"];
        if !q.load_in_4bit {
            for key in bnb_keys.iter().filter(|k| self.at.entry(k).is_some()) {
                self.error(
                    "bnb-4bit-without-4bit",
                    format!("`{key}` only applies with `load_in_4bit: true`"),
                    &[key, "load_in_4bit"],
                    "remove it, or set load_in_4bit: true",
                );
            }
        }
    }

    fn adapter_keys(&mut self, c: &Config) {
        self.prompt_tuning_keys(c);
        self.bottleneck_keys(c);
        // Every written key of the adapter section but `adapter` itself (prompt and prefix tuning's and
        // bottleneck adapters' are checked above); `false` switches are harmless whatever the adapter.
        let written = self.written_adapter_keys(&[VIRTUAL_TOKEN_KEYS, bottleneck::BOTTLENECK_KEYS]);
        let ia3 = c.adapter.adapter == Some(AdapterKind::Ia3);
        // IA3's keys act only under `adapter: ia3`, LoRA's (`lora_*`, `peft_use_*`) only under LoRA.
        for key in written.iter().map(String::as_str) {
            let ia3_key = key.starts_with("ia3_");
            match (ia3_key, c.adapter.adapter) {
                (true, Some(AdapterKind::Ia3)) | (false, Some(AdapterKind::Lora | AdapterKind::Qlora)) => {}
                // The trained adapter to start from: a LoRA or an IA3 one (Axolotl's name for it).
                (false, Some(AdapterKind::Ia3)) if key == "lora_model_dir" => {}
                // Checked with the method's own keys (prompt_tuning_keys, bottleneck_keys).
                (_, Some(AdapterKind::PromptTuning | AdapterKind::PrefixTuning | AdapterKind::Bottleneck)) => {}
                (true, adapter) => self.error(
                    "ia3-key-without-ia3",
                    match adapter {
                        Some(kind) => format!("`{key}` is an IA3 key, but `adapter: {}` is not IA3", kind.as_str()),
                        None => format!("`{key}` is an IA3 key, but there is no `adapter`"),
                    },
                    &[key, "adapter"],
                    "set adapter: ia3, or remove the ia3_* keys",
                ),
                (false, Some(AdapterKind::Ia3)) => self.error(
                    "lora-key-with-ia3",
                    format!("`{key}` is a LoRA key, and `adapter: ia3` does not use it"),
                    &[key, "adapter"],
                    "remove it (IA3 takes ia3_target_modules and ia3_feedforward_modules), or use adapter: lora",
                ),
                (false, None) => self.lora_without_adapter(key),
            }
        }
        if ia3 && let (Some(targets), Some(ff)) = (&c.adapter.ia3_target_modules, &c.adapter.ia3_feedforward_modules) {
            let targets = targets.names();
            for (i, name) in ff.names().into_iter().enumerate() {
                if targets.contains(&name) {
                    continue;
                }
                let key = match ff {
                    ModuleList::One(_) => "ia3_feedforward_modules".to_string(),
                    ModuleList::Many(_) => format!("ia3_feedforward_modules.{i}"),
                };
                self.error(
                    "ia3-feedforward-not-targeted",
                    format!("`{name}` is a feed-forward module but not one of `ia3_target_modules`"),
                    &[&key, "ia3_target_modules"],
                    "feedforward modules must be a subset of ia3_target_modules (peft's rule): add it to the targets",
                );
            }
        }
    }

    /// `unfrozen_parameters`: every entry a pattern recipe can read (at its item), only for a full
    /// fine-tune, and row ranges only without sharding. Axolotl applies the list after peft has
    /// wrapped the model, where no Hugging Face name is left to match, so with an adapter it
    /// freezes everything; recipe refuses that by name.
    fn unfrozen_parameters(&mut self, c: &Config) {
        let Some(patterns) = &c.unfrozen.unfrozen_parameters else { return };
        if patterns.is_empty() {
            self.error(
                "unfrozen-parameters-empty",
                "`unfrozen_parameters` is an empty list, which would freeze every parameter".into(),
                &["unfrozen_parameters"],
                "list the parameters to train, or remove the key for a full fine-tune",
            );
        }
        for (i, p) in patterns.iter().enumerate() {
            if let Err(e) = super::unfrozen::UnfreezePattern::parse(p) {
                self.error(
                    "unfrozen-parameter-pattern",
                    e,
                    &[&format!("unfrozen_parameters.{i}")],
                    "write a regular expression over Hugging Face parameter names, e.g. ^model.layers.1[0-5].mlp.*",
                );
            }
        }
        if let Some(kind) = c.adapter.adapter {
            self.error(
                "unsupported-unfrozen-parameters-with-adapter",
                format!(
                    "`unfrozen_parameters` selects what a full fine-tune trains; with `adapter: {}` it would match \
                     peft's wrapped names (Axolotl's result: every parameter frozen)",
                    kind.as_str()
                ),
                &["unfrozen_parameters", "adapter"],
                "remove the adapter for a partial full fine-tune, or train whole modules beside the adapter with \
                 lora_modules_to_save",
            );
        }
        // Sharded training trains the selected tensors whole (each rank its chunks of them); a row
        // range would zero rows of gradients that are cut into chunks, which is not built.
        let with_rows = patterns
            .iter()
            .enumerate()
            .find(|(_, p)| super::unfrozen::UnfreezePattern::parse(p).is_ok_and(|q| q.rows.is_some()));
        if let (true, Some((i, _))) = (c.distributed.shards(), with_rows) {
            self.error(
                "unsupported-unfrozen-rows-sharded",
                "a row range in `unfrozen_parameters` (training some rows of a tensor) is not built into sharded \
                 training (fsdp / DeepSpeed ZeRO) yet; whole tensors are"
                    .into(),
                &[&format!("unfrozen_parameters.{i}")],
                "train the rows with data parallelism (no fsdp / deepspeed), or select whole tensors",
            );
        }
    }

    /// LISA (`lisa_n_layers`, `lisa_step_interval`, `lisa_layers_attribute`): both numbers or
    /// neither (Axolotl silently skips the callback when one is missing; recipe says so), a full
    /// fine-tune of the whole model, the Llama family's `model.layers`, and the optimizers and
    /// layouts recipe builds it for. Axolotl runs LISA beside an adapter too, where unfreezing a
    /// layer unfreezes its base weights under the adapter; recipe refuses that by name.
    fn lisa(&mut self, c: &Config) {
        use super::training::Optimizer;
        let u = &c.unfrozen;
        match (u.lisa_n_layers, u.lisa_step_interval) {
            (None, None) => {
                if u.lisa_layers_attribute.is_some() {
                    self.error(
                        "lisa-incomplete",
                        "`lisa_layers_attribute` is set without `lisa_n_layers` and `lisa_step_interval`, so \
                         nothing would use it (Axolotl runs LISA only with both)"
                            .into(),
                        &["lisa_layers_attribute"],
                        "set lisa_n_layers and lisa_step_interval, or remove lisa_layers_attribute",
                    );
                }
                return;
            }
            (Some(_), None) | (None, Some(_)) => {
                let (set, missing) = if u.lisa_n_layers.is_some() {
                    ("lisa_n_layers", "lisa_step_interval")
                } else {
                    ("lisa_step_interval", "lisa_n_layers")
                };
                self.error(
                    "lisa-incomplete",
                    format!(
                        "`{set}` is set without `{missing}`; Axolotl runs LISA only with both (and ignores one alone)"
                    ),
                    &[set],
                    &format!("set {missing} too, or remove {set}"),
                );
                return;
            }
            (Some(_), Some(_)) => {}
        }
        if let Some(attr) = u.lisa_layers_attribute.as_deref().filter(|a| *a != "model.layers") {
            self.error(
                "unsupported-lisa-layers-attribute",
                format!(
                    "`lisa_layers_attribute: {attr}`: recipe builds LISA over the decoder layers at `model.layers`"
                ),
                &["lisa_layers_attribute"],
                "write model.layers (the Llama family's decoder layers), or remove the key",
            );
        }
        if let Some(kind) = c.adapter.adapter {
            self.error(
                "unsupported-lisa-with-adapter",
                format!(
                    "LISA switches which decoder layers a full fine-tune trains; with `adapter: {}` Axolotl's callback \
                     would unfreeze the base weights of the drawn layers under the adapter",
                    kind.as_str()
                ),
                &["lisa_n_layers", "adapter"],
                "remove the adapter for LISA, or remove the lisa_* keys to train the adapter",
            );
        }
        if let Some(rl) = c.training.rl {
            // Axolotl adds its LISA callback in the causal trainer builder only; its RL builder never does.
            self.error(
                "lisa-with-rl",
                format!(
                    "LISA with `rl: {}`: Axolotl adds its LISA callback to supervised and reward-model training only,                      so under rl: it trains every layer and the lisa_* keys do nothing",
                    rl.as_str()
                ),
                &["lisa_n_layers", "rl"],
                "remove the lisa_* keys (as Axolotl runs this recipe), or train without rl:",
            );
        }
        if u.unfrozen_parameters.is_some() {
            self.error(
                "unsupported-lisa-with-unfrozen-parameters",
                "LISA and `unfrozen_parameters` both choose which parameters train; recipe does not combine them"
                    .into(),
                &["lisa_n_layers", "unfrozen_parameters"],
                "keep one of the two",
            );
        }
        let t = &c.training;
        let built = matches!(
            t.optimizer,
            Optimizer::AdamwTorch
                | Optimizer::PagedAdamw32bit
                | Optimizer::Adamw8bit
                | Optimizer::AdamwBnb8bit
                | Optimizer::PagedAdamw8bit
        );
        if !built {
            self.error(
                "unsupported-lisa-optimizer",
                format!(
                    "LISA with `optimizer: {}` is not built: recipe keeps each parameter's own step count (a frozen \
                     layer skips steps, as in torch) for 32-bit torch AdamW and bitsandbytes' 8-bit AdamW",
                    t.optimizer
                ),
                &["lisa_n_layers", "optimizer"],
                "use adamw_torch or adamw_bnb_8bit with LISA",
            );
        }
        if t.fp16 == Switch::On {
            self.error(
                "unsupported-lisa-fp16",
                "LISA with fp16 loss scaling is not built (its steps are decided on the device with one step count)"
                    .into(),
                &["lisa_n_layers", "fp16"],
                "use bf16 (or fp32) with LISA",
            );
        }
        if c.distributed.shards() || c.distributed.deepspeed.is_some() {
            self.error(
                "unsupported-lisa-sharded",
                "LISA under fsdp / DeepSpeed is not built: recipe switches layers of whole, replicated parameters \
                 (data parallelism)"
                    .into(),
                &["lisa_n_layers", "fsdp", "fsdp_config", "deepspeed"],
                "train LISA on one GPU or with data parallelism (no fsdp / deepspeed)",
            );
        }
    }

    /// `qat`: the dtype pairs Axolotl accepts, of which recipe builds int8 activations over int4
    /// weights and mxfp4 (activations and weights); the others are refused by name, with the reason. Axolotl itself refuses QAT over a
    /// quantized base; recipe also refuses it with an adapter (peft would wrap the fake-quantized
    /// layers) and under sharding, neither of which it builds.
    fn qat(&mut self, c: &Config) {
        use super::quantization::QatDtype::{self, *};
        let Some(qat) = &c.quantization.qat else { return };
        let fp8 = |d: Option<QatDtype>| matches!(d, Some(Float8E4m3fn | Fp8 | Float8));
        let (act, weight) = (qat.activation_dtype, qat.weight_dtype);
        let pair =
            format!("activation_dtype {} / weight_dtype {}", act.map_or("unset", QatDtype::as_str), weight.as_str());
        match (act, weight) {
            (Some(Int8), Int4) => {}
            (None | Some(Mxfp4), Mxfp4) => self.qat_mxfp4(c, qat),
            // Axolotl's _make_qat_config builds MX fake quantizers for the input and the weight
            // whenever weight_dtype is mxfp4: the activation_dtype written would be ignored.
            (Some(a), Mxfp4) if a != Nvfp4 => self.error(
                "qat-dtypes",
                format!(
                    "`qat`: {pair}: with weight_dtype mxfp4 Axolotl fake-quantizes the activations to mxfp4 too, \
                     whatever activation_dtype says"
                ),
                &["qat.activation_dtype", "qat.weight_dtype"],
                "write activation_dtype: mxfp4",
            ),
            // get_quantization_config has no branch for these and raises.
            (Some(Mxfp4), Int4 | Int8 | Float8E4m3fn | Fp8 | Float8) => self.error(
                "qat-dtypes",
                format!("`qat`: {pair} is not a combination Axolotl builds (its get_quantization_config raises)"),
                &["qat.activation_dtype", "qat.weight_dtype"],
                "use activation_dtype: mxfp4 with weight_dtype: mxfp4, or int8 with int4",
            ),
            // Axolotl's get_quantization_config raises for these: torchao has no QAT for them.
            (None | Some(Int8), Int8) | (Some(Int4), Int4) => self.error(
                "qat-dtypes",
                format!("`qat`: {pair} has no quantization-aware training in torchao (Axolotl refuses it too)"),
                &["qat.weight_dtype", "qat.activation_dtype"],
                "use activation_dtype: int8 with weight_dtype: int4",
            ),
            (_, Nvfp4) | (Some(Nvfp4), _) => self.error(
                "unsupported-qat-nvfp4",
                format!(
                    "`qat`: {pair} is not built: Axolotl builds QATConfig(NVFP4WeightOnlyConfig()) for it, which \
                     torchao 0.17 (Axolotl's pin) and 0.18 reject (\"Unexpected base config\"), and torchao's \
                     NVFP4FakeQuantizedLinear runs its forward pass as a real NVFP4 matmul (Blackwell GPUs only, no \
                     CPU reference to hold recipe to)"
                ),
                &["qat.weight_dtype", "qat.activation_dtype"],
                "use activation_dtype: mxfp4 with weight_dtype: mxfp4 (FP4 E2M1 in blocks of 32, E8M0 scales), or \
                 int8 with int4",
            ),
            (a, w) if fp8(a) || fp8(Some(w)) => self.error(
                "unsupported-qat-float8",
                format!("`qat`: {pair}: float8 fake quantization is not built"),
                &["qat.weight_dtype", "qat.activation_dtype"],
                "use activation_dtype: int8 with weight_dtype: int4",
            ),
            (None, Int4) => self.error(
                "unsupported-qat-weight-only",
                format!(
                    "`qat`: {pair} is not built: torchao's weight-only int4 QAT rounds each weight row through \
                     float8 before its int4 groups"
                ),
                &["qat.activation_dtype", "qat.weight_dtype"],
                "add activation_dtype: int8",
            ),
            _ => self.error(
                "qat-dtypes",
                format!("`qat`: {pair} is not a combination Axolotl builds"),
                &["qat.weight_dtype", "qat.activation_dtype"],
                "use activation_dtype: int8 with weight_dtype: int4",
            ),
        }
        // MX layers are never switched by Axolotl's callback (mxfp4: qat_mxfp4 below), so 0 is
        // harmless there.
        if qat.fake_quant_after_n_steps == Some(0) && qat.weight_dtype != super::quantization::QatDtype::Mxfp4 {
            self.error(
                "qat-after-zero-steps",
                "`qat.fake_quant_after_n_steps: 0`: Axolotl's QATCallback switches fake quantization off at step 0 \
                 and on only at step N, so 0 would train without it"
                    .into(),
                &["qat.fake_quant_after_n_steps"],
                "remove the key to fake-quantize from the first step",
            );
        }
        if qat.quantize_embedding {
            self.error(
                "unsupported-qat-quantize-embedding",
                "`qat.quantize_embedding: true` (fake-quantized token embeddings) is not built".into(),
                &["qat.quantize_embedding"],
                "remove it: the linear layers and the output head are fake-quantized without it",
            );
        }
        for key in ["load_in_4bit", "load_in_8bit"] {
            let on = if key == "load_in_4bit" { c.quantization.load_in_4bit } else { c.quantization.load_in_8bit };
            if on {
                self.error(
                    "qat-quantized-base",
                    format!(
                        "`qat` and `{key}` cannot be used together (as in Axolotl): QAT trains full-precision weights"
                    ),
                    &["qat", key],
                    "remove one of them",
                );
            }
        }
        if let Some(kind) = c.adapter.adapter {
            self.error(
                "unsupported-qat-with-adapter",
                format!("`qat` with `adapter: {}` is not built: QAT here is a full fine-tune", kind.as_str()),
                &["qat", "adapter"],
                "remove the adapter",
            );
        }
    }

    /// `qat` with mxfp4: what Axolotl's MX path accepts and acts on.
    fn qat_mxfp4(&mut self, c: &Config, qat: &super::quantization::QatConfig) {
        if let Some(g) = qat.group_size.filter(|&g| g != 32) {
            self.error(
                "qat-mxfp4-group-size",
                format!(
                    "`qat.group_size: {g}` with mxfp4: MX blocks are 32 elements (Axolotl raises \"MXFP4 quantization \
                     must use a block_size (group_size) of 32\")"
                ),
                &["qat.group_size"],
                "write group_size: 32 or remove it",
            );
        }
        if qat.fake_quant_after_n_steps.is_some_and(|n| n > 0) {
            self.error(
                "unsupported-qat-mxfp4-after-n-steps",
                "`qat.fake_quant_after_n_steps` with mxfp4: Axolotl's QATCallback switches only torchao's \
                 FakeQuantizedLinear layers, not the MXFakeQuantizedLinear ones mxfp4 builds, so Axolotl trains \
                 fake-quantized from the first step whatever N says; recipe does not accept the key to ignore it"
                    .into(),
                &["qat.fake_quant_after_n_steps"],
                "remove it (mxfp4 fake-quantizes from the first step)",
            );
        }
        if c.training.fp16 == Switch::On {
            self.error(
                "qat-mxfp4-fp16",
                "`qat` mxfp4 with `fp16: true`: torchao's MX fake quantization takes bf16 or fp32 tensors only \
                 (to_mx asserts it), so Axolotl fails"
                    .into(),
                &["qat.weight_dtype", "fp16"],
                "use bf16: true",
            );
        }
    }

    /// The adapter section's keys the recipe writes (a `false` switch does not count), besides
    /// `adapter` itself and the `excluded` groups.
    fn written_adapter_keys(&self, excluded: &[&[&str]]) -> Vec<String> {
        let schema = schemars::schema_for!(super::AdapterConfig);
        let keys = schema.get("properties").and_then(serde_json::Value::as_object).into_iter().flat_map(|p| p.keys());
        keys.filter(|k| *k != "adapter" && !excluded.iter().any(|group| group.contains(&k.as_str())))
            .filter(|k| {
                self.at.entry(k).is_some_and(|e| !matches!(e.value.value, crate::recipe::yaml::Value::Bool(false)))
            })
            .cloned()
            .collect()
    }

    /// Prompt and prefix tuning's keys act only with their method (`num_virtual_tokens` with
    /// either), and those methods read no LoRA key; what the executor does not build with them
    /// (packing, preference and reward training, new tokens, a quantized base) is refused at the key.
    fn prompt_tuning_keys(&mut self, c: &Config) {
        let a = &c.adapter;
        let method = match a.adapter {
            Some(AdapterKind::PromptTuning) => Some("prompt_tuning"),
            Some(AdapterKind::PrefixTuning) => Some("prefix_tuning"),
            _ => None,
        };
        for (keys, owner, what) in [
            (PROMPT_TUNING_ONLY_KEYS, "prompt_tuning", "a prompt-tuning key"),
            (PREFIX_TUNING_ONLY_KEYS, "prefix_tuning", "a prefix-tuning key"),
            (&["num_virtual_tokens"][..], "", "a prompt- and prefix-tuning key"),
        ] {
            if method.is_some() && (owner.is_empty() || method == Some(owner)) {
                continue;
            }
            let wanted = if owner.is_empty() { "prompt_tuning` or `prefix_tuning" } else { owner };
            for key in keys.iter().filter(|k| self.at.entry(k).is_some()) {
                self.error(
                    "virtual-token-key-without-its-method",
                    format!("`{key}` is {what}, but `adapter` is not `{wanted}`"),
                    &[key, "adapter"],
                    &format!("set adapter: {}, or remove it", wanted.replace("` or `", " or ")),
                );
            }
        }
        let Some(method) = method else { return };
        for key in &self.written_adapter_keys(&[VIRTUAL_TOKEN_KEYS, bottleneck::BOTTLENECK_KEYS]) {
            self.error(
                "lora-key-with-virtual-tokens",
                format!("`{key}` is a LoRA key, but `adapter: {method}` trains no LoRA pairs"),
                &[key, "adapter"],
                "remove it, or use adapter: lora",
            );
        }
        if a.num_virtual_tokens.is_none() {
            self.error(
                "virtual-tokens-required",
                format!("`adapter: {method}` needs `num_virtual_tokens`"),
                &["adapter", "num_virtual_tokens"],
                "set num_virtual_tokens: 8 to 100 (peft's examples use 8 to 30)",
            );
        }
        use super::adapter::PromptTuningInit;
        match (a.prompt_tuning_init, &a.prompt_tuning_init_text) {
            (Some(PromptTuningInit::Text), None) => self.error(
                "prompt-tuning-init-text",
                "`prompt_tuning_init: text` needs `prompt_tuning_init_text`".into(),
                &["prompt_tuning_init", "prompt_tuning_init_text"],
                "give the text whose token embeddings start the virtual tokens",
            ),
            (Some(PromptTuningInit::Random) | None, Some(_)) => self.error(
                "prompt-tuning-init-text",
                "`prompt_tuning_init_text` is used only with `prompt_tuning_init: text`".into(),
                &["prompt_tuning_init_text", "prompt_tuning_init"],
                "set prompt_tuning_init: text, or remove the text",
            ),
            (Some(PromptTuningInit::Text), Some(text)) if text.is_empty() => self.error(
                "prompt-tuning-init-text",
                "`prompt_tuning_init_text` is empty: it has no tokens to start from".into(),
                &["prompt_tuning_init_text"],
                "give a text describing the task",
            ),
            _ => {}
        }
        let refuse = |rules: &mut Self, key: &str, why: &str, help: &str| {
            rules.error(
                "virtual-tokens-unsupported",
                format!("`{key}` with `adapter: {method}`: {why}"),
                &[key, "adapter"],
                help,
            );
        };
        if a.encoder_hidden_size.is_some() && a.prefix_projection != Some(true) {
            self.error(
                "encoder-hidden-size-without-projection",
                "`encoder_hidden_size` sizes peft's PrefixEncoder MLP, which only `prefix_projection: true` uses"
                    .into(),
                &["encoder_hidden_size", "prefix_projection"],
                "set prefix_projection: true, or remove encoder_hidden_size (the keys and values are then trained \
                 directly)",
            );
        }
        let opens_each_row = if method == "prompt_tuning" {
            "the virtual tokens open each row, so only a row's first packed sample would follow them"
        } else {
            "the prefix is attended to from each row's start, so only a row's first packed sample would see it"
        };
        if c.data.sample_packing {
            refuse(
                self,
                "sample_packing",
                &format!("{opens_each_row} (peft also drops or shifts the position ids packing relies on)"),
                "set sample_packing: false",
            );
        }
        if c.data.eval_sample_packing == Some(true) {
            refuse(self, "eval_sample_packing", opens_each_row, "set eval_sample_packing: false");
        }
        if c.training.rl.is_some() {
            refuse(self, "rl", "preference training with it is not built", "train with adapter: lora");
        }
        if c.training.reward_model {
            refuse(self, "reward_model", "a reward model with it is not built", "train with adapter: lora");
        }
        if !c.chat.tokens.is_empty() {
            refuse(
                self,
                "tokens",
                "new tokens need trained embedding and head rows, and this method trains only its virtual tokens",
                "remove tokens, or use adapter: lora (it trains embed_tokens and lm_head with them)",
            );
        }
        for key in ["load_in_4bit", "load_in_8bit"] {
            let on = if key == "load_in_4bit" { c.quantization.load_in_4bit } else { c.quantization.load_in_8bit };
            if on {
                refuse(self, key, "a quantized base with it is not built", "remove it: the base stays dense");
            }
        }
    }

    /// A LoRA key without any adapter.
    fn lora_without_adapter(&mut self, key: &str) {
        // An adapter to start from cannot be left unused; the other LoRA keys are left-overs in a
        // full fine-tune's config, which Axolotl ignores: a warning.
        if key == "lora_model_dir" {
            self.error(
                "lora-without-adapter",
                format!("`{key}` is set but there is no `adapter`: without one, every parameter is trained"),
                &[key, "adapter"],
                "add adapter: lora (or qlora), or remove lora_model_dir for a full fine-tune",
            );
        } else {
            self.warn(
                "lora-without-adapter",
                format!(
                    "`{key}` is set but there is no `adapter`: this is a full fine-tune (every parameter trained), \
                     which does not use it"
                ),
                &[key, "adapter"],
                "add adapter: lora (or qlora), or remove the LoRA keys for a full fine-tune",
            );
        }
    }

    /// `batch_size` (Axolotl's deprecated key): stands in for `gradient_accumulation_steps`.
    fn batch_size(&mut self, c: &Config) {
        let t = &c.training;
        let Some(batch) = t.batch_size else { return };
        if self.key_span("gradient_accumulation_steps").is_some() {
            self.error(
                "batch-size-with-accumulation",
                "set only one of `gradient_accumulation_steps` and `batch_size` (Axolotl refuses both too)".into(),
                &["batch_size", "gradient_accumulation_steps"],
                "remove batch_size: gradient_accumulation_steps = batch_size / micro_batch_size",
            );
        } else if batch < t.micro_batch_size {
            self.error(
                "batch-size-below-micro-batch",
                format!(
                    "batch_size {batch} is smaller than micro_batch_size {}: no accumulation step left",
                    t.micro_batch_size
                ),
                &["batch_size", "micro_batch_size"],
                "batch_size is per device: micro_batch_size × gradient_accumulation_steps",
            );
        } else if batch % t.micro_batch_size != 0 {
            self.error(
                "unsupported-batch-size-remainder",
                format!(
                    "batch_size {batch} is not a multiple of micro_batch_size {}: Axolotl accumulates {} micro-batches \
                     but counts its steps by batch_size, a schedule recipe does not reproduce",
                    t.micro_batch_size,
                    batch / t.micro_batch_size
                ),
                &["batch_size", "micro_batch_size"],
                "use a multiple of micro_batch_size, or set gradient_accumulation_steps instead",
            );
        }
    }

    /// `pretraining_dataset`: Axolotl's unpacked stream (`encode_streaming`) is built; what would
    /// make Axolotl read, order or batch it otherwise is refused by name.
    fn pretraining(&mut self, c: &Config) {
        let d = &c.data;
        let Some(stream) = &d.pretraining_dataset else {
            if d.streaming == Some(true) {
                self.error(
                    "unsupported-streaming-datasets",
                    "`streaming: true` streams `datasets` in Axolotl; recipe streams only `pretraining_dataset`".into(),
                    &["streaming"],
                    "remove `streaming` (recipe reads `datasets` whole), or use `pretraining_dataset`",
                );
            }
            for key in [
                "pretraining_sample_concatenation",
                "streaming_multipack_buffer_size",
                "pretrain_multipack_buffer_size",
            ] {
                // Beside `streaming: true` (refused above) the buffer sizes are Axolotl's SFT stream's.
                let streamed_sft = d.streaming == Some(true) && key != "pretraining_sample_concatenation";
                if self.key_span(key).is_some() && !streamed_sft {
                    self.error(
                        "pretraining-key-without-stream",
                        format!("`{key}` only acts on `pretraining_dataset`, which this recipe does not set"),
                        &[key],
                        "remove it, or stream the data with `pretraining_dataset`",
                    );
                }
            }
            return;
        };
        let entries = stream.entries();
        let entry_key = |field: &str| match stream {
            super::datasets::PretrainingDatasets::Path(_) => "pretraining_dataset".to_string(),
            super::datasets::PretrainingDatasets::One(_) => format!("pretraining_dataset.{field}"),
            super::datasets::PretrainingDatasets::List(_) => format!("pretraining_dataset.0.{field}"),
        };
        match entries.len() {
            0 => self.error(
                "pretraining-dataset-empty",
                "`pretraining_dataset` is an empty list".into(),
                &["pretraining_dataset"],
                "give one entry: `pretraining_dataset: [{path: data/corpus.jsonl}]`",
            ),
            1 => {}
            n => self.error(
                "unsupported-pretraining-datasets",
                format!("`pretraining_dataset` lists {n} entries; Axolotl streams only the first and ignores the rest"),
                &["pretraining_dataset.1"],
                "keep one entry (concatenate the files into one folder)",
            ),
        }
        if !d.datasets.is_empty() {
            self.error(
                "pretraining-with-datasets",
                "`datasets` beside `pretraining_dataset`: Axolotl trains on the stream and ignores `datasets`".into(),
                &["datasets", "pretraining_dataset"],
                "keep one of the two",
            );
        }
        if c.training.max_steps.is_none() {
            self.error(
                "pretraining-needs-max-steps",
                "`pretraining_dataset` needs `max_steps`: a stream's length is not known before it is read".into(),
                &["pretraining_dataset", "max_steps"],
                "set max_steps",
            );
        }
        if d.val_set_size > 0.0 {
            self.error(
                "pretraining-val-set-size",
                "`val_set_size` cannot split a stream (Axolotl refuses it too)".into(),
                &["val_set_size", "pretraining_dataset"],
                "remove val_set_size",
            );
        }
        if d.pretrain_multipack_buffer_size.is_some() && d.streaming_multipack_buffer_size.is_some() {
            self.error(
                "pretraining-buffer-twice",
                "both `pretrain_multipack_buffer_size` and `streaming_multipack_buffer_size` are set".into(),
                &["pretrain_multipack_buffer_size", "streaming_multipack_buffer_size"],
                "remove the deprecated pretrain_multipack_buffer_size",
            );
        }
        if d.sample_packing {
            self.error(
                "unsupported-pretraining-packing",
                "`sample_packing` with `pretraining_dataset`: Axolotl packs each streamed chunk with a \
                 RandomSampler drawn from torch's global generator, an order recipe cannot reproduce"
                    .into(),
                &["sample_packing", "pretraining_dataset"],
                "set sample_packing: false (pretraining_sample_concatenation: true fills rows without it)",
            );
        }
        if d.shuffle_merged_datasets {
            self.error(
                "unsupported-pretraining-shuffle",
                "shuffling a stream (`shuffle_merged_datasets`, true by default) draws from `datasets`' \
                 numpy shuffle buffer, an order recipe does not reproduce"
                    .into(),
                &["shuffle_merged_datasets", "pretraining_dataset"],
                "set shuffle_merged_datasets: false to stream the files in order",
            );
        }
        let beside: Vec<&str> = [
            ("test_datasets", !d.test_datasets.is_empty()),
            ("forgetting_datasets", !d.forgetting_datasets.is_empty()),
            ("replay_datasets", !d.replay_datasets.is_empty()),
            ("ewc_datasets", !d.ewc_datasets.is_empty()),
            ("rl", c.training.rl.is_some()),
            ("reward_model", c.training.reward_model),
            ("adapter", matches!(c.adapter.adapter, Some(AdapterKind::PromptTuning | AdapterKind::PrefixTuning))),
        ]
        .into_iter()
        .filter_map(|(k, on)| on.then_some(k))
        .collect();
        for key in beside {
            self.error(
                "unsupported-pretraining-with",
                format!("`{key}` with `pretraining_dataset`: recipe streams pretraining text for plain causal-LM training only"),
                &[key, "pretraining_dataset"],
                "train on `datasets` (type: completion / pretrain) instead",
            );
        }
        let Some(entry) = entries.first() else { return };
        if entry.r#type != "pretrain" {
            self.error(
                "unsupported-pretraining-type",
                format!("pretraining_dataset type `{}`: Axolotl's unpacked stream reads raw text only", entry.r#type),
                &[&entry_key("type")],
                "use type: pretrain (or remove it)",
            );
        }
        if entry.field.is_some() {
            self.error(
                "unsupported-pretraining-field",
                "pretraining_dataset `field`: Axolotl's stream reads `text_column` and ignores `field`".into(),
                &[&entry_key("field")],
                "name the text's field with text_column",
            );
        }
        if entry.name.is_some() {
            self.error(
                "unsupported-pretraining-name",
                "pretraining_dataset `name` picks a hub dataset's configuration; recipe streams local files only"
                    .into(),
                &[&entry_key("name")],
                "remove name and point path at the local files",
            );
        }
        let path_key = entry_key("path");
        match resolve_location(&entry.path, &self.at.base_dir(&path_key)) {
            Location::Local(_) => self.location(&path_key, &entry.path, LocationKind::LocalOnly),
            _ => self.error(
                "unsupported-pretraining-hub",
                format!("pretraining_dataset `{}` is not a local path: recipe streams local files only", entry.path),
                &[&path_key],
                "download the dataset's files and point path at them",
            ),
        }
    }

    fn exclusive_pairs(&mut self, c: &Config) {
        let t = &c.training;
        if t.warmup_steps.is_some() && t.warmup_ratio.is_some() {
            self.error(
                "warmup-exclusive",
                "`warmup_steps` and `warmup_ratio` exclude each other".into(),
                &["warmup_steps", "warmup_ratio"],
                "keep one",
            );
        }
        // Axolotl's spellings (folded in by the loader) beside recipe's own key.
        let written = |this: &Self, key: &str| this.at.entry(key).is_some();
        if t.rl_beta.is_some() {
            let own = if t.rl == Some(super::training::RlMethod::Orpo) { "orpo_alpha" } else { "dpo_beta" };
            if written(self, own) {
                self.error(
                    "setting-written-twice",
                    format!("`rl_beta` (Axolotl's name) and `{own}` are one setting here, written twice"),
                    &["rl_beta", own],
                    "keep one",
                );
            }
            if t.rl.is_none() {
                self.error(
                    "rl-key-without-method",
                    "`rl_beta` is the beta of preference training; this recipe sets no `rl:`".into(),
                    &["rl_beta"],
                    "remove rl_beta, or set rl: dpo (or another method)",
                );
            }
        }
        if t.bfloat16 == Some(true) && written(self, "bf16") && t.bf16 == Switch::Off {
            self.error(
                "precision-exclusive",
                "`bfloat16: true` turns bf16 on (as in Axolotl), and `bf16: false` turns it off".into(),
                &["bfloat16", "bf16"],
                "keep one: bf16: true (the same as bfloat16: true), or bf16: false and no bfloat16",
            );
        }
        if t.fp16 == Switch::On && t.bf16 == Switch::On {
            self.error(
                "precision-exclusive",
                "`fp16: true` and `bf16: true` exclude each other".into(),
                &["fp16", "bf16"],
                "bf16 where the GPU supports it (Ampere and newer), fp16 otherwise",
            );
        }
        if t.num_epochs.is_some() && t.max_steps.is_some() {
            self.warn(
                "steps-override-epochs",
                "`max_steps` is set, so `num_epochs` is ignored".into(),
                &["max_steps", "num_epochs"],
                "remove one to say which limit you mean",
            );
        }
        let l = &c.logging;
        {
            use super::logging::SaveStrategy;
            let by_steps = l.save_steps.is_some() || l.saves_per_epoch.is_some_and(|k| k > 0);
            match l.save_strategy {
                Some(s @ (SaveStrategy::Epoch | SaveStrategy::No)) if by_steps => self.error(
                    "save-strategy-mismatch",
                    format!("`save_strategy: {}` and a step schedule for saves contradict each other", s.as_str()),
                    &["save_strategy", "save_steps", "saves_per_epoch"],
                    "set save_strategy: steps, or remove save_steps / saves_per_epoch",
                ),
                Some(SaveStrategy::Steps) if !by_steps => self.error(
                    "save-strategy-mismatch",
                    "`save_strategy: steps` needs `save_steps` or `saves_per_epoch` to say how often".into(),
                    &["save_strategy"],
                    "add save_steps (e.g. 100), or set save_strategy: epoch",
                ),
                _ => {}
            }
        }
        if l.save_only_model && !l.saves_checkpoints() {
            self.error(
                "save-only-model-without-saves",
                "`save_only_model` shapes checkpoints, but no checkpoint is scheduled".into(),
                &["save_only_model", "save_steps", "saves_per_epoch", "save_strategy"],
                "add save_steps or saves_per_epoch, or remove save_only_model",
            );
        }
        if l.loss_watchdog_patience.is_some() && l.loss_watchdog_threshold.is_none() {
            self.error(
                "watchdog-without-threshold",
                "`loss_watchdog_patience` is set but `loss_watchdog_threshold` is not, so nothing is watched".into(),
                &["loss_watchdog_patience", "loss_watchdog_threshold"],
                "set loss_watchdog_threshold (e.g. 5.0), or remove loss_watchdog_patience",
            );
        }
        if l.eval_steps.is_some() && l.evals_per_epoch.is_some_and(|k| k > 0) {
            self.error(
                "eval-schedule-exclusive",
                "`eval_steps` and `evals_per_epoch` exclude each other".into(),
                &["eval_steps", "evals_per_epoch"],
                "keep one",
            );
        }
        if l.save_steps.is_some() && l.saves_per_epoch.is_some_and(|k| k > 0) {
            self.error(
                "save-schedule-exclusive",
                "`save_steps` and `saves_per_epoch` exclude each other".into(),
                &["save_steps", "saves_per_epoch"],
                "keep one",
            );
        }
    }

    fn evaluation(&mut self, c: &Config) {
        let has_eval = c.data.val_set_size > 0.0 || !c.data.test_datasets.is_empty();
        let l = &c.logging;
        if !l.do_causal_lm_eval {
            let keys = [
                ("eval_causal_lm_metrics", l.eval_causal_lm_metrics.is_some()),
                ("eval_max_new_tokens", l.eval_max_new_tokens.is_some()),
            ];
            for (key, set) in keys {
                if set {
                    self.error(
                        "causal-lm-eval-off",
                        format!("`{key}` has no effect without `do_causal_lm_eval: true`"),
                        &[key],
                        "set do_causal_lm_eval: true to generate and score at each evaluation, or remove the key",
                    );
                }
            }
        } else if c.training.rl.is_some() || c.training.reward_model {
            self.error(
                "causal-lm-eval-needs-sft",
                "`do_causal_lm_eval` scores generated answers; preference and reward training have none".into(),
                &["do_causal_lm_eval", if c.training.rl.is_some() { "rl" } else { "reward_model" }],
                "evaluate the trained model with `recipe eval` instead",
            );
        } else if c.data.val_set_size <= 0.0 {
            self.error(
                "causal-lm-eval-needs-validation",
                "`do_causal_lm_eval` generates on the validation split, and there is none".into(),
                &["do_causal_lm_eval", "val_set_size"],
                "set val_set_size (e.g. 0.05)",
            );
        }
        if c.data.val_set_size > 0.0 && !c.data.test_datasets.is_empty() {
            self.error(
                "validation-exclusive",
                "`val_set_size` and `test_datasets` exclude each other".into(),
                &["val_set_size", "test_datasets"],
                "split validation rows off the training data, or name held-out datasets, not both",
            );
        }
        if c.logging.early_stopping_patience.is_some() && !has_eval {
            self.error(
                "early-stopping-needs-eval",
                "`early_stopping_patience` needs a validation set to watch".into(),
                &["early_stopping_patience", "val_set_size", "test_datasets"],
                "set val_set_size (e.g. 0.05) or test_datasets",
            );
        }
        if (c.logging.eval_steps.is_some() || c.logging.evals_per_epoch.is_some_and(|k| k > 0)) && !has_eval {
            self.warn(
                "eval-without-data",
                "evaluation is scheduled but there is no validation set, so it will not run".into(),
                &["eval_steps", "evals_per_epoch", "val_set_size"],
                "set val_set_size or test_datasets",
            );
        }
    }

    fn chat_template(&mut self, c: &Config) {
        // End-of-turn settings act on chat datasets only.
        let chats: Vec<(String, &super::datasets::ChatDataset)> =
            [(&c.data.datasets, "datasets"), (&c.data.test_datasets, "test_datasets")]
                .into_iter()
                .flat_map(|(list, name)| {
                    list.iter().enumerate().filter_map(move |(i, d)| match d {
                        DatasetConfig::ChatTemplate(chat) => Some((format!("{name}.{i}"), chat)),
                        _ => None,
                    })
                })
                .collect();
        if c.chat.eot_tokens.is_some() && chats.is_empty() {
            self.error(
                "eot-tokens-without-chat",
                "`eot_tokens` is set but no dataset is `type: chat_template`, so no turn ends with them".into(),
                &["eot_tokens"],
                "remove eot_tokens, or train on a chat_template dataset",
            );
        }
        for (at, chat) in &chats {
            if chat.train_on_eot.is_some() && c.chat.eot_tokens.is_none() {
                let key = format!("{at}.train_on_eot");
                self.error(
                    "train-on-eot-without-eot-tokens",
                    "`train_on_eot` applies to `eot_tokens`, which are not set (EOS alone ends a turn, by \
                     train_on_eos)"
                        .into(),
                    &[&key, "eot_tokens"],
                    "set eot_tokens (e.g. [\"<|eot_id|>\"]), or use train_on_eos",
                );
            }
        }
        // The older message_field_role / message_field_content and message_property_mappings name the
        // same thing: they may not disagree (as Axolotl checks).
        for (list, name) in [(&c.data.datasets, "datasets"), (&c.data.test_datasets, "test_datasets")] {
            for (i, d) in list.iter().enumerate() {
                let DatasetConfig::ChatTemplate(chat) = d else { continue };
                for (key, legacy) in [("role", &chat.message_field_role), ("content", &chat.message_field_content)] {
                    let mapped =
                        chat.message_property_mappings.as_ref().and_then(|m| m.get(key)).and_then(|v| v.as_str());
                    if let (Some(legacy), Some(mapped)) = (legacy, mapped)
                        && legacy != mapped
                    {
                        let legacy_key = format!("{name}.{i}.message_field_{key}");
                        let mapped_key = format!("{name}.{i}.message_property_mappings.{key}");
                        self.error(
                            "message-field-conflict",
                            format!("`message_field_{key}: {legacy}` and `message_property_mappings.{key}: {mapped}` disagree"),
                            &[&legacy_key, &mapped_key],
                            "keep message_property_mappings (message_field_* is Axolotl's older spelling)",
                        );
                    }
                }
            }
        }
        let root = c.chat.chat_template;
        if root == Some(ChatTemplateName::Jinja) && c.chat.chat_template_jinja.is_none() {
            self.error(
                "jinja-needs-template",
                "`chat_template: jinja` needs `chat_template_jinja` (the template text or a .jinja file)".into(),
                &["chat_template", "chat_template_jinja"],
                "add chat_template_jinja, or name a built-in template",
            );
        }
        if c.chat.chat_template_jinja.is_some() && root.is_some_and(|t| t != ChatTemplateName::Jinja) {
            self.error(
                "jinja-template-ignored",
                "`chat_template_jinja` is set but `chat_template` names another template".into(),
                &["chat_template_jinja", "chat_template"],
                "set chat_template: jinja, or remove chat_template_jinja",
            );
        }
        for (list, datasets) in [("datasets", &c.data.datasets), ("test_datasets", &c.data.test_datasets)] {
            for (i, d) in datasets.iter().enumerate() {
                let Some((own, jinja)) = d.template_choice() else {
                    continue;
                };
                let key = format!("{list}.{i}.chat_template");
                if let (Some(mine), Some(top)) = (own, root)
                    && mine != top
                {
                    self.warn(
                        "chat-template-mismatch",
                        format!("{list}[{i}] uses a different chat template than the recipe's `chat_template`"),
                        &[&key, "chat_template"],
                        "the model learns one format per dataset; make them agree unless this is intended",
                    );
                }
                if own == Some(ChatTemplateName::Jinja) && jinja.is_none() {
                    self.error(
                        "jinja-needs-template",
                        format!("{list}[{i}] has `chat_template: jinja` but no `chat_template_jinja`"),
                        &[&key],
                        "add chat_template_jinja to the dataset",
                    );
                }
            }
        }
    }

    /// A dataset without `type` holds pre-tokenized rows, used as they are: the keys that format
    /// rows into tokens, and the data settings that act on text, would be read and not acted on.
    fn pretokenized(&mut self, c: &Config) {
        let d = &c.data;
        let lists = [
            ("datasets", &d.datasets),
            ("test_datasets", &d.test_datasets),
            ("forgetting_datasets", &d.forgetting_datasets),
            ("replay_datasets", &d.replay_datasets),
            ("ewc_datasets", &d.ewc_datasets),
        ];
        let mut first = None;
        let mut all = true;
        for (list, entries) in lists {
            for (i, entry) in entries.iter().enumerate() {
                let DatasetConfig::Pretokenized(p) = entry else {
                    all = false;
                    continue;
                };
                first.get_or_insert(format!("{list}.{i}.path"));
                for key in p.formatting.keys().filter(|k| super::datasets::FORMATTING_KEYS.contains(&k.as_str())) {
                    self.error(
                        "pretokenized-formatting-key",
                        format!(
                            "`{key}` acts on how rows become tokens, but {list}[{i}] has no `type`: its rows are \
                             pre-tokenized (input_ids, attention_mask, labels) and used as they are"
                        ),
                        &[&format!("{list}.{i}.{key}")],
                        &format!(
                            "remove `{key}`, or give the dataset the `type` of its rows if they are not tokenized"
                        ),
                    );
                }
            }
        }
        let Some(first) = first else { return };
        for (key, set, what) in [
            ("redact_pii", d.redact_pii, "redacts PII in text"),
            ("dataset_normalized_deduplication", d.dataset_normalized_deduplication, "compares normalised text"),
        ] {
            if set {
                self.error(
                    "pretokenized-text-setting",
                    format!("`{key}` {what}, but a dataset without `type` holds token ids, which it cannot act on"),
                    &[key, &first],
                    "remove it (dataset_exact_deduplication compares pre-tokenized rows' ids and labels)",
                );
            }
        }
        if all && d.train_on_inputs {
            self.error(
                "pretokenized-text-setting",
                "`train_on_inputs` trains the prompts recipe formats, but every dataset is pre-tokenized: their \
                 labels say what is trained"
                    .into(),
                &["train_on_inputs", &first],
                "remove train_on_inputs, or write labels equal to input_ids in the rows",
            );
        }
    }

    /// Preference training (`rl:`) and reward models read preference pairs, and only they do; a
    /// reward model is a sequence classifier with one output.
    fn preference(&mut self, c: &Config) {
        let t = &c.training;
        let reads_pairs = t.rl.is_some() || t.reward_model;
        let what = match t.rl {
            Some(rl) => format!("`rl: {rl}`"),
            None => "`reward_model: true`".to_string(),
        };
        for (list, datasets) in [("datasets", &c.data.datasets), ("test_datasets", &c.data.test_datasets)] {
            for (i, d) in datasets.iter().enumerate() {
                let key = format!("{list}.{i}.type");
                if reads_pairs && !d.holds_pairs() {
                    self.error(
                        "preference-needs-pairs",
                        format!("{what} trains on preference pairs, but {list}[{i}] has type `{}`", d.type_name()),
                        &[&key, if t.rl.is_some() { "rl" } else { "reward_model" }],
                        "use type: chat_template.default (prompt, chosen and rejected per row) or, for a reward \
                         model, bradley_terry.chat_template",
                    );
                } else if !reads_pairs && d.holds_pairs() {
                    self.error(
                        "pairs-need-preference",
                        format!(
                            "{list}[{i}] holds preference pairs (type `{}`), which only preference training and \
                             reward models read",
                            d.type_name()
                        ),
                        &[&key],
                        "set rl: dpo (or ipo, orpo, simpo) or reward_model: true, or use type: chat_template for \
                         conversations",
                    );
                } else if let Some((problem, help)) = type_not_for_method(d, t.rl) {
                    self.error(
                        "type-not-for-method",
                        format!("{list}[{i}] has type `{}`, {problem}", d.type_name()),
                        &[&key, if t.rl.is_some() { "rl" } else { "reward_model" }],
                        &help,
                    );
                } else if t.rl.is_some() && matches!(d, DatasetConfig::BradleyTerry(_)) {
                    self.error(
                        "bradley-terry-needs-reward-model",
                        format!("{list}[{i}] has type `bradley_terry.chat_template`, Axolotl's reward-model format"),
                        &[&key, "rl"],
                        "use type: chat_template.default for rl:, or set reward_model: true instead of rl:",
                    );
                }
            }
        }
        // Keys of one preference method are an error under another, never silently unused.
        use super::training::RlMethod;
        let method_keys: [(&str, bool, RlMethod); 5] = [
            ("orpo_alpha", t.orpo_alpha.is_some(), RlMethod::Orpo),
            ("simpo_gamma", t.simpo_gamma.is_some(), RlMethod::Simpo),
            ("cpo_alpha", t.cpo_alpha.is_some(), RlMethod::Simpo),
            ("kto_desirable_weight", t.kto_desirable_weight.is_some(), RlMethod::Kto),
            ("kto_undesirable_weight", t.kto_undesirable_weight.is_some(), RlMethod::Kto),
        ];
        if t.dpo_use_weighting && !matches!(t.rl, Some(RlMethod::Dpo | RlMethod::Ipo)) {
            self.error(
                "rl-key-without-method",
                "`dpo_use_weighting` weighs the losses of `rl: dpo` and `rl: ipo` only".into(),
                &["dpo_use_weighting", "rl"],
                "remove dpo_use_weighting, or set rl: dpo",
            );
        }
        for (key, set, method) in method_keys {
            if set && t.rl != Some(method) {
                let now = match t.rl {
                    Some(rl) => format!("this recipe trains `rl: {rl}`"),
                    None => "this recipe sets no `rl:`".to_string(),
                };
                self.error(
                    "rl-key-without-method",
                    format!("`{key}` applies to `rl: {method}` only; {now}"),
                    &[key, "rl"],
                    &format!("remove {key}, or set rl: {method}"),
                );
            }
        }
        if t.reward_model && t.rl.is_some() {
            self.error(
                "reward-model-with-rl",
                format!("`reward_model: true` and {what} are two different trainings"),
                &["reward_model", "rl"],
                "train the reward model first (reward_model: true), then the policy in another recipe (rl:)",
            );
        }
        if t.reward_model && c.data.sample_packing {
            self.error(
                "preference-packing",
                "`reward_model: true` trains on pairs, which are not packed".into(),
                &["sample_packing", "reward_model"],
                "set sample_packing: false",
            );
        }
        if !t.reward_model && t.center_rewards_coefficient.is_some() {
            self.error(
                "reward-key-without-reward-model",
                "`center_rewards_coefficient` applies to reward models only".into(),
                &["center_rewards_coefficient"],
                "set reward_model: true, or remove center_rewards_coefficient",
            );
        }
        let classifier = c.model.model_type.is_some_and(|m| m.is_sequence_classifier());
        match (t.reward_model, c.model.model_type) {
            (false, Some(m)) if classifier => self.error(
                "sequence-classifier-without-reward-model",
                format!("`model_type: {m:?}` is a sequence classifier, which recipe trains as a reward model"),
                &["model_type"],
                "set reward_model: true, or use model_type: AutoModelForCausalLM",
            ),
            (true, Some(m)) if !classifier => self.error(
                "reward-model-class",
                format!("a reward model is a sequence classifier, not `{m:?}`"),
                &["model_type", "reward_model"],
                "use model_type: AutoModelForSequenceClassification, or leave model_type out",
            ),
            _ => {}
        }
        // Axolotl's process reward models also size a head with num_labels: naming
        // process_reward_model lets its refusal by name silence these (report() skips refused keys).
        match c.model.num_labels {
            Some(n) if !t.reward_model => self.error(
                "num-labels-without-reward-model",
                format!("`num_labels: {n}` sizes a sequence-classification head, which only reward models have"),
                &["num_labels", "process_reward_model"],
                "set reward_model: true, or remove num_labels",
            ),
            Some(n) if n != 1 => self.error(
                "reward-model-num-labels",
                format!("`num_labels: {n}`: a reward model has one output, the reward"),
                &["num_labels", "process_reward_model"],
                "set num_labels: 1 (or leave it out)",
            ),
            _ => {}
        }
    }

    /// Attention requests recipe runs with another algorithm (the same math): a warning, so the
    /// recipe's author knows.
    fn kernels(&mut self, c: &Config) {
        use super::kernels::AttnImplementation;
        if c.kernels.flash_attn_fuse_mlp == Some(true) && c.adapter.adapter.is_some_and(|a| a.is_lora()) {
            self.error(
                "fused-mlp-with-lora",
                "`flash_attn_fuse_mlp: true` with LoRA / QLoRA: Axolotl refuses the pair (\"Fused modules are not \
                 supported with LoRA/QLoRA\"), and so does recipe"
                    .into(),
                &["flash_attn_fuse_mlp", "adapter"],
                "remove flash_attn_fuse_mlp",
            );
        }
        if c.kernels.torch_compile_mode.is_some() && !matches!(c.kernels.torch_compile, Some(Switch::On | Switch::Auto))
        {
            self.warn(
                "compile-mode-without-compile",
                "`torch_compile_mode` is read only with `torch_compile` on (Axolotl's rule); recipe compiles nothing \
                 either way"
                    .into(),
                &["torch_compile_mode"],
                "remove torch_compile_mode",
            );
        }
        if let Some((a @ (AttnImplementation::Eager | AttnImplementation::FlexAttention), key)) =
            c.kernels.attention_request()
        {
            self.warn(
                "attention-kernel",
                format!(
                    "`{key}` asks for {} attention; recipe computes the same attention with libtorch's \
                     scaled_dot_product_attention",
                    a.as_str()
                ),
                &[key],
                "remove it, or set attn_implementation: sdpa",
            );
        }
    }

    /// Forgetting is measured as language-model perplexity, which preference and reward runs do not
    /// compute (their examples are pairs).
    fn forgetting(&mut self, c: &Config) {
        let t = &c.training;
        if !c.data.forgetting_datasets.is_empty() && (t.rl.is_some() || t.reward_model) {
            self.error(
                "forgetting-needs-supervised",
                "`forgetting_datasets` are scored by perplexity, which only supervised runs compute (not `rl` or \
                 `reward_model`)"
                    .into(),
                &["forgetting_datasets", "rl", "reward_model"],
                "score forgetting with `recipe eval BASE OUTPUT --dataset PATH --metrics perplexity`",
            );
        }
        // Replay and EWC come in pairs: a strength without its data (or data without a strength)
        // would validate and then do nothing.
        let pairs: [(&str, bool, &str, bool, &str); 3] = [
            ("replay_ratio", t.replay_ratio.is_some(), "replay_datasets", !c.data.replay_datasets.is_empty(), "0.25"),
            ("ewc_lambda", t.ewc_lambda.is_some(), "ewc_datasets", !c.data.ewc_datasets.is_empty(), "100"),
            ("ewc_samples", t.ewc_samples.is_some(), "ewc_lambda", t.ewc_lambda.is_some(), "100"),
        ];
        for (key, set, other, other_set, example) in pairs {
            if set && !other_set {
                self.error(
                    "forgetting-pair",
                    format!("`{key}` needs `{other}`: without it, it would do nothing"),
                    &[key, other],
                    &format!("add `{other}:`, or remove `{key}`"),
                );
            } else if other_set && !set && key != "ewc_samples" {
                self.error(
                    "forgetting-pair",
                    format!("`{other}` needs `{key}`: without it, it would do nothing"),
                    &[other, key],
                    &format!("add `{key}: {example}`, or remove `{other}`"),
                );
            }
        }
        for (key, set) in
            [("replay_datasets", !c.data.replay_datasets.is_empty()), ("ewc_datasets", !c.data.ewc_datasets.is_empty())]
        {
            if set && (t.rl.is_some() || t.reward_model) {
                self.error(
                    "forgetting-needs-supervised",
                    format!(
                        "`{key}` works with supervised fine-tuning only (its rows are language-modelling samples), \
                         not with `rl` or `reward_model`"
                    ),
                    &[key, "rl", "reward_model"],
                    "remove it, or train supervised",
                );
            }
        }
    }

    fn distributed(&mut self, c: &Config) {
        for (prefixed, plain) in c.distributed.fsdp_config.written_twice() {
            self.error(
                "fsdp-config-twice",
                format!("`fsdp_config.{prefixed}` and `fsdp_config.{plain}` are one setting, written twice"),
                &[&format!("fsdp_config.{prefixed}"), &format!("fsdp_config.{plain}")],
                "keep one of the two spellings",
            );
        }
        if c.distributed.fsdp_version.is_some() && c.distributed.sharding().is_empty() {
            self.error(
                "fsdp-version-without-fsdp",
                "`fsdp_version` is set but neither `fsdp` nor `fsdp_config` asks for sharding, so it does nothing"
                    .into(),
                &["fsdp_version"],
                "add fsdp_config, or remove fsdp_version",
            );
        }
        let versions =
            [c.distributed.fsdp_version, c.distributed.fsdp_config.fsdp_version, c.distributed.fsdp_config.version];
        let written: Vec<u32> = versions.into_iter().flatten().collect();
        if written.windows(2).any(|w| w[0] != w[1]) {
            self.error(
                "fsdp-version-disagrees",
                format!("the FSDP version is written more than once, with different values ({written:?})"),
                &["fsdp_version", "fsdp_config.fsdp_version", "fsdp_config.version"],
                "write fsdp_version once",
            );
        }
    }

    /// A DeepSpeed config (config/deepspeed.rs): it excludes FSDP's keys; its explicit values agree
    /// with the recipe's (`auto` takes the recipe's); what recipe does not build is refused at its
    /// key in the file.
    fn deepspeed(&mut self, c: &Config) {
        use super::deepspeed::{OffloadDevice, WarmupType, ZeroStage};
        use super::training::LrScheduler;
        let d = &c.distributed;
        if d.deepspeed.is_some() {
            for key in ["fsdp", "fsdp_config"].into_iter().filter(|k| self.at.entry(k).is_some()) {
                self.error(
                    "deepspeed-with-fsdp",
                    format!("`deepspeed` and `{key}` both ask for sharded training; a recipe uses one of them"),
                    &["deepspeed", key],
                    "keep one: DeepSpeed's ZeRO stage 2 is fsdp's shard_grad_op, stage 3 is full_shard",
                );
            }
        }
        let Some(ds) = &d.deepspeed_config else {
            return;
        };
        let t = &c.training;
        let z = &ds.zero_optimization;
        let stage = ds.stage();
        // A value in the file that is not `auto` and disagrees with the recipe's key.
        let disagree = |this: &mut Self, file_key: &str, file_value: String, key: &str, value: String| {
            let default = if this.at.entry(key).is_none() { " (its default)" } else { "" };
            this.error(
                "deepspeed-disagrees",
                format!(
                    "`{file_key}` in the DeepSpeed config is {file_value}, but the recipe's `{key}` is {value}{default}"
                ),
                &[&format!("deepspeed.{file_key}"), key],
                "write \"auto\" in the DeepSpeed config (it takes the recipe's value), or make the two agree",
            );
        };
        let same = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(b.abs());
        if let Some(v) = ds.train_micro_batch_size_per_gpu.and_then(|v| v.value())
            && v != t.micro_batch_size
        {
            disagree(
                self,
                "train_micro_batch_size_per_gpu",
                v.to_string(),
                "micro_batch_size",
                t.micro_batch_size.to_string(),
            );
        }
        if let Some(v) = ds.gradient_accumulation_steps.and_then(|v| v.value())
            && v != t.gradient_accumulation_steps
        {
            let recipe = t.gradient_accumulation_steps.to_string();
            disagree(self, "gradient_accumulation_steps", v.to_string(), "gradient_accumulation_steps", recipe);
        }
        let per_rank = u64::from(t.micro_batch_size) * u64::from(t.gradient_accumulation_steps);
        if let Some(v) = ds.train_batch_size.and_then(|v| v.value())
            && v % per_rank != 0
        {
            self.error(
                "deepspeed-disagrees",
                format!(
                    "`train_batch_size` in the DeepSpeed config is {v}, which is not micro_batch_size × \
                     gradient_accumulation_steps ({} × {} = {per_rank}) times any world size",
                    t.micro_batch_size, t.gradient_accumulation_steps
                ),
                &["deepspeed.train_batch_size", "micro_batch_size", "gradient_accumulation_steps"],
                "write \"auto\" (micro batch × accumulation × world size)",
            );
        }
        if let Some(v) = ds.gradient_clipping.and_then(|v| v.value())
            && !same(v, t.max_grad_norm)
        {
            disagree(self, "gradient_clipping", v.to_string(), "max_grad_norm", t.max_grad_norm.to_string());
        }
        let written = |this: &Self, key: &str| this.at.entry(key).is_some();
        let switch = |s: Switch| match s {
            Switch::On => "true",
            Switch::Off => "false",
            Switch::Auto => "auto",
        };
        if let Some(on) = ds.bf16_enabled() {
            if on && t.fp16 == Switch::On {
                disagree(self, "bf16.enabled", "true".into(), "fp16", "true".into());
            } else if (on && t.bf16 == Switch::Off && written(self, "bf16")) || (!on && t.bf16 == Switch::On) {
                disagree(self, "bf16.enabled", on.to_string(), "bf16", switch(t.bf16).into());
            }
        }
        if let Some(on) = ds.fp16_enabled() {
            if on && t.bf16 == Switch::On {
                disagree(self, "fp16.enabled", "true".into(), "bf16", "true".into());
            } else if (on && t.fp16 == Switch::Off && written(self, "fp16")) || (!on && t.fp16 == Switch::On) {
                disagree(self, "fp16.enabled", on.to_string(), "fp16", switch(t.fp16).into());
            }
        }
        if ds.bf16_enabled() == Some(true) && ds.fp16_enabled() == Some(true) {
            self.error(
                "deepspeed-precision",
                "the DeepSpeed config turns on both `bf16` and `fp16`".into(),
                &["deepspeed.bf16.enabled", "deepspeed.fp16.enabled"],
                "keep one of them, or write \"auto\" in both",
            );
        }
        // DeepSpeed's loss scaler acts only in float16; recipe's is torch's GradScaler.
        let fp16_on = ds.fp16_enabled().unwrap_or(t.fp16 == Switch::On);
        if fp16_on && let Some(f) = &ds.fp16 {
            use super::deepspeed::{RECIPE_INITIAL_SCALE_POWER as POWER, RECIPE_LOSS_SCALE_WINDOW as WINDOW};
            let scaler = [
                (
                    "loss_scale",
                    f.loss_scale.filter(|v| *v != 0.0).map(|v| format!("{v} (a fixed scale)")),
                    "0 (dynamic)".to_string(),
                ),
                (
                    "initial_scale_power",
                    f.initial_scale_power.filter(|v| *v != POWER).map(|v| v.to_string()),
                    POWER.to_string(),
                ),
                (
                    "loss_scale_window",
                    f.loss_scale_window.filter(|v| *v != WINDOW).map(|v| v.to_string()),
                    WINDOW.to_string(),
                ),
                ("hysteresis", f.hysteresis.filter(|v| *v != 1).map(|v| v.to_string()), "1".to_string()),
                (
                    "consecutive_hysteresis",
                    f.consecutive_hysteresis.filter(|v| *v).map(|v| v.to_string()),
                    "false".to_string(),
                ),
                ("min_loss_scale", f.min_loss_scale.map(|v| v.to_string()), "none".to_string()),
                ("auto_cast", f.auto_cast.filter(|v| !*v).map(|v| v.to_string()), "true (autocast)".to_string()),
            ];
            for (key, found, recipe) in scaler {
                if let Some(found) = found {
                    self.error(
                        "deepspeed-loss-scale",
                        format!(
                            "`fp16.{key}` in the DeepSpeed config is {found}, but recipe's float16 loss scaling (torch's \
                             GradScaler) uses {recipe}"
                        ),
                        &[&format!("deepspeed.fp16.{key}"), "fp16"],
                        &format!("remove `{key}`, or train in bf16"),
                    );
                }
            }
        }
        if let Some(o) = &ds.optimizer {
            let kind = o.kind.to_ascii_lowercase();
            if kind != "adamw" && kind != "adam" {
                self.error(
                    "unsupported-deepspeed-value",
                    format!("`{}` is a DeepSpeed optimizer that recipe does not support", o.kind),
                    &["deepspeed.optimizer.type"],
                    "write \"AdamW\" (recipe's optimizer: key picks its variant), or remove the optimizer section",
                );
            } else if o.params.adam_w_mode == Some(false) {
                self.error(
                    "unsupported-deepspeed-value",
                    "`adam_w_mode: false` is Adam with an L2 penalty, which recipe does not support".into(),
                    &["deepspeed.optimizer.params.adam_w_mode"],
                    "remove it: recipe's Adam is AdamW (decoupled weight decay)",
                );
            } else if t.optimizer.eight_bit_states()
                || t.optimizer.torchao_state_bits().is_some()
                || !t.optimizer.is_adamw()
            {
                self.error(
                    "deepspeed-disagrees",
                    format!(
                        "`optimizer.type` in the DeepSpeed config is {} (32-bit states), but the recipe's `optimizer` is {}",
                        o.kind, t.optimizer
                    ),
                    &["deepspeed.optimizer.type", "optimizer"],
                    "remove the optimizer section: the recipe's optimizer key picks AdamW's variant",
                );
            }
            let p = &o.params;
            if let (Some(v), Some(lr)) = (p.lr.and_then(|v| v.value()), t.learning_rate)
                && !same(v, lr)
            {
                disagree(self, "optimizer.params.lr", v.to_string(), "learning_rate", lr.to_string());
            }
            if let Some([b1, b2]) = p.betas.and_then(|v| v.value()) {
                if !same(b1, t.adam_beta1) {
                    disagree(
                        self,
                        "optimizer.params.betas",
                        format!("[{b1}, {b2}]"),
                        "adam_beta1",
                        t.adam_beta1.to_string(),
                    );
                }
                if !same(b2, t.adam_beta2) {
                    disagree(
                        self,
                        "optimizer.params.betas",
                        format!("[{b1}, {b2}]"),
                        "adam_beta2",
                        t.adam_beta2.to_string(),
                    );
                }
            }
            if let Some(v) = p.eps.and_then(|v| v.value())
                && !same(v, t.adam_epsilon)
            {
                disagree(self, "optimizer.params.eps", v.to_string(), "adam_epsilon", t.adam_epsilon.to_string());
            }
            if let Some(v) = p.weight_decay.and_then(|v| v.value())
                && !same(v, t.weight_decay)
            {
                disagree(
                    self,
                    "optimizer.params.weight_decay",
                    v.to_string(),
                    "weight_decay",
                    t.weight_decay.to_string(),
                );
            }
        }
        if let Some(s) = &ds.scheduler {
            let mapped = match s.kind.as_str() {
                "WarmupDecayLR" => Some(&[LrScheduler::Linear][..]),
                "WarmupCosineLR" => Some(&[LrScheduler::Cosine][..]),
                "WarmupLR" => Some(&[LrScheduler::Constant, LrScheduler::ConstantWithWarmup][..]),
                _ => None,
            };
            match mapped {
                None => self.error(
                    "unsupported-deepspeed-value",
                    format!("`{}` is a DeepSpeed scheduler that recipe does not support", s.kind),
                    &["deepspeed.scheduler.type"],
                    "remove the scheduler section: recipe's lr_scheduler and warmup keys set the schedule",
                ),
                Some(kinds) if !kinds.contains(&t.lr_scheduler) => {
                    let recipe = serde_json::to_value(t.lr_scheduler).ok().and_then(|v| v.as_str().map(str::to_owned));
                    let default = if self.at.entry("lr_scheduler").is_none() { " (its default)" } else { "" };
                    self.error(
                        "deepspeed-disagrees",
                        format!(
                            "`scheduler.type` in the DeepSpeed config is {}, but the recipe's `lr_scheduler` is {}{default}",
                            s.kind,
                            recipe.unwrap_or_default()
                        ),
                        &["deepspeed.scheduler.type", "lr_scheduler"],
                        "DeepSpeed's names: WarmupDecayLR is linear, WarmupCosineLR cosine, WarmupLR \
                         constant_with_warmup; or remove the scheduler section",
                    );
                }
                Some(_) => {}
            }
            let p = &s.params;
            if p.warmup_type != Some(WarmupType::Linear) {
                let key = if p.warmup_type.is_some() {
                    "deepspeed.scheduler.params.warmup_type"
                } else {
                    "deepspeed.scheduler.type"
                };
                self.error(
                    "deepspeed-disagrees",
                    "DeepSpeed's scheduler warms up logarithmically unless `warmup_type` is \"linear\"; recipe's warmup is linear".into(),
                    &[key, "warmup_steps", "warmup_ratio"],
                    "write \"warmup_type\": \"linear\" under scheduler.params, or remove the scheduler section",
                );
            }
            for (key, value) in [("warmup_min_lr", p.warmup_min_lr), ("warmup_min_ratio", p.warmup_min_ratio)] {
                if let Some(v) = value.and_then(|v| v.value()).filter(|v| *v != 0.0) {
                    self.error(
                        "deepspeed-disagrees",
                        format!(
                            "`scheduler.params.{key}` in the DeepSpeed config is {v}, but recipe's warmup starts from 0"
                        ),
                        &[&format!("deepspeed.scheduler.params.{key}"), "warmup_steps", "warmup_ratio"],
                        "write \"auto\" or 0",
                    );
                }
            }
            if let (Some(v), Some(lr)) = (p.warmup_max_lr.and_then(|v| v.value()), t.learning_rate)
                && !same(v, lr)
            {
                disagree(self, "scheduler.params.warmup_max_lr", v.to_string(), "learning_rate", lr.to_string());
            }
            let floor = t.cosine_min_lr_ratio.unwrap_or(0.0);
            if let Some(v) = p.cos_min_ratio.and_then(|v| v.value())
                && !same(v, floor)
            {
                disagree(
                    self,
                    "scheduler.params.cos_min_ratio",
                    v.to_string(),
                    "cosine_min_lr_ratio",
                    floor.to_string(),
                );
            }
        }
        for (key, offload) in [("offload_optimizer", z.offload_optimizer), ("offload_param", z.offload_param)] {
            let Some(offload) = offload else { continue };
            if offload.device == OffloadDevice::Nvme {
                self.error(
                    "unsupported-deepspeed-value",
                    format!("`{key}.device: nvme` (ZeRO-Infinity) is a DeepSpeed option that recipe does not support"),
                    &[&format!("deepspeed.zero_optimization.{key}.device")],
                    "write \"cpu\" (host memory) or \"none\"",
                );
                continue;
            }
            let needs = if key == "offload_param" { ZeroStage::Zero3 } else { ZeroStage::Zero1 };
            if offload.device == OffloadDevice::Cpu && stage.number() < needs.number() {
                self.error(
                    "deepspeed-offload-stage",
                    format!(
                        "`{key}` needs ZeRO stage {} or higher, but the DeepSpeed config's stage is {}",
                        needs.number(),
                        stage.number()
                    ),
                    &[&format!("deepspeed.zero_optimization.{key}"), "deepspeed.zero_optimization.stage"],
                    if key == "offload_param" {
                        "set stage 3, or remove offload_param"
                    } else {
                        "set stage 1 or higher, or remove offload_optimizer"
                    },
                );
            }
        }
        for key in ["stage3_gather_16bit_weights_on_model_save", "gather_16bit_weights_on_model_save"] {
            let value = if key.starts_with("stage3") {
                z.stage3_gather_16bit_weights_on_model_save
            } else {
                z.gather_16bit_weights_on_model_save
            };
            if value == Some(false) {
                self.error(
                    "unsupported-deepspeed-value",
                    format!(
                        "`{key}: false` (sharded checkpoints only) is a DeepSpeed option that recipe does not support"
                    ),
                    &[&format!("deepspeed.zero_optimization.{key}")],
                    "remove it: recipe always saves the whole model",
                );
            }
        }
        if ds.zero_force_ds_cpu_optimizer == Some(true) {
            self.error(
                "unsupported-deepspeed-value",
                "`zero_force_ds_cpu_optimizer: true` asks for DeepSpeed's CPU Adam, which recipe does not have".into(),
                &["deepspeed.zero_force_ds_cpu_optimizer"],
                "write false: recipe runs its own AdamW",
            );
        }
    }

    /// Experiment tracking (config/tracking.rs): each tracker's keys need its switch, the MLflow
    /// server is an http(s) URL, the metrics server's host is a bare host, and what is not built
    /// (W&B online, model artifacts) is refused.
    fn tracking(&mut self, c: &Config) {
        use super::tracking::{WandbLogModel, WandbMode};
        let t = &c.tracking;
        // A key that is written and not `false` (a `false` switch is harmless anywhere).
        let written = |key: &str| {
            self.at.entry(key).is_some_and(|e| !matches!(e.value.value, crate::recipe::yaml::Value::Bool(false)))
        };
        // A tracker's keys while it is off: the key, the switch involved, what is wrong, the fix.
        let mut orphans: Vec<(&str, &str, String, String)> = Vec::new();
        let off_by = |switch: &str, tracker: &str| format!("`{switch}` turns {tracker} off");
        if written("logging_dir") && !t.tensorboard() {
            let why = if t.use_tensorboard == Some(false) {
                off_by("use_tensorboard: false", "TensorBoard")
            } else {
                "it needs `use_tensorboard: true`".into()
            };
            orphans.push(("logging_dir", "use_tensorboard", why, "set use_tensorboard: true".into()));
        }
        let mlflow_keys = ["use_mlflow", "mlflow_tracking_uri", "mlflow_experiment_name", "mlflow_run_name"];
        for key in mlflow_keys.into_iter().chain(["hf_mlflow_log_artifacts"]).filter(|k| written(k)) {
            if t.use_mlflow == Some(false) {
                let why = off_by("use_mlflow: false", "MLflow");
                orphans.push((key, "use_mlflow", why, "remove use_mlflow: false to log to MLflow".into()));
            } else if t.mlflow_tracking_uri.is_none() {
                let why = "it needs `mlflow_tracking_uri` (the MLflow server)".to_string();
                let fix = "set mlflow_tracking_uri, e.g. http://127.0.0.1:5000".to_string();
                orphans.push((key, "mlflow_tracking_uri", why, fix));
            }
        }
        let wandb_keys = ["use_wandb", "wandb_project", "wandb_entity", "wandb_name", "wandb_run_id", "wandb_mode"];
        for key in wandb_keys.into_iter().chain(["wandb_log_model"]).filter(|k| written(k)) {
            // The switches that turn W&B off are what they say.
            let switch_off = (key == "wandb_mode" && t.wandb_mode == Some(WandbMode::Disabled))
                || (key == "wandb_log_model" && t.wandb_log_model == Some(WandbLogModel::Off));
            if switch_off {
                continue;
            }
            if t.use_wandb == Some(false) {
                let why = off_by("use_wandb: false", "W&B");
                orphans.push((key, "use_wandb", why, "remove use_wandb: false to log to W&B".into()));
            } else if t.wandb_mode == Some(WandbMode::Disabled) {
                let why = off_by("wandb_mode: disabled", "W&B");
                orphans.push((key, "wandb_mode", why, "write wandb_mode: offline to log to W&B".into()));
            } else if t.wandb_project.is_none() {
                let why = "it needs `wandb_project` (setting it turns W&B on)".to_string();
                orphans.push((key, "wandb_project", why, "set wandb_project".into()));
            }
        }
        for key in ["otel_metrics_host", "otel_metrics_port"].into_iter().filter(|k| written(k)) {
            if !t.otel() {
                let why = if t.use_otel_metrics == Some(false) {
                    off_by("use_otel_metrics: false", "the metrics server")
                } else {
                    "it needs `use_otel_metrics: true`".into()
                };
                orphans.push((key, "use_otel_metrics", why, "set use_otel_metrics: true".into()));
            }
        }
        for (key, switch, why, fix) in orphans {
            self.error(
                "tracker-key-without-switch",
                format!("`{key}` has no effect: {why}"),
                &[key, switch],
                &format!("{fix}, or remove {key}"),
            );
        }
        if let (Some(uri), Some(span)) = (&t.mlflow_tracking_uri, self.at.value_span("mlflow_tracking_uri"))
            && let Err(problem) = crate::plan::tracking::check_tracking_uri(uri)
        {
            let d = Diagnostic::error("bad-tracking-uri", format!("`mlflow_tracking_uri`: {problem}"))
                .at(span, "not an http(s) URL of an MLflow server")
                .key("mlflow_tracking_uri".to_string())
                .expected("http://host[:port][/prefix] or https://...".to_string())
                .found(uri.clone())
                .help(
                    "recipe logs through MLflow's REST API; start a server with `mlflow server --port 5000` \
                     and write http://127.0.0.1:5000"
                        .to_string(),
                );
            self.out.push(d);
        }
        // A name or an address alone: `host:port`, brackets and paths are not hosts (a colon only in
        // an IPv6 address).
        if let Some(host) = &t.otel_metrics_host
            && (host.is_empty()
                || host.contains(['/', '[', ']'])
                || host.chars().any(char::is_whitespace)
                || (host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err()))
        {
            self.error(
                "bad-otel-metrics-host",
                format!("`otel_metrics_host: {host}` is not a host name or address"),
                &["otel_metrics_host"],
                "write the address to listen on alone, e.g. localhost, 0.0.0.0 or ::1 (the port is \
                 otel_metrics_port; the path is always /metrics)",
            );
        }
        if t.wandb() {
            match t.wandb_mode {
                Some(WandbMode::Online) => self.error(
                    "wandb-online-not-built",
                    "`wandb_mode: online`: logging straight to the W&B server is not built into `recipe run`".into(),
                    &["wandb_mode"],
                    "write wandb_mode: offline (a run folder in W&B's offline format under output_dir/wandb), then \
                     upload it with `wandb sync OUTPUT_DIR/wandb/offline-run-...`",
                ),
                None => self.warn(
                    "wandb-offline",
                    "W&B: `wandb_mode` is unset, so the run is written offline (W&B's offline run folder under \
                     output_dir/wandb), not streamed to the server"
                        .into(),
                    &["wandb_project", "wandb_mode"],
                    "upload it after the run with `wandb sync`; write wandb_mode: offline to say so",
                ),
                _ => {}
            }
        }
        if let Some(model @ (WandbLogModel::End | WandbLogModel::Checkpoint)) = t.wandb_log_model
            && t.wandb_project.is_some()
        {
            self.error(
                "wandb-log-model-not-built",
                format!("`wandb_log_model: {}`: model artifacts are not built into `recipe run` yet", model.as_str()),
                &["wandb_log_model"],
                "the model is in output_dir; upload it with `wandb artifact put OUTPUT_DIR`, or write \
                 wandb_log_model: false",
            );
        }
    }

    /// What `recipe run` does not build yet, reported here at the key instead of by `recipe run`
    /// after loading the model. Errors where the recipe has no other use; warnings where `recipe
    /// plan`, `preview` and `preprocess` still serve it.
    fn not_built(&mut self, c: &Config) {
        if let Some(rl) = c.training.rl {
            use super::training::RlMethod;
            if matches!(rl, RlMethod::Dpo | RlMethod::Ipo)
                && c.adapter.adapter.is_none()
                && !c.training.precompute_ref_log_probs
            {
                self.warn(
                    "preference-not-built",
                    format!(
                        "`rl: {rl}` with a full fine-tune needs a frozen reference copy of the model, which is not \
                         built yet, so `recipe run` refuses this recipe"
                    ),
                    &["rl", "adapter"],
                    "set precompute_ref_log_probs: true (the reference log-probabilities computed once, before \
                     training), or train an adapter: its reference is the base with the adapter switched off",
                );
            }
            if rl == RlMethod::Kto {
                if c.adapter.adapter.is_none() {
                    self.error(
                        "kto-needs-adapter",
                        "`rl: kto` compares with a reference model, which recipe builds as the base with the \
                         adapter switched off; a full fine-tune has none"
                            .into(),
                        &["rl", "adapter"],
                        "train an adapter (adapter: lora or qlora)",
                    );
                }
                if c.training.precompute_ref_log_probs {
                    self.error(
                        "kto-precompute",
                        "`precompute_ref_log_probs` with `rl: kto`: KTO's KL estimate pairs prompts with answers \
                         drawn from the same shuffled micro-batch, so its reference values cannot be computed before \
                         training"
                            .into(),
                        &["precompute_ref_log_probs", "rl"],
                        "remove precompute_ref_log_probs: the reference pass runs per step",
                    );
                }
                if c.training.micro_batch_size < 2 {
                    self.error(
                        "kto-micro-batch",
                        "`rl: kto` estimates its KL term from the other answers of a micro-batch, so it needs at least \
                         two rows per micro-batch"
                            .into(),
                        &["micro_batch_size", "rl"],
                        "set micro_batch_size: 2 or more",
                    );
                }
            }
            if c.data.sample_packing {
                self.error(
                    "preference-packing",
                    format!("`rl: {rl}` trains on pairs, which are not packed"),
                    &["sample_packing", "rl"],
                    "set sample_packing: false",
                );
            }
        }
        for (key, what) in c.distributed.not_built() {
            self.warn(
                "sharding-setting-not-built",
                format!(
                    "{what} is not built into `recipe run`, so it refuses this recipe (`recipe plan` still lays it out)"
                ),
                &[key],
                "remove it (or choose the setting recipe builds) to train sharded",
            );
        }
        let f = &c.distributed.fsdp_config;
        let sharding = c.distributed.sharding();
        let size_based = f.fsdp_auto_wrap_policy.or(f.auto_wrap_policy) == Some(AutoWrapPolicy::SizeBasedWrap);
        if f.min_num_params.is_some() && !size_based {
            self.error(
                "min-num-params-without-size-wrap",
                "`fsdp_config.min_num_params` sizes SIZE_BASED_WRAP's units; without that policy it does nothing"
                    .into(),
                &["fsdp_config.min_num_params"],
                "remove min_num_params",
            );
        }
        if f.cpu_offload_pin_memory.is_some() && !sharding.contains(&FsdpOption::Offload) {
            self.error(
                "pin-memory-without-offload",
                "`fsdp_config.cpu_offload_pin_memory` pins offloaded shards; nothing is offloaded, so it does nothing"
                    .into(),
                &["fsdp_config.cpu_offload_pin_memory"],
                "remove cpu_offload_pin_memory",
            );
        }
    }

    /// Local files a recipe names must exist; hub ids must look like hub ids.
    fn locations(&mut self, c: &Config) {
        if let Some(model) = &c.model.base_model {
            self.location("base_model", model, LocationKind::Model);
        }
        for (key, value) in
            [("base_model_config", &c.model.base_model_config), ("tokenizer_config", &c.model.tokenizer_config)]
        {
            if let Some(v) = value {
                self.location(key, v, LocationKind::Model);
            }
        }
        // A template given as a file (rather than inline text) must exist.
        let jinja_files = std::iter::once(("chat_template_jinja".to_string(), c.chat.chat_template_jinja.as_deref()))
            .chain(c.data.datasets.iter().enumerate().filter_map(|(i, d)| {
                d.template_choice().map(|(_, jinja)| (format!("datasets.{i}.chat_template_jinja"), jinja))
            }));
        for (key, value) in jinja_files {
            if let Some(v) = value.filter(|v| v.ends_with(".jinja") && !v.contains('\n')) {
                self.location(&key, v, LocationKind::LocalOnly);
            }
        }
        if let Some(dir) = &c.adapter.lora_model_dir {
            self.location("lora_model_dir", dir, LocationKind::LocalOnly);
        }
        for (list, datasets) in [
            ("datasets", &c.data.datasets),
            ("test_datasets", &c.data.test_datasets),
            ("replay_datasets", &c.data.replay_datasets),
            ("ewc_datasets", &c.data.ewc_datasets),
        ] {
            for (i, d) in datasets.iter().enumerate() {
                self.location(&format!("{list}.{i}.path"), &d.source().path, LocationKind::Dataset);
            }
        }
    }

    fn location(&mut self, key: &str, value: &str, kind: LocationKind) {
        let Some(span) = self.at.value_span(key) else {
            return;
        };
        let base = self.at.base_dir(key);
        let key = display_key(key);
        let missing = match resolve_location(value, &base) {
            Location::Local(path) => (!path.exists()).then_some(path),
            // Only a local path is meant here, so a name that is not one is a missing path.
            Location::Hub(_) if kind == LocationKind::LocalOnly => Some(normalize(&base.join(value))),
            Location::Hub(_) => None,
            Location::Invalid => {
                let what = if kind == LocationKind::Dataset { "dataset" } else { "model" };
                let d = Diagnostic::error(
                    "bad-location",
                    format!("`{key}`: `{value}` is neither an existing local path nor a Hugging Face {what} id"),
                )
                .at(span, "not found locally, and not of the form owner/name")
                .key(key)
                .help("local paths are relative to the recipe file; hub ids look like meta-llama/Llama-2-7b-hf");
                self.out.push(d);
                return;
            }
        };
        if let Some(path) = missing {
            let d = Diagnostic::error("path-not-found", format!("`{key}`: {} does not exist", path.display()))
                .at(span, "no such file or folder")
                .key(key)
                .help("local paths are relative to the recipe file that names them");
            self.out.push(d);
        }
    }

    fn hyperparameter_table(&mut self, c: &Config) {
        let a = &c.adapter;
        let t = &c.training;
        if a.adapter.is_some_and(AdapterKind::is_lora) {
            let r = a.lora_r;
            if !(8..=64).contains(&r) {
                self.warn(
                    "table-lora-rank",
                    format!("lora_r {r} is outside the recommended 8–64"),
                    &["lora_r"],
                    "rank 8–64; higher for harder tasks (presets: lora uses 16, qlora-13b-24gb 32)",
                );
            }
            if let Some(alpha) = a.lora_alpha
                && alpha != 2 * r
            {
                self.warn(
                    "table-lora-alpha",
                    format!("lora_alpha {alpha} is not 2 × lora_r ({})", 2 * r),
                    &["lora_alpha", "lora_r"],
                    "lora_alpha = 2 × r keeps the update's scale steady across ranks",
                );
            }
        }
        if let Some(lr) = t.learning_rate {
            let (low, high, what) = if c.training.rl.is_some() {
                (5e-7, 5e-5, "preference training: 5e-7 to 5e-5, far below supervised fine-tuning")
            } else if a.adapter == Some(AdapterKind::Ia3) {
                // IA3 trains one scale per feature: the IA3 paper (Liu et al. 2022) uses 3e-3.
                (1e-3, 1e-2, "IA3: 1e-3 to 1e-2")
            } else if matches!(a.adapter, Some(AdapterKind::PromptTuning | AdapterKind::PrefixTuning)) {
                (1e-3, 3e-1, "prompt and prefix tuning: 1e-3 to 3e-1; peft's examples use 3e-2")
            } else if a.adapter == Some(AdapterKind::Bottleneck) {
                // AdapterHub's examples train bottleneck adapters at 1e-4 (Pfeiffer et al.) to 1e-3.
                (1e-4, 1e-3, "bottleneck adapters: 1e-4 to 1e-3")
            } else if a.adapter.is_some() {
                (1e-4, 5e-4, "LoRA: 1e-4 to 5e-4")
            } else {
                (1e-5, 5e-5, "full fine-tuning: 1e-5 to 5e-5, about 10× below LoRA")
            };
            if lr < low * 0.999_999 || lr > high * 1.000_001 {
                let help = if c.training.rl.is_some() {
                    "DPO recipes for 7B+ models use about 5e-7 (full) to 5e-6 (LoRA); tiny models need more"
                } else {
                    "the presets use 2e-4 for LoRA/QLoRA and 2e-5 for full fine-tuning"
                };
                self.warn(
                    "table-learning-rate",
                    format!("learning_rate {lr:e} is outside the recommended range ({what})"),
                    &["learning_rate"],
                    help,
                );
            }
        }
        if c.training.micro_batch_size > 16 {
            self.warn(
                "table-micro-batch",
                format!("micro_batch_size {} is above the recommended 4–16", c.training.micro_batch_size),
                &["micro_batch_size"],
                "raise gradient_accumulation_steps instead for a larger effective batch",
            );
        }
        // Preference training runs 1–3 epochs (DPO overfits pairs quickly); supervised 3–10.
        let (fewest, most) = if c.training.rl.is_some() { (1.0, 3.0) } else { (3.0, 10.0) };
        if let (Some(epochs), None) = (t.num_epochs, t.max_steps)
            && !(fewest..=most).contains(&epochs)
        {
            self.warn(
                "table-epochs",
                format!("num_epochs {epochs} is outside the recommended {fewest}–{most}"),
                &["num_epochs"],
                "3–10 epochs, with early_stopping_patience to stop when validation loss stalls",
            );
        }
        let seq = c.data.sequence_len;
        if !(512..=2048).contains(&seq) {
            self.warn(
                "table-sequence-len",
                format!("sequence_len {seq} is outside the recommended 512–2048"),
                &["sequence_len"],
                "longer sequences cost memory quadratically in attention and linearly elsewhere",
            );
        }
    }
}

/// The keys only `adapter: prompt_tuning` reads.
const PROMPT_TUNING_ONLY_KEYS: &[&str] = &["prompt_tuning_init", "prompt_tuning_init_text"];
/// The keys only `adapter: prefix_tuning` reads.
const PREFIX_TUNING_ONLY_KEYS: &[&str] = &["prefix_projection", "encoder_hidden_size"];
/// Every key of prompt and prefix tuning.
const VIRTUAL_TOKEN_KEYS: &[&str] = &[
    "num_virtual_tokens",
    "prompt_tuning_init",
    "prompt_tuning_init_text",
    "prefix_projection",
    "encoder_hidden_size",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocationKind {
    Model,
    Dataset,
    LocalOnly,
}

/// `datasets.0.path` -> `datasets[0].path`.
fn display_key(path: &str) -> String {
    crate::recipe::diagnostic::key_path(path.split('.'))
}

/// Why a dataset type Axolotl defines for some preference methods only cannot be read under `rl`
/// (None for a reward model: `reward_model: true`), with the help line; None when it can.
/// Axolotl's `chatml.*` / `llama3.*` types mean unpaired rows under `rl: kto` and pairs under
/// `rl: dpo|ipo|simpo` (each method's module defines some of the names); `chat_template.argilla`
/// is ORPO's.
fn type_not_for_method(d: &DatasetConfig, rl: Option<super::training::RlMethod>) -> Option<(String, String)> {
    use super::string_transforms::{StringTransform, TransformReading};
    use super::training::RlMethod;
    let now = match rl {
        Some(rl) => format!("rl: {rl}"),
        None => "reward_model: true".to_string(),
    };
    match d {
        DatasetConfig::OrpoArgilla(_) if rl != Some(RlMethod::Orpo) => Some((
            format!(
                "Axolotl's ORPO type (prompt_strategies/orpo/chat_template.py), which only `rl: orpo` reads; this \
                 recipe trains `{now}`"
            ),
            "set rl: orpo, or use type: chat_template.default for pairs".to_string(),
        )),
        DatasetConfig::StringTransform(st) => {
            let t = st.transform;
            let markup = t.markup.as_str();
            let defined: Vec<TransformReading> = [TransformReading::Unpaired, TransformReading::Pairs]
                .into_iter()
                .filter(|r| t.defined_for(*r))
                .collect();
            let defined_for = defined
                .iter()
                .map(|r| format!("{} ({}/{markup}.py)", r.methods(), r.module()))
                .collect::<Vec<_>>()
                .join(" and ");
            match rl.and_then(TransformReading::of) {
                Some(reading) if t.defined_for(reading) => None,
                Some(reading) => Some((
                    format!(
                        "which Axolotl defines for {defined_for} only; under `{now}` it reads {}/{markup}.py, which \
                         has no `{}`",
                        reading.module(),
                        t.fields.as_str()
                    ),
                    format!(
                        "under {} use one of {}; or set {}",
                        reading.methods(),
                        StringTransform::names_for(t.markup, reading).join(", "),
                        defined.iter().map(|r| r.methods()).collect::<Vec<_>>().join(" or ")
                    ),
                )),
                None => Some((
                    format!("which Axolotl defines for {defined_for}; `{now}` does not read it"),
                    if rl == Some(RlMethod::Orpo) {
                        "under rl: orpo use type: chat_template.argilla or chat_template.default".to_string()
                    } else {
                        "for a reward model use type: bradley_terry.chat_template or chat_template.default".to_string()
                    },
                )),
            }
        }
        _ => None,
    }
}
