//! The sparse mixture-of-experts block of Mixtral and Qwen3-MoE, computed as transformers 5.24's
//! `MixtralSparseMoeBlock` / `Qwen3MoeSparseMoeBlock`: router logits from `gate`, softmax in fp32,
//! the top-k experts per token (their probabilities renormalised where the family does), and each
//! hit expert's SwiGLU MLP over its tokens, scaled by the token's routing weight and summed in
//! expert order (`index_add`), so the arithmetic is the reference's. All experts stay resident;
//! activations are only those of the routed (token, expert) pairs. Every expert projection is a
//! `Linear` under its checkpoint name, so loading, saving, merging and sharding walk them as they
//! walk the attention projections. LoRA through peft's `target_parameters` (its ParamWrapper on
//! transformers 5's fused `gate_up_proj` / `down_proj`) is held here as one pair per fused
//! parameter and applied per expert; on the router it is the `gate` linear's own LoRA. Also here:
//! the Switch Transformer load-balancing loss as transformers' `load_balancing_loss_func` computes it.

use super::int8;
use super::linear::{Linear, Lora};
use super::llama::{CausalLm, Inputs, Quantize};
use super::nf4;
use crate::plan::moe::MoeArch;
use std::cell::{Cell, RefCell};
use tch::{Kind, Tensor};

/// One expert's SwiGLU MLP (Mixtral: w1 / w3 / w2; Qwen3-MoE: gate_proj / up_proj / down_proj).
pub struct Expert {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

pub struct SparseMoe {
    /// The router: [experts, hidden], no bias.
    pub gate: Linear,
    pub experts: Vec<Expert>,
    pub top_k: i64,
    pub normalize_top_k: bool,
    /// peft's ParamWrapper on `experts.gate_up_proj` [E, 2I, H]: A [r·E, H], B [2I, r·E].
    pub gate_up_lora: Option<Lora>,
    /// peft's ParamWrapper on `experts.down_proj` [E, H, I]: A [r·E, I], B [H, r·E].
    pub down_lora: Option<Lora>,
}

/// Expert `e`'s rank-r factors of a fused pair, as peft's `get_delta_factors` cuts them: rows
/// e·r .. e·r + r of A, and columns j·E + e of B (B reshaped [out, r, E]).
pub fn expert_factors(lora: &Lora, e: i64, experts: i64) -> (Tensor, Tensor) {
    let r = lora.a.size()[0] / experts;
    let out = lora.b.size()[0];
    (lora.a.narrow(0, e * r, r), lora.b.reshape([out, r, experts]).select(2, e))
}

/// `scaling · B_e A_e x` in `x`'s kind: the expert's share of the fused parameter's update.
fn expert_delta(lora: &Lora, e: i64, experts: i64, x: &Tensor) -> Tensor {
    let (a, b) = expert_factors(lora, e, experts);
    let kind = x.kind();
    x.linear::<Tensor>(&a.to_kind(kind), None).linear::<Tensor>(&b.to_kind(kind), None) * lora.scaling
}

impl SparseMoe {
    /// The block over normed hidden states `h` [B, T, H] (compute kind): the output [B, T, H] and
    /// the router logits [B·T, experts].
    pub fn forward(&self, h: &Tensor, train: bool, adapters: bool) -> (Tensor, Tensor) {
        let size = h.size();
        let x = h.reshape([-1, size[2]]);
        let router_logits = self.gate.forward(&x, train, adapters);
        let probs = router_logits.to_kind(Kind::Float).softmax(-1, Kind::Float);
        let (top, index) = probs.topk(self.top_k, -1, true, true);
        let top = if self.normalize_top_k { &top / top.sum_dim_intlist(-1, true, Kind::Float) } else { top };
        let mut out = x.zeros_like();
        // The (token, slot) pairs grouped by expert, each group in token order as torch.where gives
        // them: a stable sort of the flattened assignments, and one host read of the group sizes
        // per layer (not one per expert), counted by the run's host-sync line.
        let k = self.top_k;
        let flat = index.reshape([-1]);
        let (_, order) = flat.sort_stable(true, 0, false);
        let counts = flat.bincount::<Tensor>(None, self.experts.len() as i64);
        let counts = crate::exec::host_sync::read_i64(&counts, "the expert token counts").expect("expert counts");
        let mut start = 0;
        let n = self.experts.len() as i64;
        for (e, (expert, &count)) in self.experts.iter().zip(&counts).enumerate() {
            if count == 0 {
                continue;
            }
            let positions = order.narrow(0, start, count);
            start += count;
            let (tokens, slots) = (positions.divide_scalar_mode(k, "floor"), positions.remainder(k));
            let current = x.index_select(0, &tokens);
            let gate = expert.gate_proj.forward(&current, train, adapters);
            let up = expert.up_proj.forward(&current, train, adapters);
            let (gate, up) = match self.gate_up_lora.as_ref().filter(|_| adapters) {
                // One update over the fused [gate; up] rows: the first I outputs are gate's.
                Some(lora) => {
                    let d = expert_delta(lora, e as i64, n, &current);
                    let i = gate.size()[1];
                    (gate + d.narrow(1, 0, i), up + d.narrow(1, i, i))
                }
                None => (gate, up),
            };
            let act = gate.silu() * up;
            let y = expert.down_proj.forward(&act, train, adapters);
            let y = match self.down_lora.as_ref().filter(|_| adapters) {
                Some(lora) => y + expert_delta(lora, e as i64, n, &act),
                None => y,
            };
            let weight = top.index(&[Some(&tokens), Some(&slots)]).unsqueeze(-1);
            let y = (y.to_kind(Kind::Float) * weight).to_kind(out.kind());
            out = out.index_add(0, &tokens, &y);
        }
        (out.reshape(size.as_slice()), router_logits)
    }

    /// The block's linears: the router, then each expert's gate, up and down projections.
    pub fn linears(&self) -> impl Iterator<Item = &Linear> {
        std::iter::once(&self.gate).chain(self.experts.iter().flat_map(|e| [&e.gate_proj, &e.up_proj, &e.down_proj]))
    }

    pub fn linears_mut(&mut self) -> impl Iterator<Item = &mut Linear> {
        std::iter::once(&mut self.gate)
            .chain(self.experts.iter_mut().flat_map(|e| [&mut e.gate_proj, &mut e.up_proj, &mut e.down_proj]))
    }

    /// Whether `lin` is an expert projection that a fused-parameter LoRA updates.
    pub fn adapts(&self, lin: &Linear) -> bool {
        self.expert_of(lin).is_some_and(|(_, which)| match which {
            2 => self.down_lora.is_some(),
            _ => self.gate_up_lora.is_some(),
        })
    }

    /// (expert, 0 gate / 1 up / 2 down) of one of this block's expert linears.
    fn expert_of(&self, lin: &Linear) -> Option<(usize, usize)> {
        self.experts.iter().enumerate().find_map(|(e, x)| {
            [&x.gate_proj, &x.up_proj, &x.down_proj].iter().position(|l| std::ptr::eq(*l, lin)).map(|w| (e, w))
        })
    }

    /// An expert linear's weight with its share of the fused update folded in (peft's
    /// ParamWrapper.merge: `W + scaling · B_e A_e`, in fp32, then the weight's dtype).
    pub fn merged_expert_weight(&self, lin: &Linear) -> Tensor {
        let merged = lin.merged_weight();
        let Some((e, which)) = self.expert_of(lin) else { return merged };
        let lora = if which == 2 { &self.down_lora } else { &self.gate_up_lora };
        let Some(lora) = lora else { return merged };
        let (a, b) = expert_factors(lora, e as i64, self.experts.len() as i64);
        let mut delta = b.to_kind(Kind::Float).matmul(&a.to_kind(Kind::Float)) * lora.scaling;
        if which < 2 {
            let i = delta.size()[0] / 2;
            delta = delta.narrow(0, which as i64 * i, i);
        }
        (merged.to_kind(Kind::Float) + delta.to_device(merged.device())).to_kind(merged.kind()).detach()
    }
}

/// Per-expert sums of one forward pass's routing, layer by layer: what the load-balancing loss
/// is built from.
pub struct RoutingSums {
    /// Top-k assignments per expert, summed over layers and (unmasked) tokens; no gradient.
    pub counts: Tensor,
    /// Rows counted (tokens × layers), masked rows left out.
    pub rows: Tensor,
}

/// transformers' `load_balancing_loss_func`: for router logits [N, E] of every sparse layer and
/// an optional mask [N] (1 for real tokens), `E · Σ_e (tokens_e / rows) · (prob_e / rows)`, where
/// tokens_e counts top-k assignments and prob_e sums routing probabilities over all layers.
pub fn load_balancing_loss(router_logits: &[Tensor], top_k: i64, mask: Option<&Tensor>) -> Tensor {
    let Some(first) = router_logits.first() else {
        return Tensor::zeros([], (Kind::Float, tch::Device::Cpu));
    };
    let e = first.size()[1];
    let sums = routing_sums(router_logits, top_k, mask);
    let mut prob_sum = Tensor::zeros([e], (Kind::Float, first.device()));
    for logits in router_logits {
        prob_sum += layer_probability_sum(logits, mask);
    }
    let tokens = &sums.counts / &sums.rows;
    let probs = prob_sum / &sums.rows;
    (tokens * probs).sum(Kind::Float) * e as f64
}

/// The assignment counts and row count over all layers (no gradient flows through them).
pub fn routing_sums(router_logits: &[Tensor], top_k: i64, mask: Option<&Tensor>) -> RoutingSums {
    let _guard = tch::no_grad_guard();
    let first = &router_logits[0];
    let (e, device) = (first.size()[1], first.device());
    let mut counts = Tensor::zeros([e], (Kind::Float, device));
    let mut rows = Tensor::zeros([], (Kind::Float, device));
    for logits in router_logits {
        let probs = logits.to_kind(Kind::Float).softmax(-1, Kind::Float);
        let (_, selected) = probs.topk(top_k, -1, true, true);
        let n = selected.size()[0];
        let weight = match mask {
            Some(m) => m.to_kind(Kind::Float).reshape([n, 1]).expand([n, top_k], false),
            None => Tensor::ones([n, top_k], (Kind::Float, device)),
        };
        counts = counts.scatter_add(0, &selected.reshape([-1]), &weight.reshape([-1]));
        rows += match mask {
            Some(m) => m.to_kind(Kind::Float).sum(Kind::Float),
            None => Tensor::from(n as f32).to_device(device),
        };
    }
    RoutingSums { counts, rows }
}

/// One layer's routing probabilities summed per expert over (unmasked) rows: [E], with a graph.
pub fn layer_probability_sum(logits: &Tensor, mask: Option<&Tensor>) -> Tensor {
    let probs = logits.to_kind(Kind::Float).softmax(-1, Kind::Float);
    match mask {
        Some(m) => (probs * m.to_kind(Kind::Float).unsqueeze(-1)).sum_dim_intlist(0, false, Kind::Float),
        None => probs.sum_dim_intlist(0, false, Kind::Float),
    }
}

/// One layer's share of the load-balancing loss once the whole pass's counts are known: the loss
/// is bilinear in counts (constant) and probabilities, so it is the sum over layers of
/// `E · Σ_e counts_e · prob_l,e / rows²`. Gradient checkpointing adds each recomputed layer's share.
pub fn layer_share(logits: &Tensor, mask: Option<&Tensor>, sums: &RoutingSums) -> Tensor {
    let e = logits.size()[1] as f64;
    let p = layer_probability_sum(logits, mask);
    (p * &sums.counts).sum(Kind::Float) * e / (&sums.rows * &sums.rows)
}

/// Loads layer `layer`'s sparse block through `linear` (the loader's linear reader: dense,
/// pre-quantized or quantized on load), under the checkpoint's names. With `experts` (Axolotl's
/// `quantize_moe_experts`, see [`quantize_experts`]) the layer's expert weights are quantized as
/// the fused tensors transformers 5 holds, before the next layer loads.
pub fn load(
    moe: &MoeArch,
    layer: u64,
    hidden: i64,
    linear: &dyn Fn(String, i64, i64, bool) -> Result<Linear, String>,
    experts: Option<Quantize>,
) -> Result<SparseMoe, String> {
    let i = moe.expert_intermediate_size as i64;
    let mut loaded = (0..moe.num_experts)
        .map(|e| {
            let [gate, up, down] = moe.expert_names(layer, e);
            Ok(Expert {
                gate_proj: linear(gate, hidden, i, false)?,
                up_proj: linear(up, hidden, i, false)?,
                down_proj: linear(down, i, hidden, false)?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    if let Some(spec) = experts {
        quantize_experts(&mut loaded, spec, layer)?;
    }
    Ok(SparseMoe {
        gate: linear(moe.router_name(layer), hidden, moe.num_experts as i64, false)?,
        experts: loaded,
        top_k: moe.experts_per_token as i64,
        normalize_top_k: moe.normalize_top_k,
        gate_up_lora: None,
        down_lora: None,
    })
}

/// The block size of `quantize_moe_experts`' 4-bit experts: Axolotl calls bitsandbytes'
/// `replace_parameter_4bit` without one, so `quantize_4bit` takes its default (64).
pub const EXPERT_BLOCKSIZE: i64 = 64;

/// Axolotl's `quantize_moe_experts` on one layer's (dense, loaded) experts. transformers 5 holds
/// them fused: `gate_up_proj` [E, 2I, H] (expert e's gate rows, then its up rows) and `down_proj`
/// [E, H, I]. With 4 bits, bitsandbytes' `replace_parameter_4bit` quantizes each fused tensor
/// whole (`quantize_4bit` over the flattened tensor: blocks of 64, and with double quantization
/// one offset and nested blocks over all of its absmax, so quantizing expert by expert would give
/// other bytes); its parametrization dequantizes the whole tensor on access. With 8 bits,
/// Axolotl's `replace_parameter_8bit`: `int8_vectorwise_quant` of the fp16 tensor, one scale per
/// row of its last dimension (so per expert it is the same), dequantized by
/// `int8_vectorwise_dequant` to fp32. Each expert linear keeps a view of its rows of the fused
/// state: dequantizing it gives exactly its rows of the whole dequantized tensor (both formats
/// dequantize per element and per block or row), so the block computes as transformers does
/// with the parametrized parameter, and a merge writes the same per-expert weights.
pub fn quantize_experts(experts: &mut [Expert], spec: Quantize, layer: u64) -> Result<(), String> {
    use super::linear::QuantizedWeight;
    let dense = |l: &Linear| -> Result<Tensor, String> {
        if l.quantized.is_some() || l.weight.numel() == 0 {
            return Err(format!("{}: quantize_moe_experts needs the expert weights dense in the checkpoint", l.name));
        }
        Ok(l.weight.shallow_clone())
    };
    match spec {
        Quantize::FourBit(f) => {
            let gate_up = experts
                .iter()
                .map(|x| Ok(Tensor::cat(&[dense(&x.gate_proj)?, dense(&x.up_proj)?], 0)))
                .collect::<Result<Vec<_>, String>>()?;
            let down = experts.iter().map(|x| dense(&x.down_proj)).collect::<Result<Vec<_>, String>>()?;
            // The per-expert concatenations go as soon as they are stacked (a layer's experts at a time).
            let (gate_up, down) = {
                let stacked = (Tensor::stack(&gate_up, 0), Tensor::stack(&down, 0));
                drop((gate_up, down));
                stacked
            };
            let (two_i, h) = (gate_up.size()[1], gate_up.size()[2]);
            let i = two_i / 2;
            let q_gate_up = nf4::quantize(&gate_up, EXPERT_BLOCKSIZE, f.quant_type, f.double_quant);
            let q_down = nf4::quantize(&down, EXPERT_BLOCKSIZE, f.quant_type, f.double_quant);
            drop((gate_up, down));
            let cut = |q: &nf4::Quantized4, start: i64, shape: [i64; 2]| {
                q.slice(start, &shape).map(QuantizedWeight::Four).ok_or_else(|| {
                    format!(
                        "unsupported-moe-quantized-experts-layout: layer {layer}: an expert's {shape:?} weight does not \
                         hold whole {EXPERT_BLOCKSIZE}-element blocks of the fused tensor"
                    )
                })
            };
            for (k, x) in experts.iter_mut().enumerate() {
                let k = k as i64;
                x.gate_proj.quantized = Some(cut(&q_gate_up, k * two_i * h, [i, h])?);
                x.up_proj.quantized = Some(cut(&q_gate_up, k * two_i * h + i * h, [i, h])?);
                x.down_proj.quantized = Some(cut(&q_down, k * h * i, [h, i])?);
                for l in [&mut x.gate_proj, &mut x.up_proj, &mut x.down_proj] {
                    l.weight = Tensor::new();
                }
            }
        }
        Quantize::Int8 => {
            for x in experts.iter_mut() {
                for l in [&mut x.gate_proj, &mut x.up_proj, &mut x.down_proj] {
                    let q = int8::quantize(&dense(l)?);
                    l.quantized = Some(QuantizedWeight::ExpertEight(q));
                    l.weight = Tensor::new();
                }
            }
        }
    }
    Ok(())
}

/// What a pass records of its routing for the load-balancing loss. Off (recording nothing) unless
/// a training pass of a model whose config asks for the loss turns it on.
#[derive(Default)]
pub struct Routing {
    /// The router logits of each sparse layer of the current pass, in layer order, while on.
    logits: RefCell<Option<Vec<Tensor>>>,
    /// Gradient checkpointing: the pass's counts, mask and weight (times fp16's loss scale, kept on
    /// the device), so each recomputed layer adds its share of the loss to its backward pass.
    pending: RefCell<Option<(RoutingSums, Option<Tensor>, Tensor)>>,
    /// The step's count of micro-batches over all ranks: each one's loss weighs 1/count, so N
    /// ranks equal one rank accumulating N, and one micro-batch is transformers' `loss + coef·aux`.
    micro_batches: Cell<usize>,
}

impl Routing {
    /// Keeps a sparse layer's router logits while recording.
    pub fn record(&self, logits: Tensor) {
        if let Some(all) = self.logits.borrow_mut().as_mut() {
            all.push(logits);
        }
    }

    /// The training loop's micro-batches in this step, over all ranks.
    pub fn set_micro_batches(&self, n: usize) {
        self.micro_batches.set(n.max(1));
    }

    /// Under gradient checkpointing, the share of the layer just recomputed (None when no share is
    /// pending or the layer is dense).
    pub fn recomputed_layer_share(&self) -> Option<Tensor> {
        let pending = self.pending.borrow();
        let (sums, mask, weight) = pending.as_ref()?;
        let logits = self.logits.borrow_mut().as_mut()?.pop()?;
        Some(layer_share(&logits, mask.as_ref(), sums) * weight)
    }
}

impl CausalLm {
    /// `router_aux_loss_coef` when the load-balancing loss is part of this model's training loss.
    pub fn router_aux_coef(&self) -> Option<f64> {
        self.arch.moe.as_ref().filter(|m| m.output_router_logits).map(|m| m.router_aux_loss_coef)
    }

    /// Before a training forward pass: starts recording the router logits when the loss needs them.
    pub fn begin_routing(&self) {
        if self.router_aux_coef().is_some() {
            *self.routing.logits.borrow_mut() = Some(Vec::new());
        }
    }

    /// After a training forward pass: the load-balancing term of this micro-batch, `coef · aux /
    /// micro-batches` times `loss_scale` (fp16), for the caller to add to the loss it
    /// differentiates, and its unscaled value. Rows past a row's `lengths` are padding, left out as
    /// transformers leaves out `attention_mask` zeros. Under gradient checkpointing the term has
    /// no graph: each recomputed layer adds its share (`recomputed_layer_share`) instead.
    pub fn routing_loss(
        &self,
        lengths: Option<&Tensor>,
        checkpointed: bool,
        loss_scale: Option<&Tensor>,
    ) -> Option<(Tensor, Tensor)> {
        let coef = self.router_aux_coef()?;
        let logits = self.routing.logits.borrow_mut().take().unwrap_or_default();
        let moe = self.arch.moe.as_ref()?;
        if logits.is_empty() {
            return None;
        }
        let rows = logits[0].size()[0];
        let mask = lengths.map(|lengths| {
            let b = lengths.size()[0];
            let t = rows / b;
            let at = Tensor::arange(t, (Kind::Int64, lengths.device())).unsqueeze(0);
            // Virtual tokens (prompt tuning) sit in front of every row and are never padding.
            at.lt_tensor(&(lengths.unsqueeze(1) + self.virtual_tokens())).reshape([-1])
        });
        let weight = coef / self.routing.micro_batches.get().max(1) as f64;
        let aux = load_balancing_loss(&logits, moe.experts_per_token as i64, mask.as_ref());
        let value = (&aux * weight).detach();
        let scaled = |t: Tensor| match loss_scale {
            Some(s) => t * s.reshape([]),
            None => t,
        };
        if checkpointed {
            let sums = routing_sums(&logits, moe.experts_per_token as i64, mask.as_ref());
            // The weight in float64 on the device (no host read of fp16's scale), as the scalar was.
            let scaled_weight = match loss_scale {
                Some(s) => s.reshape([]).to_kind(Kind::Double) * weight,
                None => Tensor::from(weight).to_device(value.device()),
            };
            *self.routing.pending.borrow_mut() = Some((sums, mask, scaled_weight));
            *self.routing.logits.borrow_mut() = Some(Vec::new());
            return Some((Tensor::zeros([], (Kind::Float, value.device())), value));
        }
        Some((scaled(aux * weight), value))
    }

    /// After the backward pass: recording off, nothing pending.
    pub fn end_routing(&self) {
        self.routing.logits.borrow_mut().take();
        self.routing.pending.borrow_mut().take();
    }

    /// Logits [B, T, V] and the router logits of every sparse layer ([B·T, experts] each), for
    /// the load-balancing loss outside training (parity tests, evaluation).
    pub fn logits_with_routing(&self, inputs: &Inputs) -> (Tensor, Vec<Tensor>) {
        *self.routing.logits.borrow_mut() = Some(Vec::new());
        let logits = self.logits(inputs);
        (logits, self.routing.logits.borrow_mut().take().unwrap_or_default())
    }
}
