//! The optimizers besides AdamW, each as the reference Axolotl runs computes it, op for op on the
//! CPU (goldens: scripts/reference/optimizer_goldens_more.py, tests/optimizers_more.rs):
//!
//! - `sgd`: `torch.optim.SGD` as transformers' Trainer builds it (`lr` only: no momentum, so no
//!   state): `g + wd·p` (L2 weight decay, the Trainer's decay group), then `p - lr·g`.
//! - `adafactor`: transformers' `Adafactor` with the Trainer's `scale_parameter=False`,
//!   `relative_step=False`, `lr`; its defaults otherwise: eps (1e-30, 1e-3), clip threshold 1,
//!   decay rate -0.8, no first moment. Tensors of two or more dimensions keep factored second
//!   moments (`exp_avg_sq_row`: means over the last dimension, `exp_avg_sq_col`: over the one
//!   before), others `exp_avg_sq`; weight decay `p - wd·lr·p` before the update.
//! - `lion_32bit` / `paged_lion_32bit`: bitsandbytes' 32-bit `Lion` as its CPU kernel computes it
//!   (betas from `adam_beta1` / `adam_beta2`, as the Trainer passes them): `p·(1 - lr·wd)`, then
//!   `p - lr·sign(β1·m + (1-β1)·g)`, then `m = β2·m + (1-β2)·g`. Elementwise, so sharded training
//!   updates chunks. `lion_8bit` / `paged_lion_8bit`: bitsandbytes' 8-bit Lion (CPU kernel): the
//!   momentum blockwise quantized (signed dynamic map, blocks of 256, as 8-bit AdamW's first moment;
//!   tensors under 4,096 values keep the 32-bit state and update), its direction
//!   `sign(β1·m + (1-β1)·g)` from two rounded products; sharded training refuses it.
//! - `muon`: Axolotl's `Muon` (axolotl-contribs-mit 0.0.6, Moonlight's formulation). Every
//!   trainable matrix but the embedding, the head and modules_to_save takes Nesterov momentum 0.95,
//!   orthogonalized by 5 Newton–Schulz steps in bf16 (coefficients 3.4445, -4.7750, 2.0315), and
//!   moves by `lr · 0.2 · sqrt(max(rows, cols))`; the others take Muon's own AdamW (moments by lerp,
//!   `m / (eps + sqrt(v))`, step `lr · sqrt(1-β2^t) / (1-β1^t)`). Weight decay `p·(1 - lr·wd)` on
//!   both, whatever the name. Axolotl's factory leaves 1-D parameters (norms, biases) out of both
//!   groups, so they are never updated: recipe does the same (the plan says so).
//!
//! `c + α·a` steps go through `fused_multiply_add`, as torch's `add_(a, alpha=α)` rounds on the CPU.

use super::optimizer::{BLOCK, Hyper, MIN_8BIT_SIZE, fused_multiply_add, load_into};
use crate::config::training::Optimizer;
use crate::model::nf4::{self, BlockCode};
use crate::model::weights::Checkpoint;
use tch::{Kind, Tensor};

/// Which update runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Sgd,
    Adafactor,
    Lion,
    /// bitsandbytes' 8-bit Lion.
    Lion8bit,
    Muon,
}

impl Rule {
    pub fn of(optimizer: Optimizer) -> Option<Rule> {
        match optimizer {
            Optimizer::Sgd => Some(Rule::Sgd),
            Optimizer::Adafactor => Some(Rule::Adafactor),
            Optimizer::Lion32bit | Optimizer::PagedLion32bit => Some(Rule::Lion),
            Optimizer::Lion8bit | Optimizer::PagedLion8bit => Some(Rule::Lion8bit),
            Optimizer::Muon => Some(Rule::Muon),
            _ => None,
        }
    }
}

// Muon's constants (Axolotl's `Muon` defaults, which its factory does not override).
const MUON_MOMENTUM: f64 = 0.95;
const NS_STEPS: usize = 5;
const NS_COEFFICIENTS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);
// Adafactor's defaults.
const ADAFACTOR_EPS: f64 = 1e-30;
const ADAFACTOR_DECAY_RATE: f64 = -0.8;
const ADAFACTOR_CLIP: f64 = 1.0;

/// One parameter's state, named as the reference names it in its `state_dict`.
pub enum State {
    /// SGD without momentum.
    Sgd,
    Lion {
        exp_avg: Tensor,
    },
    /// 8-bit Lion's momentum: codes (shaped like the parameter) and one absmax per 256 values.
    Lion8bit {
        codes: Tensor,
        absmax: Tensor,
        code: BlockCode,
    },
    AdafactorFactored {
        row: Tensor,
        col: Tensor,
    },
    Adafactor {
        exp_avg_sq: Tensor,
    },
    Muon {
        momentum_buffer: Tensor,
    },
    /// Muon's AdamW group (embedding, head, modules_to_save).
    MuonAdamw {
        moment1: Tensor,
        moment2: Tensor,
    },
    /// In neither of Muon's groups (a 1-D parameter): never updated.
    Untouched,
}

/// Whether Axolotl's `MuonOptimizerFactory` gives `name` (a matrix) to Muon's AdamW: the
/// embedding, the head, and modules_to_save (peft's copies; recipe names them by module).
pub fn muon_uses_adamw(name: &str, modules_to_save: &[String]) -> bool {
    name.contains("embed_tokens")
        || name.contains("lm_head")
        || name.ends_with("modules_to_save.default.weight")
        || modules_to_save.iter().any(|m| name.split('.').any(|part| part == m))
}

impl State {
    /// Zero state for `param` (a whole parameter, or under sharding a chunk of an elementwise rule's).
    pub fn new(rule: Rule, name: &str, param: &Tensor, modules_to_save: &[String]) -> State {
        let zeros = || param.to_kind(Kind::Float).zeros_like().detach();
        match rule {
            Rule::Sgd => State::Sgd,
            Rule::Lion => State::Lion { exp_avg: zeros() },
            // bitsandbytes keeps 32-bit states for tensors under `min_8bit_size`.
            Rule::Lion8bit if param.numel() < MIN_8BIT_SIZE as usize => State::Lion { exp_avg: zeros() },
            Rule::Lion8bit => {
                let code = BlockCode::new(&nf4::dynamic_map(), param.device());
                let (codes, absmax) = nf4::quantize_blockwise_with(&zeros(), &code, BLOCK);
                State::Lion8bit { codes: codes.view(param.size().as_slice()), absmax, code }
            }
            Rule::Adafactor => {
                let shape = param.size();
                if shape.len() >= 2 {
                    let n = shape.len();
                    let row: Vec<i64> = shape[..n - 1].to_vec();
                    let col: Vec<i64> = shape[..n - 2].iter().chain(&shape[n - 1..]).copied().collect();
                    let options = (Kind::Float, param.device());
                    State::AdafactorFactored { row: Tensor::zeros(row, options), col: Tensor::zeros(col, options) }
                } else {
                    State::Adafactor { exp_avg_sq: zeros() }
                }
            }
            Rule::Muon if param.dim() < 2 => State::Untouched,
            Rule::Muon if muon_uses_adamw(name, modules_to_save) => {
                State::MuonAdamw { moment1: zeros(), moment2: zeros() }
            }
            Rule::Muon => State::Muon { momentum_buffer: zeros() },
        }
    }

    fn tensors(&self) -> Vec<(&'static str, &Tensor)> {
        match self {
            State::Sgd | State::Untouched => vec![],
            State::Lion { exp_avg } => vec![("exp_avg", exp_avg)],
            State::Lion8bit { codes, absmax, .. } => vec![("exp_avg.q8", codes), ("exp_avg.absmax", absmax)],
            State::AdafactorFactored { row, col } => vec![("exp_avg_sq_row", row), ("exp_avg_sq_col", col)],
            State::Adafactor { exp_avg_sq } => vec![("exp_avg_sq", exp_avg_sq)],
            State::Muon { momentum_buffer } => vec![("momentum_buffer", momentum_buffer)],
            State::MuonAdamw { moment1, moment2 } => vec![("moment1", moment1), ("moment2", moment2)],
        }
    }

    /// `NAME.<state>` for the checkpoint.
    pub fn named(&self, name: &str) -> Vec<(String, Tensor)> {
        self.tensors().into_iter().map(|(which, t)| (format!("{name}.{which}"), t.shallow_clone())).collect()
    }

    pub fn bytes(&self) -> i64 {
        self.tensors().iter().map(|(_, t)| t.numel() as i64 * t.kind().elt_size_in_bytes() as i64).sum()
    }

    /// Reads `NAME.<state>` from a checkpoint.
    pub fn load(&mut self, name: &str, ckpt: &Checkpoint) -> Result<(), String> {
        for (which, t) in self.tensors() {
            let mut t = t.shallow_clone();
            load_into(&mut t, &format!("{name}.{which}"), ckpt)?;
        }
        Ok(())
    }

    /// Reads this rank's chunk of each state through `moment(which)` (sharded training: Lion).
    pub fn load_with(&mut self, moment: &dyn Fn(&str) -> Result<Tensor, String>) -> Result<(), String> {
        for (which, t) in self.tensors() {
            let mut t = t.shallow_clone();
            t.copy_(&moment(which)?);
        }
        Ok(())
    }
}

/// One step of `param` with gradient `grad` (already in the parameter's dtype).
pub fn step(param: &Tensor, grad: &Tensor, state: &mut State, h: &Hyper) {
    let mut p = param.shallow_clone();
    let g = grad.to_kind(Kind::Float);
    match state {
        State::Untouched => {}
        State::Sgd => {
            let g = if h.weight_decay != 0.0 { fused_multiply_add(&p, h.weight_decay, &g) } else { g };
            p.copy_(&fused_multiply_add(&g, -h.lr, &p));
        }
        State::Lion { exp_avg } => {
            if h.weight_decay > 0.0 {
                p *= 1.0 - h.lr * h.weight_decay;
            }
            let update = fused_multiply_add(&g, 1.0 - h.beta1, &(&*exp_avg * h.beta1));
            p.copy_(&fused_multiply_add(&update.sign(), -h.lr, &p));
            *exp_avg *= h.beta2;
            exp_avg.copy_(&fused_multiply_add(&g, 1.0 - h.beta2, exp_avg));
        }
        State::Lion8bit { codes, absmax, code } => {
            // bitsandbytes' CPU 8-bit kernel: the direction from two rounded products (no fused
            // multiply-add), then the 32-bit kernel's steps, the momentum quantized again.
            let mut m = nf4::dequantize_blockwise(codes, absmax, &code.values, BLOCK).view(codes.size().as_slice());
            if h.weight_decay > 0.0 {
                p *= 1.0 - h.lr * h.weight_decay;
            }
            let direction = (&m * h.beta1 + &g * (1.0 - h.beta1)).sign();
            p.copy_(&fused_multiply_add(&direction, -h.lr, &p));
            m *= h.beta2;
            let m = fused_multiply_add(&g, 1.0 - h.beta2, &m);
            let (c, a) = nf4::quantize_blockwise_with(&m, code, BLOCK);
            codes.copy_(&c.view(codes.size().as_slice()));
            absmax.copy_(&a);
        }
        State::AdafactorFactored { .. } | State::Adafactor { .. } => adafactor(&mut p, &g, state, h),
        State::Muon { momentum_buffer } => {
            *momentum_buffer *= MUON_MOMENTUM;
            *momentum_buffer += &g;
            let nesterov = fused_multiply_add(momentum_buffer, MUON_MOMENTUM, &g);
            let u = newton_schulz(&nesterov, NS_STEPS);
            let size = param.size();
            let adjusted_lr = h.lr * (0.2 * (size[0].max(size[1]) as f64).sqrt());
            p *= 1.0 - h.lr * h.weight_decay;
            p.copy_(&fused_multiply_add(&u, -adjusted_lr, &p));
        }
        State::MuonAdamw { moment1, moment2 } => {
            let _ = moment1.lerp_(&g, 1.0 - h.beta1);
            let _ = moment2.lerp_(&g.square(), 1.0 - h.beta2);
            let update = &*moment1 / (moment2.sqrt() + h.eps);
            let t = h.step as f64;
            let scale = (1.0 - h.beta1.powf(t)) / (1.0 - h.beta2.powf(t)).powf(0.5);
            p *= 1.0 - h.lr * h.weight_decay;
            p.copy_(&fused_multiply_add(&update, -h.lr / scale, &p));
        }
    }
}

/// transformers' `Adafactor.step` for one parameter, with the Trainer's options.
fn adafactor(p: &mut Tensor, g: &Tensor, state: &mut State, h: &Hyper) {
    let beta2t = 1.0 - (h.step as f64).powf(ADAFACTOR_DECAY_RATE);
    let squared = g.square() + ADAFACTOR_EPS;
    let mut update = match state {
        State::AdafactorFactored { row, col } => {
            *row *= beta2t;
            row.copy_(&fused_multiply_add(&squared.mean_dim(-1, false, Kind::Float), 1.0 - beta2t, row));
            *col *= beta2t;
            col.copy_(&fused_multiply_add(&squared.mean_dim(-2, false, Kind::Float), 1.0 - beta2t, col));
            let r = (&*row / row.mean_dim(-1, true, Kind::Float)).rsqrt().unsqueeze(-1);
            let c = col.unsqueeze(-2).rsqrt();
            (r * c) * g
        }
        State::Adafactor { exp_avg_sq } => {
            *exp_avg_sq *= beta2t;
            exp_avg_sq.copy_(&fused_multiply_add(&squared, 1.0 - beta2t, exp_avg_sq));
            exp_avg_sq.rsqrt() * g
        }
        _ => unreachable!("Adafactor's states"),
    };
    let rms = rms(&update) / ADAFACTOR_CLIP;
    update = &update / rms.clamp_min(1.0);
    update *= h.lr;
    if h.weight_decay != 0.0 {
        p.copy_(&fused_multiply_add(p, -h.weight_decay * h.lr, p));
    }
    *p -= &update;
}

/// `tensor.norm(2) / numel ** 0.5` (`at::norm` is `linalg_vector_norm` for p = 2).
fn rms(t: &Tensor) -> Tensor {
    t.norm() / (t.numel() as f64).sqrt()
}

/// Axolotl's `zeropower_via_newtonschulz5`: bf16 throughout, as its ops round (`c * A @ A` is
/// `(c·A) @ A` in Python).
pub fn newton_schulz(g: &Tensor, steps: usize) -> Tensor {
    let (a, b, c) = NS_COEFFICIENTS;
    let tall = g.size()[0] > g.size()[1];
    let mut x = g.to_kind(Kind::BFloat16);
    if tall {
        x = x.tr();
    }
    let norm = x.norm() + 1e-7;
    x = &x / norm;
    for _ in 0..steps {
        let m = x.matmul(&x.tr());
        let n = &m * b + (&m * c).matmul(&m);
        x = &x * a + n.matmul(&x);
    }
    if tall { x.tr() } else { x }
}
