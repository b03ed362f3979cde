//! AdamW as `torch.optim.AdamW` computes it (decoupled weight decay, bias-corrected moments),
//! with its state as plain named tensors so checkpoints save and restore it exactly. Gradient
//! clipping by global norm stays on the device (no host sync).
//!
//! 8-bit AdamW (`adamw_8bit`, `adamw_bnb_8bit`, `paged_adamw_8bit`) keeps both moments blockwise
//! quantized as bitsandbytes' 8-bit optimizers do: blocks of 256 values, each an absmax and 256
//! one-byte codes of the signed dynamic map, dequantized for the update and quantized again
//! after. Tensors under 4,096 elements keep 32-bit states (bitsandbytes' `min_8bit_size`). State
//! memory is about a quarter of 32-bit AdamW's.

use crate::model::llama::Param;
use crate::plan::training::OptimizerPlan;
use tch::{Kind, Tensor};

pub struct AdamW {
    params: Vec<Slot>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    /// Optimizer steps taken.
    pub step: u64,
}

struct Slot {
    name: String,
    param: Tensor,
    exp_avg: Moment,
    exp_avg_sq: Moment,
    decay: bool,
}

/// Blocks of the 8-bit states and the smallest tensor that gets them.
const BLOCK: i64 = 256;
const MIN_8BIT_SIZE: i64 = 4096;

/// One moment of one parameter: fp32, or blockwise 8-bit.
enum Moment {
    Full(Tensor),
    Quantized { codes: Tensor, absmax: Tensor, code: Tensor },
}

impl Moment {
    fn zeros(like: &Tensor, eight_bit: bool) -> Moment {
        let zeros = like.to_kind(Kind::Float).zeros_like().detach();
        if eight_bit && like.numel() as i64 >= MIN_8BIT_SIZE {
            let code = crate::model::nf4::dynamic_map().to_device(like.device());
            let (codes, absmax) = crate::model::nf4::quantize_blockwise(&zeros, &code, BLOCK);
            Moment::Quantized { codes, absmax, code }
        } else {
            Moment::Full(zeros)
        }
    }

    /// The fp32 values (a copy for 8-bit states).
    fn value(&self) -> Tensor {
        match self {
            Moment::Full(t) => t.shallow_clone(),
            Moment::Quantized { codes, absmax, code } => {
                crate::model::nf4::dequantize_blockwise(codes, absmax, code, BLOCK).view(codes.size().as_slice())
            }
        }
    }

    /// Stores updated values (quantizing them again for 8-bit states).
    fn store(&mut self, values: &Tensor) {
        if let Moment::Quantized { codes, absmax, code } = self {
            let (c, a) = crate::model::nf4::quantize_blockwise(values, code, BLOCK);
            *codes = c;
            *absmax = a;
        }
    }

    fn bytes(&self) -> i64 {
        let size = |t: &Tensor| t.numel() as i64 * t.kind().elt_size_in_bytes() as i64;
        match self {
            Moment::Full(t) => size(t),
            Moment::Quantized { codes, absmax, .. } => size(codes) + size(absmax),
        }
    }

    fn named(&self, name: String) -> Vec<(String, Tensor)> {
        match self {
            Moment::Full(t) => vec![(name, t.shallow_clone())],
            Moment::Quantized { codes, absmax, .. } => {
                vec![(format!("{name}.q8"), codes.shallow_clone()), (format!("{name}.absmax"), absmax.shallow_clone())]
            }
        }
    }

    fn load(&mut self, name: &str, ckpt: &crate::model::weights::Checkpoint) -> Result<(), String> {
        let read = |t: &mut Tensor, n: &str| -> Result<(), String> {
            let loaded = ckpt.load(n, &t.size(), t.kind(), t.device())?;
            t.copy_(&loaded);
            Ok(())
        };
        match self {
            Moment::Full(t) => read(t, name),
            Moment::Quantized { codes, absmax, .. } => {
                read(codes, &format!("{name}.q8"))?;
                read(absmax, &format!("{name}.absmax"))
            }
        }
    }
}

impl AdamW {
    /// Weight decay applies to every parameter but biases and norm weights, as transformers'
    /// Trainer groups them.
    pub fn new(params: Vec<Param>, plan: &OptimizerPlan) -> AdamW {
        let eight_bit = plan.name.eight_bit_states();
        let params = params
            .into_iter()
            .map(|p| Slot {
                decay: !(p.name.ends_with(".bias") || p.name.contains("norm")),
                exp_avg: Moment::zeros(&p.tensor, eight_bit),
                exp_avg_sq: Moment::zeros(&p.tensor, eight_bit),
                param: p.tensor,
                name: p.name,
            })
            .collect();
        AdamW {
            params,
            beta1: plan.beta1,
            beta2: plan.beta2,
            eps: plan.epsilon,
            weight_decay: plan.weight_decay,
            step: 0,
        }
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
        self.step += 1;
        let t = self.step as i32;
        let bias1 = 1.0 - self.beta1.powi(t);
        let bias2_sqrt = (1.0 - self.beta2.powi(t)).sqrt();
        for s in &mut self.params {
            let grad = s.param.grad();
            if !grad.defined() {
                continue;
            }
            let grad = grad.to_kind(s.param.kind());
            let mut p = s.param.shallow_clone();
            if s.decay && self.weight_decay != 0.0 {
                p *= 1.0 - lr * self.weight_decay;
            }
            let (mut m, mut v) = (s.exp_avg.value(), s.exp_avg_sq.value());
            let _ = m.lerp_(&grad, 1.0 - self.beta1);
            v *= self.beta2;
            let _ = v.addcmul_(&grad, &(&grad * (1.0 - self.beta2)));
            let denom = v.sqrt() / bias2_sqrt + self.eps;
            let _ = p.addcdiv_(&(&m * (-lr / bias1)), &denom);
            s.exp_avg.store(&m);
            s.exp_avg_sq.store(&v);
        }
    }

    /// True when every parameter is finite (one host sync).
    pub fn params_finite(&self) -> bool {
        let _guard = tch::no_grad_guard();
        self.params.iter().all(|s| s.param.isfinite().all().int64_value(&[]) != 0)
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
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("step".to_string(), Tensor::from(self.step as i64))];
        for s in &self.params {
            out.extend(s.exp_avg.named(format!("{}.exp_avg", s.name)));
            out.extend(s.exp_avg_sq.named(format!("{}.exp_avg_sq", s.name)));
        }
        out
    }

    /// Bytes the optimizer state occupies.
    pub fn state_bytes(&self) -> i64 {
        self.params.iter().map(|s| s.exp_avg.bytes() + s.exp_avg_sq.bytes()).sum()
    }

    pub fn load_state(&mut self, ckpt: &crate::model::weights::Checkpoint) -> Result<(), String> {
        let _guard = tch::no_grad_guard();
        self.step = ckpt.load("step", &[], Kind::Int64, tch::Device::Cpu)?.int64_value(&[]) as u64;
        for s in &mut self.params {
            s.exp_avg.load(&format!("{}.exp_avg", s.name), ckpt)?;
            s.exp_avg_sq.load(&format!("{}.exp_avg_sq", s.name), ckpt)?;
        }
        Ok(())
    }
}
