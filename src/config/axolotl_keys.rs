//! Axolotl option names that `recipe` recognises but does not implement.
//!
//! `recipe` reads Axolotl-style YAML recipes strictly: every top-level key
//! must be one that recipe implements itself. Axolotl accepts several hundred
//! more keys, and published Axolotl configs routinely carry many of them,
//! often left empty (`debug:`, `wandb_watch:`) or set to Axolotl's default
//! (`strict: false`). This table lists those keys so that validation can
//! tell "an Axolotl option recipe does not support" (or "an integration that
//! is off") apart from a misspelt key, accept the inert spellings, and
//! point at the nearest native option when there is one.
//!
//! The table holds every top-level key of Axolotl's config schema except the
//! ones recipe supports natively (see `SUPPORTED_BY_RECIPE` in the tests).
//!
//! # Where it comes from
//!
//! Derived by hand from the pydantic schema of
//! [axolotl-ai-cloud/axolotl](https://github.com/axolotl-ai-cloud/axolotl)
//! (Apache-2.0), reading:
//!
//! * `src/axolotl/utils/schemas/config.py` (`AxolotlInputConfig`) at commit
//!   `107c67ae5a236ab458454e8daf3b77a98ce56867`, plus a later revision of the
//!   same file (attention-backend, sample-generation, EAFT, EBFT, DPO-loss and
//!   Trackio/OpenTelemetry keys) and the earlier
//!   `002a637c86864c8acf451757ee45040b5ea5e25f` (`unsloth_*`,
//!   `flash_attn_fuse_qkv`, `eval_table_size`, ... since moved or removed);
//! * the mixins it inherits from: `model.py`, `peft.py` (LoRA, ReLoRA),
//!   `training.py` (hyper-parameters, jagged LR, Dion), `integrations.py`
//!   (W&B, MLflow, Comet, Trackio, OpenTelemetry, LISA, Gradio, Ray),
//!   `multimodal.py` and `deprecated.py` (deprecated and remapped names such
//!   as `model_revision`, `model_config`, `max_packed_sequence_len`);
//! * the common plugin arguments (`integrations/liger/args.py`,
//!   `integrations/cut_cross_entropy/args.py`);
//! * for keys that were removed before the schema existed but still appear in
//!   published example configs: the older
//!   `src/axolotl/utils/config/models/input/v0_4_1/__init__.py`, the option
//!   listing of the old `README.md` / `docs/config.qmd` (`gptq_groupsize`,
//!   `gptq_model_v1`, `load_4bit`, `landmark_attention`, `xpos_rope`,
//!   `lora_out_dir`, `collator_pad_to_longest`, `log_sweep_*`, `debug`, ...)
//!   and `examples/` (`eval_table_max_new_tokens`).
//!
//! Nested sections (`trl`, `vllm`, `peft`, `quantization`, `ebft`,
//! `dynamic_checkpoint`) are listed by their top-level name only.
//!
//! # Inert values
//!
//! [`Inert`] says which values have no effect in Axolotl: its default, or
//! the "off" value of a switch. `Inert::NullOr` holds that value as it would
//! be written in YAML; numbers should be compared numerically (`3` and `3.0`
//! are the same value, `1e-6` and `0.000001` too). "Null" includes an empty
//! value (`key:`) and `~`/`null`.
//!
//! Keys that only tune preprocessing performance with a machine-dependent
//! default (`dataset_processes`, `dataset_num_proc`, `dataloader_num_workers`)
//! have no fixed default to name; like the `is_*_derived_model` hints (recipe reads the family from
//! config.json) they are [`Inert::Any`].

/// How a recipe may carry an Axolotl key that recipe does not implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inert {
    /// Any value: recipe decides this itself (the model family from config.json, worker counts
    /// from the machine), so the key never changes a result.
    Any,
    /// Accepted only when null / empty (e.g. `debug:`).
    Null,
    /// Accepted when null, empty, or `false` (a switch that is off).
    NullOrFalse,
    /// Accepted when null or equal to this YAML scalar (Axolotl's default), e.g. "1" or "linear".
    NullOr(&'static str),
}

/// Why recipe does not act on an Axolotl key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AxolotlKeyKind {
    /// A training feature recipe does not (yet) implement.
    Unsupported,
    /// An integration (logging service, hub upload, ...) with no effect while empty.
    Integration,
}

/// One Axolotl top-level option that recipe recognises by name only.
#[derive(Debug, Clone, Copy)]
pub struct AxolotlKey {
    pub name: &'static str,
    pub kind: AxolotlKeyKind,
    pub inert: Inert,
    /// The nearest option recipe does support, as a short hint, e.g. Some("use `bf16` instead")
    /// for bfloat16. None where recipe runs nothing like it.
    pub alternative: Option<&'static str>,
}

/// Sorted by name (a unit test in this file checks it), so lookups can binary-search.
#[rustfmt::skip]
pub static AXOLOTL_KEYS: &[AxolotlKey] = &[
    AxolotlKey { name: "accelerator_config", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "adam_beta3", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "adam_epsilon2", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "added_tokens_overrides", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: Some("use `special_tokens` / `tokens` instead") },
    AxolotlKey { name: "auto_find_batch_size", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: Some("set `micro_batch_size` instead") },
    AxolotlKey { name: "auto_resume_from_checkpoints", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: Some("use `resume_from_checkpoint` instead") },
    AxolotlKey { name: "axolotl_config_path", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "base_model_ignore_patterns", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "batch_flattening", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: Some("use `sample_packing` instead") },
    AxolotlKey { name: "bench_dataset", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "bench_split", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "bnb_config_kwargs", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: Some("use `bnb_4bit_quant_type` / `bnb_4bit_use_double_quant` / `bnb_4bit_compute_dtype` instead") },
    AxolotlKey { name: "chat_template_kwargs", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: Some("use `chat_template_jinja` instead") },
    AxolotlKey { name: "chunked_cross_entropy", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "chunked_cross_entropy_num_chunks", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "cls_model_config", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "collator_pad_to_longest", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "comet_api_key", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "comet_experiment_config", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "comet_experiment_key", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "comet_mode", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "comet_online", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "comet_project_name", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "comet_workspace", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "context_parallel_size", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("1"), alternative: None },
    AxolotlKey { name: "curriculum_sampling", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: Some("use `shuffle_merged_datasets: false` instead") },
    AxolotlKey { name: "cut_cross_entropy_accum_c_fp32", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "cut_cross_entropy_c_grad_chunk_size", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "dataloader_drop_last", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "dataloader_num_workers", kind: AxolotlKeyKind::Unsupported, inert: Inert::Any, alternative: None },
    AxolotlKey { name: "dataloader_pin_memory", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("true"), alternative: None },
    AxolotlKey { name: "dataloader_prefetch_factor", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "dataset_keep_in_memory", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "dataset_num_proc", kind: AxolotlKeyKind::Unsupported, inert: Inert::Any, alternative: None },
    AxolotlKey { name: "dataset_processes", kind: AxolotlKeyKind::Unsupported, inert: Inert::Any, alternative: None },
    AxolotlKey { name: "dataset_shard_idx", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "dataset_shard_num", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "ddp", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "debug", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "deepcompile", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "default_system_message", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: Some("use `chat_template_jinja` instead") },
    AxolotlKey { name: "device", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "device_map", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "diffusion", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "dion_lr", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "dion_momentum", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "dion_rank_fraction", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("1.0"), alternative: None },
    AxolotlKey { name: "dion_rank_multiple_of", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("1"), alternative: None },
    AxolotlKey { name: "do_bench_eval", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "dp_replicate_size", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: Some("use `fsdp_config` instead") },
    AxolotlKey { name: "dp_shard_size", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: Some("use `fsdp_config` instead") },
    AxolotlKey { name: "dpo_generate_during_eval", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "dpo_label_smoothing", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: Some("TRL 1.16's sigmoid DPO has no label smoothing (only its robust, aot and exo_pair losses, which recipe does not build); remove it") },
    AxolotlKey { name: "dpo_loss_type", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "dpo_loss_weights", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "dpo_norm_loss", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: Some("removed from Axolotl with TRL 0.29; remove it") },
    AxolotlKey { name: "dpo_padding_free", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "dpo_use_liger_kernel", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "dpo_use_logits_to_keep", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "dsv4_fp4_grouped_mode", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "dynamic_checkpoint", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "eaft_alpha", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("1.0"), alternative: None },
    AxolotlKey { name: "eaft_k", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("20"), alternative: None },
    AxolotlKey { name: "ebft", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "embedding_lr", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "embedding_lr_scale", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "embeddings_skip_upcast", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "eval_sequence_len", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: Some("use `sequence_len` instead") },
    AxolotlKey { name: "eval_strategy", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: Some("use `eval_steps` / `evals_per_epoch` instead") },
    AxolotlKey { name: "eval_table_max_new_tokens", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("128"), alternative: None },
    AxolotlKey { name: "eval_table_size", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("0"), alternative: None },
    AxolotlKey { name: "evaluation_strategy", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: Some("use `eval_steps` / `evals_per_epoch` instead") },
    AxolotlKey { name: "experimental_skip_move_to_device", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("true"), alternative: None },
    AxolotlKey { name: "expert_parallel_num_nvl_bytes", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "expert_parallel_size", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("1"), alternative: None },
    AxolotlKey { name: "expert_parallel_token_capacity", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "experts_implementation", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "fix_untrained_tokens", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "flash_attn_cross_entropy", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "flash_attn_fuse_qkv", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "flash_attn_rms_norm", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "flash_optimum", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "float16", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: Some("use `fp16` instead") },
    AxolotlKey { name: "float32", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "fp8", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "fp8_enable_fsdp_float8_all_gather", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "freeze_mm_modules", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "fsdp_final_state_dict_type", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: Some("use `fsdp_config` instead") },
    AxolotlKey { name: "gc_steps", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("0"), alternative: None },
    AxolotlKey { name: "gemma4_hybrid_attn_impl", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "generate_samples", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "generation_do_sample", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("true"), alternative: None },
    AxolotlKey { name: "generation_max_new_tokens", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("50"), alternative: None },
    AxolotlKey { name: "generation_prompt_ratio", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("0.5"), alternative: None },
    AxolotlKey { name: "generation_temperature", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("0.7"), alternative: None },
    AxolotlKey { name: "generation_top_k", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "generation_top_p", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "gptq", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: Some("use `load_in_4bit` instead") },
    AxolotlKey { name: "gptq_disable_exllama", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: Some("use `load_in_4bit` instead") },
    AxolotlKey { name: "gptq_groupsize", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: Some("use `load_in_4bit` instead") },
    AxolotlKey { name: "gptq_model_v1", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: Some("use `load_in_4bit` instead") },
    AxolotlKey { name: "gpu_memory_limit", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "gradio_max_new_tokens", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "gradio_server_name", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "gradio_server_port", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "gradio_share", kind: AxolotlKeyKind::Integration, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "gradio_temperature", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "gradio_title", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "greater_is_better", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "group_by_length", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "heads_k_stride", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "hf_use_auth_token", kind: AxolotlKeyKind::Integration, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "hub_model_id", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "hub_revision", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "hub_strategy", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "image_resize_algorithm", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "image_size", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "include_tkps", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("true"), alternative: None },
    AxolotlKey { name: "include_tokens_per_second", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "is_falcon_derived_model", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: Some("use `model_type` instead") },
    AxolotlKey { name: "is_llama_derived_model", kind: AxolotlKeyKind::Unsupported, inert: Inert::Any, alternative: Some("use `model_type` instead") },
    AxolotlKey { name: "is_mistral_derived_model", kind: AxolotlKeyKind::Unsupported, inert: Inert::Any, alternative: Some("use `model_type` instead") },
    AxolotlKey { name: "is_preprocess", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "is_qwen_derived_model", kind: AxolotlKeyKind::Unsupported, inert: Inert::Any, alternative: Some("use `model_type` instead") },
    AxolotlKey { name: "jagged_restart_anneal_steps", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "jagged_restart_steps", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "jagged_restart_warmup_steps", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "landmark_attention", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "layer_offloading", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "llama4_linearized_experts", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "llmcompressor", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "load_4bit", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: Some("use `load_in_4bit` instead") },
    AxolotlKey { name: "load_best_model_at_end", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "local_rank", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "log_sweep_max_lr", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "log_sweep_min_lr", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "lora_on_cpu", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "lora_out_dir", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: Some("use `output_dir` instead") },
    AxolotlKey { name: "loraplus_lr_embedding", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("1e-6"), alternative: None },
    AxolotlKey { name: "loraplus_lr_ratio", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "low_cpu_mem_usage", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "lr_div_factor", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "lr_groups", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: Some("use `learning_rate` instead") },
    AxolotlKey { name: "lr_quadratic_warmup", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "lr_scheduler_kwargs", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: Some("use `lr_scheduler` / `cosine_min_lr_ratio` instead") },
    AxolotlKey { name: "max_memory", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "max_packed_sequence_len", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: Some("use `sample_packing` + `sequence_len` instead") },
    AxolotlKey { name: "max_prompt_len", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("512"), alternative: None },
    AxolotlKey { name: "mean_resizing_embeddings", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "merge_lora", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "merge_method", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("memory_efficient"), alternative: None },
    AxolotlKey { name: "metric_for_best_model", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "min_sample_len", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "model_config_type", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: Some("use `model_type` instead") },
    AxolotlKey { name: "model_kwargs", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "model_quantization_config", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "model_quantization_config_kwargs", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "model_revision", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: Some("use `revision_of_model` instead") },
    AxolotlKey { name: "multipack_real_batches", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "neftune_noise_alpha", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "noisy_embedding_alpha", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "num_dataset_shards_to_save", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "num_generation_samples", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("3"), alternative: None },
    AxolotlKey { name: "nvfp4_merge_aware", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "optim_args", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: Some("use `adam_beta1` / `adam_beta2` / `adam_epsilon` instead") },
    AxolotlKey { name: "optim_target_modules", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "overrides_of_model_kwargs", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "pad_to_multiple_of", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: Some("use `pad_to_sequence_len` instead") },
    AxolotlKey { name: "peft", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "peft_autocast_adapter_dtype", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "peft_ensure_weight_tying", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "peft_init_lora_weights", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("true"), alternative: None },
    AxolotlKey { name: "peft_layer_replication", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "peft_layers_pattern", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "peft_layers_to_transform", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "peft_trainable_token_indices", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: Some("use `lora_modules_to_save` instead") },
    AxolotlKey { name: "pose_max_context_len", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "pose_num_chunks", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "pose_split_on_token_ids", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "preprocess_iterable", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "pretrain_multipack_attn", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("true"), alternative: None },
    AxolotlKey { name: "process_reward_model", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "processor_type", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "profiler_steps", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "profiler_steps_start", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("0"), alternative: None },
    AxolotlKey { name: "push_dataset_to_hub", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "push_to_hub_model_id", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "qlora_sharded_model_loading", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "quantization", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "random_init_weights", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "ray_num_workers", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("1"), alternative: None },
    AxolotlKey { name: "ray_run_name", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "reinit_weights", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "relora", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "relora_anneal_steps", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "relora_cpu_offload", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "relora_prune_method", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("magnitude"), alternative: None },
    AxolotlKey { name: "relora_prune_ratio", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "relora_steps", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "relora_warmup_steps", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "resources_per_worker", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "ring_attn_func", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "rl_adapter_ref_model", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "rope_scaling", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "rpo_alpha", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: Some("removed from TRL in 0.29 and from Axolotl; remove it") },
    AxolotlKey { name: "s2_attention", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: Some("use `attn_implementation` instead") },
    AxolotlKey { name: "sage_attention", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: Some("use `attn_implementation` instead") },
    AxolotlKey { name: "sample_packing_bin_size", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("200"), alternative: None },
    AxolotlKey { name: "sample_packing_eff_est", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "sample_packing_group_size", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("100000"), alternative: None },
    AxolotlKey { name: "sample_packing_mp_start_method", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "sample_packing_sequentially", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "save_first_step", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "save_safetensors", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("true"), alternative: None },
    AxolotlKey { name: "scaling_softmax", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "scaling_softmax_bias", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "scaling_softmax_factor", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "sequence_parallel_degree", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("1"), alternative: None },
    AxolotlKey { name: "shrink_embeddings", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "shuffle_before_merging_datasets", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "skip_prepare_dataset", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "strict", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "swanlab_api_host", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "swanlab_api_key", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "swanlab_completion_log_interval", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "swanlab_completion_max_buffer", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "swanlab_description", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "swanlab_experiment_name", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "swanlab_lark_secret", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "swanlab_lark_webhook_url", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "swanlab_log_completions", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "swanlab_log_model", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "swanlab_mode", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "swanlab_project", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "swanlab_web_host", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "swanlab_workspace", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "tensor_parallel_size", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("1"), alternative: None },
    AxolotlKey { name: "tiled_mlp", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "tiled_mlp_num_shards", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "tiled_mlp_use_original_mlp", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("true"), alternative: None },
    AxolotlKey { name: "tokenizer_legacy", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "tokenizer_save_jinja_files", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("true"), alternative: None },
    AxolotlKey { name: "tokenizer_use_fast", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOr("true"), alternative: None },
    AxolotlKey { name: "tokenizer_use_mistral_common", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "torch_compile_backend", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "torch_dtype", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: Some("use `bf16` / `fp16` instead") },
    AxolotlKey { name: "torchdistx_path", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "total_num_tokens", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "total_supervised_tokens", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "trackio_project_name", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "trackio_run_name", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "trackio_space_id", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "trainer_cls", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "trl", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "type_of_model", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: Some("use `model_type` instead") },
    AxolotlKey { name: "unsloth_cross_entropy_loss", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "unsloth_lora_mlp", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "unsloth_lora_o", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "unsloth_lora_qkv", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "unsloth_rms_norm", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "unsloth_rope", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "use_comet", kind: AxolotlKeyKind::Integration, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "use_dsv4_kernels", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "use_eaft", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "use_glm_dsa_kernels", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "use_kernels", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "use_onebitllms", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "use_pose", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "use_ray", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "use_scattermoe", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "use_sonicmoe", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "use_swanlab", kind: AxolotlKeyKind::Integration, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "use_trackio", kind: AxolotlKeyKind::Integration, inert: Inert::NullOrFalse, alternative: None },
    AxolotlKey { name: "vllm", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "wandb_watch", kind: AxolotlKeyKind::Integration, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "world_size", kind: AxolotlKeyKind::Unsupported, inert: Inert::Null, alternative: None },
    AxolotlKey { name: "xpos_rope", kind: AxolotlKeyKind::Unsupported, inert: Inert::NullOrFalse, alternative: None },
];

/// Finds `name` in [`AXOLOTL_KEYS`] (exact, case-sensitive match).
pub fn lookup(name: &str) -> Option<&'static AxolotlKey> {
    AXOLOTL_KEYS.binary_search_by(|key| key.name.cmp(name)).ok().map(|index| &AXOLOTL_KEYS[index])
}

/// Values of Axolotl's closed sets that recipe does not implement: (key, what the key names, values).
const UNSUPPORTED_VALUES: &[(&str, &str, &[&str])] = &[
    (
        "optimizer",
        "optimizer",
        &[
            "adamw_hf",
            "adamw_anyprecision",
            "adamw_apex_fused",
            "adamw_torch_npu_fused",
            "adagrad",
            "ademamix",
            "ademamix_8bit",
            "adopt_adamw",
            "ao_adamw_4bit",
            "ao_adamw_8bit",
            "ao_adamw_fp8",
            "came_pytorch",
            "dion",
            "galore_adafactor",
            "galore_adamw",
            "galore_adamw_8bit",
            "grokadamw",
            "lomo",
            "adalomo",
            "optimi_adamw",
            "paged_ademamix_8bit",
            "paged_ademamix_32bit",
            "rmsprop",
            "rmsprop_bnb",
            "schedule_free_adamw",
            "schedule_free_sgd",
        ],
    ),
    (
        "lr_scheduler",
        "learning-rate scheduler",
        &[
            "one_cycle",
            "rex",
            "log_sweep",
            "cosine_with_restarts",
            "polynomial",
            "inverse_sqrt",
            "reduce_lr_on_plateau",
            "cosine_with_min_lr",
            "warmup_stable_decay",
            "jagged",
        ],
    ),
    (
        "plugins",
        "plugin",
        &[
            "axolotl.integrations.kernels.KernelsPlugin",
            "axolotl.integrations.swanlab.SwanLabPlugin",
            "axolotl.integrations.expert_parallel.ExpertParallelPlugin",
            "axolotl.integrations.diffusion.DiffusionPlugin",
            "axolotl.integrations.llm_compressor.LLMCompressorPlugin",
            "axolotl.integrations.grokfast.GrokfastPlugin",
            "axolotl.integrations.lm_eval.LMEvalPlugin",
            "axolotl.integrations.spectrum.SpectrumPlugin",
            "axolotl.integrations.kd.KDPlugin",
            "axolotl.integrations.densemixer.DenseMixerPlugin",
            "axolotl.integrations.hatchery.HatcheryPlugin",
            "axolotl.integrations.mora.MoraPlugin",
            "axolotl.integrations.nemo_gym.NemoGymPlugin",
        ],
    ),
    (
        "model_type",
        "model class",
        &[
            "AutoModelForImageTextToText",
            "AutoModelForTokenClassification",
            "AutoModelForVision2Seq",
            "Gemma3ForConditionalGeneration",
            "GPTNeoXForCausalLM",
            "Llama4ForConditionalGeneration",
            "MambaLMHeadModel",
        ],
    ),
    ("gradient_checkpointing", "gradient-checkpointing mode", &["offload_disk"]),
    // `legacy`: TRL's offloader without streams; `disk`: to files; `hidden_states`: reentrant
    // checkpointing of the layer inputs (ALST). recipe builds `true`.
    ("activation_offloading", "activation-offloading mode", &["legacy", "disk", "hidden_states"]),
    ("save_strategy", "checkpoint strategy", &["best"]),
    ("rl", "preference-training method", &["grpo", "gdpo", "ebft"]),
    ("adapter", "adapter", &["llama-adapter", "loha", "lokr", "vera", "oft", "boft", "lora-ga"]),
    (
        "type",
        "dataset type",
        &[
            "sharegpt",
            "oasst",
            "pygmalion",
            "gpteacher",
            "reflection",
            "metharme",
            "orcamini",
            "context_qa",
            "explainchoice",
            "concisechoice",
            "summarizetldr",
            "jeopardy",
            "stepwise_supervised",
            "alpaca_w_system.load_open_orca",
        ],
    ),
];

/// For a value of one of Axolotl's closed sets that recipe lacks (`optimizer: lion_8bit`), what
/// the key names (`optimizer`), so the error can say so by name.
pub fn unsupported_value(key: &str, value: &str) -> Option<&'static str> {
    // A hub kernel repository (`kernels-community/flash-attn3`) is code fetched at run time.
    if key == "attn_implementation" && value.contains('/') {
        return Some("attention kernel from the hub");
    }
    // A dotted dataset type (`zephyr.nectar`, `ebft_opencode.transform`) names a Python
    // function of Axolotl's that builds the prompt.
    if key == "type" && value.contains('.') {
        return Some("dataset type (a Python prompt function)");
    }
    // `alpaca:chat`: Axolotl's variant of a prompt style.
    if key == "type" && value.contains(':') {
        return Some("dataset type variant");
    }
    UNSUPPORTED_VALUES.iter().find_map(|(k, what, values)| (*k == key && values.contains(&value)).then_some(*what))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The top-level keys recipe implements natively; none may be in the table.
    const SUPPORTED_BY_RECIPE: &[&str] = &[
        "base_model",
        "base_model_config",
        "revision_of_model",
        "tokenizer_config",
        "model_type",
        "tokenizer_type",
        "trust_remote_code",
        "load_in_8bit",
        "load_in_4bit",
        "qat",
        "bnb_4bit_quant_type",
        "bnb_4bit_use_double_quant",
        "bnb_4bit_compute_dtype",
        "quantize_moe_experts",
        "adapter",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "lora_target_modules",
        "lora_target_parameters",
        "lora_target_linear",
        "lora_modules_to_save",
        "lora_fan_in_fan_out",
        "peft_use_dora",
        "peft_use_rslora",
        "lora_model_dir",
        "lisa_n_layers",
        "lisa_step_interval",
        "lisa_layers_attribute",
        "datasets",
        "test_datasets",
        "dataset_prepared_path",
        "val_set_size",
        "shuffle_merged_datasets",
        "pretraining_dataset",
        "pretraining_sample_concatenation",
        "streaming_multipack_buffer_size",
        "pretrain_multipack_buffer_size",
        "streaming",
        "chat_template",
        "chat_template_jinja",
        "special_tokens",
        "tokens",
        "sequence_len",
        "sample_packing",
        "eval_sample_packing",
        "pad_to_sequence_len",
        "train_on_inputs",
        "output_dir",
        "micro_batch_size",
        "gradient_accumulation_steps",
        "batch_size",
        "eval_batch_size",
        "num_epochs",
        "max_steps",
        "learning_rate",
        "lr_scheduler",
        "warmup_steps",
        "warmup_ratio",
        "cosine_min_lr_ratio",
        "optimizer",
        "weight_decay",
        "adam_beta1",
        "adam_beta2",
        "adam_epsilon",
        "max_grad_norm",
        "bf16",
        "fp16",
        "tf32",
        "gradient_checkpointing",
        "activation_offloading",
        "flash_attention",
        "loss_watchdog_threshold",
        "loss_watchdog_patience",
        "save_only_model",
        "save_strategy",
        "eot_tokens",
        "cut_cross_entropy",
        "eager_attention",
        "flex_attention",
        "fsdp_version",
        "gradient_checkpointing_kwargs",
        "liger_cross_entropy",
        "liger_fused_linear_cross_entropy",
        "liger_glu_activation",
        "liger_layer_norm",
        "liger_rms_norm",
        "liger_rope",
        "liger_swiglu",
        "plugins",
        "remove_unused_columns",
        "sdp_attention",
        "torch_compile",
        "xformers_attention",
        "liger_rms_norm_gated",
        "lora_mlp_kernel",
        "lora_qkv_kernel",
        "lora_o_kernel",
        "lora_embedding_kernel",
        "attn_implementation",
        "torch_compile_mode",
        "flex_attn_compile_kwargs",
        "fused_attn_kernel",
        "flash_attn_fuse_mlp",
        "rl_beta",
        "bfloat16",
        "resize_token_embeddings_to_32x",
        "logging_steps",
        "eval_steps",
        "evals_per_epoch",
        "save_steps",
        "saves_per_epoch",
        "save_total_limit",
        "early_stopping_patience",
        "do_causal_lm_eval",
        "eval_causal_lm_metrics",
        "eval_max_new_tokens",
        "resume_from_checkpoint",
        "overwrite_output_dir",
        "seed",
        "rl",
        "dpo_beta",
        "precompute_ref_log_probs",
        "orpo_alpha",
        "simpo_gamma",
        "cpo_alpha",
        "kto_desirable_weight",
        "kto_undesirable_weight",
        "dpo_use_weighting",
        "reward_model",
        "center_rewards_coefficient",
        "num_labels",
        "fsdp",
        "fsdp_config",
        "ddp_timeout",
        "ddp_bucket_cap_mb",
        "ddp_broadcast_buffers",
        "ddp_find_unused_parameters",
        "use_tensorboard",
        "logging_dir",
        "use_mlflow",
        "mlflow_tracking_uri",
        "mlflow_experiment_name",
        "mlflow_run_name",
        "hf_mlflow_log_artifacts",
        "use_wandb",
        "wandb_project",
        "wandb_entity",
        "wandb_name",
        "wandb_run_id",
        "wandb_mode",
        "wandb_log_model",
        "use_otel_metrics",
        "otel_metrics_host",
        "otel_metrics_port",
    ];

    #[test]
    fn table_is_sorted_without_duplicates() {
        for pair in AXOLOTL_KEYS.windows(2) {
            assert!(
                pair[0].name < pair[1].name,
                "AXOLOTL_KEYS out of order or duplicated at `{}` / `{}`",
                pair[0].name,
                pair[1].name
            );
        }
    }

    #[test]
    fn table_excludes_native_keys() {
        for name in SUPPORTED_BY_RECIPE {
            assert!(lookup(name).is_none(), "`{name}` is supported by recipe and must not be in AXOLOTL_KEYS");
            assert!(
                AXOLOTL_KEYS.iter().all(|key| key.name != *name),
                "`{name}` is supported by recipe and must not be in AXOLOTL_KEYS"
            );
        }
    }

    #[test]
    fn names_and_hints_are_well_formed() {
        for key in AXOLOTL_KEYS {
            assert!(
                !key.name.is_empty()
                    && key.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "bad key name `{}`",
                key.name
            );
            if let Inert::NullOr(value) = key.inert {
                assert!(!value.is_empty(), "`{}` has an empty inert value", key.name);
            }
            if let Some(hint) = key.alternative {
                assert!(!hint.is_empty(), "`{}` has an empty hint", key.name);
            }
        }
    }

    #[test]
    fn lookup_finds_every_entry_and_nothing_else() {
        for key in AXOLOTL_KEYS {
            assert_eq!(lookup(key.name).map(|k| k.name), Some(key.name));
        }
        assert!(lookup("").is_none());
        assert!(lookup("deepspeeed").is_none());
        assert!(lookup("Deepspeed").is_none());
        assert!(lookup("zzz").is_none());
    }

    #[test]
    fn spot_checks() {
        // A recipe key now (config/deepspeed.rs), so not in the table.
        assert!(lookup("deepspeed").is_none());
        let deepcompile = lookup("deepcompile").unwrap();
        assert_eq!(deepcompile.kind, AxolotlKeyKind::Unsupported);
        assert_eq!(deepcompile.inert, Inert::NullOrFalse);

        let watch = lookup("wandb_watch").unwrap();
        assert_eq!(watch.kind, AxolotlKeyKind::Integration);
        assert_eq!(watch.inert, Inert::Null);

        assert_eq!(lookup("strict").unwrap().inert, Inert::NullOrFalse);
        assert_eq!(lookup("hf_use_auth_token").unwrap().inert, Inert::NullOrFalse);
        assert_eq!(lookup("local_rank").unwrap().inert, Inert::Null);
        assert_eq!(lookup("eval_table_size").unwrap().inert, Inert::NullOr("0"));
        assert!(lookup("max_packed_sequence_len").unwrap().alternative.is_some());
    }

    #[test]
    fn table_is_reasonably_complete() {
        assert!(AXOLOTL_KEYS.len() >= 150, "only {} keys", AXOLOTL_KEYS.len());
    }
}
