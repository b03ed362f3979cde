//! Cross-field rules: every check that involves more than one key, or the file system, in one
//! place. Each rule has a stable id and points at every key it involves. Errors follow Axolotl's
//! own validators; warnings encode the hyperparameter table the presets are built from (see
//! recipe/presets.rs) and never fail validation unless `--deny-warnings` is given.

use super::Config;
use super::adapter::{AdapterKind, ModuleList};
use super::chat_template::ChatTemplateName;
use super::datasets::DatasetConfig;
use super::location::{Location, normalize, resolve_location};
use super::training::Switch;
use crate::recipe::check::Locator;
use crate::recipe::diagnostic::Diagnostic;
use crate::recipe::source::Span;

/// Runs every rule on a config. `refused` names top-level keys whose value failed the schema (the
/// config holds their defaults instead): rules that involve them say nothing.
pub fn check(config: &Config, at: &Locator, refused: &[String]) -> Vec<Diagnostic> {
    let mut out = Rules { at, refused, out: Vec::new() };
    out.required(config);
    out.quantization(config);
    out.adapter_keys(config);
    out.exclusive_pairs(config);
    out.evaluation(config);
    out.chat_template(config);
    out.preference(config);
    out.kernels(config);
    out.forgetting(config);
    out.distributed(config);
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
        if c.data.datasets.is_empty() {
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
        if c.adapter.adapter.is_some() {
            return;
        }
        // Every key of the adapter section but `adapter` itself.
        let schema = schemars::schema_for!(super::AdapterConfig);
        let lora_keys: Vec<&str> = schema
            .get("properties")
            .and_then(serde_json::Value::as_object)
            .map(|props| props.keys().map(String::as_str).filter(|k| *k != "adapter").collect())
            .unwrap_or_default();
        for key in lora_keys {
            let Some(entry) = self.at.entry(key) else {
                continue;
            };
            // `false` switches are harmless without an adapter.
            if matches!(entry.value.value, crate::recipe::yaml::Value::Bool(false)) {
                continue;
            }
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
                } else if matches!(d, DatasetConfig::Kto(_)) && t.rl != Some(super::training::RlMethod::Kto) {
                    self.error(
                        "kto-type-needs-kto",
                        format!(
                            "{list}[{i}] has type `{}`, one of Axolotl's KTO formats (one answer and a label per \
                             row), which only `rl: kto` reads",
                            d.type_name()
                        ),
                        &[&key, if t.rl.is_some() { "rl" } else { "reward_model" }],
                        "set rl: kto, or use type: chat_template.default (pairs) for other methods",
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
        match c.model.num_labels {
            Some(n) if !t.reward_model => self.error(
                "num-labels-without-reward-model",
                format!("`num_labels: {n}` sizes a sequence-classification head, which only reward models have"),
                &["num_labels"],
                "set reward_model: true, or remove num_labels",
            ),
            Some(n) if n != 1 => self.error(
                "reward-model-num-labels",
                format!("`num_labels: {n}`: a reward model has one output, the reward"),
                &["num_labels"],
                "set num_labels: 1 (or leave it out)",
            ),
            _ => {}
        }
    }

    /// Attention requests recipe runs with another algorithm (the same math): a warning, so the
    /// recipe's author knows.
    fn kernels(&mut self, c: &Config) {
        use super::kernels::AttnImplementation;
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

    /// Experiment tracking (config/tracking.rs): each tracker's keys need its switch, the MLflow
    /// server is an http(s) URL, and what is not built (W&B online, model artifacts) is refused.
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
        let a = &c.adapter;
        if a.adapter.is_some()
            && let Some(list) = &a.lora_target_modules
        {
            for (i, name) in list.names().into_iter().enumerate().filter(|(_, n)| *n == "embed_tokens") {
                let key = match list {
                    ModuleList::One(_) => "lora_target_modules".to_string(),
                    ModuleList::Many(_) => format!("lora_target_modules.{i}"),
                };
                self.error(
                    "lora-embed-tokens-not-built",
                    format!("LoRA on `{name}` is not built into `recipe run` yet"),
                    &[&key],
                    "train it in full with lora_modules_to_save: [embed_tokens], or target linear layers only",
                );
            }
        }
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
        let sharding = c.distributed.sharding();
        if !sharding.is_empty() {
            let list: Vec<&str> = sharding.iter().map(|o| o.as_str()).collect();
            let from = if c.distributed.fsdp.is_empty() { " (from fsdp_config)" } else { "" };
            self.warn(
                "sharding-not-built",
                format!(
                    "`fsdp: [{}]`{from}: sharded training is not built into `recipe run` yet, so it refuses this \
                     recipe (`recipe plan` still lays it out)",
                    list.join(", ")
                ),
                &["fsdp", "fsdp_config"],
                "remove fsdp (and fsdp_config) to train data-parallel (DDP) across GPUs",
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
        if a.adapter.is_some() {
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
