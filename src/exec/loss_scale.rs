//! Dynamic loss scaling for fp16 training, as `torch.amp.GradScaler` does it: the loss is
//! multiplied by `scale` before the backward pass so small fp16 gradients do not flush to zero;
//! gradients are unscaled before clipping; a step whose gradients hold inf or NaN is skipped and
//! the scale halved; after `GROWTH_INTERVAL` good steps in a row the scale doubles. Deciding to
//! skip reads one flag from the device per optimizer step, as GradScaler does; bf16 and fp32 runs
//! have no scaler and no such read.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// GradScaler's defaults.
pub const INIT_SCALE: f64 = 65536.0;
pub const GROWTH_FACTOR: f64 = 2.0;
pub const BACKOFF_FACTOR: f64 = 0.5;
pub const GROWTH_INTERVAL: u64 = 2000;

/// The scaler's state, saved in checkpoints so a resumed fp16 run continues with the same scale.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    pub scale: f64,
    /// Good steps since the scale last changed.
    pub good_steps: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler { scale: INIT_SCALE, good_steps: 0 }
    }
}

impl LossScaler {
    /// Divides every gradient by the scale, in place; true when all of them are finite.
    pub fn unscale(&self, grads: &[Tensor]) -> bool {
        let _guard = tch::no_grad_guard();
        let inverse = 1.0 / self.scale;
        let mut finite = Vec::with_capacity(grads.len());
        for g in grads.iter().filter(|g| g.defined()) {
            let mut g = g.shallow_clone();
            g *= inverse;
            finite.push(g.isfinite().all());
        }
        finite.is_empty() || bool::try_from(Tensor::stack(&finite, 0).all().to_kind(Kind::Bool)).unwrap_or(false)
    }

    /// After a step: back off on overflow (the step was skipped), grow after a run of good steps.
    pub fn update(&mut self, finite: bool) {
        if !finite {
            self.scale *= BACKOFF_FACTOR;
            self.good_steps = 0;
            return;
        }
        self.good_steps += 1;
        if self.good_steps == GROWTH_INTERVAL {
            self.scale *= GROWTH_FACTOR;
            self.good_steps = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn overflow_skips_and_backs_off_and_good_runs_grow_the_scale() {
        let mut scaler = LossScaler::default();
        let grads = [Tensor::from_slice(&[65536.0f32, -131072.0]), Tensor::from_slice(&[32768.0f32])];
        assert!(scaler.unscale(&grads));
        assert_eq!(Vec::<f32>::try_from(&grads[0]).unwrap(), [1.0, -2.0]);
        assert_eq!(Vec::<f32>::try_from(&grads[1]).unwrap(), [0.5]);
        scaler.update(true);
        assert_eq!(scaler, LossScaler { scale: INIT_SCALE, good_steps: 1 });

        let overflowed = [Tensor::from_slice(&[1.0f32, f32::INFINITY]), Tensor::from_slice(&[f32::NAN])];
        assert!(!scaler.unscale(&overflowed));
        scaler.update(false);
        assert_eq!(scaler, LossScaler { scale: INIT_SCALE / 2.0, good_steps: 0 });

        for _ in 0..GROWTH_INTERVAL {
            scaler.update(true);
        }
        assert_eq!(scaler, LossScaler { scale: INIT_SCALE, good_steps: 0 });
        assert!(scaler.unscale(&[Tensor::zeros([3], (Kind::Half, Device::Cpu))]));
    }
}
