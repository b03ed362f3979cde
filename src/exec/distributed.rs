//! Data parallelism for the training loop: a communicator that is a no-op for one process and a
//! c10d process group (exec/c10d.rs) for several. The loop calls the same methods either way, so
//! there is one loop for every world size.
//!
//! DDP semantics: every rank holds the model; trainable weights are broadcast from rank 0 at start;
//! each rank's loss is already divided by the label count of the whole global batch, so summing
//! the ranks' gradients (flat buckets of `ddp_bucket_cap_mb`) gives the gradient of the global
//! mean, and every rank then takes the same optimizer step.

use super::c10d::{Backend, ProcessGroup, ReduceOp, Rendezvous};
use crate::launch::ProcessEnv;
use tch::{Device, Kind, Tensor};

pub struct Communicator {
    group: Option<ProcessGroup>,
    /// How this group was joined, for the sub-groups sharded training makes.
    rendezvous: Option<Rendezvous>,
    pub rank: usize,
    pub world_size: usize,
}

/// Axolotl's `ddp_timeout` default (seconds), as torch's default process-group timeout.
pub const DEFAULT_TIMEOUT_SECS: u64 = 1800;
/// DDP's default bucket size.
pub const DEFAULT_BUCKET_MB: u32 = 25;

impl Communicator {
    pub fn single() -> Communicator {
        Communicator { group: None, rendezvous: None, rank: 0, world_size: 1 }
    }

    /// Joins the other ranks of `env` (Gloo on CPU, NCCL on CUDA); one process needs no group.
    pub fn join(env: &ProcessEnv, device: Device, timeout: std::time::Duration) -> Result<Communicator, String> {
        if !env.joins_group() {
            return Ok(Communicator::single());
        }
        let backend = if device.is_cuda() { Backend::Nccl } else { Backend::Gloo };
        let rendezvous = Rendezvous {
            backend,
            master_addr: env.master_addr.clone(),
            master_port: env.master_port,
            rank: env.rank,
            world_size: env.world_size,
            store_server: env.rank == 0 && !env.agent_store,
            wait_workers: !env.agent_store,
            prefix: format!("recipe/attempt_{}/", env.restart),
            timeout,
            gloo_interface: std::env::var("GLOO_SOCKET_IFNAME").ok().filter(|s| !s.is_empty()),
            cuda_device: match device {
                Device::Cuda(n) => n,
                _ => 0,
            },
        };
        let group = ProcessGroup::join(&rendezvous).map_err(|e| {
            format!(
                "rank {} of {}: {e} (waited up to {} s, ddp_timeout; are all {} ranks started?)",
                env.rank,
                env.world_size,
                timeout.as_secs(),
                env.world_size
            )
        })?;
        Ok(Communicator {
            rank: env.rank,
            world_size: env.world_size,
            group: Some(group),
            rendezvous: Some(rendezvous),
        })
    }

    /// A process group of `ranks` (this rank among them, in the order given) named `name`, over
    /// the same store: sharded training's shard and replica groups. Every rank in `ranks` must
    /// call it with the same arguments. None for a group of one (no collectives to run).
    pub fn subgroup(&self, name: &str, ranks: &[usize]) -> Result<Option<ProcessGroup>, String> {
        let Some(r) = &self.rendezvous else { return Ok(None) };
        let index = ranks
            .iter()
            .position(|&x| x == self.rank)
            .ok_or_else(|| format!("rank {} is not in the {name} group {ranks:?}", self.rank))?;
        if ranks.len() == 1 {
            return Ok(None);
        }
        let sub = Rendezvous {
            rank: index,
            world_size: ranks.len(),
            store_server: false,
            wait_workers: false,
            prefix: format!("{}{name}/", r.prefix),
            ..r.clone()
        };
        ProcessGroup::join(&sub).map(Some).map_err(|e| self.failed(e))
    }

    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    pub fn is_distributed(&self) -> bool {
        self.group.is_some()
    }

    pub fn backend(&self) -> Option<Backend> {
        self.group.as_ref().map(|g| g.backend)
    }

    fn failed(&self, e: String) -> String {
        format!("rank {}: {e}; another rank failed or left the run", self.rank)
    }

    /// In-place sum over the ranks (nothing for one process).
    pub fn all_reduce_sum(&self, tensor: &mut Tensor) -> Result<(), String> {
        match &self.group {
            None => Ok(()),
            Some(g) => g.all_reduce(tensor, ReduceOp::Sum).map_err(|e| self.failed(e)),
        }
    }

    /// In-place max over the ranks.
    pub fn all_reduce_max(&self, tensor: &mut Tensor) -> Result<(), String> {
        match &self.group {
            None => Ok(()),
            Some(g) => g.all_reduce(tensor, ReduceOp::Max).map_err(|e| self.failed(e)),
        }
    }

    pub fn barrier(&self) -> Result<(), String> {
        match &self.group {
            None => Ok(()),
            Some(g) => g.barrier().map_err(|e| self.failed(e)),
        }
    }

    /// Each rank's `value`, in rank order.
    pub fn all_gather_u64(&self, value: u64, device: Device) -> Result<Vec<u64>, String> {
        let Some(g) = &self.group else { return Ok(vec![value]) };
        let t = Tensor::from_slice(&[value as i64]).to_device(device);
        let all = g.all_gather(&t).map_err(|e| self.failed(e))?;
        let values = super::host_sync::read_i64(&all, "the ranks' values")?;
        Ok(values.into_iter().map(|v| v as u64).collect())
    }

    /// Every rank learns whether every rank's `result` is Ok; an error on another rank becomes an
    /// error here naming it, so no rank goes on into collectives the failed one never reaches.
    pub fn agree<T>(&self, result: Result<T, String>, what: &str, device: Device) -> Result<T, String> {
        if self.group.is_none() {
            return result;
        }
        let all = self.all_gather_u64(u64::from(result.is_ok()), device)?;
        let result = result?;
        let failed: Vec<String> =
            all.iter().enumerate().filter(|(_, ok)| **ok == 0).map(|(r, _)| r.to_string()).collect();
        if failed.is_empty() {
            Ok(result)
        } else {
            Err(format!("rank {} failed {what} (see its error); stopping", failed.join(", ")))
        }
    }

    /// Every rank's tensors become rank 0's (trainable weights at start), in place.
    pub fn broadcast_from_main(&self, tensors: &[Tensor]) -> Result<(), String> {
        let Some(g) = &self.group else { return Ok(()) };
        let _guard = tch::no_grad_guard();
        for bucket in buckets(tensors, 256 << 20) {
            let mut flat = flatten(&bucket);
            g.broadcast(&mut flat, 0).map_err(|e| self.failed(e))?;
            unflatten_into(&flat, &bucket);
        }
        Ok(())
    }

    /// Sums the gradients of `params` over the ranks, in flat buckets of `bucket_bytes`; returns
    /// the payload bytes all-reduced (0 for one process). A parameter without a gradient this step
    /// is an error naming it, unless `find_unused` (DDP's find_unused_parameters): then it takes
    /// part with a zero gradient, so every rank sums the same buckets and steps alike.
    pub fn all_reduce_gradients(
        &self,
        params: &[(String, Tensor)],
        bucket_bytes: usize,
        find_unused: bool,
    ) -> Result<u64, String> {
        let Some(g) = &self.group else { return Ok(0) };
        for (name, p) in params {
            if !p.grad().defined() {
                if !find_unused {
                    return Err(format!(
                        "rank {}: `{name}` got no gradient in this step; set ddp_find_unused_parameters: true if \
                         that is expected",
                        self.rank
                    ));
                }
                (p.sum(Kind::Float) * 0.0).backward();
            }
        }
        let params: Vec<&Tensor> = params.iter().map(|(_, p)| p).collect();
        let _guard = tch::no_grad_guard();
        let grads: Vec<Tensor> = params.iter().map(|p| p.grad()).collect();
        let mut bytes = 0u64;
        for bucket in buckets(&grads, bucket_bytes) {
            let mut flat = flatten(&bucket);
            bytes += (flat.numel() * flat.kind().elt_size_in_bytes()) as u64;
            g.all_reduce(&mut flat, ReduceOp::Sum).map_err(|e| self.failed(e))?;
            unflatten_into(&flat, &bucket);
        }
        Ok(bytes)
    }
}

/// What a rank sends in the set-up handshake when its set-up failed (other ranks send a digest of
/// their plan and data, never 0).
pub const SET_UP_FAILED: u64 = 0;

/// For a rank that failed before it could join (a recipe or device error): joins, tells the
/// others in the set-up handshake, and leaves, so they stop at once instead of waiting out the
/// timeout. Best effort: a join that fails changes nothing.
pub fn announce_failed_set_up(env: &ProcessEnv, device: Device, timeout: std::time::Duration) {
    if let Ok(comm) = Communicator::join(env, device, timeout) {
        let _ = comm.all_gather_u64(SET_UP_FAILED, device);
    }
}

/// Consecutive groups of tensors of one kind and device, each at most `cap` bytes (a tensor
/// larger than the cap is a bucket of its own).
fn buckets(tensors: &[Tensor], cap: usize) -> Vec<Vec<Tensor>> {
    let mut out: Vec<Vec<Tensor>> = Vec::new();
    let mut size = 0usize;
    for t in tensors {
        let bytes = t.numel() * t.kind().elt_size_in_bytes();
        let fits = out.last().is_some_and(|b| {
            let first = &b[0];
            first.kind() == t.kind() && first.device() == t.device() && size + bytes <= cap
        });
        if fits {
            size += bytes;
            if let Some(last) = out.last_mut() {
                last.push(t.shallow_clone());
            }
        } else {
            size = bytes;
            out.push(vec![t.shallow_clone()]);
        }
    }
    out
}

fn flatten(tensors: &[Tensor]) -> Tensor {
    let parts: Vec<Tensor> = tensors.iter().map(|t| t.detach().reshape([-1])).collect();
    Tensor::cat(&parts, 0)
}

fn unflatten_into(flat: &Tensor, tensors: &[Tensor]) {
    let mut offset = 0i64;
    for t in tensors {
        let n = t.numel() as i64;
        let mut target = t.detach();
        target.copy_(&flat.narrow(0, offset, n).view_as(t));
        offset += n;
    }
}

/// A stable 64-bit digest (FNV-1a) of bytes, for comparing the ranks' plans and data.
pub fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}
