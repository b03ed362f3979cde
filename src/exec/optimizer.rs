//! AdamW as `torch.optim.AdamW` computes it (decoupled weight decay, bias-corrected moments),
//! with its state as plain named tensors so checkpoints save and restore it exactly. Gradient
//! clipping by global norm stays on the device (no host sync).

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
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    decay: bool,
}

impl AdamW {
    /// Weight decay applies to every parameter but biases and norm weights, as transformers'
    /// Trainer groups them.
    pub fn new(params: Vec<Param>, plan: &OptimizerPlan) -> AdamW {
        let params = params
            .into_iter()
            .map(|p| Slot {
                decay: !(p.name.ends_with(".bias") || p.name.contains("norm")),
                exp_avg: p.tensor.zeros_like().detach(),
                exp_avg_sq: p.tensor.zeros_like().detach(),
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
            let _ = s.exp_avg.lerp_(&grad, 1.0 - self.beta1);
            s.exp_avg_sq *= self.beta2;
            let _ = s.exp_avg_sq.addcmul_(&grad, &(&grad * (1.0 - self.beta2)));
            let denom = s.exp_avg_sq.sqrt() / bias2_sqrt + self.eps;
            let _ = p.addcdiv_(&(&s.exp_avg * (-lr / bias1)), &denom);
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

    /// The state to checkpoint: `NAME.exp_avg`, `NAME.exp_avg_sq` and `step`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("step".to_string(), Tensor::from(self.step as i64))];
        for s in &self.params {
            out.push((format!("{}.exp_avg", s.name), s.exp_avg.shallow_clone()));
            out.push((format!("{}.exp_avg_sq", s.name), s.exp_avg_sq.shallow_clone()));
        }
        out
    }

    pub fn load_state(&mut self, ckpt: &crate::model::weights::Checkpoint) -> Result<(), String> {
        let _guard = tch::no_grad_guard();
        self.step = ckpt.load("step", &[], Kind::Int64, tch::Device::Cpu)?.int64_value(&[]) as u64;
        for s in &mut self.params {
            let (size, kind, dev) = (s.exp_avg.size(), s.exp_avg.kind(), s.exp_avg.device());
            s.exp_avg.copy_(&ckpt.load(&format!("{}.exp_avg", s.name), &size, kind, dev)?);
            s.exp_avg_sq.copy_(&ckpt.load(&format!("{}.exp_avg_sq", s.name), &size, kind, dev)?);
        }
        Ok(())
    }
}
