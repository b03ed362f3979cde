//! Dynamic loss scaling for fp16 training, as `torch.amp.GradScaler` does it: the loss is
//! multiplied by `scale` before the backward pass so small fp16 gradients do not flush to zero;
//! gradients are unscaled before clipping; a step whose gradients hold inf or NaN is skipped and
//! the scale halved; after `GROWTH_INTERVAL` good steps in a row the scale doubles.
//!
//! The training loop keeps all of it on the device (`DeviceScaler`): the scale and the growth
//! counter are device tensors updated by libtorch's own `_amp_update_scale_`, the overflow check
//! gives a device flag, and the optimizer skips its update by that flag on the device
//! (exec/optimizer.rs), so no step reads anything back to the host (GradScaler reads the flag every
//! step). The host learns the scale at logging steps, with the losses, and at checkpoints.
//! `LossScaler` is the same state on the host: what checkpoints hold, and a host-side reference.

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
        finite.is_empty()
            || super::host_sync::read_flag(&Tensor::stack(&finite, 0).all(), "the fp16 overflow flag").unwrap_or(false)
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

/// The scaler on the device: the scale (fp32 [1]) and the good-step counter (int32 [1]) as
/// `torch.amp.GradScaler` keeps them, updated without host reads.
pub struct DeviceScaler {
    pub scale: Tensor,
    growth_tracker: Tensor,
}

impl DeviceScaler {
    pub fn new(host: LossScaler, device: tch::Device) -> DeviceScaler {
        DeviceScaler {
            scale: Tensor::from_slice(&[host.scale as f32]).to_device(device),
            growth_tracker: Tensor::from_slice(&[host.good_steps as i32]).to_device(device),
        }
    }

    /// Divides every gradient by the scale, in place; returns the overflow flag (fp32 [1]: 1.0 when
    /// any gradient holds inf or NaN), on the device.
    pub fn unscale(&self, grads: &[Tensor]) -> Tensor {
        let _guard = tch::no_grad_guard();
        let inverse = self.scale.reciprocal();
        let mut finite = Vec::with_capacity(grads.len());
        for g in grads.iter().filter(|g| g.defined()) {
            let mut g = g.shallow_clone();
            g *= &inverse;
            finite.push(g.isfinite().all());
        }
        match finite.is_empty() {
            true => self.scale.zeros_like(),
            false => 1.0 - Tensor::stack(&finite, 0).all().to_kind(Kind::Float).reshape([1]),
        }
    }

    /// After a step: GradScaler's update (back off on overflow, grow after a run of good steps).
    pub fn update(&mut self, found_inf: &Tensor) {
        let _ = self.scale.internal_amp_update_scale_(
            &self.growth_tracker,
            found_inf,
            GROWTH_FACTOR,
            BACKOFF_FACTOR,
            GROWTH_INTERVAL as i64,
        );
    }

    /// The state on the host (a checkpoint's): one read.
    pub fn to_host(&self) -> Result<LossScaler, String> {
        let both = Tensor::cat(&[self.scale.to_kind(Kind::Double), self.growth_tracker.to_kind(Kind::Double)], 0);
        let v = super::host_sync::read_f64(&both, "the fp16 loss scale")?;
        Ok(LossScaler { scale: v[0], good_steps: v[1] as u64 })
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

    #[test]
    fn the_device_scaler_follows_the_host_one_without_reading_back() {
        let mut host = LossScaler::default();
        let mut device = DeviceScaler::new(host, Device::Cpu);
        let reads = super::super::host_sync::count();
        let steps: [&[f32]; 4] = [&[65536.0, 1.0], &[f32::INFINITY], &[f32::NAN, 2.0], &[3.0]];
        for grads in steps {
            let (a, b) = (Tensor::from_slice(grads), Tensor::from_slice(grads));
            let found = device.unscale(std::slice::from_ref(&a));
            device.update(&found);
            let finite = host.unscale(std::slice::from_ref(&b));
            host.update(finite);
            assert_eq!(f64::try_from(&found).unwrap() == 0.0, finite);
            assert!(a.isfinite().all().int64_value(&[]) == 0 || a.allclose(&b, 0.0, 0.0, false));
        }
        // The host scaler reads its flag (counted); the device one read nothing until to_host.
        assert!(super::super::host_sync::count() >= reads + 4);
        assert_eq!(device.to_host().unwrap(), host);
        for _ in 0..GROWTH_INTERVAL {
            let found = device.unscale(&[Tensor::from_slice(&[1.0f32])]);
            device.update(&found);
            host.update(true);
        }
        assert_eq!(device.to_host().unwrap(), host);
        assert_eq!(host.scale, INIT_SCALE / 2.0);
    }
}
