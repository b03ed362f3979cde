//! The Llama family (Llama 1/2/3/3.x, Mistral, Qwen2/2.5, Qwen3) as one causal language model. The
//! module tree follows the checkpoint's tensor names (`model.layers.N.self_attn.q_proj.weight`), so
//! loading is a walk and every error names a Hugging Face tensor. Attention goes through
//! `scaled_dot_product_attention` (grouped-query heads included); packed rows carry segment ids
//! and get a block-diagonal causal mask. Gradient checkpointing recomputes one decoder layer at a
//! time during the backward pass. Qwen3 differs only by an RMSNorm over each query and key head
//! (`q_norm`/`k_norm`), an optional part of the attention block. Phi-3 fuses q/k/v and gate/up
//! into one linear each (`fused.rs`); OLMo 2 moves the layer norms after the sublayers and
//! normalises q and k over all heads (`olmo2.rs`). Mixtral and Qwen3-MoE put a sparse
//! mixture-of-experts block (model/moe.rs) where the others have the dense MLP.

use super::fused::{GateUpProj, QkvProj};
use super::linear::{Adapter, Ia3, Linear, Lora, QuantizedWeight};
use super::moe::SparseMoe;
use super::rope::{self, Rope};
use super::weights::{Checkpoint, Deferred};
use crate::plan::arch::Architecture;
use tch::{Device, Kind, Tensor};

/// How the weights are trained.
#[derive(Debug, Clone)]
pub enum Trainable {
    /// Nothing (inference, merge).
    Nothing,
    /// Every parameter.
    Everything,
    /// LoRA pairs on the named linears (with `dora`, DoRA's magnitudes too; `embed_tokens` takes
    /// peft's embedding LoRA); `modules_to_save` get trainable full copies.
    /// `parameters`: peft's `target_parameters` (a mixture of experts' router and fused experts).
    Lora {
        targets: Vec<String>,
        parameters: Vec<String>,
        r: i64,
        scaling: f64,
        dropout: f64,
        dora: bool,
        modules_to_save: Vec<String>,
    },
    /// IA3 vectors on the named linears, `feedforward` ones scaling the input.
    Ia3 { targets: Vec<String>, feedforward: Vec<String>, modules_to_save: Vec<String> },
    /// Prompt tuning (peft's PROMPT_TUNING): `num_virtual_tokens` trained embeddings prepended to
    /// every sequence; every weight of the model stays frozen.
    Prompt { num_virtual_tokens: i64, init: PromptInit },
    /// Prefix tuning (peft's PREFIX_TUNING): for `num_virtual_tokens` positions, a trained key and
    /// value in every layer, in front of each sequence's own; every weight of the model stays
    /// frozen. `projection`: trained through peft's PrefixEncoder MLP of that hidden size
    /// (`prefix_projection`, model/prefix.rs) instead of directly.
    Prefix { num_virtual_tokens: i64, projection: Option<i64> },
    /// AdapterHub's bottleneck adapters after the attention and/or feed-forward block of every
    /// layer (model/bottleneck.rs); every weight of the model stays frozen.
    Bottleneck(super::bottleneck::BottleneckSpec),
}

/// How prompt tuning's virtual tokens start.
#[derive(Debug, Clone)]
pub enum PromptInit {
    /// normal(0, 1), as peft's new `nn.Embedding` (also the placeholder a saved adapter overwrites).
    Random,
    /// The word embeddings of these tokens, one per virtual token (peft's `TEXT` init, its ids
    /// already repeated or cut to `num_virtual_tokens`).
    Tokens(Vec<i64>),
}

impl Trainable {
    /// The modules trained in full beside an adapter (none without one).
    pub fn modules_to_save(&self) -> &[String] {
        match self {
            Trainable::Lora { modules_to_save, .. } | Trainable::Ia3 { modules_to_save, .. } => modules_to_save,
            Trainable::Nothing
            | Trainable::Everything
            | Trainable::Prompt { .. }
            | Trainable::Prefix { .. }
            | Trainable::Bottleneck(_) => &[],
        }
    }
}

pub struct LoadOptions {
    pub device: Device,
    /// Kind of the frozen base weights (trainable ones are always fp32 masters).
    pub base_kind: Kind,
    pub trainable: Trainable,
    /// Quantize the decoder layers' linear weights while loading (QLoRA's base); embeddings,
    /// norms and the head stay dense, as bitsandbytes leaves them.
    pub quantize: Option<Quantize>,
    /// A sequence-classification head (`score`, one output) in place of the language-model head:
    /// a reward model. Loaded when the checkpoint has `score.weight`, else initialised as
    /// transformers does (normal, std `initializer_range`).
    pub score_head: bool,
}

/// Quantization of the base, as `load_in_4bit` (with `bnb_4bit_*`) or `load_in_8bit` asks.
#[derive(Debug, Clone, Copy)]
pub enum Quantize {
    FourBit(FourBit),
    /// LLM.int8's row-wise int8 (the weight goes through fp16 first, as bitsandbytes does).
    Int8,
}

#[derive(Debug, Clone, Copy)]
pub struct FourBit {
    pub quant_type: super::nf4::QuantType,
    pub double_quant: bool,
    pub blocksize: i64,
}

pub struct Attention {
    /// q_proj / k_proj / v_proj, or Phi-3's fused qkv_proj.
    pub qkv: QkvProj,
    pub o_proj: Linear,
    /// Qwen3's per-head RMSNorms ([head_dim], fp32), applied to q and k before rotary embedding;
    /// OLMo 2's over all heads together ([heads × head_dim]).
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
}

pub struct Mlp {
    /// gate_proj / up_proj, or Phi-3's fused gate_up_proj.
    pub gate_up: GateUpProj,
    pub down_proj: Linear,
}

pub struct DecoderLayer {
    /// The norm before attention; None with post-norms (OLMo 2).
    pub input_layernorm: Option<Tensor>,
    pub self_attn: Attention,
    /// Before the MLP; with post-norms (OLMo 2), over the attention output.
    pub post_attention_layernorm: Tensor,
    /// OLMo 2: over the MLP output, before the residual add.
    pub post_feedforward_layernorm: Option<Tensor>,
    pub mlp: FeedForward,
    /// Gemma's extra norms and sliding window (model/gemma.rs); None for the Llama family.
    pub gemma: Option<super::gemma::GemmaLayer>,
    /// Bottleneck adapters (model/bottleneck.rs) after this layer's attention and/or feed-forward block.
    pub bottleneck: Option<super::bottleneck::LayerAdapters>,
}

/// A layer's feed-forward block: the dense SwiGLU MLP, or a sparse mixture of experts.
#[allow(clippy::large_enum_variant)] // one per decoder layer: not worth an indirection
pub enum FeedForward {
    Dense(Mlp),
    Sparse(SparseMoe),
}

/// Keys and values of the tokens decoded so far, per layer.
#[derive(Default)]
pub struct LayerCache {
    keys: Option<Tensor>,
    values: Option<Tensor>,
}

pub struct KvCache {
    layers: Vec<LayerCache>,
}

impl LayerCache {
    /// Appends new keys and values [B, kv, T, D]; returns every cached one.
    pub(super) fn append(&mut self, k: Tensor, v: Tensor) -> (Tensor, Tensor) {
        let k = self.keys.as_ref().map_or(k.shallow_clone(), |past| Tensor::cat(&[past, &k], 2));
        let v = self.values.as_ref().map_or(v.shallow_clone(), |past| Tensor::cat(&[past, &v], 2));
        self.keys = Some(k.shallow_clone());
        self.values = Some(v.shallow_clone());
        (k, v)
    }
}

impl KvCache {
    pub fn new(model: &CausalLm) -> KvCache {
        KvCache { layers: model.layers.iter().map(|_| LayerCache::default()).collect() }
    }

    /// Nothing decoded yet.
    pub fn is_empty(&self) -> bool {
        self.layers.first().is_none_or(|l| l.keys.is_none())
    }
}

/// A named tensor of the model (Hugging Face name).
pub struct Param {
    pub name: String,
    pub tensor: Tensor,
}

pub struct CausalLm {
    pub arch: Architecture,
    pub embed_tokens: Tensor,
    pub layers: Vec<DecoderLayer>,
    pub norm: Tensor,
    /// The output head; for tied models it holds the embedding tensor itself (same storage),
    /// unless `lm_head` is in modules_to_save, which gives it its own trainable copy.
    pub lm_head: Linear,
    /// Set when embed_tokens is in modules_to_save: the trained copy used for lookups.
    pub embed_tokens_trained: Option<Tensor>,
    /// peft's LoRA on embed_tokens: `a` [r, vocab] (`lora_embedding_A`), `b` [hidden, r]
    /// (`lora_embedding_B`); the lookup adds `scaling · embedding(ids, Aᵀ) Bᵀ`.
    pub embed_lora: Option<Lora>,
    /// DoRA on embed_tokens: the magnitude [hidden] over `embed_lora` (model/embed_dora.rs).
    pub embed_magnitude: Option<Tensor>,
    pub trainable: Trainable,
    rope: Rope,
    pub device: Device,
    /// Kind of the matmuls and attention: fp32, or bf16 for mixed precision. As under torch
    /// autocast, the residual stream, norms and loss stay fp32 and trainable masters are fp32.
    pub compute_kind: Kind,
    /// Called where a training step's memory peaks (after forwards and backwards), so a run can
    /// measure its peak (exec/host_memory.rs, exec/cuda.rs); the loop switches it per step.
    pub memory_probe: std::cell::Cell<Option<fn()>>,
    /// Sharded training's unit hooks (exec/shard.rs): set, a unit's parameters are gathered
    /// before each use and released after it.
    pub shard_units: std::cell::RefCell<Option<std::rc::Rc<dyn ShardUnits>>>,
    /// `load_chunked`: this rank's chunk of each base tensor by name; the tensors themselves hold
    /// only their shape until sharded training gathers them.
    pub loaded_chunks: std::cell::RefCell<std::collections::HashMap<String, Tensor>>,
    /// The model-wide adapter switch: off, every layer computes its base alone and the
    /// modules_to_save copies give way to the originals (peft's `disable_adapter`), so the same
    /// weights serve as the frozen reference model of preference training.
    adapters_enabled: std::cell::Cell<bool>,
    /// Activation offloading (`activation_offloading`, `gradient_checkpointing: offload`): under
    /// gradient checkpointing, each layer's saved input lives in host memory between its forward
    /// pass and its recomputation. Set by the training loop; a no-op on CPU.
    offload_activations: std::cell::Cell<bool>,
    /// The original head while `lm_head` is in modules_to_save (its trained copy is
    /// `lm_head.weight`); for a tied head, the embedding itself.
    pub(super) head_original: Option<Tensor>,
    /// Prompt tuning's virtual tokens [N, H] (fp32, trained): prepended to the embedded inputs of
    /// every forward pass while adapters are on, at positions 0..N, the real tokens after them.
    pub prompt: Option<Tensor>,
    /// Prefix tuning's keys and values [N, layers × 2 × kv heads × head_dim] (fp32, trained; peft's
    /// `prompt_embeddings`): layer l's keys are block 2l, its values block 2l + 1. While adapters
    /// are on, every forward pass starts from a key/value cache holding them, and the real tokens'
    /// positions start at N.
    pub prefix: Option<Tensor>,
    /// Prefix tuning with `prefix_projection`: the MLP whose output is the keys and values (then
    /// `prefix` is None).
    pub prefix_encoder: Option<super::prefix::PrefixEncoder>,
    /// A reward model's head, [1, H] (`score.weight`, transformers' `…ForSequenceClassification`);
    /// trainable in fp32 whenever anything trains (peft's SEQ_CLS task keeps it in modules_to_save).
    /// The language-model head is then not loaded (a tied one still shares the embedding).
    pub score: Option<Tensor>,
    /// Mixture of experts: the router logits a pass records for the load-balancing loss (model/moe.rs).
    pub routing: super::moe::Routing,
}

/// Where sharded training (exec/shard.rs) gathers and releases parameters. A unit is a decoder
/// layer (unit i) or the root (unit `num_layers`: embeddings, final norm, head), as FSDP wraps a
/// Llama. The model calls these around every use of a unit; a failed collective panics, as tch's
/// own errors do, and the run turns the panic into a message.
pub trait ShardUnits {
    /// The unit's full parameters are needed now.
    fn gather(&self, unit: usize);
    /// A training forward pass is done with the unit; its backward pass comes later.
    fn forward_done(&self, unit: usize);
    /// An inference pass is done with the unit.
    fn release(&self, unit: usize);
    /// The unit's gradients for this micro-batch are complete.
    fn backward_done(&self, unit: usize);
}

/// Activation offloading: a checkpointed layer input copied to host memory. From a CUDA device the
/// copy is non-blocking into pinned memory (torch's `to("cpu", non_blocking=True)` allocates the
/// destination pinned), queued on the current stream after the kernels that wrote it; the device
/// copy is then free for the caching allocator once the copy has run. A tensor already in host
/// memory (CPU training) is kept as it is: nothing moves.
fn to_host(x: &Tensor) -> Tensor {
    if x.device() == Device::Cpu { x.shallow_clone() } else { x.to_device_(Device::Cpu, x.kind(), true, false) }
}

/// A checkpointed layer input back on `device` for its recomputation: a non-blocking copy from
/// pinned host memory on the current stream, so the recomputation's kernels run after it. The same
/// tensor when it is already there.
fn to_device(x: &Tensor, device: Device) -> Tensor {
    if x.device() == device { x.shallow_clone() } else { x.to_device_(device, x.kind(), true, false) }
}

/// What a training forward pass leaves for the backward pass.
pub struct TrainForward {
    /// Final hidden states [B, T, H] after the last norm, fp32, with a graph back to the
    /// trainable tensors (through the layers, or only to the top of the stack when checkpointed).
    pub hidden: Tensor,
    checkpointed: Option<Checkpointed>,
}

impl TrainForward {
    /// Under gradient checkpointing, the devices the saved layer inputs live on, one per decoder
    /// layer (host memory under activation offloading on CUDA); empty without checkpointing.
    pub fn saved_input_devices(&self) -> Vec<Device> {
        self.checkpointed.as_ref().map_or_else(Vec::new, |c| c.saved.iter().map(Tensor::device).collect())
    }

    /// Whether every saved layer input in host memory is page-locked for `accelerator` (a CUDA
    /// device), as the copies need to run asynchronously.
    pub fn saved_inputs_pinned(&self, accelerator: Device) -> bool {
        self.checkpointed
            .as_ref()
            .is_some_and(|c| c.saved.iter().filter(|t| t.device() == Device::Cpu).all(|t| t.is_pinned(accelerator)))
    }
}

/// Gradient checkpointing's state: each layer's input, the detached top of the stack whose
/// gradient starts the recomputed backward pass, and the embedding output.
struct Checkpointed {
    saved: Vec<Tensor>,
    top: Tensor,
    /// The embedding output with its graph, kept only when something below it trains (a trained
    /// embedding, prompt tuning): the first layer's saved input is its detached copy.
    embedded: Option<Tensor>,
    cos_sin: (Tensor, Tensor),
    mask: Option<Tensor>,
    varlen: Option<Varlen>,
}

/// Inputs of one forward pass, all [B, T] int64 on the model's device.
pub struct Inputs<'a> {
    pub input_ids: &'a Tensor,
    pub position_ids: &'a Tensor,
    /// Packed rows: which sample each token belongs to; attention stays within a sample.
    pub segment_ids: Option<&'a Tensor>,
    /// Packed rows on CUDA: the samples' boundaries, for per-sample flash attention where the
    /// device takes it ([`flash_varlen_applies`]); the mask from `segment_ids` otherwise.
    pub varlen: Option<&'a Varlen>,
}

/// Packed rows as one flat run of samples (data/packing.rs `HostBatch::sample_boundaries`):
/// cumulative sample lengths (int32 [samples + 1], on the device) and the longest sample.
pub struct Varlen {
    pub cu_seqlens: Tensor,
    pub max_seqlen: i64,
}

impl Varlen {
    pub fn shallow_clone(&self) -> Varlen {
        Varlen { cu_seqlens: self.cu_seqlens.shallow_clone(), max_seqlen: self.max_seqlen }
    }
}

/// The attention kernel packed rows get: per-sample flash attention (libtorch's
/// `_flash_attention_forward` with cumulative sequence lengths, grouped-query heads taken as they
/// are) where the device has it — CUDA, compute capability 8.0 or later, fp16 or bf16, a head size
/// of at most 256 and a multiple of 8 (flash-attention 2's limits) — else the block-diagonal
/// mask through SDPA (`attend`: the memory-efficient kernel with expanded key/value heads on
/// CUDA; on the CPU, SDPA's CPU kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackedKernel {
    FlashVarlen,
    Masked,
}

/// Which kernel packed rows take on `device` computing in `kind` with heads of `head_dim`;
/// `capability`: the CUDA device's (major, minor), None where unknown.
pub fn flash_varlen_applies(device: Device, capability: Option<(i32, i32)>, kind: Kind, head_dim: i64) -> PackedKernel {
    let cuda = matches!(device, Device::Cuda(_));
    let ampere = capability.is_some_and(|(major, _)| major >= 8);
    let half = matches!(kind, Kind::Half | Kind::BFloat16);
    if cuda && ampere && half && head_dim <= 256 && head_dim % 8 == 0 {
        PackedKernel::FlashVarlen
    } else {
        PackedKernel::Masked
    }
}

impl CausalLm {
    pub fn load(arch: &Architecture, ckpt: &Checkpoint, opts: &LoadOptions) -> Result<CausalLm, String> {
        Self::load_with(arch, ckpt, opts, None)
    }

    /// Loads as `load`, keeping of each base tensor only chunk `index` of `size` (flattened,
    /// padded to a multiple of `size`, as exec/shard.rs cuts them) in `loaded_chunks`: one tensor
    /// is whole at a time, so no rank ever holds a whole copy of the model (full sharding with
    /// `cpu_ram_efficient_loading`). The model's tensors keep only their shapes until sharded
    /// training gathers them. Not for quantized bases, DoRA, modules_to_save or reward heads, whose
    /// set-up reads the loaded weights.
    pub fn load_chunked(
        arch: &Architecture,
        ckpt: &Checkpoint,
        opts: &LoadOptions,
        index: i64,
        size: i64,
    ) -> Result<CausalLm, String> {
        Self::load_with(arch, ckpt, opts, Some((index, size)))
    }

    fn load_with(
        arch: &Architecture,
        ckpt: &Checkpoint,
        opts: &LoadOptions,
        chunk: Option<(i64, i64)>,
    ) -> Result<CausalLm, String> {
        let full = matches!(opts.trainable, Trainable::Everything);
        if full && opts.quantize.is_some() {
            return Err("a quantized base cannot be fully fine-tuned; train an adapter on it (QLoRA)".into());
        }
        let (kind, device) = (if full { Kind::Float } else { opts.base_kind }, opts.device);
        let chunks = std::cell::RefCell::new(std::collections::HashMap::new());
        let keep = |name: &str, t: Tensor| -> Tensor {
            let Some((index, size)) = chunk else { return t };
            let numel = t.numel() as i64;
            let per_rank = (numel + size - 1) / size;
            let mine =
                t.reshape([-1]).constant_pad_nd([0, per_rank * size - numel]).narrow(0, index * per_rank, per_rank);
            chunks.borrow_mut().insert(name.to_string(), mine.copy());
            // The shape without the storage: one element, expanded.
            Tensor::zeros([1], (t.kind(), t.device())).expand(t.size(), false)
        };
        let get = |name: &str, shape: &[i64]| -> Result<Tensor, String> {
            let t = keep(name, ckpt.load(name, shape, kind, device)?);
            Ok(if full { t.set_requires_grad(true) } else { t })
        };
        // Norm weights scale the fp32 residual stream: kept in fp32 whatever the base's kind (they
        // are a few thousand values per layer).
        let norm_of = |name: &str, size: u64| -> Result<Tensor, String> {
            let t = keep(name, ckpt.load(name, &[size as i64], Kind::Float, device)?);
            Ok(if full { t.set_requires_grad(true) } else { t })
        };
        let norm = |name: &str| norm_of(name, arch.hidden_size);
        // Per head (Qwen3), or over all `heads` heads together (OLMo 2).
        let head_norm = |name: String, heads: u64| -> Result<Option<Tensor>, String> {
            let size = if arch.qk_norm_all_heads { heads * arch.head_dim } else { arch.head_dim };
            if arch.qk_norm { norm_of(&name, size).map(Some) } else { Ok(None) }
        };
        let (h, i, v) = (arch.hidden_size as i64, arch.intermediate_size as i64, arch.vocab_size as i64);
        let hd = arch.head_dim as i64;
        let (nh, nkv) = (arch.num_attention_heads as i64, arch.num_key_value_heads as i64);
        // `quantizable`: bitsandbytes under transformers 5.24 quantizes `nn.Linear` modules only, so a
        // mixture of experts' router and fused experts stay in the compute dtype.
        let linear_of =
            |name: String, fan_in: i64, fan_out: i64, bias: bool, quantizable: bool| -> Result<Linear, String> {
                let weight_name = format!("{name}.weight");
                let shape = [fan_out, fan_in];
                // A pre-quantized checkpoint (`recipe quantize`, or transformers + bitsandbytes).
                let stored = match super::bnb::read(ckpt, &weight_name, &shape, device)? {
                    Some(q) => Some(QuantizedWeight::Four(q)),
                    None => super::int8::read(ckpt, &weight_name, &shape, opts.base_kind, device)?
                        .map(QuantizedWeight::Eight),
                };
                let (weight, quantized) = match stored {
                    Some(_) if full => {
                        return Err(format!("`{weight_name}` is quantized; a quantized base takes an adapter"));
                    }
                    Some(q) => (Tensor::new(), Some(q)),
                    None => {
                        let dense = get(&weight_name, &shape)?;
                        // Quantized one weight at a time: the dense copy is dropped before the next loads.
                        let quantized = match opts.quantize.filter(|_| quantizable) {
                            Some(Quantize::FourBit(q)) => Some(QuantizedWeight::Four(super::nf4::quantize(
                                &dense,
                                q.blocksize,
                                q.quant_type,
                                q.double_quant,
                            ))),
                            Some(Quantize::Int8) => Some(QuantizedWeight::Eight(super::int8::quantize(&dense))),
                            None => None,
                        };
                        match quantized {
                            Some(q) => (Tensor::new(), Some(q)),
                            None => (dense, None),
                        }
                    }
                };
                let bias = if bias { Some(get(&format!("{name}.bias"), &[fan_out])?) } else { None };
                Ok(Linear { name, weight, quantized, bias, adapter: None, probe: Default::default(), qat: None })
            };
        let linear = |name: String, fan_in: i64, fan_out: i64, bias: bool| linear_of(name, fan_in, fan_out, bias, true);
        let unquantized =
            |name: String, fan_in: i64, fan_out: i64, bias: bool| linear_of(name, fan_in, fan_out, bias, false);
        let embed_tokens = get("model.embed_tokens.weight", &[v, h])?;
        let mut layers = Vec::with_capacity(arch.num_layers as usize);
        for l in 0..arch.num_layers {
            let p = format!("model.layers.{l}");
            let attn = format!("{p}.self_attn");
            let mlp = format!("{p}.mlp");
            let qkv = if arch.fused_projections {
                QkvProj::Fused { qkv_proj: linear(format!("{attn}.qkv_proj"), h, (nh + 2 * nkv) * hd, arch.qkv_bias)? }
            } else {
                QkvProj::Split {
                    q_proj: linear(format!("{attn}.q_proj"), h, nh * hd, arch.qkv_bias)?,
                    k_proj: linear(format!("{attn}.k_proj"), h, nkv * hd, arch.qkv_bias)?,
                    v_proj: linear(format!("{attn}.v_proj"), h, nkv * hd, arch.qkv_bias)?,
                }
            };
            let post_norms = arch.post_norms;
            layers.push(DecoderLayer {
                input_layernorm: if post_norms { None } else { Some(norm(&format!("{p}.input_layernorm.weight"))?) },
                self_attn: Attention {
                    qkv,
                    o_proj: linear(format!("{attn}.o_proj"), nh * hd, h, arch.o_bias)?,
                    q_norm: head_norm(format!("{attn}.q_norm.weight"), arch.num_attention_heads)?,
                    k_norm: head_norm(format!("{attn}.k_norm.weight"), arch.num_key_value_heads)?,
                },
                post_attention_layernorm: norm(&format!("{p}.post_attention_layernorm.weight"))?,
                post_feedforward_layernorm: if post_norms {
                    Some(norm(&format!("{p}.post_feedforward_layernorm.weight"))?)
                } else {
                    None
                },
                mlp: match arch.moe.as_ref().filter(|m| m.is_sparse(l)) {
                    Some(moe) => FeedForward::Sparse(super::moe::load(
                        moe,
                        l,
                        h,
                        &unquantized,
                        opts.quantize.filter(|_| moe.quantized_experts),
                    )?),
                    None => FeedForward::Dense(Mlp {
                        gate_up: if arch.fused_projections {
                            GateUpProj::Fused {
                                gate_up_proj: linear(format!("{mlp}.gate_up_proj"), h, 2 * i, arch.mlp_bias)?,
                            }
                        } else {
                            GateUpProj::Split {
                                gate_proj: linear(format!("{mlp}.gate_proj"), h, i, arch.mlp_bias)?,
                                up_proj: linear(format!("{mlp}.up_proj"), h, i, arch.mlp_bias)?,
                            }
                        },
                        down_proj: linear(format!("{mlp}.down_proj"), i, h, arch.mlp_bias)?,
                    }),
                },
                gemma: match &arch.gemma {
                    Some(g) => Some(super::gemma::GemmaLayer {
                        pre_feedforward_layernorm: norm(&format!("{p}.pre_feedforward_layernorm.weight"))?,
                        post_feedforward_layernorm: norm(&format!("{p}.post_feedforward_layernorm.weight"))?,
                        window: g.window_of(l as usize).map(|w| w as i64),
                    }),
                    None => None,
                },
                bottleneck: None,
            });
        }
        let prompt = match &opts.trainable {
            Trainable::Prompt { num_virtual_tokens: n, init } => {
                let t = match init {
                    PromptInit::Random => Tensor::empty([*n, h], (Kind::Float, device)).normal_(0.0, 1.0),
                    PromptInit::Tokens(ids) => {
                        if ids.len() as i64 != *n || ids.iter().any(|&i| i < 0 || i >= v) {
                            return Err(format!(
                                "prompt tuning's initial tokens must be {n} ids below the vocabulary size {v}"
                            ));
                        }
                        let ids = Tensor::from_slice(ids).to_device(device);
                        // peft reads them through the model's embedding module (Gemma's scales).
                        let rows = super::gemma::scale_embedding(arch, embed_tokens.index_select(0, &ids));
                        rows.to_kind(Kind::Float).detach().copy()
                    }
                };
                Some(t.set_requires_grad(true))
            }
            _ => None,
        };
        // peft's PrefixEncoder: an `nn.Embedding` (normal(0, 1)) of num_layers × 2 × token_dim per
        // virtual token, token_dim being the key/value heads' width.
        let prefix = match &opts.trainable {
            Trainable::Prefix { num_virtual_tokens: n, projection: None } => {
                let width = arch.num_layers as i64 * 2 * nkv * hd;
                Some(Tensor::empty([*n, width], (Kind::Float, device)).normal_(0.0, 1.0).set_requires_grad(true))
            }
            _ => None,
        };
        let prefix_encoder = match &opts.trainable {
            Trainable::Prefix { num_virtual_tokens: n, projection: Some(hidden) } => {
                let width = arch.num_layers as i64 * 2 * nkv * hd;
                Some(super::prefix::PrefixEncoder::new(*n, nkv * hd, *hidden, width, device))
            }
            _ => None,
        };
        let norm = norm("model.norm.weight")?;
        // transformers ties the head to the embedding even when the file also holds lm_head.weight.
        let head_weight = if arch.tie_word_embeddings {
            embed_tokens.shallow_clone()
        } else if opts.score_head {
            Tensor::new()
        } else {
            get("lm_head.weight", &[v, h])?
        };
        let lm_head = Linear {
            name: "lm_head".into(),
            weight: head_weight,
            quantized: None,
            bias: None,
            adapter: None,
            probe: Default::default(),
            qat: None,
        };
        let mut model = CausalLm {
            arch: arch.clone(),
            rope: Rope::new(arch, device)?,
            embed_tokens,
            layers,
            norm,
            lm_head,
            embed_tokens_trained: None,
            embed_lora: None,
            embed_magnitude: None,
            trainable: Trainable::Nothing,
            device,
            compute_kind: Kind::Float,
            memory_probe: std::cell::Cell::new(None),
            shard_units: std::cell::RefCell::new(None),
            loaded_chunks: std::cell::RefCell::new(chunks.into_inner()),
            adapters_enabled: std::cell::Cell::new(true),
            offload_activations: std::cell::Cell::new(false),
            head_original: None,
            prompt,
            prefix,
            prefix_encoder,
            score: None,
            routing: Default::default(),
        };
        // Adapters before a new reward head: the random draws come in the same order as ever.
        model.add_adapters(&opts.trainable, opts.score_head)?;
        if opts.score_head {
            model.score = Some(load_score(ckpt, arch, opts)?);
        }
        let unused = ckpt.unused();
        let unexpected: Vec<&String> =
            unused.iter().filter(|n| !(n.ends_with("rotary_emb.inv_freq") || *n == "lm_head.weight")).collect();
        if !unexpected.is_empty() {
            return Err(format!(
                "the checkpoint has tensors a {:?} model of this shape does not use: {}",
                arch.family,
                unexpected.iter().take(5).map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
            ));
        }
        Ok(model)
    }

    /// Puts fresh adapters on the base as `trainable` asks and makes it the model's trainable set:
    /// LoRA pairs on the targeted linears (peft's default init), DoRA magnitudes over them, peft's
    /// embedding LoRA on embed_tokens, or IA3 vectors (ones), and trainable copies of
    /// modules_to_save; nothing for full fine-tuning. `score_head`: the model is
    /// a reward model (its head is `score`). `load` calls this once; multi-adapter serving
    /// (`model::serving`) once per adapter, over layers it has emptied first.
    pub fn add_adapters(&mut self, trainable: &Trainable, score_head: bool) -> Result<(), String> {
        let device = self.device;
        if let Trainable::Bottleneck(spec) = trainable {
            super::bottleneck::add(self, spec);
        }
        // IA3: a vector of ones on each targeted linear (peft's init).
        if let Trainable::Ia3 { targets, feedforward, .. } = trainable {
            for lin in self.layers.iter_mut().flat_map(layer_linears_mut) {
                let short = lin.name.rsplit('.').next().unwrap_or(&lin.name);
                let named = |list: &[String]| list.iter().any(|t| t == short || *t == lin.name);
                if named(targets) {
                    let (fan_out, fan_in) = match &lin.quantized {
                        Some(q) => (q.shape()[0], q.shape()[1]),
                        None => (lin.weight.size()[0], lin.weight.size()[1]),
                    };
                    lin.adapter = Some(Adapter::Ia3(Ia3::new(fan_in, fan_out, named(feedforward), device)));
                }
            }
        }
        if let Trainable::Lora { targets, parameters, r, scaling, dropout, dora, .. } = trainable {
            let lora_for = |lin: &Linear| -> Option<Adapter> {
                let short = lin.name.rsplit('.').next().unwrap_or(&lin.name);
                if !targets.iter().any(|t| t == short || *t == lin.name) {
                    return None;
                }
                let (fan_out, fan_in) = match &lin.quantized {
                    Some(q) => (q.shape()[0], q.shape()[1]),
                    None => (lin.weight.size()[0], lin.weight.size()[1]),
                };
                // peft's default init: A kaiming-uniform (a = sqrt(5)), i.e. U(-1/sqrt(in), 1/sqrt(in)); B zero.
                let bound = 1.0 / (fan_in as f64).sqrt();
                let a =
                    Tensor::empty([*r, fan_in], (Kind::Float, device)).uniform_(-bound, bound).set_requires_grad(true);
                let b = Tensor::zeros([fan_out, *r], (Kind::Float, device)).set_requires_grad(true);
                Some(Adapter::Lora(Lora { a, b, scaling: *scaling, dropout: *dropout }))
            };
            for layer in &self.layers {
                if let FeedForward::Sparse(block) = &layer.mlp
                    && let Some(lin) = block.linears().find(|l| lora_for(l).is_some())
                {
                    // transformers 5 holds these as parameters, not linear modules (peft rewrites the
                    // names into target_parameters with its own rank patterns).
                    return Err(format!(
                        "target_modules: `{}` is part of a mixture-of-experts block; adapt it through target_parameters",
                        lin.name
                    ));
                }
            }
            for lin in self.layers.iter_mut().flat_map(layer_linears_mut) {
                lin.adapter = lora_for(lin);
                if *dora && lin.adapter.is_some() {
                    lin.decompose()?;
                }
            }
            // peft's ParamWrapper (target_parameters): on the router a plain LoRA pair; on a fused
            // expert parameter one pair of r · experts rows / columns. Init as lora.Linear's.
            let fresh = |fan_in: i64, fan_out: i64, rank: i64| {
                let bound = 1.0 / (fan_in as f64).sqrt();
                let a = Tensor::empty([rank, fan_in], (Kind::Float, device))
                    .uniform_(-bound, bound)
                    .set_requires_grad(true);
                let b = Tensor::zeros([fan_out, rank], (Kind::Float, device)).set_requires_grad(true);
                Lora { a, b, scaling: *scaling, dropout: 0.0 }
            };
            for (l, layer) in self.layers.iter_mut().enumerate() {
                let FeedForward::Sparse(block) = &mut layer.mlp else { continue };
                let [router, gate_up, down] = crate::plan::moe::targeted_in_layer(parameters, l as u64);
                let n = block.experts.len() as i64;
                // The expert weights may be quantized views (quantize_moe_experts): their shape.
                let first = &block.experts[0].down_proj;
                let i = first.quantized.as_ref().map_or_else(|| first.weight.size()[1], |q| q.shape()[1]);
                let h = block.gate.weight.size()[1];
                if router {
                    block.gate.adapter = Some(Adapter::Lora(fresh(h, n, *r)));
                }
                block.gate_up_lora = gate_up.then(|| fresh(h, 2 * i, *r * n));
                block.down_lora = down.then(|| fresh(i, h, *r * n));
            }
            // LoRA on the output head (peft's `lm_head` target), over the tied or untied head.
            if targets.iter().any(|t| t == "lm_head") {
                if score_head {
                    return Err("target_modules: a reward model has no lm_head to adapt".into());
                }
                if trainable.modules_to_save().iter().any(|m| m == "lm_head") {
                    return Err("lm_head cannot be both a LoRA target and in modules_to_save".into());
                }
                self.lm_head.adapter = lora_for(&self.lm_head);
                if *dora {
                    self.lm_head.decompose()?;
                }
            }
            // peft's LoRA on the embedding: A zero, B standard normal (its reset_lora_parameters for an
            // nn.Embedding), so step 0 is the base model.
            if targets.iter().any(|t| t == "embed_tokens") {
                if trainable.modules_to_save().iter().any(|m| m == "embed_tokens") {
                    return Err("embed_tokens cannot be both a LoRA target and in modules_to_save".into());
                }
                let (v, h) = (self.embed_tokens.size()[0], self.embed_tokens.size()[1]);
                let a = Tensor::zeros([*r, v], (Kind::Float, device)).set_requires_grad(true);
                let b = Tensor::empty([h, *r], (Kind::Float, device)).normal_(0.0, 1.0).set_requires_grad(true);
                // peft applies no dropout to an embedding's LoRA input (token ids).
                let lora = Lora { a, b, scaling: *scaling, dropout: 0.0 };
                self.embed_magnitude = dora.then(|| super::embed_dora::initial_magnitude(&self.embed_tokens, &lora));
                self.embed_lora = Some(lora);
            }
        }
        for m in trainable.modules_to_save() {
            match m.as_str() {
                // peft's SEQ_CLS task saves the classification head; it trains whenever anything does.
                // (peft also lists `classifier`, other architectures' name for it.)
                "score" | "classifier" if score_head => {}
                "lm_head" if score_head => {
                    return Err("modules_to_save: a reward model has no lm_head (its head is `score`)".into());
                }
                "lm_head" => {
                    let original = self.lm_head.weight.shallow_clone();
                    self.lm_head.weight = original.to_kind(Kind::Float).detach().copy().set_requires_grad(true);
                    self.head_original = Some(original);
                }
                "embed_tokens" => {
                    self.embed_tokens_trained =
                        Some(self.embed_tokens.to_kind(Kind::Float).detach().copy().set_requires_grad(true))
                }
                other => {
                    let heads = if score_head { "score" } else { "lm_head" };
                    return Err(format!("modules_to_save: `{other}` is not embed_tokens or {heads}"));
                }
            }
        }
        self.trainable = trainable.clone();
        Ok(())
    }

    /// Whether adapters (and modules_to_save copies) take part in forward passes now.
    /// Quantization-aware training: every linear layer of the decoder and the output head gets
    /// `fq` (torchao's `quantize_` swaps every `nn.Linear` of the model, `lm_head` included; a
    /// tied head shares the embedding's weight, which itself stays unquantized as Axolotl's
    /// default `quantize_embedding: false` leaves it).
    pub fn enable_qat(&mut self, fq: &super::qat::FakeQuant) -> Result<(), String> {
        if self.layers.iter().any(|l| matches!(l.mlp, FeedForward::Sparse(_))) {
            // transformers' experts are fused 3-D parameters, not nn.Linear: torchao leaves them
            // unquantized, which recipe's per-expert layers do not reproduce yet.
            return Err("unsupported-qat-moe: quantization-aware training of a mixture of experts is not built".into());
        }
        if fq.scheme == super::qat::QatScheme::Mxfp4
            && let Some(lin) = self
                .layers
                .iter()
                .flat_map(layer_linears)
                .chain([&self.lm_head])
                // A reward model's score head replaces lm_head, whose weight is then undefined.
                .filter(|l| l.weight.defined())
                .find(|l| !matches!(l.weight.kind(), tch::Kind::Float | tch::Kind::BFloat16))
        {
            return Err(format!(
                "qat-mxfp4-dtype: {} is stored as {:?}; torchao's MX fake quantization takes bf16 or fp32 only",
                lin.name,
                lin.weight.kind()
            ));
        }
        for lin in self.layers.iter_mut().flat_map(layer_linears_mut) {
            lin.qat = Some(Box::new(fq.clone()));
        }
        self.lm_head.qat = Some(Box::new(fq.clone()));
        Ok(())
    }

    /// Activation offloading under gradient checkpointing: on CUDA, each decoder layer's saved input
    /// goes to pinned host memory after the layer's forward pass and comes back before its
    /// recomputation. On CPU the saved inputs already live in host memory: nothing moves.
    pub fn set_activation_offloading(&self, on: bool) {
        self.offload_activations.set(on);
    }

    /// Switches every layer's fake quantization on or off (they share one flag).
    pub fn set_fake_quant(&self, on: bool) {
        if let Some(fq) = &self.lm_head.qat {
            fq.enabled.store(on, std::sync::atomic::Ordering::Relaxed);
        }
    }

    pub fn adapters_on(&self) -> bool {
        self.adapters_enabled.get()
    }

    /// Runs `f` with every adapter switched off: the base model, from the same weights.
    pub fn without_adapters<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore<'a>(&'a std::cell::Cell<bool>, bool);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                self.0.set(self.1);
            }
        }
        let _restore = Restore(&self.adapters_enabled, self.adapters_enabled.replace(false));
        f()
    }

    /// The root unit's index for `shard_units` (embeddings, final norm, head).
    pub fn root_unit(&self) -> usize {
        self.layers.len()
    }

    fn with_shard(&self, f: impl FnOnce(&dyn ShardUnits)) {
        let hooks = self.shard_units.borrow().clone();
        if let Some(hooks) = hooks {
            f(hooks.as_ref());
        }
    }

    /// Samples memory where a step may peak (see `memory_probe`).
    pub fn probe_memory(&self) {
        if let Some(probe) = self.memory_probe.get() {
            probe()
        }
    }

    /// Grows the vocabulary to `n` entries (new tokens added to the tokenizer): new embedding and
    /// head rows start at the mean of the existing ones, as transformers' resize does without
    /// its random spread. Trainable copies grow too; a tied head keeps sharing the embedding.
    pub fn resize_vocab(&mut self, n: i64) {
        let old = self.arch.vocab_size as i64;
        if n <= old {
            return;
        }
        let _guard = tch::no_grad_guard();
        let grow = |t: &Tensor| -> Tensor {
            let mean = t.to_kind(Kind::Float).mean_dim(0, true, Kind::Float).to_kind(t.kind());
            let extra = mean.expand([n - old, t.size()[1]], false);
            let out = Tensor::cat(&[t.detach(), extra], 0);
            if t.requires_grad() { out.set_requires_grad(true) } else { out }
        };
        let shared_head = self.lm_head.weight.data_ptr() == self.embed_tokens.data_ptr();
        let old_embedding_ptr = self.embed_tokens.data_ptr();
        self.embed_tokens = grow(&self.embed_tokens);
        self.embed_tokens_trained = self.embed_tokens_trained.as_ref().map(grow);
        if let Some(lora) = &mut self.embed_lora {
            // New tokens start without an update: zero columns of A.
            let extra = Tensor::zeros([lora.a.size()[0], n - old], (Kind::Float, lora.a.device()));
            lora.a = Tensor::cat(&[lora.a.detach(), extra], 1).set_requires_grad(true);
            // DoRA's norms run over the vocabulary: a fresh magnitude follows the grown embedding, as
            // peft's (made after the resize) does; a loaded adapter's replaces it afterwards.
            if self.embed_magnitude.is_some() {
                self.embed_magnitude = Some(super::embed_dora::initial_magnitude(&self.embed_tokens, lora));
            }
        }
        self.lm_head.weight = if shared_head {
            self.embed_tokens.shallow_clone()
        } else if self.score.is_some() {
            Tensor::new()
        } else {
            grow(&self.lm_head.weight)
        };
        self.head_original = self
            .head_original
            .as_ref()
            .map(|o| if o.data_ptr() == old_embedding_ptr { self.embed_tokens.shallow_clone() } else { grow(o) });
        self.arch.vocab_size = n as u64;
    }

    /// Token embeddings [B, T, H], in fp32: the residual stream starts here and stays fp32 (as
    /// under autocast) even when a frozen base is stored in 16 bits; only the looked-up rows are
    /// converted.
    pub fn embed(&self, input_ids: &Tensor) -> Tensor {
        let trained = self.embed_tokens_trained.as_ref().filter(|_| self.adapters_on());
        let table = trained.unwrap_or(&self.embed_tokens);
        let x = Tensor::embedding(table, input_ids, -1, false, false);
        let x = super::gemma::scale_embedding(&self.arch, x).to_kind(Kind::Float);
        match &self.embed_lora {
            // peft's lora.Embedding: embedding(ids, Aᵀ) @ Bᵀ · scaling, in fp32.
            Some(lora) if self.adapters_on() => {
                let after_a = Tensor::embedding(&lora.a.tr(), input_ids, -1, false, false);
                let update = after_a.matmul(&lora.b.tr()) * lora.scaling;
                match &self.embed_magnitude {
                    Some(m) => super::embed_dora::lookup(&self.embed_tokens, lora, m, x, update),
                    None => x + update,
                }
            }
            _ => x,
        }
    }

    /// How many virtual tokens (prompt tuning) open every sequence now: hidden states and logits
    /// have that many positions more than the inputs, in front.
    pub fn virtual_tokens(&self) -> i64 {
        match &self.prompt {
            Some(p) if self.adapters_on() => p.size()[0],
            _ => 0,
        }
    }

    /// How many prefix positions (prefix tuning) every layer's keys and values start with now.
    pub fn prefix_tokens(&self) -> i64 {
        match (&self.prefix, &self.prefix_encoder) {
            _ if !self.adapters_on() => 0,
            (Some(p), _) => p.size()[0],
            (None, Some(encoder)) => encoder.num_virtual_tokens(),
            (None, None) => 0,
        }
    }

    /// Prefix tuning's keys and values [N, layers × 2 × kv heads × head_dim] as the layers use
    /// them (with `prefix_projection`, the MLP's output): what peft saves as `prompt_embeddings`.
    pub fn prefix_values(&self) -> Option<Tensor> {
        match (&self.prefix, &self.prefix_encoder) {
            (Some(p), _) => Some(p.shallow_clone()),
            (None, Some(encoder)) => Some(encoder.forward()),
            (None, None) => None,
        }
    }

    /// Where the real tokens' positions start: after the virtual tokens of prompt or prefix tuning.
    pub fn position_offset(&self) -> i64 {
        self.virtual_tokens() + self.prefix_tokens()
    }

    /// A key/value cache holding prefix tuning's keys and values for `b` rows (None without a
    /// prefix), as peft hands them to the model as past key values: not rotated, in the compute kind.
    fn prefix_cache(&self, b: i64) -> Option<KvCache> {
        let n = self.prefix_tokens();
        let prefix = self.prefix_values().filter(|_| n > 0)?;
        let a = &self.arch;
        let (nkv, hd) = (a.num_key_value_heads as i64, a.head_dim as i64);
        // [N, L·2·kv·hd] -> [L·2, kv, N, hd], as peft's view + permute.
        let kv = prefix.view([n, a.num_layers as i64 * 2, nkv, hd]).permute([1, 2, 0, 3]).to_kind(self.compute_kind);
        let rows = |i: i64| Some(kv.get(i).unsqueeze(0).expand([b, nkv, n, hd], false));
        let layers = (0..self.layers.len() as i64).map(|l| LayerCache { keys: rows(2 * l), values: rows(2 * l + 1) });
        Some(KvCache { layers: layers.collect() })
    }

    /// The embedded inputs and their positions, with prompt tuning's virtual tokens in front (at
    /// positions 0..N, the inputs' own positions shifted by N), as peft feeds `inputs_embeds`
    /// and transformers numbers them.
    fn embed_inputs(&self, inputs: &Inputs) -> (Tensor, Tensor) {
        let x = self.embed(inputs.input_ids);
        let n = self.virtual_tokens();
        let Some(prompt) = self.prompt.as_ref().filter(|_| n > 0) else {
            // Prefix tuning's keys come first: the real tokens' positions start after them.
            return (x, inputs.position_ids + self.prefix_tokens());
        };
        let b = x.size()[0];
        let virtual_positions = Tensor::arange(n, (Kind::Int64, x.device())).unsqueeze(0).expand([b, n], false);
        let positions = Tensor::cat(&[virtual_positions, inputs.position_ids + n], 1);
        (Tensor::cat(&[prompt.unsqueeze(0).expand([b, -1, -1], false), x], 1), positions)
    }

    /// The attention mask for these inputs: `None` means plain causal.
    /// `attention_mask` for this model: packed rows do not take virtual tokens (the rules refuse
    /// prompt tuning with packing), so a packed batch reaching a prompt-tuned model is a bug.
    fn mask_for(&self, inputs: &Inputs) -> Option<Tensor> {
        assert!(
            inputs.segment_ids.is_none() || self.position_offset() == 0,
            "packed rows reached a prompt- or prefix-tuned model"
        );
        Self::attention_mask(inputs)
    }

    /// Packed rows' boundaries where this model's device and dtype take per-sample flash
    /// attention (`flash_varlen_applies`); None sends them through the mask.
    pub fn varlen_for<'a>(&self, inputs: &Inputs<'a>) -> Option<&'a Varlen> {
        let varlen = inputs.varlen?;
        let capability = match self.device {
            Device::Cuda(ordinal) => crate::exec::cuda::compute_capability(ordinal),
            _ => None,
        };
        let kernel = flash_varlen_applies(self.device, capability, self.compute_kind, self.arch.head_dim as i64);
        (kernel == PackedKernel::FlashVarlen && self.position_offset() == 0).then_some(varlen)
    }

    /// Causal within each segment id. A negative id `-s` is segment `s`'s token that no query sees
    /// as a key (transformers' `attention_mask` 0 inside a row: the pad between concatenated
    /// pretraining texts); the token itself still attends to its segment's earlier keys.
    pub fn attention_mask(inputs: &Inputs) -> Option<Tensor> {
        let seg = inputs.segment_ids?;
        let t = seg.size()[1];
        let id = seg.abs();
        let same = id.unsqueeze(2).eq_tensor(&id.unsqueeze(1));
        let causal = Tensor::ones([t, t], (Kind::Bool, seg.device())).tril(0);
        let visible = seg.ge(0).unsqueeze(1);
        Some(same.logical_and(&causal).logical_and(&visible).unsqueeze(1))
    }

    pub fn layer_forward(
        &self,
        layer: &DecoderLayer,
        x: &Tensor,
        cos_sin: &(Tensor, Tensor),
        mask: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        self.layer_forward_cached(layer, x, cos_sin, mask, train, None)
    }

    /// One decoder layer; with `cache`, this layer's keys and values of earlier tokens are
    /// prepended (and the new ones appended), so decoding feeds one token at a time.
    pub fn layer_forward_cached(
        &self,
        layer: &DecoderLayer,
        x: &Tensor,
        cos_sin: &(Tensor, Tensor),
        mask: Option<&Tensor>,
        train: bool,
        cache: Option<&mut LayerCache>,
    ) -> Tensor {
        self.layer_forward_packed(layer, x, cos_sin, mask, None, train, cache)
    }

    /// `layer_forward_cached` with packed rows' boundaries (`varlen`, given where the device
    /// takes per-sample flash attention: `CausalLm::varlen_for`).
    #[allow(clippy::too_many_arguments)]
    pub fn layer_forward_packed(
        &self,
        layer: &DecoderLayer,
        x: &Tensor,
        cos_sin: &(Tensor, Tensor),
        mask: Option<&Tensor>,
        varlen: Option<&Varlen>,
        train: bool,
        cache: Option<&mut LayerCache>,
    ) -> Tensor {
        if let Some(extra) = &layer.gemma {
            return super::gemma::layer_forward(self, layer, extra, x, cos_sin, mask, train, cache);
        }
        let a = &self.arch;
        let (b, t) = (x.size()[0], x.size()[1]);
        let (nh, nkv, hd) = (a.num_attention_heads as i64, a.num_key_value_heads as i64, a.head_dim as i64);
        let ck = self.compute_kind;
        let h = match &layer.input_layernorm {
            Some(w) => rms_norm(x, w, a.rms_norm_eps),
            None => x.shallow_clone(),
        }
        .to_kind(ck);
        let at = &layer.self_attn;
        let on = self.adapters_on();
        let (q, k, v) = at.qkv.forward(&h, train, on, nh * hd);
        // OLMo 2 normalises q and k over all heads at once, before the heads are split; Qwen3 each
        // head (over head_dim) before the heads move to dim 1, as transformers does.
        let eps = a.rms_norm_eps;
        let (q, k) = match (&at.q_norm, &at.k_norm) {
            (Some(qn), Some(kn)) if a.qk_norm_all_heads => {
                (super::olmo2::rms_norm(&q, qn, eps), super::olmo2::rms_norm(&k, kn, eps))
            }
            _ => (q, k),
        };
        let per_head = |x: Tensor, w: &Option<Tensor>| match w {
            Some(w) if !a.qk_norm_all_heads => rms_norm(&x, w, eps),
            _ => x,
        };
        let q = per_head(q.reshape([b, t, nh, hd]), &at.q_norm).transpose(1, 2);
        let k = per_head(k.reshape([b, t, nkv, hd]), &at.k_norm).transpose(1, 2);
        let v = v.reshape([b, t, nkv, hd]).transpose(1, 2);
        let (cos, sin) = cos_sin;
        let q = rope::apply(&q, cos, sin);
        let k = rope::apply(&k, cos, sin);
        let (k, v) = match cache {
            None => (k, v),
            Some(c) => {
                let k = c.keys.as_ref().map_or(k.shallow_clone(), |past| Tensor::cat(&[past, &k], 2));
                let v = c.values.as_ref().map_or(v.shallow_clone(), |past| Tensor::cat(&[past, &v], 2));
                c.keys = Some(k.shallow_clone());
                c.values = Some(v.shallow_clone());
                (k, v)
            }
        };
        // Causal when queries and keys are the same tokens; a decoding step's query sees every
        // cached key; several queries after cached keys (a prefix) see those and the causal part.
        let s = k.size()[2];
        let offset_mask = (mask.is_none() && s > t && t > 1).then(|| {
            let query_at = Tensor::arange_start(s - t, s, (Kind::Int64, x.device())).unsqueeze(1);
            Tensor::arange(s, (Kind::Int64, x.device())).unsqueeze(0).le_tensor(&query_at).view([1, 1, t, s])
        });
        let mask = mask.or(offset_mask.as_ref());
        let causal = mask.is_none() && s == t;
        let attn = match varlen {
            Some(varlen) if mask.is_some() && s == t => attend_varlen(&q, &k, &v, varlen),
            _ => attend(&q, &k, &v, mask, causal),
        };
        let attn = attn.transpose(1, 2).reshape([b, t, nh * hd]);
        let bottleneck = layer.bottleneck.as_ref().filter(|_| on);
        let attn = at.o_proj.forward(&attn, train, on);
        let (x, h) = if a.post_norms {
            // OLMo 2: the attention output is normalised, then added; the MLP reads the sum as is.
            let x = x + super::olmo2::rms_norm(&attn, &layer.post_attention_layernorm, a.rms_norm_eps);
            let h = x.to_kind(ck);
            (x, h)
        } else {
            let x = match bottleneck {
                Some(b) => b.after_attention(x, &attn),
                None => x + attn,
            };
            let h = rms_norm(&x, &layer.post_attention_layernorm, a.rms_norm_eps).to_kind(ck);
            (x, h)
        };
        let out = match &layer.mlp {
            FeedForward::Dense(m) => m.down_proj.forward(&m.gate_up.activated(&h, train, on), train, on),
            FeedForward::Sparse(moe) => {
                let (y, router_logits) = moe.forward(&h, train, on);
                self.routing.record(router_logits);
                y
            }
        };
        match (&layer.post_feedforward_layernorm, bottleneck) {
            (Some(w), _) => x + super::olmo2::rms_norm(&out, w, a.rms_norm_eps),
            (None, Some(b)) => b.after_mlp(&x, &out),
            (None, None) => x + out,
        }
    }

    /// Final hidden states [B, T, H] after the last norm.
    pub fn hidden_states(&self, inputs: &Inputs, train: bool) -> Tensor {
        let root = self.root_unit();
        self.with_shard(|s| s.gather(root));
        let (mut x, positions) = self.embed_inputs(inputs);
        let cos_sin = self.rope.cos_sin(&positions);
        let mask = self.mask_for(inputs);
        let varlen = self.varlen_for(inputs);
        let mut prefix = self.prefix_cache(x.size()[0]);
        for (i, layer) in self.layers.iter().enumerate() {
            self.with_shard(|s| s.gather(i));
            let slot = prefix.as_mut().map(|c| &mut c.layers[i]);
            x = self.layer_forward_packed(layer, &x, &cos_sin, mask.as_ref(), varlen, train, slot);
            self.with_shard(|s| s.release(i));
        }
        super::gemma::final_norm(self, &x)
    }

    /// Ends an inference pass under sharded training: the root unit (still needed by the head
    /// after `hidden_states`) is released.
    pub fn end_inference(&self) {
        let root = self.root_unit();
        self.with_shard(|s| s.release(root));
    }

    /// Logits [1, T, V] of new tokens `input_ids` [1, T] at positions `start..start+T`, reading
    /// and extending `cache` (start with `KvCache::new`). Feed the prompt first, then one token at
    /// a time.
    /// With virtual tokens (prompt tuning), the first call (`start` 0) puts them in front and
    /// returns their logits too; `start` counts real tokens, and every position is shifted by N.
    pub fn logits_cached(&self, input_ids: &Tensor, start: i64, cache: &mut KvCache) -> Tensor {
        let root = self.root_unit();
        self.with_shard(|s| s.gather(root));
        let t = input_ids.size()[1];
        let positions = Tensor::arange_start(start, start + t, (Kind::Int64, self.device)).unsqueeze(0);
        let (mut x, positions) = if start == 0 {
            if let Some(prefix) = self.prefix_cache(input_ids.size()[0]) {
                *cache = prefix;
            }
            self.embed_inputs(&Inputs { input_ids, position_ids: &positions, segment_ids: None, varlen: None })
        } else {
            (self.embed(input_ids), positions + self.position_offset())
        };
        let cos_sin = self.rope.cos_sin(&positions);
        for (i, (layer, slot)) in self.layers.iter().zip(cache.layers.iter_mut()).enumerate() {
            self.with_shard(|s| s.gather(i));
            x = self.layer_forward_cached(layer, &x, &cos_sin, None, false, Some(slot));
            self.with_shard(|s| s.release(i));
        }
        let h = super::gemma::final_norm(self, &x);
        self.head(&h, false)
    }

    /// Batched decoding with left padding: logits [B, V] of the last of new tokens `input_ids` [B, T] at
    /// per-row positions `positions` [B, T], reading and extending `cache`. `key_mask` [B, S]
    /// (bool, S = cached + T tokens) is false at padding, which no token attends to; a padding
    /// query attends to itself alone, so its row never turns into NaN (that would poison the real
    /// rows through the cached keys). Only the last position goes through the head: a prompt's
    /// logits would be [B, T, V].
    pub fn logits_cached_masked(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        key_mask: &Tensor,
        cache: &mut KvCache,
    ) -> Tensor {
        let root = self.root_unit();
        self.with_shard(|s| s.gather(root));
        // Virtual tokens (prompt tuning) go in front of the first call's tokens, prefix tuning's
        // keys and values into the empty cache; they are never padding, and every position moves up
        // by their number.
        let n = self.position_offset();
        let (x, positions) = if cache.is_empty() {
            if let Some(prefix) = self.prefix_cache(input_ids.size()[0]) {
                *cache = prefix;
            }
            self.embed_inputs(&Inputs { input_ids, position_ids: positions, segment_ids: None, varlen: None })
        } else {
            (self.embed(input_ids), positions + n)
        };
        let key_mask = if n > 0 {
            Tensor::cat(
                &[Tensor::ones([key_mask.size()[0], n], (Kind::Bool, key_mask.device())), key_mask.shallow_clone()],
                1,
            )
        } else {
            key_mask.shallow_clone()
        };
        let t = x.size()[1];
        let s = key_mask.size()[1];
        let dev = self.device;
        // Query i is token s - t + i: it sees keys up to itself that are not padding, and itself.
        let query_at = Tensor::arange_start(s - t, s, (Kind::Int64, dev)).unsqueeze(1);
        let key_at = Tensor::arange(s, (Kind::Int64, dev)).unsqueeze(0);
        let causal = key_at.le_tensor(&query_at);
        let own = key_at.eq_tensor(&query_at);
        let mask = causal.unsqueeze(0).logical_and(&key_mask.unsqueeze(1)).logical_or(&own.unsqueeze(0)).unsqueeze(1);
        let cos_sin = self.rope.cos_sin(&positions);
        let mut x = x;
        for (i, (layer, slot)) in self.layers.iter().zip(cache.layers.iter_mut()).enumerate() {
            self.with_shard(|s| s.gather(i));
            x = self.layer_forward_cached(layer, &x, &cos_sin, Some(&mask), false, Some(slot));
            self.with_shard(|s| s.release(i));
        }
        let h = super::gemma::final_norm(self, &x.select(1, t - 1));
        self.head(&h, false)
    }

    /// Logits [B, T, V] in fp32.
    pub fn logits(&self, inputs: &Inputs) -> Tensor {
        let h = self.hidden_states(inputs, false);
        self.head(&h, false)
    }

    /// The output head over final hidden states: logits [.., V] in fp32 (matmul in the compute
    /// kind). With adapters off, the original head.
    pub fn head(&self, hidden: &Tensor, train: bool) -> Tensor {
        let h = hidden.to_kind(self.compute_kind);
        let logits = match &self.head_original {
            Some(original) if !self.adapters_on() => h.linear::<Tensor>(&original.to_kind(self.compute_kind), None),
            _ => self.lm_head.forward(&h, train, self.adapters_on()),
        };
        super::gemma::cap_logits(&self.arch, logits.to_kind(Kind::Float))
    }

    /// A reward model's scores: one per position, [B, T] fp32, from final hidden states.
    pub fn score(&self, hidden: &Tensor) -> Tensor {
        let w = self.score.as_ref().expect("score() on a model loaded without a score head");
        hidden
            .to_kind(self.compute_kind)
            .linear::<Tensor>(&w.to_kind(self.compute_kind), None)
            .squeeze_dim(-1)
            .to_kind(Kind::Float)
    }

    /// The training forward pass: final hidden states with a graph for the backward pass. With
    /// `checkpointing`, only each decoder layer's input is kept; `finish_backward` recomputes one
    /// layer at a time. `layer_seed(i)` runs before layer i (and again before its recomputation),
    /// so dropout masks repeat.
    pub fn forward_train(&self, inputs: &Inputs, checkpointing: bool, layer_seed: &dyn Fn(usize)) -> TrainForward {
        let root = self.root_unit();
        self.with_shard(|s| s.gather(root));
        let (embedded, positions) = self.embed_inputs(inputs);
        let cos_sin = self.rope.cos_sin(&positions);
        let mask = self.mask_for(inputs);
        let varlen = self.varlen_for(inputs);
        let mut prefix = self.prefix_cache(embedded.size()[0]);
        if !checkpointing {
            let mut x = embedded;
            for (i, layer) in self.layers.iter().enumerate() {
                self.with_shard(|s| s.gather(i));
                layer_seed(i);
                let slot = prefix.as_mut().map(|c| &mut c.layers[i]);
                x = self.layer_forward_packed(layer, &x, &cos_sin, mask.as_ref(), varlen, true, slot);
            }
            let hidden = super::gemma::final_norm(self, &x);
            return TrainForward { hidden, checkpointed: None };
        }
        // Forward without a graph, keeping each layer's input (in host memory when offloaded).
        let offload = self.offload_activations.get();
        let mut saved = Vec::with_capacity(self.layers.len() + 1);
        let mut x = embedded.detach();
        tch::no_grad(|| {
            for (i, layer) in self.layers.iter().enumerate() {
                saved.push(if offload { to_host(&x) } else { x.shallow_clone() });
                self.with_shard(|s| s.gather(i));
                layer_seed(i);
                let slot = prefix.as_mut().map(|c| &mut c.layers[i]);
                x = self.layer_forward_packed(layer, &x, &cos_sin, mask.as_ref(), varlen, true, slot);
                self.with_shard(|s| s.forward_done(i));
            }
        });
        let top = x.detach().set_requires_grad(true);
        let hidden = super::gemma::final_norm(self, &top);
        let varlen = varlen.map(Varlen::shallow_clone);
        // Without a graph below the stack the embedding output is not kept (under offloading it would
        // hold the first layer's input on the device).
        let embedded = embedded.requires_grad().then_some(embedded);
        TrainForward { hidden, checkpointed: Some(Checkpointed { saved, top, embedded, cos_sin, mask, varlen }) }
    }

    /// After the objective's `backward()` from `forward.hidden`: with gradient checkpointing, the
    /// backward pass through the decoder layers, recomputing each (nothing to do otherwise).
    pub fn finish_backward(&self, forward: TrainForward, layer_seed: &dyn Fn(usize)) {
        let root = self.root_unit();
        let Some(Checkpointed { mut saved, top, embedded, cos_sin, mask, varlen }) = forward.checkpointed else {
            // The whole graph went back in one pass: every unit's gradients are complete.
            for unit in (0..=root).rev() {
                self.with_shard(|s| s.backward_done(unit));
            }
            return;
        };
        drop(forward.hidden);
        let mut grad = top.grad();
        for (i, layer) in self.layers.iter().enumerate().rev() {
            let input = to_device(&saved[i], self.device).detach().set_requires_grad(true);
            self.with_shard(|s| s.gather(i));
            layer_seed(i);
            // Prefix tuning: the layer's prefix keys and values, rebuilt with a graph of their own
            // for each layer, so each layer's backward pass reaches the trained tensors once.
            let mut prefix = self.prefix_cache(input.size()[0]);
            let slot = prefix.as_mut().map(|c| &mut c.layers[i]);
            let out = self.layer_forward_packed(layer, &input, &cos_sin, mask.as_ref(), varlen.as_ref(), true, slot);
            self.probe_memory();
            // The vector-Jacobian product through this layer: d(sum(out · g))/d(·) = gᵀ ∂out/∂(·),
            // plus this layer's share of the load-balancing loss (a mixture of experts asking for it).
            let vjp = (out * &grad).sum(Kind::Float);
            match self.routing.recomputed_layer_share() {
                Some(share) => (vjp + share).backward(),
                None => vjp.backward(),
            }
            self.probe_memory();
            grad = input.grad();
            drop(input);
            saved.pop();
            self.with_shard(|s| s.backward_done(i));
        }
        if let Some(embedded) = embedded {
            (embedded * &grad).sum(Kind::Float).backward();
        }
        self.with_shard(|s| s.backward_done(root));
    }

    /// The parameters an optimizer updates, by the name they are saved under: peft's names
    /// (`base_model.model.…lora_A.weight`) for adapters, Hugging Face's for full fine-tuning.
    pub fn trainable_params(&self) -> Vec<Param> {
        let mut out = Vec::new();
        match &self.trainable {
            Trainable::Nothing => {}
            // Every parameter, or those `unfrozen_parameters` left trainable (exec/unfrozen.rs).
            Trainable::Everything => {
                out = self.base_params().into_iter().filter(|p| p.tensor.requires_grad()).collect()
            }
            // peft's saved name for a prompt-tuning adapter's one tensor.
            Trainable::Prompt { .. } | Trainable::Prefix { .. } => {
                out.extend(
                    self.prompt
                        .iter()
                        .chain(&self.prefix)
                        .map(|p| Param { name: "prompt_embeddings".into(), tensor: p.shallow_clone() }),
                );
                // The projection MLP's tensors, under their names in peft's model.
                let encoder = self.prefix_encoder.iter().flat_map(|e| e.named_tensors());
                out.extend(encoder.map(|(name, tensor)| Param { name, tensor }));
            }
            Trainable::Bottleneck(spec) => out = super::bottleneck::params(self, spec),
            Trainable::Lora { .. } | Trainable::Ia3 { .. } => {
                if let Some(lora) = &self.embed_lora {
                    let p = peft_prefix("model.embed_tokens");
                    out.push(Param { name: format!("{p}.lora_embedding_A"), tensor: lora.a.shallow_clone() });
                    out.push(Param { name: format!("{p}.lora_embedding_B"), tensor: lora.b.shallow_clone() });
                    if let Some(m) = &self.embed_magnitude {
                        out.push(Param { name: format!("{p}.lora_magnitude_vector"), tensor: m.shallow_clone() });
                    }
                }
                // transformers 5 names every sparse block `mlp` in memory (Mixtral's checkpoint:
                // `block_sparse_moe`), and peft names the router's LoRA after it.
                let block = self.arch.moe.as_ref().map(|m| format!(".{}.", m.block));
                for lin in self.linears().into_iter().chain([&self.lm_head]) {
                    if let Some(adapter) = &lin.adapter {
                        let module = match &block {
                            Some(b) => lin.name.replace(b.as_str(), ".mlp."),
                            None => lin.name.clone(),
                        };
                        let p = peft_prefix(&module);
                        for (suffix, tensor) in adapter.tensors() {
                            out.push(Param { name: format!("{p}.{suffix}"), tensor });
                        }
                    }
                }
                // Fused experts: a second ParamWrapper on the experts module nests the first, whose
                // tensors then sit under `base_layer` (peft wraps gate_up_proj, then down_proj).
                for (l, layer) in self.layers.iter().enumerate() {
                    let FeedForward::Sparse(block) = &layer.mlp else { continue };
                    let p = peft_prefix(&format!("model.layers.{l}.mlp.experts"));
                    let inner = if block.down_lora.is_some() { ".base_layer" } else { "" };
                    for (at, lora) in [(inner, &block.gate_up_lora), ("", &block.down_lora)] {
                        if let Some(lora) = lora {
                            out.push(Param { name: format!("{p}{at}.lora_A.weight"), tensor: lora.a.shallow_clone() });
                            out.push(Param { name: format!("{p}{at}.lora_B.weight"), tensor: lora.b.shallow_clone() });
                        }
                    }
                }
                if let Some(e) = &self.embed_tokens_trained {
                    out.push(Param { name: modules_to_save_name("model.embed_tokens"), tensor: e.shallow_clone() });
                }
                if self.lm_head.weight.requires_grad() {
                    out.push(Param {
                        name: modules_to_save_name("lm_head"),
                        tensor: self.lm_head.weight.shallow_clone(),
                    });
                }
                if let Some(score) = &self.score {
                    out.push(Param { name: modules_to_save_name("score"), tensor: score.shallow_clone() });
                }
            }
        }
        out
    }

    /// Every base tensor under its Hugging Face name (the tied head once, as transformers saves).
    pub fn base_params(&self) -> Vec<Param> {
        let mut out =
            vec![Param { name: "model.embed_tokens.weight".into(), tensor: self.embed_tokens.shallow_clone() }];
        for (l, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{l}");
            for (name, w) in layer_norms(layer) {
                out.push(Param { name: format!("{p}.{name}.weight"), tensor: w.shallow_clone() });
            }
            for (name, w) in layer.gemma.iter().flat_map(|g| g.norms()) {
                out.push(Param { name: format!("{p}.{name}.weight"), tensor: w.shallow_clone() });
            }
            for lin in layer_linears(layer) {
                let weight = match &lin.quantized {
                    Some(q) => q.dequantize(q.dtype()),
                    None => lin.weight.shallow_clone(),
                };
                out.push(Param { name: format!("{}.weight", lin.name), tensor: weight });
                if let Some(b) = &lin.bias {
                    out.push(Param { name: format!("{}.bias", lin.name), tensor: b.shallow_clone() });
                }
            }
        }
        out.push(Param { name: "model.norm.weight".into(), tensor: self.norm.shallow_clone() });
        if let Some(score) = &self.score {
            out.push(Param { name: "score.weight".into(), tensor: score.shallow_clone() });
        } else if !self.arch.tie_word_embeddings {
            out.push(Param { name: "lm_head.weight".into(), tensor: self.lm_head.weight.shallow_clone() });
        }
        out
    }

    /// Every tensor of the model by shard unit (decoder layer i, then the root), each once, for
    /// sharded training: base weights (a 4-bit base as its packed codes and absmax), norms,
    /// biases and adapter tensors. An 8-bit base stays whole on every rank.
    pub fn unit_tensors(&self) -> Vec<Vec<(String, Tensor)>> {
        fn linear_tensors(lin: &Linear, out: &mut Vec<(String, Tensor)>) {
            match &lin.quantized {
                None if lin.weight.numel() > 0 => {
                    out.push((format!("{}.weight", lin.name), lin.weight.shallow_clone()))
                }
                // The codes and block scales of this weight alone (the code table is shared).
                Some(QuantizedWeight::Four(q)) => {
                    out.push((format!("{}.weight.packed", lin.name), q.packed.shallow_clone()));
                    out.push((format!("{}.weight.absmax", lin.name), q.absmax.shallow_clone()));
                    if let Some(n) = &q.nested {
                        out.push((format!("{}.weight.nested_absmax", lin.name), n.absmax.shallow_clone()));
                    }
                }
                _ => {}
            }
            if let Some(b) = &lin.bias {
                out.push((format!("{}.bias", lin.name), b.shallow_clone()));
            }
            if let Some(adapter) = &lin.adapter {
                for (suffix, t) in adapter.tensors() {
                    out.push((format!("{}.{suffix}", peft_prefix(&lin.name)), t));
                }
            }
        }
        let mut units: Vec<Vec<(String, Tensor)>> = self
            .layers
            .iter()
            .enumerate()
            .map(|(l, layer)| {
                let p = format!("model.layers.{l}");
                let mut out: Vec<(String, Tensor)> = layer_norms(layer)
                    .into_iter()
                    .map(|(name, w)| (format!("{p}.{name}.weight"), w.shallow_clone()))
                    .collect();
                for (name, w) in layer.gemma.iter().flat_map(|g| g.norms()) {
                    out.push((format!("{p}.{name}.weight"), w.shallow_clone()));
                }
                for lin in layer_linears(layer) {
                    linear_tensors(lin, &mut out);
                }
                out
            })
            .collect();
        let mut root = vec![("model.embed_tokens.weight".to_string(), self.embed_tokens.shallow_clone())];
        if let Some(e) = &self.embed_tokens_trained {
            root.push((modules_to_save_name("model.embed_tokens"), e.shallow_clone()));
        }
        if let Some(lora) = &self.embed_lora {
            let p = peft_prefix("model.embed_tokens");
            root.push((format!("{p}.lora_embedding_A"), lora.a.shallow_clone()));
            root.push((format!("{p}.lora_embedding_B"), lora.b.shallow_clone()));
            if let Some(m) = &self.embed_magnitude {
                root.push((format!("{p}.lora_magnitude_vector"), m.shallow_clone()));
            }
        }
        root.push(("model.norm.weight".into(), self.norm.shallow_clone()));
        linear_tensors(&self.lm_head, &mut root);
        if let Some(h) = &self.head_original {
            root.push(("lm_head.original".into(), h.shallow_clone()));
        }
        if let Some(score) = &self.score {
            root.push(("score.weight".into(), score.shallow_clone()));
        }
        // Prompt and prefix tuning's tensors are read from the embeddings on, while the root is
        // gathered: they shard with it.
        for t in self.prompt.iter().chain(&self.prefix) {
            root.push(("prompt_embeddings".into(), t.shallow_clone()));
        }
        units.push(root);
        // A tied head is the embedding itself: listed once.
        let mut seen = std::collections::HashSet::new();
        for unit in &mut units {
            unit.retain(|(_, t)| t.numel() == 0 || seen.insert(t.data_ptr() as usize));
        }
        units
    }

    pub fn linears(&self) -> Vec<&Linear> {
        self.layers.iter().flat_map(layer_linears).collect()
    }

    /// The weights of the merged model (LoRA folded in, saved copies replacing the originals),
    /// under Hugging Face names, each folded (or dequantized) only when written, so writing the
    /// model holds one merged weight at a time.
    pub fn merged_weights(&self) -> Vec<Deferred<'_>> {
        let ready = |name: &str, t: &Tensor| Deferred::ready(name.to_string(), t.detach());
        fn merged(name: String, lin: &Linear) -> Deferred<'_> {
            let (shape, kind) = match &lin.quantized {
                Some(q) => (q.shape(), q.dtype()),
                None => (lin.weight.size(), lin.weight.kind()),
            };
            Deferred::new(name, shape, kind, move || lin.merged_weight())
        }
        let embed = self.embed_tokens_trained.as_ref().unwrap_or(&self.embed_tokens);
        let mut out = vec![match &self.embed_lora {
            // peft's lora.Embedding merge: W + (B A)ᵀ · scaling (with DoRA, rescaled per feature).
            Some(lora) => {
                let (shape, kind) = (embed.size(), embed.kind());
                let magnitude = self.embed_magnitude.as_ref();
                Deferred::new("model.embed_tokens.weight".into(), shape, kind, move || {
                    let merged = match magnitude {
                        Some(m) => super::embed_dora::merged(embed, lora, m),
                        None => embed.to_kind(Kind::Float) + lora.b.matmul(&lora.a).tr() * lora.scaling,
                    };
                    merged.to_kind(kind).detach()
                })
            }
            None => ready("model.embed_tokens.weight", embed),
        }];
        for (l, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{l}");
            for (name, w) in layer_norms(layer) {
                out.push(ready(&format!("{p}.{name}.weight"), w));
            }
            for (name, w) in layer.gemma.iter().flat_map(|g| g.norms()) {
                out.push(ready(&format!("{p}.{name}.weight"), w));
            }
            for lin in layer_linears(layer) {
                if let FeedForward::Sparse(block) = &layer.mlp
                    && block.adapts(lin)
                {
                    let (shape, kind) = match &lin.quantized {
                        Some(q) => (q.shape(), q.dtype()),
                        None => (lin.weight.size(), lin.weight.kind()),
                    };
                    let name = format!("{}.weight", lin.name);
                    out.push(Deferred::new(name, shape, kind, move || block.merged_expert_weight(lin)));
                    continue;
                }
                out.push(merged(format!("{}.weight", lin.name), lin));
                if let Some(b) = lin.merged_bias() {
                    out.push(ready(&format!("{}.bias", lin.name), &b));
                }
            }
        }
        out.push(ready("model.norm.weight", &self.norm));
        // A tied head under an embedding LoRA keeps the base embedding (the adapter changes the
        // lookup only), so it is written apart from the merged embedding (peft's merge_and_unload
        // would fold the update into both and change the logits; it warns about tied targets).
        let head_trained =
            self.lm_head.weight.requires_grad() || self.lm_head.adapter.is_some() || self.embed_lora.is_some();
        if let Some(score) = &self.score {
            out.push(ready("score.weight", score));
        } else if !self.arch.tie_word_embeddings || head_trained {
            // A trained head on a tied model can no longer share the embedding: save it.
            out.push(merged("lm_head.weight".into(), &self.lm_head));
        }
        out
    }
}

/// The reward head: `score.weight` [1, H] from the checkpoint when it has one (a trained reward
/// model), else drawn as transformers initialises a new `nn.Linear` head: normal(0, initializer_range).
fn load_score(ckpt: &Checkpoint, arch: &Architecture, opts: &LoadOptions) -> Result<Tensor, String> {
    let shape = [1, arch.hidden_size as i64];
    let trains = !matches!(opts.trainable, Trainable::Nothing);
    let kind = if trains { Kind::Float } else { opts.base_kind };
    let score = if ckpt.contains("score.weight") {
        ckpt.load("score.weight", &shape, kind, opts.device)?
    } else if trains {
        Tensor::empty(shape, (Kind::Float, opts.device)).normal_(0.0, arch.initializer_range)
    } else {
        return Err("the checkpoint has no `score.weight`: it is not a reward model".into());
    };
    Ok(if trains { score.set_requires_grad(true) } else { score })
}

/// A layer's linears in Hugging Face order (q, k, v or qkv; o; gate, up or gate_up; down; or the
/// experts' and router's).
fn layer_linears(l: &DecoderLayer) -> Vec<&Linear> {
    let a = &l.self_attn;
    let mut out = a.qkv.linears();
    out.push(&a.o_proj);
    match &l.mlp {
        FeedForward::Dense(m) => {
            out.extend(m.gate_up.linears());
            out.push(&m.down_proj);
        }
        FeedForward::Sparse(moe) => out.extend(moe.linears()),
    }
    out
}

pub(super) fn layer_linears_mut(l: &mut DecoderLayer) -> Vec<&mut Linear> {
    let a = &mut l.self_attn;
    let mut out = a.qkv.linears_mut();
    out.push(&mut a.o_proj);
    match &mut l.mlp {
        FeedForward::Dense(m) => {
            out.extend(m.gate_up.linears_mut());
            out.push(&mut m.down_proj);
        }
        FeedForward::Sparse(moe) => out.extend(moe.linears_mut()),
    }
    out
}

/// A layer's norms by module path under the layer (`input_layernorm`, `self_attn.q_norm`, ...).
fn layer_norms(l: &DecoderLayer) -> Vec<(&'static str, &Tensor)> {
    let a = &l.self_attn;
    [
        ("input_layernorm", l.input_layernorm.as_ref()),
        ("post_attention_layernorm", Some(&l.post_attention_layernorm)),
        ("post_feedforward_layernorm", l.post_feedforward_layernorm.as_ref()),
        ("self_attn.q_norm", a.q_norm.as_ref()),
        ("self_attn.k_norm", a.k_norm.as_ref()),
    ]
    .into_iter()
    .filter_map(|(n, w)| Some((n, w?)))
    .collect()
}

/// peft's saved-name prefix for a base module.
pub fn peft_prefix(module: &str) -> String {
    format!("base_model.model.{module}")
}

/// peft's saved name for a modules_to_save copy of `module`.
pub fn modules_to_save_name(module: &str) -> String {
    format!("base_model.model.{module}.weight")
}

/// Scaled dot-product attention of queries [B, nh, T, d] over keys and values [B, nkv, S, d]
/// (nh a multiple of nkv). Without a mask, grouped-query heads go to SDPA as they are
/// (`enable_gqa`, which CUDA's flash kernel takes). With a mask (packed rows), neither the flash
/// nor the memory-efficient kernel takes grouped heads, and SDPA would fall back to the math
/// kernel and its T×T scores per head: the key and value heads are expanded to nh first (as
/// transformers' `repeat_kv`), so the memory-efficient kernel takes the mask.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, causal: bool) -> Tensor {
    let (nh, nkv) = (q.size()[1], k.size()[1]);
    if mask.is_some() && nh != nkv {
        let (k, v) = (k.repeat_interleave_self_int(nh / nkv, 1, None), v.repeat_interleave_self_int(nh / nkv, 1, None));
        return Tensor::scaled_dot_product_attention(q, &k, &v, mask, 0.0, causal, None::<f64>, false);
    }
    Tensor::scaled_dot_product_attention(q, k, v, mask, 0.0, causal, None::<f64>, nh != nkv)
}

/// Causal attention of each packed sample over itself through flash attention's varlen form:
/// q [B, nh, T, d], k and v [B, nkv, T, d] are flattened to B·T tokens and cut at `varlen`'s
/// boundaries; the result has q's shape, as `attend` gives it.
pub fn attend_varlen(q: &Tensor, k: &Tensor, v: &Tensor, varlen: &Varlen) -> Tensor {
    let (b, nh, t, d) = q.size4().expect("q is [B, heads, T, head_dim]");
    let flat = |x: &Tensor| x.transpose(1, 2).reshape([b * t, x.size()[1], d]);
    let out = crate::exec::torch_ops::flash_attention_varlen(
        &flat(q),
        &flat(k),
        &flat(v),
        &varlen.cu_seqlens,
        varlen.max_seqlen,
    )
    .unwrap_or_else(|e| panic!("flash attention (varlen): {e}"));
    out.view([b, t, nh, d]).transpose(1, 2)
}

/// transformers' LlamaRMSNorm: normalise in fp32, cast back, then scale.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    let kind = x.kind();
    let xf = x.to_kind(Kind::Float);
    let variance = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
    let normed = xf * (variance + eps).rsqrt();
    weight.to_kind(kind) * normed.to_kind(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_rows_take_flash_varlen_only_where_the_device_has_it() {
        use PackedKernel::*;
        let cuda = Device::Cuda(0);
        assert_eq!(flash_varlen_applies(cuda, Some((9, 0)), Kind::BFloat16, 128), FlashVarlen);
        assert_eq!(flash_varlen_applies(cuda, Some((8, 0)), Kind::Half, 256), FlashVarlen);
        assert_eq!(flash_varlen_applies(cuda, Some((8, 6)), Kind::BFloat16, 8), FlashVarlen);
        // Turing and older, unknown capability, fp32, too wide or odd heads, the CPU: the mask.
        assert_eq!(flash_varlen_applies(cuda, Some((7, 5)), Kind::Half, 128), Masked);
        assert_eq!(flash_varlen_applies(cuda, None, Kind::BFloat16, 128), Masked);
        assert_eq!(flash_varlen_applies(cuda, Some((9, 0)), Kind::Float, 128), Masked);
        assert_eq!(flash_varlen_applies(cuda, Some((9, 0)), Kind::BFloat16, 512), Masked);
        assert_eq!(flash_varlen_applies(cuda, Some((9, 0)), Kind::BFloat16, 100), Masked);
        assert_eq!(flash_varlen_applies(Device::Cpu, Some((9, 0)), Kind::BFloat16, 128), Masked);
    }

    #[test]
    fn flash_varlen_equals_the_masked_path_on_cuda() {
        // The op exists in every libtorch but runs on CUDA only: on the CPU the shim hands back
        // libtorch's refusal.
        let q = Tensor::zeros([6, 2, 8], (Kind::BFloat16, Device::Cpu));
        let cu = Tensor::from_slice(&[0i32, 4, 6]);
        assert!(crate::exec::torch_ops::flash_attention_varlen(&q, &q, &q, &cu, 4).is_err());
        let device = Device::cuda_if_available();
        let capability = crate::exec::cuda::compute_capability(0);
        if flash_varlen_applies(device, capability, Kind::BFloat16, 64) != PackedKernel::FlashVarlen {
            eprintln!("skipped: flash varlen against the masked path needs a CUDA device of compute capability 8.0+");
            return;
        }
        // Two rows of 16: samples of 5, 7 and 4 tokens, then 10 and 6 (padding as its own), GQA 8 over 2.
        tch::manual_seed(3);
        let seg: Vec<i64> = [vec![1; 5], vec![2; 7], vec![3; 4], vec![1; 10], vec![0; 6]].concat();
        let segments = Tensor::from_slice(&seg).view([2, 16]).to_device(device);
        let inputs =
            Inputs { input_ids: &segments, position_ids: &segments, segment_ids: Some(&segments), varlen: None };
        let mask = CausalLm::attention_mask(&inputs).unwrap();
        let varlen =
            Varlen { cu_seqlens: Tensor::from_slice(&[0i32, 5, 12, 16, 26, 32]).to_device(device), max_seqlen: 10 };
        let make = |heads| Tensor::randn([2, heads, 16, 64], (Kind::BFloat16, device)).set_requires_grad(true);
        let (q, k, v) = (make(8), make(2), make(2));
        let masked = attend(&q, &k, &v, Some(&mask), false);
        let flash = attend_varlen(&q, &k, &v, &varlen);
        let diff = (masked.to_kind(Kind::Float) - flash.to_kind(Kind::Float)).abs().max().double_value(&[]);
        let grads = |out: &Tensor| {
            let loss = (out.to_kind(Kind::Float) * out.to_kind(Kind::Float)).sum(Kind::Float);
            Tensor::run_backward(&[loss], &[&q, &k, &v], false, false)
        };
        let (gm, gf) = (grads(&masked), grads(&flash));
        let gdiff = gm
            .iter()
            .zip(&gf)
            .map(|(a, b)| (a - b).abs().max().to_kind(Kind::Float).double_value(&[]))
            .fold(0.0, f64::max);
        eprintln!("flash varlen vs masked SDPA (bf16): output {diff:e}, gradients {gdiff:e}");
        assert!(diff < 2e-2 && gdiff < 5e-2, "output {diff:e}, gradients {gdiff:e}");
    }

    #[test]
    fn expanded_key_value_heads_give_grouped_query_attention_under_a_mask() {
        // 8 query heads over 2 key/value heads, two packed samples of 3 and 4 tokens.
        tch::manual_seed(3);
        let opts = (Kind::Float, Device::Cpu);
        let (q, k, v) = (
            Tensor::randn([2, 8, 7, 16], opts),
            Tensor::randn([2, 2, 7, 16], opts),
            Tensor::randn([2, 2, 7, 16], opts),
        );
        let seg = Tensor::from_slice(&[0i64, 0, 0, 1, 1, 1, 1]).unsqueeze(0).expand([2, 7], false);
        let position_ids = Tensor::zeros([2, 7], (Kind::Int64, Device::Cpu));
        let inputs =
            Inputs { input_ids: &position_ids, position_ids: &position_ids, segment_ids: Some(&seg), varlen: None };
        let mask = CausalLm::attention_mask(&inputs).unwrap();
        let expanded = attend(&q, &k, &v, Some(&mask), false);
        let grouped = Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&mask), 0.0, false, None::<f64>, true);
        let diff = (&expanded - &grouped).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{diff:e}");
        // Each sample alone (plain causal, grouped heads as they are) gives the same rows.
        let alone = attend(&q.narrow(2, 3, 4), &k.narrow(2, 3, 4), &v.narrow(2, 3, 4), None, true);
        let diff = (&expanded.narrow(2, 3, 4) - alone).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{diff:e}");
    }
}
