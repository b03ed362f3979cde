//! The one runtime value of a training process, decided once: the device, the precision policy,
//! this process's place among the ranks, and the communicator to the others. Everything else in
//! the executor reads it instead of deciding again.

use super::distributed::Communicator;
use crate::launch::ProcessEnv;
use crate::plan::Plan;
use tch::{Device, Kind};

/// How tensors are kept and computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Precision {
    /// Kind of the matmuls and attention (fp32, bf16 or fp16); the residual stream, norms and the
    /// loss stay fp32, as under torch autocast.
    pub compute: Kind,
    /// Kind of the frozen base weights (trainable weights are fp32 masters).
    pub base: Kind,
    /// fp16: dynamic loss scaling (exec/loss_scale.rs).
    pub loss_scaling: bool,
}

pub struct Runtime {
    pub device: Device,
    pub precision: Precision,
    pub process: ProcessEnv,
    pub comm: Communicator,
}

impl Runtime {
    /// Picks the precision for `device`, sets libtorch's switches (tf32, CPU threads per rank),
    /// and joins the other ranks (Gloo on CPU, NCCL on CUDA) when there are any.
    pub fn new(plan: &Plan, device: Device, process: ProcessEnv) -> Result<Runtime, String> {
        let timeout = std::time::Duration::from_secs(plan.layout.ddp.timeout_secs);
        let comm = Communicator::join(&process, device, timeout)?;
        let policy = super::compute_kind(plan, device).and_then(|k| super::apply_tf32(plan, device).map(|_| k));
        let compute = match policy {
            Ok(k) => k,
            Err(e) => {
                // The others learn of it in the set-up handshake instead of waiting for this rank.
                let _ = comm.all_gather_u64(super::distributed::SET_UP_FAILED, device);
                return Err(e);
            }
        };
        let full = plan.adapter.method == crate::plan::adapter::AdapterMethod::Full;
        let precision =
            Precision { compute, base: if full { Kind::Float } else { compute }, loss_scaling: compute == Kind::Half };
        if process.is_distributed() && device == Device::Cpu {
            // Ranks on one machine share its cores.
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            tch::set_num_threads((cores / process.local_world_size.max(1)).max(1) as i32);
        }
        Ok(Runtime { device, precision, process, comm })
    }

    pub fn is_main(&self) -> bool {
        self.comm.is_main()
    }
}
