//! Where sharded training keeps a rank's chunks between uses (plan/shard.rs `HostOffload`): on the
//! compute device, or offloaded to host memory as FSDP's CPUOffload and ZeRO-Offload keep them.
//! Offloaded, a unit's chunks are copied to the compute device just before its all-gather and its
//! reduce-scattered gradient chunk copied back to the host, where the optimizer steps (its states
//! are made beside the chunks it updates). Host memory is page-locked where the compute device is
//! CUDA and the recipe asks for it, so those copies run by DMA. On a CPU run host and device are
//! one memory: the placement is the same and every copy is a no-op, so an offloaded run computes
//! exactly what the run without offload does.

use crate::plan::shard::HostOffload;
use tch::{Device, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Where the model computes and the collectives run.
    pub compute: Device,
    offload: HostOffload,
}

impl Placement {
    pub fn new(compute: Device, offload: HostOffload) -> Placement {
        Placement { compute, offload }
    }

    /// Where a chunk lives between uses: host memory when its kind is offloaded.
    pub fn home(&self, trainable: bool) -> Device {
        if self.offloaded(trainable) { Device::Cpu } else { self.compute }
    }

    fn offloaded(&self, trainable: bool) -> bool {
        if trainable { self.offload.trainable } else { self.offload.frozen }
    }

    /// Whether such a chunk is page-locked: offloaded from a CUDA device, with `pin_memory`.
    pub fn pinned(&self, trainable: bool) -> bool {
        self.offloaded(trainable) && self.offload.pin_memory && self.compute.is_cuda()
    }

    /// `t` (a chunk, or its gradient) moved to its home, page-locked there when `pinned` says so.
    pub fn keep(&self, t: Tensor, trainable: bool) -> Result<Tensor, String> {
        let home = t.to_device(self.home(trainable));
        if self.pinned(trainable) { super::torch_ops::pin_memory(&home) } else { Ok(home) }
    }

    /// `t` on the compute device (itself when it is there already), for a collective.
    pub fn to_compute(&self, t: &Tensor) -> Tensor {
        if t.device() == self.compute { t.shallow_clone() } else { t.to_device(self.compute) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offload(trainable: bool, frozen: bool, pin_memory: bool) -> HostOffload {
        HostOffload { trainable, frozen, pin_memory }
    }

    #[test]
    fn offloaded_chunks_live_on_the_host_pinned_only_for_a_cuda_device() {
        let cuda = Device::Cuda(0);
        // fsdp's offload: every chunk on the host, pinned for the GPU's copies.
        let all = Placement::new(cuda, offload(true, true, true));
        assert_eq!((all.home(true), all.home(false)), (Device::Cpu, Device::Cpu));
        assert!(all.pinned(true) && all.pinned(false));
        // DeepSpeed's offload_optimizer alone: the frozen chunks stay on the GPU.
        let optimizer = Placement::new(cuda, offload(true, false, false));
        assert_eq!((optimizer.home(true), optimizer.home(false)), (Device::Cpu, cuda));
        assert!(!optimizer.pinned(true) && !optimizer.pinned(false));
        // No offload: everything where the model computes.
        let none = Placement::new(cuda, HostOffload::default());
        assert_eq!((none.home(true), none.home(false)), (cuda, cuda));
        assert!(!none.pinned(true));
        // On the CPU host and device are one memory: nothing to pin.
        let cpu = Placement::new(Device::Cpu, offload(true, true, true));
        assert_eq!((cpu.home(true), cpu.home(false)), (Device::Cpu, Device::Cpu));
        assert!(!cpu.pinned(true) && !cpu.pinned(false));
    }

    #[test]
    fn on_the_cpu_keeping_and_fetching_a_chunk_leave_its_values_as_they_are() {
        let p = Placement::new(Device::Cpu, offload(true, true, true));
        let chunk = Tensor::from_slice(&[1.5f32, -2.0, 0.25]);
        let kept = p.keep(chunk.copy(), true).unwrap();
        assert!(kept.equal(&chunk));
        assert!(p.to_compute(&kept).equal(&chunk));
    }
}
