//! AdamW as `torch.optim.AdamW` computes it (decoupled weight decay, bias-corrected moments),
//! with its state as plain named tensors so checkpoints save and restore it exactly. Gradient
//! clipping by global norm stays on the device (no host sync).
//!
//! 8-bit AdamW (`adamw_8bit`, `adamw_bnb_8bit`, `paged_adamw_8bit`) is bitsandbytes' `AdamW8bit`
//! as its CPU kernels compute it: both moments blockwise quantized (blocks of 256 values, each an
//! absmax and 256 one-byte codes; the first moment in the signed dynamic map, the second, never
//! negative, in the unsigned one), dequantized for the update and quantized again after; tensors
//! under 4,096 elements keep 32-bit states and bitsandbytes' 32-bit update. The codes and their
//! quantization tables live on the parameters' device, built once, so a step reads nothing back
//! to the host. State memory is about a quarter of 32-bit AdamW's.
//!
//! torchao's 8-bit and 4-bit AdamW (`adamw_torch_8bit`, `adamw_torch_4bit`) keep their states and
//! take their step in exec/optim_torchao.rs; SGD, Adafactor, Lion and Muon in exec/optim_more.rs
//! (this type holds their parameters and states too: one optimizer for the loop, the checkpoints
//! and the sharder).

use super::{optim_more, optim_torchao};
use crate::model::llama::Param;
use crate::model::nf4::{self, BlockCode};
use crate::plan::training::OptimizerPlan;
use tch::{Kind, Tensor};

pub struct AdamW {
    params: Vec<Slot>,
    /// bitsandbytes' 8-bit AdamW (its update formulas) rather than torch's.
    eight_bit: bool,
    /// torchao's low-bit AdamW (exec/optim_torchao.rs), with the bits of its states.
    torchao: Option<optim_torchao::Bits>,
    /// SGD, Adafactor, Lion or Muon (exec/optim_more.rs): each slot's state is its `more`, and its
    /// AdamW moments are left empty.
    more: Option<optim_more::Rule>,
    /// `adamw_torch_fused`: libtorch's fused kernel (`_fused_adamw_`, exec/torch_ops.rs) with its
    /// step count as an fp32 device scalar, as `torch.optim.AdamW(fused=True)` keeps it.
    fused: Option<Tensor>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    /// Optimizer steps taken.
    pub step: u64,
    /// fp16 runs: the steps taken, on the device (f64 [1]), because a step skipped on the device
    /// (`step_unless`) must not count and the host does not learn of it until it reads this.
    device_step: Option<Tensor>,
    /// LISA (exec/lisa.rs): each parameter counts its own steps, as torch's and bitsandbytes'
    /// `state["step"]` do, so a parameter without a gradient in a step (a frozen layer) neither
    /// moves nor advances its bias corrections. Off: every parameter takes the global count.
    per_parameter_steps: bool,
}

struct Slot {
    name: String,
    param: Tensor,
    exp_avg: Moment,
    exp_avg_sq: Moment,
    /// The state of the optimizers of exec/optim_more.rs.
    more: Option<optim_more::State>,
    decay: bool,
    /// Steps this parameter took (with `per_parameter_steps`).
    steps: u64,
}

/// The hyperparameters of one step of one parameter, for the optimizers of optim_more.rs and
/// optim_torchao.rs.
#[derive(Debug, Clone, Copy)]
pub struct Hyper {
    pub lr: f64,
    /// Optimizer steps taken, this one included (1 on the first).
    pub step: u64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// The parameter's weight decay: 0 outside the Trainer's decay group (Muon decays everything).
    pub weight_decay: f64,
}

/// Blocks of the 8-bit states and the smallest tensor that gets them (sharded training cuts
/// such tensors at block boundaries, exec/shard.rs).
pub const BLOCK: i64 = 256;
pub const MIN_8BIT_SIZE: i64 = 4096;

/// One moment of one parameter: fp32, blockwise 8-bit, or in torchao's layout (full in the
/// parameter's dtype, or 8/4-bit codes with per-block scales).
enum Moment {
    Full(Tensor),
    Quantized { codes: Tensor, absmax: Tensor, code: BlockCode },
    Torchao(optim_torchao::Moment),
}

impl Moment {
    /// `code`: the 8-bit code this moment is quantized with, for tensors that get 8-bit states
    /// (`whole`: the parameter's elements, of which `like` may be a rank's chunk).
    fn zeros(like: &Tensor, whole: i64, code: Option<&BlockCode>) -> Moment {
        let zeros = like.to_kind(Kind::Float).zeros_like().detach();
        match code {
            Some(code) if whole >= MIN_8BIT_SIZE => {
                let (codes, absmax) = nf4::quantize_blockwise_with(&zeros, code, BLOCK);
                Moment::Quantized { codes, absmax, code: code.shallow_clone() }
            }
            _ => Moment::Full(zeros),
        }
    }

    /// The fp32 values (a copy for 8-bit states).
    fn value(&self) -> Tensor {
        match self {
            Moment::Full(t) => t.shallow_clone(),
            Moment::Quantized { codes, absmax, code } => {
                nf4::dequantize_blockwise(codes, absmax, &code.values, BLOCK).view(codes.size().as_slice())
            }
            Moment::Torchao(m) => m.value(),
        }
    }

    /// Stores updated values (quantizing them again for 8-bit states).
    fn store(&mut self, values: &Tensor) {
        match self {
            Moment::Full(_) => {}
            Moment::Quantized { codes, absmax, code } => {
                let (c, a) = nf4::quantize_blockwise_with(values, code, BLOCK);
                *codes = c;
                *absmax = a;
            }
            Moment::Torchao(m) => m.store(values),
        }
    }

    fn bytes(&self) -> i64 {
        let size = |t: &Tensor| t.numel() as i64 * t.kind().elt_size_in_bytes() as i64;
        match self {
            Moment::Full(t) => size(t),
            Moment::Quantized { codes, absmax, .. } => size(codes) + size(absmax),
            Moment::Torchao(m) => m.bytes(),
        }
    }

    fn named(&self, name: String) -> Vec<(String, Tensor)> {
        match self {
            Moment::Full(t) => vec![(name, t.shallow_clone())],
            Moment::Quantized { codes, absmax, .. } => {
                vec![(format!("{name}.q8"), codes.shallow_clone()), (format!("{name}.absmax"), absmax.shallow_clone())]
            }
            Moment::Torchao(m) => m.named(name),
        }
    }

    fn load(&mut self, name: &str, ckpt: &crate::model::weights::Checkpoint) -> Result<(), String> {
        let read = |t: &mut Tensor, n: &str| load_into(t, n, ckpt);
        match self {
            Moment::Full(t) => read(t, name),
            Moment::Quantized { codes, absmax, .. } => {
                read(codes, &format!("{name}.q8"))?;
                read(absmax, &format!("{name}.absmax"))
            }
            Moment::Torchao(m) => m.load(name, ckpt),
        }
    }
}

/// Reads checkpoint tensor `name` into `t` (its shape, dtype and device).
pub(crate) fn load_into(t: &mut Tensor, name: &str, ckpt: &crate::model::weights::Checkpoint) -> Result<(), String> {
    let loaded = ckpt.load(name, &t.size(), t.kind(), t.device())?;
    t.copy_(&loaded);
    Ok(())
}

/// `c + alpha · a` rounded once, as torch's `c.add_(a, alpha=alpha)` computes it on the CPU (a
/// fused multiply-add; `alpha` as fp32): the fp32 product is exact in float64.
pub(crate) fn fused_multiply_add(a: &Tensor, alpha: f64, c: &Tensor) -> Tensor {
    fused_multiply_add_by(a, &Tensor::from(f64::from(alpha as f32)), c)
}

/// [`fused_multiply_add`] with `alpha` a float64 0-dim tensor already rounded to fp32 (on the
/// host or the device).
fn fused_multiply_add_by(a: &Tensor, alpha: &Tensor, c: &Tensor) -> Tensor {
    (a.to_kind(Kind::Double) * alpha + c.to_kind(Kind::Double)).to_kind(Kind::Float)
}

/// AdamW's bias corrections `1 - β1^t` and `sqrt(1 - β2^t)`, float64 0-dim tensors: on the CPU
/// from the host's step count, or on the device from the device's (fp16 runs). A 0-dim CPU
/// tensor enters a CUDA kernel as a scalar argument, so neither form reads anything back, and
/// both round the same float64 values to fp32 where a kernel takes them.
struct Corrections {
    bias1: Tensor,
    bias2_sqrt: Tensor,
}

impl Corrections {
    fn host(bias1: f64, bias2_sqrt: f64) -> Corrections {
        Corrections { bias1: Tensor::from(bias1), bias2_sqrt: Tensor::from(bias2_sqrt) }
    }
}

/// bitsandbytes' 8-bit AdamW update of one parameter (its 32-bit update for tensors under
/// `MIN_8BIT_SIZE`), op for op as its CPU kernels compute it. `keep` (0-dim bool on the device):
/// where false, the parameter and both moments keep their old values (an fp16 step skipped on
/// the device).
#[allow(clippy::too_many_arguments)]
fn eight_bit_update(
    s: &mut Slot,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    c: &Corrections,
    keep: Option<&Tensor>,
) {
    let grad = s.param.grad();
    if !grad.defined() {
        return;
    }
    let grad = grad.to_kind(s.param.kind());
    let mut p = s.param.shallow_clone();
    let old_p = keep.map(|_| p.copy());
    // Full moments are the state itself (updated in place): keep copies of the old values.
    let (old_m, old_v) = match (keep, &s.exp_avg, &s.exp_avg_sq) {
        (Some(_), Moment::Full(m), Moment::Full(v)) => (Some(m.copy()), Some(v.copy())),
        _ => (None, None),
    };
    let (mut m, mut v) = (s.exp_avg.value(), s.exp_avg_sq.value());
    // bitsandbytes: `m.mul_(β1).add_(g, alpha=1-β1)`, not torch's lerp.
    m *= beta1;
    m.copy_(&fused_multiply_add(&grad, 1.0 - beta1, &m));
    v *= beta2;
    let _ = v.addcmul_(&grad, &(&grad * (1.0 - beta2)));
    if s.decay && weight_decay != 0.0 {
        p *= 1.0 - lr * weight_decay;
    }
    if matches!(s.exp_avg, Moment::Full(_)) {
        // bitsandbytes' 32-bit update, for tensors too small for 8-bit states.
        let update = &m / (v.sqrt() + (&c.bias2_sqrt * eps).to_kind(Kind::Float));
        let alpha = (&c.bias2_sqrt * -lr / &c.bias1).to_kind(Kind::Float).to_kind(Kind::Double);
        p.copy_(&fused_multiply_add_by(&update, &alpha, &p));
    } else {
        let denom = v.sqrt() / c.bias2_sqrt.to_kind(Kind::Float) + eps;
        let step_size = (Tensor::full([], -lr, (Kind::Double, c.bias1.device())) / &c.bias1).to_kind(Kind::Float);
        let _ = p.addcdiv_(&(&m * step_size), &denom);
    }
    let Some(keep) = keep else {
        s.exp_avg.store(&m);
        s.exp_avg_sq.store(&v);
        return;
    };
    let kept = |now: &Tensor, old: &Tensor| now.where_self(keep, old);
    p.copy_(&kept(&p, old_p.as_ref().expect("copied above")));
    if let (Some(old_m), Some(old_v)) = (old_m, old_v) {
        m.copy_(&kept(&m, &old_m));
        v.copy_(&kept(&v, &old_v));
        return;
    }
    for (moment, values) in [(&mut s.exp_avg, &m), (&mut s.exp_avg_sq, &v)] {
        let Moment::Quantized { codes, absmax, .. } = moment else { unreachable!("8-bit moments") };
        let (old_codes, old_absmax) = (codes.shallow_clone(), absmax.shallow_clone());
        moment.store(values);
        let Moment::Quantized { codes, absmax, .. } = moment else { unreachable!("8-bit moments") };
        *codes = kept(codes, &old_codes);
        *absmax = kept(absmax, &old_absmax);
    }
}

impl AdamW {
    /// Weight decay applies to every parameter but biases and norm weights, as transformers'
    /// Trainer groups them.
    pub fn new(params: Vec<Param>, plan: &OptimizerPlan) -> AdamW {
        let whole: Vec<i64> = params.iter().map(|p| p.tensor.numel() as i64).collect();
        AdamW::for_chunks(params, &whole, plan)
    }

    /// As `new`, for chunks of parameters of `whole` elements each (sharded training): the
    /// parameter's size decides whether it gets 8-bit states, as on one rank.
    pub fn for_chunks(params: Vec<Param>, whole: &[i64], plan: &OptimizerPlan) -> AdamW {
        let eight_bit = plan.name.eight_bit_states();
        // The two codes on the parameters' device, shared by every 8-bit state.
        let codes = match params.first() {
            Some(p) if eight_bit => {
                let device = p.tensor.device();
                Some((
                    BlockCode::new(&nf4::dynamic_map(), device),
                    BlockCode::new(&nf4::unsigned_dynamic_map(), device),
                ))
            }
            _ => None,
        };
        let torchao = plan.name.torchao_state_bits().map(|bits| match bits {
            8 => optim_torchao::Bits::Eight,
            _ => optim_torchao::Bits::Four,
        });
        let more = optim_more::Rule::of(plan.name);
        // torchao's states are never sharded (exec/mod.rs refuses them there): `whole` is the tensor.
        let moment = |p: &Tensor, whole: i64, signed: bool, code: Option<&BlockCode>| match (torchao, more) {
            (_, Some(_)) => Moment::Full(Tensor::new()),
            (Some(bits), None) => Moment::Torchao(optim_torchao::Moment::zeros(p, bits, signed)),
            (None, None) => Moment::zeros(p, whole, code),
        };
        let params: Vec<Slot> = params
            .into_iter()
            .zip(whole)
            .map(|(p, &whole)| Slot {
                decay: !(p.name.ends_with(".bias") || p.name.contains("norm")),
                exp_avg: moment(&p.tensor, whole, true, codes.as_ref().map(|c| &c.0)),
                exp_avg_sq: moment(&p.tensor, whole, false, codes.as_ref().map(|c| &c.1)),
                more: more.map(|rule| optim_more::State::new(rule, &p.name, &p.tensor, &[])),
                param: p.tensor,
                name: p.name,
                steps: 0,
            })
            .collect();
        let fused = (plan.name == crate::config::training::Optimizer::AdamwTorchFused)
            .then(|| params.first().map(|s: &Slot| Tensor::zeros([], (Kind::Float, s.param.device()))))
            .flatten();
        AdamW {
            params,
            eight_bit,
            torchao,
            more,
            fused,
            beta1: plan.beta1,
            beta2: plan.beta2,
            eps: plan.epsilon,
            weight_decay: plan.weight_decay,
            step: 0,
            device_step: None,
            per_parameter_steps: false,
        }
    }

    /// Each parameter counts its own steps (LISA: a frozen layer's parameters get no gradient, take
    /// no step and keep their state and count, as torch's AdamW and bitsandbytes' skip them).
    /// Only 32-bit torch AdamW and bitsandbytes' 8-bit AdamW, stepped on the host (config rules
    /// refuse LISA with the others and with fp16).
    pub fn with_per_parameter_steps(mut self) -> AdamW {
        self.per_parameter_steps = true;
        self
    }

    /// Muon: the modules kept whole beside an adapter (`modules_to_save`), whose matrices take
    /// Muon's AdamW as in Axolotl (peft's `modules_to_save.default` copies).
    pub fn with_modules_to_save(mut self, modules: &[String]) -> AdamW {
        if self.more == Some(optim_more::Rule::Muon) {
            for s in &mut self.params {
                s.more = Some(optim_more::State::new(optim_more::Rule::Muon, &s.name, &s.param, modules));
            }
        }
        self
    }

    /// Muon orthogonalizes matrices: the trainable tensors of more than two dimensions (a mixture's
    /// stacked experts) that Axolotl's Muon refuses (`assert p.ndim == 2`).
    pub fn muon_refuses(&self) -> Vec<String> {
        if self.more != Some(optim_more::Rule::Muon) {
            return vec![];
        }
        self.params.iter().filter(|s| s.param.dim() > 2).map(|s| s.name.clone()).collect()
    }

    /// Muon: the trainable tensors in neither of its groups (1-D), which it never updates.
    pub fn untouched(&self) -> Vec<String> {
        let untouched = |s: &&Slot| matches!(s.more, Some(optim_more::State::Untouched));
        self.params.iter().filter(untouched).map(|s| s.name.clone()).collect()
    }

    /// The parameters it updates, by their saved names.
    pub fn named_params(&self) -> Vec<(String, Tensor)> {
        self.params.iter().map(|s| (s.name.clone(), s.param.shallow_clone())).collect()
    }

    /// The gradients of the optimized tensors (undefined where a tensor got none).
    pub fn grads(&self) -> Vec<Tensor> {
        self.params.iter().map(|s| s.param.grad()).collect()
    }

    /// Global L2 norm of the gradients (a device scalar), then scales them to at most `max_norm`
    /// (0 = no clipping), as `clip_grad_norm_`.
    pub fn clip_grad_norm(&self, max_norm: f64) -> Tensor {
        let _guard = tch::no_grad_guard();
        let norms: Vec<Tensor> = self
            .params
            .iter()
            .filter(|s| s.param.grad().defined())
            .map(|s| s.param.grad().to_kind(Kind::Float).norm())
            .collect();
        if norms.is_empty() {
            return Tensor::zeros([], (Kind::Float, tch::Device::Cpu));
        }
        let total = Tensor::stack(&norms, 0).norm();
        if max_norm > 0.0 {
            let coef = ((&total + 1e-6).reciprocal() * max_norm).clamp_max(1.0);
            for s in &self.params {
                let mut g = s.param.grad();
                if g.defined() {
                    g *= &coef;
                }
            }
        }
        total
    }

    pub fn step(&mut self, lr: f64) {
        let _guard = tch::no_grad_guard();
        if self.fused.is_some() {
            self.step += 1;
            if let Err(e) = self.fused_step(lr, None) {
                panic!("{e}");
            }
            return;
        }
        if let Some(steps) = &self.device_step {
            // Once steps were counted on the device (`step_unless`), they go on being counted there.
            let clear = steps.zeros_like().to_kind(Kind::Float);
            if let Err(e) = self.step_unless(lr, &clear) {
                panic!("{e}");
            }
            return;
        }
        self.step += 1;
        if self.more.is_some() {
            for s in &mut self.params {
                let grad = s.param.grad();
                if let (true, Some(state)) = (grad.defined(), &mut s.more) {
                    let hyper = Hyper {
                        lr,
                        step: self.step,
                        beta1: self.beta1,
                        beta2: self.beta2,
                        eps: self.eps,
                        // Muon decays every parameter it updates (no Trainer groups).
                        weight_decay: if s.decay || self.more == Some(optim_more::Rule::Muon) {
                            self.weight_decay
                        } else {
                            0.0
                        },
                    };
                    optim_more::step(&s.param, &grad.to_kind(s.param.kind()), state, &hyper);
                }
            }
            return;
        }
        if self.torchao.is_some() {
            let hyper = |decay: bool| Hyper {
                lr,
                step: self.step,
                beta1: self.beta1,
                beta2: self.beta2,
                eps: self.eps,
                weight_decay: if decay { self.weight_decay } else { 0.0 },
            };
            for s in &mut self.params {
                let grad = s.param.grad();
                if let (true, Moment::Torchao(m), Moment::Torchao(v)) =
                    (grad.defined(), &mut s.exp_avg, &mut s.exp_avg_sq)
                {
                    optim_torchao::step(&s.param, &grad, m, v, &hyper(s.decay));
                }
            }
            return;
        }
        // Python's `beta ** step` (C pow), as torch and bitsandbytes compute the corrections.
        let (beta1, beta2) = (self.beta1, self.beta2);
        let corrections = |t: u64| {
            let t = t as f64;
            (1.0 - beta1.powf(t), (1.0 - beta2.powf(t)).sqrt())
        };
        let (global1, global2) = corrections(self.step);
        let per_parameter = self.per_parameter_steps;
        // The slot's corrections: its own count (advanced here when it has a gradient) or the global.
        let slot_corrections = |s: &mut Slot| {
            if !per_parameter {
                return (global1, global2);
            }
            if s.param.grad().defined() {
                s.steps += 1;
            }
            corrections(s.steps)
        };
        if self.eight_bit {
            for s in &mut self.params {
                let (bias1, bias2_sqrt) = slot_corrections(s);
                let corrections = Corrections::host(bias1, bias2_sqrt);
                eight_bit_update(s, lr, self.beta1, self.beta2, self.eps, self.weight_decay, &corrections, None);
            }
            return;
        }
        for s in &mut self.params {
            let grad = s.param.grad();
            if !grad.defined() {
                continue;
            }
            let (bias1, bias2_sqrt) = slot_corrections(s);
            let grad = grad.to_kind(s.param.kind());
            let mut p = s.param.shallow_clone();
            let (mut m, mut v) = (s.exp_avg.value(), s.exp_avg_sq.value());
            let _ = m.lerp_(&grad, 1.0 - self.beta1);
            v *= self.beta2;
            let _ = v.addcmul_(&grad, &(&grad * (1.0 - self.beta2)));
            if s.decay && self.weight_decay != 0.0 {
                p *= 1.0 - lr * self.weight_decay;
            }
            let denom = v.sqrt() / bias2_sqrt + self.eps;
            let _ = p.addcdiv_(&(&m * (-lr / bias1)), &denom);
        }
    }

    /// The steps taken, on the device (f64 [1]), advanced unless `found_inf` is set (`keep`: 0-dim
    /// bool, true where the step is taken).
    fn count_device_step(&mut self, device: tch::Device, found_inf: &Tensor) -> (Tensor, Tensor) {
        let keep = found_inf.eq(0.0);
        let steps = self.device_step.get_or_insert_with(|| Tensor::from_slice(&[self.step as f64]).to_device(device));
        *steps += keep.to_kind(Kind::Double);
        (steps.shallow_clone(), keep.reshape([]))
    }

    /// fp16's step: the update unless `found_inf` (fp32 [1] on the device, the loss scaler's
    /// overflow flag) is set, decided on the device: every parameter and moment keeps its old value
    /// where the flag is set, and the step count (for the bias corrections) stays on the device.
    /// bitsandbytes' 8-bit AdamW does the same with its corrections computed on the device (bit for
    /// bit the host's). torchao's low-bit AdamW takes fp32 host-side corrections, so there the
    /// flag is read (one host sync per step).
    pub fn step_unless(&mut self, lr: f64, found_inf: &Tensor) -> Result<(), String> {
        let _guard = tch::no_grad_guard();
        if self.fused.is_some() {
            return self.fused_step(lr, Some(found_inf));
        }
        if self.torchao.is_some() || self.more.is_some() {
            if !super::host_sync::read_flag(found_inf, "the fp16 overflow flag")? {
                self.step(lr);
            }
            return Ok(());
        }
        let Some(device) = self.params.first().map(|s| s.param.device()) else { return Ok(()) };
        let (steps, keep) = self.count_device_step(device, found_inf);
        // torch's (and bitsandbytes') corrections, `1 - beta ** step`, in float64 on the device.
        let power = |beta: f64| -> Tensor { Tensor::full([], beta, (Kind::Double, device)).pow(&steps.reshape([])) };
        let bias1: Tensor = 1.0 - power(self.beta1);
        let bias2: Tensor = 1.0 - power(self.beta2);
        let bias2_sqrt = bias2.sqrt();
        if self.eight_bit {
            let corrections = Corrections { bias1, bias2_sqrt };
            for s in &mut self.params {
                eight_bit_update(s, lr, self.beta1, self.beta2, self.eps, self.weight_decay, &corrections, Some(&keep));
            }
            return Ok(());
        }
        let step_size = (bias1.reciprocal() * -lr).to_kind(Kind::Float);
        let bias2_sqrt = bias2_sqrt.to_kind(Kind::Float);
        for s in &mut self.params {
            let grad = s.param.grad();
            if !grad.defined() {
                continue;
            }
            let grad = grad.to_kind(s.param.kind());
            let Moment::Full(m) = &s.exp_avg else { unreachable!("32-bit AdamW keeps fp32 moments") };
            let Moment::Full(v) = &s.exp_avg_sq else { unreachable!("32-bit AdamW keeps fp32 moments") };
            let (mut p, mut m, mut v) = (s.param.shallow_clone(), m.shallow_clone(), v.shallow_clone());
            let (old_p, old_m, old_v) = (p.copy(), m.copy(), v.copy());
            let _ = m.lerp_(&grad, 1.0 - self.beta1);
            v *= self.beta2;
            let _ = v.addcmul_(&grad, &(&grad * (1.0 - self.beta2)));
            if s.decay && self.weight_decay != 0.0 {
                p *= 1.0 - lr * self.weight_decay;
            }
            let denom = v.sqrt() / &bias2_sqrt + self.eps;
            let _ = p.addcdiv_(&(&m * &step_size), &denom);
            for (now, old) in [(&mut p, &old_p), (&mut m, &old_m), (&mut v, &old_v)] {
                let kept = now.where_self(&keep, old);
                now.copy_(&kept);
            }
        }
        Ok(())
    }

    /// The fused kernel's step: the step count advanced (unless `found_inf` is set, which the
    /// kernel also honours by leaving everything as it is), then one kernel call per weight-decay
    /// group, as torch's parameter groups make them.
    fn fused_step(&mut self, lr: f64, found_inf: Option<&Tensor>) -> Result<(), String> {
        let Some(step) = &mut self.fused else { return Ok(()) };
        match found_inf {
            Some(f) => *step += 1.0 - f.reshape([]),
            None => *step += 1.0,
        }
        for decay in [true, false] {
            let slots: Vec<&Slot> =
                self.params.iter().filter(|s| s.decay == decay && s.param.grad().defined()).collect();
            if slots.is_empty() {
                continue;
            }
            let full = |m: &Moment| match m {
                Moment::Full(t) => t.shallow_clone(),
                Moment::Quantized { .. } | Moment::Torchao(_) => {
                    unreachable!("the fused kernel runs with 32-bit states")
                }
            };
            let params: Vec<Tensor> = slots.iter().map(|s| s.param.shallow_clone()).collect();
            let grads: Vec<Tensor> = slots.iter().map(|s| s.param.grad()).collect();
            let m: Vec<Tensor> = slots.iter().map(|s| full(&s.exp_avg)).collect();
            let v: Vec<Tensor> = slots.iter().map(|s| full(&s.exp_avg_sq)).collect();
            let group = super::torch_ops::AdamwGroup {
                lr,
                beta1: self.beta1,
                beta2: self.beta2,
                weight_decay: if decay { self.weight_decay } else { 0.0 },
                eps: self.eps,
            };
            super::torch_ops::fused_adamw(
                &params.iter().collect::<Vec<_>>(),
                &grads,
                &m.iter().collect::<Vec<_>>(),
                &v.iter().collect::<Vec<_>>(),
                step,
                &group,
                found_inf,
            )?;
        }
        Ok(())
    }

    /// True when every parameter is finite (one host read for all of them).
    pub fn params_finite(&self) -> Result<bool, String> {
        let _guard = tch::no_grad_guard();
        let finite: Vec<Tensor> = self.params.iter().map(|s| s.param.isfinite().all()).collect();
        if finite.is_empty() {
            return Ok(true);
        }
        super::host_sync::read_flag(&Tensor::stack(&finite, 0).all(), "whether the weights are finite")
    }

    pub fn zero_grad(&mut self) {
        for s in &mut self.params {
            let mut g = s.param.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// The state to checkpoint: `NAME.exp_avg`, `NAME.exp_avg_sq` (8-bit: `.q8` codes and
    /// `.absmax` each) and `step`.
    /// In fp16 runs the step count is the device's (written with the checkpoint, not read here).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let step = match (&self.fused, &self.device_step) {
            (Some(steps), _) | (None, Some(steps)) => steps.to_kind(Kind::Int64).reshape([]),
            (None, None) => Tensor::from(self.step as i64),
        };
        let mut out = vec![("step".to_string(), step)];
        if self.per_parameter_steps {
            let steps: Vec<i64> = self.params.iter().map(|s| s.steps as i64).collect();
            out.push(("steps_per_parameter".to_string(), Tensor::from_slice(&steps)));
        }
        for s in &self.params {
            if let Some(state) = &s.more {
                out.extend(state.named(&s.name));
                continue;
            }
            out.extend(s.exp_avg.named(format!("{}.exp_avg", s.name)));
            out.extend(s.exp_avg_sq.named(format!("{}.exp_avg_sq", s.name)));
        }
        out
    }

    /// Whether parameter `name` has 8-bit moments.
    pub fn has_eight_bit_state(&self, name: &str) -> bool {
        self.params.iter().any(|s| s.name == name && matches!(s.exp_avg, Moment::Quantized { .. }))
    }

    /// Bytes the optimizer state occupies.
    pub fn state_bytes(&self) -> i64 {
        self.params
            .iter()
            .map(|s| match &s.more {
                Some(state) => state.bytes(),
                None => s.exp_avg.bytes() + s.exp_avg_sq.bytes(),
            })
            .sum()
    }

    fn load_step(&mut self, ckpt: &crate::model::weights::Checkpoint) -> Result<(), String> {
        self.step = ckpt.load("step", &[], Kind::Int64, tch::Device::Cpu)?.int64_value(&[]) as u64;
        self.device_step = None;
        if self.per_parameter_steps {
            let n = self.params.len() as i64;
            let steps = ckpt.load("steps_per_parameter", &[n], Kind::Int64, tch::Device::Cpu)?;
            let steps: Vec<i64> = Vec::<i64>::try_from(&steps).map_err(|e| format!("steps_per_parameter: {e}"))?;
            for (s, n) in self.params.iter_mut().zip(steps) {
                s.steps = n as u64;
            }
        }
        if let Some(steps) = &mut self.fused {
            let _ = steps.fill_(self.step as f64);
        }
        Ok(())
    }

    /// Loads the step count from `ckpt` and each moment from `moment(parameter name, "exp_avg" |
    /// "exp_avg_sq")` (8-bit states: `"exp_avg.q8"`, `"exp_avg.absmax"`, ...), which gives the
    /// values this optimizer holds of it (sharded training cuts its chunk out of the checkpoint's
    /// full tensor).
    pub fn load_state_with(
        &mut self,
        ckpt: &crate::model::weights::Checkpoint,
        moment: &dyn Fn(&str, &str) -> Result<Tensor, String>,
    ) -> Result<(), String> {
        let _guard = tch::no_grad_guard();
        self.load_step(ckpt)?;
        for s in &mut self.params {
            if let Some(state) = &mut s.more {
                state.load_with(&|which| moment(&s.name, which))?;
                continue;
            }
            for (which, m) in [("exp_avg", &mut s.exp_avg), ("exp_avg_sq", &mut s.exp_avg_sq)] {
                match m {
                    Moment::Full(t) => t.copy_(&moment(&s.name, which)?),
                    Moment::Quantized { codes, absmax, .. } => {
                        codes.copy_(&moment(&s.name, &format!("{which}.q8"))?);
                        absmax.copy_(&moment(&s.name, &format!("{which}.absmax"))?);
                    }
                    Moment::Torchao(_) => {
                        return Err("torchao's low-bit states are not sharded (refused before training)".into());
                    }
                }
            }
        }
        Ok(())
    }

    pub fn load_state(&mut self, ckpt: &crate::model::weights::Checkpoint) -> Result<(), String> {
        let _guard = tch::no_grad_guard();
        self.load_step(ckpt)?;
        for s in &mut self.params {
            if let Some(state) = &mut s.more {
                state.load(&s.name, ckpt)?;
                continue;
            }
            s.exp_avg.load(&format!("{}.exp_avg", s.name), ckpt)?;
            s.exp_avg_sq.load(&format!("{}.exp_avg_sq", s.name), ckpt)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::training::Optimizer;
    use tch::Device;

    fn adamw(values: &[f32]) -> (AdamW, Tensor) {
        let plan = OptimizerPlan {
            name: Optimizer::AdamwTorch,
            implementation: String::new(),
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.01,
        };
        let p = Tensor::from_slice(values).set_requires_grad(true);
        (AdamW::new(vec![Param { name: "w".into(), tensor: p.shallow_clone() }], &plan), p)
    }

    fn set_grad(p: &Tensor, g: &[f32]) {
        let mut grad = p.grad();
        if grad.defined() {
            grad.copy_(&Tensor::from_slice(g));
        } else {
            // The first gradient: from a backward pass.
            (p * Tensor::from_slice(g)).sum(Kind::Float).backward();
        }
    }

    #[test]
    fn a_step_skipped_on_the_device_changes_nothing_and_does_not_count() {
        let (mut host, a) = adamw(&[0.5, -1.0, 2.0]);
        let (mut device, b) = adamw(&[0.5, -1.0, 2.0]);
        let grads: [&[f32]; 4] = [&[0.1, -0.2, 0.3], &[1.0, 1.0, -1.0], &[0.0, 0.5, 0.25], &[-0.3, 0.2, 0.1]];
        let (clear, overflow) =
            (Tensor::zeros([1], (Kind::Float, Device::Cpu)), Tensor::ones([1], (Kind::Float, Device::Cpu)));
        for (i, g) in grads.iter().enumerate() {
            set_grad(&a, g);
            set_grad(&b, g);
            host.step(1e-2);
            device.step_unless(1e-2, &clear).unwrap();
            let diff = (&a - &b).abs().max().double_value(&[]);
            assert!(diff <= 1e-7, "step {i}: {diff:e}");
            if i == 1 {
                // An overflowing step in between: nothing moves, the count stays.
                let before = b.copy();
                set_grad(&b, &[f32::INFINITY, 0.0, f32::NAN]);
                device.step_unless(1e-2, &overflow).unwrap();
                assert!(b.equal(&before));
            }
        }
        let steps = |o: &AdamW| o.state()[0].1.int64_value(&[]);
        assert_eq!(steps(&device), 4);
        assert_eq!(steps(&host), 4);
        let moments = |o: &AdamW| o.state()[1].1.copy();
        assert!((moments(&host) - moments(&device)).abs().max().double_value(&[]) <= 1e-7);
    }

    #[test]
    fn the_fused_kernel_gives_the_unfused_update() {
        let plan = |name| OptimizerPlan {
            name,
            implementation: String::new(),
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.1,
        };
        tch::manual_seed(5);
        let w0 = Tensor::randn([64, 32], (Kind::Float, Device::Cpu));
        let b0 = Tensor::randn([32], (Kind::Float, Device::Cpu));
        let make = |name| {
            let (w, b) = (w0.copy().set_requires_grad(true), b0.copy().set_requires_grad(true));
            let params = vec![
                Param { name: "layer.weight".into(), tensor: w.shallow_clone() },
                Param { name: "layer.bias".into(), tensor: b.shallow_clone() },
            ];
            (AdamW::new(params, &plan(name)), w, b)
        };
        let (mut unfused, w1, b1) = make(Optimizer::AdamwTorch);
        let (mut fused, w2, b2) = make(Optimizer::AdamwTorchFused);
        let x = Tensor::randn([8, 64], (Kind::Float, Device::Cpu));
        let clear = Tensor::zeros([1], (Kind::Float, Device::Cpu));
        for step in 0..4 {
            for (o, w, b) in [(&mut unfused, &w1, &b1), (&mut fused, &w2, &b2)] {
                o.zero_grad();
                (x.matmul(w) + b).tanh().sum(Kind::Float).backward();
                if step == 2 {
                    // A skipped fp16 step in between: nothing moves, the count stays.
                    let before = w.copy();
                    o.step_unless(1e-2, &Tensor::ones([1], (Kind::Float, Device::Cpu))).unwrap();
                    assert!(w.equal(&before));
                }
                o.step_unless(1e-2, &clear).unwrap();
            }
            for (a, b) in [(&w1, &w2), (&b1, &b2)] {
                let diff = (a - b).abs().max().double_value(&[]);
                assert!(diff <= 1e-6, "step {step}: fused and unfused differ by {diff:e}");
            }
        }
        fused.step(1e-2);
        unfused.step(1e-2);
        let diff = (&w1 - &w2).abs().max().double_value(&[]);
        eprintln!("fused vs unfused AdamW after 5 steps: weights differ by {diff:e}");
        assert!(diff <= 1e-6);
        assert_eq!(fused.state()[0].1.int64_value(&[]), 5);
        let moments = |o: &AdamW| o.state()[1].1.copy();
        assert!((moments(&fused) - moments(&unfused)).abs().max().double_value(&[]) <= 1e-6);
    }
}

#[cfg(test)]
mod eight_bit_on_the_device {
    use super::*;
    use crate::config::training::Optimizer;
    use tch::Device;

    fn eight_bit() -> (AdamW, Vec<Tensor>) {
        let plan = OptimizerPlan {
            name: Optimizer::AdamwBnb8bit,
            implementation: String::new(),
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.01,
        };
        // One tensor with 8-bit states, one small enough for bitsandbytes' 32-bit update. Values from
        // a formula, not torch's global generator, which tests on other threads also seed and draw from.
        let big = wave(64 * 80, 0.37).reshape([64, 80]).set_requires_grad(true);
        let small = wave(40, 0.53).set_requires_grad(true);
        let params = vec![
            Param { name: "layer.weight".into(), tensor: big.shallow_clone() },
            Param { name: "layer.bias".into(), tensor: small.shallow_clone() },
        ];
        (AdamW::new(params, &plan), vec![big, small])
    }

    /// `n` values of sin(k · step + 1), spread over [-1, 1] without a random generator.
    fn wave(n: i64, step: f64) -> Tensor {
        (Tensor::arange(n, (Kind::Float, Device::Cpu)) * step + 1.0).sin()
    }

    fn backward(params: &[Tensor], seed: i64) {
        let x = wave(3 * 64, 0.11 + 0.07 * seed as f64).reshape([3, 64]);
        (x.matmul(&params[0]).sum_dim_intlist(0, false, Kind::Float).narrow(0, 0, 40) * &params[1])
            .sum(Kind::Float)
            .backward();
    }

    #[test]
    fn an_fp16_step_with_8_bit_states_reads_nothing_back() {
        // The loop's fp16 step: unscale (the overflow flag on the device), step or skip, update
        // the scale; GradScaler reads the flag here, recipe must not.
        let (mut o, ps) = eight_bit();
        let mut scaler = crate::exec::loss_scale::DeviceScaler::new(Default::default(), Device::Cpu);
        let before = crate::exec::host_sync::count_on_this_thread();
        for step in 0..3 {
            o.zero_grad();
            backward(&ps, step);
            if step == 1 {
                let _ = ps[1].grad().get(0).fill_(f64::INFINITY);
            }
            let found_inf = scaler.unscale(&o.grads());
            o.step_unless(1e-2, &found_inf).unwrap();
            scaler.update(&found_inf);
        }
        assert_eq!(crate::exec::host_sync::count_on_this_thread(), before, "host reads in fp16 8-bit steps");
        // Two steps taken, one skipped (read here, after the steps).
        assert_eq!(o.state()[0].1.int64_value(&[]), 2);
    }

    #[test]
    fn fp16_steps_decided_on_the_device_equal_host_steps_bit_for_bit() {
        let (mut host, a) = eight_bit();
        let (mut device, b) = eight_bit();
        let clear = Tensor::zeros([1], (Kind::Float, Device::Cpu));
        let overflow = Tensor::ones([1], (Kind::Float, Device::Cpu));
        for step in 0..4 {
            for (o, ps) in [(&mut host, &a), (&mut device, &b)] {
                o.zero_grad();
                backward(ps, step);
            }
            host.step(1e-2);
            device.step_unless(1e-2, &clear).unwrap();
            if step == 1 {
                // An overflowing step in between: no parameter, code or absmax moves, the count stays.
                let before: Vec<(String, Tensor)> =
                    device.state().into_iter().chain(device.named_params()).map(|(n, t)| (n, t.copy())).collect();
                device.step_unless(1e-2, &overflow).unwrap();
                for ((name, now), (_, old)) in device.state().iter().chain(device.named_params().iter()).zip(&before) {
                    assert!(now.equal(old), "{name} moved in a skipped step");
                }
            }
            for (name, (x, y)) in ["weight", "bias"].iter().zip(a.iter().zip(&b)) {
                assert!(x.equal(y), "step {step}: {name} differs");
            }
        }
        for ((name, x), (_, y)) in host.state().iter().zip(device.state().iter()) {
            assert!(x.equal(y), "state {name} differs");
        }
        assert!(device.has_eight_bit_state("layer.weight") && !device.has_eight_bit_state("layer.bias"));
        assert_eq!(device.state()[0].1.int64_value(&[]), 4);
    }
}
