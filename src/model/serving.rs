//! Several adapters over one base, switched without reloading or copying it (peft's
//! `load_adapter` / `set_adapter`). The base is loaded once; each attached adapter's tensors (its
//! LoRA pairs, DoRA magnitudes, IA3 vectors, the embedding's LoRA and modules_to_save copies) are
//! held apart, by name, and switching moves one set into the layers, where `Linear::adapter` is
//! the active adapter as in training.
//! The base weights are never touched: a switch moves a handful of tensor handles per layer.

use super::adapter;
use super::linear::{Adapter, Linear};
use super::llama::{CausalLm, FeedForward, Trainable, layer_linears_mut};
use super::weights::Checkpoint;
use std::collections::BTreeMap;
use std::path::Path;
use tch::Tensor;

/// One adapter's tensors while it is not in the layers.
struct AdapterSet {
    trainable: Trainable,
    /// Each linear's adapter: the decoder layers' linears in order, then the head.
    linears: Vec<Option<Adapter>>,
    /// modules_to_save copies: the embedding, and the head (its trained weight).
    embed_tokens: Option<Tensor>,
    /// LoRA on the embedding (peft's lora.Embedding).
    embed_lora: Option<super::linear::Lora>,
    /// DoRA's magnitude over the embedding's LoRA.
    embed_magnitude: Option<Tensor>,
    lm_head: Option<Tensor>,
    /// Bottleneck adapters, per decoder layer.
    bottleneck: Vec<Option<super::bottleneck::LayerAdapters>>,
    /// LoRA on a mixture of experts' fused experts (gate_up, down), per decoder layer.
    experts: Vec<(Option<super::linear::Lora>, Option<super::linear::Lora>)>,
}

/// A base model with named adapters, one of them (or none) active.
pub struct Adapters {
    pub model: CausalLm,
    parked: BTreeMap<String, AdapterSet>,
    active: Option<String>,
}

fn linears_mut(model: &mut CausalLm) -> impl Iterator<Item = &mut Linear> {
    model.layers.iter_mut().flat_map(layer_linears_mut).chain(std::iter::once(&mut model.lm_head))
}

/// Takes the active adapter out of the layers, leaving the base alone.
fn take(model: &mut CausalLm) -> AdapterSet {
    let linears = linears_mut(model).map(|l| l.adapter.take()).collect();
    let embed_tokens = model.embed_tokens_trained.take();
    let embed_lora = model.embed_lora.take();
    let embed_magnitude = model.embed_magnitude.take();
    let bottleneck = model.layers.iter_mut().map(|l| l.bottleneck.take()).collect();
    let experts = model
        .layers
        .iter_mut()
        .map(|l| match &mut l.mlp {
            FeedForward::Sparse(b) => (b.gate_up_lora.take(), b.down_lora.take()),
            FeedForward::Dense(_) => (None, None),
        })
        .collect();
    let lm_head = model.head_original.take().map(|original| std::mem::replace(&mut model.lm_head.weight, original));
    AdapterSet {
        trainable: std::mem::replace(&mut model.trainable, Trainable::Nothing),
        linears,
        embed_tokens,
        embed_lora,
        embed_magnitude,
        lm_head,
        bottleneck,
        experts,
    }
}

/// Puts `set` into the layers of a model that has no adapter in them.
fn put(model: &mut CausalLm, set: AdapterSet) {
    for (lin, adapter) in linears_mut(model).zip(set.linears) {
        lin.adapter = adapter;
    }
    for (layer, adapters) in model.layers.iter_mut().zip(set.bottleneck) {
        layer.bottleneck = adapters;
    }
    for (layer, (gate_up, down)) in model.layers.iter_mut().zip(set.experts) {
        if let FeedForward::Sparse(b) = &mut layer.mlp {
            (b.gate_up_lora, b.down_lora) = (gate_up, down);
        }
    }
    model.embed_tokens_trained = set.embed_tokens;
    model.embed_lora = set.embed_lora;
    model.embed_magnitude = set.embed_magnitude;
    model.head_original = set.lm_head.map(|trained| std::mem::replace(&mut model.lm_head.weight, trained));
    model.trainable = set.trainable;
}

impl Adapters {
    /// `model` as loaded; the adapter it carries (if any) is named `name`.
    pub fn new(model: CausalLm, name: &str) -> Adapters {
        // A model loaded with an adapter has its adapter as its trainable set.
        let carries = !matches!(model.trainable, Trainable::Nothing | Trainable::Everything);
        Adapters { model, parked: BTreeMap::new(), active: carries.then(|| name.to_string()) }
    }

    /// Every adapter's name, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.parked.keys().map(String::as_str).chain(self.active.as_deref()).collect();
        names.sort_unstable();
        names
    }

    /// The active adapter's name; None: the base alone.
    pub fn active(&self) -> Option<&str> {
        self.active.as_deref()
    }

    /// Loads the peft LoRA / DoRA / IA3 folder `dir` as adapter `name` beside the others (the active one
    /// stays active). Every tensor is checked against the base (names, shapes); errors say which.
    pub fn attach(&mut self, name: &str, dir: &Path) -> Result<(), String> {
        if self.names().contains(&name) {
            return Err(format!("there is already an adapter named `{name}`"));
        }
        if !dir.join("adapter_config.json").is_file() {
            return Err(format!("{}: no adapter_config.json here: not a peft adapter folder", dir.display()));
        }
        let cfg = adapter::read_config(dir)?;
        if cfg.sequence_classification {
            return Err("a reward model's adapter (peft's SEQ_CLS task, a score head) cannot generate text".into());
        }
        let active = take(&mut self.model);
        let loaded = self.model.add_adapters(&cfg.trainable, false).and_then(|()| {
            let weights = Checkpoint::open_files(dir, &[super::bottleneck::weights_path(dir)])?;
            adapter::load_trainable(&self.model, &weights)
        });
        let new = take(&mut self.model);
        put(&mut self.model, active);
        loaded.map_err(|e| match cfg.base_model.as_str() {
            "" => e,
            base => format!("{e} (the adapter's base is `{base}`)"),
        })?;
        self.parked.insert(name.to_string(), new);
        Ok(())
    }

    /// Makes adapter `name` the active one (None: the base alone), moving tensors only.
    pub fn set_adapter(&mut self, name: Option<&str>) -> Result<(), String> {
        if name == self.active.as_deref() {
            return Ok(());
        }
        let incoming = match name {
            Some(n) => Some(
                self.parked
                    .remove(n)
                    .ok_or_else(|| format!("no adapter named `{n}` (attached: {})", self.names().join(", ")))?,
            ),
            None => None,
        };
        let current = take(&mut self.model);
        if let Some(old) = self.active.take() {
            self.parked.insert(old, current);
        }
        if let Some(set) = incoming {
            put(&mut self.model, set);
            self.active = name.map(str::to_string);
        }
        Ok(())
    }
}
