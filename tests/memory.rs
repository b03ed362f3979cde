//! The memory model against published figures (the formulas are in src/plan/memory.rs), and the
//! multi-GPU layout arithmetic.

use recipe::plan::{PlanOptions, compile, memory::GIB, shard::Strategy};
use std::path::Path;

fn plan(path: &str, overrides: &[&str], options: PlanOptions) -> recipe::plan::Plan {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let loaded = recipe::recipe::load(Path::new(path), &overrides);
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    compile(&loaded, options).unwrap()
}

fn on_gpu(gib: u64) -> PlanOptions {
    PlanOptions { gpu_memory: Some(gib * GIB), ..PlanOptions::default() }
}

#[test]
fn llama2_13b_qlora_fits_one_24gb_gpu_at_sequence_2048() {
    let p = plan("recipes/llama2-13b-qlora.yaml", &[], on_gpu(24));
    assert_eq!(p.batch.sequence_len, 2048);
    assert!(p.memory.activations_with_checkpointing < p.memory.activations_without_checkpointing);
    assert_eq!(p.memory.fits, Some(true), "{:#?}", p.memory);
}

#[test]
fn qlora_65b_fits_one_48gb_gpu() {
    // The QLoRA paper (Dettmers et al. 2023): LLaMA-65B fine-tuned on a single 48 GB GPU.
    let p = plan("recipes/llama-65b-qlora-48gb.yaml", &[], on_gpu(48));
    assert_eq!(p.model.parameters.total, 65_285_660_672);
    assert_eq!(p.memory.fits, Some(true), "{:#?}", p.memory);
}

#[test]
fn llama2_13b_full_bf16_does_not_fit_24gb_and_the_plan_says_what_would() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("full.yaml");
    std::fs::write(
        &recipe,
        "preset: full-finetune\nbase_model: meta-llama/Llama-2-13b-hf\nbf16: true\n\
         datasets: [{path: yahma/alpaca-cleaned, type: alpaca}]\n",
    )
    .unwrap();
    let p = plan(recipe.to_str().unwrap(), &[], on_gpu(24));
    assert_eq!(p.memory.fits, Some(false));
    assert!(p.memory.margin_bytes.unwrap() < 0);
    let qlora = p.memory.suggestions.iter().find(|s| s.change.contains("qlora")).expect("4-bit suggested");
    assert!(qlora.fits, "{:#?}", p.memory.suggestions);
    assert!(p.memory.suggestions.iter().any(|s| s.change.contains("GPUs") && s.fits));
}

#[test]
fn ddp_replicates_and_all_reduces_the_trainable_gradients() {
    let options = PlanOptions { world_size: 4, ..PlanOptions::default() };
    let p = plan("recipes/llama2-7b-lora.yaml", &[], options);
    assert_eq!(p.layout.strategy, Strategy::Ddp);
    assert_eq!(p.layout.ranks.len(), 4);
    let trainable = p.adapter.trainable_parameters;
    assert_eq!(p.layout.per_step.all_reduce, trainable * 4);
    assert!(p.layout.ranks.iter().all(|r| r.gradients == trainable));
    assert_eq!(p.batch.global_batch_sequences, 4 * 4 * 4);
}

#[test]
fn full_shard_splits_parameters_gradients_and_states_across_ranks() {
    let single = plan("recipes/qwen25-0.5b-full.yaml", &[], PlanOptions::default());
    let options = PlanOptions { world_size: 8, nodes: 2, ..PlanOptions::default() };
    let sharded = plan("recipes/qwen25-0.5b-full.yaml", &["fsdp=[full_shard, auto_wrap]"], options);
    assert_eq!(sharded.layout.strategy, Strategy::FullShard);
    assert_eq!(sharded.layout.processes_per_node, 4);
    let total = sharded.model.parameters.total;
    let rank = &sharded.layout.ranks[5];
    assert_eq!((rank.node, rank.local_rank, rank.shard_index), (1, 1, 5));
    // Every unit padded to a multiple of 8, then split: at most 7 padding elements per unit.
    let units = sharded.layout.units.len() as u64;
    assert!(rank.parameters >= total / 8 && rank.parameters <= total / 8 + units);
    assert_eq!(rank.gradients, rank.parameters, "full fine-tuning: every parameter trains");
    let state = |p: &recipe::plan::Plan| p.memory.items.iter().find(|i| i.name == "optimizer states").unwrap().bytes;
    assert_eq!(state(&sharded), state(&single).div_ceil(8));
    let hybrid = plan("recipes/qwen25-0.5b-full.yaml", &["fsdp=[hybrid_shard, auto_wrap]"], options);
    assert_eq!(hybrid.layout.shard_group_size, 4);
    assert!(hybrid.layout.per_step.all_reduce > 0, "gradient shards all-reduced across nodes");
}
