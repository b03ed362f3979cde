//! AdapterHub's bottleneck adapters (`adapters`' `Adapter` module under `SeqBnConfig` = pfeiffer and
//! `DoubleSeqBnConfig` = houlsby) on the Llama family, and their on-disk format.
//!
//! An adapter is `up(act(down(z)))` (down H → d and up d → H, both with bias; scaling 1, no layer
//! norms of its own, no dropout). Where it sits follows adapters' `BottleneckLayer` with no layer norm
//! handed in (Llama's `LlamaDecoderLayerWithAdapters`; Qwen2/Qwen3's hooks on `o_proj`/`down_proj`
//! give the same sums): after a block with output `o` and residual input `x`,
//! - houlsby (`original_ln_before: false`): `x + (A(o) + o)`, after the attention and the feed-forward block;
//! - pfeiffer (`original_ln_before: true`): `x + (A(o + x) + o)`, after the feed-forward block only.
//!
//! Saved as `adapters`' `save_adapter(..., use_safetensors=True)` writes it: `adapter_config.json`
//! (the full config with `model_type`, `hidden_size`, `name`, `version`) and `adapter.safetensors`
//! with tensors `model.layers.N.{attention,output}_adapters.adapters.NAME.adapter_{down.0,up}.{weight,bias}`;
//! `model.load_adapter(dir, use_safetensors=True)` reads it (without `use_safetensors` adapters
//! looks for a pickled `pytorch_adapter.bin`, which recipe never writes).

use super::llama::{CausalLm, Param, Trainable};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The adapter name recipe saves under (adapters puts it in every tensor name and the config's `name`).
pub const NAME: &str = "bottleneck";
/// adapters' weights file with `use_safetensors=True`.
pub const WEIGHTS_FILE: &str = "adapter.safetensors";
/// The `adapters` version whose format recipe writes.
const ADAPTERS_VERSION: &str = "adapters.1.3.0";

/// The activation between the projections, by adapters' `non_linearity` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonLinearity {
    Relu,
    /// `swish` and `silu` (both `nn.SiLU`).
    Silu,
    /// `gelu`: the exact (erf) GELU.
    Gelu,
    /// `gelu_new`: the tanh approximation.
    GeluNew,
    Tanh,
}

impl NonLinearity {
    /// adapters lower-cases the name before looking it up.
    pub fn from_name(name: &str) -> Option<NonLinearity> {
        Some(match name.to_lowercase().as_str() {
            "relu" => NonLinearity::Relu,
            "swish" | "silu" => NonLinearity::Silu,
            "gelu" => NonLinearity::Gelu,
            "gelu_new" => NonLinearity::GeluNew,
            "tanh" => NonLinearity::Tanh,
            _ => return None,
        })
    }

    fn apply(self, x: &Tensor) -> Tensor {
        match self {
            NonLinearity::Relu => x.relu(),
            NonLinearity::Silu => x.silu(),
            NonLinearity::Gelu => x.gelu("none"),
            NonLinearity::GeluNew => x.gelu("tanh"),
            NonLinearity::Tanh => x.tanh(),
        }
    }
}

/// What bottleneck adapters a model gets (from the plan, or read from an adapter folder).
#[derive(Debug, Clone, PartialEq)]
pub struct BottleneckSpec {
    /// The adapter's name in tensor names and the config.
    pub name: String,
    /// After the attention block (adapters' `mh_adapter`).
    pub mh_adapter: bool,
    /// After the feed-forward block (adapters' `output_adapter`).
    pub output_adapter: bool,
    /// The adapter reads the block's output plus its residual (adapters' `original_ln_before`).
    pub original_ln_before: bool,
    /// The bottleneck's width d.
    pub bottleneck_size: i64,
    pub non_linearity: NonLinearity,
    /// As written in the config (adapters' name; lower case).
    pub non_linearity_name: String,
    pub reduction_factor: f64,
}

impl BottleneckSpec {
    pub fn from_plan(b: &crate::plan::bottleneck::BottleneckPlan) -> Result<BottleneckSpec, String> {
        Ok(BottleneckSpec {
            name: NAME.into(),
            mh_adapter: b.mh_adapter,
            output_adapter: b.output_adapter,
            original_ln_before: b.original_ln_before,
            bottleneck_size: b.bottleneck_size as i64,
            non_linearity: NonLinearity::from_name(&b.non_linearity)
                .ok_or_else(|| format!("adapter_non_linearity `{}` is not built", b.non_linearity))?,
            non_linearity_name: b.non_linearity.clone(),
            reduction_factor: b.reduction_factor,
        })
    }
}

/// One adapter: `down` [d, H] + bias [d], `up` [H, d] + bias [H], fp32 masters.
pub struct Bottleneck {
    pub down_weight: Tensor,
    pub down_bias: Tensor,
    pub up_weight: Tensor,
    pub up_bias: Tensor,
    pub non_linearity: NonLinearity,
}

impl Bottleneck {
    /// adapters' default ("bert") init: weights normal(0, 0.02), biases zero.
    fn new(hidden: i64, size: i64, non_linearity: NonLinearity, device: Device) -> Bottleneck {
        let opts = (Kind::Float, device);
        let normal = |shape: [i64; 2]| Tensor::empty(shape, opts).normal_(0.0, 0.02).set_requires_grad(true);
        Bottleneck {
            down_weight: normal([size, hidden]),
            down_bias: Tensor::zeros([size], opts).set_requires_grad(true),
            up_weight: normal([hidden, size]),
            up_bias: Tensor::zeros([hidden], opts).set_requires_grad(true),
            non_linearity,
        }
    }

    /// `up(act(down(z)))` in z's kind (the compute kind), returned in fp32 for the residual stream.
    fn forward(&self, z: &Tensor) -> Tensor {
        let k = z.kind();
        let down = z.linear(&self.down_weight.to_kind(k), Some(self.down_bias.to_kind(k)));
        let up = self.non_linearity.apply(&down).linear(&self.up_weight.to_kind(k), Some(self.up_bias.to_kind(k)));
        up.to_kind(Kind::Float)
    }

    /// (suffix, tensor) as adapters names them inside `…adapters.NAME.`.
    fn tensors(&self) -> [(&'static str, Tensor); 4] {
        [
            ("adapter_down.0.weight", self.down_weight.shallow_clone()),
            ("adapter_down.0.bias", self.down_bias.shallow_clone()),
            ("adapter_up.weight", self.up_weight.shallow_clone()),
            ("adapter_up.bias", self.up_bias.shallow_clone()),
        ]
    }
}

/// One decoder layer's adapters.
pub struct LayerAdapters {
    /// After the attention block (adapters' `attention_adapters`).
    pub attention: Option<Bottleneck>,
    /// After the feed-forward block (adapters' `output_adapters`).
    pub output: Option<Bottleneck>,
    pub original_ln_before: bool,
}

impl LayerAdapters {
    /// The residual stream after the attention block: `x` its input, `o` its output.
    pub fn after_attention(&self, x: &Tensor, o: &Tensor) -> Tensor {
        self.after(self.attention.as_ref(), x, o)
    }

    /// The residual stream after the feed-forward block.
    pub fn after_mlp(&self, x: &Tensor, o: &Tensor) -> Tensor {
        self.after(self.output.as_ref(), x, o)
    }

    /// adapters' pre_forward / forward / post_forward with `residual_before_ln: true` and
    /// `original_ln_after: true`, no layer norm: the adapter's own residual is `o`, the block's `x`.
    fn after(&self, adapter: Option<&Bottleneck>, x: &Tensor, o: &Tensor) -> Tensor {
        let Some(a) = adapter else { return x + o };
        let o32 = o.to_kind(Kind::Float);
        let input = if self.original_ln_before { (&o32 + x).to_kind(o.kind()) } else { o.shallow_clone() };
        (a.forward(&input) + o32) + x
    }
}

/// Puts fresh adapters (adapters' init) on every decoder layer, as `spec` asks.
pub fn add(model: &mut CausalLm, spec: &BottleneckSpec) {
    let (h, device) = (model.arch.hidden_size as i64, model.device);
    let new = |on: bool| on.then(|| Bottleneck::new(h, spec.bottleneck_size, spec.non_linearity, device));
    for layer in &mut model.layers {
        layer.bottleneck = Some(LayerAdapters {
            attention: new(spec.mh_adapter),
            output: new(spec.output_adapter),
            original_ln_before: spec.original_ln_before,
        });
    }
}

/// The adapters' tensors under adapters' names, layer by layer.
pub fn params(model: &CausalLm, spec: &BottleneckSpec) -> Vec<Param> {
    let mut out = Vec::new();
    for (l, layer) in model.layers.iter().enumerate() {
        let Some(adapters) = &layer.bottleneck else { continue };
        for (site, adapter) in [("attention_adapters", &adapters.attention), ("output_adapters", &adapters.output)] {
            let Some(adapter) = adapter else { continue };
            for (suffix, tensor) in adapter.tensors() {
                out.push(Param { name: format!("model.layers.{l}.{site}.adapters.{}.{suffix}", spec.name), tensor });
            }
        }
    }
    out
}

/// Hugging Face's `model_type` for an architecture family.
fn model_type(family: crate::plan::arch::Family) -> &'static str {
    use crate::plan::arch::Family;
    match family {
        Family::Llama => "llama",
        Family::Mistral => "mistral",
        Family::Qwen2 => "qwen2",
        Family::Qwen3 => "qwen3",
        // Refused by the plan (adapter.rs) before anything is trained or written.
        other => unreachable!("bottleneck adapters are not built for {other:?}"),
    }
}

/// adapters' adapter_config.json: `build_full_config` over the `BnConfig` fields (adapters' defaults
/// for every field recipe does not set), sorted keys as adapters writes them.
pub fn write_config(
    dir: &Path,
    base_model: &str,
    spec: &BottleneckSpec,
    arch: &crate::plan::arch::Architecture,
) -> Result<(), String> {
    // A whole reduction factor is written as an integer, as Python keeps `16`.
    let reduction_factor = if spec.reduction_factor.fract() == 0.0 && spec.reduction_factor.abs() < 1e15 {
        json!(spec.reduction_factor as i64)
    } else {
        json!(spec.reduction_factor)
    };
    let config = json!({
        "config": {
            "adapter_residual_before_ln": false,
            "cross_adapter": false,
            "dropout": 0.0,
            "factorized_phm_W": true,
            "factorized_phm_rule": false,
            "hypercomplex_nonlinearity": "glorot-uniform",
            "init_weights": "bert",
            "init_weights_seed": null,
            "inv_adapter": null,
            "inv_adapter_reduction_factor": null,
            "is_parallel": false,
            "learn_phm": true,
            "leave_out": [],
            "ln_after": false,
            "ln_before": false,
            "mh_adapter": spec.mh_adapter,
            "non_linearity": spec.non_linearity_name,
            "original_ln_after": true,
            "original_ln_before": spec.original_ln_before,
            "output_adapter": spec.output_adapter,
            "phm_bias": true,
            "phm_c_init": "normal",
            "phm_dim": 4,
            "phm_init_range": 0.0001,
            "phm_layer": false,
            "phm_rank": 1,
            "reduction_factor": reduction_factor,
            "residual_before_ln": true,
            "scaling": 1.0,
            "shared_W_phm": false,
            "shared_phm_rule": true,
            "stochastic_depth": 0.0,
            "use_gating": false,
        },
        "hidden_size": arch.hidden_size,
        "model_class": arch.class,
        "model_name": base_model,
        "model_type": model_type(arch.family),
        "name": spec.name,
        "version": ADAPTERS_VERSION,
    });
    let text = serde_json::to_string_pretty(&config).map_err(|e| e.to_string())? + "\n";
    super::weights::write_atomic(&dir.join("adapter_config.json"), text.as_bytes())
}

/// Whether an adapter_config.json is adapters' (a nested `config` and an `adapters.` version)
/// rather than peft's.
pub fn is_adapters_config(v: &Value) -> bool {
    v.get("peft_type").is_none()
        && v.get("config").is_some_and(Value::is_object)
        && v.get("version").and_then(Value::as_str).is_some_and(|s| s.starts_with("adapters."))
}

/// The weights file of an adapter folder: adapters' `adapter.safetensors` when it has one, else
/// peft's `adapter_model.safetensors`.
pub fn weights_path(dir: &Path) -> PathBuf {
    let adapters = dir.join(WEIGHTS_FILE);
    if adapters.is_file() { adapters } else { dir.join("adapter_model.safetensors") }
}

/// Reads adapters' adapter_config.json of a bottleneck adapter: the fields that shape the
/// computation must be ones recipe builds; everything else is refused by name.
pub fn read_config(path: &Path, v: &Value) -> Result<(String, Trainable), String> {
    let here = |msg: String| format!("{}: {msg}", path.display());
    let c = v.get("config").and_then(Value::as_object).ok_or_else(|| here("no `config` object".into()))?;
    let get = |k: &str| c.get(k).filter(|x| !x.is_null());
    let flag = |k: &str, default: bool| get(k).and_then(Value::as_bool).unwrap_or(default);
    if let Some(arch) = get("architecture").and_then(Value::as_str)
        && arch != "bottleneck"
    {
        return Err(here(format!("adapters architecture `{arch}` is not supported (bottleneck only)")));
    }
    // Settings that change the computation away from what recipe builds.
    let not_built: [(&str, bool); 9] = [
        ("is_parallel", flag("is_parallel", false)),
        ("ln_before", flag("ln_before", false)),
        ("ln_after", flag("ln_after", false)),
        ("use_gating", flag("use_gating", false)),
        ("phm_layer", flag("phm_layer", false)),
        ("cross_adapter", flag("cross_adapter", false)),
        ("original_ln_after: false", !flag("original_ln_after", true)),
        ("residual_before_ln other than true", get("residual_before_ln").is_some_and(|r| r != &Value::Bool(true))),
        ("inv_adapter", get("inv_adapter").is_some()),
    ];
    if let Some((name, _)) = not_built.iter().find(|(_, on)| *on) {
        return Err(here(format!("bottleneck adapters with `{name}` are not supported")));
    }
    if get("scaling").is_some_and(|s| s.as_f64() != Some(1.0)) {
        return Err(here("bottleneck adapters with a `scaling` other than 1.0 are not supported".into()));
    }
    if get("leave_out").and_then(Value::as_array).is_some_and(|l| !l.is_empty()) {
        return Err(here("bottleneck adapters with `leave_out` layers are not supported".into()));
    }
    let hidden = v.get("hidden_size").and_then(Value::as_u64).ok_or_else(|| here("no integer `hidden_size`".into()))?;
    let reduction_factor = get("reduction_factor").and_then(Value::as_f64).filter(|r| *r > 0.0).ok_or_else(|| {
        here("`reduction_factor` must be a positive number (per-layer mappings are not supported)".into())
    })?;
    let name = get("non_linearity").and_then(Value::as_str).ok_or_else(|| here("no `non_linearity`".into()))?;
    let non_linearity = NonLinearity::from_name(name).ok_or_else(|| {
        here(format!(
            "non_linearity `{name}` is not built (built: {})",
            crate::config::rules::bottleneck::NON_LINEARITIES.join(", ")
        ))
    })?;
    let spec = BottleneckSpec {
        name: v.get("name").and_then(Value::as_str).unwrap_or(NAME).to_string(),
        mh_adapter: flag("mh_adapter", false),
        output_adapter: flag("output_adapter", false),
        original_ln_before: flag("original_ln_before", false),
        bottleneck_size: crate::plan::bottleneck::bottleneck_size(hidden, reduction_factor) as i64,
        non_linearity,
        non_linearity_name: name.to_lowercase(),
        reduction_factor,
    };
    let base = v.get("model_name").and_then(Value::as_str).unwrap_or_default().to_string();
    Ok((base, Trainable::Bottleneck(spec)))
}
